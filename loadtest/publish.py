"""``loadtest publish``: WHIP-publish a media file or the synthetic pattern, with progress.

The synthetic source is :class:`~loadtest.sources.PatternVideoTrack` (every frame
carries its capture time, ``code="capture_time"``) plus a
:class:`~loadtest.sources.ToneAudioTrack`; a file is played with aiortc's
``MediaPlayer`` (looped) and re-encoded by aiortc.  aiortc's VP8 encoder starts at
a 500 kbps target and only changes it on REMB; ``--bitrate`` sets the target once
the encoder exists (aiortc clamps VP8 to 250 kbps..1.5 Mbps).  The bitrate printed
is what aiortc actually sent (``RTCRtpSender.getStats()``), not the target.

Progress is printed every second (``--json``: one JSON object per line, used by
``loadtest fanout``).  The WHIP session is DELETEd on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any
from urllib.parse import urlparse

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack

from . import aiortc_hooks, whip_client
from .sources import PatternVideoTrack, ToneAudioTrack

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    parser.add_argument("--token", required=True, help="stream key (sent as a Bearer token)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--file", help="media file to publish (looped; decoded and re-encoded by aiortc)")
    source.add_argument("--pattern", action="store_true",
                        help="synthetic pattern with the capture time drawn in each frame (default)")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after N seconds (0 = until Ctrl-C)")
    parser.add_argument("--width", type=int, default=1280, help="pattern width, px (default 1280)")
    parser.add_argument("--height", type=int, default=720, help="pattern height, px (default 720)")
    parser.add_argument("--fps", type=float, default=30.0, help="pattern frame rate (default 30)")
    parser.add_argument("--bitrate", type=int, default=1_500_000,
                        help="VP8 encoder target, bits/s (default 1500000; 0 = aiortc's default 500000)")
    parser.add_argument("--json", action="store_true", help="print progress as JSON lines")


def _tracks(args: argparse.Namespace) -> tuple[list[MediaStreamTrack], Any]:
    if args.file:
        from aiortc.contrib.media import MediaPlayer

        player = MediaPlayer(args.file, loop=True)
        tracks = [t for t in (player.video, player.audio) if t is not None]
        if not tracks:
            raise SystemExit(f"{args.file}: no audio or video stream")
        return tracks, player
    video = PatternVideoTrack(args.width, args.height, args.fps, code="capture_time")
    return [video, ToneAudioTrack()], None


async def _sender_counts(sender: RTCRtpSender) -> tuple[int, int]:
    report = await sender.getStats()
    for stats in report.values():
        if getattr(stats, "type", "") == "outbound-rtp":
            return int(stats.packetsSent), int(stats.bytesSent)
    return 0, 0


async def run(args: argparse.Namespace) -> int:
    """Publish until ``--seconds`` elapse or a signal arrives; returns the exit status."""
    if urlparse(args.url).hostname in LOOPBACK_HOSTS:
        whip_client.pin_loopback()
    tracks, player = _tracks(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        session = await whip_client.publish(args.url, args.token, tracks)
    except whip_client.WhipError as exc:
        print(f"publish: WHIP POST refused: {exc}", file=sys.stderr)
        return 1
    senders = {t.kind: t.sender for t in session.pc.getTransceivers() if t.sender.track is not None}
    video_track = next((t for t in tracks if isinstance(t, PatternVideoTrack)), None)
    bitrate_set = args.bitrate <= 0 or "video" not in senders
    started = time.monotonic()
    last: dict[str, tuple[int, int]] = {k: (0, 0) for k in senders}
    status = 0
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            elapsed = time.monotonic() - started
            state = session.pc.connectionState
            if not bitrate_set:
                bitrate_set = aiortc_hooks.set_encoder_target_bitrate(senders["video"], args.bitrate)
            line: dict[str, Any] = {"t": time.time(), "elapsed": round(elapsed, 2), "state": state,
                                    "bitrate_target": args.bitrate if bitrate_set else None}
            for kind, sender in senders.items():
                packets, octets = await _sender_counts(sender)
                prev = last[kind]
                last[kind] = (packets, octets)
                line[kind] = {"packets": packets, "bytes": octets,
                              "kbps": round((octets - prev[1]) * 8 / 1000, 1), "pps": packets - prev[0]}
            if video_track is not None:
                line["frames"] = video_track.frames_produced
            if args.json:
                print(json.dumps(line, separators=(",", ":")), flush=True)
            else:
                parts = [f"[{elapsed:6.1f}s] {state:<10}"]
                for kind in ("video", "audio"):
                    if kind in line:
                        parts.append(f"{kind} {line[kind]['kbps']:7.1f} kbps {line[kind]['pps']:4d} pkt/s")
                print("  ".join(parts), flush=True)
            if state in ("failed", "closed"):
                print(f"publish: connection {state}", file=sys.stderr)
                status = 1
                break
            if args.seconds and elapsed >= args.seconds:
                break
    finally:
        try:
            await asyncio.wait_for(session.close(), 10)
        except TimeoutError:
            pass
        for track in tracks:
            track.stop()
        del player
    return status


def main(args: argparse.Namespace) -> int:
    return asyncio.run(run(args))
