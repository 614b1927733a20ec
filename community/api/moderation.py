"""A channel's chat moderation: ``/api/channels/{name}/chat/settings``, ``/chat/me``,
``/moderators``, ``/chat/bans``, ``/chat/messages/{id}``, ``/chat/clear`` and
``/moderation/log`` (blocked terms: :mod:`community.api.blocked_terms`; the report queue:
:mod:`community.api.chat_reports`).

Who may do what is :mod:`community.api.moderation_access`; in addition a moderator action
against a person needs a higher rank than theirs (admin > broadcaster > moderator >
everyone else): a moderator cannot ban the broadcaster, an admin, another moderator or
themselves (403).

Every action and settings change is written to the moderation log in the transaction that
makes it (who, what, target, when, reason), and this process's
:class:`~community.chat_moderation.ChannelChatPolicy` drops the room's cached rules at once
(other instances reload within :data:`~community.chat_moderation.RULES_TTL_S`).  Deleting
and clearing go through the app's :class:`signaling.chat.ChatService`, so every participant
on every path sees them; without a chat service, or with its store unreachable, they answer
503 ``unavailable``.  Errors are RFC 9457 problems.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import and_, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.problems import HttpProblem
from signaling.app_keys import CHAT
from signaling.chat import ChatRefused, ChatUnavailable

from ..chat_moderation import ban_expiry, rank, record, roles
from ..models import ChannelModerator, ChatBan, ChatSettings, ModerationEntry, User, utcnow
from .base import ApiRoutes, Call
from .chat_reports import resolve_reports_of
from .moderation_access import (
    MESSAGE_ID_RE,
    UserRef,
    channel_access,
    chat_of,
    community_of,
    find_message,
    rules_changed,
    unavailable,
    upsert,
)
from .pagination import PageQuery, decode_cursor, encode_cursor
from .users import Line

routes = ApiRoutes("moderation")

MAX_TIMEOUT_S = 14 * 86400
"""The longest timeout, s (14 days)."""
TARGET_RE = re.compile(r"^(guest:)?[A-Za-z0-9_.:-]{1,64}$")
"""A ban's target: a user id or ``guest:<participant id>``."""
USERNAME_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")


# ------------------------------------------------------------------ models
class ChatSettingsOut(BaseModel):
    """A channel's chat rules.  ``slow_mode_s``: seconds between a user's messages (0 off);
    ``followers_only_s``: minimum follow age in s (``null`` off, 0 any follower)."""

    slow_mode_s: int
    followers_only_s: int | None
    guests_allowed: bool
    links_allowed: bool


class ChatSettingsPatch(BaseModel):
    """Fields to change; absent ones stay; ``followers_only_s: null`` turns followers-only off."""

    model_config = ConfigDict(extra="forbid")
    slow_mode_s: int | None = Field(None, ge=0, le=86400)
    followers_only_s: int | None = Field(None, ge=0, le=7776000)
    guests_allowed: bool | None = None
    links_allowed: bool | None = None

    @model_validator(mode="after")
    def _not_null(self) -> ChatSettingsPatch:
        for name in ("slow_mode_s", "guests_allowed", "links_allowed"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class ModeratorOut(BaseModel):
    user_id: str
    username: str
    created_at: datetime


class ModeratorList(BaseModel):
    """The channel's appointed moderators (the owner and admins moderate without a row)."""

    moderators: list[ModeratorOut]


class BanIn(BaseModel):
    """Ban or time out one ``user`` (username) or guest ``participant`` (participant id):
    ``duration_s`` given = a timeout of that many seconds, absent = a ban."""

    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(None, min_length=1, max_length=32)
    participant: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    duration_s: int | None = Field(None, ge=1, le=MAX_TIMEOUT_S)
    reason: Line = Field("", max_length=500)

    @model_validator(mode="after")
    def _one_target(self) -> BanIn:
        if (self.user is None) == (self.participant is None):
            raise ValueError("give exactly one of user or participant")
        return self


class BanOut(BaseModel):
    """An active ban (``expires_at`` null) or timeout.  ``target``: a user id or
    ``guest:<participant id>``."""

    target: str
    target_name: str
    expires_at: datetime | None
    reason: str
    created_at: datetime


class BanList(BaseModel):
    bans: list[BanOut]


class DeleteQuery(BaseModel):
    reason: Line = Field("", max_length=500)


class EntryOut(BaseModel):
    """A moderation log entry.  ``actor`` null: the system or a deleted account."""

    id: int
    actor: UserRef | None
    action: str
    target: str
    target_name: str
    reason: str
    detail: dict[str, Any]
    created_at: datetime


class LogPage(BaseModel):
    entries: list[EntryOut]
    next_cursor: str | None


class ChatMe(BaseModel):
    """The caller in the channel's chat (for the pages); all false for a guest."""

    moderator: bool
    broadcaster: bool
    banned: bool
    timed_out_until: datetime | None
    settings: ChatSettingsOut


class LogQuery(PageQuery):
    limit: int = Field(default=50, ge=1, le=100)


def _settings_out(row: ChatSettings | None) -> ChatSettingsOut:
    """The settings of a row (the defaults without one)."""
    if row is None:
        return ChatSettingsOut(
            slow_mode_s=0, followers_only_s=None, guests_allowed=True, links_allowed=True
        )
    return ChatSettingsOut(
        slow_mode_s=row.slow_mode_s,
        followers_only_s=row.followers_only_s,
        guests_allowed=row.guests_allowed,
        links_allowed=row.links_allowed,
    )


# ---------------------------------------------------------------- settings
@routes.op(
    "GET",
    "/api/channels/{name}/chat/settings",
    summary="A channel's chat settings",
    auth="optional",
    responses={200: ChatSettingsOut, 404: None},
)
async def get_settings(call: Call[None, None]) -> ChatSettingsOut:
    """Anyone who can see the channel."""
    async with community_of(call).db.session() as session:
        access = await channel_access(call, session)
        return _settings_out(await session.get(ChatSettings, access.channel.id))


@routes.op(
    "PATCH",
    "/api/channels/{name}/chat/settings",
    summary="Change the chat settings (moderators)",
    auth="user",
    body=ChatSettingsPatch,
    responses={200: ChatSettingsOut, 404: None},
)
async def patch_settings(call: Call[ChatSettingsPatch, None]) -> ChatSettingsOut:
    """Slow mode, followers-only, guests, links; the change is logged (``settings.update``,
    ``detail`` = ``{field: [old, new]}``)."""
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        row = await session.get(ChatSettings, access.channel.id)
        if row is None:
            row = ChatSettings(
                channel_id=access.channel.id,
                slow_mode_s=0,
                followers_only_s=None,
                guests_allowed=True,
                links_allowed=True,
            )
            session.add(row)
        changes = {}
        for name in call.body.model_fields_set:
            old, new = getattr(row, name), getattr(call.body, name)
            if old != new:
                changes[name] = [old, new]
                setattr(row, name, new)
        if changes:
            row.updated_at = utcnow()
            record(session, access.channel.id, call.user.user_id, "settings.update", detail=changes)
        out = _settings_out(row)
    rules_changed(call, access.channel.name)
    return out


@routes.op(
    "GET",
    "/api/channels/{name}/chat/me",
    summary="You in a channel's chat",
    auth="optional",
    responses={200: ChatMe, 404: None},
)
async def chat_me(call: Call[None, None]) -> ChatMe:
    """Whether the caller moderates, is the broadcaster, is banned or timed out (until when)."""
    async with community_of(call).db.session() as session:
        access = await channel_access(call, session)
        settings = _settings_out(await session.get(ChatSettings, access.channel.id))
        ban = None
        if call.principal is not None:
            ban = await session.get(ChatBan, (access.channel.id, call.principal.user_id))
    now = utcnow()
    active = ban is not None and (ban.expires_at is None or ban.expires_at > now)
    return ChatMe(
        moderator=bool(access.badges),
        broadcaster="broadcaster" in access.badges,
        banned=active and ban is not None and ban.expires_at is None,
        timed_out_until=ban.expires_at if active and ban is not None else None,
        settings=settings,
    )


# -------------------------------------------------------------- moderators
@routes.op(
    "GET",
    "/api/channels/{name}/moderators",
    summary="A channel's moderators (moderators)",
    auth="user",
    responses={200: ModeratorList, 404: None},
)
async def get_moderators(call: Call[None, None]) -> ModeratorList:
    async with community_of(call).db.session() as session:
        access = await channel_access(call, session, "moderator")
        rows = (
            await session.execute(
                select(User.id, User.username, ChannelModerator.created_at)
                .join(ChannelModerator, ChannelModerator.user_id == User.id)
                .where(ChannelModerator.channel_id == access.channel.id)
                .order_by(ChannelModerator.created_at, User.id)
            )
        ).all()
    return ModeratorList(
        moderators=[
            ModeratorOut(user_id=r.id, username=r.username, created_at=r.created_at) for r in rows
        ]
    )


async def _user_named(session: AsyncSession, username: str) -> User:
    user = None
    if USERNAME_RE.fullmatch(username):
        user = await session.scalar(select(User).where(User.username == username.lower()))
    if user is None:
        raise HttpProblem(404, None, "no such user")
    return user


@routes.op(
    "PUT",
    "/api/channels/{name}/moderators/{username}",
    summary="Appoint a moderator (owner, admin)",
    auth="user",
    responses={204: None, 400: None, 404: None},
)
async def put_moderator(call: Call[None, None]) -> tuple[int, None]:
    """Idempotent.  400: the owner (who moderates already); 404: unknown channel or user."""
    community = community_of(call)
    async with community.db.transaction() as session:
        access = await channel_access(call, session, "owner")
        user = await _user_named(session, call.path("username"))
        if user.id == access.channel.owner_id:
            raise HttpProblem(400, None, "the broadcaster moderates their channel already")
        added = await session.execute(
            upsert(
                community.db.dialect,
                ChannelModerator,
                {"channel_id": access.channel.id, "user_id": user.id, "created_at": utcnow()},
                ["channel_id", "user_id"],
            )
        )
        if added.rowcount:  # type: ignore[attr-defined]
            record(
                session,
                access.channel.id,
                call.user.user_id,
                "moderator.add",
                user.id,
                user.username,
            )
    rules_changed(call, access.channel.name)
    return 204, None


@routes.op(
    "DELETE",
    "/api/channels/{name}/moderators/{username}",
    summary="Remove a moderator (owner, admin)",
    auth="user",
    responses={204: None, 404: None},
)
async def delete_moderator(call: Call[None, None]) -> tuple[int, None]:
    """404: unknown channel or user, or the user is not a moderator of the channel."""
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "owner")
        user = await _user_named(session, call.path("username"))
        gone = await session.execute(
            delete(ChannelModerator).where(
                ChannelModerator.channel_id == access.channel.id,
                ChannelModerator.user_id == user.id,
            )
        )
        if not gone.rowcount:  # type: ignore[attr-defined]
            raise HttpProblem(404, None, "the user is not a moderator of this channel")
        record(
            session,
            access.channel.id,
            call.user.user_id,
            "moderator.remove",
            user.id,
            user.username,
        )
    rules_changed(call, access.channel.name)
    return 204, None


# -------------------------------------------------------------------- bans
async def _guest_name(app: web.Application, room: str, participant: str) -> str:
    service = app.get(CHAT)
    if service is not None:
        try:
            for message in reversed(await service.history(room)):
                sender = message.get("from") or {}
                if sender.get("id") == participant:
                    return str(sender.get("name", ""))[:64]
        except ChatUnavailable:  # unreachable store: the name is only for people
            pass
    return "guest"


@routes.op(
    "POST",
    "/api/channels/{name}/chat/bans",
    summary="Ban or time out (moderators)",
    auth="user",
    body=BanIn,
    responses={201: BanOut, 404: None},
)
async def post_ban(call: Call[BanIn, None]) -> tuple[int, BanOut]:
    """A ban, or with ``duration_s`` a timeout (1 s … 14 days); banning again replaces the
    previous one.  403: the target ranks as high as the caller (the broadcaster, an admin,
    another moderator for a moderator, yourself).  404: unknown user.  Logged as ``ban`` or
    ``timeout``."""
    community, body = community_of(call), call.body
    async with community.db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        channel = access.channel
        if body.user is not None:
            user = await _user_named(session, body.user)
            appointed = await session.get(ChannelModerator, (channel.id, user.id))
            target_badges = roles(
                user.id, channel.owner_id, [user.id] if appointed else [], user.role == "admin"
            )
            if rank(target_badges) >= rank(access.badges):
                raise HttpProblem(
                    403,
                    None,
                    f"a {access.badges[0]} cannot ban or time out "
                    f"{'you' if user.id == call.user.user_id else 'this user'}",
                )
            target, target_name = user.id, user.username
        else:
            target = f"guest:{body.participant}"
            target_name = await _guest_name(call.request.app, channel.name, str(body.participant))
        now = utcnow()
        values = {
            "channel_id": channel.id,
            "target": target,
            "target_name": target_name,
            "expires_at": ban_expiry(body.duration_s, now),
            "reason": body.reason,
            "created_by": call.user.user_id,
            "created_at": now,
        }
        await session.execute(
            upsert(
                community.db.dialect,
                ChatBan,
                values,
                ["channel_id", "target"],
                ["target_name", "expires_at", "reason", "created_by", "created_at"],
            )
        )
        record(
            session,
            channel.id,
            call.user.user_id,
            "ban" if body.duration_s is None else "timeout",
            target,
            target_name,
            body.reason,
            {} if body.duration_s is None else {"duration_s": body.duration_s},
        )
    rules_changed(call, channel.name)
    return 201, BanOut(
        target=target,
        target_name=target_name,
        expires_at=values["expires_at"],
        reason=body.reason,
        created_at=now,
    )


@routes.op(
    "GET",
    "/api/channels/{name}/chat/bans",
    summary="Active bans and timeouts (moderators)",
    auth="user",
    responses={200: BanList, 404: None},
)
async def get_bans(call: Call[None, None]) -> BanList:
    now = utcnow()
    async with community_of(call).db.session() as session:
        access = await channel_access(call, session, "moderator")
        rows = (
            await session.scalars(
                select(ChatBan)
                .where(
                    ChatBan.channel_id == access.channel.id,
                    (ChatBan.expires_at.is_(None)) | (ChatBan.expires_at > now),
                )
                .order_by(ChatBan.created_at.desc(), ChatBan.target)
            )
        ).all()
    return BanList(
        bans=[
            BanOut(
                target=r.target,
                target_name=r.target_name,
                expires_at=r.expires_at,
                reason=r.reason,
                created_at=r.created_at,
            )
            for r in rows
        ]
    )


@routes.op(
    "DELETE",
    "/api/channels/{name}/chat/bans/{target}",
    summary="Unban or end a timeout (moderators)",
    auth="user",
    query=DeleteQuery,
    responses={204: None, 404: None},
)
async def delete_ban(call: Call[None, DeleteQuery]) -> tuple[int, None]:
    """``target``: a user id or ``guest:<participant id>``.  404: no ban of that target.
    Logged as ``unban``."""
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        target = call.path("target")
        ban = (
            await session.get(ChatBan, (access.channel.id, target))
            if TARGET_RE.fullmatch(target)
            else None
        )
        if ban is None or (ban.expires_at is not None and ban.expires_at <= utcnow()):
            raise HttpProblem(404, None, "no active ban of that target in this channel")
        await session.delete(ban)
        record(
            session,
            access.channel.id,
            call.user.user_id,
            "unban",
            ban.target,
            ban.target_name,
            call.query.reason,
        )
    rules_changed(call, access.channel.name)
    return 204, None


# ---------------------------------------------------------------- messages
@routes.op(
    "DELETE",
    "/api/channels/{name}/chat/messages/{messageId}",
    summary="Delete a message for everybody (moderators)",
    auth="user",
    query=DeleteQuery,
    responses={204: None, 404: None, 503: None},
)
async def delete_message(call: Call[None, DeleteQuery]) -> tuple[int, None]:
    """Fans out ``{"type": "delete", "ids": [id]}``; the message leaves every page and the
    history; open reports of it are resolved (``deleted``).  404: no such message in the
    channel.  Logged as ``message.delete``."""
    app = call.request.app
    chat = chat_of(app)
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        message_id = call.path("messageId")
        message = (
            await find_message(app, session, access.channel, message_id)
            if MESSAGE_ID_RE.fullmatch(message_id)
            else None
        )
        if message is None:
            raise HttpProblem(404, None, "no such message in this channel")
        await resolve_reports_of(session, access.channel.id, message_id, call.user.user_id)
        record(
            session,
            access.channel.id,
            call.user.user_id,
            "message.delete",
            message_id,
            str((message.get("from") or {}).get("name", ""))[:64],
            call.query.reason,
            {"text": str(message.get("text", ""))[:500]},
        )
        try:
            await chat.delete(access.channel.name, [message_id])
        except ChatRefused as exc:
            raise unavailable(exc) from None
    return 204, None


@routes.op(
    "POST",
    "/api/channels/{name}/chat/clear",
    summary="Clear the chat for everybody (moderators)",
    auth="user",
    responses={204: None, 404: None, 503: None},
)
async def clear_chat(call: Call[None, None]) -> tuple[int, None]:
    """Fans out ``{"type": "clear"}``; the history empties.  Logged as ``chat.clear``."""
    chat = chat_of(call.request.app)
    async with community_of(call).db.transaction() as session:
        access = await channel_access(call, session, "moderator")
        record(session, access.channel.id, call.user.user_id, "chat.clear")
        try:
            await chat.clear(access.channel.name)
        except ChatRefused as exc:
            raise unavailable(exc) from None
    return 204, None


# --------------------------------------------------------------------- log


@routes.op(
    "GET",
    "/api/channels/{name}/moderation/log",
    summary="The moderation log (moderators)",
    auth="user",
    query=LogQuery,
    responses={200: LogPage, 404: None},
)
async def moderation_log(call: Call[None, LogQuery]) -> LogPage:
    """Every moderator action and settings change of the channel, newest first."""
    query = call.query
    async with community_of(call).db.session() as session:
        access = await channel_access(call, session, "moderator")
        statement = (
            select(ModerationEntry, User.username)
            .outerjoin(User, User.id == ModerationEntry.actor_id)
            .where(ModerationEntry.channel_id == access.channel.id)
            .order_by(ModerationEntry.id.desc())
            .limit(query.limit + 1)
        )
        if query.cursor is not None:
            _, last_id = decode_cursor(query.cursor)
            if not last_id.isdigit() or len(last_id) > 18:
                raise HttpProblem(400, None, "cursor: not a cursor this API returned")
            statement = statement.where(and_(ModerationEntry.id < int(last_id)))
        rows = (await session.execute(statement)).all()
    entries = [
        EntryOut(
            id=e.id,
            actor=UserRef(id=e.actor_id, username=name)
            if e.actor_id is not None and name is not None
            else None,
            action=e.action,
            target=e.target,
            target_name=e.target_name,
            reason=e.reason,
            detail=e.detail or {},
            created_at=e.created_at,
        )
        for e, name in rows[: query.limit]
    ]
    cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1][0]
        cursor = encode_cursor(last.created_at, str(last.id))
    return LogPage(entries=entries, next_cursor=cursor)
