"""aiortc private API used only by the load tester (never by the product).

The product keeps its aiortc private API in :mod:`sfu.aiortc_private`; these hooks exist
so that load-test subscribers and publishers stay cheap enough to run hundreds of them
beside the SFU on one machine.  Tested against the same aiortc versions as the product.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import pylibsrtp
from aiortc import RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport, State

_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: tv_sec, tv_nsec
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_READS_PER_WAKE = 64


def install_raw_rtp_receiver(
    dtls: RTCDtlsTransport, on_rtp: Callable[[bytes, int], None], receive_buffer: int = 0
) -> bool:
    """Receive RTP straight from a connected transport's socket (load-test subscribers only).

    aiortc's receive path (aioice queue → DTLS read loop → ``RtpPacket.parse`` →
    receiver) costs ~30 µs a packet, too much to host 100+ viewers beside the SFU
    on a small machine.  This reads the nominated candidate pair's socket itself:
    RTP is SRTP-unprotected here and handed to ``on_rtp(plain_rtp_bytes, arrival_us)``;
    STUN, DTLS and RTCP (payload types 192..223, RFC 5761 §4) keep aiortc's path.
    ``arrival_us`` is when the kernel received the datagram (``SO_TIMESTAMPNS``,
    CLOCK_REALTIME, µs), as a browser's network thread would stamp it — not when this
    busy process got round to reading it, which a transport-cc sender would take for a
    queue on the path.  aiortc's receivers then see no RTP (no receiver statistics, no
    NACKs): the caller does its own accounting.  ``receive_buffer`` (bytes, when > 0)
    raises the socket's ``SO_RCVBUF`` (capped by ``net.core.rmem_max``).  Returns False
    when not connected yet.
    """
    if dtls._state != State.CONNECTED or dtls._rx_srtp is None:
        return False
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None or pair.protocol is None or pair.protocol.transport is None:
        return False
    protocol = pair.protocol
    transport = protocol.transport
    original = protocol.datagram_received
    unprotect = dtls._rx_srtp.unprotect
    sock = getattr(transport, "_sock", None)  # the real socket (get_extra_info's wrapper has no recvmsg)
    if sock is None:
        return False
    if receive_buffer > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    ancillary = socket.CMSG_SPACE(_TIMESPEC.size)
    unpack = _TIMESPEC.unpack_from

    def read_ready() -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                data, ancdata, _, addr = sock.recvmsg(2048, ancillary)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
                arrival_us = 0
                for level, kind, value in ancdata:
                    if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                        seconds, nanoseconds = unpack(value)
                        arrival_us = seconds * 1_000_000 + nanoseconds // 1000
                if not arrival_us:
                    arrival_us = time.time_ns() // 1000
                try:
                    plain = unprotect(data)
                except pylibsrtp.Error:
                    continue
                on_rtp(plain, arrival_us)
            else:
                original(data, addr)

    # The transport's own reader (asyncio's ``_read_ready``, recvfrom) is replaced by one
    # reading with recvmsg for the timestamps; closing the transport removes it as before.
    # (The selector loop's private _remove_reader/_add_reader: the public ones refuse an
    # fd a transport owns.)
    loop: Any = asyncio.get_running_loop()
    loop._remove_reader(sock.fileno())
    loop._add_reader(sock.fileno(), read_ready)
    return True


def set_encoder_target_bitrate(sender: RTCRtpSender, bitrate: int) -> bool:
    """Set the target bitrate (bps) of an encoding sender's video encoder (load tester only).

    aiortc creates the encoder when the first frame is encoded and otherwise only
    changes its target on REMB (VP8 clamps to 250 kbps..1.5 Mbps).  Returns False
    while there is no encoder yet (call again later) or it has no bitrate control.
    """
    encoder = getattr(sender, "_RTCRtpSender__encoder", None)
    if encoder is None or not hasattr(encoder, "target_bitrate"):
        return False
    encoder.target_bitrate = bitrate
    return True


def route_rtcp_to_sender(sender: RTCRtpSender, ssrcs: Sequence[int]) -> None:
    """Have aiortc route RTCP feedback and reports about ``ssrcs`` to ``sender``: its RtpRouter
    only knows the sender's own SSRC, and a simulcast publisher sends several
    (:mod:`loadtest.simulcast_publisher`)."""
    router = sender.transport._rtp_router
    for ssrc in ssrcs:
        router.register_sender(sender, ssrc)
