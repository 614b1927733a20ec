"""The live streams' sampler: every 10 s (UTC boundaries) per live stream, concurrent
viewers by tier, each viewer's watch time, and the publisher's ingest health.

* **WebRTC viewers** = the room's viewers (:class:`signaling.rooms.Room`); each connected
  WHEP session of the room is a viewer: ``user:<id>`` when its
  :class:`sfu.protocol.Identity` has a platform ``user``, else ``session:<identity id>``.
* **LL-HLS viewers** = distinct ``llhls`` beacon sessions heard in the last
  :data:`LLHLS_WINDOW_S` that have not sent ``end`` (read from ``qoe_beacons``, which every
  instance writes: beacons may reach any instance); a viewer is the beacon's user
  (``user:<id>``), else ``session:<beacon session>``.
* Every viewer present at a sample gets :data:`SAMPLE_INTERVAL_S` of watch time (the
  resolution is one interval).
* **Ingest**: the origin nodes' readings of the publishers, one ``stats`` RPC per node
  (:func:`community.api.ingest.ingest_of_rooms`), stored with ``at`` on the boundary: the
  measured figures only (a publisher session's ``advice`` is live state, not a sample; its
  ``dropped_frames`` would need a column ``ingest_samples`` does not have).

**One writer per stream in a cluster.** Every signaling instance runs a sampler, but an
instance samples only the rooms whose origin SFU node is connected to it
(:attr:`signaling.nodes.SfuNode.local`; a room whose node is not known is sampled by every
instance that sees it live).  The writes are idempotent per boundary anyway, so a node
moving between instances, or two instances sampling one room, changes nothing: samples
are keyed by ``(stream_id, at)`` with ``at`` on the boundary and inserted or ignored; a
viewer's watch time grows only when its ``last_seen`` is older than the boundary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import Float, String, case, func, literal, select

from signaling.app_keys import NAMESPACE_KEY, ROOMS, SESSION_SERVICE

from .analytics_store import BeaconQueue, dialect_insert, utc_boundary
from .api.ingest import INGEST_FIELDS, ingest_of_rooms
from .database import Database
from .models import (
    Channel,
    IngestSample,
    QoeBeacon,
    Stream,
    StreamViewer,
    UtcDateTime,
    ViewerSample,
)

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 10.0
LLHLS_WINDOW_S = 30.0
"""An LL-HLS player counts as watching while its beacons arrive (it sends one every 10 s)."""
VIEWER_ROWS = 500
"""WebRTC viewer rows per upsert statement and transaction."""


@dataclass
class SampleRound:
    """What one sampler round wrote (for logs and tests)."""

    at: datetime
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    """stream id → ``{"webrtc", "llhls"}``."""
    viewers: int = 0
    ingest: int = 0


def _signaling(app: web.Application) -> tuple[Any, Any, Any]:
    """(rooms, sfu namespace, session service) of the signaling app, or ``None`` each on a
    platform-only app."""
    return app.get(ROOMS), app.get(NAMESPACE_KEY), app.get(SESSION_SERVICE)


def _node(namespace: Any, node_id: str) -> Any:
    for node in namespace.registry.nodes.values():
        if node.node_id == node_id:
            return node
    return None


class ViewerSampler:
    """Samples the live streams every :attr:`interval_s` (see the module docstring)."""

    def __init__(self, app: web.Application, db: Database, beacons: BeaconQueue) -> None:
        self.app, self.db, self.beacons = app, db, beacons
        self.interval_s = SAMPLE_INTERVAL_S
        self.ingest_latest: dict[str, dict[str, Any]] = {}
        """room → the latest ingest reading (the ``relaycast_ingest_*`` gauges)."""
        self.last: SampleRound | None = None

    def owns(self, room: str) -> bool:
        """Whether this instance samples ``room``: its origin node is connected here, or
        not known (see the module docstring)."""
        rooms, namespace, _ = _signaling(self.app)
        state = rooms.get(room) if rooms is not None else None
        if state is None or state.node is None or namespace is None:
            return True
        node = _node(namespace, state.node)
        return node is None or bool(node.local)

    async def sample(self, at: datetime | None = None) -> SampleRound:
        """One round at boundary ``at`` (default: the current one)."""
        at = at if at is not None else utc_boundary(datetime.now(UTC), self.interval_s)
        out = SampleRound(at)
        await self.beacons.flush()  # the LL-HLS sessions heard until now
        async with self.db.session() as session:
            live = (
                await session.execute(
                    select(Stream.id, Channel.name)
                    .join(Channel, Channel.id == Stream.channel_id)
                    .where(Stream.status == "live")
                )
            ).all()
        owned = {stream_id: room for stream_id, room in live if self.owns(room)}
        self.ingest_latest = {r: v for r, v in self.ingest_latest.items() if r in owned.values()}
        if not owned:
            self.last = out
            return out
        rooms, _, sessions = _signaling(self.app)
        webrtc: dict[str, set[str]] = {}  # stream → WebRTC viewer keys
        for stream_id, room in owned.items():
            state = rooms.get(room) if rooms is not None else None
            count = state.viewers if state is not None and state.live else 0
            out.streams[stream_id] = {"webrtc": count, "llhls": 0}
            keys = webrtc.setdefault(stream_id, set())
            if sessions is not None and count > 0:  # (in Redis mode a lookup over every node)
                for s in await sessions.store.of_room(room):
                    if s.resource == "whep" and s.connected:
                        user = s.identity.user
                        keys.add(f"user:{user}" if user else f"session:{s.identity.id}")
        llhls = _llhls_viewers(list(owned), datetime.now(UTC) - timedelta(seconds=LLHLS_WINDOW_S))
        async with self.db.session() as session:
            counts = await session.execute(
                select(llhls.c.stream_id, func.count()).group_by(llhls.c.stream_id)
            )
            for stream_id, count in counts.all():
                out.streams[stream_id]["llhls"] = int(count)
        try:
            readings = await ingest_of_rooms(self.app, owned.values())
            ingest = {room: {name: values.get(name) for name in INGEST_FIELDS}  # measured only
                      for room, values in readings.items()}
        except Exception:
            logger.exception("reading ingest health failed")
            ingest = {}
        self.ingest_latest.update({room: {**values, "at": at} for room, values in ingest.items()})
        room_stream = {room: stream_id for stream_id, room in owned.items()}
        await self._write(at, out, webrtc, llhls, {room_stream[r]: v for r, v in ingest.items()})
        out.viewers = sum(len(keys) for keys in webrtc.values()) + sum(
            c["llhls"] for c in out.streams.values()
        )
        out.ingest = len(ingest)
        self.last = out
        return out

    def _viewer_upsert(self, stmt: Any) -> Any:
        """``stmt`` (an ``INSERT`` into ``stream_viewers``) as an upsert that adds the
        interval's watch time once per boundary: only when ``last_seen`` is older."""
        return stmt.on_conflict_do_update(
            index_elements=[StreamViewer.stream_id, StreamViewer.viewer],
            set_={
                "last_seen": stmt.excluded.last_seen,
                "tier": stmt.excluded.tier,
                "watch_s": StreamViewer.watch_s + stmt.excluded.watch_s,
            },
            where=StreamViewer.last_seen < stmt.excluded.last_seen,
        )

    async def _write(
        self,
        at: datetime,
        out: SampleRound,
        webrtc: dict[str, set[str]],
        llhls: Any,
        ingest: dict[str, dict[str, Any]],
    ) -> None:
        """Samples and ingest in one transaction; WebRTC viewers in transactions of
        :data:`VIEWER_ROWS` (the event loop never blocks long on bind processing); LL-HLS
        viewers straight from ``qoe_beacons`` in one ``INSERT … SELECT`` (no row through
        Python, whatever the audience).  WebRTC first: a user on both tiers keeps ``webrtc``."""
        samples = [{"stream_id": s, "at": at, **counts} for s, counts in out.streams.items()]
        ingest_rows = [{**values, "stream_id": s, "at": at} for s, values in ingest.items()]
        async with self.db.transaction() as session:
            stmt = dialect_insert(self.db, ViewerSample).on_conflict_do_nothing(
                index_elements=[ViewerSample.stream_id, ViewerSample.at]
            )
            await session.execute(stmt, samples)
            if ingest_rows:
                stmt = dialect_insert(self.db, IngestSample).on_conflict_do_nothing(
                    index_elements=[IngestSample.stream_id, IngestSample.at]
                )
                await session.execute(stmt, ingest_rows)
        seen = [
            {
                "stream_id": s,
                "viewer": key,
                "tier": "webrtc",
                "first_seen": at,
                "last_seen": at,
                "watch_s": self.interval_s,
            }
            for s, keys in webrtc.items()
            for key in sorted(keys)
        ]
        upsert = self._viewer_upsert(dialect_insert(self.db, StreamViewer))
        for first in range(0, len(seen), VIEWER_ROWS):
            async with self.db.transaction() as session:
                await session.execute(upsert, seen[first : first + VIEWER_ROWS])
        stamp = literal(at, UtcDateTime())
        rows = (
            select(
                llhls.c.stream_id,
                llhls.c.viewer,
                literal("llhls", String()),
                stamp,
                stamp,
                literal(self.interval_s, Float()),
            )
            .where(llhls.c.viewer.is_not(None))
            .group_by(llhls.c.stream_id, llhls.c.viewer)
        )
        from_beacons = dialect_insert(self.db, StreamViewer).from_select(
            ["stream_id", "viewer", "tier", "first_seen", "last_seen", "watch_s"], rows
        )
        async with self.db.transaction() as session:
            await session.execute(self._viewer_upsert(from_beacons))

    async def run(self) -> None:
        last: datetime | None = None
        while True:
            now = time.time()
            await asyncio.sleep(self.interval_s - now % self.interval_s + 0.05)
            at = utc_boundary(datetime.now(UTC), self.interval_s)
            if at == last:
                continue
            last = at
            try:
                await self.sample(at)
            except Exception:
                logger.exception("sampling the live streams failed")


def _llhls_viewers(stream_ids: list[str], since: datetime) -> Any:
    """A subquery ``(stream_id, viewer)``: one row per LL-HLS playback session of
    ``stream_ids`` heard since ``since`` that has not sent ``end``; ``viewer`` is
    ``user:<id>`` when its beacons named a user, else ``session:<beacon session>``."""
    ended = func.max(case((QoeBeacon.event == "end", 1), else_=0))
    viewer = func.coalesce(
        literal("user:", String()) + func.max(QoeBeacon.user_id),
        literal("session:", String()) + QoeBeacon.session,
    )
    return (
        select(QoeBeacon.stream_id.label("stream_id"), viewer.label("viewer"))
        .where(
            QoeBeacon.stream_id.in_(stream_ids),
            QoeBeacon.received_at >= since,
            QoeBeacon.tier == "llhls",
        )
        .group_by(QoeBeacon.stream_id, QoeBeacon.session)
        .having(ended == 0)
        .subquery()
    )
