"""Follows and notifications: who follows which channel, and what they were told.

* ``POST|DELETE /api/channels/{name}/follow`` — idempotent; answers the new state and the
  channel's follower count.  Following your own channel is refused (400): its owner
  already knows when it goes live.  A private channel can be followed only by those who
  may watch it (its allowed viewers and admins; 403 for others).
* ``GET /api/users/me/following`` — the caller's channels, newest follow first, with
  whether each is live now.
* ``GET /api/notifications`` / ``POST /api/notifications/read`` — the caller's stored
  notifications (:mod:`community.notifications` writes them); nobody reads or marks
  another user's.

Lists page with an opaque cursor (:mod:`community.api.pagination`).  Errors are RFC 9457
problems.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import Select, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from common.problems import HttpProblem

from ..app import COMMUNITY
from ..models import Channel, ChannelViewer, Follow, Notification, Stream, User, utcnow
from .base import ApiRoutes, Call
from .pagination import PageQuery, before, next_cursor

routes = ApiRoutes("social")

MAX_NAME_CHARS = 64
MAX_READ_IDS = 100


class FollowState(BaseModel):
    """The caller's follow of a channel after the request, and the channel's follower count."""

    following: bool
    followers: int


class FollowedChannel(BaseModel):
    name: str
    display_name: str
    live: bool
    stream_id: str | None
    followed_at: datetime


class FollowingPage(BaseModel):
    channels: list[FollowedChannel]
    next_cursor: str | None


class NotificationOut(BaseModel):
    """A stored notification.  ``kind`` ``stream.live``: ``payload`` = ``{stream_id, channel,
    channel_display_name, title, category, category_name, started_at, url}``."""

    id: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    read_at: datetime | None

    @classmethod
    def of(cls, row: Notification) -> NotificationOut:
        return cls(
            id=row.id,
            kind=row.kind,
            payload=row.payload,
            created_at=row.created_at,
            read_at=row.read_at,
        )


class NotificationsQuery(PageQuery):
    """``unread=true``: only unread ones; ``false``: only read ones; absent: all."""

    unread: bool | None = None


class NotificationsPage(BaseModel):
    notifications: list[NotificationOut]
    unread: int
    """The caller's unread notifications in all (not only on this page)."""
    next_cursor: str | None


class ReadIn(BaseModel):
    """Mark ``ids`` (the caller's; others' are ignored) or ``all`` of them read."""

    ids: list[str] | None = Field(default=None, max_length=MAX_READ_IDS)
    all: bool = False

    @model_validator(mode="after")
    def _something(self) -> ReadIn:
        if not self.all and not self.ids:
            raise ValueError("give ids (a non-empty list) or all: true")
        if self.ids and any(len(i) > 40 for i in self.ids):
            raise ValueError("ids are at most 40 characters")
        return self


class UnreadOut(BaseModel):
    unread: int


async def follower_count(session: AsyncSession, channel_id: str) -> int:
    """How many users follow the channel (``Channel.id``)."""
    count = await session.scalar(
        select(func.count()).select_from(Follow).where(Follow.channel_id == channel_id)
    )
    return int(count or 0)


async def _channel(session: AsyncSession, name: str) -> Channel:
    channel = None
    if len(name) <= MAX_NAME_CHARS:
        channel = await session.scalar(select(Channel).where(Channel.name == name))
    if channel is None:
        raise HttpProblem(404, None, "no such channel")
    return channel


async def _may_follow(session: AsyncSession, channel: Channel, call: Call[Any, Any]) -> None:
    if channel.owner_id == call.user.user_id:
        raise HttpProblem(400, None, "you cannot follow your own channel")
    if channel.private and not call.user.is_admin:
        allowed = await session.scalar(
            select(ChannelViewer.user_id).where(
                ChannelViewer.channel_id == channel.id, ChannelViewer.user_id == call.user.user_id
            )
        )
        if allowed is None:
            raise HttpProblem(
                403, None, "this channel is private: only its allowed viewers may follow it"
            )


def _insert_ignoring_duplicates(dialect: str, values: dict[str, Any]) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(Follow).values(**values).on_conflict_do_nothing()


@routes.op(
    "POST",
    "/api/channels/{name}/follow",
    auth="user",
    summary="Follow a channel",
    responses={200: FollowState, 400: None, 404: None},
)
async def follow(call: Call[None, None]) -> FollowState:
    """Follow the channel (again: no change).  400: it is your own; 403: a private channel
    you may not watch; 404: no such channel."""
    db = call.request.app[COMMUNITY].db
    async with db.transaction() as session:
        channel = await _channel(session, call.path("name"))
        await _may_follow(session, channel, call)
        await session.execute(
            _insert_ignoring_duplicates(
                db.dialect,
                {"user_id": call.user.user_id, "channel_id": channel.id, "created_at": utcnow()},
            )
        )
        return FollowState(following=True, followers=await follower_count(session, channel.id))


@routes.op(
    "DELETE",
    "/api/channels/{name}/follow",
    auth="user",
    summary="Unfollow a channel",
    responses={200: FollowState, 404: None},
)
async def unfollow(call: Call[None, None]) -> FollowState:
    """Stop following the channel (not following: no change).  404: no such channel."""
    db = call.request.app[COMMUNITY].db
    async with db.transaction() as session:
        channel = await _channel(session, call.path("name"))
        await session.execute(
            delete(Follow).where(Follow.user_id == call.user.user_id, Follow.channel_id == channel.id)
        )
        return FollowState(following=False, followers=await follower_count(session, channel.id))


@routes.op(
    "GET",
    "/api/users/me/following",
    auth="user",
    query=PageQuery,
    summary="Channels you follow",
    responses={200: FollowingPage},
)
async def following(call: Call[None, PageQuery]) -> FollowingPage:
    """The caller's followed channels, newest follow first; ``live``/``stream_id`` now."""
    query = call.query
    statement: Select[Any] = (
        select(Follow.created_at, Follow.channel_id, Channel.name, User.display_name, Stream.id)
        .join(Channel, Channel.id == Follow.channel_id)
        .join(User, User.id == Channel.owner_id)
        .outerjoin(Stream, and_(Stream.channel_id == Channel.id, Stream.status == "live"))
        .where(Follow.user_id == call.user.user_id)
        .order_by(Follow.created_at.desc(), Follow.channel_id.desc())
        .limit(query.limit + 1)
    )
    page = before(Follow.created_at, Follow.channel_id, query.cursor)
    if page is not None:
        statement = statement.where(page)
    async with call.request.app[COMMUNITY].db.session() as session:
        rows = (await session.execute(statement)).all()
    channels = [
        FollowedChannel(
            name=r.name,
            display_name=r.display_name or r.name,
            live=r.id is not None,
            stream_id=r.id,
            followed_at=r.created_at,
        )
        for r in rows[: query.limit]
    ]
    return FollowingPage(
        channels=channels, next_cursor=next_cursor(rows, query.limit, row_id="channel_id")
    )


async def unread_count(session: AsyncSession, user_id: str) -> int:
    """The user's unread notifications."""
    count = await session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    )
    return int(count or 0)


@routes.op(
    "GET",
    "/api/notifications",
    auth="user",
    query=NotificationsQuery,
    summary="Your notifications",
    responses={200: NotificationsPage},
)
async def notifications(call: Call[None, NotificationsQuery]) -> NotificationsPage:
    """The caller's notifications, newest first, and their unread count."""
    query = call.query
    statement = (
        select(Notification)
        .where(Notification.user_id == call.user.user_id)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(query.limit + 1)
    )
    if query.unread is not None:
        statement = statement.where(
            Notification.read_at.is_(None) if query.unread else Notification.read_at.is_not(None)
        )
    page = before(Notification.created_at, Notification.id, query.cursor)
    if page is not None:
        statement = statement.where(page)
    async with call.request.app[COMMUNITY].db.session() as session:
        rows = (await session.scalars(statement)).all()
        unread = await unread_count(session, call.user.user_id)
    return NotificationsPage(
        notifications=[NotificationOut.of(r) for r in rows[: query.limit]],
        unread=unread,
        next_cursor=next_cursor(rows, query.limit),
    )


@routes.op(
    "POST",
    "/api/notifications/read",
    auth="user",
    body=ReadIn,
    summary="Mark notifications read",
    responses={200: UnreadOut},
)
async def mark_read(call: Call[ReadIn, None]) -> UnreadOut:
    """Mark the given (or all) of the caller's notifications read; ids of other users'
    notifications or unknown ids change nothing.  Answers the unread count left."""
    where = [Notification.user_id == call.user.user_id, Notification.read_at.is_(None)]
    if not call.body.all:
        where.append(Notification.id.in_(call.body.ids or []))
    async with call.request.app[COMMUNITY].db.transaction() as session:
        await session.execute(update(Notification).where(*where).values(read_at=utcnow()))
        return UnreadOut(unread=await unread_count(session, call.user.user_id))
