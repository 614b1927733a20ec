"""Socket.IO fan-out of room state across two signaling instances (Redis mode).

``python -m loadtest sio-fanout --clients 1000 --seconds 10 --rate 20 --procs 2``

Starts, all on 127.0.0.1: a private ``redis-server``, two ``relaycast serve
--no-embedded-sfu`` instances (A and B) in Redis mode, and ``--procs`` client processes
holding ``--clients`` python-socketio clients (WebSocket transport) split evenly between
A and B, all joined to room ``demo`` on the pages' namespace (`signaling.browser`).  A
fake SFU node (a Socket.IO client on A's ``/sfu`` with the node secret) sends a ``load``
report every second and ``room_state`` ``{"room": "demo", "live": true, "viewers": k}``
at ``--rate`` per second for ``--seconds``, k = 1, 2, ... a sequence number.  A emits
each state once (pages on A get it directly, pages on B through Redis).

Every client records, per ``room`` event, (k, wall-clock receive time, the event's
``ts``).  The node's send times stay in this (coordinator) process; at the end the
client processes return their raw receive records and the figures are computed here:

* latency = receive time − the node's send time of k (one machine, one clock), per
  instance: A = local emit, B = through Redis; ``node_to_emit`` = ``ts`` − send time
  (the signaling side: event handling, Redis room update, emit start; ``ts`` is in ms);
* deliveries expected (clients joined × events sent) vs received, lost, duplicates,
  out of order (a k below one the client already had), deliveries per second;
* the p50 latency of the states sent in each second (flat: keeping up; rising: a backlog);
* CPU % of A, B, redis-server and the client processes over the send window and the
  drain, each instance's CPU µs per delivery to its clients (A's includes handling the
  node's events), and the RSS of A and B with the clients connected.

Everything stops by itself: connects, the send window and the final drain are bounded,
and every process started here is killed in ``finally``.  The report is printed and
written to ``--out``/sio_fanout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procstat
from .cluster_procs import RedisProcess, ServeProcess
from .report import ms_percentiles

__all__ = ["add_arguments", "main", "run"]

ROOM = "demo"
NODE_ID = "bench-node"
LABELS = ("A", "B")


class FakeNode:
    """A Socket.IO client on ``/sfu`` posing as SFU node ``bench-node``: ``load`` every
    second, ``room_state`` on demand; ``sent[k]`` = wall-clock send time of state k."""

    def __init__(self, url: str, secret: str) -> None:
        import socketio

        self.url, self.secret = url, secret
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sent: dict[int, float] = {}
        self._load: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        from sfu.protocol import SOCKETIO_PATH

        await self.sio.connect(self.url, namespaces=["/sfu"], transports=["websocket"], wait_timeout=10,
                               socketio_path=SOCKETIO_PATH,
                               auth={"node_id": NODE_ID, "secret": self.secret})
        self._load = asyncio.create_task(self._report_load())

    async def _report_load(self) -> None:
        while True:
            await self.sio.emit("load", {"sessions": 0, "capacity": 1000}, namespace="/sfu")
            await asyncio.sleep(1.0)

    async def send_states(self, rate: float, seconds: float) -> None:
        """``room_state`` k = 1 .. ``round(rate * seconds)``, paced on a fixed schedule."""
        count = max(1, round(rate * seconds))
        start = time.monotonic()
        for k in range(1, count + 1):
            delay = start + (k - 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sent[k] = time.time()
            await self.sio.emit("room_state", {"room": ROOM, "live": True, "viewers": k}, namespace="/sfu")

    async def close(self) -> None:
        if self._load is not None:
            self._load.cancel()
        if self.sio.connected:
            await asyncio.wait_for(self.sio.disconnect(), 5)


# -------------------------------------------------------------- client processes
def _pool_main(conn: multiprocessing.connection.Connection, targets: list[tuple[str, str]], batch: int) -> None:
    """Entry point of a client process: ``targets`` = [(instance label, base URL)] per client."""
    try:
        asyncio.run(_pool(conn, targets, batch))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the coordinator is gone


@dataclass
class _Client:
    label: str
    sio: Any = None
    error: str | None = None
    records: list[tuple[int, float, int]] = field(default_factory=list)
    """(k, receive time time.time(), the event's ts in ms) per ``room`` event."""
    disconnected: bool = False


async def _pool(conn: multiprocessing.connection.Connection, targets: list[tuple[str, str]], batch: int) -> None:
    import aiohttp
    import socketio

    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients = [_Client(label) for label, _ in targets]

    async def join(client: _Client, url: str) -> None:
        sio = socketio.AsyncClient(reconnection=False, http_session=http)
        client.sio = sio

        def on_room(data: dict[str, Any]) -> None:
            client.records.append((int(data.get("viewers", -1)), time.time(), int(data.get("ts", 0))))

        def on_disconnect(*_: Any) -> None:
            client.disconnected = True

        sio.on("room", on_room)
        sio.on("disconnect", on_disconnect)
        try:
            await sio.connect(url, transports=["websocket"], wait_timeout=20)
            ack = await sio.call("join", {"room": ROOM}, timeout=20)
            if not isinstance(ack, dict) or ack.get("room") != ROOM:
                client.error = f"join refused: {ack!r}"
        except Exception as exc:
            client.error = f"{type(exc).__name__}: {exc}"[:200]

    try:
        for i in range(0, len(targets), batch):
            await asyncio.gather(*(join(clients[j], targets[j][1])
                                   for j in range(i, min(i + batch, len(targets)))))
            conn.send(("progress", min(i + batch, len(targets))))
        conn.send(("ready", sum(1 for c in clients if c.error is None)))

        message = await asyncio.to_thread(conn.recv)  # ("stop", last k, seconds to wait at most)
        _, last_k, wait_s = message
        deadline = time.monotonic() + wait_s
        joined = [c for c in clients if c.error is None]
        while time.monotonic() < deadline:
            if all(len({r[0] for r in c.records}) >= last_k or c.disconnected for c in joined):
                break
            await asyncio.sleep(0.05)
        conn.send(("result", [{"label": c.label, "error": c.error, "records": c.records,
                               "disconnected": c.disconnected} for c in clients]))
    finally:
        async def close(c: _Client) -> None:
            if c.sio is not None and c.sio.connected:
                try:
                    await asyncio.wait_for(c.sio.disconnect(), 5)
                except Exception:
                    pass

        await asyncio.gather(*(close(c) for c in clients))
        await http.close()


class Pool:
    """One client process and its pipe."""

    def __init__(self, ctx: Any, targets: list[tuple[str, str]], batch: int) -> None:
        self.conn, child = ctx.Pipe()
        self.size = len(targets)
        self.proc = ctx.Process(target=_pool_main, args=(child, targets, batch), daemon=True)
        self.proc.start()
        child.close()
        self.progress = 0
        self.ready: int | None = None

    async def recv(self, timeout: float) -> Any:
        """The next message, or None after ``timeout`` seconds (EOFError: the process died)."""
        if not await asyncio.to_thread(self.conn.poll, timeout):
            return None
        return self.conn.recv()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(3)


# --------------------------------------------------------------------- figures
def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """`report.ms_percentiles` (seconds in, ms out, 2 decimals) plus ``p99``."""
    out = ms_percentiles(values, digits=2)
    if values:
        q = statistics.quantiles(sorted(values), n=100, method="inclusive") if len(values) > 1 else values * 99
        out = {**{k: out[k] for k in ("n", "p50", "p95")}, "p99": round(q[98] * 1000, 2), "max": out["max"]}
    else:
        out = {**out, "p99": None}
    return out


def figures(results: list[dict[str, Any]], sent: dict[int, float], rate: float) -> dict[str, Any]:
    """Delivery and latency figures from the clients' raw records and the node's send times
    (``sent``: k → time.time()); ``rate``: states per second (for the per-second p50s)."""
    last_k = max(sent) if sent else 0
    by: dict[str, dict[str, Any]] = {}
    all_latency: list[float] = []
    per_second: dict[int, list[float]] = {}
    first_send = min(sent.values()) if sent else 0.0
    last_receive = first_send
    for label in LABELS:
        mine = [c for c in results if c["label"] == label and c["error"] is None]
        latency: list[float] = []
        emit_to_receive: list[float] = []
        received = duplicates = out_of_order = unknown = 0
        for client in mine:
            seen: set[int] = set()
            highest = 0
            for k, t, ts in client["records"]:
                if k not in sent:
                    unknown += 1  # not a state this run sent (e.g. a node_lost reset)
                    continue
                if k in seen:
                    duplicates += 1
                    continue
                seen.add(k)
                received += 1
                if k < highest:
                    out_of_order += 1
                highest = max(highest, k)
                latency.append(t - sent[k])
                per_second.setdefault(int((k - 1) // rate), []).append(t - sent[k])
                emit_to_receive.append(t - ts / 1000)
                last_receive = max(last_receive, t)
        expected = len(mine) * last_k
        all_latency += latency
        by[label] = {
            "clients": len(mine),
            "expected": expected,
            "received": received,
            "lost": expected - received,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "other_events": unknown,
            "clients_missing_any": sum(1 for c in mine if len({r[0] for r in c["records"] if r[0] in sent}) < last_k),
            "disconnected": sum(1 for c in mine if c["disconnected"]),
            "latency_ms": percentiles(latency),
            "emit_to_receive_ms": percentiles(emit_to_receive),
        }
    # ts is the same for every delivery of a k (one emit): node → emit per event.
    ts_by_k: dict[int, int] = {}
    for client in results:
        for k, _, ts in client["records"]:
            if k in sent:
                ts_by_k.setdefault(k, ts)
    expected = sum(b["expected"] for b in by.values())
    received = sum(b["received"] for b in by.values())
    span = last_receive - first_send
    return {
        "events_sent": last_k,
        "deliveries": {
            "expected": expected, "received": received, "lost": expected - received,
            "duplicates": sum(b["duplicates"] for b in by.values()),
            "out_of_order": sum(b["out_of_order"] for b in by.values()),
            "per_s": round(received / span, 1) if span > 0 else None,
            "span_s": round(span, 3),
        },
        "latency_ms": percentiles(all_latency),
        "node_to_emit_ms": percentiles([ts / 1000 - sent[k] for k, ts in ts_by_k.items()]),
        # Flat: the instances keep up; rising: a backlog builds (the machine or a server saturated).
        "latency_p50_by_second_ms": [round(statistics.median(per_second[s]) * 1000, 1) for s in sorted(per_second)],
        "by_instance": by,
    }


# ------------------------------------------------------------------------ run
async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark (module docstring); returns the report also written to ``args.out``."""
    if args.clients < 2 or args.procs < 1 or args.rate <= 0 or args.seconds <= 0:
        raise SystemExit("--clients must be >= 2, --procs >= 1, --rate and --seconds > 0")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    secret = "sk_bench_node_" + secrets.token_urlsafe(18)
    ctx = multiprocessing.get_context("spawn")
    pools: list[Pool] = []
    servers: list[ServeProcess] = []
    node: FakeNode | None = None
    with tempfile.TemporaryDirectory(prefix="relaycast-sio-fanout-") as workdir:
        redis = RedisProcess(Path(workdir))
        try:
            await redis.start()
            servers = [ServeProcess(label, redis.url, secret, out / f"serve_{label}.log", room=ROOM)
                       for label in LABELS]
            for server in servers:
                await server.start()
            _log(f"redis {redis.url}; A {servers[0].url}; B {servers[1].url}")

            node = FakeNode(servers[0].url, secret)
            await node.connect()

            # Client i goes to instance i % 2; process p holds clients p, p + procs, ...
            targets = [(LABELS[i % 2], servers[i % 2].url) for i in range(args.clients)]
            procs = min(args.procs, args.clients)
            t_connect = time.monotonic()
            pools = [Pool(ctx, targets[p::procs], args.batch) for p in range(procs)]
            await _wait_ready(pools, args.clients, timeout=60 + args.clients / 10)
            connect_s = time.monotonic() - t_connect
            rss = {s.label: procstat.rss_bytes(s.proc.pid) for s in servers if s.proc is not None}
            await asyncio.sleep(args.settle)

            pids = {"A": servers[0].proc.pid, "B": servers[1].proc.pid, "redis": redis.proc.pid}  # type: ignore[union-attr]
            cpu0 = {k: procstat.cpu_seconds(v) for k, v in pids.items()}
            pool_cpu0 = sum(procstat.cpu_seconds(p.proc.pid) for p in pools if p.proc.pid)
            t0 = time.monotonic()
            _log(f"sending {round(args.rate * args.seconds)} room states at {args.rate:g}/s")
            await node.send_states(args.rate, args.seconds)
            last_k = max(node.sent)
            for pool in pools:
                pool.conn.send(("stop", last_k, args.grace))
            results: list[dict[str, Any]] = []
            for pool in pools:
                message = await pool.recv(args.grace + 60)
                if message is None or message[0] != "result":
                    raise RuntimeError("a client process did not report")
                results += message[1]
            window = time.monotonic() - t0
            cpu_s = {k: procstat.cpu_seconds(v) - cpu0[k] for k, v in pids.items()}
            cpu_s["clients"] = sum(procstat.cpu_seconds(p.proc.pid) for p in pools if p.proc.pid) - pool_cpu0
        finally:
            if node is not None:
                try:
                    await node.close()
                except Exception:
                    pass
            for pool in pools:
                pool.conn.close()  # a process still waiting for "stop" gets EOFError and exits
                await asyncio.to_thread(pool.proc.join, 10)
                pool.kill()
            for server in servers:
                await server.stop()
            await redis.stop()

    errors = [c["error"] for c in results if c["error"]]
    report: dict[str, Any] = {
        "config": {"clients": args.clients, "procs": procs, "rate_per_s": args.rate, "seconds": args.seconds,
                   "batch": args.batch, "transport": "websocket", "instances": 2},
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
        "connected": {label: sum(1 for c in results if c["label"] == label and c["error"] is None)
                      for label in LABELS},
        "connect_failed": len(errors),
        "connect_errors": sorted(set(errors))[:5],
        "connect_s": round(connect_s, 2),
        "server_rss_mb": {k: round(v / 2**20, 1) for k, v in rss.items()},
        **figures(results, node.sent if node else {}, args.rate),
        "window_s": round(window, 2),
        "cpu_pct": {k: round(100 * v / window, 1) for k, v in cpu_s.items()},
    }
    report["server_cpu_us_per_delivery"] = {
        label: round(1e6 * cpu_s[label] / received, 1) if (received := report["by_instance"][label]["received"])
        else None for label in LABELS}
    text = json.dumps(report, indent=2)
    print(text)
    (out / "sio_fanout.json").write_text(text + "\n")
    _log(f"wrote {out / 'sio_fanout.json'}")
    return report


async def _wait_ready(pools: list[Pool], total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    shown = 0.0
    while any(p.ready is None for p in pools):
        if time.monotonic() > deadline:
            raise RuntimeError(f"clients did not connect within {timeout:.0f} s")
        for pool in pools:
            if pool.ready is not None:
                continue
            try:
                message = await pool.recv(0.05)
            except EOFError:
                raise RuntimeError("a client process died while connecting") from None
            if message is None:
                continue
            if message[0] == "progress":
                pool.progress = message[1]
            elif message[0] == "ready":
                pool.ready = message[1]
        if time.monotonic() - shown > 1.0 or all(p.ready is not None for p in pools):
            shown = time.monotonic()
            _log(f"connected {sum(p.progress for p in pools)}/{total}")
    joined = sum(p.ready or 0 for p in pools)
    _log(f"joined {joined}/{total}")


def _log(text: str) -> None:
    print(f"sio-fanout: {text}", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=1000, help="Socket.IO clients, half per instance (default 1000)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--rate", type=float, default=20.0, help="room_state events per second (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="send window (default 10)")
    parser.add_argument("--batch", type=int, default=50, help="connects in flight per client process (default 50)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between the joins and sending (default 1)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="after sending, wait at most this long for the last deliveries (default 10)")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/sio-fanout"), help="results folder")


def main(args: argparse.Namespace) -> int:
    asyncio.run(run(args))
    return 0
