"""Micro-benchmark of the SFU's per-consumer forwarding path, in isolation.

``python -m loadtest.forward_micro --consumers 100 --packets 2000``

Builds real :class:`sfu.consumer.Consumer` objects whose
:class:`sfu.aiortc_private.RawRtpSender` protects with a real SRTP session
(AES-CM-128-HMAC-SHA1-80, as negotiated with browsers) and sends with real
``sendto`` on 127.0.0.1 UDP sockets to a sink, then times
``Consumer.forward`` for a stream of 1,100-byte VP8 packets.  ``--adaptive`` times what a
viewer gets by default since adaptive delivery: an adaptive consumer (layer and temporal
checks) that numbers each packet for transport-cc through a
:class:`sfu.bandwidth.BandwidthEstimator` (the viewer offered it, as browsers do).  It reports CPU µs
per forwarded packet (``time.process_time``, so user + kernel of this process)
and, for comparison, the raw floor of the same work written inline (pack a
header, protect, ``sendto``).  Everything a WebRTC session adds on top (ICE,
DTLS, RTCP, the event loop) is left out: this isolates the hot path only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import time
from typing import Any

import pylibsrtp
from aiortc import RTCRtpCodecParameters
from aiortc.rtcdtlstransport import State

from sfu import aiortc_private
from sfu.bandwidth import BandwidthEstimator
from sfu.consumer import Consumer
from sfu.producer import MediaPacket
from sfu.rtp import URI_ABS_SEND_TIME, URI_MID
from sfu.twcc import TRANSPORT_CC_URI

PAYLOAD = bytes(range(256)) * 4 + bytes(76)  # 1,100 bytes, like a full VP8 packet


class _Pair:
    def __init__(self, transport: asyncio.DatagramTransport, addr: tuple[str, int]) -> None:
        class _Protocol:
            pass

        self.protocol = _Protocol()
        self.protocol.transport = transport  # type: ignore[attr-defined]
        self.remote_addr = addr


class _FakeDtls:
    """Just enough of RTCDtlsTransport for RawRtpSender: state, SRTP session, nominated pair."""

    def __init__(self, transport: asyncio.DatagramTransport, sink: tuple[str, int]) -> None:
        key = os.urandom(30)
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        self._state = State.CONNECTED
        self._tx_srtp = pylibsrtp.Session(policy)

        class _Ice:
            pass

        self.transport = _Ice()
        self.transport._connection = _Ice()  # type: ignore[attr-defined]
        self.transport._connection._nominated = {1: _Pair(transport, sink)}  # type: ignore[attr-defined]


def _params(ssrc: int, adaptive: bool = False) -> Any:
    class P:
        pass

    p = P()
    p.ssrc, p.rtx_ssrc, p.rtx_payload_type, p.mid, p.cname = ssrc, ssrc + 1, 97, "1", "bench"
    p.codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    p.extensions = {URI_MID: 1, URI_ABS_SEND_TIME: 3}
    if adaptive:
        p.extensions[TRANSPORT_CC_URI] = 5
    return p


async def run(consumers: int, packets: int, adaptive: bool = False) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink_addr = sink.getsockname()
    out: list[Consumer] = []
    transports = []
    for i in range(consumers):
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        transports.append(transport)
        consumer = Consumer("video", 90000, f"bench-{i}", adaptive=adaptive)
        if adaptive:
            consumer.bwe = BandwidthEstimator()
        consumer.on_sender_started(_params(1000 + 2 * i, adaptive),
                                   aiortc_private.RawRtpSender(_FakeDtls(transport, sink_addr)))  # type: ignore[arg-type]
        out.append(consumer)

    def media(seq: int) -> MediaPacket:
        return MediaPacket(seq & 0xFFFF, (seq // 7) * 3000 & 0xFFFFFFFF, int(seq % 7 == 6), PAYLOAD, seq == 0, None)

    # warm up (also passes the key-frame gate)
    for seq in range(50):
        m = media(seq)
        for c in out:
            c.forward(m)
    start = time.process_time()
    for seq in range(50, 50 + packets):
        m = media(seq)
        for c in out:
            c.forward(m)
    forward_us = (time.process_time() - start) * 1e6 / (packets * consumers)

    # raw floor: the same bytes, written inline
    header = struct.Struct("!BBHII")
    srtp = [_FakeDtls(t, sink_addr)._tx_srtp for t in transports]
    socks = [t.get_extra_info("socket") for t in transports]
    raw_socks = [s._sock if hasattr(s, "_sock") else s for s in socks]
    start = time.process_time()
    for seq in range(packets):
        for i in range(consumers):
            raw_socks[i].sendto(srtp[i].protect(header.pack(0x80, 96, seq & 0xFFFF, seq * 3000 & 0xFFFFFFFF, 1000 + i) + PAYLOAD), sink_addr)
    floor_us = (time.process_time() - start) * 1e6 / (packets * consumers)
    for t in transports:
        t.close()
    sink.close()
    dropped = sum(c.raw.dropped for c in out if c.raw is not None)
    return {"consumers": consumers, "packets": packets, "adaptive": adaptive,
            "forward_us_per_packet": round(forward_us, 2),
            "raw_floor_us_per_packet": round(floor_us, 2), "dropped": dropped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.forward_micro", description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", type=int, default=100)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--adaptive", action="store_true",
                        help="adaptive consumers numbering packets for transport-cc (the default for viewers)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.consumers, args.packets, args.adaptive))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
