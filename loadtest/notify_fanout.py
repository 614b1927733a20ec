"""Benchmark: the go-live notification fan-out of one channel with N followers.

``python3 -m loadtest.notify_fanout --followers 100000 [--database-url URL] [--socketio local|redis
--redis-url URL]`` writes N users following one channel into a fresh database (SQLite in a
temporary directory by default), then times :meth:`community.notifications.Notifier.fan_out`:
the batched SELECT/INSERT of N notifications and, with ``--socketio``, one ``notification``
emit per follower through a python-socketio server (``local``: the in-process manager;
``redis``: the signaling app's Redis manager, one PUBLISH per emit).  Prints one JSON line:
``{"followers", "database", "socketio", "fan_out_s", "per_follower_us", "statements"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web
from sqlalchemy import event, insert

from community.app import COMMUNITY, install
from community.config import CommunityConfig
from community.models import Channel, Follow, User, new_id, utcnow
from community.notifications import Notifier
from signaling.app_keys import SIO


async def _populate(app: web.Application, followers: int) -> None:
    db = app[COMMUNITY].db
    now = utcnow()
    async with db.transaction() as session:
        owner = User(username="bigchannel", password_hash="!")
        session.add(owner)
        await session.flush()
        channel = Channel(name="bigchannel", owner_id=owner.id)
        session.add(channel)
        await session.flush()
        channel_id = channel.id
    for start in range(0, followers, 10_000):
        ids = [new_id() for _ in range(min(10_000, followers - start))]
        async with db.transaction() as session:
            await session.execute(
                insert(User),
                [
                    {
                        "id": uid,
                        "username": f"f{start + i:07d}",
                        "display_name": "",
                        "password_hash": "!",
                        "role": "viewer",
                        "bio": "",
                        "created_at": now,
                        "suspended_reason": "",
                    }
                    for i, uid in enumerate(ids)
                ],
            )
            await session.execute(
                insert(Follow),
                [{"user_id": uid, "channel_id": channel_id, "created_at": now} for uid in ids],
            )


async def run(followers: int, database_url: str, sio_mode: str, redis_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="relaycast-fanout-") as tmp:
        app = web.Application()
        install(app, CommunityConfig(data_dir=Path(tmp), database_url=database_url))
        if sio_mode != "none":
            manager = None
            if sio_mode == "redis":
                from signaling.redis_state import SocketIORedisManager

                manager = SocketIORedisManager(redis_url)
            sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)
            sio.attach(app)
            app[SIO] = sio
        runner = web.AppRunner(app)
        await runner.setup()  # opens and migrates the database
        try:
            await _populate(app, followers)
            statements = 0

            def count(*_: Any) -> None:
                nonlocal statements
                statements += 1

            engine = app[COMMUNITY].db.engine.sync_engine
            event.listen(engine, "before_cursor_execute", count)
            started = time.perf_counter()
            written = await Notifier(app).fan_out(
                {"id": "s1", "channel": "bigchannel", "title": "bench"}
            )
            elapsed = time.perf_counter() - started
            assert written == followers, (written, followers)
            return {
                "followers": followers,
                "database": app[COMMUNITY].db.dialect,
                "socketio": sio_mode,
                "fan_out_s": round(elapsed, 3),
                "per_follower_us": round(elapsed / followers * 1e6, 1),
                "statements": statements,
            }
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=100_000)
    parser.add_argument(
        "--database-url", default="", help="default: SQLite in a temporary directory"
    )
    parser.add_argument("--socketio", choices=["none", "local", "redis"], default="none")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(
        json.dumps(
            asyncio.run(run(args.followers, args.database_url, args.socketio, args.redis_url))
        )
    )


if __name__ == "__main__":
    main()
