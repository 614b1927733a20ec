"""The analytics' batched writers: player beacons into ``qoe_beacons`` and chat messages
per minute into ``chat_minutes`` — memory on the request and delivery paths, one
multi-row statement per batch to the database (:mod:`community.analytics` ties them up).

* :class:`BeaconQueue`: :meth:`~BeaconQueue.submit` (memory only) from ``POST /api/beacons``;
  written every :data:`BEACON_FLUSH_S` (or at :data:`BEACON_BATCH` pending) in one
  ``INSERT`` per batch, channel names resolved to the channel and its open stream by
  :class:`StreamIndex`.  When :data:`MAX_PENDING_BEACONS` wait (the database fell behind),
  further beacons are dropped and counted (``relaycast_qoe_beacons_dropped_total``).
* :class:`ChatCounter`: a chat-service listener counting accepted messages per room and UTC
  minute; every :data:`CHAT_FLUSH_S` the counts are added to ``chat_minutes`` (an upsert that
  adds, so instances sharing a database add up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from .beacons import Beacon
from .database import Database
from .models import Channel, ChatMinute, QoeBeacon, Stream
from .qoe_metrics import QoeMetrics

logger = logging.getLogger(__name__)

BEACON_FLUSH_S = 0.5
BEACON_BATCH = 1000
"""Rows per ``INSERT`` at most; this many pending also wakes the writer at once."""
MAX_PENDING_BEACONS = 50_000
CHAT_FLUSH_S = 5.0
STREAM_CACHE_S = 2.0
"""How long a channel name → (channel, open stream) lookup is reused."""
MAX_CACHED_NAMES = 50_000


def utc_boundary(at: datetime, interval_s: float) -> datetime:
    """``at`` rounded down to a multiple of ``interval_s`` since the epoch (UTC)."""
    epoch = math.floor(at.timestamp() / interval_s) * interval_s
    return datetime.fromtimestamp(epoch, UTC)


def dialect_insert(db: Database, table: Any) -> Any:
    """``INSERT`` with ``ON CONFLICT`` for the database in use (SQLite ≥ 3.24, PostgreSQL)."""
    if db.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


class StreamIndex:
    """Channel name → ``(channel id, open stream id or None)``, cached :data:`STREAM_CACHE_S`
    (unknown names too: ``None``), looked up in one query per batch of names."""

    def __init__(self, db: Database, ttl_s: float = STREAM_CACHE_S) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, tuple[str, str | None] | None]] = {}

    async def resolve(self, names: Iterable[str]) -> dict[str, tuple[str, str | None] | None]:
        now = time.monotonic()
        out: dict[str, tuple[str, str | None] | None] = {}
        missing = []
        for name in set(names):
            hit = self._cache.get(name)
            if hit is not None and now - hit[0] < self.ttl_s:
                out[name] = hit[1]
            else:
                missing.append(name)
        if missing:
            async with self.db.session() as session:
                rows = (
                    await session.execute(
                        select(Channel.name, Channel.id, Stream.id)
                        .outerjoin(
                            Stream, (Stream.channel_id == Channel.id) & (Stream.status != "ended")
                        )
                        .where(Channel.name.in_(missing))
                    )
                ).all()
            found: dict[str, tuple[str, str | None] | None] = dict.fromkeys(missing)
            for name, channel_id, stream_id in rows:
                found[name] = (channel_id, stream_id)
            if len(self._cache) + len(found) > MAX_CACHED_NAMES:
                self._cache.clear()
            for name, value in found.items():
                self._cache[name] = (now, value)
            out.update(found)
        return out


# ------------------------------------------------------------------------ beacons
_ROW = (
    "session",
    "tier",
    "event",
    "join_ms",
    "latency_ms",
    "stalls",
    "stall_ms",
    "switches",
    "height",
    "error",
    "user_id",
    "received_at",
)
"""The columns of a pending beacon (a tuple after its channel name): plain values only, so
tens of thousands waiting cost the garbage collector nothing (CPython untracks tuples of
atoms)."""


class BeaconQueue:
    """Accepted beacons waiting to be written (see the module docstring)."""

    def __init__(self, db: Database, index: StreamIndex, metrics: QoeMetrics) -> None:
        self.db, self.index, self.metrics = db, index, metrics
        self.flush_s = BEACON_FLUSH_S
        self.pending: list[tuple[Any, ...]] = []
        self.stored = 0
        self.dropped = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def submit(self, beacons: list[Beacon], user_id: str | None) -> int:
        """Queue ``beacons`` (already validated) and observe them in the QoE metrics.
        :returns: how many were queued (the rest were dropped: the queue is full)."""
        room = max(0, MAX_PENDING_BEACONS - len(self.pending))
        now = datetime.now(UTC)
        taken = beacons[:room]
        for b in taken:
            self.pending.append(
                (
                    b.channel,
                    b.session,
                    b.tier,
                    b.event,
                    b.join_ms,
                    b.latency_ms,
                    b.stalls,
                    b.stall_ms,
                    b.switches,
                    b.height,
                    b.error or "",
                    user_id,
                    now,
                )
            )
            self.metrics.observe(b)
        lost = len(beacons) - len(taken)
        if lost:
            self.dropped += lost
            self.metrics.dropped.inc(lost)
        if len(self.pending) >= BEACON_BATCH:
            self._wake.set()
        return len(taken)

    async def flush(self) -> int:
        """Write what is pending now.  :returns: rows written (beacons of unknown channels are
        left out; a failed write is logged and its beacons dropped)."""
        async with self._lock:
            written = 0
            while self.pending:
                pending, self.pending = self.pending, []
                for first in range(0, len(pending), BEACON_BATCH):
                    batch = pending[first : first + BEACON_BATCH]
                    try:
                        written += await self._write(batch)
                    except Exception:
                        logger.exception(
                            "writing %d QoE beacons failed; they are dropped", len(batch)
                        )
                        self.dropped += len(batch)
                        self.metrics.dropped.inc(len(batch))
            self.stored += written
            return written

    async def _write(self, batch: list[tuple[Any, ...]]) -> int:
        streams = await self.index.resolve({item[0] for item in batch})
        rows = []
        for item in batch:
            target = streams.get(item[0])
            if target is not None:
                row = dict(zip(_ROW, item[1:], strict=True))
                row["channel_id"], row["stream_id"] = target
                rows.append(row)
        if rows:
            async with self.db.transaction() as session:
                await session.execute(QoeBeacon.__table__.insert(), rows)
        return len(rows)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            await self.flush()


# ------------------------------------------------------------------------ chat
class ChatCounter:
    """Chat messages per room and UTC minute, added to ``chat_minutes`` every
    :data:`CHAT_FLUSH_S`; messages of a room without an open stream are not counted."""

    def __init__(self, db: Database, index: StreamIndex) -> None:
        self.db, self.index = db, index
        self.counts: dict[tuple[str, datetime], int] = {}
        self._lock = asyncio.Lock()

    async def on_chat_event(self, room: str, event: Mapping[str, Any]) -> None:
        """A chat service listener (``listener(room, event)``): counts ``chat`` events by
        the minute of their ``ts`` (epoch ms)."""
        if event.get("type") != "chat":
            return
        ts = event.get("ts")
        at = (
            datetime.fromtimestamp(ts / 1000, UTC)
            if isinstance(ts, int | float)
            else datetime.now(UTC)
        )
        key = (room, utc_boundary(at, 60.0))
        self.counts[key] = self.counts.get(key, 0) + 1

    async def flush(self) -> int:
        """Add the counts to the database.  :returns: messages written."""
        async with self._lock:
            counts, self.counts = self.counts, {}
            if not counts:
                return 0
            streams = await self.index.resolve(room for room, _ in counts)
            rows = [
                {"stream_id": target[1], "minute": minute, "messages": n}
                for (room, minute), n in counts.items()
                if (target := streams.get(room)) is not None and target[1] is not None
            ]
            if rows:
                stmt = dialect_insert(self.db, ChatMinute)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[ChatMinute.stream_id, ChatMinute.minute],
                    set_={"messages": ChatMinute.messages + stmt.excluded.messages},
                )
                async with self.db.transaction() as session:
                    await session.execute(stmt, rows)
            return sum(row["messages"] for row in rows)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHAT_FLUSH_S)
            try:
                await self.flush()
            except Exception:
                logger.exception("writing chat minutes failed")
