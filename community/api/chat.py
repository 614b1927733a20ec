"""``/api/streams/{id}/chat``: send a chat message as the logged-in user, and read a
stream's stored chat history page by page (also what a past broadcast's page replays in
sync with its recording: ``offset_ms``).

* ``POST`` goes through the room's chat service like a message from a page or a data
  channel — the same rate limit, text rules and moderation — and is fanned out to every
  participant.  The sender is ``api-<user id>`` named by the username, ``publisher`` on
  the user's own channel.
* ``GET`` reads ``chat_messages`` (written in batches by :mod:`community.chat_store`,
  flushed first when this process still holds messages of the room); deleted messages are
  left out.

Private channels: only the owner, admins and allowed viewers read or write (404 for
everyone else, as for the stream itself).  Errors are RFC 9457 problem details with the
extension member ``code`` (docs/chat.md, "error"); 429 answers carry ``Retry-After``
(RFC 9110 §10.2.3).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from common.problems import HttpProblem
from signaling.app_keys import CHAT
from signaling.chat import ChatRefused, Sender

from ..app import COMMUNITY
from ..chat_store import chat_store_of
from ..models import Channel, Stream
from .base import ApiRoutes, Call
from .streams import ID_RE, NOT_FOUND, can_view, load_stream

routes = ApiRoutes("chat")

STATUS_OF = {
    "bad_message": 422,
    "too_long": 422,
    "rate_limited": 429,
    "slow_mode": 429,
    "timed_out": 403,
    "banned": 403,
    "followers_only": 403,
    "guests_off": 403,
    "links_off": 403,
    "blocked_term": 403,
    "unavailable": 503,
}
"""REST status of each :class:`~signaling.chat.ChatRefused` code (``held`` is a 202)."""


# ------------------------------------------------------------------ models
class ChatIn(BaseModel):
    """A message to send; the text is cleaned and its length counted in grapheme clusters
    by the chat service (at most ``RELAYCAST_CHAT_MAX_CHARS``, 500)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class ChatSender(BaseModel):
    """Who sent a message: participant ``id``, display ``name``, ``role`` (``publisher`` |
    ``viewer``), ``user`` (the platform user's id; absent for guests), ``badges``."""

    id: str
    name: str
    role: str
    user: str | None = None
    badges: list[str] | None = None


class ChatMessageSent(BaseModel):
    """The numbered message as every participant received it (``ts``: epoch ms)."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)
    seq: int
    id: str
    ts: int
    from_: ChatSender = Field(alias="from")
    text: str
    mentions: list[str] | None = Field(None, description="lower-case usernames written as @name")


class ChatHeld(BaseModel):
    """The message is held for a moderator's review (not shown to anyone yet)."""

    held: bool = True


class HistorySender(BaseModel):
    """The sender of a stored message (``user`` absent for guests)."""

    id: str
    name: str
    role: str
    user: str | None = None


class ChatMessageOut(BaseModel):
    """A stored message.  ``ts``: epoch ms; ``offset_ms``: ms since the stream's
    ``started_at`` (negative before it; ``null`` if the stream never started)."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)
    id: str
    seq: int
    ts: int
    from_: HistorySender = Field(alias="from")
    text: str
    offset_ms: int | None


class ChatPage(BaseModel):
    """Messages oldest first; pass ``next_before`` as ``before`` for the page before."""

    messages: list[ChatMessageOut]
    next_before: str | None


class ChatQuery(BaseModel):
    """``before``: a message id (the page ends just before it); ``limit``: 1..100."""

    model_config = ConfigDict(extra="forbid")
    before: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    limit: int = Field(50, ge=1, le=100)


# ----------------------------------------------------------------- helpers
def _json(model: BaseModel, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """``model`` without absent optional members (``user``, ``badges``, ``mentions``)."""
    return web.Response(
        status=status,
        body=model.model_dump_json(by_alias=True, exclude_none=True),
        content_type="application/json",
        headers=headers,
    )


async def _stream_of(call: Call[Any, Any]) -> tuple[Stream, Channel]:
    """The stream in the path and its channel.  :raises HttpProblem: 404 unknown, or a
    private channel's stream the caller may not watch."""
    stream_id = call.path("id")
    async with call.request.app[COMMUNITY].db.session() as session:
        found = await load_stream(session, stream_id) if ID_RE.fullmatch(stream_id) else None
        if found is None or not await can_view(session, found[1], call.principal):
            raise HttpProblem(404, None, NOT_FOUND)
    return found[0], found[1]


def _problem(exc: ChatRefused) -> HttpProblem:
    status = STATUS_OF.get(exc.code, 403)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {"code": exc.code}
    if exc.retry_after_s is not None:
        extra["retry_after"] = round(exc.retry_after_s, 3)
        if status == 429:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return HttpProblem(status, None, exc.detail, headers=headers, **extra)


def _ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


# --------------------------------------------------------------- operations
@routes.op(
    "POST",
    "/api/streams/{id}/chat",
    body=ChatIn,
    auth="user",
    responses={
        201: ChatMessageSent,
        202: ChatHeld,
        403: None,
        404: None,
        409: None,
        422: None,
        429: None,
        503: None,
    },
    summary="Send a chat message to a stream's room",
)
async def post_chat(call: Call[ChatIn, None]) -> web.Response:
    """Sends ``text`` as the caller to everybody in the stream's room (data channels and
    pages alike).  201: the numbered message; 202 ``{"held": true}``: held for a moderator's
    review.  Refusals carry ``code``: 422 ``bad_message``/``too_long``; 429
    ``rate_limited``/``slow_mode`` (``Retry-After``); 403 ``banned``, ``timed_out``
    (``retry_after`` s), ``followers_only``, ``guests_off``, ``links_off``, ``blocked_term``;
    503 ``unavailable``.  409: the stream has ended.  404: unknown stream."""
    stream, channel = await _stream_of(call)
    if stream.status not in ("pending", "live"):
        raise HttpProblem(409, None, "the stream has ended; its chat is closed")
    user = call.user
    sender = Sender(
        id=f"api-{user.user_id}",
        name=user.username,
        role="publisher" if user.user_id == channel.owner_id else "viewer",
        user_id=user.user_id,
        via="api",
    )
    try:
        message = await call.request.app[CHAT].submit(channel.name, sender, call.body.text)
    except ChatRefused as exc:
        if exc.code == "held":
            return _json(ChatHeld(), 202)
        raise _problem(exc) from None
    return _json(
        ChatMessageSent.model_validate({k: v for k, v in message.items() if k != "type"}), 201
    )


@routes.op(
    "GET",
    "/api/streams/{id}/chat",
    query=ChatQuery,
    auth="optional",
    responses={200: ChatPage, 400: None, 404: None},
    summary="A stream's chat history, page by page",
)
async def get_chat(call: Call[None, ChatQuery]) -> web.Response:
    """The stream's stored messages, oldest first: the newest ``limit`` (default 50), or the
    ``limit`` just before message ``before``.  Deleted messages never appear.  400: ``before``
    is not a message of this stream."""
    stream, channel = await _stream_of(call)
    store = chat_store_of(call.request.app)
    if store is None:
        raise HttpProblem(404, None, NOT_FOUND)  # not started yet
    try:
        rows, more = await store.history(
            channel.name, stream.id, before=call.query.before, limit=call.query.limit
        )
    except LookupError:
        raise HttpProblem(400, None, "before: no such message in this stream's chat") from None
    started = _ms(stream.started_at) if stream.started_at is not None else None
    messages = []
    for row in rows:
        ts = _ms(row.sent_at)
        sender = HistorySender(
            id=row.sender_id, name=row.sender_name, role=row.sender_role, user=row.user_id
        )
        messages.append(
            ChatMessageOut(
                id=row.id,
                seq=row.seq,
                ts=ts,
                from_=sender,
                text=row.text,
                offset_ms=None if started is None else ts - started,
            )
        )
    page = ChatPage(messages=messages, next_before=rows[0].id if more and rows else None)
    body = page.model_dump(by_alias=True)
    for message in body["messages"]:
        if message["from"]["user"] is None:
            del message["from"]["user"]
    return web.json_response(body, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
