"""Micro-benchmark of the SFU's per-packet ingest path, in isolation.

``python -m loadtest.producer_micro --packets 21000 --rounds 20``

Times :meth:`sfu.producer.Producer.on_rtp` with no consumer attached — what every publisher
packet costs before fan-out: key-frame detection, the shared
:class:`~sfu.producer.MediaPacket` and the ingest-health counters
(:meth:`sfu.ingest_health.TrackHealth.on_packet`) — for a VP8 stream of 1,100-byte packets,
7 per frame at 30 fps with a key frame every 2 s.  It also times ``TrackHealth.on_packet``
alone.  CPU µs per packet (``time.process_time``), the median of ``--rounds`` rounds of fresh
packets (sequence numbers keep increasing).  The per-consumer cost is
:mod:`loadtest.forward_micro`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from aiortc import RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.rtp import RtpPacket

from sfu.ingest_health import TrackHealth
from sfu.producer import Producer

PAYLOAD = bytes(range(256)) * 4 + bytes(76)  # 1,100 bytes
PACKETS_PER_FRAME = 7
GOP_FRAMES = 60
VP8_KEYFRAME_640X360 = bytes.fromhex("502a009d012a80026801")  # frame tag, start code, size


class _Transport:
    """Just enough of an RTCDtlsTransport for RTCRtpReceiver's constructor."""

    state = "new"


def _packets(first_seq: int, count: int) -> list[RtpPacket]:
    out = []
    for seq in range(first_seq, first_seq + count):
        frame, index = divmod(seq, PACKETS_PER_FRAME)
        packet = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF,
                           timestamp=frame * 3000 & 0xFFFFFFFF, ssrc=1234,
                           marker=int(index == PACKETS_PER_FRAME - 1))
        if index == 0 and frame % GOP_FRAMES == 0:
            packet.payload = b"\x10" + VP8_KEYFRAME_640X360 + PAYLOAD[11:]
        elif index == 0:
            packet.payload = b"\x10" + PAYLOAD[1:]  # S bit, then an interframe's header
        else:
            packet.payload = b"\x00" + PAYLOAD[1:]
        out.append(packet)
    return out


async def run(packets: int, rounds: int) -> dict[str, float | int]:
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    producer = Producer("video", codec, RTCRtpReceiver("video", _Transport()), "bench")
    health = TrackHealth("video", "video/VP8", 90000)
    on_rtp_us, on_packet_us = [], []
    for r in range(rounds):
        batch = _packets(r * packets, packets)
        start = time.process_time()
        for packet in batch:
            producer.on_rtp(packet, 0)
        on_rtp_us.append((time.process_time() - start) * 1e6 / packets)
        start = time.process_time()
        for packet in batch:
            health.on_packet(packet.sequence_number, packet.marker, 1100)
        on_packet_us.append((time.process_time() - start) * 1e6 / packets)
    return {"packets": packets, "rounds": rounds,
            "on_rtp_us_per_packet": round(statistics.median(on_rtp_us), 3),
            "health_on_packet_us_per_packet": round(statistics.median(on_packet_us), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.producer_micro",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--packets", type=int, default=21000, help="packets per round")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args.packets, args.rounds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
