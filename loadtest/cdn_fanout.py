"""``loadtest cdn``: LL-HLS fan-out through a real nginx edge (``deploy/nginx/``).

Everything on 127.0.0.1, in this order:

* the service (``Service``, embedded SFU, port 0) with the LL-HLS bridge, the ladder
  set through ``RELAYCAST_HLS_LADDER`` (default one low rung, so the 2-core machine
  is not dominated by transcoding);
* an aiortc WHIP publisher of the capture-time pattern
  (``PatternVideoTrack(..., code="capture_time")``, low resolution, video only unless
  ``--audio``);
* the nginx edge (:class:`~loadtest.nginx_edge.NginxEdge`) in front of the service
  (``--no-cache-lock`` runs it with ``proxy_cache_lock off``, for comparison);
* player processes (multiprocessing, spawn) running emulated LL-HLS players
  (:class:`~loadtest.llhls_player.LlhlsPlayer`: blocking playlist reload + early
  preload-hint requests), all through the edge.

Phase 1 is one player (the baseline); phase 2 is ``--players`` players joining over
``--ramp`` seconds.  In each phase the first ``--settle`` seconds after the joins are
not measured; then ``--seconds`` are.  Reported per phase:

* origin requests per object: for every URL under ``/hls/`` requested during the
  phase, how many of its requests reached the origin (access-log lines whose
  ``$upstream_addr`` is set), max / mean / p99 over objects, also by object kind;
* player latency per part: ``received − (segment PROGRAM-DATE-TIME + end of the part
  in its segment)``, parts received in the window (not the catch-up parts fetched at
  join), p50 / p95 / p99 / max; how the edge answered (X-Cache-Status counts);
* errors (player-side: non-200 answers, timeouts, resyncs; edge-side: non-2xx lines);
* CPU (cores) of the player processes, nginx, the service process (SFU + bridge +
  publisher) and the whole machine.

A table is printed and the figures are written to ``--out/cdn-<time>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import secrets
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import procstat
from .report import percentile, rounded

logger = logging.getLogger(__name__)

ROOM = "bench"
TARGET_ORIGIN_PER_OBJECT = 2
PLAYERS_PER_PROC = 100


@dataclass
class CdnOptions:
    """What ``loadtest cdn`` runs; times in seconds."""

    players: int = 300
    seconds: float = 20.0
    baseline_seconds: float = 0.0  # 0 = same as seconds
    settle: float = 3.0
    ramp: float = 3.0
    procs: int = 0  # 0 = one per 100 players
    width: int = 320
    height: int = 180
    fps: int = 30
    ladder: str = "180:300k"
    audio: bool = False
    preload_hint: bool = True
    edge_workers: int = 1
    cache_lock: bool = True  # False: the template with `proxy_cache_lock off` (comparison only)
    workdir: Path | None = None
    out: Path = field(default_factory=lambda: Path("loadtest/results"))


# ------------------------------------------------------------------ player processes
def _player_proc_main(conn: Connection) -> None:
    """Entry point of a player process: run phases sent by the parent, send back results."""
    logging.basicConfig(level=logging.WARNING)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            conn.send(asyncio.run(_run_players(**msg)))
    except (EOFError, KeyboardInterrupt):
        return


async def _run_players(url: str, indices: Sequence[int], starts: Sequence[float], end_at: float,
                       audio: bool, preload_hint: bool) -> dict[str, Any]:
    """Run players ``indices`` (player i starts at ``starts[k]``) until ``end_at``."""
    from .llhls_player import HttpClient, LlhlsPlayer

    cpu0 = time.process_time()

    async def one(index: int, start: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, start - time.time()))
        http = HttpClient(timeout=10.0)
        player = LlhlsPlayer(url, duration=max(0.1, end_at - time.time()), audio=audio,
                             preload_hint=preload_hint, http=http)
        failure = None
        try:
            await player.run()
        except Exception as exc:  # noqa: BLE001 - reported, not raised: one player must not stop the rest
            failure = repr(exc)
        finally:
            await http.close()
        return {
            "index": index,
            "records": [(r.rendition, r.msn, r.part, r.bytes, r.requested, r.received,
                         r.program_date_time, r.end_offset, r.hinted, r.catchup)
                        for r in player.records],
            "errors": [(e.time, e.url, e.what) for e in player.errors],
            "requests": http.requests,
            "connections": http.connections_opened,
            "bytes": http.bytes_received,
            "resyncs": player.resyncs,
            "stop_reason": player.stop_reason,
            "failure": failure,
        }

    players = await asyncio.gather(*(one(i, s) for i, s in zip(indices, starts, strict=True)))
    return {"players": players, "cpu_s": time.process_time() - cpu0}


class PlayerPool:
    """``procs`` spawned processes, each running a share of the players of a phase."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_player_proc_main, args=(child,), name=f"llhls-players-{i}",
                               daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    async def run(self, url: str, starts: list[float], end_at: float, audio: bool,
                  preload_hint: bool) -> list[dict[str, Any]]:
        """Player ``i`` starts at ``starts[i]``; players are dealt round-robin to processes."""
        jobs = []
        for k, conn in enumerate(self.conns):
            indices = list(range(k, len(starts), len(self.conns)))
            if not indices:
                continue
            conn.send({"url": url, "indices": indices, "starts": [starts[i] for i in indices],
                       "end_at": end_at, "audio": audio, "preload_hint": preload_hint})
            jobs.append(conn)
        deadline = end_at + 60
        results = []
        for conn in jobs:
            while not conn.poll(0):
                if time.time() > deadline:
                    raise TimeoutError("a player process did not report back")
                await asyncio.sleep(0.1)
            results.append(conn.recv())
        return results

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# ------------------------------------------------------------------ measurement
def object_kind(uri: str) -> str:
    path, _, query = uri.partition("?")
    name = path.rsplit("/", 1)[-1]
    if name.startswith("part"):
        return "part"
    if name.startswith("seg"):
        return "segment"
    if name == "init.mp4":
        return "init"
    if name == "index.m3u8":
        if path.count("/") <= 3:  # /hls/{room}/index.m3u8
            return "multivariant"
        return "playlist (blocking)" if "_HLS_msn" in query else "playlist (plain)"
    return "other"


def _stats(values: list[float], scale: float = 1.0, digits: int = 1) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50) * scale, digits),  # type: ignore[operator]
        "p95": rounded(percentile(values, 95) * scale, digits),  # type: ignore[operator]
        "p99": rounded(percentile(values, 99) * scale, digits),  # type: ignore[operator]
        "max": rounded(max(values) * scale, digits),
        "mean": rounded(statistics.fmean(values) * scale, digits),
    }


def origin_per_object(entries: list[Any]) -> dict[str, Any]:
    """Origin requests per object (request URI under /hls/), overall and by kind."""
    counts: dict[str, int] = {}
    requests: Counter[str] = Counter()
    for e in entries:
        if not e.uri.startswith("/hls/"):
            continue
        counts[e.uri] = counts.get(e.uri, 0) + (1 if e.reached_origin else 0)
        requests[e.uri] += 1
    kinds: dict[str, list[str]] = {}
    for uri in counts:
        kinds.setdefault(object_kind(uri), []).append(uri)

    def summary(uris: list[str]) -> dict[str, Any]:
        values = [counts[u] for u in uris]
        worst = max(uris, key=lambda u: counts[u]) if uris else None
        return {
            "objects": len(uris),
            "edge_requests": sum(requests[u] for u in uris),
            "origin_requests": sum(values),
            "max": max(values) if values else None,
            "mean": round(statistics.fmean(values), 3) if values else None,
            "p99": percentile([float(v) for v in values], 99) if values else None,
            "worst": worst,
        }

    return {"all": summary(list(counts)), "by_kind": {k: summary(v) for k, v in sorted(kinds.items())}}


def summarize_phase(name: str, players: int, results: list[dict[str, Any]], entries: list[Any],
                    window: tuple[float, float], cpu: dict[str, float]) -> dict[str, Any]:
    t0, t1 = window
    all_players = [p for r in results for p in r["players"]]
    latencies = []
    fetch_hinted = []
    parts_in_window = 0
    for p in all_players:
        for (_rend, _msn, _part, _size, _requested, received, pdt, end_offset, hinted,
             catchup) in p["records"]:
            if catchup or not t0 <= received < t1:
                continue
            parts_in_window += 1
            if pdt is not None:
                latencies.append(received - (pdt + end_offset))
            if hinted:
                fetch_hinted.append(1.0)
    player_errors: Counter[str] = Counter()
    for p in all_players:
        for when, _url, what in p["errors"]:
            if t0 <= when < t1:
                player_errors[what] += 1
    failures = [p["failure"] for p in all_players if p["failure"]]
    in_window = [e for e in entries if t0 <= e.time < t1]
    edge_status = Counter(str(e.status) for e in in_window if e.uri.startswith("/hls/"))
    cache_status = Counter(e.cache_status for e in in_window if e.uri.startswith("/hls/"))
    seconds = t1 - t0
    # How long the edge took for answers it did not fetch itself: ~0 for a plain HIT,
    # ~0.5 s (nginx's cache-lock poll) for a request that waited on another's fetch.
    waits: Counter[str] = Counter()
    for e in in_window:
        if e.uri.startswith("/hls/") and not e.reached_origin:
            t = e.request_time
            waits["<10ms" if t < 0.01 else "10-450ms" if t < 0.45 else "450-550ms" if t < 0.55 else ">550ms"] += 1
    return {
        "phase": name,
        "players": players,
        "window_s": round(seconds, 2),
        "parts_received": parts_in_window,
        "parts_per_player_per_s": round(parts_in_window / max(1, players) / seconds, 2),
        "hinted_share": round(len(fetch_hinted) / parts_in_window, 3) if parts_in_window else None,
        "latency_ms": _stats(latencies, 1000.0),
        "origin_per_object": origin_per_object(entries),
        "edge_requests_per_s": round(len([e for e in in_window if e.uri.startswith("/hls/")]) / seconds, 1),
        "edge_status": dict(edge_status),
        "edge_status_phase": dict(Counter(str(e.status) for e in entries if e.uri.startswith("/hls/"))),
        "cache_status": dict(cache_status),
        "edge_only_request_time": dict(waits),
        "player_errors": dict(player_errors),
        "player_failures": failures[:5],
        "player_failure_count": len(failures),
        "resyncs": sum(p["resyncs"] for p in all_players),
        "player_requests": sum(p["requests"] for p in all_players),
        "player_connections": sum(p["connections"] for p in all_players),
        "cpu_cores": cpu,
    }


class CpuMeter:
    """CPU seconds of groups of processes between two reads."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.t = 0.0
        self.marks: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(OSError, ProcessLookupError):
                    total += procstat.cpu_seconds(pid)
            out[name] = total
        out["machine"] = procstat.machine_cpu_seconds()
        return out

    def start(self) -> None:
        self.t, self.marks = time.monotonic(), self._read()

    def stop(self) -> dict[str, float]:
        now, marks = time.monotonic(), self._read()
        dt = max(1e-6, now - self.t)
        return {k: round((marks[k] - self.marks.get(k, 0.0)) / dt, 3) for k in marks}


# ------------------------------------------------------------------ the run
async def _wait_live(http_get: Any, url: str, timeout: float = 30.0) -> str:
    """GET ``url`` until it answers 200 (the first request starts the bridge)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            resp = await http_get(url)
            if resp.status == 200:
                return resp.body.decode()
            last = f"HTTP {resp.status}: {resp.body[:200]!r}"
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} did not become available: {last}")


async def run_cdn(opts: CdnOptions) -> dict[str, Any]:
    """Run both phases; print the table; write JSON; return the result."""
    os.environ["RELAYCAST_HLS_LADDER"] = opts.ladder
    from relaycast.service import Service
    from signaling.config import SignalingConfig

    from . import whip_client
    from .llhls_player import HttpClient, parse_media_playlist
    from .nginx_edge import TEMPLATE, NginxEdge
    from .sources import PatternVideoTrack, ToneAudioTrack

    whip_client.pin_loopback()
    procs = opts.procs or max(1, math.ceil(opts.players / PLAYERS_PER_PROC))
    pool = PlayerPool(procs)  # spawned first: they import while the rest starts
    key = "sk_bench_" + secrets.token_hex(12)
    # The nginx edge is the origin's trusted proxy, as in docker-compose.yml.
    config = SignalingConfig.from_env({"RELAYCAST_TRUSTED_PROXIES": "127.0.0.1"}, host="127.0.0.1", port=0,
                                      demo_room=ROOM, demo_stream_key=key)
    workdir_ctx = (tempfile.TemporaryDirectory(prefix="relaycast-edge-")
                   if opts.workdir is None else contextlib.nullcontext(str(opts.workdir)))
    result: dict[str, Any] = {}
    with workdir_ctx as workdir:
        async with Service(config) as svc:
            tracks: list[Any] = [PatternVideoTrack(opts.width, opts.height, opts.fps, code="capture_time")]
            if opts.audio:
                tracks.append(ToneAudioTrack())
            pub = await whip_client.publish(f"{svc.url}/whip/{ROOM}", key, tracks)
            try:
                await whip_client.wait_connected(pub.pc)
                template = TEMPLATE
                if not opts.cache_lock:
                    text = TEMPLATE.read_text()
                    assert "proxy_cache_lock on;" in text
                    template = Path(workdir) / "no-lock.conf.template"
                    template.write_text(text.replace("proxy_cache_lock on;", "proxy_cache_lock off;"))
                async with NginxEdge(svc.url, workdir, workers=opts.edge_workers, template=template) as edge:
                    result = await _phases(opts, svc, edge, pool, HttpClient, parse_media_playlist)
            finally:
                await pub.close()
                pool.close()
    _print(result)
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"cdn-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten: {path}")
    return result


async def _phases(opts: CdnOptions, svc: Any, edge: Any, pool: PlayerPool, http_cls: Any,
                  parse: Any) -> dict[str, Any]:
    url = f"{edge.url}/hls/{ROOM}/index.m3u8"
    http = http_cls(timeout=15.0)
    try:
        master = await _wait_live(http.get, url)
        # The first variant's playlist: {stream}/v0/index.m3u8 (media URLs are per stream).
        first = next(line for line in master.splitlines() if line and not line.startswith("#"))
        media_url = f"{edge.url}/hls/{ROOM}/{first}"
        # Let a few segments exist so joining players find an independent part.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = await _wait_live(http.get, media_url)
            if len(parse(text, media_url).segments) >= 2:
                break
            await asyncio.sleep(0.5)
    finally:
        await http.close()

    bridge = svc.hls.bridges.get(ROOM) if svc.hls is not None else None
    meter_groups = {"players": pool.pids, "nginx": edge.cpu_pids(), "service": [os.getpid()]}
    phases = []
    baseline_seconds = opts.baseline_seconds or opts.seconds
    for name, count, ramp, seconds in (("baseline", 1, 0.0, baseline_seconds),
                                       ("fan-out", opts.players, opts.ramp, opts.seconds)):
        start_at = time.time() + 1.0
        starts = [start_at + ramp * i / max(1, count) for i in range(count)]
        window = (start_at + ramp + opts.settle, start_at + ramp + opts.settle + seconds)
        end_at = window[1] + 0.2
        print(f"[{name}] {count} player(s): joining over {ramp:g} s, settle {opts.settle:g} s, "
              f"measure {seconds:g} s", flush=True)
        run = asyncio.create_task(pool.run(url, starts, end_at, opts.audio, opts.preload_hint))
        meter = CpuMeter(meter_groups)
        await asyncio.sleep(max(0.0, window[0] - time.time()))
        meter.start()
        await asyncio.sleep(max(0.0, window[1] - time.time()))
        cpu = meter.stop()
        results = await run
        await asyncio.sleep(0.5)  # the edge logs a request when it ends
        entries = edge.log_entries(since=start_at - 0.5, until=end_at + 0.5)
        phases.append(summarize_phase(name, count, results, entries, window, cpu))
        await asyncio.sleep(1.0)
    base, fan = phases
    b50, f50 = base["latency_ms"]["p50"], fan["latency_ms"]["p50"]
    b95, f95 = base["latency_ms"]["p95"], fan["latency_ms"]["p95"]
    worst = fan["origin_per_object"]["all"]["max"]
    return {
        "benchmark": "cdn",
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "machine": {"cpu": procstat.cpu_model(), "cores": os.cpu_count()},
        "edge": {"nginx": edge.nginx, "workers": opts.edge_workers, "template": str(edge.template),
                 "cache_lock": opts.cache_lock},
        "encoder": bridge.encoder_name if bridge is not None else None,
        "renditions": sorted(bridge.store.renditions) if bridge is not None else None,
        "phases": phases,
        "verdict": {
            "origin_max_per_object": worst,
            "origin_target_met": worst is not None and worst <= TARGET_ORIGIN_PER_OBJECT,
            "latency_p50_delta_ms": None if None in (b50, f50) else round(f50 - b50, 1),
            "latency_p95_delta_ms": None if None in (b95, f95) else round(f95 - b95, 1),
        },
    }


def _print(result: dict[str, Any]) -> None:
    if not result:
        return
    rows = []
    for ph in result["phases"]:
        lat = ph["latency_ms"]
        opo = ph["origin_per_object"]["all"]
        cpu = ph["cpu_cores"]
        errors = sum(ph["player_errors"].values()) + ph["player_failure_count"]
        rows.append([
            ph["phase"], ph["players"], ph["parts_received"], ph["edge_requests_per_s"],
            opo["objects"], opo["max"], opo["mean"], opo["p99"],
            lat["p50"], lat["p95"], lat["p99"], errors, ph["resyncs"],
            cpu.get("players"), cpu.get("nginx"), cpu.get("service"), cpu.get("machine"),
        ])
    head = ["phase", "players", "parts", "edge req/s", "objects", "origin/obj max", "mean", "p99",
            "lat p50 ms", "p95", "p99", "errors", "resyncs", "cpu players", "nginx", "service", "machine"]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
    fan = result["phases"][-1]
    print("\norigin requests per object by kind (fan-out phase):")
    for kind, s in fan["origin_per_object"]["by_kind"].items():
        print(f"  {kind:20s} objects {s['objects']:5d}  edge requests {s['edge_requests']:6d}  "
              f"origin requests {s['origin_requests']:5d}  max {s['max']}  mean {s['mean']}")
    print(f"cache status (fan-out window): {fan['cache_status']}")
    print(f"edge status (fan-out window): {fan['edge_status']}")
    print(f"edge time of answers that did not go to the origin: {fan['edge_only_request_time']}")
    if fan["player_errors"]:
        print(f"player errors: {fan['player_errors']}")
    print(f"verdict: {result['verdict']}")
