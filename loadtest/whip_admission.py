"""WHIP admission cost of the platform's publish check: ``python -m loadtest.whip_admission``.

Two signaling apps on 127.0.0.1, no SFU: one with a static room key
(:class:`signaling.static_keys.StaticKeys`, the baseline) and one with the platform
installed (``community``: SQLite in a temporary directory, or ``--database-url``) holding
``--channels`` channels with one stream key each.  Each request is ``POST /whip/{channel}``
with the channel's credential and a body that is not an SDP offer: the server runs the whole
admission (rate limit, room lookup, credential check) and answers 400 at the offer, before
any SFU work, so the difference between the apps is what the platform's check adds.

Measured, sequentially over one keep-alive connection, per request:

* ``static``: the baseline app, its one key;
* ``key cold``: a different channel and key per request (every lookup misses the cache:
  one indexed SELECT);
* ``key warm``: ``--warm-keys`` keys in turn (cache hits);
* ``jwt``: access tokens with a publish grant (signature and claims verified, no I/O).

Prints a Markdown table (p50/p99/max in ms) and the p99 added over the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from community.app import COMMUNITY
from community.app import install as install_platform
from community.config import CommunityConfig
from community.keys import create_key
from community.models import Channel, User
from community.tokens import tokens_of
from signaling.app import create_app
from signaling.app_keys import ROOMS
from signaling.config import SignalingConfig
from signaling.publish_auth import key_digest
from signaling.static_keys import StaticKeys

NOT_AN_OFFER = b"not an offer"


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def _timed(http: aiohttp.ClientSession, url: str, bearer: str) -> float:
    start = time.perf_counter()
    async with http.post(url, data=NOT_AN_OFFER, headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {bearer}"}) as resp:
        await resp.read()
        if resp.status != 400:
            raise RuntimeError(f"{url}: expected 400 (admitted, offer refused), got {resp.status}")
    return (time.perf_counter() - start) * 1000.0


def _row(name: str, samples: list[float]) -> tuple[str, float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return name, statistics.median(ordered), p99, ordered[-1]


async def run(channels: int, warm_keys: int, rounds: int, database_url: str = "") -> str:
    config = SignalingConfig.from_env({}, host="127.0.0.1", port=0, demo_room="",
                                      request_rate=1_000_000.0, request_burst=1_000_000)
    static = StaticKeys()
    static_key = static.create("demo")
    baseline = create_app(config, authority=static)
    with tempfile.TemporaryDirectory(prefix="whip-admission-") as data_dir:
        platform = create_app(config)
        install_platform(platform, CommunityConfig(data_dir=Path(data_dir), database_url=database_url))
        runners = []
        try:
            runner, base_url = await _serve(baseline)
            runners.append(runner)
            runner, platform_url = await _serve(platform)
            runners.append(runner)
            community = platform[COMMUNITY]
            keys: dict[str, str] = {}
            users: list[User] = []
            async with community.db.transaction() as session:
                for i in range(channels):
                    name = f"bench_{i:05d}"
                    user = User(username=name, password_hash="!")
                    session.add(user)
                    await session.flush()
                    channel = Channel(name=name, owner_id=user.id)
                    session.add(channel)
                    await session.flush()
                    _, keys[name] = await create_key(session, channel.id)
                    users.append(user)
            tokens = [(u.username, (await tokens_of(platform).issue_access(u))[0]) for u in users[:warm_keys]]
            names = list(keys)
            assert platform[ROOMS].authority is not baseline[ROOMS].authority
            results: dict[str, list[float]] = {"static": [], "key cold": [], "key warm": [], "jwt": []}
            static_url = f"{base_url}/whip/demo"
            async with aiohttp.ClientSession() as http:
                for _ in range(50):  # warm up connections and code paths
                    await _timed(http, static_url, static_key)
                    await _timed(http, f"{platform_url}/whip/{names[0]}", keys[names[0]])
                # Interleaved with the baseline, so both series see the same machine load.
                for name in names[1:]:  # each key once: cache misses
                    results["static"].append(await _timed(http, static_url, static_key))
                    results["key cold"].append(await _timed(http, f"{platform_url}/whip/{name}", keys[name]))
                for _ in range(rounds):
                    for i in range(warm_keys):
                        name = names[i]
                        results["static"].append(await _timed(http, static_url, static_key))
                        results["key warm"].append(await _timed(http, f"{platform_url}/whip/{name}", keys[name]))
                        channel, token = tokens[i]
                        results["jwt"].append(await _timed(http, f"{platform_url}/whip/{channel}", token))
            authority = platform[ROOMS].authority
            for name in names[:warm_keys]:  # the check alone, in process: a miss, then a hit
                forget = getattr(authority, "forget_key", None)
                if forget is not None:
                    forget(key_digest(keys[name]))
                start = time.perf_counter()
                await authority.authorize(name, keys[name])
                results.setdefault("authorize() miss, in process", []).append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                await authority.authorize(name, keys[name])
                results.setdefault("authorize() hit, in process", []).append((time.perf_counter() - start) * 1000)
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
    rows = [_row(name, samples) for name, samples in results.items()]
    base_p99 = rows[0][2]
    db = database_url.split("://", 1)[0] if database_url else "sqlite+aiosqlite"
    lines = [f"{channels} channels with one key each, database {db}; "
             f"{len(results['key warm'])} requests per warm series, {len(results['key cold'])} cold, "
             f"{len(results['static'])} static (interleaved with both).", "",
             "| series | p50 ms | p99 ms | max ms | p99 added over static, ms |",
             "|---|---:|---:|---:|---:|"]
    for name, p50, p99, worst in rows:
        added = "—" if name == "static" or "in process" in name else f"{p99 - base_p99:+.2f}"
        lines.append(f"| {name} | {p50:.2f} | {p99:.2f} | {worst:.2f} | {added} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.whip_admission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=2000, help="channels with a key (default 2000)")
    parser.add_argument("--warm-keys", type=int, default=100, help="keys used in turn when warm (default 100)")
    parser.add_argument("--rounds", type=int, default=20, help="passes over the warm keys (default 20)")
    parser.add_argument("--database-url", default="", help="a postgresql+asyncpg:// URL (default SQLite)")
    args = parser.parse_args(argv)
    if args.warm_keys > args.channels or args.channels < 2:
        parser.error("need --channels >= 2 and --warm-keys <= --channels")
    print(asyncio.run(run(args.channels, args.warm_keys, args.rounds, args.database_url)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
