"""Finding streams: full-text search, the directory's filters and keyset pagination.

Full text runs on each database's own engine (the index is built by Alembic revision
``0002``, kept in step by triggers):

* SQLite: FTS5 table ``stream_search`` (rowid = ``streams.rowid``; ``unicode61``
  tokenizer, diacritics removed), queried with ``MATCH``;
* PostgreSQL: ``streams.search`` ``tsvector`` (configuration ``relaycast_search``: ``simple``
  plus ``unaccent``) with a GIN index, queried with ``@@ to_tsquery('relaycast_search', …)``.

Both index a stream's title, channel name, the owner's display name, tags and category
name.  User input never becomes query syntax: :func:`terms` keeps only runs of letters and
digits (at most :data:`MAX_TERMS` of :data:`MAX_TERM_CHARS`), and each term is rendered as a
quoted prefix term (FTS5 ``"term"*``; tsquery ``'term':*``), all terms required (AND); the
query string is a bound parameter.

Pages are keyset-paginated (never ``OFFSET``): ``sort=viewers`` orders by
``(viewers, id)`` descending, ``sort=recent`` by ``(started_at, id)`` descending; the
cursor is the last row's sort key, base64url-encoded JSON (:class:`Cursor`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import Integer, Select, bindparam, exists, func, select, text, tuple_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Category, Channel, Stream, StreamTag, User, UtcDateTime

Sort = Literal["viewers", "recent"]

MAX_TERMS = 8
"""Terms of a search query used (the rest are ignored)."""
MAX_TERM_CHARS = 48
"""Characters of one term used."""
MAX_CURSOR_CHARS = 200

_TERM = re.compile(r"[^\W_]+")
_CURSOR_ID = re.compile(r"^[A-Za-z0-9_-]{1,24}$")

STREAMS = Stream.__table__
CHANNELS = Channel.__table__
USERS = User.__table__
CATEGORIES = Category.__table__
STREAM_TAGS = StreamTag.__table__


class BadCursor(ValueError):
    """A ``cursor`` that this module did not write (or written for another sort)."""


@dataclass(frozen=True)
class Cursor:
    """The sort key of the last row of a page: ``value`` (viewers: int; recent: ``started_at``
    ISO 8601) and the stream ``id`` (the tie-breaker)."""

    sort: Sort
    value: int | str
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.sort, self.value, self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str, sort: Sort) -> Cursor:
        """:raises BadCursor: not base64url JSON ``[sort, value, id]`` of this ``sort``."""
        if len(token) > MAX_CURSOR_CHARS:
            raise BadCursor("cursor too long")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw.decode())
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise BadCursor("cursor is not one this API returned") from None
        if not (isinstance(data, list) and len(data) == 3 and isinstance(data[2], str)
                and _CURSOR_ID.fullmatch(data[2])):
            raise BadCursor("cursor is not one this API returned")
        kind, value, stream_id = data
        if kind != sort:
            raise BadCursor(f"cursor belongs to sort={kind!r}, not sort={sort!r}")
        if sort == "viewers":
            if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31):
                raise BadCursor("cursor is not one this API returned")
        elif not (isinstance(value, str) and _aware(value)):
            raise BadCursor("cursor is not one this API returned")
        return cls(sort, value, stream_id)


def _aware(value: str) -> bool:
    """Whether ``value`` is an ISO 8601 time with a UTC offset."""
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def terms(q: str) -> list[str]:
    """The search terms of ``q``: NFKC-normalized, lower-cased runs of letters and digits.

    >>> terms('Rust "NEAR(" -async* ')
    ['rust', 'near', 'async']
    """
    normalized = unicodedata.normalize("NFKC", q).casefold()
    return [t[:MAX_TERM_CHARS] for t in _TERM.findall(normalized)[:MAX_TERMS]]


def fts5_query(words: Sequence[str]) -> str:
    """An FTS5 query: every term a quoted prefix term, all required (SQLite FTS5 §3)."""
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words)


def tsquery(words: Sequence[str]) -> str:
    """A ``to_tsquery`` text: every term a quoted prefix lexeme, ANDed (PostgreSQL §12.3.2)."""
    return " & ".join("'" + w.replace("'", "''").replace("\\", "\\\\") + "':*" for w in words)


@dataclass(frozen=True)
class StreamFilter:
    """What to list.

    :ivar text: the user's search text ("" = no text condition).
    :ivar live: ``True`` live streams only, ``False`` ended ones only, ``None`` both.
    """

    text: str = ""
    category: str | None = None
    tag: str | None = None
    language: str | None = None
    live: bool | None = True
    sort: Sort = "viewers"
    cursor: Cursor | None = None
    limit: int = 20


def stream_columns() -> list[Any]:
    """The columns of a listed stream (a :func:`community.api.streams.row_json` row)."""
    return [
        STREAMS.c.id, STREAMS.c.title, STREAMS.c.category, STREAMS.c.tags, STREAMS.c.language,
        STREAMS.c.status, STREAMS.c.created_at, STREAMS.c.started_at, STREAMS.c.ended_at,
        STREAMS.c.viewers, STREAMS.c.peak_viewers, STREAMS.c.thumbnail_at, STREAMS.c.recording,
        CHANNELS.c.name.label("channel"), USERS.c.display_name.label("channel_display_name"),
        CATEGORIES.c.name.label("category_name"),
    ]


def stream_select() -> Select[Any]:
    """Streams joined with their channel, its owner and their category."""
    return (select(*stream_columns())
            .select_from(STREAMS.join(CHANNELS, CHANNELS.c.id == STREAMS.c.channel_id)
                         .join(USERS, USERS.c.id == CHANNELS.c.owner_id)
                         .outerjoin(CATEGORIES, CATEGORIES.c.slug == STREAMS.c.category)))


def _text_condition(dialect: str) -> Any:
    """The full-text condition on ``streams`` (bound parameter ``search_query``)."""
    if dialect == "postgresql":
        return text("streams.search @@ to_tsquery('relaycast_search', :search_query)")
    return text("streams.rowid IN (SELECT rowid FROM stream_search WHERE stream_search MATCH :search_query)")


def hidden_channels() -> Select[Any]:
    """Ids of the channels never listed: private ones and those of suspended users (both
    small sets, found through partial indexes)."""
    private = select(CHANNELS.c.id).where(CHANNELS.c.private == True)  # noqa: E712 (the index predicate)
    suspended = (select(CHANNELS.c.id).select_from(CHANNELS.join(USERS, USERS.c.id == CHANNELS.c.owner_id))
                 .where(USERS.c.suspended_at.is_not(None)))
    return private.union(suspended)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Shape:
    dialect: str
    live: bool | None
    category: bool
    language: bool
    tag: bool
    text: bool
    sort: Sort
    cursor: bool


@lru_cache(maxsize=256)
def _statement(shape: _Shape) -> Select[Any]:
    """The statement of one query shape, with bound parameters for every value: built once
    per shape (SQLAlchemy then reuses its compiled form)."""
    key = STREAMS.c.viewers if shape.sort == "viewers" else STREAMS.c.started_at
    page = select(STREAMS.c.id).where(STREAMS.c.started_at.is_not(None),
                                      STREAMS.c.channel_id.not_in(hidden_channels()))
    if shape.live is True:
        page = page.where(STREAMS.c.status == "live")
    elif shape.live is False:
        page = page.where(STREAMS.c.status == "ended")
    else:
        page = page.where(STREAMS.c.status.in_(("live", "ended")))
    if shape.category:
        page = page.where(STREAMS.c.category == bindparam("category"))
    if shape.language:
        page = page.where(STREAMS.c.language == bindparam("language"))
    if shape.tag:
        page = page.where(exists().where(STREAM_TAGS.c.stream_id == STREAMS.c.id,
                                         STREAM_TAGS.c.tag == bindparam("tag")))
    if shape.text:
        page = page.where(_text_condition(shape.dialect))
    if shape.cursor:
        value_type = Integer() if shape.sort == "viewers" else UtcDateTime()
        page = page.where(tuple_(key, STREAMS.c.id) < tuple_(bindparam("cursor_value", type_=value_type),
                                                             bindparam("cursor_id")))
    # Sort and cut on ``streams`` alone, then join the page's rows (not every match).
    inner = page.order_by(key.desc(), STREAMS.c.id.desc()).limit(bindparam("page_rows")).subquery("page")
    return (stream_select().join_from(STREAMS, inner, inner.c.id == STREAMS.c.id)
            .order_by(key.desc(), STREAMS.c.id.desc()))


def build_query(dialect: str, f: StreamFilter) -> tuple[Select[Any], dict[str, Any]] | None:
    """The ``SELECT`` of one page and its parameters (``limit + 1`` rows: one more tells
    there is a next page).

    Public streams only: not of a private channel nor of a suspended owner, and started
    (a pending stream is not listed).  :returns: ``None`` when ``f.text`` holds no term (no
    stream can match).
    """
    params: dict[str, Any] = {"page_rows": f.limit + 1}
    words = terms(f.text) if f.text.strip() else []
    if f.text.strip():
        if not words:
            return None
        params["search_query"] = tsquery(words) if dialect == "postgresql" else fts5_query(words)
    for name in ("category", "language", "tag"):
        if getattr(f, name):
            params[name] = getattr(f, name)
    if f.cursor is not None:
        params["cursor_id"] = f.cursor.id
        params["cursor_value"] = (f.cursor.value if f.sort == "viewers"
                                  else datetime.fromisoformat(str(f.cursor.value)))
    shape = _Shape(dialect, f.live, bool(f.category), bool(f.language), bool(f.tag), bool(words), f.sort,
                   f.cursor is not None)
    return _statement(shape), params


def next_cursor(rows: Sequence[Row[Any]], f: StreamFilter) -> str | None:
    """The cursor after ``rows`` (``limit + 1`` fetched), or ``None`` at the end."""
    if len(rows) <= f.limit:
        return None
    last = rows[f.limit - 1]
    value: int | str = last.viewers if f.sort == "viewers" else last.started_at.isoformat()
    return Cursor(f.sort, value, last.id).encode()


async def find_streams(session: AsyncSession, f: StreamFilter) -> tuple[list[Row[Any]], str | None]:
    """One page of streams for ``f`` and the next page's cursor.

    :raises sqlalchemy.exc.DBAPIError: the database failed.
    """
    built = build_query(session.bind.dialect.name, f)
    if built is None:
        return [], None
    stmt, params = built
    rows = list((await session.execute(stmt, params)).all())
    return rows[:f.limit], next_cursor(rows, f)


async def category_counts(session: AsyncSession) -> list[Row[Any]]:
    """Every category with its live public streams and their viewers: rows ``(slug, name,
    live_streams, viewers)``, most viewers first."""
    live = (select(STREAMS.c.category.label("slug"), func.count().label("live_streams"),
                   func.sum(STREAMS.c.viewers).label("viewers"))
            .where(STREAMS.c.status == "live", STREAMS.c.channel_id.not_in(hidden_channels()),
                   STREAMS.c.category.is_not(None))
            .group_by(STREAMS.c.category).subquery())
    live_streams = func.coalesce(live.c.live_streams, 0)
    viewers = func.coalesce(live.c.viewers, 0)
    stmt = (select(CATEGORIES.c.slug, CATEGORIES.c.name, live_streams.label("live_streams"),
                   viewers.label("viewers"))
            .select_from(CATEGORIES.outerjoin(live, live.c.slug == CATEGORIES.c.slug))
            .order_by(viewers.desc(), live_streams.desc(), CATEGORIES.c.name))
    return list((await session.execute(stmt)).all())
