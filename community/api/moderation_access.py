"""Who may moderate a channel's chat, as the moderation API checks it on every call, and the
helpers its modules share (:mod:`community.api.moderation`, :mod:`community.api.blocked_terms`,
:mod:`community.api.chat_reports`).

* the channel's **moderators** — its owner (the broadcaster), the users the owner appointed
  and admins — act on its chat; anyone else gets 403 (a moderator of one channel has no
  power in another);
* the **owner or an admin** appoints and removes moderators;
* anyone who can see the channel reads what is public about its chat.  A private channel is
  404 to those who may not watch it, as in the channel API (RFC 9457 problems).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from common.names import ROOM_RE
from common.problems import HttpProblem
from signaling.app_keys import CHAT
from signaling.chat import ChatRefused, ChatService, ChatUnavailable

from ..app import COMMUNITY, Community
from ..chat_moderation import policy_of, roles
from ..models import Channel, ChannelModerator, ChatMessage
from .base import Call
from .streams import can_view

MESSAGE_ID = r"^[A-Za-z0-9_-]{1,32}$"
"""A chat message id (the chat service's are 32 hex characters)."""
MESSAGE_ID_RE = re.compile(MESSAGE_ID)

Need = Literal["viewer", "moderator", "owner"]


class UserRef(BaseModel):
    """A user as lists show them."""

    id: str
    username: str


@dataclass
class Access:
    """The channel of the call and the caller's badges in it."""

    channel: Channel
    badges: tuple[str, ...]


async def channel_access(
    call: Call[Any, Any], session: AsyncSession, need: Need = "viewer"
) -> Access:
    """The channel ``{name}`` as the caller sees it.

    :param need: ``viewer`` (may see the channel), ``moderator`` or ``owner`` (owner or admin).
    :raises HttpProblem: 404 unknown (or private and not allowed), 403 not enough rights.
    """
    name = call.path("name")
    channel = (
        await session.scalar(select(Channel).where(Channel.name == name))
        if ROOM_RE.fullmatch(name)
        else None
    )
    if channel is None:
        raise HttpProblem(404, None, "no such channel")
    principal = call.principal
    badges: tuple[str, ...] = ()
    if principal is not None:
        appointed = await session.get(ChannelModerator, (channel.id, principal.user_id))
        badges = roles(
            principal.user_id,
            channel.owner_id,
            [principal.user_id] if appointed else [],
            principal.is_admin,
        )
    if not badges and not await can_view(session, channel, principal):
        raise HttpProblem(404, None, "no such channel")  # a private channel is not revealed
    if need == "moderator" and not badges:
        raise HttpProblem(403, None, "only the channel's moderators may do this")
    if need == "owner" and not {"broadcaster", "admin"} & set(badges):
        raise HttpProblem(403, None, "only the channel's owner or an admin may do this")
    return Access(channel, badges)


def community_of(call: Call[Any, Any]) -> Community:
    """The platform of the call's app."""
    return call.request.app[COMMUNITY]


def rules_changed(call: Call[Any, Any], room: str | None = None) -> None:
    """Drop the cached chat rules of ``room`` (of every room and the server's: ``None``) in
    this process's policy, so the next message sees the change."""
    policy = policy_of(call.request.app)
    if policy is not None:
        policy.invalidate(room)


def chat_of(app: web.Application) -> ChatService:
    """The app's chat service.  :raises HttpProblem: 503 ``unavailable`` without one."""
    service = app.get(CHAT)
    if service is None:
        raise HttpProblem(503, None, "chat is not running on this server", code="unavailable")
    return service


def unavailable(exc: ChatRefused) -> HttpProblem:
    """The 503 problem of a chat store that did not answer (``code`` ``unavailable``)."""
    return HttpProblem(503, None, exc.detail, headers={"Retry-After": "5"}, code=exc.code)


def upsert(
    dialect: str,
    model: Any,
    values: dict[str, Any],
    keys: list[str],
    update_fields: list[str] | None = None,
) -> Any:
    """``INSERT … ON CONFLICT (keys) DO NOTHING`` (or ``DO UPDATE`` of ``update_fields``) on
    SQLite and PostgreSQL alike: concurrent writers never hit a unique-key error."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model).values(
        **values
    )
    if not update_fields:
        return insert.on_conflict_do_nothing(index_elements=keys)
    return insert.on_conflict_do_update(
        index_elements=keys, set_={f: insert.excluded[f] for f in update_fields}
    )


def message_json(row: ChatMessage) -> dict[str, Any]:
    """A stored message as the pages showed it: ``{id, seq, ts, from, text}``."""
    sender: dict[str, Any] = {"id": row.sender_id, "name": row.sender_name, "role": row.sender_role}
    if row.user_id:
        sender["user"] = row.user_id
    return {
        "id": row.id,
        "seq": row.seq,
        "ts": int(row.sent_at.timestamp() * 1000),
        "from": sender,
        "text": row.text,
    }


async def find_message(
    app: web.Application, session: AsyncSession, channel: Channel, message_id: str
) -> dict[str, Any] | None:
    """The undeleted message ``message_id`` of the channel: from the room's recent history,
    else from the stored messages."""
    service = app.get(CHAT)
    if service is not None:
        try:
            for message in await service.history(channel.name):
                if message.get("id") == message_id:
                    return {k: v for k, v in message.items() if k != "type"}
        except ChatUnavailable:  # the store is unreachable: the database may still know it
            pass
    row = await session.scalar(
        select(ChatMessage).where(
            ChatMessage.id == message_id,
            ChatMessage.channel_id == channel.id,
            ChatMessage.deleted_at.is_(None),
        )
    )
    return None if row is None else message_json(row)
