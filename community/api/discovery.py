"""Discovery: the directory of live streams, search, categories, a channel's past broadcasts.

* ``GET /api/streams`` — the directory (default: live streams, most viewers first);
* ``GET /api/streams/search`` — full-text search over title, channel name, display name,
  tags and category name (:mod:`community.search`: SQLite FTS5 / PostgreSQL ``tsvector``);
* ``GET /api/categories`` — every category with its live streams and viewers;
* ``GET /api/channels/{name}/videos`` — the channel's recorded broadcasts (VOD), newest first.

Lists are keyset-paginated: pass the answer's ``next_cursor`` as ``cursor`` (opaque; 400
when it is not one this API returned, or belongs to another ``sort``).  Only public
channels of unsuspended users are listed; a private channel's videos are listed for its
owner, admins and allowed viewers only (404 to everyone else).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select

from common.names import is_room_name
from common.problems import HttpProblem
from signaling.app_keys import RECORDINGS

from ..app import COMMUNITY
from ..models import Channel, Stream, utcnow
from ..search import BadCursor, Cursor, StreamFilter, category_counts, find_streams
from .base import ApiRoutes, Call
from .pagination import PageQuery, before, next_cursor
from .streams import LANGUAGE_PATTERN, SLUG_PATTERN, StreamOut, base_url, can_view, row_json

routes = ApiRoutes("discovery")


class _ListQuery(BaseModel):
    category: str | None = Field(default=None, max_length=48, pattern=SLUG_PATTERN, description="a category slug")
    tag: str | None = Field(default=None, max_length=32, pattern=r"^[^\x00-\x1f\x7f]*$")
    language: str | None = Field(default=None, max_length=16, pattern=LANGUAGE_PATTERN)
    sort: Literal["viewers", "recent"] = "viewers"
    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=20, ge=1, le=100)

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        return None if value is None else " ".join(value.split()).lower()


class DirectoryQuery(_ListQuery):
    live: bool = Field(default=True, description="true: live streams; false: ended broadcasts")


class SearchQuery(_ListQuery):
    q: str = Field(default="", max_length=1000, description="words to find (prefix match, all required)")
    live: bool | None = Field(default=None, description="true: live only; false: ended only; absent: both")


class StreamList(BaseModel):
    streams: list[StreamOut]
    next_cursor: str | None


class CategoryOut(BaseModel):
    slug: str
    name: str
    live_streams: int
    viewers: int


class CategoryList(BaseModel):
    categories: list[CategoryOut]


class VideoOut(BaseModel):
    stream_id: str
    title: str
    category: str | None
    started_at: datetime
    ended_at: datetime
    duration_s: float
    url: str = Field(description="the recording's multivariant playlist (VOD)")


class VideoList(BaseModel):
    videos: list[VideoOut]
    next_cursor: str | None


def _cursor(token: str | None, sort: str) -> Cursor | None:
    if not token:
        return None
    try:
        return Cursor.decode(token, sort)  # type: ignore[arg-type]
    except BadCursor as exc:
        raise HttpProblem(400, None, f"query: cursor: {exc}") from None


async def _list(call: Call[None, Any], text: str, live: bool | None) -> StreamList:
    query = call.query
    community = call.request.app[COMMUNITY]
    wanted = StreamFilter(text=text, category=query.category, tag=query.tag, language=query.language, live=live,
                          sort=query.sort, cursor=_cursor(query.cursor, query.sort), limit=query.limit)
    async with community.db.session() as session:
        rows, cursor = await find_streams(session, wanted)
    base = base_url(community, call.request)
    return StreamList(streams=[StreamOut.model_validate(row_json(r, base)) for r in rows], next_cursor=cursor)


@routes.op("GET", "/api/streams", query=DirectoryQuery, responses={200: StreamList},
           summary="The directory: live streams, most viewers first")
async def directory(call: Call[None, DirectoryQuery]) -> StreamList:
    """Filters: ``category`` (slug), ``tag``, ``language``; ``live=false`` lists ended
    broadcasts instead.  ``sort=viewers`` (default) or ``recent`` (start time)."""
    return await _list(call, "", call.query.live)


@routes.op("GET", "/api/streams/search", query=SearchQuery, responses={200: StreamList},
           summary="Search streams by title, channel, tags and category")
async def search(call: Call[None, SearchQuery]) -> StreamList:
    """Every word of ``q`` must match (as a word prefix) the title, channel name, display
    name, a tag or the category name; punctuation is ignored.  Filters as the directory;
    without ``live`` both live and ended streams are found."""
    return await _list(call, call.query.q, call.query.live)


@routes.op("GET", "/api/categories", responses={200: CategoryList},
           summary="Categories with their live streams and viewers")
async def categories(call: Call[None, None]) -> CategoryList:
    """Every category, most viewers first: ``live_streams`` and ``viewers`` count live streams
    of public channels."""
    community = call.request.app[COMMUNITY]
    async with community.db.session() as session:
        rows = await category_counts(session)
    return CategoryList(categories=[CategoryOut(slug=r.slug, name=r.name, live_streams=int(r.live_streams),
                                                viewers=int(r.viewers)) for r in rows])


@routes.op("GET", "/api/channels/{name}/videos", query=PageQuery, auth="optional",
           responses={200: VideoList, 404: None}, summary="A channel's past broadcasts (recordings)")
async def videos(call: Call[None, PageQuery]) -> VideoList:
    """The channel's ended streams that have a published VOD recording (and, with recording on,
    are still within its retention), newest first.  404: no such channel, or a private channel
    the caller may not watch."""
    community = call.request.app[COMMUNITY]
    query = call.query
    after = before(Stream.ended_at, Stream.id, query.cursor)
    async with community.db.session() as session:
        name = call.path("name").lower()
        channel = (await session.execute(select(Channel).where(Channel.name == name))).scalar_one_or_none() \
            if is_room_name(name) else None
        if channel is None or not await can_view(session, channel, call.principal):
            raise HttpProblem(404, None, "no such channel")
        stmt = select(Stream).where(Stream.channel_id == channel.id, Stream.status == "ended",
                                    Stream.recording.is_not(None), Stream.started_at.is_not(None),
                                    Stream.ended_at.is_not(None))
        library = call.request.app.get(RECORDINGS)
        retention = getattr(library, "retention", None)
        if isinstance(retention, timedelta):
            stmt = stmt.where(Stream.ended_at > utcnow() - retention)
        if after is not None:
            stmt = stmt.where(after)
        stmt = stmt.order_by(Stream.ended_at.desc(), Stream.id.desc()).limit(query.limit + 1)
        rows = list((await session.execute(stmt)).scalars())
    base = base_url(community, call.request)
    page = rows[:query.limit]
    out = [VideoOut(stream_id=s.id, title=s.title, category=s.category, started_at=s.started_at,
                    ended_at=s.ended_at, duration_s=round((s.ended_at - s.started_at).total_seconds(), 1),
                    url=f"{base}/vod/{s.recording}") for s in page if s.started_at and s.ended_at]
    return VideoList(videos=out, next_cursor=next_cursor(rows, query.limit, at="ended_at"))
