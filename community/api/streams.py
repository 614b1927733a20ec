"""Streams: go live by API, stop, read one, take one down (admin).

* ``POST /api/streams/start`` — the caller's channel gets a pending stream (or its open one
  is updated) that becomes live when media arrives (:mod:`community.lifecycle`); optionally a
  new stream key, shown once.
* ``POST /api/streams/{id}/stop`` — owner or admin: the stream ends and the channel's WHIP
  session is closed (RFC 9725 §4.2: the session resource is deleted by the service).
* ``GET /api/streams/{id}`` — one stream (private channels: owner, admin, allowed viewers).
* ``POST /api/admin/streams/{id}/takedown`` — admin: ends it, revokes the stream key it went
  live with (``key.revoked``), writes an audit entry.

A stream's JSON (:func:`stream_json`, also the payload of ``stream.started`` /
``stream.ended``) carries absolute URLs built from ``RELAYCAST_PUBLIC_URL``, else the
request's scheme and host (:func:`base_url`); events outside a request use
``RELAYCAST_PUBLIC_URL`` only (relative URLs without it).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.problems import HttpProblem

from .. import lifecycle as lifecycle_module
from ..app import COMMUNITY, Community
from ..models import (
    Category,
    Channel,
    ChannelViewer,
    Stream,
    User,
)
from .base import ApiRoutes, Call, Principal

routes = ApiRoutes("streams")

TAG_RE = re.compile(r"^[\w][\w \-]{0,31}$")
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,47}$"
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"
"""A BCP 47 language tag (RFC 5646 §2.1), simplified: language and subtags."""
MAX_TAGS = 10


class StreamOut(BaseModel):
    """A broadcast of a channel.  Times ISO 8601 UTC; URLs absolute."""

    id: str
    channel: str
    channel_display_name: str
    title: str
    category: str | None
    category_name: str | None
    tags: list[str]
    language: str
    status: Literal["pending", "live", "ended"]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    viewers: int = Field(description="current viewers (0 unless live)")
    peak_viewers: int
    thumbnail_url: str | None
    hls_url: str
    whep_url: str
    whip_url: str
    vod_url: str | None = Field(description="the VOD recording's multivariant playlist, once published")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def no_control(value: str) -> str:
    """``value`` unchanged.  :raises ValueError: it holds control characters (tab, CR and LF
    aside), which no database text column should receive."""
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    return value


def clean_tags(tags: list[str]) -> list[str]:
    """Lower-cased, stripped, de-duplicated (order kept).  :raises ValueError: a bad tag."""
    out: list[str] = []
    for tag in tags:
        value = " ".join(tag.split()).lower()
        if not TAG_RE.fullmatch(value):
            raise ValueError("a tag is 1-32 letters, digits, spaces, '-' or '_'")
        if value not in out:
            out.append(value)
    return out


class StartIn(BaseModel):
    title: str = Field(min_length=1, max_length=140)
    category: str | None = Field(default=None, max_length=48, pattern=SLUG_PATTERN,
                                 description="a category slug (GET /api/categories)")
    tags: list[str] | None = Field(default=None, max_length=MAX_TAGS)
    language: str | None = Field(default=None, min_length=2, max_length=16, pattern=LANGUAGE_PATTERN)
    new_key: bool = Field(default=False, description="also create a stream key (returned once)")

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the title is empty")
        return no_control(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else clean_tags(value)


class StartOut(BaseModel):
    stream: StreamOut
    whip_url: str
    stream_key: str | None = Field(default=None, description="the new stream key (only when new_key)")


class TakedownIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        return no_control(value)


# ---------------------------------------------------------------------- JSON
def base_url(community: Community, request: web.Request | None = None) -> str:
    """``RELAYCAST_PUBLIC_URL``, else the request's ``scheme://host``, else ``""``."""
    if community.config.public_url:
        return community.config.public_url
    if request is not None:
        return f"{request.scheme}://{request.host}"
    return ""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _json(values: dict[str, Any], channel: str, base: str) -> dict[str, Any]:
    thumbnail_at: datetime | None = values.pop("thumbnail_at")
    recording: str | None = values.pop("recording")
    values.update({
        "channel": channel,
        "tags": list(values.get("tags") or []),
        "created_at": _iso(values["created_at"]), "started_at": _iso(values["started_at"]),
        "ended_at": _iso(values["ended_at"]),
        "thumbnail_url": (f"{base}/thumbnails/{channel}.jpg?v={int(thumbnail_at.timestamp())}"
                          if thumbnail_at is not None else None),
        "hls_url": f"{base}/hls/{channel}/master.m3u8",
        "whep_url": f"{base}/whep/{channel}",
        "whip_url": f"{base}/whip/{channel}",
        "vod_url": f"{base}/vod/{recording}" if recording else None,
    })
    return values


_FIELDS = ("id", "title", "category", "tags", "language", "status", "created_at", "started_at", "ended_at",
           "viewers", "peak_viewers", "thumbnail_at", "recording")


def stream_json(stream: Stream, channel: Channel, base_url: str, *, display_name: str = "",
                category_name: str | None = None) -> dict[str, Any]:
    """A stream as :class:`StreamOut` JSON (JSON-safe: times as ISO 8601 strings); also the
    payload of ``stream.started`` / ``stream.ended``.

    :param display_name: the channel owner's display name; ``category_name`` the
        category's name.
    """
    values = {name: getattr(stream, name) for name in _FIELDS}
    values.update(channel_display_name=display_name, category_name=category_name)
    return _json(values, channel.name, base_url)


def row_json(row: Any, base_url: str) -> dict[str, Any]:
    """:func:`stream_json` of a row of :func:`community.search.stream_select`."""
    values = {name: getattr(row, name) for name in _FIELDS}
    values.update(channel_display_name=row.channel_display_name, category_name=row.category_name)
    return _json(values, row.channel, base_url)


async def load_stream(session: AsyncSession, stream_id: str) -> tuple[Stream, Channel, User, str | None] | None:
    """The stream, its channel, the channel's owner and the category name, or ``None``."""
    row = (await session.execute(
        select(Stream, Channel, User, Category.name).join(Channel, Channel.id == Stream.channel_id)
        .join(User, User.id == Channel.owner_id).outerjoin(Category, Category.slug == Stream.category)
        .where(Stream.id == stream_id))).first()
    return None if row is None else (row[0], row[1], row[2], row[3])


async def load_stream_json(community: Community, stream_id: str, base: str | None = None) -> dict[str, Any] | None:
    """:func:`stream_json` of a stream by id (``None``: no such stream)."""
    async with community.db.session() as session:
        found = await load_stream(session, stream_id)
    if found is None:
        return None
    stream, channel, owner, category_name = found
    return stream_json(stream, channel, community.config.public_url if base is None else base,
                       display_name=owner.display_name, category_name=category_name)


async def can_view(session: AsyncSession, channel: Channel, principal: Principal | None) -> bool:
    """Whether ``principal`` may see the channel's streams: public channels everyone; private
    ones the owner, admins and the viewers the owner allowed."""
    if not channel.private:
        return True
    if principal is None:
        return False
    if principal.is_admin or principal.user_id == channel.owner_id:
        return True
    allowed = await session.execute(select(ChannelViewer.user_id).where(
        ChannelViewer.channel_id == channel.id, ChannelViewer.user_id == principal.user_id))
    return allowed.first() is not None


NOT_FOUND = "no such stream"


ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,24}$")
"""What a stream id (:func:`community.models.new_id`) can look like; anything else is 404."""


async def _visible(call: Call[Any, Any], session: AsyncSession) -> tuple[Stream, Channel, User, str | None]:
    stream_id = call.path("id")
    found = await load_stream(session, stream_id) if ID_RE.fullmatch(stream_id) else None
    if found is None or not await can_view(session, found[1], call.principal):
        raise HttpProblem(404, None, NOT_FOUND)  # a private channel's stream is not revealed
    return found


def _out(community: Community, call: Call[Any, Any], found: tuple[Stream, Channel, User, str | None]) -> StreamOut:
    stream, channel, owner, category_name = found
    return StreamOut.model_validate(stream_json(stream, channel, base_url(community, call.request),
                                                display_name=owner.display_name, category_name=category_name))


def _lifecycle(community: Community) -> lifecycle_module.StreamLifecycle:
    found = community.services.get(lifecycle_module.LIFECYCLE)
    assert isinstance(found, lifecycle_module.StreamLifecycle)
    return found


# ---------------------------------------------------------------------- operations
@routes.op("POST", "/api/streams/start", body=StartIn, auth="user",
           responses={201: StartOut, 404: None, 409: None, 422: None},
           summary="Go live: prepare a stream on your channel")
async def start_stream(call: Call[StartIn, None]) -> tuple[int, StartOut]:
    """Creates a pending stream on the caller's channel with this title, category, tags and
    language (or updates the channel's open — pending or live — stream); it becomes live when
    media arrives on the WHIP URL.  With ``new_key`` a new stream key is created and returned
    once.  422: unknown category; 409: the channel holds too many keys; 404: the caller has no
    channel."""
    community = call.request.app[COMMUNITY]
    body = call.body
    try:
        stream_id, key = await _lifecycle(community).prepare(
            call.user.user_id, body.title, category=body.category, tags=body.tags, language=body.language,
            new_key=body.new_key)
    except lifecycle_module.StreamRefused as exc:
        raise HttpProblem(exc.status, None, exc.detail) from None
    out = await _reload(community, call, stream_id)
    return 201, StartOut(stream=out, whip_url=out.whip_url, stream_key=key)


@routes.op("GET", "/api/streams/{id}", auth="optional", responses={200: StreamOut, 404: None},
           summary="One stream")
async def get_stream(call: Call[None, None]) -> StreamOut:
    """404 for unknown ids and for streams of private channels the caller may not watch."""
    community = call.request.app[COMMUNITY]
    async with community.db.session() as session:
        found = await _visible(call, session)
    return _out(community, call, found)


@routes.op("POST", "/api/streams/{id}/stop", auth="user", responses={200: StreamOut, 403: None, 404: None},
           summary="End a stream (owner or admin)")
async def stop_stream(call: Call[None, None]) -> StreamOut:
    """Ends the stream and closes the channel's WHIP session; idempotent (an ended stream is
    returned as it is).  403: not the channel's owner nor an admin."""
    community = call.request.app[COMMUNITY]
    async with community.db.session() as session:
        stream, channel, _owner, _cat = await _visible(call, session)
    if channel.owner_id != call.user.user_id and not call.user.is_admin:
        raise HttpProblem(403, None, "only the channel's owner or an admin can stop its stream")
    if stream.status != "ended":
        await _lifecycle(community).stop(stream.id)
    return await _reload(community, call, stream.id)


@routes.op("POST", "/api/admin/streams/{id}/takedown", body=TakedownIn, auth="admin",
           responses={200: StreamOut, 404: None}, summary="Take a stream down (admin)")
async def takedown_stream(call: Call[TakedownIn, None]) -> StreamOut:
    """Ends the stream, revokes the stream key it went live with (``key.revoked``), closes the
    channel's WHIP session and writes an audit entry (``stream.takedown``)."""
    community = call.request.app[COMMUNITY]
    stream_id = call.path("id")
    if not ID_RE.fullmatch(stream_id):
        raise HttpProblem(404, None, NOT_FOUND)
    try:
        await _lifecycle(community).take_down(stream_id, call.user.user_id, call.body.reason)
    except lifecycle_module.StreamRefused as exc:
        raise HttpProblem(exc.status, None, exc.detail) from None
    return await _reload(community, call, stream_id)


async def _reload(community: Community, call: Call[Any, Any], stream_id: str) -> StreamOut:
    async with community.db.session() as session:
        found = await load_stream(session, stream_id)
    if found is None:  # deleted meanwhile (its channel was)
        raise HttpProblem(404, None, NOT_FOUND)
    return _out(community, call, found)


def setup(app: web.Application) -> None:
    """Install the stream lifecycle (:mod:`community.lifecycle`)."""
    community = app[COMMUNITY]

    async def payload(stream_id: str) -> dict[str, Any] | None:
        return await load_stream_json(community, stream_id)

    lifecycle_module.install(app, payload)
