"""Chat persistence: every accepted chat message written to ``chat_messages`` in batches.

:class:`ChatStore` is a listener of the chat service (``app[CHAT].listeners``).  The chat
service calls it once per event cluster-wide, on the instance that accepted the event, with
``(room, event)`` where ``event`` is a numbered message ``{"type": "chat", "seq", "id",
"ts" (epoch ms), "from": {"id", "name", "role", "user"?}, "text", ...}``, a
``{"type": "delete", "ids": [...]}`` or a ``{"type": "clear"}``.  The listener only appends
to an in-memory queue — the delivery path never waits for the database.

A writer task drains the queue every :data:`FLUSH_INTERVAL_S` (0.5 s), or as soon as
:data:`BATCH_SIZE` (500) messages wait, in one transaction per batch: consecutive messages
go in one multi-row ``INSERT`` (an executemany; a duplicate id is ignored), and a ``delete``
or ``clear`` is applied after the messages queued before it, so the queue's order is the
database's order.  ``delete`` sets ``deleted_at`` on the listed messages of the room,
``clear`` on every undeleted message of the room sent up to the moment it was accepted.
Because another instance may still hold, unwritten, a message a moderator acts on here,
each ``delete``/``clear`` is applied again on every flush for :data:`REAPPLY_S` (5 s).

The room name is the channel name; the channel id and its open (pending or live) stream id
come from a cache (:data:`CACHE_TTL_S`, 5 s; dropped at once on a local ``stream.started``
/ ``stream.ended``), one query per batch for the rooms it does not hold.  Messages of rooms
without a channel are not stored.

Overflow: the queue holds at most :data:`QUEUE_LIMIT` (50,000) events.  When it is full a
new ``chat`` event is dropped (counted in :attr:`ChatStore.dropped`, one WARNING per 10 s);
delivery is never blocked.  ``delete`` and ``clear`` are always queued, so a deleted message
never comes back.  If the database is unreachable the batch stays queued and is retried
with back-off (1 s doubling to 30 s).  :meth:`ChatStore.close` (on a clean stop) writes
everything accepted before returning.

Retention: every hour (and at start-up) messages older than ``retention_days``
(``RELAYCAST_CHAT_RETENTION_DAYS``, 30; 0 = forever) are deleted, 5,000 rows per statement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import and_, delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from signaling.app_keys import CHAT

from .app import COMMUNITY
from .database import Database
from .models import Channel, ChatMessage, Stream

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.5
"""A queued message is written at most this long after it was accepted, s."""
BATCH_SIZE = 500
"""Messages written in one transaction (and the queue length that wakes the writer early)."""
QUEUE_LIMIT = 50_000
"""Events held in memory at most; beyond it new chat messages are dropped (not stored)."""
CACHE_TTL_S = 5.0
"""How long a room's channel id and open stream id are reused, s."""
REAPPLY_S = 5.0
"""How long a ``delete``/``clear`` is applied again on each flush, s (other instances' rows)."""
PRUNE_INTERVAL_S = 3600.0
"""Retention pruning period, s."""
PRUNE_CHUNK = 5000
"""Rows deleted per retention statement."""
HISTORY_FLUSH_S = 2.0
"""How long :meth:`ChatStore.history` waits for this process's unwritten events of the room, s."""
STORE = "chat_store"
"""``Community.services`` key of the process's :class:`ChatStore`."""

_WARN_EVERY_S = 10.0
_TABLE = ChatMessage.__table__


@dataclass(frozen=True)
class _Target:
    channel_id: str
    stream_id: str | None


@dataclass(frozen=True)
class _Event:
    kind: str  # "chat" | "delete" | "clear"
    room: str
    data: dict[str, Any]
    accepted_at: datetime


@dataclass
class _Reapply:
    until: float  # time.monotonic()
    kind: str
    channel_id: str
    ids: tuple[str, ...]
    accepted_at: datetime


def _row(target: _Target, message: dict[str, Any]) -> dict[str, Any]:
    """The ``chat_messages`` row of a numbered message.  :raises KeyError, TypeError, ValueError:"""
    sender = message["from"]
    user = sender.get("user")
    return {
        "id": str(message["id"])[:32],
        "channel_id": target.channel_id,
        "stream_id": target.stream_id,
        "seq": int(message["seq"]),
        "sent_at": datetime.fromtimestamp(int(message["ts"]) / 1000, UTC),
        "user_id": str(user) if user else None,
        "sender_id": str(sender["id"])[:64],
        "sender_name": str(sender["name"])[:64],
        "sender_role": str(sender.get("role") or "viewer")[:16],
        "text": str(message["text"]),
    }


class ChatStore:
    """Batched, ordered persistence of one process's chat events (see the module doc).

    ``await store.start()``; register :meth:`listener`; ``await store.close()`` writes what
    is queued and stops.

    :ivar dropped: chat messages refused because the queue was full.
    :ivar stored: rows inserted.
    :ivar skipped: messages not stored: no channel of that name, or malformed.
    """

    def __init__(
        self,
        db: Database,
        *,
        retention_days: float = 30.0,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        batch_size: int = BATCH_SIZE,
        queue_limit: int = QUEUE_LIMIT,
        cache_ttl_s: float = CACHE_TTL_S,
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ) -> None:
        self.db = db
        self.retention_days = retention_days
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.queue_limit = queue_limit
        self.cache_ttl_s = cache_ttl_s
        self.prune_interval_s = prune_interval_s
        self.dropped = 0
        self.stored = 0
        self.skipped = 0
        self._queue: deque[_Event] = deque()
        self._waiting: Counter[str] = Counter()  # room -> events queued or being written
        self._accepted = 0  # events ever queued
        self._done = 0  # events ever written (or given up)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._cache: dict[str, tuple[float, _Target | None]] = {}
        self._reapply: list[_Reapply] = []
        self._closing = False
        self._retry_s = 0.0
        self._last_warning = -_WARN_EVERY_S
        self._dropped_since_warning = 0
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ intake
    async def listener(self, room: str, event: dict[str, Any]) -> None:
        """The chat service listener: :meth:`accept` (never waits)."""
        self.accept(room, event)

    def accept(self, room: str, event: dict[str, Any]) -> bool:
        """Queue a ``chat``/``delete``/``clear`` event of ``room``.  :returns: False when it
        was not queued (another type, or a chat message while the queue is full)."""
        kind = event.get("type")
        if kind not in ("chat", "delete", "clear"):
            return False
        if kind == "chat" and len(self._queue) >= self.queue_limit:
            self._overflow(room)
            return False
        self._waiting[room] += 1
        self._queue.append(_Event(kind, room, event, datetime.now(UTC)))
        self._accepted += 1
        if len(self._queue) >= self.batch_size or kind != "chat":
            self._wake.set()
        return True

    def _overflow(self, room: str) -> None:
        self.dropped += 1
        self._dropped_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            logger.warning(
                "chat store queue full (%d events): dropped %d message(s) unstored",
                self.queue_limit,
                self._dropped_since_warning,
                extra={"room": room},
            )
            self._last_warning = now
            self._dropped_since_warning = 0

    def waiting(self, room: str) -> int:
        """Events (messages, deletes, clears) of ``room`` accepted but not yet written."""
        return self._waiting.get(room, 0)

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every event accepted so far is written (the writer is woken at once;
        without a running writer, write here).

        :returns: False if ``timeout_s`` ran out first (e.g. the database is unreachable).
        :raises sqlalchemy.exc.DBAPIError: without a running writer, the write failed.
        """
        target = self._accepted
        if self._done >= target:
            return True
        if self._writer is None or self._writer.done():  # not started (or stopped): write here
            await asyncio.wait_for(self.write_queued(), timeout_s)
            return self._done >= target
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return False
        return True

    def forget(self, room: str) -> None:
        """Drop the cached channel/stream of ``room`` (its stream started or ended)."""
        self._cache.pop(room, None)

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        """Start the writer and (with a retention) the pruner."""
        self._writer = asyncio.create_task(self._run_writer(), name="chat-store-writer")
        if self.retention_days > 0:
            self._pruner = asyncio.create_task(self._run_pruner(), name="chat-store-pruner")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Write everything queued, then stop.  Events still unwritten after ``timeout_s``
        (database unreachable) are logged as lost."""
        self._closing = True
        self._wake.set()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
        if self._writer is None:
            self._writer = asyncio.create_task(self._run_writer(), name="chat-store-writer")
        try:
            await asyncio.wait_for(self._writer, timeout_s)
        except TimeoutError:
            pass
        if self._queue:
            logger.error("chat store closed with %d event(s) unwritten", len(self._queue))
        self._done = self._accepted
        self._settle()

    async def _run_writer(self) -> None:
        while True:
            if not self._closing:
                try:
                    await asyncio.wait_for(
                        self._wake.wait(), self._retry_s or self.flush_interval_s
                    )
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self.write_queued()
            except asyncio.CancelledError:
                raise
            except (DBAPIError, OSError) as exc:
                self._retry_s = min(30.0, max(1.0, self._retry_s * 2))
                logger.warning(
                    "chat store: database write failed (%s); %d event(s) kept, retry in %g s",
                    exc.__class__.__name__,
                    len(self._queue),
                    self._retry_s,
                )
                if self._closing:
                    return
                continue
            except Exception:
                logger.exception("chat store: write failed; %d event(s) kept", len(self._queue))
                self._retry_s = min(30.0, max(1.0, self._retry_s * 2))
                if self._closing:
                    return
                continue
            self._retry_s = 0.0
            if self._closing and not self._queue:
                return

    async def _run_pruner(self) -> None:
        while True:
            try:
                removed = await self.prune()
                if removed:
                    logger.info("chat store: %d message(s) past retention deleted", removed)
            except asyncio.CancelledError:
                raise
            except (DBAPIError, OSError) as exc:
                logger.warning("chat store: retention pruning failed (%s)", exc.__class__.__name__)
            await asyncio.sleep(self.prune_interval_s)

    # ------------------------------------------------------------------ writing
    async def write_queued(self) -> int:
        """Write the queue in batches of :attr:`batch_size` messages and apply due
        ``delete``/``clear`` replays.  :returns: events written.
        :raises sqlalchemy.exc.DBAPIError: the database failed (the batch stays queued)."""
        written = 0
        self._reapply = [r for r in self._reapply if r.until > time.monotonic()]
        if self._reapply:
            async with self.db.engine.begin() as conn:
                for item in self._reapply:
                    await self._moderate(conn, item)
        while self._queue:
            batch: list[_Event] = []
            messages = 0
            while self._queue and messages < self.batch_size:
                event = self._queue.popleft()
                batch.append(event)
                messages += event.kind == "chat"
            try:
                try:
                    await self._write(batch)
                except IntegrityError:
                    await self._write_each(batch)
            except BaseException:
                self._queue.extendleft(reversed(batch))  # written again: duplicates are ignored
                raise
            self._finish(batch)
            written += len(batch)
        return written

    def _finish(self, batch: list[_Event]) -> None:
        for event in batch:
            self._waiting[event.room] -= 1
            if self._waiting[event.room] <= 0:
                del self._waiting[event.room]
        self._done += len(batch)
        self._settle()

    def _settle(self) -> None:
        keep = []
        for target, future in self._waiters:
            if target <= self._done:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    async def _write(self, batch: list[_Event]) -> None:
        async with self.db.engine.begin() as conn:
            targets = await self._resolve(conn, {e.room for e in batch})
            rows: list[dict[str, Any]] = []
            for event in batch:
                target = targets.get(event.room)
                if event.kind == "chat":
                    row = self._row_of(target, event)
                    if row is not None:
                        rows.append(row)
                    continue
                if rows:
                    await self._insert(conn, rows)
                    rows = []
                if target is not None:
                    item = self._moderation(target, event)
                    await self._moderate(conn, item)
            if rows:
                await self._insert(conn, rows)

    async def _write_each(self, batch: list[_Event]) -> None:
        """A batch that broke a constraint (its user or channel was deleted meanwhile): each
        event in its own transaction; the ones that still fail are logged and skipped."""
        for event in batch:
            try:
                await self._write([event])
            except IntegrityError:
                self.skipped += event.kind == "chat"
                logger.warning(
                    "chat store: %s event not stored (constraint)",
                    event.kind,
                    extra={"room": event.room},
                )

    def _row_of(self, target: _Target | None, event: _Event) -> dict[str, Any] | None:
        if target is None:
            self.skipped += 1
            return None
        try:
            return _row(target, event.data)
        except (KeyError, TypeError, ValueError, OverflowError):
            self.skipped += 1
            logger.warning("chat store: malformed message not stored", extra={"room": event.room})
            return None

    async def _insert(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        # RETURNING: SQLAlchemy sends the executemany as multi-row VALUES statements
        # ("insertmanyvalues") and the ids tell how many were new.
        statement = (
            dialect.insert(_TABLE)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(_TABLE.c.id)
        )
        result = await conn.execute(statement, rows)
        self.stored += len(result.all())

    def _moderation(self, target: _Target, event: _Event) -> _Reapply:
        ids = tuple(str(i)[:32] for i in event.data.get("ids") or () if isinstance(i, str))
        item = _Reapply(
            time.monotonic() + REAPPLY_S, event.kind, target.channel_id, ids, event.accepted_at
        )
        self._reapply.append(item)
        return item

    @staticmethod
    async def _moderate(conn: AsyncConnection, item: _Reapply) -> None:
        where = [_TABLE.c.channel_id == item.channel_id, _TABLE.c.deleted_at.is_(None)]
        if item.kind == "delete":
            if not item.ids:
                return
            where.append(_TABLE.c.id.in_(item.ids))
        else:
            where.append(_TABLE.c.sent_at <= item.accepted_at)
        await conn.execute(update(_TABLE).where(*where).values(deleted_at=item.accepted_at))

    async def _resolve(
        self, conn: AsyncConnection, rooms: Iterable[str]
    ) -> dict[str, _Target | None]:
        """Each room's channel id and open stream id (cached; one query for the others)."""
        now = time.monotonic()
        found: dict[str, _Target | None] = {}
        missing = []
        for room in rooms:
            cached = self._cache.get(room)
            if cached is not None and cached[0] > now:
                found[room] = cached[1]
            else:
                missing.append(room)
        if missing:
            open_stream = and_(Stream.channel_id == Channel.id, Stream.status != "ended")
            result = await conn.execute(
                select(Channel.name, Channel.id, Stream.id)
                .outerjoin(Stream, open_stream)
                .where(Channel.name.in_(missing))
            )
            for room in missing:
                found[room] = None
            for name, channel_id, stream_id in result:
                found[name] = _Target(channel_id, stream_id)
            for room in missing:
                self._cache[room] = (now + self.cache_ttl_s, found[room])
        if len(self._cache) > 10_000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return found

    # ------------------------------------------------------------------ reading
    async def history(
        self, room: str, stream_id: str, *, before: str | None = None, limit: int = 50
    ) -> tuple[list[ChatMessage], bool]:
        """Stored, undeleted messages of stream ``stream_id`` (of room ``room``), oldest
        first: the newest ``limit``, or the ``limit`` just before message ``before``
        (ordered by ``sent_at``, ``seq``, ``id``).  Events of the room this process still
        holds are written first (waiting at most :data:`HISTORY_FLUSH_S`).

        :returns: ``(messages, more)``; ``more``: older messages exist.
        :raises LookupError: ``before`` is not a message of the stream.
        """
        if self.waiting(room):
            await self.flush(HISTORY_FLUSH_S)
        order = tuple_(ChatMessage.sent_at, ChatMessage.seq, ChatMessage.id)
        page = select(ChatMessage).where(
            ChatMessage.stream_id == stream_id, ChatMessage.deleted_at.is_(None)
        )
        async with self.db.session() as session:
            if before is not None:
                anchor = (
                    await session.execute(
                        select(ChatMessage.sent_at, ChatMessage.seq, ChatMessage.id).where(
                            ChatMessage.id == before, ChatMessage.stream_id == stream_id
                        )
                    )
                ).one_or_none()
                if anchor is None:
                    raise LookupError(before)
                page = page.where(order < tuple(anchor))  # a plain tuple: bound as the columns
            newest_first = page.order_by(
                ChatMessage.sent_at.desc(), ChatMessage.seq.desc(), ChatMessage.id.desc()
            ).limit(limit + 1)
            rows = list((await session.execute(newest_first)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        rows.reverse()
        return rows, more

    # ------------------------------------------------------------------ retention
    async def prune(self, now: datetime | None = None) -> int:
        """Delete messages sent more than ``retention_days`` before ``now``.
        :returns: rows deleted (0 when retention is off)."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        total = 0
        while True:
            old = select(_TABLE.c.id).where(_TABLE.c.sent_at < cutoff).limit(PRUNE_CHUNK)
            async with self.db.engine.begin() as conn:
                result = await conn.execute(
                    delete(_TABLE).where(_TABLE.c.id.in_(old.scalar_subquery()))
                )
            total += result.rowcount
            if result.rowcount < PRUNE_CHUNK:
                return total


def chat_store_of(app: web.Application) -> ChatStore | None:
    """The process's :class:`ChatStore` (``None`` before start-up)."""
    store = app[COMMUNITY].services.get(STORE)
    return store if isinstance(store, ChatStore) else None


def setup(app: web.Application) -> None:
    """Start a :class:`ChatStore` at start-up and register it on the chat service
    (``app[CHAT]``, when the app has one); write what is queued on clean-up."""
    community = app[COMMUNITY]

    async def forget(event: str, payload: dict[str, Any]) -> None:
        store = chat_store_of(app)
        if store is not None and isinstance(payload.get("channel"), str):
            store.forget(payload["channel"])

    async def start(app: web.Application) -> None:
        store = ChatStore(community.db, retention_days=community.config.chat_retention_days)
        await store.start()
        community.services[STORE] = store
        chat = app.get(CHAT)
        if chat is not None:
            chat.listeners.append(store.listener)
        else:
            logger.info("no chat service in this app: chat messages are not stored")

    async def stop(app: web.Application) -> None:
        store = chat_store_of(app)
        if store is None:
            return
        chat = app.get(CHAT)
        if chat is not None and store.listener in chat.listeners:
            chat.listeners.remove(store.listener)
        await store.close()

    community.events.subscribe(forget, "stream.started", "stream.ended")
    app.on_startup.append(start)
    # On clean-up, after the chat service closed (it hands its queued events to the
    # listeners first) and before the database closes.
    app.on_cleanup.append(stop)
