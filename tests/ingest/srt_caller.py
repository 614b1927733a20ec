"""A minimal SRT caller for tests, through libsrt (:mod:`ingest.srt_lib`): what an encoder's
SRT layer does, without its MPEG-TS — to send garbage, stall, or read the rejection reason a
listener gives."""

from __future__ import annotations

import ctypes

from ingest import srt_lib
from ingest.srt_server import OPEN_TIMEOUT_S

SRTO_CONNTIMEO = 36
SRTO_PEERLATENCY = 44
SRTO_STREAMID = 46


class Rejected(Exception):
    def __init__(self, reason: int) -> None:
        super().__init__(f"rejected: {reason}")
        self.reason = reason


def _lib() -> ctypes.CDLL:
    lib = srt_lib.load()
    lib.srt_connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.srt_getrejectreason.argtypes = [ctypes.c_int]
    lib.srt_sendmsg.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.srt_getsockflag.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    return lib


CONNECT_TIMEOUT_MS = int((OPEN_TIMEOUT_S + 2) * 1000)
"""Longer than the listener's wait for the service (libsrt's default, 3 s, is shorter): on a
loaded machine the caller must still read the listener's answer, not its own time-out."""


def connect(port: int, stream_id: str, passphrase: str | None = None) -> int:
    """A connected caller's socket (blocks up to :data:`CONNECT_TIMEOUT_MS`).

    :raises Rejected: the listener rejected it (``reason``: its rejection code)."""
    lib = _lib()
    sock = lib.srt_create_socket()
    timeout = ctypes.c_int(CONNECT_TIMEOUT_MS)
    lib.srt_setsockflag(sock, SRTO_CONNTIMEO, ctypes.byref(timeout), ctypes.sizeof(timeout))
    sid = stream_id.encode()
    lib.srt_setsockflag(sock, SRTO_STREAMID, sid, len(sid))
    if passphrase:
        secret = passphrase.encode()
        lib.srt_setsockflag(sock, srt_lib.SRTO_PASSPHRASE, secret, len(secret))
    address = srt_lib.sockaddr("127.0.0.1", port)
    if lib.srt_connect(sock, address, len(address)) < 0:
        reason = lib.srt_getrejectreason(sock)
        lib.srt_close(sock)
        raise Rejected(reason)
    return sock


def rejection(port: int, stream_id: str) -> int:
    """The rejection reason a caller with ``stream_id`` gets (0: it was admitted)."""
    try:
        sock = connect(port, stream_id)
    except Rejected as exc:
        return exc.reason
    close(sock)
    return 0


def send(sock: int, data: bytes) -> None:
    if _lib().srt_sendmsg(sock, data, len(data), -1, 1) < 0:
        raise OSError("srt_sendmsg failed")


def close(sock: int) -> None:
    _lib().srt_close(sock)


def peer_latency_ms(sock: int) -> int:
    """The latency the listener applies to what this caller sends (negotiated in the handshake)."""
    value, size = ctypes.c_int(0), ctypes.c_int(4)
    if _lib().srt_getsockflag(sock, SRTO_PEERLATENCY, ctypes.byref(value), ctypes.byref(size)) < 0:
        raise OSError("srt_getsockflag failed")
    return value.value
