"""What a login costs: argon2id per hash, and ``POST /api/users/login`` end to end.

``python -m loadtest.login_bench --logins 30 --concurrency 8 [--compare]``

1. ``argon2``: :data:`community.passwords.HASHER` (the product's parameters) verifying one
   hash, ``--logins`` times in this thread: wall ms and CPU ms (``time.thread_time``: the
   4 lanes run in libargon2's own threads, so process CPU is reported too).
2. ``sequential``: the platform app (:func:`community.app.install` on a fresh SQLite
   database in a temp directory) on 127.0.0.1; ``--logins`` logins one after another:
   p50/p99 ms.
3. ``concurrent``: ``--logins`` logins ``--concurrency`` at a time while a probe sends
   ``GET /api/users/{id}`` (no hashing) every 10 ms: logins/s, login p50/p99 and the
   probe's p50/p99 — the probe stays fast when hashing never blocks the event loop.

``--compare`` adds the same verify timing for OWASP's argon2id minimums (t=2 m=19 MiB
p=1; t=1 m=46 MiB p=1) and t=3 m=32 MiB p=1, for choosing parameters.

Login throttles are lifted for the run (one client address, one account).  Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from common.problems import problem_middleware
from common.ratelimit import TokenBuckets
from community.app import COMMUNITY, install
from community.config import CommunityConfig
from community.passwords import HASHER
from community.throttles import AccountThrottles

PASSWORD = "correct horse battery staple"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


ALTERNATIVES = ((2, 19456, 1), (1, 47104, 1), (3, 32768, 1))
"""(t, m KiB, p) compared by ``--compare``."""


def argon2_cost(n: int, hasher: PasswordHasher = HASHER) -> dict[str, Any]:
    stored = hasher.hash(PASSWORD)
    wall, cpu = [], []
    process0 = time.process_time()
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        hasher.verify(stored, PASSWORD)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {
        "parameters": (
            f"argon2id t={hasher.time_cost} m={hasher.memory_cost} KiB p={hasher.parallelism}"
        ),
        "verify_wall_ms_p50": _pct(wall, 0.5),
        "verify_wall_ms_max": round(max(wall), 1),
        "verify_cpu_ms_p50": _pct(cpu, 0.5),
        "cpu_ms_per_verify": round((time.process_time() - process0) * 1000 / n, 1),
    }


async def _login(client: TestClient) -> float:
    t0 = time.perf_counter()
    resp = await client.post("/api/users/login", json={"username": "bench", "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    await resp.read()
    return (time.perf_counter() - t0) * 1000


async def http_cost(n: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        app = web.Application(middlewares=[problem_middleware])
        install(app, CommunityConfig(data_dir=Path(tmp)))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            app[COMMUNITY].services["account_throttles"] = AccountThrottles(
                login_address=TokenBuckets(1e6, 10**6), login_account=TokenBuckets(1e6, 10**6)
            )
            resp = await client.post(
                "/api/users/register", json={"username": "bench", "password": PASSWORD}
            )
            user_id = (await resp.json())["user"]["id"]
            sequential = [await _login(client) for _ in range(n)]

            probes: list[float] = []
            done = asyncio.Event()

            async def probe() -> None:
                while not done.is_set():
                    t0 = time.perf_counter()
                    async with client.get(f"/api/users/{user_id}") as r:
                        await r.read()
                    probes.append((time.perf_counter() - t0) * 1000)
                    await asyncio.sleep(0.01)

            slots = asyncio.Semaphore(concurrency)

            async def one() -> float:
                async with slots:
                    return await _login(client)

            prober = asyncio.create_task(probe())
            t0 = time.perf_counter()
            concurrent = await asyncio.gather(*(one() for _ in range(n)))
            elapsed = time.perf_counter() - t0
            done.set()
            await prober
        finally:
            await client.close()
    return {
        "sequential": {
            "logins": n,
            "p50_ms": _pct(sequential, 0.5),
            "p99_ms": _pct(sequential, 0.99),
            "mean_ms": round(statistics.fmean(sequential), 1),
        },
        "concurrent": {
            "logins": n,
            "concurrency": concurrency,
            "logins_per_s": round(n / elapsed, 1),
            "p50_ms": _pct(list(concurrent), 0.5),
            "p99_ms": _pct(list(concurrent), 0.99),
            "probe_requests": len(probes),
            "probe_p50_ms": _pct(probes, 0.5),
            "probe_p99_ms": _pct(probes, 0.99),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--compare", action="store_true", help="also time other argon2id parameters"
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"argon2": argon2_cost(args.logins)}
    if args.compare:
        result["argon2_alternatives"] = [
            argon2_cost(args.logins, PasswordHasher(time_cost=t, memory_cost=m, parallelism=p))
            for t, m, p in ALTERNATIVES
        ]
    result.update(asyncio.run(http_cost(args.logins, args.concurrency)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
