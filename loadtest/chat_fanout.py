"""Chat fan-out in one room across both chat paths and two SFU nodes (Redis mode).

``python -m loadtest.chat_fanout --dc 500 --sio 500 --rate 50 --seconds 20 [--flood 1000]``

Starts, all on 127.0.0.1: a private ``redis-server``; two ``relaycast serve
--no-embedded-sfu`` instances A and B in Redis mode; two ``relaycast sfu`` nodes, node A
registered with A and node B with B; one WHIP publisher (a 160x90 5 fps VP8 pattern) in
room ``demo``.  Then ``--procs`` client processes hold

* ``--dc`` WebRTC participants: aiortc WHEP viewers (video + a ``chat`` data channel; once
  connected, their RTP is dropped in the socket callback, undecoded, so the clients spend
  their CPU on chat), WHEP POSTs alternating between A and B.
  ``RELAYCAST_VIEWERS_PER_NODE`` is ``ceil(dc / 2)`` and placement counts connected
  viewers, so the first half joins (and is connected) before the second half starts: the
  first half lands on the room's origin node, the second half on the other node, piped
  from the origin;
* ``--sio`` pages: python-socketio clients (WebSocket) on the pages' namespace, alternating
  between A and B, each joined to ``demo``.  Every page sends its own ``X-Forwarded-For``
  address (10.x.y.z) and the instances trust 127.0.0.1 as a proxy
  (``RELAYCAST_TRUSTED_PROXIES``), as real pages come from many addresses: the per-address
  join limit (10 joins/s) would otherwise meter 500 joins from one address.

A sample of ``--senders`` participants (half data channel, half Socket.IO, spread over both
nodes and both instances) sends ``--rate`` messages/s in all for ``--seconds``: message k
goes out at ``t0 + k / rate`` from sender ``k mod senders`` (so the paths alternate), and
its text carries the phase, the sender, k and the wall-clock send time.  Every participant
records every ``chat`` event it receives (seq, id, receive time).  One machine, one clock:
latency = receive time − the send time in the text.  With the default ``--senders``
(``ceil(rate)``) each sender stays below the chat token bucket (3/s, burst 10), so no
benchmark message is refused.

With ``--flood N`` a flooded phase follows the first (same participants, same schedule):
one extra client — a Socket.IO page on A, or with ``--flood-path datachannel`` a WHEP
viewer's data channel — sends N messages/s for the whole window; the report gives how many
of its messages were numbered vs refused (``rate_limited``) and the other senders' latency
p99 in the flooded phases over the unflooded ones (pooled).  ``--rounds R`` alternates R
unflooded and R flooded phases (base, flood, base2, flood2, ...), so that a change in the
machine's background load weighs on both kinds alike.

Report (printed, and written to ``--out``/chat_fanout.json), per phase: delivery latency
p50/p95/p99/max by receiving path (data channel, Socket.IO), by sending path and overall;
deliveries expected (participants × messages numbered) vs received, lost, duplicates; the
**order check** — the reference is every numbered message (seq, id) sorted by seq, and a
participant passes when the (seq, id) list it received, in arrival order, is exactly the
reference — with the count of participants that differ; the p50 latency of the messages
sent in each second (flat: keeping up; rising: a backlog); how late the clients sent
against the schedule; per process (A, B, node A, node B, redis-server, the client
processes, this process with the publisher, the flood client) the CPU % and the run-queue
wait % (time runnable but not running, from ``/proc/PID/task/*/schedstat``: a process
starved by the rest of the machine shows high wait and low CPU) over each phase (sending
and draining); each server's CPU µs per message delivered to its participants; the
viewers per node.

The participants and the flooding client live in :mod:`loadtest.chat_participants`.
Everything is bounded (joins, phases, drains) and every process started here is stopped in
``finally``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import procstat
from .chat_participants import (
    DC,
    PATHS,
    ROOM,
    SIO,
    Proc,
    Spec,
    ask_all,
    flood_main,
    order_digest,
    pool_main,
)
from .cluster_procs import RedisProcess, ServeProcess, SfuNodeProcess

__all__ = ["add_arguments", "main", "run"]

LABELS = ("A", "B")


def percentiles(values: list[float] | array.array[float]) -> dict[str, float | int | None]:
    """``{"n", "p50", "p95", "p99", "max"}`` of ``values`` (seconds) in ms, 1 decimal."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"n": len(ordered), "p50": round(q[49] * 1000, 1), "p95": round(q[94] * 1000, 1),
            "p99": round(q[98] * 1000, 1), "max": round(ordered[-1] * 1000, 1)}


def run_delay_s(pid: int) -> float:
    """Seconds ``pid``'s threads spent runnable but waiting for a CPU, summed over its threads
    (``/proc/PID/task/TID/schedstat``, second field, ns); 0.0 when unreadable."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return total / 1e9


# --------------------------------------------------------------------- figures
def phase_figures(phase: str, results: list[dict[str, Any]], ids: dict[int, tuple[str, str]],
                  sent: int, rate: float, server_of: dict[int, str]) -> dict[str, Any]:
    """Deliveries, the order check and latency of one phase (see the module docstring);
    ``sent``: benchmark messages sent in it, ``rate``: their rate (messages/s);
    ``server_of``: participant gid → the process that delivers to it (``A``, ``B``, ``node A``...)."""
    reference = sorted((seq, mid) for seq, (mid, text) in ids.items() if text.split("|")[1:2] == [phase])
    digest = order_digest(reference)
    ref_seqs = {seq for seq, _ in reference}
    people = [p for r in results for p in r["people"] if p["error"] is None]
    by_path: dict[str, dict[str, Any]] = {}
    for path in PATHS:
        mine = [p for p in people if p["path"] == path]
        received = sum(len(set(p["seqs"].get(phase, ())) & ref_seqs) for p in mine)
        expected = len(mine) * len(reference)
        by_path[path] = {
            "participants": len(mine), "expected": expected, "received": received,
            "lost": expected - received,
            "duplicates": sum(len(p["seqs"].get(phase, ())) - len(set(p["seqs"].get(phase, ())))
                              for p in mine),
            "order_differs": sum(1 for p in mine if p["digest"].get(phase) != digest),
            # Why a list differs: messages missing, or a seq arriving after a higher one.
            "missing_some": sum(1 for p in mine if len(set(p["seqs"].get(phase, ())) & ref_seqs) < len(ref_seqs)),
            "out_of_seq_order": sum(1 for p in mine if any(
                b <= a for a, b in zip(p["seqs"].get(phase, ()), p["seqs"].get(phase, ())[1:], strict=False))),
            "closed": sum(1 for p in mine if p["closed"]),
        }
    by_server: dict[str, int] = {}
    for p in people:
        where = server_of.get(p["gid"], "?")
        by_server[where] = by_server.get(where, 0) + len(set(p["seqs"].get(phase, ())) & ref_seqs)
    latency: dict[str, array.array[float]] = {}
    per_second: dict[int, list[float]] = {}
    for r in results:
        for key, raw in r["latency"].items():
            ph, recv_path, send_path = key.split("|")
            if ph != phase:
                continue
            values = array.array("d")
            values.frombytes(raw)
            numbers = array.array("q")
            numbers.frombytes(r["k"][key])
            for name in (f"to {recv_path}", f"from {send_path}", "all"):
                latency.setdefault(name, array.array("d")).extend(values)
            for k, value in zip(numbers, values, strict=True):
                per_second.setdefault(int(k // rate), []).append(value)
    bench = {int(text.split("|")[3]) for _, (_, text) in ids.items()
             if text.startswith("b|") and text.split("|")[1] == phase}
    expected = sum(b["expected"] for b in by_path.values())
    received = sum(b["received"] for b in by_path.values())
    return {
        "messages": {"sent": sent, "numbered": len(bench), "not_numbered": sent - len(bench),
                     "flood_numbered": len(reference) - len(bench),
                     "numbered_in_phase_total": len(reference)},
        "deliveries": {"expected": expected, "received": received, "lost": expected - received,
                       "duplicates": sum(b["duplicates"] for b in by_path.values())},
        "order_check": {"reference_messages": len(reference),
                        "participants": len(people),
                        "participants_differing": sum(b["order_differs"] for b in by_path.values()),
                        "participants_missing_some": sum(b["missing_some"] for b in by_path.values()),
                        "participants_out_of_seq_order": sum(b["out_of_seq_order"] for b in by_path.values()),
                        "passed": all(b["order_differs"] == 0 for b in by_path.values())},
        "latency_ms": {k: percentiles(latency.get(k, array.array("d")))
                       for k in ("all", f"to {DC}", f"to {SIO}", f"from {DC}", f"from {SIO}")},
        # Flat: the servers keep up; rising: a backlog builds (a process or the machine saturated).
        "latency_p50_by_second_ms": [round(statistics.median(per_second[x]) * 1000, 1) for x in sorted(per_second)],
        "by_receiving_path": by_path,
        "deliveries_by_process": dict(sorted(by_server.items())),
    }


def flood_comparison(results: list[dict[str, Any]], phases: dict[str, Any]) -> dict[str, Any]:
    """The benchmark senders' latency pooled over the unflooded (``base*``) and the flooded
    (``flood*``) phases, the p99 ratio flooded / unflooded, and the mean CPU % per process
    in each kind of phase (the flood's cost is the difference)."""
    pooled: dict[str, array.array[float]] = {"base": array.array("d"), "flood": array.array("d")}
    for r in results:
        for key, raw in r["latency"].items():
            kind = key.split("|")[0].rstrip("0123456789")
            if kind in pooled:
                pooled[kind].frombytes(raw)
    figures = {kind: percentiles(values) for kind, values in pooled.items()}
    base, flooded = figures["base"]["p99"], figures["flood"]["p99"]
    cpu: dict[str, dict[str, float]] = {}
    for kind in pooled:
        mine = [info["cpu_pct"] for name, info in phases.items() if name.rstrip("0123456789") == kind]
        cpu[kind] = {k: round(statistics.mean(m[k] for m in mine), 1) for k in mine[0]} if mine else {}
    return {"pooled_latency_ms": figures,
            "flood_vs_base_p99": round(flooded / base, 3) if base and flooded else None,
            "pooled_cpu_pct": cpu}


def _phases(rounds: int, flood: bool) -> list[str]:
    """``base`` (and ``flood``) phase names, alternating, ``rounds`` of each:
    base, flood, base2, flood2, ..."""
    names = []
    for i in range(rounds):
        suffix = str(i + 1) if i else ""
        names += [f"base{suffix}"] + ([f"flood{suffix}"] if flood else [])
    return names


# ------------------------------------------------------------------------ run
async def _node_viewers(redis_url: str, node_ids: list[str]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        origin = await client.hget(f"relaycast:room:{ROOM}", "node")
        out: dict[str, Any] = {"origin": origin}
        for node_id in node_ids:
            load = json.loads(await client.hget(f"relaycast:node:{node_id}", "load") or "{}")
            out[node_id] = load.get("viewers")
        return out
    finally:
        await client.aclose()


async def _room_viewers(url: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/rooms/{ROOM}") as resp:
        return int((await resp.json(content_type=None)).get("viewers", 0))


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def _senders(specs: list[Spec], count: int) -> list[int]:
    """``count`` sender gids, alternating data channel / Socket.IO, each kind evenly spread
    over its participants (both nodes, both instances)."""
    def spread(kind: list[Spec], n: int) -> list[int]:
        if n <= 0 or not kind:
            return []
        n = min(n, len(kind))
        return [kind[(i * len(kind)) // n].gid for i in range(n)]

    dcs = spread([s for s in specs if s.path == DC], (count + 1) // 2)
    sios = spread([s for s in specs if s.path == SIO], count // 2)
    out: list[int] = []
    for i in range(max(len(dcs), len(sios))):
        out += dcs[i:i + 1] + sios[i:i + 1]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark (module docstring); returns the report also written to ``args.out``."""
    from . import whip_client
    from .sources import PatternVideoTrack

    if (args.dc < 0 or args.sio < 0 or args.dc + args.sio < 2 or args.rate <= 0 or args.seconds <= 0
            or args.rounds < 1):
        raise SystemExit("--dc + --sio must be >= 2, --rate and --seconds > 0, --rounds >= 1")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    secret = "sk_bench_node_" + secrets.token_urlsafe(18)
    key = "sk_bench_key_" + secrets.token_urlsafe(18)
    per_node = max(1, math.ceil(args.dc / 2))
    env = {"RELAYCAST_STREAM_KEY": key, "RELAYCAST_VIEWERS_PER_NODE": str(per_node),
           "RELAYCAST_TRUSTED_PROXIES": "127.0.0.1"}
    ctx = multiprocessing.get_context("spawn")
    procs: list[Proc] = []
    flood: Proc | None = None
    servers: list[ServeProcess] = []
    nodes: list[SfuNodeProcess] = []
    publisher = None
    phases: dict[str, Any] = {}
    sent_counts: dict[str, int] = {}
    whip_client.pin_loopback()
    background = await _wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    with tempfile.TemporaryDirectory(prefix="relaycast-chat-fanout-") as workdir:
        redis = RedisProcess(Path(workdir))
        try:
            await redis.start()
            servers = [ServeProcess(x, redis.url, secret, out / f"serve_{x}.log", room=ROOM, env=env)
                       for x in LABELS]
            await asyncio.gather(*(server.start() for server in servers))
            for i, x in enumerate(LABELS):
                urls = [s.url for s in servers[i:] + servers[:i]]  # node A → A first, node B → B first
                nodes.append(SfuNodeProcess(f"node-{x}", ",".join(urls), secret, out / f"node_{x}.log",
                                            env={"REDIS_URL": redis.url}))
            await asyncio.gather(*(node.start() for node in nodes))
            _log(f"redis {redis.url}; A {servers[0].url}; B {servers[1].url}; nodes up")

            publisher = await whip_client.publish(f"{servers[0].url}/whip/{ROOM}", key,
                                                  [PatternVideoTrack(160, 90, 5)])
            await whip_client.wait_connected(publisher.pc, timeout=30)

            specs: list[Spec] = []
            for i in range(args.dc):
                specs.append(Spec(len(specs), DC, LABELS[i % 2], servers[i % 2].url))
            for i in range(args.sio):
                specs.append(Spec(len(specs), SIO, LABELS[i % 2], servers[i % 2].url))
            nproc = max(1, min(args.procs, len(specs)))
            procs = [Proc(ctx, pool_main) for _ in range(nproc)]
            owner = {s.gid: procs[s.gid % nproc] for s in specs}

            async def join(group: list[Spec], what: str) -> dict[str, Any]:
                t = time.monotonic()
                answers = await ask_all(
                    procs, [("join", [s for s in group if owner[s.gid] is p], args.concurrency) for p in procs],
                    timeout=120 + len(group))
                joined = sum(a["joined"] for a in answers)
                errors = sorted({e for a in answers for e in a["errors"]})[:5]
                _log(f"{what}: {joined}/{len(group)} joined in {time.monotonic() - t:.1f} s {errors or ''}")
                return {"joined": joined, "of": len(group), "s": round(time.monotonic() - t, 1), "errors": errors}

            dcs = [s for s in specs if s.path == DC]
            joins: dict[str, Any] = {}
            # Half the data-channel participants on the origin, connected, before the rest:
            # placement counts connected viewers, so the second half goes to the other node.
            if dcs:
                joins["dc_first_half"] = await join(dcs[:per_node], "data channels, first half")
                first = joins["dc_first_half"]["joined"]
                await _wait(lambda: _all_viewers(servers, first), 60, f"{first} viewers counted")
            if dcs[per_node:]:
                joins["dc_second_half"] = await join(dcs[per_node:], "data channels, second half")
            joins["sio"] = await join([s for s in specs if s.path == SIO], "Socket.IO pages")
            node_ids = [n.node_id for n in nodes]
            if dcs:
                total_dc = sum(j["joined"] for k, j in joins.items() if k.startswith("dc"))
                await _wait(lambda: _all_viewers(servers, total_dc), 60, f"{total_dc} viewers counted")
                with contextlib.suppress(RuntimeError):  # the nodes' load reports (every second)
                    await _wait(lambda: _placed(redis.url, node_ids, total_dc), 5, "load reports")
            placement = await _node_viewers(redis.url, node_ids)
            _log(f"viewers per node: {placement}")
            # Who delivers to whom: pages ← their instance; data channels ← their node (the
            # first half on the origin, the rest on the other node).
            origin = "node A" if placement.get("origin") == nodes[0].node_id else "node B"
            other = "node B" if origin == "node A" else "node A"
            server_of = {s.gid: s.label if s.path == SIO else (origin if i < per_node else other)
                         for i, s in enumerate(dcs + [s for s in specs if s.path == SIO])}

            senders = _senders(specs, args.senders)
            await ask_all(procs, [("senders", [g for g in senders if specs[g].path == DC])] * nproc, 10)
            if args.flood:
                flood = Proc(ctx, flood_main, servers[0].url, args.flood, args.flood_path)
                ready = await flood.ask(None, 60)
                if ready != "ready":
                    raise RuntimeError(f"the flood client could not join: {ready}")

            watched: dict[str, list[int]] = {
                "A": [servers[0].pid], "B": [servers[1].pid], "node A": [nodes[0].pid],
                "node B": [nodes[1].pid], "redis": [redis.proc.pid if redis.proc else 0],
                "clients": [p.pid for p in procs], "coordinator": [os.getpid()]}
            if flood is not None:
                watched["flood client"] = [flood.pid]
            for phase in _phases(args.rounds if args.flood else 1, bool(args.flood)):
                count = max(1, round(args.rate * args.seconds))
                t0 = time.time() + 1.0
                schedule = [(senders[k % len(senders)], k, t0 + k / args.rate, phase) for k in range(count)]
                sent_counts[phase] = count
                use0 = _usage(watched)
                m0 = procstat.machine_cpu_seconds()
                w0 = time.monotonic()
                _log(f"phase {phase}: {count} messages at {args.rate:g}/s from {len(senders)} senders"
                     + (f", flood {args.flood:g}/s" if phase.startswith("flood") else ""))
                if phase.startswith("flood") and flood is not None:
                    flood.conn.send(("flood", phase, t0, args.seconds))
                await ask_all(procs, [("send", [e for e in schedule if owner[e[0]] is p]) for p in procs],
                               timeout=args.seconds + 60)
                window_send = time.monotonic() - w0
                await ask_all(procs, [("drain", phase, count, args.quiet, args.grace)] * nproc,
                               timeout=args.grace + 30)
                window = time.monotonic() - w0
                use1 = _usage(watched)
                machine = procstat.machine_cpu_seconds() - m0
                phases[phase] = {"window_s": round(window, 2), "send_s": round(window_send, 2),
                                 "cpu_pct": {k: round(100 * (use1[k][0] - use0[k][0]) / window, 1)
                                             for k in watched},
                                 "run_queue_wait_pct": {k: round(100 * (use1[k][1] - use0[k][1]) / window, 1)
                                                        for k in watched},
                                 "machine_cpu_pct": round(100 * machine / window, 1),
                                 "cpu_s": {k: use1[k][0] - use0[k][0] for k in watched}}
                if phase.startswith("flood") and flood is not None:
                    phases[phase]["flood_client"] = await flood.ask(None, 30)
            results = await ask_all(procs, [("results",)] * nproc, timeout=120)
        finally:
            if flood is not None:
                await flood.stop()
            for proc in procs:
                await proc.stop()
            if publisher is not None:
                try:
                    await asyncio.wait_for(publisher.close(), 5)
                except Exception:
                    pass
            for node in nodes:
                await node.stop()
            for server in servers:
                await server.stop()
            await redis.stop()

    ids: dict[int, tuple[str, str]] = {}
    conflicts = sum(r["conflicts"] for r in results)
    for r in results:
        for seq, (mid, text) in r["ids"].items():
            if ids.setdefault(seq, (mid, text))[0] != mid:
                conflicts += 1
    people = [p for r in results for p in r["people"]]
    lateness = array.array("d")
    for r in results:
        lateness.frombytes(r["lateness"])
    refused: dict[str, dict[str, int]] = {DC: {}, SIO: {}}
    for p in people:
        for code, n in p["refused"].items():
            refused[p["path"]][code] = refused[p["path"]].get(code, 0) + n
    report: dict[str, Any] = {
        "config": {"dc": args.dc, "sio": args.sio, "rate_per_s": args.rate, "seconds": args.seconds,
                   "senders": len(senders), "per_sender_rate_per_s": round(args.rate / len(senders), 3),
                   "flood_per_s": args.flood, "flood_path": args.flood_path, "rounds": args.rounds, "procs": nproc, "viewers_per_node": per_node,
                   "instances": 2, "nodes": 2},
        "machine": {"nproc": os.cpu_count(), "cpu": procstat.cpu_model(), "python": sys.version.split()[0],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "background_cpu_pct_before": background},
        "joins": joins,
        "placement": placement,
        "participants": {path: {x: sum(1 for p in people if p["path"] == path and p["label"] == x
                                       and p["error"] is None) for x in LABELS} for path in PATHS},
        "seq_id_conflicts": conflicts,
        "refused": refused,
        "send_lateness_ms": percentiles(lateness),
    }
    for phase, info in phases.items():
        cpu_s = info.pop("cpu_s")
        figures = phase_figures(phase, results, ids, sent_counts[phase], args.rate, server_of)
        # CPU per message delivered to a participant (A and B also take the submissions and
        # number them; the nodes also pass their data channels' messages up).
        figures["cpu_us_per_delivery"] = {
            k: round(1e6 * cpu_s[k] / n, 1) if (n := figures["deliveries_by_process"].get(k)) else None
            for k in ("A", "B", "node A", "node B")}
        report[phase] = {**figures, **info}
    if "flood" in report:
        report.update(flood_comparison(results, phases))
    text = json.dumps(report, indent=2)
    print(text)
    (out / "chat_fanout.json").write_text(text + "\n")
    _log(f"wrote {out / 'chat_fanout.json'}")
    return report


async def _wait_for_quiet(limit_s: float, threshold_pct: float = 25.0) -> float:
    """Wait (at most ``limit_s``) until the machine is nearly idle (busy CPU % below
    ``threshold_pct``, 100 = one core); returns the last reading."""
    from .fanout import background_cpu

    deadline = time.monotonic() + limit_s
    busy = await background_cpu()
    while busy > threshold_pct and time.monotonic() < deadline:
        _log(f"waiting for a quiet machine: {busy} % CPU busy")
        busy = await background_cpu(5.0)
    return busy


def _usage(watched: dict[str, list[int]]) -> dict[str, tuple[float, float]]:
    """Per name: (CPU seconds, seconds runnable but waiting for a CPU) summed over its pids
    (a process that is gone counts 0)."""
    def cpu(pid: int) -> float:
        try:
            return procstat.cpu_seconds(pid)
        except Exception:
            return 0.0

    return {name: (sum(cpu(pid) for pid in pids), sum(run_delay_s(pid) for pid in pids))
            for name, pids in watched.items()}


async def _placed(redis_url: str, node_ids: list[str], n: int) -> bool:
    counts = await _node_viewers(redis_url, node_ids)
    return sum(int(counts.get(x) or 0) for x in node_ids) >= n


async def _all_viewers(servers: list[ServeProcess], n: int) -> bool:
    return all([await _room_viewers(s.url) >= n for s in servers])


def _log(text: str) -> None:
    print(f"chat-fanout: {text}", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dc", type=int, default=500, help="data-channel (WebRTC) participants (default 500)")
    parser.add_argument("--sio", type=int, default=500, help="Socket.IO pages (default 500)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second in all (default 50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="send window per phase (default 20)")
    parser.add_argument("--senders", type=int, default=0,
                        help="participants that send, half per path (default: ceil(rate), at least 2)")
    parser.add_argument("--flood", type=float, default=0.0,
                        help="messages/s of one extra client in a second, flooded phase (default 0: none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --flood: unflooded and flooded phases alternate this many times each "
                             "(base, flood, base2, flood2, ...; default 1), so that a change in the "
                             "machine's background load weighs on both alike")
    parser.add_argument("--flood-path", choices=PATHS, default=SIO,
                        help="the flooding client: a Socket.IO page on A (default) or a data channel")
    parser.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=10, help="joins in flight per client process (default 10)")
    parser.add_argument("--quiet", type=float, default=5.0,
                        help="a phase ends when every participant has every message sent in it, or once no "
                             "chat event arrived for this long (default 5 s)")
    parser.add_argument("--grace", type=float, default=20.0, help="longest wait after sending (default 20 s)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for other processes to go idle (default 0: no wait)")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/chat-fanout"), help="results folder")


def main(args: argparse.Namespace) -> int:
    if not args.senders:
        args.senders = max(2, math.ceil(args.rate))
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m loadtest.chat_fanout", description=__doc__.split("\n\n")[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
