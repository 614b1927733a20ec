"""Transcode capacity: how many rooms' ABR ladders one core keeps in real time.

``python -m loadtest transcode --rooms 1,2,3 --seconds 10``

Each room is its own process running the real `hls_bridge.transcoder.LadderTranscoder`
(scale → H.264 per rung → CMAF parts → in-memory `RoomStore`, plus Opus-rate stereo →
AAC) on decoded frames, as a bridge does after its `ProducerTap`.  The source is the
synthetic moving pattern of `loadtest.sources` with per-frame sensor-like noise
(``--noise``, luma standard deviation), passed once through VP8 at the publisher's
bitrate (``--source-bitrate``) because a bridge transcodes what it decodes from a WebRTC
publisher, not a clean camera signal; frames are pre-built (a pool of ``--pool`` frames cycled
with fresh timestamps) so the measurement is the transcode alone.

Two measures per step of K concurrent rooms:

- **flat out** (``--mode flat``): every room is fed as fast as its transcoder accepts
  frames.  ``rtf_per_core`` = media seconds / CPU seconds of the room's process: how many
  rooms of this ladder one core sustains in real time.  ``aggregate`` = media seconds of
  all rooms / wall seconds: rooms in real time on this machine.
- **paced** (``--mode paced``): every room is fed at the source frame rate (a live room);
  ``lag_s`` = how far behind real time the last frame finished (≤ one segment means the
  machine holds K rooms live).

Output: a table, and JSON in ``--out``.  Work is bounded by ``--seconds`` per room.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from .sources import PatternVideoTrack, ToneAudioTrack

__all__ = ["RoomResult", "run_room", "main"]

VIDEO_TB = Fraction(1, 90_000)


@dataclass
class RoomResult:
    room: int
    media_s: float
    wall_s: float
    cpu_s: float
    worker_s: float
    """Seconds the transcoder's worker thread was busy (scale + encode + package)."""
    lag_s: float
    encoder: str
    renditions: list[str]
    parts: int

    @property
    def rtf_per_core(self) -> float:
        return self.media_s / self.cpu_s if self.cpu_s else 0.0


def _through_vp8(frames: list[av.VideoFrame], fps: float, bitrate: int) -> list[av.VideoFrame]:
    """What a bridge really decodes: the frames after the publisher's VP8 encode (libvpx
    realtime at ``bitrate`` bps) and the bridge's own decode."""
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, round(fps)), Fraction(round(fps))
    enc.bit_rate = bitrate
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    dec = av.CodecContext.create("vp8", "r")
    out: list[av.VideoFrame] = []
    for i, frame in enumerate(frames + [None]):  # type: ignore[operator]
        if frame is not None:
            frame.pts = i
        for packet in enc.encode(frame):
            out.extend(dec.decode(packet))
    return out[: len(frames)]


def _video_pool(
    width: int, height: int, fps: float, count: int, noise: float, source_bitrate: int = 0
) -> list[av.VideoFrame]:
    """``count`` source frames: the moving pattern plus luma noise, then through VP8 at
    ``source_bitrate`` bps when non-zero."""
    track = PatternVideoTrack(width, height, fps, code="counter")
    rng = np.random.default_rng(1)
    frames = []
    for i in range(count):
        frame = track.make_frame(i, i)
        if noise > 0:
            plane = frame.planes[0]
            y = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
            noisy = y[:, :width].astype(np.int16) + rng.normal(0, noise, (height, width)).astype(np.int16)
            y[:, :width] = np.clip(noisy, 0, 255).astype(np.uint8)
        frames.append(frame)
    return _through_vp8(frames, fps, source_bitrate) if source_bitrate > 0 else frames


async def _frames(
    pool: list[av.VideoFrame], audio_pool: list[av.AudioFrame], fps: float, seconds: float,
    paced: bool,
) -> AsyncIterator[av.VideoFrame | av.AudioFrame]:
    """Video and audio in media-time order, re-stamped; paced to real time if asked."""
    count = round(seconds * fps)
    tone = ToneAudioTrack(channels=2)
    samples_per_frame = tone.samples_per_frame
    audio_index = 0
    start = time.monotonic()
    for i in range(count):
        t = i / fps
        while audio_index * samples_per_frame / tone.sample_rate <= t:
            frame = audio_pool[audio_index % len(audio_pool)]
            frame.pts = audio_index * samples_per_frame
            audio_index += 1
            yield frame
        if paced:
            delay = start + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = pool[i % len(pool)]
        frame.pts = round(i * 90_000 / fps)
        frame.time_base = VIDEO_TB
        yield frame


async def _run_room(args: dict[str, Any]) -> RoomResult:
    from hls_bridge.bridge import with_x264_preset
    from hls_bridge.encoders import choose_encoder
    from hls_bridge.ladder import parse_ladder
    from hls_bridge.store import RoomStore
    from hls_bridge.transcoder import LadderTranscoder

    width, height, fps = args["width"], args["height"], args["fps"]
    pool = _video_pool(width, height, fps, args["pool"], args["noise"], args["source_bitrate"])
    tone = ToneAudioTrack(channels=2)
    audio_pool = [tone.make_frame(i * tone.samples_per_frame) for i in range(50)]
    encoder = with_x264_preset(choose_encoder(), args["preset"])
    room = RoomStore()
    transcoder = LadderTranscoder(
        room, parse_ladder(args["ladder"]), fps=round(fps), encoder_choice=encoder, audio=True,
    )
    # Wait for every process to be ready so concurrent rooms overlap fully.
    barrier = args.get("barrier")
    if barrier is not None:
        barrier.wait(timeout=120)
    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        await transcoder.run(_frames(pool, audio_pool, fps, args["seconds"], args["paced"]))
    finally:
        transcoder.close()
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    parts = sum(len(s.parts) for r in room.renditions.values() for s in r.playlist.segments)
    return RoomResult(
        room=args["room"], media_s=args["seconds"], wall_s=wall, cpu_s=cpu,
        worker_s=transcoder.worker_seconds, lag_s=max(0.0, wall - args["seconds"]),
        encoder=encoder.name, renditions=sorted(room.renditions), parts=parts,
    )


def run_room(args: dict[str, Any]) -> dict[str, Any]:
    """Process entry point: one room's transcode; returns `RoomResult` as a dict."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = asyncio.run(_run_room(args))
    out = asdict(result)
    out["rtf_per_core"] = result.rtf_per_core
    return out


def run_step(rooms: int, base: dict[str, Any]) -> list[dict[str, Any]]:
    """K rooms concurrently, one process each; results in room order."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(rooms)
        with ctx.Pool(rooms) as pool:
            jobs = [{**base, "room": i, "barrier": barrier} for i in range(rooms)]
            return pool.map(run_room, jobs)


def _summary(rooms: int, mode: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    wall = max(r["wall_s"] for r in results)
    media = sum(r["media_s"] for r in results)
    return {
        "rooms": rooms,
        "mode": mode,
        "encoder": results[0]["encoder"],
        "renditions": results[0]["renditions"],
        "rtf_per_core_min": min(r["rtf_per_core"] for r in results),
        "rtf_per_core_mean": sum(r["rtf_per_core"] for r in results) / len(results),
        "aggregate_rooms_realtime": media / wall if wall else 0.0,
        "max_lag_s": max(r["lag_s"] for r in results),
        "cpu_s": sum(r["cpu_s"] for r in results),
        "wall_s": wall,
        "rooms_detail": results,
    }


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("room counts must be positive integers")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rooms", type=_ints, default=[1, 2], help="concurrent rooms per step (default 1,2)")
    parser.add_argument("--mode", choices=["flat", "paced", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=10.0, help="media seconds per room (default 10)")
    parser.add_argument("--size", default="1280x720", help="source WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--fps", type=float, default=30.0, help="source frame rate (default 30)")
    parser.add_argument("--ladder", default="720p,480p,360p", help="ABR ladder (default 720p,480p,360p)")
    parser.add_argument("--preset", default="veryfast",
                        help="libx264 preset, as RELAYCAST_HLS_X264_PRESET (default veryfast)")
    parser.add_argument("--noise", type=float, default=3.0, help="luma noise std-dev (default 3.0)")
    parser.add_argument("--pool", type=int, default=60, help="distinct source frames cycled (default 60)")
    parser.add_argument("--source-bitrate", type=int, default=1_500_000,
                        help="pass the source through VP8 at this many bps first, as a WebRTC "
                             "publisher's frames are (default 1500000; 0: raw pattern)")
    parser.add_argument("--out", type=Path, default=None, help="directory for transcode.json")


def main(args: argparse.Namespace) -> int:
    width, _, height = args.size.lower().partition("x")
    base = {
        "width": int(width), "height": int(height), "fps": args.fps, "seconds": args.seconds,
        "ladder": args.ladder, "noise": args.noise, "pool": args.pool,
        "source_bitrate": args.source_bitrate, "preset": args.preset,
    }
    modes = ["flat", "paced"] if args.mode == "both" else [args.mode]
    steps = []
    print(f"transcode: {args.size}@{args.fps:g} → {args.ladder} (x264 {args.preset}), "
          f"{args.seconds:g} s per room, "
          f"{os.cpu_count()} cores")
    print(f"{'mode':6} {'rooms':>5} {'encoder':10} {'rtf/core':>9} {'aggregate':>9} {'max lag s':>9}")
    for mode in modes:
        for rooms in args.rooms:
            results = run_step(rooms, {**base, "paced": mode == "paced"})
            step = _summary(rooms, mode, results)
            steps.append(step)
            print(f"{mode:6} {rooms:5d} {step['encoder']:10} {step['rtf_per_core_mean']:9.2f} "
                  f"{step['aggregate_rooms_realtime']:9.2f} {step['max_lag_s']:9.2f}", flush=True)
    report = {"config": {**base, "cores": os.cpu_count()}, "steps": steps}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "transcode.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out / 'transcode.json'}")
    return 0
