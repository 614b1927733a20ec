"""What an LL-HLS ladder re-plan costs the transcoder: ``LadderTranscoder.feed_video`` wall
time per frame for a 640x360 → 1280x720 ramp against a constant 1280x720 source.

Each run feeds ``--seconds`` of 30 fps pattern video (no audio) through the default
ladder (720p,480p,360p, libx264); the ramp switches size after 2 s, so the re-plan
happens at the first segment boundary the new size has held for ``replan_after_s``.
Runs alternate (constant, ramp) ``--runs`` times; each prints the median and p95 of the
frames from 5 s on, the median of key-frame slots, the slowest frame with its slot, and
in a ramp the frame that re-planned (``replan_slot``, ``replan_ms``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from fractions import Fraction
from typing import Any

import av

from hls_bridge.encoders import choose_encoder
from hls_bridge.ladder import parse_ladder
from hls_bridge.store import RoomStore
from hls_bridge.transcoder import LadderTranscoder

from .sources import PatternVideoTrack

FPS = 30


def _frames(runs: list[tuple[tuple[int, int], int]]) -> list[av.VideoFrame]:
    out, index = [], 0
    for (width, height), count in runs:
        track = PatternVideoTrack(width, height, FPS, code="counter")
        for _ in range(count):
            frame = track.make_frame(index, index)
            frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)
            out.append(frame)
            index += 1
    return out


def measure(label: str, runs: list[tuple[tuple[int, int], int]], ladder: str) -> dict[str, Any]:
    """Feed the frames of ``runs`` ((width, height), frames) once; per-frame timings (ms)."""
    video = _frames(runs)
    encoder = choose_encoder(["libx264"])
    transcoder = LadderTranscoder(RoomStore(stream_id="s1"), parse_ladder(ladder), fps=FPS,
                                  audio=False, encoder_choice=encoder)
    times, replan_slot = [], None
    for index, frame in enumerate(video):
        start = time.perf_counter()
        transcoder.feed_video(frame)
        times.append((time.perf_counter() - start) * 1000)
        if replan_slot is None and transcoder.stats.replans:
            replan_slot = index
    transcoder.end()
    transcoder.close()
    steady = sorted(times[5 * FPS:])
    keys = [times[i] for i in range(5 * FPS, len(times), FPS)]
    slowest = max(range(len(times)), key=times.__getitem__)
    return {
        "label": label, "replans": transcoder.stats.replans,
        "median_ms": round(statistics.median(steady), 1),
        "p95_ms": round(steady[int(0.95 * len(steady))], 1),
        "keyframe_median_ms": round(statistics.median(keys), 1),
        "slowest_ms": round(times[slowest], 1), "slowest_slot": slowest,
        "replan_slot": replan_slot,
        "replan_ms": None if replan_slot is None else round(times[replan_slot], 1),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="alternating pairs (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="media seconds per run (default 8)")
    parser.add_argument("--ladder", default="720p,480p,360p", help="ladder (default 720p,480p,360p)")


def main(args: argparse.Namespace) -> int:
    frames = args.seconds * FPS
    for _ in range(args.runs):
        for label, runs in (("constant 1280x720", [((1280, 720), frames)]),
                            ("ramp 640x360 -> 1280x720", [((640, 360), 2 * FPS),
                                                           ((1280, 720), frames - 2 * FPS)])):
            print(json.dumps(measure(label, runs, args.ladder)), flush=True)
    return 0
