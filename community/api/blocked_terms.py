"""Blocked terms: a channel's list (``/api/channels/{name}/chat/blocked-terms``, its
moderators) and the server's (``/api/admin/chat/blocked-terms``, admins).

A term's ``action`` is ``block`` (the message is refused ``blocked_term``, moderators too)
or ``hold`` (kept for a moderator's review; moderators' own messages are not held).  How
terms match is :mod:`community.chat_filter`; the policy compiles the channel's list with the
server's and the built-in defaults (:mod:`community.chat_moderation`).  A channel's change
is logged in its moderation log (``term.add``, ``term.remove``), a server change in the
admin audit log (``chat.term.add``, ``chat.term.remove``).  Errors are RFC 9457 problems.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.problems import HttpProblem

from ..audit import record as audit
from ..chat_moderation import record
from ..models import BlockedTerm, utcnow
from .base import ApiRoutes, Call
from .moderation_access import channel_access, community_of, rules_changed
from .users import Line

routes = ApiRoutes("moderation")

MAX_TERMS_PER_CHANNEL = 1000
MAX_SERVER_TERMS = 5000


class TermIn(BaseModel):
    """A blocked term: ``block`` refuses the message, ``hold`` keeps it for review."""

    model_config = ConfigDict(extra="forbid")
    term: Line = Field(min_length=1, max_length=100)
    action: Literal["block", "hold"] = "block"


class TermOut(BaseModel):
    id: int
    term: str
    action: str
    created_at: datetime


class TermList(BaseModel):
    terms: list[TermOut]


def _term_out(row: BlockedTerm) -> TermOut:
    return TermOut(id=row.id, term=row.term, action=row.action, created_at=row.created_at)


async def _add_term(
    session: AsyncSession, channel_id: str | None, body: TermIn, limit: int
) -> BlockedTerm:
    term = body.term.strip()
    if not term:
        raise HttpProblem(422, None, "body: term: empty")
    same = BlockedTerm.channel_id == channel_id if channel_id else BlockedTerm.channel_id.is_(None)
    count = await session.scalar(select(func.count()).select_from(BlockedTerm).where(same))
    if int(count or 0) >= limit:
        raise HttpProblem(409, None, f"a list holds at most {limit} terms")
    if await session.scalar(
        select(BlockedTerm.id).where(same, func.lower(BlockedTerm.term) == term.lower())
    ):
        raise HttpProblem(409, None, "the term is listed already")
    row = BlockedTerm(channel_id=channel_id, term=term, action=body.action, created_at=utcnow())
    session.add(row)
    await session.flush()
    return row


@routes.op(
    "GET",
    "/api/channels/{name}/chat/blocked-terms",
    summary="A channel's blocked terms (moderators)",
    auth="user",
    responses={200: TermList, 404: None},
)
async def get_terms(call: Call[None, None]) -> TermList:
    async with community_of(call).db.session() as session:
        access = await channel_access(call, session, "moderator")
        rows = (
            await session.scalars(
                select(BlockedTerm)
                .where(BlockedTerm.channel_id == access.channel.id)
                .order_by(BlockedTerm.id)
            )
        ).all()
    return TermList(terms=[_term_out(r) for r in rows])


@routes.op(
    "POST",
    "/api/channels/{name}/chat/blocked-terms",
    summary="Block a term (moderators)",
    auth="user",
    body=TermIn,
    responses={201: TermOut, 404: None, 409: None},
)
async def post_term(call: Call[TermIn, None]) -> tuple[int, TermOut]:
    """409: listed already, or the list is full (1,000).  Logged as ``term.add``."""
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        row = await _add_term(session, access.channel.id, call.body, MAX_TERMS_PER_CHANNEL)
        record(
            session,
            access.channel.id,
            call.user.user_id,
            "term.add",
            str(row.id),
            detail={"term": row.term, "action": row.action},
        )
        out = _term_out(row)
    rules_changed(call, access.channel.name)
    return 201, out


@routes.op(
    "DELETE",
    "/api/channels/{name}/chat/blocked-terms/{termId}",
    summary="Unblock a term (moderators)",
    auth="user",
    responses={204: None, 404: None},
)
async def delete_term(call: Call[None, None]) -> tuple[int, None]:
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        row = await _term_of(session, access.channel.id, call.path("termId"))
        await session.delete(row)
        record(
            session,
            access.channel.id,
            call.user.user_id,
            "term.remove",
            str(row.id),
            detail={"term": row.term, "action": row.action},
        )
    rules_changed(call, access.channel.name)
    return 204, None


async def _term_of(session: AsyncSession, channel_id: str | None, term_id: str) -> BlockedTerm:
    row = (
        await session.get(BlockedTerm, int(term_id))
        if term_id.isdigit() and len(term_id) <= 18
        else None
    )
    if row is None or row.channel_id != channel_id:
        raise HttpProblem(404, None, "no such term in this list")
    return row


@routes.op(
    "GET",
    "/api/admin/chat/blocked-terms",
    summary="The server's blocked terms (admin)",
    auth="admin",
    responses={200: TermList},
)
async def get_server_terms(call: Call[None, None]) -> TermList:
    """The server's own list (every channel's chat; merged with the built-in defaults)."""
    async with community_of(call).db.session() as session:
        rows = (
            await session.scalars(
                select(BlockedTerm).where(BlockedTerm.channel_id.is_(None)).order_by(BlockedTerm.id)
            )
        ).all()
    return TermList(terms=[_term_out(r) for r in rows])


@routes.op(
    "POST",
    "/api/admin/chat/blocked-terms",
    summary="Block a term everywhere (admin)",
    auth="admin",
    body=TermIn,
    responses={201: TermOut, 409: None},
)
async def post_server_term(call: Call[TermIn, None]) -> tuple[int, TermOut]:
    """409: listed already, or the list is full (5,000).  Audit log ``chat.term.add``."""
    async with community_of(call).db.transaction() as session:
        row = await _add_term(session, None, call.body, MAX_SERVER_TERMS)
        await audit(
            session,
            call.user.user_id,
            "chat.term.add",
            "blocked_term",
            str(row.id),
            detail={"term": row.term, "action": row.action},
        )
        out = _term_out(row)
    rules_changed(call)
    return 201, out


@routes.op(
    "DELETE",
    "/api/admin/chat/blocked-terms/{termId}",
    summary="Unblock a server term (admin)",
    auth="admin",
    responses={204: None, 404: None},
)
async def delete_server_term(call: Call[None, None]) -> tuple[int, None]:
    async with community_of(call).db.transaction() as session:
        row = await _term_of(session, None, call.path("termId"))
        await session.delete(row)
        await audit(
            session,
            call.user.user_id,
            "chat.term.remove",
            "blocked_term",
            str(row.id),
            detail={"term": row.term, "action": row.action},
        )
    rules_changed(call)
    return 204, None
