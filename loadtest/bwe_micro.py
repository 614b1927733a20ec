"""Micro-benchmark of the per-viewer bandwidth estimator (:mod:`sfu.bandwidth`).

``python -m loadtest.bwe_micro [--calls 1000000] [--feedbacks 4000] [--per-feedback 15]``

* ``next_sequence``: ns per call — the estimator's cost on the forwarding hot path, one call
  per RTP packet sent to a viewer (with the real ``time.monotonic`` clock).
* ``on_transport_feedback``: µs per RTCP transport feedback packet, for a stream sending
  ``--per-feedback`` packets per 50 ms feedback interval (15 = 300 packets/s, ~2.5 Mbit/s
  of 1,100-byte packets plus audio), the feedback built by :class:`sfu.twcc.TwccRecorder`
  from arrivals with a few ms of jitter and 1 % loss, as a viewer's would be; twice: with
  the packets evenly spread (``paced``: a packet group every ~3 ms, the most work) and in
  video-frame bursts at 30 frames/s (``frames``: how an SFU forwards).  Only the
  ``on_transport_feedback`` calls are timed (``time.perf_counter``); sending happens between
  them on a virtual clock, so the estimator does its full work (groups, trendline, AIMD,
  loss, throughput) on realistic data.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from sfu.bandwidth import BandwidthEstimator
from sfu.twcc import TwccRecorder


def bench_next_sequence(calls: int) -> float:
    """ns per ``next_sequence`` call (best of 3 runs, loop overhead subtracted)."""
    bwe = BandwidthEstimator()
    best = float("inf")
    for _ in range(3):
        next_sequence = bwe.next_sequence
        start = time.perf_counter()
        for _ in range(calls):
            next_sequence(1100)
        elapsed = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(calls):
            pass
        loop = time.perf_counter() - start
        best = min(best, (elapsed - loop) / calls * 1e9)
    return best


def _send_times(per_feedback: int, interval: float, frames: bool) -> list[float]:
    """Offsets (s) in one feedback interval at which packets are sent: evenly spread
    (``frames`` False: a paced sender — the most packet groups, the most work), or in
    bursts of one video frame each (30 frames/s; ``frames`` True: how an SFU forwards)."""
    if not frames:
        return [k * interval / per_feedback for k in range(per_feedback)]
    per_frame = interval * 30
    return [int(k / per_frame) / 30 + (k % max(1, round(per_frame))) * 1e-4
            for k in range(per_feedback)]


def bench_feedback(feedbacks: int, per_feedback: int, seed: int = 7,
                   frames: bool = False) -> dict[str, float]:
    """µs per feedback packet (mean, median, p99) and the feedback packets' mean size."""
    rng = random.Random(seed)
    now = [100.0]
    bwe = BandwidthEstimator(initial_bps=2_000_000, clock=lambda: now[0])
    recorder = TwccRecorder(sender_ssrc=1)
    interval = 0.05
    offsets = _send_times(per_feedback, interval, frames)
    timings: list[float] = []
    sizes: list[int] = []
    for _ in range(feedbacks):
        base = now[0]
        for offset in offsets:
            now[0] = base + offset
            seq = bwe.next_sequence(1100)
            if rng.random() >= 0.01:
                arrival = now[0] + 0.03 + rng.random() * 0.004
                recorder.record(seq, int(arrival * 1e6), 2)
        now[0] = base + interval
        for packet in recorder.build_feedback():
            sizes.append(len(packet))
            start = time.perf_counter()
            bwe.on_transport_feedback(packet)
            timings.append(time.perf_counter() - start)
    timings.sort()
    return {
        "feedback_us_mean": sum(timings) / len(timings) * 1e6,
        "feedback_us_median": timings[len(timings) // 2] * 1e6,
        "feedback_us_p99": timings[int(len(timings) * 0.99)] * 1e6,
        "feedback_bytes_mean": sum(sizes) / len(sizes),
        "feedback_packets": len(timings),
        "invalid_feedback": bwe.invalid_feedback,
        "estimate_bps": bwe.estimate_bps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--feedbacks", type=int, default=4000)
    parser.add_argument("--per-feedback", type=int, default=15)
    args = parser.parse_args()
    result: dict[str, object] = {"next_sequence_ns": round(bench_next_sequence(args.calls), 1)}
    for mode, frames in (("paced", False), ("frames", True)):
        measured = bench_feedback(args.feedbacks, args.per_feedback, frames=frames)
        result[mode] = {k: round(v, 2) if isinstance(v, float) else v for k, v in measured.items()}
    result["per_feedback_packets"] = args.per_feedback
    print(json.dumps(result))


if __name__ == "__main__":
    main()
