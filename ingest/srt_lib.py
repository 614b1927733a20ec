"""The part of Haivision's libsrt (the SRT reference implementation, 1.5: Debian's
``libsrt1.5-gnutls`` / ``-openssl``, what FFmpeg and OBS link) that the SRT listener uses,
through :mod:`ctypes`.  The only module that touches libsrt.

Every call here may block (libsrt's API is synchronous: ``srt_accept``, ``srt_recvmsg``, and
``srt_close``, which waits on libsrt's own threads): call them from worker threads, never
from an event loop's thread.  ctypes releases the GIL for the call's duration.

Names and values are libsrt's (``srt.h``, ``access_control.h`` of 1.5.1).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
import threading
from collections.abc import Callable

SRTO_RCVTIMEO = 14
SRTO_PASSPHRASE = 26
SRTO_RCVLATENCY = 43
LOG_CRIT = 2
"""libsrt's log level (syslog numbering): only critical messages reach stderr — its warnings
would repeat what the listener logs itself."""

SRT_ETIMEOUT = 6003
"""``srt_getlasterror``: a blocking receive passed ``SRTO_RCVTIMEO`` (MJ_AGAIN, MN_XMTIMEOUT)."""

# Rejection reasons a listener sets (access_control.h: 1000 + an HTTP-like status).
SRT_REJX_KEY_NOTSUP = 1001
SRT_REJX_BAD_REQUEST = 1400
SRT_REJX_UNAUTHORIZED = 1401
SRT_REJX_OVERLOAD = 1402
SRT_REJX_FORBIDDEN = 1403
SRT_REJX_NOTFOUND = 1404
SRT_REJX_BAD_MODE = 1405
SRT_REJX_NOTSUP_MEDIA = 1415
SRT_REJX_ISE = 1500
SRT_REJX_GW = 1502

MAX_PAYLOAD = 1500
"""Receive buffer for one live-mode message (at most 1456 bytes; MPEG-TS senders use 1316)."""

LISTEN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_void_p, ctypes.c_char_p)
"""``srt_listen_callback_fn(opaque, new_socket, hs_version, peer_sockaddr, stream_id)``:
return 0 to accept, -1 to reject (after ``srt_setrejectreason``)."""

_NAMES = ("srt-gnutls", "srt-openssl", "srt")
_SONAMES = ("libsrt-gnutls.so.1.5", "libsrt-openssl.so.1.5", "libsrt.so.1.5")


class SrtError(OSError):
    """A libsrt call failed: ``code`` is ``srt_getlasterror``'s (e.g. :data:`SRT_ETIMEOUT`)."""

    def __init__(self, call: str, code: int, text: str) -> None:
        super().__init__(f"{call}: {text} ({code})")
        self.code = code


class SrtUnavailable(RuntimeError):
    """libsrt 1.5 is not installed (Debian: ``apt install libsrt1.5-gnutls``)."""


_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def load() -> ctypes.CDLL:
    """libsrt, loaded and started once per process (``srt_startup``).

    :raises SrtUnavailable: no libsrt 1.5 on this machine."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        candidates = [*_SONAMES, *filter(None, (ctypes.util.find_library(n) for n in _NAMES))]
        for name in candidates:
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            _declare(lib)
            lib.srt_setloglevel(LOG_CRIT)
            if lib.srt_startup() < 0:
                raise SrtUnavailable(f"srt_startup failed in {name}")
            _lib = lib
            return lib
        raise SrtUnavailable("libsrt 1.5 is not installed (Debian: apt install libsrt1.5-gnutls)")


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_void_p, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
    int_p = ctypes.POINTER(c_int)
    signatures: dict[str, tuple[list[object], object]] = {
        "srt_startup": ([], c_int),
        "srt_setloglevel": ([c_int], None),
        "srt_create_socket": ([], c_int),
        "srt_bind": ([c_int, c_char_p, c_int], c_int),
        "srt_listen": ([c_int, c_int], c_int),
        "srt_listen_callback": ([c_int, LISTEN_CALLBACK, c_void_p], c_int),
        "srt_accept": ([c_int, c_char_p, int_p], c_int),
        "srt_close": ([c_int], c_int),
        "srt_getsockname": ([c_int, c_char_p, int_p], c_int),
        "srt_setsockflag": ([c_int, c_int, c_void_p, c_int], c_int),
        "srt_recvmsg": ([c_int, c_char_p, c_int], c_int),
        "srt_getlasterror": ([int_p], c_int),
        "srt_getlasterror_str": ([], c_char_p),
        "srt_setrejectreason": ([c_int, c_int], c_int),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = result


def _check(lib: ctypes.CDLL, call: str, result: int) -> int:
    if result < 0:
        code = lib.srt_getlasterror(None)
        raise SrtError(call, code, (lib.srt_getlasterror_str() or b"").decode(errors="replace"))
    return result


def sockaddr(host: str, port: int) -> bytes:
    """``struct sockaddr_in`` / ``sockaddr_in6`` of a numeric address (Linux layout)."""
    if ":" in host:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) \
            + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", 0)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """``(address, port)`` of a ``sockaddr_in``/``sockaddr_in6``; ``("?", 0)`` otherwise."""
    if len(raw) < 16:
        return "?", 0
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return "?", 0


def peer_of(pointer: int | None) -> str:
    """``host:port`` of the ``struct sockaddr*`` a listen callback receives."""
    if not pointer:
        return "?"
    host, port = parse_sockaddr(ctypes.string_at(pointer, 28))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listener:
    """A listening SRT socket (live mode; libsrt's defaults — 120 ms receiver latency unless
    ``latency_ms``, 5 s peer-idle timeout — inherited by each accepted socket) with an
    access-control callback (libsrt's ``srt_listen_callback``:
    it sees each caller's stream id before the handshake completes and may reject it with
    a reason code that the caller receives).

    :raises SrtError: bind/listen failed (the port is taken: code 1003, MJ_SETUP MN_NORES…)."""

    def __init__(self, host: str, port: int, on_caller: Callable[[int, str, str], int],
                 passphrase: str | None = None, latency_ms: int | None = None, backlog: int = 16) -> None:
        self.lib = lib = load()
        self._callback = LISTEN_CALLBACK(self._hook)  # kept alive while libsrt holds it
        self._on_caller = on_caller
        self.sock = _check(lib, "srt_create_socket", lib.srt_create_socket())
        try:
            if passphrase:
                self._set_string(self.sock, SRTO_PASSPHRASE, passphrase)
            if latency_ms is not None:
                self._set_int(self.sock, SRTO_RCVLATENCY, latency_ms)
            address = sockaddr(host, port)
            _check(lib, "srt_bind", lib.srt_bind(self.sock, address, len(address)))
            _check(lib, "srt_listen_callback", lib.srt_listen_callback(self.sock, self._callback, None))
            _check(lib, "srt_listen", lib.srt_listen(self.sock, backlog))
        except SrtError:
            lib.srt_close(self.sock)
            raise

    @property
    def port(self) -> int:
        raw = ctypes.create_string_buffer(28)
        size = ctypes.c_int(28)
        _check(self.lib, "srt_getsockname", self.lib.srt_getsockname(self.sock, raw, ctypes.byref(size)))
        return parse_sockaddr(raw.raw[:size.value])[1]

    def _hook(self, _opaque: int, new_sock: int, _hs_version: int, peer: int | None, stream_id: bytes | None) -> int:
        # An exception must not escape into libsrt (ctypes would then accept the caller).
        try:
            reason = self._on_caller(new_sock, peer_of(peer), (stream_id or b"").decode(errors="replace"))
        except Exception:  # noqa: BLE001 - refuse rather than let a bug admit a caller
            reason = SRT_REJX_ISE
        if reason:
            self.lib.srt_setrejectreason(new_sock, reason)
            return -1
        return 0

    def accept(self) -> tuple[int, str]:
        """The next connected caller's socket and ``host:port`` (blocks).

        :raises SrtError: the listener was closed."""
        raw = ctypes.create_string_buffer(28)
        size = ctypes.c_int(28)
        sock = _check(self.lib, "srt_accept", self.lib.srt_accept(self.sock, raw, ctypes.byref(size)))
        host, port = parse_sockaddr(raw.raw[:size.value])
        return sock, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def set_receive_timeout(self, sock: int, ms: int) -> None:
        self._set_int(sock, SRTO_RCVTIMEO, ms)

    def _set_int(self, sock: int, option: int, number: int) -> None:
        value = ctypes.c_int(number)
        _check(self.lib, "srt_setsockflag", self.lib.srt_setsockflag(sock, option, ctypes.byref(value), 4))

    def _set_string(self, sock: int, option: int, text: str) -> None:
        data = text.encode()
        _check(self.lib, "srt_setsockflag", self.lib.srt_setsockflag(sock, option, data, len(data)))

    def receive(self, sock: int, buffer: ctypes.Array[ctypes.c_char]) -> bytes:
        """One message (an MPEG-TS sender's 7 × 188 bytes, typically); blocks up to the
        socket's receive timeout.

        :raises SrtError: timed out (:data:`SRT_ETIMEOUT`), the connection broke or closed."""
        size = _check(self.lib, "srt_recvmsg", self.lib.srt_recvmsg(sock, buffer, len(buffer)))
        return buffer.raw[:size]

    def close_socket(self, sock: int) -> None:
        self.lib.srt_close(sock)

    def close(self) -> None:
        self.lib.srt_close(self.sock)
