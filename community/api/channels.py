"""``/api/channels/{name}``: a channel's settings, its stream keys, and (private channels)
its allowed viewers and playback tokens.

Object-level authorization: the settings may be changed by the owner or an admin; the keys
are the owner's alone (403 for anyone else); the viewer list by the owner or an admin; a
playback token of a private channel goes to the owner, an admin or an allowed viewer.

A stream key is shown once, in the answer that creates it (``POST …/keys``, ``…/rotate``);
afterwards only its ``hint``.  Revoking or rotating a key ends the live WHIP session that
was admitted with it (on any signaling instance) and emits ``key.revoked``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.problems import HttpProblem
from signaling.app_keys import ROOMS

from .. import publish
from ..app import COMMUNITY
from ..keys import (
    MAX_KEYS_PER_CHANNEL,
    active_keys,
    create_key,
    list_keys,
    revoke_key,
    revoked_event,
)
from ..models import Category, Channel, ChannelViewer, Follow, Stream, StreamKey, User
from ..tokens import tokens_of
from .base import ApiRoutes, Call

routes = ApiRoutes("channels")

PLAYBACK_TTL_S = 300.0
"""Lifetime of a playback token, s (players fetch a new one before it runs out)."""

Tag = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=32)]


# ------------------------------------------------------------------ models
class ChannelOwner(BaseModel):
    """The channel's owner."""

    id: str
    username: str
    display_name: str


class ChannelOut(BaseModel):
    """A channel: its settings and whether it is live."""

    name: str
    owner: ChannelOwner
    title: str
    category: str | None
    description: str
    language: str
    tags: list[str]
    private: bool
    followers: int
    live: bool
    stream_id: str | None
    viewers: int
    created_at: datetime
    following: bool | None = None
    """Whether the caller follows the channel; ``null`` when not logged in."""


class ChannelPatch(BaseModel):
    """Fields to change; absent ones stay (``category: null`` clears it)."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, max_length=140)
    category: str | None = Field(None, max_length=48)
    description: str | None = Field(None, max_length=2000)
    language: str | None = Field(None, min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
    tags: list[Tag] | None = Field(None, max_length=10)
    private: bool | None = None


class StreamKeyInfo(BaseModel):
    """A stream key without its secret."""

    id: str
    label: str
    hint: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewStreamKey(StreamKeyInfo):
    """A stream key with its secret ``key`` — shown this once."""

    key: str


class StreamKeyList(BaseModel):
    """The channel's keys, newest first (revoked ones included)."""

    keys: list[StreamKeyInfo]


class KeyCreate(BaseModel):
    """A new key's label."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field("", max_length=64)


class ViewerIn(BaseModel):
    """The user to allow (by username)."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=254)


class ViewerOut(BaseModel):
    """A user allowed to watch a private channel."""

    id: str
    username: str
    display_name: str
    added_at: datetime


class ViewerList(BaseModel):
    """The users allowed to watch the channel."""

    viewers: list[ViewerOut]


class PlaybackToken(BaseModel):
    """A playback token (JWT) for ``?token=`` on WHEP, LL-HLS and VOD URLs of the channel."""

    token: str
    expires_at: datetime


# ----------------------------------------------------------------- helpers
async def _load(session: AsyncSession, name: str) -> tuple[Channel, User]:
    """The channel ``name`` and its owner.  :raises HttpProblem: 404."""
    row = (await session.execute(select(Channel, User).join(User, User.id == Channel.owner_id)
                                 .where(Channel.name == name))).one_or_none()
    if row is None:
        raise HttpProblem(404, None, "no such channel")
    return row[0], row[1]


def _owner_only(call: Call[Any, Any], channel: Channel) -> None:
    if call.user.user_id != channel.owner_id:
        raise HttpProblem(403, None, "only the channel's owner may manage its stream keys")


def _owner_or_admin(call: Call[Any, Any], channel: Channel) -> None:
    if call.user.user_id != channel.owner_id and not call.user.is_admin:
        raise HttpProblem(403, None, "only the channel's owner or an admin may do this")


async def channel_json(request: web.Request, session: AsyncSession, channel: Channel, owner: User,
                       viewer_id: str | None = None) -> ChannelOut:
    """The :class:`ChannelOut` of ``channel``: followers from the database, live state and
    viewers from this instance's room state when it has one, else from the open stream;
    ``following`` for ``viewer_id`` (the caller) when given."""
    following = None
    if viewer_id is not None:
        following = (await session.get(Follow, (viewer_id, channel.id))) is not None
    followers = (await session.execute(
        select(func.count()).select_from(Follow).where(Follow.channel_id == channel.id))).scalar_one()
    stream = (await session.execute(select(Stream.id, Stream.viewers).where(
        Stream.channel_id == channel.id, Stream.status == "live"))).one_or_none()
    rooms = request.app.get(ROOMS)
    room = rooms.get(channel.name) if rooms is not None else None
    viewers = room.viewers if room is not None and room.live else (stream.viewers if stream else 0)
    return ChannelOut(
        name=channel.name,
        owner=ChannelOwner(id=owner.id, username=owner.username, display_name=owner.display_name),
        title=channel.title, category=channel.category, description=channel.description,
        language=channel.language, tags=list(channel.tags or []), private=channel.private,
        followers=int(followers), live=stream is not None, stream_id=stream.id if stream else None,
        viewers=int(viewers), created_at=channel.created_at, following=following)


def _key_info(key: StreamKey) -> StreamKeyInfo:
    return StreamKeyInfo(id=key.id, label=key.label, hint=key.hint, created_at=key.created_at,
                         last_used_at=key.last_used_at, revoked_at=key.revoked_at)


def _new_key(key: StreamKey, clear: str) -> NewStreamKey:
    return NewStreamKey(**_key_info(key).model_dump(), key=clear)


async def _key_of(session: AsyncSession, channel: Channel, key_id: str) -> StreamKey:
    key = (await session.execute(select(StreamKey).where(
        StreamKey.id == key_id, StreamKey.channel_id == channel.id))).scalar_one_or_none()
    if key is None:
        raise HttpProblem(404, None, "the channel has no such key")
    return key


async def _revoked(request: web.Request, channel: str, key: StreamKey) -> None:
    """After the commit: tell every listener (the publish authority ends the live session)."""
    await request.app[COMMUNITY].events.emit("key.revoked", revoked_event(channel, key))


# --------------------------------------------------------------- channels
@routes.op("GET", "/api/channels/{name}", summary="A channel", auth="optional",
           responses={200: ChannelOut, 404: None})
async def get_channel(call: Call[None, None]) -> ChannelOut:
    """The channel's settings, follower count and live state.  404 unknown channel."""
    async with call.request.app[COMMUNITY].db.session() as session:
        channel, owner = await _load(session, call.path("name"))
        viewer = call.principal.user_id if call.principal is not None else None
        return await channel_json(call.request, session, channel, owner, viewer)


@routes.op("PATCH", "/api/channels/{name}", summary="Change a channel's settings", auth="user",
           body=ChannelPatch, responses={200: ChannelOut, 404: None, 422: None})
async def patch_channel(call: Call[ChannelPatch, None]) -> ChannelOut:
    """Owner or admin (403 others).  422 unknown ``category`` (see ``GET /api/categories``)."""
    community = call.request.app[COMMUNITY]
    body = call.body
    async with community.db.transaction() as session:
        channel, owner = await _load(session, call.path("name"))
        _owner_or_admin(call, channel)
        fields = body.model_fields_set
        if "category" in fields and body.category is not None:
            if await session.get(Category, body.category) is None:
                raise HttpProblem(422, None, f"no category {body.category!r}")
        for name in ("title", "description", "language", "private"):
            value = getattr(body, name)
            if name in fields and value is not None:
                setattr(channel, name, value)
        if "category" in fields:
            channel.category = body.category
        if "tags" in fields and body.tags is not None:
            channel.tags = list(dict.fromkeys(body.tags))
        await session.flush()
        out = await channel_json(call.request, session, channel, owner)
    await community.events.emit("channel.updated", {"name": channel.name})
    return out


# -------------------------------------------------------------------- keys
@routes.op("GET", "/api/channels/{name}/keys", summary="A channel's stream keys (owner)", auth="user",
           responses={200: StreamKeyList, 404: None})
async def get_keys(call: Call[None, None]) -> StreamKeyList:
    """Every key with its hint, never the secret.  403 for anyone but the owner."""
    async with call.request.app[COMMUNITY].db.session() as session:
        channel, _ = await _load(session, call.path("name"))
        _owner_only(call, channel)
        return StreamKeyList(keys=[_key_info(k) for k in await list_keys(session, channel.id)])


@routes.op("POST", "/api/channels/{name}/keys", summary="Create a stream key (shown once)", auth="user",
           body=KeyCreate, responses={201: NewStreamKey, 404: None, 409: None})
async def post_key(call: Call[KeyCreate, None]) -> tuple[int, NewStreamKey]:
    """201 with the key in ``key`` — the only time it is shown.  409 when the channel already
    holds the maximum of unrevoked keys (20)."""
    async with call.request.app[COMMUNITY].db.transaction() as session:
        channel, _ = await _load(session, call.path("name"))
        _owner_only(call, channel)
        if await active_keys(session, channel.id) >= MAX_KEYS_PER_CHANNEL:
            raise HttpProblem(409, None, f"a channel holds at most {MAX_KEYS_PER_CHANNEL} active keys; "
                                         "revoke one first")
        key, clear = await create_key(session, channel.id, call.body.label)
    return 201, _new_key(key, clear)


@routes.op("DELETE", "/api/channels/{name}/keys/{keyId}", summary="Revoke a stream key", auth="user",
           responses={204: None, 404: None})
async def delete_key(call: Call[None, None]) -> tuple[int, None]:
    """The key stops working at once; a live WHIP session admitted with it ends.  Revoking
    a revoked key is a no-op (204)."""
    async with call.request.app[COMMUNITY].db.transaction() as session:
        channel, _ = await _load(session, call.path("name"))
        _owner_only(call, channel)
        key = await _key_of(session, channel, call.path("keyId"))
        changed = await revoke_key(session, key)
    if changed:
        await _revoked(call.request, channel.name, key)
    return 204, None


@routes.op("POST", "/api/channels/{name}/keys/{keyId}/rotate", summary="Replace a stream key",
           auth="user", responses={201: NewStreamKey, 404: None, 409: None})
async def rotate_key(call: Call[None, None]) -> tuple[int, NewStreamKey]:
    """Revoke the key (its live session ends) and create a new one with the same label,
    shown once.  409 when the key is already revoked."""
    async with call.request.app[COMMUNITY].db.transaction() as session:
        channel, _ = await _load(session, call.path("name"))
        _owner_only(call, channel)
        old = await _key_of(session, channel, call.path("keyId"))
        if not await revoke_key(session, old):
            raise HttpProblem(409, None, "the key is already revoked; create a new one")
        key, clear = await create_key(session, channel.id, old.label)
    await _revoked(call.request, channel.name, old)
    return 201, _new_key(key, clear)


# ---------------------------------------------------------- private channels
@routes.op("GET", "/api/channels/{name}/viewers", summary="Users allowed to watch (owner, admin)",
           auth="user", responses={200: ViewerList, 404: None})
async def get_viewers(call: Call[None, None]) -> ViewerList:
    async with call.request.app[COMMUNITY].db.session() as session:
        channel, _ = await _load(session, call.path("name"))
        _owner_or_admin(call, channel)
        rows = await session.execute(
            select(User, ChannelViewer.created_at).join(ChannelViewer, ChannelViewer.user_id == User.id)
            .where(ChannelViewer.channel_id == channel.id).order_by(ChannelViewer.created_at, User.id))
        return ViewerList(viewers=[ViewerOut(id=u.id, username=u.username, display_name=u.display_name,
                                             added_at=at) for u, at in rows.all()])


@routes.op("POST", "/api/channels/{name}/viewers", summary="Allow a user to watch (owner, admin)",
           auth="user", body=ViewerIn, responses={201: ViewerOut, 404: None})
async def post_viewer(call: Call[ViewerIn, None]) -> tuple[int, ViewerOut]:
    """Allow ``username`` (idempotent: 201 with the existing entry).  404 unknown channel or
    user."""
    async with call.request.app[COMMUNITY].db.transaction() as session:
        channel, _ = await _load(session, call.path("name"))
        _owner_or_admin(call, channel)
        user = (await session.execute(
            select(User).where(User.username == call.body.username.lower()))).scalar_one_or_none()
        if user is None:
            raise HttpProblem(404, None, "no such user")
        entry = await session.get(ChannelViewer, (channel.id, user.id))
        if entry is None:
            entry = ChannelViewer(channel_id=channel.id, user_id=user.id)
            session.add(entry)
            await session.flush()
        return 201, ViewerOut(id=user.id, username=user.username, display_name=user.display_name,
                              added_at=entry.created_at)


@routes.op("DELETE", "/api/channels/{name}/viewers/{userId}", summary="Disallow a viewer (owner, admin)",
           auth="user", responses={204: None, 404: None})
async def delete_viewer(call: Call[None, None]) -> tuple[int, None]:
    """Tokens already minted for the user stay valid until they expire (at most 300 s)."""
    async with call.request.app[COMMUNITY].db.transaction() as session:
        channel, _ = await _load(session, call.path("name"))
        _owner_or_admin(call, channel)
        entry = await session.get(ChannelViewer, (channel.id, call.path("userId")))
        if entry is None:
            raise HttpProblem(404, None, "the user is not an allowed viewer of this channel")
        await session.delete(entry)
    return 204, None


@routes.op("POST", "/api/channels/{name}/playback-token", summary="A playback token for the channel",
           auth="user", responses={200: PlaybackToken, 404: None})
async def post_playback_token(call: Call[None, None]) -> PlaybackToken:
    """A JWT for ``?token=`` on the channel's WHEP, LL-HLS and VOD URLs, valid 300 s.  A
    private channel's token goes to its owner, an admin or an allowed viewer (403 others);
    a public channel's to any logged-in user."""
    community = call.request.app[COMMUNITY]
    async with community.db.session() as session:
        channel, _ = await _load(session, call.path("name"))
        user = call.user
        if channel.private and user.user_id != channel.owner_id and not user.is_admin:
            allowed = await session.get(ChannelViewer, (channel.id, user.user_id))
            if allowed is None:
                raise HttpProblem(403, None, "this channel is private and you are not one of its viewers")
    token, expires_at = await tokens_of(call.request.app).issue_playback(channel.name, user.user_id,
                                                                         PLAYBACK_TTL_S)
    return PlaybackToken(token=token, expires_at=expires_at)


def setup(app: web.Application) -> None:
    """Channels become the signaling app's rooms (:func:`community.publish.install`)."""
    publish.install(app)
