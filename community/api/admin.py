"""Admin operations on accounts and the audit log: ``/api/admin/...`` (role ``admin``).

* ``POST /api/admin/users/{userId}/suspend`` {reason}: the account can no longer log in,
  refresh or use its access tokens (403 from the auth middleware on this instance at once,
  on others within :data:`community.auth.SUSPENDED_RELOAD_S`); its refresh tokens are
  revoked; event ``user.suspended`` {user_id, username} ends its live session.
* ``POST /api/admin/users/{userId}/unsuspend``.
* ``GET /api/admin/audit?cursor=&limit=``: the audit log, newest first.
* ``POST /api/admin/signing-keys/rotate`` {reason?}: a new JWT signing key signs from now
  on; access tokens signed with the previous one stay valid for the overlap window
  (``RELAYCAST_JWT_KEY_OVERLAP_S``, RFC 7515 §4.1.4 ``kid``).

Every action writes an audit entry (:func:`community.audit.record`) in its transaction.
(Stream takedown is :mod:`community.api.streams`.)
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from common.problems import HttpProblem

from ..app import COMMUNITY, Community
from ..audit import record
from ..auth import suspended_of
from ..models import AuditEntry, Channel, User, utcnow
from ..tokens import TokenService, tokens_of
from .base import ApiRoutes, Call
from .pagination import PageQuery, decode_cursor, encode_cursor
from .users import ID_RE, Line, PublicUser, public_of

logger = logging.getLogger(__name__)

routes = ApiRoutes("admin")


class SuspendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Line = Field(min_length=1, max_length=500)


class Actor(BaseModel):
    """The admin who acted (``null`` in an entry: the system, or a deleted account)."""

    id: str
    username: str


class AuditEntryOut(BaseModel):
    """One admin action."""

    id: str
    actor: Actor | None
    action: str
    target_type: str
    target_id: str
    reason: str
    detail: dict[str, Any]
    created_at: datetime


class AuditPage(BaseModel):
    """A page of the audit log, newest first."""

    entries: list[AuditEntryOut]
    next_cursor: str | None


def _community(call: Call[Any, Any]) -> Community:
    return call.request.config_dict[COMMUNITY]


async def _set_suspended(call: Call[Any, Any], reason: str | None) -> PublicUser:
    """Suspend (``reason`` given) or unsuspend the path's user, with its audit entry."""
    community = _community(call)
    user_id = call.path("userId")
    suspend = reason is not None
    async with community.db.transaction() as session:
        user = await session.get(User, user_id) if ID_RE.fullmatch(user_id) else None
        if user is None:
            raise HttpProblem(404, None, "no such user")
        if suspend and user.role == "admin":
            raise HttpProblem(409, None, "an admin account cannot be suspended")
        if suspend:
            user.suspended_at, user.suspended_reason = utcnow(), reason or ""
            await TokenService.revoke_user_refresh(session, user.id)
        else:
            user.suspended_at, user.suspended_reason = None, ""
        await record(
            session,
            call.user.user_id,
            "user.suspend" if suspend else "user.unsuspend",
            "user",
            user.id,
            reason or "",
            {"username": user.username},
        )
        channel = (
            await session.execute(select(Channel.name).where(Channel.owner_id == user.id))
        ).scalar()
        await session.flush()
    cache = suspended_of(call.request.config_dict)
    if suspend:
        cache.add(user.id)
        logger.info("user %s suspended by %s", user.username, call.user.username)
        await community.events.emit(
            "user.suspended", {"user_id": user.id, "username": user.username}
        )
    else:
        cache.discard(user.id)
        logger.info("user %s unsuspended by %s", user.username, call.user.username)
    return public_of(user, channel or "")


@routes.op(
    "POST",
    "/api/admin/users/{userId}/suspend",
    body=SuspendIn,
    auth="admin",
    summary="Suspend an account",
    responses={200: PublicUser, 404: None, 409: None},
)
async def suspend_user(call: Call[SuspendIn, None]) -> PublicUser:
    """Suspends the account: its tokens stop working, its refresh tokens are revoked and
    its live session ends (event ``user.suspended``).  409 for an admin account."""
    return await _set_suspended(call, call.body.reason)


@routes.op(
    "POST",
    "/api/admin/users/{userId}/unsuspend",
    auth="admin",
    summary="Lift a suspension",
    responses={200: PublicUser, 404: None},
)
async def unsuspend_user(call: Call[None, None]) -> PublicUser:
    """Lifts the suspension; the user logs in again (old refresh tokens stay revoked)."""
    return await _set_suspended(call, None)


@routes.op(
    "GET",
    "/api/admin/audit",
    query=PageQuery,
    auth="admin",
    summary="The audit log",
    responses={200: AuditPage},
)
async def audit_log(call: Call[None, PageQuery]) -> AuditPage:
    """Admin actions, newest first; ``cursor`` from the previous page's ``next_cursor``."""
    community = _community(call)
    query = call.query
    statement = (
        select(AuditEntry, User.username)
        .outerjoin(User, User.id == AuditEntry.actor_id)
        .order_by(AuditEntry.id.desc())
        .limit(query.limit + 1)
    )
    if query.cursor is not None:
        _, last_id = decode_cursor(query.cursor)
        if not last_id.isdigit() or len(last_id) > 18:
            raise HttpProblem(400, None, "cursor: not a cursor this API returned")
        statement = statement.where(AuditEntry.id < int(last_id))
    async with community.db.session() as session:
        rows = (await session.execute(statement)).all()
    entries = [
        AuditEntryOut(
            id=str(entry.id),
            actor=Actor(id=entry.actor_id, username=username)
            if entry.actor_id is not None and username is not None
            else None,
            action=entry.action,
            target_type=entry.target_type,
            target_id=entry.target_id,
            reason=entry.reason,
            detail=entry.detail or {},
            created_at=entry.created_at,
        )
        for entry, username in rows[: query.limit]
    ]
    cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1][0]
        cursor = encode_cursor(last.created_at, str(last.id))
    return AuditPage(entries=entries, next_cursor=cursor)


class RotateIn(BaseModel):
    """Why the key is rotated (kept in the audit log)."""

    model_config = ConfigDict(extra="forbid")
    reason: Line = Field("", max_length=500)


class RotatedKey(BaseModel):
    """The new signing key's id (never the key)."""

    kid: str


@routes.op(
    "POST",
    "/api/admin/signing-keys/rotate",
    body=RotateIn,
    auth="admin",
    summary="Rotate the JWT signing key",
    responses={200: RotatedKey},
)
async def rotate_signing_key(call: Call[RotateIn, None]) -> RotatedKey:
    """Retires the current signing key and makes a new one; tokens signed with the retired
    key verify until the overlap window passes (every instance reloads keys within 10 s)."""
    kid = await tokens_of(call.request.config_dict).rotate_signing_key()
    async with _community(call).db.transaction() as session:
        await record(session, call.user.user_id, "signing_key.rotate", "signing_key", kid,
                     call.body.reason)
    return RotatedKey(kid=kid)
