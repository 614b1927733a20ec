"""``python -m loadtest directory-bench``: directory and search latency under a steady request rate.

Starts a real ``relaycast serve`` (SQLite in a fresh data directory, or the PostgreSQL
database of ``--database-url``), seeds ``--channels`` users with their channels, ``--live``
live streams and ``--ended`` ended ones (titles, categories, tags and languages drawn from a
fixed vocabulary), then sends ``GET /api/streams`` (directory: sorts, categories, tags, the
next pages) and ``GET /api/streams/search`` (one or two words, some prefixes) open-loop at
``--rate`` requests/s for ``--seconds`` and reports p50/p90/p99/max latency per endpoint.

Open loop: request *i* is due at ``start + i / rate`` whatever the earlier answers did, and
its latency is measured from that due time (so a stalled server cannot hide its queue:
no coordinated omission).  The rows are written after the service has started because the
synthetic live streams have no media: the service's start-up recovery (after 5 s) would
otherwise end them as left by a crashed process.

The database must be empty (PostgreSQL: a fresh database, ``VACUUM ANALYZE``d after the
seeding as autovacuum would do after a bulk load).  Results: a JSON file and a
Markdown table in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import insert, text

from community.database import Database
from community.models import Channel, Stream, StreamTag, User, new_id

from .cluster_procs import ONE_ADDRESS_LOAD, REPO, RelaycastProcess, free_port, listening
from .procstat import children, cpu_seconds, machine_cpu_seconds

WORDS = ("speedrun chill coding rust python painting music guitar piano cooking baking chess retro "
         "indie strategy horror puzzle racing football tennis science space physics history travel "
         "hiking camping garden pottery knitting drawing anime esports shooter sandbox cozy late night "
         "morning marathon tutorial beginner ranked casual challenge build review news talk podcast").split()
CATEGORIES = ("just-chatting", "gaming", "music", "art", "science-technology", "software-development",
              "sports", "education", "food-drink", "irl", "talk-shows", "travel-outdoors")
LANGUAGES = ("en", "en", "en", "de", "fr", "es", "ja", "pt")
SEED_BATCH = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default="",
                        help="an empty PostgreSQL database (postgresql+asyncpg://...); default SQLite")
    parser.add_argument("--channels", type=int, default=10_000, help="users, each with a channel (10000)")
    parser.add_argument("--live", type=int, default=1_000, help="live streams (1000)")
    parser.add_argument("--ended", type=int, default=10_000, help="ended streams (past broadcasts, 10000)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s, half directory, half search (200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration, s (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured warm-up at the same rate, s (3)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results"), help="results folder")
    parser.add_argument("--label", default="", help="label for the results (default: the database kind)")


# ---------------------------------------------------------------------- seeding
async def seed(url: str, channels: int, live: int, ended: int, rng: random.Random) -> float:
    """Write the rows (migrating first).  :returns: seconds it took."""
    began = time.monotonic()
    db = await Database.open(url)
    try:
        now = datetime.now(UTC)
        channel_ids: list[str] = []
        for start in range(0, channels, SEED_BATCH):
            users, rows = [], []
            for number in range(start, min(channels, start + SEED_BATCH)):
                user_id, channel_id = new_id(), new_id()
                name = f"user{number:05d}"
                users.append({"id": user_id, "username": name, "display_name": f"{rng.choice(WORDS).title()} "
                              f"{rng.choice(WORDS).title()} {number}", "email": None, "password_hash": "!",
                              "role": "viewer", "bio": "", "created_at": now, "suspended_at": None,
                              "suspended_reason": ""})
                rows.append({"id": channel_id, "name": name, "owner_id": user_id, "title": "", "category": None,
                             "description": "", "language": "en", "tags": [], "private": False, "created_at": now})
                channel_ids.append(channel_id)
            async with db.transaction() as session:
                await session.execute(insert(User), users)
                await session.execute(insert(Channel), rows)
        order = rng.sample(channel_ids, len(channel_ids))
        live_ids = order[:live]
        streams: list[dict[str, Any]] = []
        for index in range(live + ended):
            is_live = index < live
            channel_id = live_ids[index] if is_live else rng.choice(channel_ids)
            started = now - timedelta(seconds=rng.uniform(60, 3 * 3600 if is_live else 30 * 86400))
            title = " ".join(rng.sample(WORDS, rng.randint(3, 6))).capitalize()
            viewers = int(rng.paretovariate(1.2)) - 1 if is_live else 0
            streams.append({
                "id": new_id(), "channel_id": channel_id, "title": title, "category": rng.choice(CATEGORIES),
                "tags": rng.sample(WORDS, rng.randint(0, 4)), "language": rng.choice(LANGUAGES),
                "status": "live" if is_live else "ended", "created_at": started, "started_at": started,
                "ended_at": None if is_live else started + timedelta(seconds=rng.uniform(600, 4 * 3600)),
                "ended_reason": "" if is_live else "publisher_left", "viewers": min(viewers, 50_000),
                "peak_viewers": min(viewers, 50_000), "key_id": None, "thumbnail_at": None, "recording": None})
        for start in range(0, len(streams), SEED_BATCH):
            batch = streams[start:start + SEED_BATCH]
            async with db.transaction() as session:
                await session.execute(insert(Stream), batch)
                tags = [{"stream_id": s["id"], "tag": t} for s in batch for t in s["tags"]]
                if tags:
                    await session.execute(insert(StreamTag), tags)
        if db.dialect == "postgresql":  # what autovacuum does after a bulk load, done before measuring
            async with db.engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("VACUUM ANALYZE"))
    finally:
        await db.close()
    return time.monotonic() - began


async def postmaster_pid(url: str) -> int | None:
    """The local PostgreSQL server's main process (the parent of a backend), else None."""
    if not url.startswith("postgresql"):
        return None
    db = await Database.open(url, migrate=False)
    try:
        async with db.engine.connect() as connection:  # read while the backend still exists
            backend = int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            stat = Path(f"/proc/{backend}/stat").read_text()
    except OSError:
        return None
    finally:
        await db.close()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def process_cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except (OSError, ValueError):
            continue
    return out


# ---------------------------------------------------------------------- load
@dataclass
class Endpoint:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    due_s: list[float] = field(default_factory=list)
    """When each measured request was due, s after the first one (same order as latencies)."""
    errors: dict[str, int] = field(default_factory=dict)
    results: list[int] = field(default_factory=list)


def directory_request(rng: random.Random, cursors: list[str]) -> tuple[str, dict[str, str]]:
    params: dict[str, str] = {"sort": rng.choice(("viewers", "viewers", "recent"))}
    roll = rng.random()
    if roll < 0.3:
        params["category"] = rng.choice(CATEGORIES)
    elif roll < 0.4:
        params["tag"] = rng.choice(WORDS)
    elif roll < 0.5 and cursors:
        params = {"cursor": rng.choice(cursors), "sort": "viewers"}
    return "/api/streams", params


def search_request(rng: random.Random) -> tuple[str, dict[str, str]]:
    words = rng.sample(WORDS, rng.choice((1, 1, 2)))
    if rng.random() < 0.3:
        words[-1] = words[-1][:3]  # typing: a prefix
    params = {"q": " ".join(words)}
    if rng.random() < 0.3:
        params["live"] = "true"
    return "/api/streams/search", params


async def drive(base: str, rate: float, seconds: float, warmup: float, rng: random.Random) -> dict[str, Endpoint]:
    endpoints = {"directory": Endpoint("directory"), "search": Endpoint("search")}
    cursors: list[str] = []
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        async with http.get(f"{base}/api/streams", params={"sort": "viewers"}) as response:
            first = await response.json()
            if first.get("next_cursor"):
                cursors.append(first["next_cursor"])

        async def one(kind: str, path: str, params: dict[str, str], due: float, measured: bool) -> None:
            endpoint = endpoints[kind]
            try:
                async with http.get(f"{base}{path}", params=params) as response:
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                if measured:
                    endpoint.errors[type(exc).__name__] = endpoint.errors.get(type(exc).__name__, 0) + 1
                return
            elapsed = time.monotonic() - due
            if not measured:
                return
            if status != 200:
                endpoint.errors[str(status)] = endpoint.errors.get(str(status), 0) + 1
                return
            endpoint.latencies_s.append(elapsed)
            endpoint.due_s.append(due - start)
            data = json.loads(body)
            endpoint.results.append(len(data["streams"]))
            if (kind == "directory" and params.get("sort") == "viewers" and data.get("next_cursor")
                    and len(cursors) < 200):
                cursors.append(data["next_cursor"])

        tasks: set[asyncio.Task[None]] = set()
        total = int((warmup + seconds) * rate)
        start = time.monotonic() + 0.1
        for index in range(total):
            due = start + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = "directory" if index % 2 == 0 else "search"
            path, params = directory_request(rng, cursors) if kind == "directory" else search_request(rng)
            task = asyncio.create_task(one(kind, path, params, due, index / rate >= warmup))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=35)
    return endpoints


def summary(endpoint: Endpoint) -> dict[str, Any]:
    values = sorted(endpoint.latencies_s)
    if len(values) < 2:
        return {"n": len(values), "errors": endpoint.errors}
    q = statistics.quantiles(values, n=100, method="inclusive")
    slow_seconds: dict[int, int] = {}
    for due, latency in zip(endpoint.due_s, endpoint.latencies_s, strict=True):
        if latency > 0.05:
            slow_seconds[int(due)] = slow_seconds.get(int(due), 0) + 1
    return {"n": len(values), "p50_ms": round(q[49] * 1000, 1), "p90_ms": round(q[89] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1), "max_ms": round(values[-1] * 1000, 1),
            "mean_results": round(statistics.fmean(endpoint.results), 1) if endpoint.results else 0,
            "errors": endpoint.errors, "slow_by_second": dict(sorted(slow_seconds.items()))}


# ---------------------------------------------------------------------- main
async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    kind = "postgresql" if args.database_url.startswith("postgresql") else "sqlite"
    label = args.label or kind
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="relaycast-directory-") as workdir:
        data_dir = Path(workdir) / "data"
        url = args.database_url or f"sqlite+aiosqlite:///{data_dir / 'relaycast.db'}"
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, RELAYCAST_DATA_DIR=str(data_dir),
                   RELAYCAST_DATABASE_URL=args.database_url, **ONE_ADDRESS_LOAD)
        server = RelaycastProcess("relaycast serve", Path(workdir) / "serve.log")
        line = await server.launch(["--log-level", "warning", "serve", "--host", "127.0.0.1", "--port",
                                    str(free_port()), "--workers", "1", "--data-dir", str(data_dir)],
                                   env, listening, timeout=60)
        base = line.split()[-1]
        try:
            await asyncio.sleep(6.0)  # past the start-up recovery of streams left live (5 s)
            seeded_s = await seed(url, args.channels, args.live, args.ended, rng)
            print(f"seeded {args.channels} channels, {args.live} live and {args.ended} ended streams "
                  f"in {seeded_s:.1f} s; driving {args.rate:g} requests/s for {args.seconds:g} s", flush=True)
            postmaster = await postmaster_pid(url)
            database_pids = ([postmaster, *children(postmaster)] if postmaster else [])
            database_cpu = process_cpu(database_pids)
            server_cpu, machine_cpu, began = cpu_seconds(server.pid), machine_cpu_seconds(), time.monotonic()
            endpoints = await drive(base, args.rate, args.seconds, args.warmup, rng)
            wall = time.monotonic() - began
            server_cores = (cpu_seconds(server.pid) - server_cpu) / wall
            busy_cores = (machine_cpu_seconds() - machine_cpu) / wall
            after = process_cpu([postmaster, *children(postmaster)] if postmaster else [])
            database_cores = sum(v - database_cpu.get(pid, 0.0) for pid, v in after.items()) / wall
        finally:
            await server.stop()
    result = {"label": label, "database": kind, "channels": args.channels, "live": args.live,
              "ended": args.ended, "rate": args.rate, "seconds": args.seconds,
              "endpoints": {name: summary(e) for name, e in endpoints.items()}, "seed_s": round(seeded_s, 1),
              "server_cpu_cores": round(server_cores, 2), "machine_busy_cores": round(busy_cores, 2),
              "database_cpu_cores": round(database_cores, 2),
              "cpu_ms_per_request": round((server_cores + database_cores) * 1000 / args.rate, 2),
              "when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count()}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"directory-{label}-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| database | endpoint | requests | p50 ms | p90 ms | p99 ms | max ms | mean results | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["endpoints"].items():
        lines.append(f"| {result['label']} | {name} | {s['n']} | {s.get('p50_ms')} | {s.get('p90_ms')} | "
                     f"{s.get('p99_ms')} | {s.get('max_ms')} | {s.get('mean_results')} | {s['errors'] or 0} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    print(table(result))
    print(f"server CPU {result['server_cpu_cores']} cores, PostgreSQL server {result['database_cpu_cores']} "
          f"cores: {result['cpu_ms_per_request']} ms CPU per request; whole machine busy "
          f"{result['machine_busy_cores']} of {result['cpus']} cores (other processes included)")
    for name, s in result["endpoints"].items():
        print(f"{name}: requests over 50 ms by second of the run: {s.get('slow_by_second')}")
    worst = max((s.get("p99_ms") or float("inf")) for s in result["endpoints"].values())
    print(f"p99 target 50 ms: {'met' if worst <= 50 else 'MISSED'} (worst p99 {worst} ms)")
    return 0
