"""aiortc private API used only by the load tester (never by the product).

The product keeps its aiortc private API in :mod:`sfu.aiortc_private`; these hooks exist
so that load-test subscribers and publishers stay cheap enough to run hundreds of them
beside the SFU on one machine.  Tested against the same aiortc versions as the product.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import pylibsrtp
from aiortc import RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport, State


def install_raw_rtp_receiver(
    dtls: RTCDtlsTransport, on_rtp: Callable[[bytes], None], receive_buffer: int = 0
) -> bool:
    """Receive RTP straight from a connected transport's socket (load-test subscribers only).

    aiortc's receive path (aioice queue → DTLS read loop → ``RtpPacket.parse`` →
    receiver) costs ~30 µs a packet, too much to host 100+ viewers beside the SFU
    on a small machine.  This makes the nominated candidate pair's datagram
    callback SRTP-unprotect RTP itself and call ``on_rtp(plain_rtp_bytes)``; STUN,
    DTLS and RTCP (payload types 192..223, RFC 5761 §4) keep aiortc's path.
    aiortc's receivers then see no RTP (no receiver statistics, no NACKs): the
    caller does its own accounting.  ``receive_buffer`` (bytes, when > 0) raises the
    socket's ``SO_RCVBUF`` (capped by ``net.core.rmem_max``).  Returns False when
    not connected yet.
    """
    if dtls._state != State.CONNECTED or dtls._rx_srtp is None:
        return False
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None or pair.protocol is None:
        return False
    protocol = pair.protocol
    original = protocol.datagram_received
    unprotect = dtls._rx_srtp.unprotect
    sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
    if receive_buffer > 0 and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)

    def datagram_received(data: bytes, addr: Any) -> None:
        if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
            try:
                plain = unprotect(data)
            except pylibsrtp.Error:
                return
            on_rtp(plain)
        else:
            original(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]
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
