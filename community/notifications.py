"""Go-live notifications: when a channel goes live, every follower gets one stored
notification and, when a page of theirs is connected, a Socket.IO ``notification`` event.

* Trigger: the ``stream.started`` platform event (:mod:`community.events`; payload =
  :func:`community.api.streams.stream_json`), emitted once per go-live by the instance that
  won the database transition, so the fan-out runs once in a cluster.
* Storage: a ``Notification`` of kind :data:`KIND_LIVE` per follower, written in batches of
  :data:`BATCH` rows (one ``SELECT`` of follower ids by keyset and one multi-row ``INSERT``
  per batch, committed per batch): a channel with 100,000 followers costs 100 round trips
  of each, not 100,000.  A private channel notifies only followers who may still watch it.
* Push: after each batch commits, ``notification`` (the stored :class:`NotificationOut`
  JSON) to Socket.IO room ``user:{id}`` on the pages' namespace.  In Redis mode the
  signaling app's client manager carries each emit to every instance, so the follower's
  page gets it wherever it is connected.
* Identity of a page's Socket.IO connection (:data:`signaling.browser.SIO_IDENTIFY`): the
  ``rc_access`` cookie of the handshake (or ``auth = {"token": <access JWT>}`` from a
  non-browser client), verified like an API request (RFC 7519 §7.2; suspended users get
  nothing); a valid one puts the connection in ``user:{sub}``.

The fan-out runs as a task of its own (the emitter does not wait for 100,000 rows); a
process killed in the middle of one leaves the batches already committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import and_, insert, select

from signaling.app_keys import SIO
from signaling.browser import NAMESPACE, SIO_IDENTIFY, PageIdentity

from .api.social import NotificationOut
from .app import COMMUNITY, Community
from .auth import ACCESS_COOKIE, suspended_of
from .models import Channel, ChannelViewer, Follow, Notification, User, new_id, utcnow
from .tokens import InvalidToken, tokens_of

logger = logging.getLogger(__name__)

KIND_LIVE = "stream.live"
EVENT = "notification"
"""The Socket.IO event a follower's pages get: the stored notification's JSON."""
BATCH = 1000
"""Followers per batch: one SELECT and one multi-row INSERT each."""
EMITS_IN_FLIGHT = 64
"""Socket.IO emits awaited together (each is one Redis PUBLISH in Redis mode)."""
PAYLOAD_KEYS = (
    "stream_id",
    "channel",
    "channel_display_name",
    "title",
    "category",
    "category_name",
    "started_at",
)


def user_room(user_id: str) -> str:
    """The Socket.IO room of a user's pages: ``user:{id}``."""
    return f"user:{user_id}"


def live_payload(stream: dict[str, Any]) -> dict[str, Any]:
    """The stored payload of a go-live notification from a ``stream.started`` payload."""
    payload = {key: stream.get(key) for key in PAYLOAD_KEYS}
    payload["stream_id"] = stream.get("id")
    payload["url"] = f"/watch/{stream.get('channel')}"
    return payload


class Notifier:
    """Writes and pushes go-live notifications (module docstring).

    :param app: the signaling app with the platform installed (``app[SIO]`` is optional:
        without Socket.IO, notifications are only stored).
    :param batch: followers per batch.
    """

    def __init__(self, app: web.Application, batch: int = BATCH) -> None:
        self.app = app
        self.batch = batch
        self.tasks: set[asyncio.Task[int]] = set()
        self.finished = asyncio.Event()
        """Set each time a fan-out ends (tests await it)."""

    @property
    def community(self) -> Community:
        return self.app[COMMUNITY]

    async def on_stream_started(self, event: str, stream: dict[str, Any]) -> None:
        """``stream.started`` listener: start the fan-out and return at once."""
        task = asyncio.create_task(
            self._fan_out_logged(stream), name=f"notify-{stream.get('channel')}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fan_out_logged(self, stream: dict[str, Any]) -> int:
        try:
            return await self.fan_out(stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "go-live notifications failed", extra={"channel": stream.get("channel")}
            )
            return 0
        finally:
            self.finished.set()

    async def fan_out(self, stream: dict[str, Any]) -> int:
        """Store and push a :data:`KIND_LIVE` notification to each follower of the stream's
        channel.  :returns: how many were written."""
        db = self.community.db
        async with db.session() as session:
            channel = await session.scalar(
                select(Channel).where(Channel.name == stream.get("channel"))
            )
        if channel is None:
            return 0
        payload = live_payload(stream)
        written = 0
        async for followers in self._followers(channel):
            created_at = utcnow()
            rows = [
                {
                    "id": new_id(),
                    "user_id": user_id,
                    "kind": KIND_LIVE,
                    "payload": payload,
                    "created_at": created_at,
                    "read_at": None,
                }
                for user_id in followers
            ]
            async with db.transaction() as session:
                await session.execute(insert(Notification), rows)
            written += len(rows)
            await self._push(rows)
        logger.info("go-live notifications: %d", written, extra={"channel": channel.name})
        return written

    async def _followers(self, channel: Channel) -> AsyncIterator[list[str]]:
        """The channel's follower ids in batches (keyset on ``user_id``), skipping suspended
        users and, for a private channel, followers no longer allowed to watch it."""
        last = ""
        while True:
            statement = (
                select(Follow.user_id)
                .join(User, User.id == Follow.user_id)
                .where(
                    Follow.channel_id == channel.id,
                    Follow.user_id > last,
                    User.suspended_at.is_(None),
                )
                .order_by(Follow.user_id)
                .limit(self.batch)
            )
            if channel.private:
                statement = statement.join(
                    ChannelViewer,
                    and_(
                        ChannelViewer.channel_id == channel.id,
                        ChannelViewer.user_id == Follow.user_id,
                    ),
                )
            async with self.community.db.session() as session:
                ids = list((await session.scalars(statement)).all())
            if not ids:
                return
            yield ids
            if len(ids) < self.batch:
                return
            last = ids[-1]

    async def _push(self, rows: list[dict[str, Any]]) -> None:
        sio = self.app.get(SIO)
        if sio is None:
            return
        for start in range(0, len(rows), EMITS_IN_FLIGHT):
            chunk = rows[start : start + EMITS_IN_FLIGHT]
            results = await asyncio.gather(
                *(
                    sio.emit(
                        EVENT, _event_json(row), room=user_room(row["user_id"]), namespace=NAMESPACE
                    )
                    for row in chunk
                ),
                return_exceptions=True,
            )
            failed = sum(isinstance(r, Exception) for r in results)
            if failed:
                logger.warning("%d notification pushes failed", failed)

    async def identify(self, request: web.Request, auth: Any) -> PageIdentity | list[str]:
        """:data:`signaling.browser.SIO_IDENTIFY` hook: for a valid access token in the
        ``rc_access`` cookie (or ``auth["token"]``) the room ``user:{id}`` and the user (who
        the page chats as), else ``[]``."""
        token = request.cookies.get(ACCESS_COOKIE)
        if not token and isinstance(auth, dict) and isinstance(auth.get("token"), str):
            token = auth["token"]
        if not token or len(token) > 4096:
            return []
        try:
            claims = tokens_of(self.app).verify_access(token)
        except (InvalidToken, RuntimeError):
            return []
        with contextlib.suppress(RuntimeError, KeyError):
            if suspended_of(self.app).contains(claims.user_id):
                return []
        return PageIdentity([user_room(claims.user_id)], claims.user_id, claims.username)

    async def close(self) -> None:
        """Cancel fan-outs still running (their committed batches stay)."""
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _event_json(row: dict[str, Any]) -> dict[str, Any]:
    created: datetime = row["created_at"]
    out = NotificationOut(
        id=row["id"], kind=row["kind"], payload=row["payload"], created_at=created, read_at=None
    )
    return out.model_dump(mode="json")


NOTIFIER = web.AppKey("notifier", Notifier)


def notifier_of(app: web.Application) -> Notifier:
    return app[NOTIFIER]


def setup(app: web.Application) -> None:
    """Subscribe to ``stream.started`` and identify the pages' Socket.IO connections."""
    notifier = Notifier(app)
    app[NOTIFIER] = notifier
    app[COMMUNITY].events.subscribe(notifier.on_stream_started, "stream.started")
    app[COMMUNITY].services["notifier"] = notifier
    app.setdefault(SIO_IDENTIFY, []).append(notifier.identify)

    async def stop(app: web.Application) -> None:
        await notifier.close()

    app.on_shutdown.append(stop)
