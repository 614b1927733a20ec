"""A stream's life: pending → live → ended, driven by the rooms' live state.

Signaling calls every listener in ``app[ROOM_LISTENERS]`` with a
:class:`~signaling.rooms.Room` after its state changed (a node's report, a lost node), on
every signaling instance that got the event.  :class:`StreamLifecycle` listens there:

* the room goes **live** → the channel's pending stream (``POST /api/streams/start``) becomes
  live with ``started_at``, or — a publish with a key and no start call (OBS, FFmpeg) — a new
  live stream is created from the channel's defaults.  The partial unique index
  ``uq_streams_channel_open`` (one pending-or-live stream per channel) and a conditional
  ``UPDATE … WHERE status = 'pending'`` make the transition happen once across instances:
  only the instance whose transaction won emits ``stream.started``;
* **viewers** → ``streams.viewers`` and ``peak_viewers``, written at most every
  ``viewers_interval_s`` (2 s) per stream, the newest count winning;
* the room is **not live** → the live stream ends (``ended_at``, ``ended_reason``
  ``"publisher_left"``); the winner emits ``stream.ended`` and, with recording on
  (``app[RECORDINGS]``), waits for the stream's VOD recording to be published, stores its
  path in ``streams.recording`` and emits ``recording.ready``.

The listener itself never waits for the database: it records the newest state of the room
and one task per room applies it (states arriving meanwhile are coalesced), so node events
are never held up by a slow database.

The API's transitions live here too: :meth:`StreamLifecycle.prepare` (``POST
/api/streams/start``: the pending stream), :meth:`~StreamLifecycle.stop` and
:meth:`~StreamLifecycle.take_down` (end the stream, close the channel's WHIP session; the
takedown also revokes the key it went live with and writes the audit entry).

Housekeeping: a pending stream that never went live ends (``"expired"``) after
``pending_ttl_s``; at start-up, after ``startup_grace_s`` (the nodes report their rooms
every second), live streams whose room is not live — left by a process that died — end
(``"interrupted"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.exc import IntegrityError

from signaling.app_keys import RECORDINGS, ROOM_LISTENERS, ROOMS, SESSION_SERVICE

from .app import COMMUNITY, Community
from .audit import record
from .keys import MAX_KEYS_PER_CHANNEL, active_keys, create_key, revoke_key, revoked_event
from .models import Category, Channel, Stream, StreamKey, StreamTag, utcnow
from .publish import end_publishing

if TYPE_CHECKING:
    from aiohttp import web

    from hls_bridge.vod import RecordingLibrary
    from signaling.rooms import Room, RoomRegistry
    from signaling.sessions import SessionService

logger = logging.getLogger(__name__)

VIEWERS_INTERVAL_S = 2.0
PENDING_TTL_S = 900.0
STARTUP_GRACE_S = 5.0
SWEEP_INTERVAL_S = 60.0
RECORDING_WAIT_S = 180.0
"""How long after a stream ends its recording is looked for, s (the bridge publishes it
when its transcoder finished, usually within seconds)."""
RESTART_HOLD_S = 10.0
"""After a stop or takedown, the channel's room still being live does not start a new stream
from the channel's defaults for this long, s (the WHIP session is closing; a new pending
stream from ``POST /api/streams/start`` is not held)."""
RECORDING_POLL_S = 1.0
RECORDING_SLACK = timedelta(seconds=30)
"""A recording belongs to a stream when it started at most this long before the stream went
live (and before the stream ended)."""

LIFECYCLE = "lifecycle"
"""``Community.services[LIFECYCLE]``: the :class:`StreamLifecycle`."""

PayloadLoader = Callable[[str], Coroutine[Any, Any, dict[str, Any] | None]]
Unpublisher = Callable[[str], Coroutine[Any, Any, int]]
"""``await unpublish(channel)``: end the channel's WHIP session(s); how many ended."""


class StreamRefused(Exception):
    """An operation on streams that cannot be done: ``status`` (404, 409, 422) and ``detail``
    as the API answers them (RFC 9457)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class _RoomState:
    live: bool
    viewers: int
    peak: int
    """The most viewers among the states this one replaced (coalesced)."""


@dataclass
class _LiveStream:
    stream_id: str
    written_viewers: int
    written_peak: int
    written_at: float
    """``time.monotonic()`` of the last viewers write, s."""


def set_tags(session: Any, stream_id: str, tags: list[str]) -> None:
    """Replace the ``stream_tags`` rows of a stream (the caller deleted the old ones)."""
    for tag in dict.fromkeys(tags):
        session.add(StreamTag(stream_id=stream_id, tag=tag))


class StreamLifecycle:
    """Moves streams between ``pending``, ``live`` and ``ended`` (see the module docstring).

    :param payload: ``await payload(stream_id)`` → the event payload of a stream
        (:func:`community.api.streams.load_stream_json`), ``None`` if it is gone.
    :param rooms: the signaling room registry (``None``: a platform without signaling).
    :param sessions: the signaling session service (which key a publisher used).
    :param recordings: the recording library when recording is on.
    :param unpublish: ends a channel's WHIP session (stop, takedown); default: nothing to end.
    """

    def __init__(self, community: Community, payload: PayloadLoader, *,
                 rooms: RoomRegistry | None = None, sessions: SessionService | None = None,
                 recordings: RecordingLibrary | None = None, unpublish: Unpublisher | None = None,
                 viewers_interval_s: float = VIEWERS_INTERVAL_S, pending_ttl_s: float = PENDING_TTL_S,
                 startup_grace_s: float = STARTUP_GRACE_S, sweep_interval_s: float = SWEEP_INTERVAL_S,
                 recording_wait_s: float = RECORDING_WAIT_S) -> None:
        self.community = community
        self.payload = payload
        self.rooms = rooms
        self.sessions = sessions
        self.recordings = recordings
        self.unpublish = unpublish
        self.viewers_interval_s = viewers_interval_s
        self.pending_ttl_s = pending_ttl_s
        self.startup_grace_s = startup_grace_s
        self.sweep_interval_s = sweep_interval_s
        self.recording_wait_s = recording_wait_s
        self._latest: dict[str, _RoomState] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, _LiveStream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------ room events
    async def on_room(self, room: Room) -> None:
        """The room listener (``app[ROOM_LISTENERS]``): record the state, return at once."""
        self.room_changed(room.name, room.live, room.viewers)

    def room_changed(self, name: str, live: bool, viewers: int) -> None:
        """Note room ``name``'s newest state; its task applies it."""
        viewers = max(0, int(viewers))
        replaced = self._latest.get(name)
        peak = viewers if replaced is None or not replaced.live else max(viewers, replaced.peak)
        self._latest[name] = _RoomState(bool(live), viewers, peak)
        worker = self._workers.get(name)
        if worker is None or worker.done():
            self._idle.clear()
            self._workers[name] = asyncio.create_task(self._run_room(name), name=f"stream-lifecycle-{name}")

    async def idle(self) -> None:
        """Wait until every room state noted so far has been applied."""
        while True:
            await self._idle.wait()
            if not self._latest and all(w.done() for w in self._workers.values()):
                return
            self._idle.clear()

    async def _run_room(self, name: str) -> None:
        try:
            while name in self._latest:
                state = self._latest.pop(name)
                try:
                    await self._apply(name, state)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("stream lifecycle of channel %s failed", name, extra={"room": name})
        finally:
            if self._workers.get(name) is asyncio.current_task():
                del self._workers[name]
            if not self._workers:
                self._idle.set()

    async def _apply(self, name: str, state: _RoomState) -> None:
        if not state.live:
            self._live.pop(name, None)
            await self.end_live(name, "publisher_left")
            return
        live = self._live.get(name)
        if live is None:
            stream_id = await self.go_live(name, state.viewers, state.peak)
            if stream_id is not None:
                self._live[name] = _LiveStream(stream_id, state.viewers, state.peak, time.monotonic())
            return
        if state.viewers == live.written_viewers and state.peak <= live.written_peak:
            return
        wait_s = live.written_at + self.viewers_interval_s - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)  # throttle: at most one write per interval
            newer = self._latest.get(name)
            if newer is not None:  # apply the newer state instead, keeping this one's peak
                newer.peak = max(newer.peak, state.peak)
                return
        if not await self.write_viewers(live.stream_id, state.viewers, state.peak):
            self._live.pop(name, None)  # ended meanwhile (stop, takedown)
            return
        live.written_viewers, live.written_at = state.viewers, time.monotonic()
        live.written_peak = max(live.written_peak, state.peak)

    # ------------------------------------------------------------ transitions
    async def go_live(self, channel: str, viewers: int = 0, peak: int = 0) -> str | None:
        """Channel ``channel``'s room went live: its pending stream becomes live, or a stream
        is created from the channel's defaults.  Emits ``stream.started`` if this call made
        the transition.  :returns: the live stream's id (``None``: no such channel)."""
        db = self.community.db
        key_id = await self._publishing_key(channel)
        now = utcnow()
        won, stream_id = False, None
        try:
            async with db.transaction() as session:
                row = (await session.execute(select(Channel).where(Channel.name == channel))).scalar_one_or_none()
                if row is None:
                    return None
                open_stream = (await session.execute(select(Stream.id, Stream.status).where(
                    Stream.channel_id == row.id, Stream.status != "ended"))).first()
                if open_stream is not None and open_stream.status == "live":
                    return str(open_stream.id)
                if open_stream is not None:
                    values: dict[str, Any] = {"status": "live", "started_at": now, "viewers": viewers,
                                              "peak_viewers": max(viewers, peak)}
                    if key_id is not None:
                        values["key_id"] = key_id
                    result = await session.execute(
                        update(Stream).where(Stream.id == open_stream.id, Stream.status == "pending")
                        .values(**values)
                        .execution_options(synchronize_session=False))
                    won, stream_id = result.rowcount == 1, str(open_stream.id)  # type: ignore[attr-defined]
                else:
                    if await self._just_stopped(session, row.id, now):
                        return None
                    stream = Stream(channel_id=row.id, title=row.title, category=row.category,
                                    tags=list(row.tags or []), language=row.language, status="live",
                                    created_at=now, started_at=now, viewers=viewers,
                                    peak_viewers=max(viewers, peak),
                                    key_id=key_id)
                    session.add(stream)
                    await session.flush()
                    set_tags(session, stream.id, stream.tags)
                    won, stream_id = True, stream.id
        except IntegrityError:
            won = False  # another instance created it first
        if not won:
            return await self._open_stream_id(channel, "live")
        logger.info("stream %s of channel %s is live", stream_id, channel, extra={"room": channel})
        await self._emit("stream.started", stream_id)
        return stream_id

    async def end_live(self, channel: str, reason: str) -> bool:
        """Channel ``channel``'s room is not live: end its live stream.  :returns: whether
        this call ended it (and emitted ``stream.ended``)."""
        stream_id = await self._open_stream_id(channel, "live")
        if stream_id is None:
            return False
        return await self.end_stream(stream_id, reason)

    async def end_stream(self, stream_id: str, reason: str) -> bool:
        """End a pending or live stream (``ended_at`` now, ``ended_reason`` = ``reason``).

        A stream that had gone live emits ``stream.ended`` and has its recording looked for.
        :returns: whether this call ended it (``False``: already ended, or unknown).
        """
        now = utcnow()
        async with self.community.db.transaction() as session:
            started_at = (await session.execute(select(Stream.started_at).where(
                Stream.id == stream_id, Stream.status != "ended"))).first()
            if started_at is None:
                return False
            result = await session.execute(
                update(Stream).where(Stream.id == stream_id, Stream.status != "ended")
                .values(status="ended", ended_at=now, ended_reason=reason[:32], viewers=0)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
        self._live = {k: v for k, v in self._live.items() if v.stream_id != stream_id}
        if started_at[0] is None:
            return True  # never went live: nothing was announced
        logger.info("stream %s ended (%s)", stream_id, reason)
        payload = await self._emit("stream.ended", stream_id)
        if self.recordings is not None and payload is not None:
            self._spawn(self._find_recording(stream_id, payload["channel"], started_at[0], now))
        return True

    async def prepare(self, user_id: str, title: str, *, category: str | None = None,
                      tags: list[str] | None = None, language: str | None = None,
                      new_key: bool = False) -> tuple[str, str | None]:
        """``POST /api/streams/start``: a pending stream on the user's channel, or its open
        (pending or live) stream updated; what is not given comes from the open stream, else
        from the channel's defaults.

        :returns: the stream id and, with ``new_key``, a new stream key in clear (stored as
            its SHA-256).
        :raises StreamRefused: 404 no channel, 422 unknown category, 409 too many keys.
        """
        for attempt in range(2):
            try:
                return await self._prepare(user_id, title, category, tags, language, new_key)
            except IntegrityError:  # a concurrent start created the open stream: update that one
                if attempt:
                    raise StreamRefused(409, "the stream changed meanwhile; try again") from None
        raise AssertionError("unreachable")

    async def _prepare(self, user_id: str, title: str, category: str | None, tags: list[str] | None,
                       language: str | None, new_key: bool) -> tuple[str, str | None]:
        async with self.community.db.transaction() as session:
            channel = (await session.execute(select(Channel).where(Channel.owner_id == user_id))).scalar_one_or_none()
            if channel is None:
                raise StreamRefused(404, "you have no channel")
            if category is not None and await session.get(Category, category) is None:
                raise StreamRefused(422, "body: category: no such category (see GET /api/categories)")
            stream = (await session.execute(select(Stream).where(
                Stream.channel_id == channel.id, Stream.status != "ended"))).scalar_one_or_none()
            defaults: Stream | Channel = channel
            if stream is None:
                stream = Stream(channel_id=channel.id, status="pending", created_at=utcnow())
                session.add(stream)
            else:
                defaults = stream
            stream.title = title
            stream.category = category if category is not None else defaults.category
            stream.language = language or defaults.language
            stream.tags = list(tags if tags is not None else (defaults.tags or []))
            await session.flush()
            await session.execute(delete(StreamTag).where(StreamTag.stream_id == stream.id))
            set_tags(session, stream.id, stream.tags)
            clear = None
            if new_key:
                if await active_keys(session, channel.id) >= MAX_KEYS_PER_CHANNEL:
                    raise StreamRefused(409, f"a channel holds at most {MAX_KEYS_PER_CHANNEL} active keys")
                _row, clear = await create_key(session, channel.id, label="streams/start")
            return stream.id, clear

    async def stop(self, stream_id: str, reason: str = "stopped") -> bool:
        """End the stream (if not already) and close its channel's WHIP session.
        :returns: whether this call ended it."""
        ended = await self.end_stream(stream_id, reason)
        channel = await self._channel_of(stream_id)
        if channel is not None and self.unpublish is not None:
            await self.unpublish(channel)
        return ended

    async def take_down(self, stream_id: str, actor_id: str, reason: str) -> None:
        """Admin takedown: end the stream, revoke the stream key it went live with (emitting
        ``key.revoked``), close the WHIP session; audit entry ``stream.takedown`` in the
        same transaction as the revocation.  :raises StreamRefused: 404 no such stream."""
        channel = await self._channel_of(stream_id)
        if channel is None:
            raise StreamRefused(404, "no such stream")
        ended = await self.end_stream(stream_id, "takedown")
        revoked: dict[str, Any] | None = None
        async with self.community.db.transaction() as session:
            key_id = (await session.execute(select(Stream.key_id).where(Stream.id == stream_id))).scalar_one()
            key = await session.get(StreamKey, key_id) if key_id else None
            if key is not None and await revoke_key(session, key):
                revoked = revoked_event(channel, key)
            await record(session, actor_id, "stream.takedown", "stream", stream_id, reason=reason,
                         detail={"channel": channel, "ended": ended, "key_id": key_id})
        if revoked is not None:
            await self.community.events.emit("key.revoked", revoked)
        if self.unpublish is not None:
            await self.unpublish(channel)

    async def write_viewers(self, stream_id: str, viewers: int, peak: int = 0) -> bool:
        """``viewers`` now, ``peak_viewers`` raised to ``max(viewers, peak)``.
        :returns: whether the stream is still live."""
        peak = max(viewers, peak)
        async with self.community.db.transaction() as session:
            result = await session.execute(
                update(Stream).where(Stream.id == stream_id, Stream.status == "live")
                .values(viewers=viewers,
                        peak_viewers=case((Stream.peak_viewers < peak, peak), else_=Stream.peak_viewers))
                .execution_options(synchronize_session=False))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def expire_pending(self) -> int:
        """End pending streams older than ``pending_ttl_s``.  :returns: how many."""
        cutoff = utcnow() - timedelta(seconds=self.pending_ttl_s)
        async with self.community.db.transaction() as session:
            result = await session.execute(
                update(Stream).where(Stream.status == "pending", Stream.created_at < cutoff)
                .values(status="ended", ended_at=utcnow(), ended_reason="expired")
                .execution_options(synchronize_session=False))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def recover(self) -> int:
        """End live streams whose room is not live on this instance's view of the rooms (a
        process that died left them).  :returns: how many ended."""
        if self.rooms is None:
            return 0
        async with self.community.db.session() as session:
            rows = (await session.execute(
                select(Stream.id, Channel.name).join(Channel, Channel.id == Stream.channel_id)
                .where(Stream.status == "live"))).all()
        ended = 0
        for stream_id, channel in rows:
            room = self.rooms.get(channel)
            if room is not None and room.live:
                continue
            if await self.end_stream(stream_id, "interrupted"):
                ended += 1
        if ended:
            logger.info("ended %d live stream(s) left by an earlier process", ended)
        return ended

    # ------------------------------------------------------------ helpers
    @staticmethod
    async def _just_stopped(session: Any, channel_id: str, now: datetime) -> bool:
        """Whether the channel's stream was stopped or taken down less than
        :data:`RESTART_HOLD_S` ago: its room still reports live while the WHIP session is being
        closed, which must not start a new stream."""
        recent = await session.execute(select(Stream.id).where(
            Stream.channel_id == channel_id, Stream.status == "ended",
            Stream.ended_reason.in_(("stopped", "takedown")),
            Stream.ended_at > now - timedelta(seconds=RESTART_HOLD_S)).limit(1))
        return recent.first() is not None

    async def _channel_of(self, stream_id: str) -> str | None:
        async with self.community.db.session() as session:
            value = (await session.execute(select(Channel.name).join(Stream, Stream.channel_id == Channel.id)
                                           .where(Stream.id == stream_id))).scalar_one_or_none()
        return None if value is None else str(value)

    async def _open_stream_id(self, channel: str, status: str) -> str | None:
        async with self.community.db.session() as session:
            value = (await session.execute(
                select(Stream.id).join(Channel, Channel.id == Stream.channel_id)
                .where(Channel.name == channel, Stream.status == status))).scalar_one_or_none()
        return None if value is None else str(value)

    async def _publishing_key(self, channel: str) -> str | None:
        """The id of the stream key the room's WHIP session was admitted with (``None``: an
        access token, or unknown)."""
        if self.sessions is None:
            return None
        try:
            sessions = await self.sessions.store.of_room(channel)
        except Exception as exc:  # Redis down: the key stays unknown, the stream still goes live
            logger.warning("session records of %s unavailable: %r", channel, exc)
            return None
        owners = sorted((s.created, s.owner_digest) for s in sessions
                        if s.resource == "whip" and s.owner_digest and ":" not in s.owner_digest)
        if not owners:
            return None
        async with self.community.db.session() as session:
            value = (await session.execute(
                select(StreamKey.id).where(StreamKey.key_hash == owners[-1][1]))).scalar_one_or_none()
        return None if value is None else str(value)

    async def _emit(self, event: str, stream_id: str) -> dict[str, Any] | None:
        payload = await self.payload(stream_id)
        if payload is not None:
            await self.community.events.emit(event, payload)
        return payload

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _find_recording(self, stream_id: str, channel: str, started_at: datetime,
                              ended_at: datetime) -> str | None:
        """Wait (up to ``recording_wait_s``) for the recording of the stream to be published;
        store its path and emit ``recording.ready``.  :returns: the path under ``/vod/``."""
        library = self.recordings
        assert library is not None
        deadline = time.monotonic() + self.recording_wait_s
        while True:
            path = await self._match_recording(library, stream_id, channel, started_at, ended_at)
            if path is not None:
                break
            if time.monotonic() >= deadline:
                logger.info("no recording of stream %s appeared", stream_id)
                return None
            await asyncio.sleep(RECORDING_POLL_S)
        async with self.community.db.transaction() as session:
            await session.execute(update(Stream).where(Stream.id == stream_id).values(recording=path)
                                  .execution_options(synchronize_session=False))
        url = f"{self.community.config.public_url}/vod/{path}"
        await self.community.events.emit("recording.ready", {"stream_id": stream_id, "channel": channel,
                                                             "url": url})
        return path

    async def _match_recording(self, library: RecordingLibrary, stream_id: str, channel: str,
                               started_at: datetime, ended_at: datetime) -> str | None:
        entries = await asyncio.to_thread(library.list, channel)
        candidates = []
        for entry in entries:
            try:
                started = datetime.fromisoformat(str(entry["started"]).replace("Z", "+00:00"))
            except (KeyError, ValueError):
                continue
            if started_at - RECORDING_SLACK <= started <= ended_at:
                candidates.append((started, f"{channel}/{entry['id']}/index.m3u8"))
        if not candidates:
            return None
        async with self.community.db.session() as session:
            taken = set((await session.execute(select(Stream.recording).where(
                Stream.recording.in_([p for _, p in candidates]), Stream.id != stream_id))).scalars())
        free = sorted(c for c in candidates if c[1] not in taken)
        return free[0][1] if free else None

    # ------------------------------------------------------------ running
    async def start(self) -> None:
        self._housekeeping = asyncio.create_task(self._run_housekeeping(), name="stream-housekeeping")

    async def _run_housekeeping(self) -> None:
        await asyncio.sleep(self.startup_grace_s)  # let the nodes report their rooms first
        try:
            await self.recover()
        except Exception:
            logger.exception("ending interrupted streams failed")
        while True:
            try:
                expired = await self.expire_pending()
                if expired:
                    logger.info("%d pending stream(s) expired", expired)
            except Exception:
                logger.exception("expiring pending streams failed")
            await asyncio.sleep(self.sweep_interval_s)

    async def close(self) -> None:
        tasks = [*self._workers.values(), *self._tasks]
        if self._housekeeping is not None:
            tasks.append(self._housekeeping)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()
        self._idle.set()


def lifecycle_of(app: web.Application) -> StreamLifecycle | None:
    """The installed :class:`StreamLifecycle` (``Community.services[LIFECYCLE]``)."""
    value = app[COMMUNITY].services.get(LIFECYCLE)
    return value if isinstance(value, StreamLifecycle) else None


def install(app: web.Application, payload: PayloadLoader) -> StreamLifecycle:
    """Create the lifecycle, listen to the signaling app's rooms (when ``app`` has them) and
    start/stop it with ``app``."""
    community = app[COMMUNITY]
    async def unpublish(channel: str) -> int:
        return await end_publishing(app, channel)

    lifecycle = StreamLifecycle(community, payload, rooms=app.get(ROOMS), sessions=app.get(SESSION_SERVICE),
                                recordings=app.get(RECORDINGS), unpublish=unpublish)
    community.services[LIFECYCLE] = lifecycle
    listeners = app.get(ROOM_LISTENERS)
    if listeners is not None:
        listeners.append(lifecycle.on_room)

    async def start(app: web.Application) -> None:
        # RECORDINGS may be set after the platform is installed (the service mounts VOD).
        lifecycle.recordings = app.get(RECORDINGS)
        await lifecycle.start()

    async def close(app: web.Application) -> None:
        await lifecycle.close()

    app.on_startup.append(start)
    app.on_shutdown.append(close)
    return lifecycle
