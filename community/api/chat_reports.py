"""The moderation queue: ``/api/channels/{name}/chat/reports``.

Items are users' reports of a message (kind ``report``) and messages held by a blocked
term's ``hold`` action (kind ``held``, put there by the chat policy).  Any logged-in user who
can see the channel reports a message (rate-limited: :data:`REPORTS_PER_USER`); the channel's
moderators (:mod:`community.api.moderation_access`) read the queue and work it: ``dismiss``,
``delete`` (the message leaves every page and the history through the app's
:class:`signaling.chat.ChatService`) or ``approve`` (a held message is numbered and shown
now, ``ChatService.publish_held``).  Working an item is logged (``report.<action>``) in the
channel's moderation log.  Errors are RFC 9457 problems.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.problems import HttpProblem
from common.ratelimit import TokenBuckets
from signaling.chat import ChatRefused

from ..app import COMMUNITY
from ..chat_moderation import open_stream, record
from ..models import ChatReport, User, utcnow
from ..throttles import too_many
from .base import ApiRoutes, Call
from .moderation_access import (
    MESSAGE_ID,
    UserRef,
    channel_access,
    chat_of,
    community_of,
    find_message,
    unavailable,
)
from .pagination import PageQuery, before, next_cursor
from .users import Line

routes = ApiRoutes("moderation")

REPORTS_PER_USER = (10, 10 / 60)
"""(burst, tokens/s) of a user's reports: 10, then one every 6 s."""
REPORT_LIMITER = "chat_report_limiter"
""":attr:`community.app.Community.services` key of the per-process report limiter."""
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,24}$")


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: str = Field(pattern=MESSAGE_ID)
    reason: Line = Field("", max_length=500)


class ReportCreated(BaseModel):
    id: str


class ReportOut(BaseModel):
    """An item of the queue: ``kind`` ``report`` (a user's) or ``held`` (a blocked term's);
    ``message`` as it was shown (``id``, ``ts``, ``from``, ``text`` …); ``status``
    ``open``, ``resolved`` or ``dismissed``; ``resolution`` ``approved``, ``deleted`` or
    ``dismissed``."""

    id: str
    kind: str
    message: dict[str, Any]
    reporter: UserRef | None
    reason: str
    status: str
    created_at: datetime
    resolved_at: datetime | None
    resolution: str


class ReportsQuery(PageQuery):
    status: Literal["open", "resolved", "dismissed"] = "open"


class ReportPage(BaseModel):
    reports: list[ReportOut]
    next_cursor: str | None


class ResolveIn(BaseModel):
    """``dismiss``; ``delete`` the message for everybody; ``approve`` a held message (it is
    numbered and shown to everybody now)."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["dismiss", "delete", "approve"]
    reason: Line = Field("", max_length=500)


async def resolve_reports_of(
    session: AsyncSession, channel_id: str, message_id: str, actor_id: str
) -> None:
    """Resolve (``deleted``) every open queue item of message ``message_id`` of the channel."""
    await session.execute(
        update(ChatReport)
        .where(
            ChatReport.channel_id == channel_id,
            ChatReport.message_id == message_id,
            ChatReport.status == "open",
        )
        .values(status="resolved", resolution="deleted", resolved_at=utcnow(), resolved_by=actor_id)
    )


@routes.op(
    "POST",
    "/api/channels/{name}/chat/reports",
    summary="Report a message",
    auth="user",
    body=ReportIn,
    responses={201: ReportCreated, 404: None},
)
async def post_report(call: Call[ReportIn, None]) -> tuple[int, ReportCreated]:
    """Any logged-in user who can see the channel; reporting the same message again answers
    the same open report.  404: no such message in the channel.  429: more than 10 reports,
    then one per 6 s."""
    community = community_of(call)
    limiter = community.services.get(REPORT_LIMITER)
    if isinstance(limiter, TokenBuckets):
        wait = limiter.take(call.user.user_id)
        if wait > 0:
            raise too_many(wait, "reports")
    async with community.db.transaction() as session:
        access = await channel_access(call, session)
        message = await find_message(
            call.request.app, session, access.channel, call.body.message_id
        )
        if message is None:
            raise HttpProblem(404, None, "no such message in this channel")
        existing = await session.scalar(
            select(ChatReport.id).where(
                ChatReport.channel_id == access.channel.id,
                ChatReport.message_id == call.body.message_id,
                ChatReport.reporter_id == call.user.user_id,
                ChatReport.status == "open",
            )
        )
        if existing is not None:
            return 201, ReportCreated(id=existing)
        report = ChatReport(
            channel_id=access.channel.id,
            stream_id=await open_stream(session, access.channel.id),
            kind="report",
            message_id=call.body.message_id,
            message=message,
            reporter_id=call.user.user_id,
            reason=call.body.reason,
            created_at=utcnow(),
        )
        session.add(report)
        await session.flush()
        return 201, ReportCreated(id=report.id)


def _report_out(row: ChatReport, reporter: str | None) -> ReportOut:
    return ReportOut(
        id=row.id,
        kind=row.kind,
        message=row.message or {},
        reporter=UserRef(id=row.reporter_id, username=reporter)
        if row.reporter_id is not None and reporter is not None
        else None,
        reason=row.reason,
        status=row.status,
        created_at=row.created_at,
        resolved_at=row.resolved_at,
        resolution=row.resolution,
    )


@routes.op(
    "GET",
    "/api/channels/{name}/chat/reports",
    summary="The moderation queue (moderators)",
    auth="user",
    query=ReportsQuery,
    responses={200: ReportPage, 404: None},
)
async def get_reports(call: Call[None, ReportsQuery]) -> ReportPage:
    """Reports and held messages of one ``status`` (default ``open``), newest first."""
    query = call.query
    async with community_of(call).db.session() as session:
        access = await channel_access(call, session, "moderator")
        statement = (
            select(ChatReport, User.username)
            .outerjoin(User, User.id == ChatReport.reporter_id)
            .where(ChatReport.channel_id == access.channel.id, ChatReport.status == query.status)
            .order_by(ChatReport.created_at.desc(), ChatReport.id.desc())
            .limit(query.limit + 1)
        )
        page = before(ChatReport.created_at, ChatReport.id, query.cursor)
        if page is not None:
            statement = statement.where(page)
        rows = (await session.execute(statement)).all()
    return ReportPage(
        reports=[_report_out(r, name) for r, name in rows[: query.limit]],
        next_cursor=next_cursor([r for r, _ in rows], query.limit),
    )


RESOLUTIONS = {
    "dismiss": ("dismissed", "dismissed"),
    "delete": ("resolved", "deleted"),
    "approve": ("resolved", "approved"),
}


@routes.op(
    "POST",
    "/api/channels/{name}/chat/reports/{reportId}/resolve",
    summary="Work a queue item (moderators)",
    auth="user",
    body=ResolveIn,
    responses={200: ReportOut, 404: None, 409: None, 503: None},
)
async def resolve_report(call: Call[ResolveIn, None]) -> ReportOut:
    """``dismiss``; ``delete`` (a reported message leaves every page and the history; a held
    one is dropped); ``approve`` (held messages only: numbered and shown now).  409: already
    worked, or ``approve`` of a reported message.  Logged as ``report.<action>``."""
    action = call.body.action
    app = call.request.app
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        report_id = call.path("reportId")
        report = await session.get(ChatReport, report_id) if ID_RE.fullmatch(report_id) else None
        if report is None or report.channel_id != access.channel.id:
            raise HttpProblem(404, None, "no such report in this channel")
        if action == "approve" and report.kind != "held":
            raise HttpProblem(409, None, "only a held message can be approved")
        status, resolution = RESOLUTIONS[action]
        now = utcnow()
        claimed = await session.execute(
            update(ChatReport)
            .where(ChatReport.id == report.id, ChatReport.status == "open")
            .values(
                status=status, resolution=resolution, resolved_at=now, resolved_by=call.user.user_id
            )
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            raise HttpProblem(409, None, "this report was worked already")
        message = dict(report.message or {})
        sender = message.get("from") or {}
        record(
            session,
            access.channel.id,
            call.user.user_id,
            f"report.{action}",
            report.message_id,
            str(sender.get("name", ""))[:64],
            call.body.reason,
            {
                "kind": report.kind,
                "report_id": report.id,
                "text": str(message.get("text", ""))[:500],
            },
        )
        if action == "delete" and report.kind == "report":
            await resolve_reports_of(
                session, access.channel.id, report.message_id, call.user.user_id
            )
        try:
            if action == "delete" and report.kind == "report":
                await chat_of(app).delete(access.channel.name, [report.message_id])
            elif action == "approve":
                await chat_of(app).publish_held(access.channel.name, message)
        except ChatRefused as exc:
            raise unavailable(exc) from None
        reporter = (
            await session.scalar(select(User.username).where(User.id == report.reporter_id))
            if report.reporter_id
            else None
        )
        await session.refresh(report)
        return _report_out(report, reporter)


def setup(app: web.Application) -> None:
    """The per-process report limiter (:data:`REPORTS_PER_USER`)."""
    burst, rate = REPORTS_PER_USER
    app[COMMUNITY].services[REPORT_LIMITER] = TokenBuckets(rate, burst)
