"""``python -m loadtest`` / ``relaycast-loadtest``: benchmarks ``fanout`` (SFU), ``transcode``, ``hls-latency`` and ``cdn`` (LL-HLS); ``publish``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from . import publish


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("counts must be positive integers")
    return values


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if width % 2 or height % 2 or width < 112:
        raise argparse.ArgumentTypeError("width and height must be even, width >= 112")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaycast-loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fan = sub.add_parser("fanout", help="SFU fan-out benchmark: one publisher, N subscribers, relay baseline",
                         description="Starts `relaycast serve`, a publisher and subscriber pools on 127.0.0.1 "
                                     "and measures the SFU from outside. See docs/benchmarks.md.")
    fan.add_argument("--counts", type=_ints, default=[1, 10, 50, 100, 150, 200],
                     help="subscriber counts for forward mode (default 1,10,50,100,150,200)")
    fan.add_argument("--relay-counts", type=_ints, default=[1, 2, 4, 6, 8],
                     help="bounded search for the relay baseline; goes past one-core saturation until it "
                          "misses the delivery targets (default 1,2,4,6,8)")
    fan.add_argument("--mode", choices=["forward", "relay", "both"], default="both")
    fan.add_argument("--seconds", type=float, default=10.0, help="steady measurement window per step (default 10)")
    fan.add_argument("--settle", type=float, default=3.0, help="seconds after joins before measuring (default 3)")
    fan.add_argument("--size", type=_size, default=(1280, 720), help="publisher resolution (default 1280x720)")
    fan.add_argument("--fps", type=float, default=30.0, help="publisher frame rate (default 30)")
    fan.add_argument("--bitrate", type=int, default=1_500_000, help="publisher VP8 target bits/s (default 1500000)")
    fan.add_argument("--subscriber-procs", type=int, default=0,
                     help="subscriber processes (default: one per 100 subscribers)")
    fan.add_argument("--decode-every", type=int, default=0,
                     help="besides the first joiner of each step, every k-th subscriber decodes (default 0: none)")
    fan.add_argument("--max-decoders", type=int, default=5,
                     help="at most this many decoding subscribers in all (default 5; ~7 %% CPU each at 720p)")
    fan.add_argument("--probes", type=int, default=10,
                     help="join-time probes per step: sequential decoding viewers that join and leave (default 10)")
    fan.add_argument("--join-concurrency", type=int, default=8, help="WHEP joins in flight (default 8)")
    fan.add_argument("--aiortc-receive", action="store_true",
                     help="subscribers keep aiortc's full receive path (~3x their CPU) instead of the socket fast path")
    fan.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                     help="before each mode, wait up to SECONDS for other processes to go idle")
    fan.add_argument("--profile-at", type=int, default=None,
                     help="py-spy the forward-mode SFU after the step with this N")
    fan.add_argument("--profile-joins-at", type=int, default=None,
                     help="py-spy the SFU while the join probes of the step with this N run")
    fan.add_argument("--workers", type=int, default=1,
                     help="forward mode: SFU worker processes, `relaycast serve --workers N` (default 1); "
                          "CPU is summed over the serve process and its workers")
    fan.add_argument("--simulcast", action="store_true",
                     help="publish 3-layer VP8 simulcast with temporal layers (loadtest.simulcast_publisher) "
                          "instead of one stream")
    fan.add_argument("--limited-fraction", type=float, default=0.0,
                     help="this fraction of the subscribers sit behind a rate-limited link (default 0)")
    fan.add_argument("--limited-bps", type=int, default=800_000,
                     help="the limited subscribers' link rate, bits/s (default 800000; a user-space relay "
                          "with a 100 ms drop-tail queue per subscriber)")
    fan.add_argument("--no-viewer-transport-cc", action="store_true",
                     help="subscribers do not offer transport-cc (no feedback: the SFU estimates from "
                          "nothing; browsers always offer it)")
    fan.add_argument("--pin-sfu", action="store_true",
                     help="forward mode: the SFU's forwarding process alone on CPU 0, everything else "
                          "(load generator, publisher, bridge, estimator process) on the other CPUs, so "
                          "that its µs per packet is its own work (needs --workers 1)")
    fan.add_argument("--server-tree", type=Path, default=None,
                     help="serve the product of this checkout instead (e.g. `git worktree add /tmp/base REV`), "
                          "driven by this checkout's load generator: a baseline in the same harness")
    fan.add_argument("--out", type=Path, default=Path("loadtest/results"), help="results folder")

    cdn = sub.add_parser("cdn", help="LL-HLS CDN fan-out: N emulated LL-HLS players through a real nginx edge",
                         description="Starts the service, a WHIP publisher, the deploy/nginx edge and player "
                                     "processes on 127.0.0.1; 1 player (baseline), then N. See docs/benchmarks.md.")
    cdn.add_argument("--players", type=int, default=300, help="players in the fan-out phase (default 300)")
    cdn.add_argument("--seconds", type=float, default=20.0, help="measurement window per phase (default 20)")
    cdn.add_argument("--settle", type=float, default=3.0, help="seconds after the joins before measuring (default 3)")
    cdn.add_argument("--ramp", type=float, default=3.0, help="players join spread over this many seconds (default 3)")
    cdn.add_argument("--procs", type=int, default=0, help="player processes (default: one per 100 players)")
    cdn.add_argument("--size", type=_size, default=(320, 180), help="publisher resolution (default 320x180)")
    cdn.add_argument("--ladder", default="180:300k",
                     help="RELAYCAST_HLS_LADDER for the bridge (default 180:300k: one low rung)")
    cdn.add_argument("--audio", action="store_true", help="publish audio too and have players follow it")
    cdn.add_argument("--no-preload-hint", action="store_true",
                     help="players do not request the preload-hinted part early")
    cdn.add_argument("--edge-workers", type=int, default=1, help="nginx worker processes (default 1)")
    cdn.add_argument("--no-cache-lock", action="store_true",
                     help="comparison only: run the edge with proxy_cache_lock off (no collapsed forwarding)")
    cdn.add_argument("--edge-dir", type=Path, default=None,
                     help="keep nginx's config, logs and cache in this folder (default: a temporary one)")
    cdn.add_argument("--out", type=Path, default=Path("loadtest/results"), help="results folder")

    pub = sub.add_parser("publish", help="publish a file or the synthetic pattern over WHIP")
    publish.add_arguments(pub)

    # Subcommands in their own modules: each has add_arguments(parser) and main(args).
    from . import (
        chat_fanout,
        directory_bench,
        hls_latency,
        hlsjs_latency,
        pipe_hop,
        publisher_ramp,
        relay_serve,
        replan_cost,
        simulcast_publisher,
        sio_fanout,
        transcode,
    )
    for name, module, text in (
        ("transcode", transcode, "LL-HLS transcode capacity: ladders per core in real time"),
        ("simulcast-publish", simulcast_publisher, "WHIP-publish 3-layer VP8 simulcast + Opus like a browser"),
        ("replan-cost", replan_cost, "what an LL-HLS ladder re-plan costs per frame"),
        ("pipe-hop", pipe_hop, "latency added by a node-to-node pipe (cascading)"),
        ("publisher-ramp", publisher_ramp, "WHIP 201 to full camera resolution, Chromium publisher"),
        ("hls-latency", hls_latency, "LL-HLS latency: capture time in frames vs player/hls.js"),
        ("hlsjs-latency", hlsjs_latency, "LL-HLS latency in stock hls.js and the watch page (PDT vs now)"),
        ("sio-fanout", sio_fanout, "Socket.IO room-state fan-out across two signaling instances (Redis)"),
        ("chat-fanout", chat_fanout, "chat fan-out: data channels and Socket.IO pages, two nodes (Redis)"),
        ("relay-serve", relay_serve, "the service with the naive MediaRelay baseline Router (fanout --mode relay)"),
        ("directory-bench", directory_bench, "directory and search latency at a steady request rate"),
    ):
        command = sub.add_parser(name, help=text, description=(module.__doc__ or "").split("\n\n")[0])
        module.add_arguments(command)
        command.set_defaults(run=module.main)
    from . import scaleout
    scaleout.add_arguments(sub)  # cascade-cpu, failover
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "publish":
        try:
            return publish.main(args)
        except KeyboardInterrupt:
            return 130
    run = getattr(args, "run", None)
    if run is not None:
        return int(run(args))
    if args.command == "cdn":
        from .cdn_fanout import CdnOptions, run_cdn

        if args.players < 1 or args.seconds <= 0:
            raise SystemExit("--players must be >= 1 and --seconds > 0")
        cdn_opts = CdnOptions(players=args.players, seconds=args.seconds, settle=args.settle, ramp=args.ramp,
                              procs=args.procs, width=args.size[0], height=args.size[1], ladder=args.ladder,
                              audio=args.audio, preload_hint=not args.no_preload_hint,
                              edge_workers=args.edge_workers, cache_lock=not args.no_cache_lock,
                              workdir=args.edge_dir, out=args.out)
        return _run(run_cdn(cdn_opts))
    from .fanout import FanoutOptions, run_fanout

    opts = FanoutOptions(
        counts=args.counts, relay_counts=args.relay_counts, mode=args.mode, seconds=args.seconds,
        settle=args.settle, width=args.size[0], height=args.size[1], fps=args.fps, bitrate=args.bitrate,
        subscriber_procs=args.subscriber_procs, decode_every=args.decode_every, max_decoders=args.max_decoders,
        join_concurrency=args.join_concurrency, probes=args.probes, fast_receive=not args.aiortc_receive,
        wait_quiet=args.wait_quiet, profile_at=args.profile_at,
        profile_joins_at=args.profile_joins_at, workers=args.workers, simulcast=args.simulcast,
        limited_fraction=args.limited_fraction, limited_bps=args.limited_bps,
        viewer_transport_cc=not args.no_viewer_transport_cc, pin_sfu=args.pin_sfu,
        server_tree=args.server_tree.resolve() if args.server_tree else None, out=args.out)
    return _run(run_fanout(opts))


def _run(coro: Coroutine[Any, Any, Any]) -> int:
    """Run a benchmark coroutine; 130 on Ctrl-C."""
    try:
        asyncio.run(coro)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
