"""Keyset pagination for the API's lists: an opaque ``cursor`` in, ``next_cursor`` out.

A list is ordered by ``(time, id)`` descending (newest first); the cursor holds the last
row's pair, so the next page is ``WHERE (time, id) < (t, i)``.  It stays correct while
rows are added (no offset drift) and costs one index range scan per page on both
databases.  ``next_cursor`` is ``None`` on the last page.

The cursor is base64url (RFC 4648 §5) of a JSON array ``[iso8601 time, id]``; clients
treat it as opaque.  A cursor that does not decode is a 400 problem (RFC 9457).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, and_, or_

from common.problems import HttpProblem

MAX_CURSOR_CHARS = 200


class PageQuery(BaseModel):
    """``?cursor=&limit=``: ``limit`` 1..100 (default 20)."""

    cursor: str | None = Field(default=None, max_length=MAX_CURSOR_CHARS)
    limit: int = Field(default=20, ge=1, le=100)


def encode_cursor(at: datetime, row_id: str) -> str:
    raw = json.dumps([at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """:returns: ``(time, id)``.  :raises HttpProblem: 400 when ``cursor`` is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = json.loads(raw)
        when = datetime.fromisoformat(at)
        # Ids are ours (new_id: URL-safe); anything else (a NUL byte would be a database
        # error on PostgreSQL) is not a cursor we returned.
        if not isinstance(row_id, str) or not _ID.fullmatch(row_id) or when.tzinfo is None:
            raise ValueError(cursor)
    except (binascii.Error, ValueError, TypeError):
        raise HttpProblem(400, None, "cursor: not a cursor this API returned") from None
    return when, row_id


def before(time_column: Any, id_column: Any, cursor: str | None) -> ColumnElement[bool] | None:
    """The ``WHERE`` clause of the page after ``cursor`` (``None`` for the first page)."""
    if cursor is None:
        return None
    at, row_id = decode_cursor(cursor)
    return or_(time_column < at, and_(time_column == at, id_column < row_id))


def next_cursor(
    rows: Sequence[Any], limit: int, at: str = "created_at", row_id: str = "id"
) -> str | None:
    """The cursor after the last of ``rows`` when a page of ``limit + 1`` came back, else None.

    Query ``limit + 1`` rows and show only the first ``limit``: the extra row says there
    is another page.
    """
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return encode_cursor(getattr(last, at), getattr(last, row_id))
