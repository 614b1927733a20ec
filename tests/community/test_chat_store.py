""":class:`community.chat_store.ChatStore` on a real SQLite and a real PostgreSQL database:
messages arrive as the chat service hands them to its listeners and are written in a few
multi-row INSERTs, in order with deletes and clears, survive a restart, and expire."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text

from community.chat_store import ChatStore
from community.database import Database
from community.models import Channel, ChatMessage, Stream, User
from tests.polling import wait_for


def message(
    seq: int, text: str = "", *, ts_ms: int | None = None, user: str | None = None
) -> dict[str, Any]:
    """A numbered message as the chat service publishes it."""
    sender: dict[str, Any] = {"id": f"p{seq % 7}", "name": f"guest{seq % 7}", "role": "viewer"}
    if user:
        sender["user"] = user
    return {
        "type": "chat",
        "seq": seq,
        "id": uuid.uuid4().hex,
        "ts": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "from": sender,
        "text": text or f"message {seq}",
    }


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await Database.open(db_url)
    try:
        yield database
    finally:
        await database.close()


async def make_channel(db: Database, name: str, *, live: bool = True) -> tuple[str, str | None]:
    """A user, their channel and (``live``) an open stream: ``(channel id, stream id)``."""
    async with db.transaction() as session:
        user = User(username=name, password_hash="!")
        session.add(user)
        await session.flush()
        channel = Channel(name=name, owner_id=user.id)
        session.add(channel)
        await session.flush()
        stream_id = None
        if live:
            stream = Stream(channel_id=channel.id, status="live", started_at=datetime.now(UTC))
            session.add(stream)
            await session.flush()
            stream_id = stream.id
        return channel.id, stream_id


async def stored(db: Database, *, with_deleted: bool = False) -> list[ChatMessage]:
    async with db.session() as session:
        query = select(ChatMessage).order_by(ChatMessage.sent_at, ChatMessage.seq)
        if not with_deleted:
            query = query.where(ChatMessage.deleted_at.is_(None))
        return list((await session.execute(query)).scalars())


def count_inserts(db: Database) -> list[int]:
    """Row counts of every INSERT INTO chat_messages statement run from now on."""
    seen: list[int] = []

    def before(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CHAT_MESSAGES"):
            seen.append(len(parameters) if executemany else 1)

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    return seen


async def test_messages_are_written_in_a_few_batched_inserts(db: Database) -> None:
    channel_id, stream_id = await make_channel(db, "caster")
    store = ChatStore(db, batch_size=500)
    inserts = count_inserts(db)
    sent = [message(i) for i in range(1, 1201)]
    for m in sent:
        await store.listener("caster", m)
    assert inserts == [] and store.waiting("caster") == 1200  # nothing touched the database yet
    assert await store.flush(30)
    assert len(inserts) == 3  # 500 + 500 + 200 rows, never one statement per message
    rows = await stored(db)
    assert [r.id for r in rows] == [m["id"] for m in sent]
    assert {(r.channel_id, r.stream_id) for r in rows} == {(channel_id, stream_id)}
    assert store.stored == 1200 and store.waiting("caster") == 0


async def test_writer_flushes_on_its_own_within_the_interval(db: Database) -> None:
    await make_channel(db, "caster")
    store = ChatStore(db, flush_interval_s=0.05)
    await store.start()
    try:
        store.accept("caster", message(1, "hello"))

        async def written() -> bool:
            return len(await stored(db)) == 1

        await wait_for(written, 10, "the message to be written by the writer task")
    finally:
        await store.close()


async def test_delete_and_clear_apply_in_queue_order(db: Database) -> None:
    await make_channel(db, "caster")
    await make_channel(db, "other")
    store = ChatStore(db)
    first = [message(i) for i in range(1, 4)]
    elsewhere = message(1, "in another room")
    for m in first:
        store.accept("caster", m)
    store.accept("other", elsewhere)
    # Deleted before it was ever written, and a delete naming another room's message.
    store.accept("caster", {"type": "delete", "ids": [first[1]["id"], elsewhere["id"]]})
    assert await store.flush(30)
    assert {r.text for r in await stored(db)} == {"message 1", "message 3", "in another room"}

    store.accept("caster", {"type": "clear"})
    later = message(4, "after the clear")
    store.accept("caster", later)
    assert await store.flush(30)
    assert {r.text for r in await stored(db)} == {"in another room", "after the clear"}
    gone = [r for r in await stored(db, with_deleted=True) if r.deleted_at is not None]
    assert sorted(r.text for r in gone) == ["message 1", "message 2", "message 3"]


async def test_delete_reaches_a_message_written_later_by_another_instance(db: Database) -> None:
    """A moderator's delete on one instance, the message still queued on another."""
    await make_channel(db, "caster")
    here, there = ChatStore(db), ChatStore(db)
    late = message(1, "spam")
    here.accept("caster", {"type": "delete", "ids": [late["id"]]})
    assert await here.flush(30)
    there.accept("caster", late)
    assert await there.flush(30)
    assert len(await stored(db)) == 1  # the row came after the delete ...
    await here.write_queued()  # ... and the next flush here applies it again
    assert await stored(db) == []
    assert len(await stored(db, with_deleted=True)) == 1


async def test_rooms_without_a_channel_and_malformed_messages_are_skipped(db: Database) -> None:
    await make_channel(db, "caster", live=False)
    store = ChatStore(db)
    store.accept("nochannel", message(1))
    store.accept("caster", {"type": "chat", "seq": "x", "from": {}})
    store.accept("caster", message(2, "kept"))
    assert not store.accept("caster", {"type": "typing"})
    assert await store.flush(30)
    rows = await stored(db)
    assert [(r.text, r.stream_id) for r in rows] == [("kept", None)]  # no open stream
    assert store.skipped == 2


async def test_a_full_queue_drops_messages_with_a_warning_but_keeps_deletes(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await make_channel(db, "caster")
    store = ChatStore(db, queue_limit=3)
    sent = [message(i) for i in range(1, 6)]
    with caplog.at_level(logging.WARNING, logger="community.chat_store"):
        accepted = [store.accept("caster", m) for m in sent]
        assert store.accept("caster", {"type": "delete", "ids": [sent[0]["id"]]})
    assert accepted == [True, True, True, False, False]
    assert store.dropped == 2
    assert [r.message for r in caplog.records if "queue full" in r.message]  # one warning
    assert len([r for r in caplog.records if "queue full" in r.message]) == 1
    assert await store.flush(30)
    assert [r.text for r in await stored(db)] == ["message 2", "message 3"]


async def test_close_writes_everything_and_a_restart_keeps_history(db_url: str) -> None:
    db = await Database.open(db_url)
    await make_channel(db, "caster")
    store = ChatStore(db, flush_interval_s=3600)  # only close() writes
    await store.start()
    sent = [message(i) for i in range(1, 21)]
    for m in sent:
        await store.listener("caster", m)
    await store.close()
    await db.close()

    reopened = await Database.open(db_url)
    try:
        assert [r.id for r in await stored(reopened)] == [m["id"] for m in sent]
    finally:
        await reopened.close()


async def test_retention_prunes_old_messages(db: Database) -> None:
    await make_channel(db, "caster")
    now = datetime.now(UTC)
    old = message(1, "old", ts_ms=int((now - timedelta(days=31)).timestamp() * 1000))
    recent = message(2, "recent", ts_ms=int((now - timedelta(days=29)).timestamp() * 1000))
    forever = ChatStore(db, retention_days=0)
    forever.accept("caster", old)
    forever.accept("caster", recent)
    assert await forever.flush(30)
    assert await forever.prune(now) == 0
    assert len(await stored(db)) == 2
    store = ChatStore(db, retention_days=30)
    assert await store.prune(now) == 1
    assert [r.text for r in await stored(db)] == ["recent"]


async def test_duplicate_ids_and_deleted_users_do_not_lose_the_batch(db: Database) -> None:
    await make_channel(db, "caster")
    store = ChatStore(db)
    twice = message(1, "once")
    store.accept("caster", twice)
    assert await store.flush(30)
    store.accept("caster", twice)  # replayed by a reconnecting node: ignored
    store.accept("caster", message(2, "from a vanished user", user="no-such-user"))
    store.accept("caster", message(3, "fine"))
    assert await store.flush(30)
    assert [r.text for r in await stored(db)] == ["once", "fine"]


async def test_a_failing_database_keeps_the_queue_until_it_recovers(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await make_channel(db, "caster")
    store = ChatStore(db, flush_interval_s=0.05)
    async with db.engine.begin() as conn:  # every write now fails
        await conn.execute(text("ALTER TABLE chat_messages RENAME TO chat_messages_away"))
    await store.start()
    try:
        with caplog.at_level(logging.WARNING, logger="community.chat_store"):
            sent = [message(i) for i in range(1, 4)]
            for m in sent:
                store.accept("caster", m)
            assert not await store.flush(0.5)
            await wait_for(
                lambda: any("write failed" in r.message for r in caplog.records),
                10,
                "the failed write to be logged",
            )
        assert store.waiting("caster") == 3
        async with db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE chat_messages_away RENAME TO chat_messages"))
        assert await store.flush(30)  # retried after the back-off, nothing lost
        assert [r.id for r in await stored(db)] == [m["id"] for m in sent]
    finally:
        await store.close()
