"""``loadtest fanout``: one publisher, N lightweight subscribers, the SFU measured from outside.

Processes (all on 127.0.0.1, ICE pinned to loopback):

* the SFU: ``relaycast serve --workers N`` (forward; ``--workers``, default 1) or ``python -m
  loadtest relay-serve`` (the relay baseline), a separate process, so its CPU and RSS are
  its own: read from /proc, summed over the serve process and its SFU worker children
  (``sfu_cpu_pct_by_process`` splits the CPU % by process: ``serve`` and the workers' node
  ids);
* the publisher: ``python -m loadtest publish --pattern --json`` (720p30 VP8
  pattern carrying capture times + Opus tone);
* subscriber pools: ``python -m loadtest.subscriber`` (see
  :mod:`loadtest.subscriber`), counting RTP; a sample decodes.

Per step the subscriber count is raised to N (joins are timed), then after a
settle period a steady window of ``--seconds`` is measured:

* SFU CPU % (of one core) and CPU µs per forwarded packet — packets forwarded
  are counted at the subscribers: a consumer's output sequence numbers are
  continuous, so ``Σ (highest − first + 1)`` over the window is what the SFU
  sent, plus the retransmissions that arrived;
* delivered fps (complete frames per subscriber per second; median and min), loss %
  after NACK/RTX repair;
* glass-to-glass latency (decoded − captured) and join time (WHEP POST → first
  decoded frame) on the sampled subscribers;
* SFU RSS and memory per subscriber ``(RSS(N) − RSS(0)) / N``.

The relay baseline (``--mode relay``: aiortc ``MediaRelay``, decode once and encode
per viewer) runs a bounded search ``--relay-counts``: it records where it saturates
(CPU ≥ 95 % of one core, or median fps < 25) and goes on until it misses the
delivery targets (loss ≤ 1 %, median fps ≥ 29), since its encoder threads can use
the second core.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from . import procstat
from .cluster_procs import ONE_ADDRESS_LOAD, RelaycastProcess, free_port, listening
from .report import Sample, percentile, rounded, viewer_classes, window_metrics

logger = logging.getLogger(__name__)

ROOM = "bench"
TARGET_LOSS_PCT = 1.0
TARGET_FPS = 29.0
RELAY_SATURATED_CPU_PCT = 95.0
RELAY_SATURATED_FPS = 25.0


@dataclass
class FanoutOptions:
    """What ``loadtest fanout`` runs; times in seconds, bitrate in bits/s."""

    counts: list[int] = field(default_factory=lambda: [1, 10, 50, 100, 150, 200])
    relay_counts: list[int] = field(default_factory=lambda: [1, 2, 4, 6, 8])
    mode: str = "both"  # forward | relay | both
    seconds: float = 10.0
    settle: float = 3.0
    baseline_seconds: float = 5.0
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    bitrate: int = 1_500_000
    subscriber_procs: int = 0  # 0 = one per 100 subscribers (at least 1)
    decode_every: int = 0  # also every k-th subscriber decodes (0 = only the first joiner of each step)
    max_decoders: int = 5
    join_concurrency: int = 8
    fast_receive: bool = True  # subscribers read RTP straight from the socket once connected
    join_timeout: float = 20.0
    probes: int = 10  # join-time probes per step (sequential decoding viewers that leave)
    stop_loss_pct: float = 20.0  # stop raising N past this (the machine is the limit)
    wait_quiet: float = 0.0  # wait up to this long for other processes to go idle before a mode
    profile_at: int | None = None  # forward-mode N to profile with py-spy
    profile_seconds: float = 10.0
    profile_joins_at: int | None = None  # forward/relay N whose join probes run under py-spy
    workers: int = 1  # forward mode: `relaycast serve --workers N` (SFU worker processes)
    simulcast: bool = False  # publish 3-layer VP8 simulcast (loadtest.simulcast_publisher)
    limited_fraction: float = 0.0  # this fraction of subscribers sit behind a rate-limited link
    limited_bps: int = 800_000
    viewer_transport_cc: bool = True  # subscribers offer transport-cc and send feedback, as browsers do
    pin_sfu: bool = False  # forward mode: the forwarding process alone on CPU 0, the rest elsewhere
    server_tree: Path | None = None  # serve this checkout's product (a baseline) instead of this one's
    out: Path = Path("loadtest/results")


SFU_CPU = 0
"""``--pin-sfu``: the CPU the forwarding process gets to itself."""

# --------------------------------------------------------------- processes
class SfuProcess(RelaycastProcess):
    """``relaycast serve`` on a free loopback port with a known stream key."""

    def __init__(self, mode: str, log_path: Path, workers: int = 1, tree: Path | None = None) -> None:
        super().__init__("relaycast serve", log_path)
        self.mode = mode
        self.worker_count = workers
        self.tree = tree
        """Another checkout (e.g. a baseline commit) whose product to serve; None: this one."""
        self.key = "sk_bench_" + secrets.token_urlsafe(18)
        self.url = ""

    async def start(self, timeout: float = 30.0) -> None:
        # Every load-test viewer joins from 127.0.0.1: lift the per-address limits (and the
        # node's session cap, which the step counts go beyond).
        env = dict(os.environ, **ONE_ADDRESS_LOAD, RELAYCAST_MAX_SESSIONS="100000", PYTHONUNBUFFERED="1")
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)  # before the editable install's finder
        # The relay baseline is not part of the product: loadtest serves it in its own process.
        command = [sys.executable, "-m", "loadtest"] if self.mode == "relay" else None
        args = ["--log-level", "warning", "relay-serve" if command else "serve", "--host", "127.0.0.1",
                "--port", str(free_port()), "--ice-gather", "127.0.0.1", "--room", ROOM,
                "--stream-key", self.key]
        if command is None:
            args += ["--workers", str(self.worker_count)]
        self.url = (await self.launch(args, env, listening, timeout, command, cwd=self.tree)).split()[-1]

    def workers(self) -> dict[str, int]:
        """The serve process's SFU worker children (``relaycast sfu --node-id ID``): ID → pid.
        Other children (LL-HLS transcoders) are not counted as the SFU."""
        out = {}
        for pid in procstat.children(self.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"sfu" in argv and b"--node-id" in argv[:-1]:
                out[argv[argv.index(b"--node-id") + 1].decode()] = pid
        return out

    def pids(self) -> list[int]:
        """The serve process and its SFU worker children."""
        return [self.pid, *self.workers().values()]

    def estimator_pids(self) -> list[int]:
        """The bandwidth estimator processes (``python -m sfu.estimator_main``) beside the
        serve process's and its workers' forwarding: their CPU is reported apart."""
        out = []
        for parent in self.pids():
            for pid in procstat.children(parent):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"sfu.estimator_main" in argv:
                    out.append(pid)
        return out

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far: ``serve`` and each SFU worker child (by its node id)."""
        pids = {"serve": self.pid, **self.workers()}
        return {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}

    async def stop(self, timeout: float = 15.0) -> None:
        await super().stop(timeout)


class PublisherProcess:
    """``python -m loadtest publish --pattern --json``; keeps every progress line."""

    def __init__(self, whip_url: str, key: str, opts: FanoutOptions, log_path: Path) -> None:
        self.simulcast = opts.simulcast
        if opts.simulcast:
            self.cmd = [sys.executable, "-m", "loadtest", "simulcast-publish", whip_url, "--token", key,
                        "--width", str(opts.width), "--height", str(opts.height), "--fps", str(opts.fps),
                        "--json"]
        else:
            self.cmd = [sys.executable, "-m", "loadtest", "publish", whip_url, "--token", key, "--pattern",
                        "--width", str(opts.width), "--height", str(opts.height), "--fps", str(opts.fps),
                        "--bitrate", str(opts.bitrate), "--json"]
        self.log_path = log_path
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdout=asyncio.subprocess.PIPE, stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        self._reader = asyncio.create_task(self._read())
        deadline = time.monotonic() + timeout
        while True:  # connected, encoder bitrate set, and sending video
            last = self.lines[-1] if self.lines else {}
            if self.simulcast and last.get("state") == "connected" and all(
                    layer.get("packets", 0) > 0 for layer in last.get("layers", [])) and last.get("layers"):
                return
            if (last.get("state") == "connected" and last.get("bitrate_target")
                    and last.get("video", {}).get("pps", 0) > 0):
                return
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"publisher did not start; see {self.log_path}")
            await asyncio.sleep(0.1)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                continue

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Publisher send rates between two wall-clock instants."""
        inside = [ln for ln in self.lines if t0 - 0.5 <= ln["t"] <= t1 + 0.5]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        dt = b["t"] - a["t"]
        out: dict[str, Any] = {"fps": round((b.get("frames", 0) - a.get("frames", 0)) / dt, 2)}
        if self.simulcast:
            for la, lb in zip(a.get("layers", []), b.get("layers", []), strict=False):
                out[f"{lb['rid']}_kbps"] = round((lb["bytes"] - la["bytes"]) * 8 / dt / 1000, 1)
            return out
        for kind in ("video", "audio"):
            if kind in a and kind in b:
                out[f"{kind}_kbps"] = round((b[kind]["bytes"] - a[kind]["bytes"]) * 8 / dt / 1000, 1)
                out[f"{kind}_pps"] = round((b[kind]["packets"] - a[kind]["packets"]) / dt, 1)
        return out

    async def stop(self) -> None:
        await _terminate(self.proc, signal_first=True)
        if self._reader is not None:
            self._reader.cancel()


class SubscriberProcess:
    """One ``python -m loadtest.subscriber`` pool driven over JSON lines."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.count = 0
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.subscriber", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=log, limit=64 << 20)
        log.close()
        hello = await self._readline(30)
        if not hello.get("ready"):
            raise RuntimeError(f"subscriber pool did not start; see {self.log_path}")

    async def _readline(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"subscriber pool exited; see {self.log_path}")
        return dict(json.loads(line))

    async def call(self, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            await self.proc.stdin.drain()
            reply = await self._readline(timeout)
        if "error" in reply and isinstance(reply["error"], str):
            raise RuntimeError(f"subscriber pool: {reply['error']}")
        return reply

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                await self.call({"cmd": "quit"}, timeout=30)
            except (RuntimeError, TimeoutError, ConnectionError, ValueError):
                pass
        await _terminate(self.proc)


async def _terminate(proc: asyncio.subprocess.Process | None, signal_first: bool = True) -> None:
    if proc is None or proc.returncode is not None:
        return
    if signal_first:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
            return
        except TimeoutError:
            pass
    proc.kill()
    await proc.wait()


# ------------------------------------------------------------------ runner
class FanoutRun:
    """One mode (forward or relay): SFU + publisher + subscriber pools, step by step."""

    def __init__(self, mode: str, opts: FanoutOptions, log_dir: Path) -> None:
        self.mode = mode
        self.opts = opts
        self.log_dir = log_dir
        self.sfu = SfuProcess(mode, log_dir / f"sfu-{mode}.log", opts.workers, opts.server_tree)
        self.publisher: PublisherProcess | None = None
        self.pools: list[SubscriberProcess] = []
        # Join probes run in a process of their own, like a real viewer's client,
        # so the time measured is the SFU's, not a busy load-generator's.
        self.prober: SubscriberProcess | None = None
        self.latency: list[tuple[float, float]] = []
        self.latency_by_sub: list[tuple[int, int, float, float]] = []  # (pool, index, t, ms)
        self.baseline: dict[str, Any] | None = None
        self.decoders = 0
        self.total = 0
        self._limited_decoder = False
        self._others: set[int] = set()
        self._own_cpus: set[int] = set()
        self._pinner: asyncio.Task[None] | None = None

    async def _pin_loop(self) -> None:
        """``--pin-sfu``: keep the forwarding process (all its threads) on CPU 0 and what it
        starts (the estimator process, bridge transcoders) on the other CPUs, every 0.5 s."""
        while True:
            procstat.pin(self.sfu.pid, {SFU_CPU})
            for child in procstat.children(self.sfu.pid):
                procstat.pin(child, self._others)
            await asyncio.sleep(0.5)

    def _limited(self, index: int) -> bool:
        """Whether subscriber ``index`` sits behind a rate-limited link (spread evenly)."""
        fraction = self.opts.limited_fraction
        return fraction > 0 and math.floor((index + 1) * fraction) > math.floor(index * fraction)

    async def __aenter__(self) -> FanoutRun:
        if self.opts.pin_sfu:
            self._others = set(os.sched_getaffinity(0)) - {SFU_CPU}
            if not self._others or SFU_CPU not in os.sched_getaffinity(0):
                raise ValueError(f"--pin-sfu needs CPU {SFU_CPU} and at least one other")
            if self.opts.workers != 1:
                raise ValueError("--pin-sfu pins one forwarding process: use it with --workers 1")
            self._own_cpus = set(os.sched_getaffinity(0))
            procstat.pin(os.getpid(), self._others)  # what this process starts inherits it
        await self.sfu.start()
        if self.opts.pin_sfu:
            self._pinner = asyncio.create_task(self._pin_loop(), name="fanout-pin")
        self.publisher = PublisherProcess(f"{self.sfu.url}/whip/{ROOM}", self.sfu.key, self.opts,
                                          self.log_dir / f"publisher-{self.mode}.log")
        await self.publisher.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pinner is not None:
            self._pinner.cancel()
        if self._own_cpus:
            procstat.pin(os.getpid(), self._own_cpus)  # as it was (a caller may go on)
        probers = [self.prober] if self.prober is not None else []
        await asyncio.gather(*(p.stop() for p in [*self.pools, *probers]), return_exceptions=True)
        if self.publisher is not None:
            await self.publisher.stop()
        await self.sfu.stop()

    async def _ensure_pools(self, target: int) -> None:
        per = 100 if self.opts.subscriber_procs <= 0 else math.ceil(max(self.opts.counts) / self.opts.subscriber_procs)
        wanted = max(1, math.ceil(target / max(1, per)))
        if self.opts.subscriber_procs > 0:
            wanted = self.opts.subscriber_procs
        while len(self.pools) < wanted:
            pool = SubscriberProcess(self.log_dir / f"subscribers-{self.mode}-{len(self.pools)}.log")
            await pool.start()
            self.pools.append(pool)

    async def sample(self) -> Sample:
        assert self.publisher is not None and self.publisher.proc is not None
        snaps = await asyncio.gather(*(p.call({"cmd": "snapshot"}) for p in self.pools))
        subs = []
        for i, snap in enumerate(snaps):
            for s in snap["subs"]:
                s["pool"] = i
                subs.append(s)
            self.latency.extend((t, ms) for _, t, ms in snap["latency"])
            self.latency_by_sub.extend((i, index, t, ms) for index, t, ms in snap["latency"])
        pids = self.sfu.pids()
        times = [procstat.cpu_times(pid) for pid in pids]
        user, system = sum(t[0] for t in times), sum(t[1] for t in times)
        return Sample(
            t=time.time(), sfu_cpu_s=user + system, sfu_sys_s=system,
            sfu_rss=sum(procstat.rss_bytes(pid) for pid in pids),
            sfu_drops=sum(procstat.udp_drops(pid) for pid in pids),
            sub_drops=sum(procstat.udp_drops(p.pid) for p in self.pools),
            pub_cpu_s=procstat.cpu_seconds(self.publisher.proc.pid), subs=subs,
            pool_cpu_s=sum(s["cpu_s"] for s in snaps), machine_cpu_s=procstat.machine_cpu_seconds(),
            estimator_cpu_s=sum(map(procstat.cpu_seconds, self.sfu.estimator_pids())))

    async def measure_baseline(self) -> dict[str, Any]:
        """Publisher only, no viewers: the SFU's idle cost and RSS."""
        assert self.publisher is not None
        await asyncio.sleep(self.opts.settle)
        t0, c0 = time.time(), sum(map(procstat.cpu_seconds, self.sfu.pids()))
        await asyncio.sleep(self.opts.baseline_seconds)
        t1, c1 = time.time(), sum(map(procstat.cpu_seconds, self.sfu.pids()))
        self.baseline = {"n": 0, "sfu_cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
                         "sfu_rss": sum(map(procstat.rss_bytes, self.sfu.pids())),
                         "publisher": self.publisher.window(t0, t1)}
        self.baseline["sfu_rss_mb"] = round(self.baseline["sfu_rss"] / 2**20, 1)
        return self.baseline

    async def grow(self, target: int) -> list[dict[str, Any]]:
        """Add subscribers up to ``target``; returns the new subscribers' join records."""
        await self._ensure_pools(target)
        add = target - self.total
        if add <= 0:
            return []
        plan: list[list[bool]] = [[] for _ in self.pools]
        limits: list[list[int | None]] = [[] for _ in self.pools]
        for i in range(add):
            index = self.total + i
            every = self.opts.decode_every
            limited = self._limited(index)
            # the first joiner of each step decodes, and the first limited one
            sampled = i == 0 or (every > 0 and index % every == 0) or (limited and not self._limited_decoder)
            decode = sampled and self.decoders < self.opts.max_decoders
            self.decoders += decode
            self._limited_decoder = self._limited_decoder or (limited and decode)
            pool = min(range(len(self.pools)), key=lambda k: self.pools[k].count + len(plan[k]))
            plan[pool].append(decode)
            limits[pool].append(self.opts.limited_bps if limited else None)
        before = [pool.count for pool in self.pools]
        calls = []
        for pool, decode, limit in zip(self.pools, plan, limits, strict=True):
            if decode:
                pool.count += len(decode)
                calls.append(pool.call({"cmd": "join", "url": f"{self.sfu.url}/whep/{ROOM}", "decode": decode,
                                        "concurrency": max(1, self.opts.join_concurrency // len(self.pools)),
                                        "fast": self.opts.fast_receive, "limits": limit,
                                        "transport_cc": self.opts.viewer_transport_cc},
                                       timeout=self.opts.join_timeout + 5 * add))
        await asyncio.gather(*calls)
        self.total = target
        await asyncio.gather(*(p.call({"cmd": "wait_media", "timeout": self.opts.join_timeout},
                                      timeout=self.opts.join_timeout + 10) for p in self.pools))
        snap = await self.sample()
        return [s for s in snap.subs if s["index"] >= before[s["pool"]]]

    async def step(self, target: int) -> dict[str, Any]:
        joined = await self.grow(target)
        await asyncio.sleep(self.opts.settle)
        a, cpu_a = await self.sample(), self.sfu.cpu_by_process()
        await asyncio.sleep(self.opts.seconds)
        b, cpu_b = await self.sample(), self.sfu.cpu_by_process()
        assert self.publisher is not None
        result = window_metrics(a, b, self.latency, self.baseline, joined)
        if self.opts.limited_fraction > 0:
            result["classes"] = viewer_classes(a, b, self.latency_by_sub, self.baseline, joined)
        result["sfu_cpu_pct_by_process"] = {name: round(100 * (cpu_b[name] - cpu_a[name]) / (b.t - a.t), 1)
                                            for name in cpu_b if name in cpu_a}
        result["target_n"] = target
        if self.opts.pin_sfu:
            result["pinned"] = {"forwarding": sorted(procstat.affinity(self.sfu.pid)),
                                "estimators": sorted({c for pid in self.sfu.estimator_pids()
                                                      for c in procstat.affinity(pid)}),
                                "load_generator": sorted(procstat.affinity(os.getpid()))}
        result["publisher"] = self.publisher.window(a.t, b.t)
        result["hls_bridge"] = await self.hls_bridge()
        if self.opts.probes > 0:
            if self.opts.profile_joins_at == target:
                profile = asyncio.create_task(self.profile(f"{self.mode}-{target}-joins"))
                result.update(await self.probe_joins())
                result["join_profile"] = await profile
            else:
                result.update(await self.probe_joins())
        return result

    async def hls_bridge(self) -> dict[str, Any] | None:
        """The room's LL-HLS bridge as ``/api/hls`` reports it now (None: no bridge runs)."""
        if self.mode == "relay":
            return None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                async with http.get(f"{self.sfu.url}/api/hls") as resp:
                    body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        bridge = next((b for b in body.get("bridges", []) if b.get("room") == ROOM), None)
        if bridge is None:
            return None
        return {k: bridge.get(k) for k in ("running", "pid", "cpu", "rss_bytes", "media_s",
                                           "realtime_factor", "restarts", "renditions")}

    async def probe_joins(self) -> dict[str, Any]:
        """Join time into the loaded room, measured by sequential probe viewers (after the window)."""
        if self.prober is None:
            self.prober = SubscriberProcess(self.log_dir / f"prober-{self.mode}.log")
            await self.prober.start()
        reply = await self.prober.call(
            {"cmd": "probe", "url": f"{self.sfu.url}/whep/{ROOM}", "count": self.opts.probes},
            timeout=self.opts.probes * 25 + 10)
        probes = reply["probes"]

        def since_post(key: str) -> list[float]:
            return [(p[key] - p["t_post"]) * 1000 for p in probes if p.get(key) and p.get("t_post")]

        decoded = since_post("t_first_decoded")
        out: dict[str, Any] = {
            "join_probes": len(probes), "join_probe_failed": sum(1 for p in probes if p["error"]),
            "join_probe_p50_ms": rounded(percentile(decoded, 50)), "join_probe_p95_ms": rounded(percentile(decoded, 95)),
            "join_probe_max_ms": rounded(max(decoded)) if decoded else None}
        # Where a join's time goes: POST → 201 answer → ICE+DTLS up → first packet → decoded.
        for stage in ("answer", "connected", "first_packet", "first_keyframe"):
            out[f"join_probe_{stage}_p50_ms"] = rounded(percentile(since_post(f"t_{stage}"), 50))
        return out

    async def profile(self, label: str) -> dict[str, Any]:
        """py-spy the SFU for ``profile_seconds`` (flame graph SVG + collapsed stacks + top list)."""
        exe = shutil.which("py-spy")
        if exe is None:
            return {"error": "py-spy is not installed (pip install py-spy)"}
        out = self.opts.out
        svg, raw = out / f"profile-{label}.svg", out / f"profile-{label}.txt"
        secs = str(int(self.opts.profile_seconds))
        results = {}
        for path, fmt in ((raw, "raw"), (svg, "flamegraph")):
            proc = await asyncio.create_subprocess_exec(
                exe, "record", "-p", str(self.sfu.pid), "-d", secs, "-r", "200", "--nonblocking",
                "-f", fmt, "-o", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), self.opts.profile_seconds + 30)
            if proc.returncode != 0:
                return {"error": err.decode(errors="replace")[-500:]}
            results[fmt] = str(path)
        from .report import summarize_collapsed

        results["top"] = summarize_collapsed(raw.read_text())
        return results


def _saturated(step: dict[str, Any]) -> bool:
    fps = step.get("fps_median") or 0.0
    return step["sfu_cpu_pct"] >= RELAY_SATURATED_CPU_PCT or fps < RELAY_SATURATED_FPS


def meets_targets(step: dict[str, Any]) -> bool:
    loss = step.get("loss_pct")
    fps = step.get("fps_median")
    return (step.get("join_failed", 0) == 0 and loss is not None and loss <= TARGET_LOSS_PCT
            and fps is not None and fps >= TARGET_FPS)


async def background_cpu(seconds: float = 2.0) -> float:
    """Machine-wide busy CPU % (100 = one core) over ``seconds``."""
    c0, t0 = procstat.machine_cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return round(100.0 * (procstat.machine_cpu_seconds() - c0) / (time.monotonic() - t0), 1)


async def wait_for_quiet(limit_s: float, threshold_pct: float = 25.0) -> float:
    """Wait (at most ``limit_s``) until the machine is nearly idle; returns the last reading."""
    deadline = time.monotonic() + limit_s
    busy = await background_cpu()
    while busy > threshold_pct and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: {busy} % CPU busy", flush=True)
        busy = await background_cpu(5.0)
    return busy


async def run_mode(mode: str, opts: FanoutOptions, log_dir: Path) -> dict[str, Any]:
    counts = opts.relay_counts if mode == "relay" else opts.counts
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"mode": mode, "steps": steps}
    result["background_cpu_pct_before"] = await wait_for_quiet(opts.wait_quiet)
    async with FanoutRun(mode, opts, log_dir) as run:
        baseline = await run.measure_baseline()
        result["baseline"] = {k: v for k, v in baseline.items() if k != "sfu_rss"}
        print(f"[{mode}] N=0: SFU {baseline['sfu_cpu_pct']} % CPU, RSS {baseline['sfu_rss_mb']} MB, "
              f"publisher {baseline['publisher']}", flush=True)
        for n in sorted(set(counts)):
            step = await run.step(n)
            step["meets_targets"] = meets_targets(step)
            steps.append(step)
            print(f"[{mode}] N={n}: " + ", ".join(f"{k}={step.get(k)}" for k in (
                "n", "sfu_cpu_pct", "us_per_packet", "estimator_cpu_pct", "us_per_packet_with_estimator", "fps_median", "fps_min", "loss_pct",
                "latency_p50_ms", "latency_p95_ms", "join_probe_p95_ms", "mem_per_subscriber_kb",
                "sfu_cpu_pct_by_process", "classes"))
                + f", hls_bridge={step.get('hls_bridge')}", flush=True)
            if mode == "forward" and opts.profile_at == n:
                result["profile"] = {"n": n, **await run.profile(f"{mode}-{n}")}
            if mode == "relay":
                if _saturated(step) and "saturated_at" not in result:
                    result["saturated_at"] = n  # one core busy, or fps < 25
                if not step["meets_targets"]:
                    result["fails_targets_at"] = n  # past saturation it may still use the 2nd core
                    break
            if (step.get("loss_pct") or 0) > opts.stop_loss_pct or step["n"] < n * 0.9:
                result["stopped_at"] = n
                print(f"[{mode}] stopping: the machine cannot hold N={n}", flush=True)
                break
    return result


def _source_state(root: Path | None = None) -> dict[str, Any]:
    """The commit measured and the files that differed from it (best effort, no git = empty):
    of ``root``, else of this checkout."""
    root = root or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sfu", "signaling", "loadtest"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "modified": [line[3:] for line in dirty if line.strip()]}


async def run_fanout(opts: FanoutOptions) -> dict[str, Any]:
    """Run the benchmark; writes JSON (+ plot) under ``opts.out`` and returns the results."""
    from . import report

    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = opts.out / f"logs-{stamp}"
    log_dir.mkdir()
    modes = ["forward", "relay"] if opts.mode == "both" else [opts.mode]
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"nproc": os.cpu_count(), "cpu": procstat.cpu_model(), "python": sys.version.split()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "targets": {"loss_pct": TARGET_LOSS_PCT, "fps_median": TARGET_FPS},
        "source": _source_state(opts.server_tree),
    }
    for mode in modes:
        results[mode] = await run_mode(mode, opts, log_dir)
    results["summary"] = report.summarize(results)
    path = opts.out / f"fanout-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    results["json_path"] = str(path)
    plot = report.plot(results, opts.out / f"fanout-{stamp}.png")
    results["plot_path"] = plot
    print(report.markdown(results), flush=True)
    print(f"results: {path}" + (f", plot: {plot}" if plot else " (no plot)"), flush=True)
    return results
