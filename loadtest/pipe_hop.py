"""Latency added by a node-to-node pipe (cascading).

``python -m loadtest pipe-hop --seconds 20``

Runs the service (embedded SFU = the room's origin node) and a second SFU `Worker` in
this process, publishes the capture-time pattern over WHIP to the origin, pipes the
room to the second node (``Worker.pipe_offer`` → ``publish`` → ``pipe_answer``, what
signaling does when it cascades), and views it on both nodes with aiortc viewers that
decode every frame.  For each frame seen by both viewers, hop = (arrival on the edge
node's viewer) − (arrival on the origin's viewer), where arrival is the wall clock
after decoding; both viewers decode alike, so decoding cancels out.  Also reports
each viewer's capture→decoded latency.  All on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from . import whip_client
from .pattern import code_to_capture_time, read_code
from .report import ms_percentiles
from .sources import PatternVideoTrack

__all__ = ["main"]

PIPE_ID = "pipe-bench-0000000000000000000000"


async def _viewer(worker: Any, session_id: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    reply = await worker.subscribe({"room": "demo", "session_id": session_id,
                                    "sdp": pc.localDescription.sdp})
    if "sdp" not in reply:
        raise RuntimeError(f"subscribe failed: {reply}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    return pc


async def _collect(pc: RTCPeerConnection, settle: float, seconds: float) -> dict[int, float]:
    """code → wall-clock arrival (after decode) during ``seconds`` after ``settle``
    seconds of reading and discarding (so no frame waits unread in a jitter buffer)."""
    track = next(t.receiver.track for t in pc.getTransceivers() if t.kind == "video")
    seen: dict[int, float] = {}
    start = time.monotonic() + settle
    deadline = start + seconds
    while time.monotonic() < deadline:
        try:
            frame = await asyncio.wait_for(track.recv(), 5)
        except TimeoutError:
            continue
        now = time.time()
        code = read_code(frame)
        if code is not None and time.monotonic() >= start:
            seen.setdefault(code, now)
    return seen


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from relaycast.service import Service
    from sfu.worker import Worker
    from signaling.config import SignalingConfig

    whip_client.pin_loopback()
    key = "sk_pipe_hop_bench_0123456789"
    config = SignalingConfig.from_env({}, host="127.0.0.1", port=0, demo_stream_key=key,
                                      ice_gather=("127.0.0.1",))
    async with Service(config) as svc:
        origin = svc.worker
        assert origin is not None
        edge_config = dataclasses.replace(svc.config.sfu, node_id="sfu-edge")
        async with Worker(edge_config) as edge:
            publisher = await whip_client.publish(
                f"{svc.url}/whip/demo", key,
                [PatternVideoTrack(args.width, args.height, args.fps, code="capture_time")])
            viewers: list[RTCPeerConnection] = []
            try:
                await whip_client.wait_connected(publisher.pc)
                offer = await origin.pipe_offer({"room": "demo", "session_id": PIPE_ID})
                answer = await edge.publish({"room": "demo", "session_id": PIPE_ID,
                                             "sdp": offer["sdp"],
                                             "identity": {"id": "origin", "role": "publisher"}})
                await origin.pipe_answer({"session_id": PIPE_ID, "sdp": answer["sdp"]})
                viewers = [await _viewer(origin, "view-origin-000000000000000000"),
                           await _viewer(edge, "view-edge-0000000000000000000000")]
                on_origin, on_edge = await asyncio.gather(
                    _collect(viewers[0], args.settle, args.seconds),
                    _collect(viewers[1], args.settle, args.seconds))
            finally:
                for pc in viewers:
                    await pc.close()
                await publisher.close()
    common = sorted(set(on_origin) & set(on_edge))
    hop = [on_edge[c] - on_origin[c] for c in common]
    g2g_origin = [t - code_to_capture_time(c, t) for c, t in on_origin.items()]
    g2g_edge = [t - code_to_capture_time(c, t) for c, t in on_edge.items()]
    report = {
        "config": {"size": f"{args.width}x{args.height}", "fps": args.fps, "seconds": args.seconds},
        "frames": {"origin": len(on_origin), "edge": len(on_edge), "both": len(common)},
        "hop_ms": ms_percentiles(hop, digits=2),
        "capture_to_decoded_origin_ms": ms_percentiles(g2g_origin, digits=2),
        "capture_to_decoded_edge_ms": ms_percentiles(g2g_edge, digits=2),
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "pipe_hop.json").write_text(json.dumps(report, indent=2))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window (default 20)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring (default 2)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=None)


def main(args: argparse.Namespace) -> int:
    asyncio.run(run(args))
    return 0
