"""``python -m loadtest.chat_store_bench``: chat message persistence throughput, messages/s.

Drives :class:`community.chat_store.ChatStore` the way the chat service does (its listener,
once per accepted message) on a real database: SQLite in a fresh temporary folder, or the
(empty, migrated on open) PostgreSQL database of ``--database-url``.  A channel with a live
stream per room is created first (``--rooms``, default 10; messages go round-robin).

For each batch size in ``--batch-sizes`` (default ``1,100,500,2000``; 500 is the product's):

* **listener cost**: µs per message on the delivery path (appending to the queue);
* **throughput**: ``--messages`` messages queued at once, then the time until the last one is
  committed (the writer running as in the product: a batch every 0.5 s or as soon as
  ``batch size`` messages wait) — messages/s, and the INSERT statements it took.  Batch size
  1 is the baseline (a database round trip per message), run on ``--baseline-messages``.

Prints a Markdown table; ``--out FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event

from community.chat_store import ChatStore
from community.database import Database
from community.models import Channel, ChatMessage, Stream, User


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default="",
        help="an empty PostgreSQL database (postgresql+asyncpg://...); default SQLite",
    )
    parser.add_argument("--messages", type=int, default=50_000, help="messages per run (50000)")
    parser.add_argument(
        "--baseline-messages",
        type=int,
        default=2_000,
        help="messages of the batch-size-1 baseline (2000)",
    )
    parser.add_argument("--rooms", type=int, default=10, help="rooms, one channel each (10)")
    parser.add_argument(
        "--batch-sizes", default="1,100,500,2000", help="batch sizes to compare (1,100,500,2000)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")


def _message(seq: int, now_ms: int) -> dict[str, Any]:
    """A numbered message shaped like the chat service's (typical length text)."""
    return {
        "type": "chat",
        "seq": seq,
        "id": uuid.uuid4().hex,
        "ts": now_ms,
        "from": {"id": f"p{seq % 97}", "name": f"viewer{seq % 97}", "role": "viewer"},
        "text": f"message number {seq} — pog, that was a great play @caster",
    }


async def _seed(db: Database, rooms: int) -> list[str]:
    names = [f"bench{i}" for i in range(rooms)]
    async with db.transaction() as session:
        for name in names:
            user = User(username=name, password_hash="!")
            session.add(user)
            await session.flush()
            channel = Channel(name=name, owner_id=user.id)
            session.add(channel)
            await session.flush()
            session.add(Stream(channel_id=channel.id, status="live", started_at=datetime.now(UTC)))
    return names


async def _run(db: Database, rooms: list[str], batch_size: int, messages: int) -> dict[str, Any]:
    async with db.transaction() as session:
        await session.execute(delete(ChatMessage))
    inserts = 0

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal inserts
        if statement.lstrip().upper().startswith("INSERT INTO CHAT_MESSAGES"):
            inserts += 1

    store = ChatStore(db, batch_size=batch_size, queue_limit=messages + 1, retention_days=0)
    now_ms = int(time.time() * 1000)
    prepared = [(rooms[i % len(rooms)], _message(i + 1, now_ms)) for i in range(messages)]
    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        started = time.perf_counter()
        for room, message in prepared:
            store.accept(room, message)
        accept_s = time.perf_counter() - started
        await store.start()
        started = time.perf_counter()
        assert await store.flush(3600), "not all messages were written"
        write_s = time.perf_counter() - started
        await store.close()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    assert store.stored == messages and store.dropped == 0, (store.stored, store.dropped)
    return {
        "batch_size": batch_size,
        "messages": messages,
        "accept_us": accept_s / messages * 1e6,
        "write_s": write_s,
        "per_s": messages / write_s,
        "inserts": inserts,
    }


async def bench(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    db = await Database.open(url)
    try:
        rooms = await _seed(db, args.rooms)
        results = []
        for size in (int(s) for s in args.batch_sizes.split(",") if s.strip()):
            count = args.baseline_messages if size == 1 else args.messages
            results.append(await _run(db, rooms, size, count))
        return results
    finally:
        await db.close()


def table(kind: str, results: list[dict[str, Any]]) -> str:
    baseline = next((r["per_s"] for r in results if r["batch_size"] == 1), None)
    lines = [
        f"| database | batch size | messages | listener µs/msg | write s | messages/s | "
        f"INSERTs |{' × baseline |' if baseline else ''}",
        f"|---|---|---|---|---|---|---|{'---|' if baseline else ''}",
    ]
    for r in results:
        ratio = f" {r['per_s'] / baseline:.0f} |" if baseline else ""
        lines.append(
            f"| {kind} | {r['batch_size']} | {r['messages']} | {r['accept_us']:.2f} | "
            f"{r['write_s']:.2f} | {r['per_s']:,.0f} | {r['inserts']} |{ratio}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark on ``args.database_url`` (SQLite in a temporary folder when empty)."""
    with tempfile.TemporaryDirectory(prefix="chat-store-bench-") as folder:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(folder) / 'relaycast.db'}"
        kind = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
        results = asyncio.run(bench(url, args))
    text = table(kind, results)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m loadtest.chat_store_bench", description=__doc__)
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
