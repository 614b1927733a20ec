"""``python -m loadtest.beacon_bench``: QoE beacon ingest, ``POST /api/beacons``, at a steady rate.

Starts a real ``relaycast serve`` on 127.0.0.1 (SQLite in a fresh data directory, or the
PostgreSQL database of ``--database-url``), adds ``--channels`` channels each with a live
stream, then plays ``--pages`` watch pages: each page sends one request every
``--period`` seconds carrying ``--batch`` beacons (default 5: a page that takes a
heartbeat every 2 s and sends its queue every 10 s; ``web/static/js/qoe.js`` today sends
one heartbeat every 10 s with the events queued since, 1–3 a request — ``--batch 1``
measures that cadence), heartbeats with stall and switch totals, open loop — request *i* is due at ``start + i / rate``
and its latency is counted from that due time, so a stalled server cannot hide its queue.
The pages come from ``--addresses`` loopback addresses (127.0.0.2, 127.0.0.3, …), as
real viewers come from many, so the per-address limit applies as shipped.

Beacons/s = pages × batch / period.  After the run the stored rows are counted (every
accepted beacon must be in ``qoe_beacons``) and ``relaycast_qoe_beacons_dropped_total`` read.
Prints a Markdown section and writes it to ``--md`` (default ``/tmp/bench-beacons.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, insert, select

from community.database import Database
from community.models import Channel, QoeBeacon, Stream, User, new_id

from .cluster_procs import REPO, RelaycastProcess, free_port, listening
from .procstat import cpu_seconds, machine_cpu_seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.beacon_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pages", type=int, default=10_000, help="watch pages (10000)")
    parser.add_argument("--batch", type=int, default=5, help="beacons per request (5)")
    parser.add_argument(
        "--period", type=float, default=10.0, help="s between a page's requests (10)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration, s (20)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured warm-up at the same rate, s (3)"
    )
    parser.add_argument(
        "--channels", type=int, default=20, help="live channels the pages watch (20)"
    )
    parser.add_argument(
        "--addresses", type=int, default=200, help="client loopback addresses (200)"
    )
    parser.add_argument(
        "--connections", type=int, default=2, help="HTTP connections per address (2)"
    )
    parser.add_argument(
        "--database-url", default="", help="an empty PostgreSQL database; default SQLite"
    )
    parser.add_argument(
        "--md", type=Path, default=Path("/tmp/bench-beacons.md"), help="Markdown output"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=6.0,
        help="s to wait after start-up before seeding: past the recovery of streams "
        "left live, which would end the synthetic ones (6)",
    )
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


async def seed(url: str, channels: int) -> list[str]:
    """``channels`` users with a channel and a live stream each.  :returns: channel names."""
    db = await Database.open(url)
    try:
        now = datetime.now(UTC)
        names = [f"bench{i:03d}" for i in range(channels)]
        users = [
            {
                "id": new_id(),
                "username": n,
                "display_name": n,
                "email": None,
                "password_hash": "!",
                "role": "viewer",
                "bio": "",
                "created_at": now,
                "suspended_at": None,
                "suspended_reason": "",
            }
            for n in names
        ]
        rows = [
            {
                "id": new_id(),
                "name": n,
                "owner_id": u["id"],
                "title": "",
                "category": None,
                "description": "",
                "language": "en",
                "tags": [],
                "private": False,
                "created_at": now,
            }
            for n, u in zip(names, users, strict=True)
        ]
        streams = [
            {
                "id": new_id(),
                "channel_id": c["id"],
                "title": "bench",
                "category": None,
                "tags": [],
                "language": "en",
                "status": "live",
                "created_at": now,
                "started_at": now,
                "ended_at": None,
                "ended_reason": "",
                "viewers": 0,
                "peak_viewers": 0,
                "key_id": None,
                "thumbnail_at": None,
                "recording": None,
            }
            for c in rows
        ]
        async with db.transaction() as session:
            await session.execute(insert(User), users)
            await session.execute(insert(Channel), rows)
            await session.execute(insert(Stream), streams)
        return names
    finally:
        await db.close()


async def stored_beacons(url: str) -> int:
    db = await Database.open(url, migrate=False)
    try:
        async with db.session() as session:
            return int(
                (await session.execute(select(func.count()).select_from(QoeBeacon))).scalar_one()
            )
    finally:
        await db.close()


def page_bodies(pages: int, batch: int, channels: list[str], rng: random.Random) -> list[bytes]:
    """One request body per page (each page's session, channel and tier fixed), serialized
    once: the load generator spends its CPU on sending, not on JSON."""
    bodies = []
    for number in range(pages):
        session = f"bench-{number:06d}-{rng.getrandbits(32):08x}"
        channel = channels[number % len(channels)]
        tier = "llhls" if rng.random() < 0.8 else "webrtc"
        base = 2500.0 if tier == "llhls" else 250.0
        beacons: list[dict[str, Any]] = []
        stalls, stall_ms = rng.choice((0, 0, 0, 1, 2)), 0.0
        stall_ms = stalls * rng.uniform(300, 2000)
        for index in range(batch):
            event = "stall" if stalls and index == batch - 1 else "heartbeat"
            beacons.append(
                {
                    "session": session,
                    "channel": channel,
                    "tier": tier,
                    "event": event,
                    "latency_ms": round(base * rng.uniform(0.8, 1.4), 1),
                    "stalls": stalls,
                    "stall_ms": round(stall_ms, 1),
                    "switches": rng.choice((0, 0, 1)),
                    "height": 720,
                }
            )
        bodies.append(json.dumps({"beacons": beacons}).encode())
    return bodies


class Connection:
    """One keep-alive HTTP/1.1 connection from a given loopback address: a request is
    written as prepared bytes and its answer read by ``Content-Length`` — a few tens of µs
    of client CPU, so the 2-core machine's load generator does not become the bottleneck
    (aiohttp's client costs ~10 times more per request)."""

    def __init__(self, host: str, port: int, local: str) -> None:
        self.host, self.port, self.local = host, port, local
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(
                        self.host, self.port, local_addr=(self.local, 0)
                    )
                assert self.reader is not None
                self.writer.write(data)
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await self.reader.readexactly(length)
                if b"connection: close" in head.lower():
                    self.close()
                return status, body
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self.close()  # the server closed an idle keep-alive connection: open another once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def prepared(host: str, port: int, body: bytes) -> bytes:
    return (
        f"POST /api/beacons HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def drive(
    base: str,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    warmup: float,
    addresses: int,
    connections: int,
) -> dict[str, Any]:
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    requests = [prepared(host, int(port), body) for body in bodies]
    latencies: list[float] = []
    slow_by_second: dict[int, int] = {}
    statuses: dict[str, int] = {}
    accepted = 0
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    pool = [
        Connection(host, int(port), f"127.0.0.{2 + i % addresses}")
        for i in range(addresses * connections)
    ]
    for connection in pool:
        idle.put_nowait(connection)

    async def one(index: int, due: float, measured: bool) -> None:
        nonlocal accepted
        connection = await idle.get()
        try:
            status_code, body = await connection.request(requests[index % len(requests)])
            status = str(status_code)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            status, body = type(exc).__name__, b""
        finally:
            idle.put_nowait(connection)
        elapsed = time.monotonic() - due
        if status == "202":
            accepted += json.loads(body)["accepted"]
        if measured:
            statuses[status] = statuses.get(status, 0) + 1
            if status == "202":
                latencies.append(elapsed)
            if elapsed > 0.05:
                second = int(due - measured_from)
                slow_by_second[second] = slow_by_second.get(second, 0) + 1

    # The load generator's own garbage collections would stall it for tens of ms, and an
    # open-loop measurement counts such a stall against the server: its requests and tasks
    # are freed by reference counting, so the collector is off while it runs.
    gc.collect()
    gc.disable()
    try:
        tasks: set[asyncio.Task[None]] = set()
        total = int((warmup + seconds) * rate)
        start = time.monotonic() + 0.2
        measured_from = start + warmup
        for index in range(total):
            due = start + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(index, due, due >= measured_from))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_for = time.monotonic() - start
        if tasks:
            await asyncio.wait(tasks, timeout=35)
    finally:
        gc.enable()
        for connection in pool:
            connection.close()
    values = sorted(latencies)
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [0.0] * 99
    return {
        "requests": total,
        "accepted_beacons": accepted,
        "statuses": statuses,
        "sent_for_s": round(sent_for, 2),
        "measured": len(values),
        "p50_ms": round(q[49] * 1000, 1),
        "p90_ms": round(q[89] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "max_ms": round(values[-1] * 1000, 1) if values else None,
        "client_cpu_s": round(time.process_time(), 1),
        "over_50ms_by_second": dict(sorted(slow_by_second.items())),
    }


async def dropped(base: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("relaycast_qoe_beacons_dropped_total"):
            return float(line.split()[-1])
    return 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    rate = args.pages / args.period
    with tempfile.TemporaryDirectory(prefix="relaycast-beacons-") as workdir:
        data_dir = Path(workdir) / "data"
        url = args.database_url or f"sqlite+aiosqlite:///{data_dir / 'relaycast.db'}"
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=path,
            RELAYCAST_DATA_DIR=str(data_dir),
            RELAYCAST_DATABASE_URL=args.database_url,
        )
        server = RelaycastProcess("relaycast serve", Path(workdir) / "serve.log")
        line = await server.launch(
            [
                "--log-level",
                "warning",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--workers",
                "1",
                "--data-dir",
                str(data_dir),
            ],
            env,
            listening,
            timeout=60,
        )
        base = line.split()[-1]
        try:
            await asyncio.sleep(args.settle)  # past the start-up recovery of streams left live
            channels = await seed(url, args.channels)
            bodies = page_bodies(args.pages, args.batch, channels, rng)
            print(
                f"{args.pages} pages × {args.batch} beacons every {args.period:g} s = {rate:g} requests/s, "
                f"{rate * args.batch:g} beacons/s for {args.seconds:g} s (+{args.warmup:g} s warm-up)",
                flush=True,
            )
            server_cpu, machine_cpu, began = (
                cpu_seconds(server.pid),
                machine_cpu_seconds(),
                time.monotonic(),
            )
            load = await drive(
                base, bodies, rate, args.seconds, args.warmup, args.addresses, args.connections
            )
            wall = time.monotonic() - began
            server_cores = (cpu_seconds(server.pid) - server_cpu) / wall
            busy_cores = (machine_cpu_seconds() - machine_cpu) / wall
            await asyncio.sleep(1.5)  # the writer flushes every 0.5 s
            rows = await stored_beacons(url)
            lost = await dropped(base)
        finally:
            await server.stop()
            log = (Path(workdir) / "serve.log").read_text(errors="replace").splitlines()
            errors = [line for line in log if "ERROR" in line or "Error" in line][:5]
            slow_callbacks = [
                line[:300] for line in log if "Executing" in line and " took " in line
            ][:20]
    measured_s = args.seconds
    return {
        "pages": args.pages,
        "batch": args.batch,
        "period_s": args.period,
        "request_rate": rate,
        "beacon_rate": rate * args.batch,
        "seconds": measured_s,
        "addresses": args.addresses,
        "database": "postgresql" if args.database_url else "sqlite",
        **load,
        "achieved_beacons_per_s": round(
            load["accepted_beacons"] / max(load["sent_for_s"], 1e-9), 1
        ),
        "stored_rows": rows,
        "dropped": lost,
        "server_errors": errors,
        "slow_callbacks": slow_callbacks,
        "server_cpu_cores": round(server_cores, 2),
        "machine_busy_cores": round(busy_cores, 2),
        "server_cpu_ms_per_request": round(server_cores * 1000 / rate, 3),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def markdown(result: dict[str, Any], command: str) -> str:
    r = result
    met = "met" if r["p99_ms"] is not None and r["p99_ms"] <= 50 else "MISSED"
    return "\n".join(
        [
            "## QoE beacon ingest (`POST /api/beacons`)",
            "",
            f"Command: `{command}` — a real `relaycast serve` (`--workers 1`, {r['database']}) on 127.0.0.1; "
            f"{r['cpus']} CPUs shared with the load generator, load average {r['load_average']:.1f} at the end; "
            f"{r['when']}.",
            "",
            f"Load: {r['pages']} watch pages from {r['addresses']} loopback addresses, each sending "
            f"**{r['batch']} beacons per request** every {r['period_s']:g} s: "
            f"**{r['request_rate']:g} requests/s = "
            f"{r['beacon_rate']:g} beacons/s**, open loop, {r['seconds']:g} s measured after a warm-up.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| requests measured (202) | {r['measured']} (statuses: {r['statuses']}) |",
            f"| request latency p50 / p90 / p99 / max | {r['p50_ms']} / {r['p90_ms']} / **{r['p99_ms']}** / "
            f"{r['max_ms']} ms (target p99 ≤ 50 ms: {met}) |",
            f"| achieved rate (accepted beacons / sending time) | **{r['achieved_beacons_per_s']} beacons/s** |",
            f"| beacons accepted / rows stored / dropped | {r['accepted_beacons']} / {r['stored_rows']} / "
            f"{r['dropped']:g} |",
            f"| server CPU (serve process) | {r['server_cpu_cores']} cores = {r['server_cpu_ms_per_request']} ms "
            f"per request; machine busy {r['machine_busy_cores']} of {r['cpus']} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    command = "python -m loadtest.beacon_bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = markdown(result, command.strip())
    print(json.dumps(result, indent=1))
    print(text)
    args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
