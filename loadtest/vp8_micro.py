"""Micro-benchmark of the VP8 per-packet helpers: :func:`sfu.vp8.temporal_info` and
:class:`sfu.vp8.Vp8Munger`.

``python -m loadtest.vp8_micro --packets 20000 --rounds 15``

A stream of 1,100-byte VP8 packets laid out as libwebrtc sends L1T3 (15-bit PictureID,
TL0PICIDX, TID/Y: descriptor ``X I L T``), 7 packets per frame, TID pattern 0 2 1 2.
Timed, in CPU ns per call (``time.process_time``, the median of ``--rounds`` rounds):

* ``temporal_info`` — once per publisher packet (the Producer);
* ``rewrite`` — once per forwarded packet and distinct munger key (the Consumer), after a
  source switch (offsets != 0, so every packet is rewritten); ``rewrite_after_drops`` the
  same with 64 dropped pictures remembered; ``rewrite_late_recent`` / ``_oldest`` for
  packets older than the last drop (retransmissions: the drops after them are counted;
  "oldest" walks all 64);
* ``forwarded`` — once per forwarded frame;
* ``consumer_tidN`` — the whole per-packet munger work of a Consumer kept at TID <= N
  (drop / forwarded / rewrite), per packet of the source stream;
* ``copy_floor`` — ``header + payload[6:]``, the copy every rewrite must make, for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from sfu.vp8 import Vp8Munger, temporal_info

BODY = bytes(range(256)) * 4 + bytes(70)  # 1,094 bytes: 1,100 with the descriptor
PACKETS_PER_FRAME = 7
TIDS = (0, 2, 1, 2)


def _packet(frame: int, index: int, pid0: int = 20000, tl0_0: int = 100) -> tuple[int, bytes]:
    tid = TIDS[frame % 4]
    pid = (pid0 + frame) & 0x7FFF
    tl0 = (tl0_0 + (frame + 3) // 4) & 0xFF
    desc = bytes((0x90 if index == 0 else 0x80, 0xE0, 0x80 | pid >> 8, pid & 0xFF, tl0,
                  tid << 6 | (0x20 if tid else 0)))
    return tid, desc + BODY


def _stream(frames: int) -> list[tuple[int, bytes]]:
    return [_packet(f, i) for f in range(frames) for i in range(PACKETS_PER_FRAME)]


def _time(fn: Callable[[bytes], object], payloads: list[bytes], rounds: int) -> float:
    per: list[float] = []
    for _ in range(rounds):
        start = time.process_time()
        for p in payloads:
            fn(p)
        per.append((time.process_time() - start) * 1e9 / len(payloads))
    return round(statistics.median(per), 1)


def _consumer_loop(stream: list[tuple[int, bytes]], max_tid: int, rounds: int) -> float:
    """ns per packet of what a Consumer does with the munger over the whole stream: drop()
    above ``max_tid``, else forwarded() on frame starts and rewrite() when key is set."""
    per: list[float] = []
    for _ in range(rounds):
        m = Vp8Munger()
        m.start(_packet(0, 0, pid0=3000, tl0_0=7)[1])
        m.start(stream[0][1])  # a source switch: offsets != 0 from here on
        start = time.process_time()
        for tid, p in stream:
            if tid > max_tid and m.drop(p):
                continue
            if p[0] & 0x10:
                m.forwarded(p)
            if m.key is not None:
                m.rewrite(p)
        per.append((time.process_time() - start) * 1e9 / len(stream))
    return round(statistics.median(per), 1)


def run(packets: int, rounds: int) -> dict[str, float | int]:
    frames = max(16, packets // PACKETS_PER_FRAME)
    stream = _stream(frames)
    payloads = [p for _, p in stream]
    half = len(stream) // 2
    # A munger that switched source (offsets != 0, so every packet is rewritten) and then
    # dropped the TID 2 pictures of the first half of the stream.
    munger = Vp8Munger()
    munger.start(_packet(0, 0, pid0=3000, tl0_0=7)[1])
    munger.start(payloads[0])
    for tid, p in stream[:half]:
        if tid > 1:
            munger.drop(p)
        elif p[0] & 0x10:
            munger.forwarded(p)
    assert munger.key is not None
    newer = [p for _, p in stream[half:]]  # in order: newer than every drop
    recent = [p for tid, p in stream[half - 6 * PACKETS_PER_FRAME: half] if tid <= 1]  # 2-3 drops after
    oldest = [p for tid, p in stream[half - 160 * PACKETS_PER_FRAME: half - 140 * PACKETS_PER_FRAME]
              if tid <= 1]  # older than all 64 remembered drops: the longest walk
    firsts = [p for p in newer if p[0] & 0x10]
    switched = Vp8Munger()
    switched.start(_packet(0, 0, pid0=3000, tl0_0=7)[1])
    switched.start(payloads[0])
    head = payloads[0][:6]
    return {
        "packets": len(payloads),
        "rounds": rounds,
        "temporal_info_ns": _time(temporal_info, payloads, rounds),
        "rewrite_ns": _time(switched.rewrite, payloads, rounds),
        "rewrite_after_drops_ns": _time(munger.rewrite, newer, rounds),
        "rewrite_late_recent_ns": _time(munger.rewrite, recent * 50, rounds),
        "rewrite_late_oldest_ns": _time(munger.rewrite, oldest, rounds),
        "forwarded_ns": _time(switched.forwarded, firsts, rounds),
        "consumer_tid1_ns_per_packet": _consumer_loop(stream, 1, rounds),
        "consumer_tid0_ns_per_packet": _consumer_loop(stream, 0, rounds),
        "consumer_all_ns_per_packet": _consumer_loop(stream, 2, rounds),
        "copy_floor_ns": _time(lambda p: head + p[6:], payloads, rounds),
        "noop_call_ns": _time(lambda p: None, payloads, rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.vp8_micro",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--packets", type=int, default=20000, help="packets per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.packets, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
