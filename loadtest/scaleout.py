"""Scale-out benchmarks, all processes on 127.0.0.1:

``cascade-cpu``
    One publisher, N light WHEP subscribers (no decoding, `loadtest.subscriber`).  Run 1:
    one SFU node serves all N.  Run 2: two nodes, ``RELAYCAST_VIEWERS_PER_NODE = N/2``,
    so half the viewers are on the origin and half on an edge fed by one node pipe.
    Per node: CPU seconds over the window / RTP packets it forwarded in it.  Every
    output of a node (a viewer, or the pipe on the origin) carries the same stream, so
    packets forwarded = outputs × the packets one subscriber received (mean over all).
    The figure compared is the per-packet cost of each node in run 2 against the single
    node of run 1 (this 2-core machine also runs the load, so totals say little).

``failover``
    A `ReconnectingPublisher` and ``--viewers`` `ReconnectingViewer` clients (half
    through each signaling instance, spread over nodes by cascading), three SFU nodes.
    ``--kills`` times: ``kill -9`` the room's origin node, measure the time until every
    viewer decodes frames of the publisher's new session, then restart the node.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from . import procstat
from .cluster_procs import RedisProcess, ServeProcess, SfuNodeProcess
from .fanout import FanoutOptions, PublisherProcess, SubscriberProcess
from .report import ms_percentiles
from .resilient import ReconnectingPublisher, ReconnectingViewer
from .sources import PatternVideoTrack

ROOM = "demo"


class LocalCluster:
    """redis-server + two ``relaycast serve --no-embedded-sfu`` + SFU nodes."""

    def __init__(self, out: Path, nodes: int, serve_env: dict[str, str] | None = None) -> None:
        self.out = out
        self.secret = secrets.token_urlsafe(24)
        self.key = "sk_" + secrets.token_urlsafe(24)
        self.workdir = tempfile.TemporaryDirectory(prefix="relaycast-scaleout-")
        self.redis = RedisProcess(Path(self.workdir.name))
        env = {"RELAYCAST_STREAM_KEY": self.key, **(serve_env or {})}
        self.serve = [ServeProcess(x, self.redis.url, self.secret, out / f"serve_{x}.log", room=ROOM, env=env)
                      for x in "AB"]
        self.node_count = nodes
        self.nodes: list[SfuNodeProcess] = []

    def node(self, i: int) -> SfuNodeProcess:
        urls = [s.url for s in self.serve]
        urls = urls[i % 2:] + urls[: i % 2]  # spread the nodes over the instances
        return SfuNodeProcess(f"sfu-{i + 1}", ",".join(urls), self.secret, self.out / f"sfu-{i + 1}.log",
                              env={"REDIS_URL": self.redis.url})

    async def __aenter__(self) -> LocalCluster:
        await self.redis.start()
        for s in self.serve:
            await s.start()
        for i in range(self.node_count):
            node = self.node(i)
            await node.start()
            self.nodes.append(node)
        await self.wait_nodes(self.node_count)
        return self

    async def wait_nodes(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                ready = []
                for s in self.serve:
                    async with http.get(f"{s.url}/readyz") as resp:
                        ready.append((await resp.json()).get("nodes") == n)
                if all(ready):
                    return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the instances did not see {n} nodes within {timeout} s")

    async def __aexit__(self, *exc: object) -> None:
        for proc in [*self.nodes, *reversed(self.serve), self.redis]:
            await proc.stop()
        self.workdir.cleanup()


def _log(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------ cascade-cpu
async def _cpu_run(args: argparse.Namespace, nodes: int, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    per_node = args.viewers if nodes == 1 else (args.viewers + 1) // 2
    opts = FanoutOptions(width=args.width, height=args.height, fps=args.fps, bitrate=args.bitrate)
    async with LocalCluster(out, nodes, {"RELAYCAST_VIEWERS_PER_NODE": str(per_node)}) as cluster:
        publisher = PublisherProcess(f"{cluster.serve[0].url}/whip/{ROOM}", cluster.key, opts, out / "publisher.log")
        pool = SubscriberProcess(out / "subscribers.log")
        redis = aioredis.Redis.from_url(cluster.redis.url, decode_responses=True)
        http = aiohttp.ClientSession()
        try:
            await publisher.start()
            await pool.start()
            for i in range(args.viewers):  # one at a time, alternating instances: placement sees each
                url = f"{cluster.serve[i % 2].url}/whep/{ROOM}"
                joined = await pool.call({"cmd": "join", "url": url, "decode": [False], "concurrency": 1})
                if not joined.get("joined"):
                    raise RuntimeError(f"viewer {i} could not join: {joined}")
                # A viewer counts (and placement sees it) once connected: wait for that on both
                # instances before the next one joins.
                for serve in cluster.serve:
                    await _wait_until(lambda s=serve, n=i + 1: _count_is(http, s.url, n), 20,
                                      f"{i + 1} connected viewers on {serve.url}")
            await pool.call({"cmd": "wait_media", "timeout": 20})
            await asyncio.sleep(args.settle)
            origin = await redis.hget(f"relaycast:room:{ROOM}", "node")
            before = await pool.call({"cmd": "snapshot"})
            cpu0 = {n.node_id: procstat.cpu_seconds(n.pid) for n in cluster.nodes}
            t0 = time.monotonic()
            await asyncio.sleep(args.seconds)
            cpu1 = {n.node_id: procstat.cpu_seconds(n.pid) for n in cluster.nodes}
            t1 = time.monotonic()
            after = await pool.call({"cmd": "snapshot"})
            loads = {n.node_id: json.loads(await redis.hget(f"relaycast:node:{n.node_id}", "load") or "{}")
                     for n in cluster.nodes}
        finally:
            await http.close()
            await redis.aclose()
            await pool.stop()
            await publisher.stop()
    received = [_packets(b) - _packets(a) for a, b in zip(before["subs"], after["subs"], strict=True)]
    per_output = statistics.mean(received)
    result: dict[str, Any] = {"nodes": nodes, "viewers": args.viewers, "window_s": round(t1 - t0, 2),
                              "packets_per_output": round(per_output), "origin": origin, "per_node": {}}
    for node_id, load in loads.items():
        viewers = int(load.get("viewers", 0))
        outputs = viewers + (int(load.get("sessions", 0)) - viewers - 1 if node_id == origin else 0)
        packets = outputs * per_output
        cpu = cpu1[node_id] - cpu0[node_id]
        result["per_node"][node_id] = {
            "role": "origin" if node_id == origin else "edge", "viewers": viewers, "outputs": outputs,
            "cpu_pct": round(100 * cpu / (t1 - t0), 1), "packets_forwarded": round(packets),
            "us_per_packet": round(cpu / packets * 1e6, 2) if packets else None}
    return result


def _packets(sub: dict[str, Any]) -> int:
    return int(sub["video"]["received"]) + int(sub["audio"]["received"])


async def cascade_cpu(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    _log(f"cascade-cpu: {args.viewers} viewers on one node ...")
    single = await _cpu_run(args, 1, out / "one-node")
    _log(json.dumps(single))
    _log(f"cascade-cpu: {args.viewers} viewers on two nodes (cascade) ...")
    double = await _cpu_run(args, 2, out / "two-nodes")
    _log(json.dumps(double))
    base = next(iter(single["per_node"].values()))["us_per_packet"]
    ratios = {node_id: round(n["us_per_packet"] / base, 3) for node_id, n in double["per_node"].items()
              if n["us_per_packet"] and base}
    return {"benchmark": "cascade-cpu", "cpu_model": procstat.cpu_model(), "single": single, "cascade": double,
            "us_per_packet_ratio_vs_single": ratios,
            "target_met": bool(ratios) and all(r <= 1.10 for r in ratios.values())}


# --------------------------------------------------------------------- failover
async def failover(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    offsets = count(0, 100_000)
    per_node = max(1, args.viewers // 2)
    rounds: list[dict[str, Any]] = []
    async with LocalCluster(out, 3, {"RELAYCAST_VIEWERS_PER_NODE": str(per_node)}) as cluster:
        redis = aioredis.Redis.from_url(cluster.redis.url, decode_responses=True)
        sessions: list[int] = []

        def tracks() -> list[Any]:
            sessions.append(next(offsets))
            return [PatternVideoTrack(320, 180, 15, code="counter", first_code=sessions[-1])]

        publisher = ReconnectingPublisher(f"{cluster.serve[0].url}/whip/{ROOM}", cluster.key, tracks)
        viewers = [ReconnectingViewer(f"{cluster.serve[i % 2].url}/whep/{ROOM}") for i in range(args.viewers)]
        try:
            await publisher.start()
            for viewer in viewers:
                await viewer.start()
                await asyncio.sleep(0.3)  # let the room state reach placement
            for k in range(args.kills):
                await _wait_until(
                    lambda: all(v.frames and v.frames[-1][0] > time.monotonic() - 0.5 for v in viewers),
                    20, "every viewer playing")
                origin = await redis.hget(f"relaycast:room:{ROOM}", "node")
                victim = next(n for n in cluster.nodes if n.node_id == origin)
                spread = {n.node_id: int(json.loads(await redis.hget(f"relaycast:node:{n.node_id}", "load")
                                                    or "{}").get("viewers", 0)) for n in cluster.nodes}
                killed = time.monotonic()
                await victim.kill()
                current = len(sessions)
                await _wait_until(lambda c=current: len(sessions) > c, 30, "the publisher to re-publish")
                first_code = sessions[-1]
                await _wait_until(
                    lambda f=first_code, t=killed: all(v.first_frame_after(t, f) for v in viewers),
                    30, "every viewer to receive again")
                times = [v.first_frame_after(killed, first_code) - killed for v in viewers]  # type: ignore[operator]
                rounds.append({"killed": origin, "viewers_per_node": spread,
                               "publisher_back_s": round(publisher.log.sessions[-1] - killed, 3),
                               "viewer_recovery_s": [round(t, 3) for t in times], "all_back_s": round(max(times), 3)})
                _log(f"kill {k + 1}/{args.kills}: {json.dumps(rounds[-1])}")
                # The node comes back (same id) for the next round.
                cluster.nodes.remove(victim)
                replacement = cluster.node(int(origin.rsplit("-", 1)[1]) - 1)
                await replacement.start()
                cluster.nodes.append(replacement)
                await cluster.wait_nodes(3)
        finally:
            for client in [*viewers, publisher]:
                await client.stop()
            await redis.aclose()
    every = [t for r in rounds for t in r["viewer_recovery_s"]]
    worst = [r["all_back_s"] for r in rounds]
    return {"benchmark": "failover", "cpu_model": procstat.cpu_model(), "kills": args.kills,
            "viewers": args.viewers, "rounds": rounds,
            "all_viewers_back_ms": ms_percentiles(worst), "viewer_recovery_ms": ms_percentiles(every),
            "publisher_back_ms": ms_percentiles([r["publisher_back_s"] for r in rounds])}


async def _wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate()`` (its result awaited when it is awaitable) every 20 ms until it is
    truthy (the benchmark has no event for "every viewer plays again"; loadtest/ stands alone,
    so it does not use tests/polling.py).

    :raises RuntimeError: still falsy after ``timeout_s`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(min(0.02, left))


async def _count_is(http: aiohttp.ClientSession, base_url: str, n: int) -> bool:
    return await _room_viewers(http, base_url) >= n


async def _room_viewers(http: aiohttp.ClientSession, base_url: str) -> int:
    """Connected viewers of the room over all nodes, as a signaling instance counts them."""
    async with http.get(f"{base_url}/api/rooms/{ROOM}") as resp:
        return int((await resp.json())["viewers"])


# ------------------------------------------------------------------------ CLI
def add_arguments(sub: Any) -> None:
    cpu = sub.add_parser("cascade-cpu", help="SFU CPU per forwarded packet: one node vs two cascaded nodes",
                         description=__doc__)
    cpu.add_argument("--viewers", type=int, default=40, help="light subscribers (default 40)")
    cpu.add_argument("--seconds", type=float, default=15.0, help="measurement window (default 15)")
    cpu.add_argument("--settle", type=float, default=3.0, help="seconds after the joins (default 3)")
    cpu.add_argument("--width", type=int, default=640)
    cpu.add_argument("--height", type=int, default=360)
    cpu.add_argument("--fps", type=float, default=30.0)
    cpu.add_argument("--bitrate", type=int, default=1_000_000, help="publisher VP8 bits/s (default 1000000)")
    cpu.add_argument("--out", default="loadtest/results/cascade-cpu")
    fail = sub.add_parser("failover", help="kill -9 the origin node N times: time until every viewer plays again",
                          description=__doc__)
    fail.add_argument("--kills", type=int, default=5, help="kills (default 5)")
    fail.add_argument("--viewers", type=int, default=4, help="reconnecting viewers (default 4)")
    fail.add_argument("--out", default="loadtest/results/failover")
    for parser in (cpu, fail):
        parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    run = cascade_cpu if args.command == "cascade-cpu" else failover
    result = asyncio.run(run(args))
    path = Path(args.out) / f"{args.command}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k not in ("rounds", "single", "cascade")}
    _log(json.dumps(summary, indent=2))
    _log(f"written to {path}")
    return 0
