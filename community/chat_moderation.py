"""Chat moderation: the platform's :class:`signaling.chat.ChatPolicy` for channels' rooms.

:class:`ChannelChatPolicy` decides about every message of every path (data channel,
Socket.IO, REST) before it is numbered, in this order — the first rule that applies wins:

1. **banned / timed out** (``chat_bans`` row of the sender's :attr:`Sender.target`: the
   user id, or ``guest:<participant id>``) → ``banned`` / ``timed_out`` (``retry_after`` =
   seconds left of the timeout);
2. **guests off** (``guests_allowed`` false and no user) → ``guests_off``;
3. **followers only** (``followers_only_s`` set: the user's ``Follow.created_at`` at least
   that many seconds ago; guests never pass) → ``followers_only``;
4. **slow mode** (``slow_mode_s`` > 0: that long between two messages of one sender target,
   counted in this process) → ``slow_mode`` with ``retry_after``;
5. **links off** (``links_allowed`` false and :func:`community.chat_filter.contains_link`)
   → ``links_off``;
6. **blocked terms** (the channel's list, the server's list and
   :data:`community.chat_filter.DEFAULT_TERMS`, matched by
   :class:`community.chat_filter.TermMatcher`): ``block`` → ``blocked_term`` (the term is
   not echoed), ``hold`` → held for review (a ``chat_reports`` row of kind ``held`` with
   the message; it is not fanned out until a moderator approves it);
7. allowed, with the sender's badges (``broadcaster``, ``admin``, ``moderator``).

Moderators — the channel's owner (the broadcaster), its appointed moderators and admins —
skip rules 3, 4, 5 and the ``hold`` action of rule 6; a ``block`` term refuses them too.

No database round trip on the hot path: each room's rules (channel owner, settings,
moderators, active bans, terms compiled into one matcher) are kept in memory and reloaded
when older than :data:`RULES_TTL_S`; a change made through this process's API drops the
room's entry at once (:meth:`ChannelChatPolicy.invalidate`); other instances see it within
:data:`RULES_TTL_S`.  Follows are looked up per user and kept :data:`FOLLOW_TTL_S` (a follow
old enough) or :data:`RULES_TTL_S` (none yet, or too young).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from signaling.app_keys import CHAT
from signaling.chat import ChatPolicy, Sender, Verdict

from .app import COMMUNITY
from .chat_filter import DEFAULT_TERMS, TermMatcher, contains_link
from .database import Database
from .models import (
    BlockedTerm,
    Channel,
    ChannelModerator,
    ChatBan,
    ChatReport,
    ChatSettings,
    Follow,
    ModerationEntry,
    Stream,
    User,
)

logger = logging.getLogger(__name__)

RULES_TTL_S = 2.0
"""A room's cached rules (and the server's terms and admins) are reloaded when older, s."""
FOLLOW_TTL_S = 30.0
"""A follow old enough for followers-only mode is reused this long, s."""
MAX_ROOMS = 10_000
"""Rooms whose rules are kept; past it, entries unused for a minute are dropped."""
POLICY = "chat_policy"
""":attr:`community.app.Community.services` key of the :class:`ChannelChatPolicy`."""

RANKS = {"admin": 3, "broadcaster": 2, "moderator": 1}
"""A moderator action against someone needs a higher rank than theirs (others rank 0)."""


@dataclass(frozen=True)
class Settings:
    """A channel's chat settings (``chat_settings``; the defaults when it has no row)."""

    slow_mode_s: int = 0
    followers_only_s: int | None = None
    guests_allowed: bool = True
    links_allowed: bool = True

    @classmethod
    def of(cls, row: ChatSettings | None) -> Settings:
        if row is None:
            return cls()
        return cls(row.slow_mode_s, row.followers_only_s, row.guests_allowed, row.links_allowed)


@dataclass
class RoomRules:
    """What :meth:`ChannelChatPolicy.check` needs about one room, loaded at ``loaded_at``
    (monotonic s).  ``bans``: target → expiry (epoch s; ``None`` = ban)."""

    channel_id: str | None
    owner_id: str | None
    settings: Settings
    moderators: frozenset[str]
    bans: dict[str, float | None]
    matcher: TermMatcher
    loaded_at: float
    used_at: float = 0.0


@dataclass
class _Global:
    admins: frozenset[str] = frozenset()
    terms: tuple[tuple[str, str], ...] = ()
    loaded_at: float = float("-inf")


def roles(
    user_id: str | None, owner_id: str | None, moderators: Iterable[str], admin: bool
) -> tuple[str, ...]:
    """The badges of a user in a channel, highest first: ``broadcaster``, ``admin``,
    ``moderator`` (empty for a guest or an ordinary viewer)."""
    if user_id is None:
        return ()
    out = []
    if user_id == owner_id:
        out.append("broadcaster")
    if admin:
        out.append("admin")
    if user_id in moderators and user_id != owner_id:
        out.append("moderator")
    return tuple(out)


def rank(badges: Iterable[str]) -> int:
    """The highest :data:`RANKS` of ``badges`` (0 for none)."""
    return max((RANKS.get(b, 0) for b in badges), default=0)


def record(
    session: AsyncSession,
    channel_id: str,
    actor_id: str | None,
    action: str,
    target: str = "",
    target_name: str = "",
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> ModerationEntry:
    """Add a moderation log entry to ``session`` (the caller's transaction commits it with the
    action).  ``action`` is a dotted name (``ban``, ``timeout``, ``message.delete`` …, ≤ 32
    characters); ``target`` a user id, ``guest:<participant id>``, a message id or empty."""
    entry = ModerationEntry(
        channel_id=channel_id,
        actor_id=actor_id,
        action=action[:32],
        target=target[:80],
        target_name=target_name[:64],
        reason=reason[:500],
        detail=detail or {},
    )
    session.add(entry)
    return entry


def _human_s(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} s"


class RulesUnavailable(Exception):
    """A room's rules could not be loaded (the database is unreachable) and none are cached."""


class ChannelChatPolicy(ChatPolicy):
    """Channels' chat rules (module docstring).

    :param db: the platform's open database.
    :param ttl_s: reload a room's rules when older, s.
    :param clock: monotonic seconds (slow mode, cache ages).
    :param wall: epoch seconds (ban expiry, follow age).
    """

    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float = RULES_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.clock = clock
        self.wall = wall
        self._rooms: dict[str, RoomRules] = {}
        self._loading: dict[str, asyncio.Future[RoomRules]] = {}
        self._global = _Global()
        self._matchers: dict[tuple[tuple[str, str], ...], TermMatcher] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
        """(room, sender target) → when the sender's last message was taken (monotonic s)."""
        self._follows: dict[tuple[str, str], tuple[float | None, float]] = {}
        """(channel id, user id) → (followed at (epoch s) or None, reuse until (monotonic s))."""
        self._epoch = 0
        """Counts :meth:`invalidate` calls."""

    # --------------------------------------------------------------- caches
    def invalidate(self, room: str | None = None) -> None:
        """Drop ``room``'s cached rules (every room's, and the server's, when ``None``): the
        next message reloads them."""
        self._epoch += 1  # a load already under way may have read the old rows: not kept
        if room is None:
            self._rooms.clear()
            self._loading.clear()
            self._global.loaded_at = float("-inf")
            self._follows.clear()
        else:
            self._rooms.pop(room, None)
            self._loading.pop(room, None)

    async def rules(self, room: str) -> RoomRules:
        """``room``'s rules, from the cache when younger than ``ttl_s`` (concurrent callers
        share one reload)."""
        now = self.clock()
        cached = self._rooms.get(room)
        if cached is not None and now - cached.loaded_at < self.ttl_s:
            cached.used_at = now
            return cached
        pending = self._loading.get(room)
        if pending is None:
            pending = asyncio.ensure_future(self._load(room))
            self._loading[room] = pending
            pending.add_done_callback(
                lambda done: self._loading.pop(room) if self._loading.get(room) is done else None
            )
        try:
            return await asyncio.shield(pending)
        except (OSError, SQLAlchemyError) as exc:
            if cached is None:
                raise RulesUnavailable(str(exc)) from exc
            # The database is unreachable: keep the last rules for another period.
            logger.warning("chat rules of room %s not reloaded, kept: %s", room, exc)
            cached.loaded_at = now
            return cached

    async def _load(self, room: str) -> RoomRules:
        now = self.clock()
        epoch = self._epoch
        async with self.db.session() as session:
            if now - self._global.loaded_at >= self.ttl_s:
                admins = (
                    await session.scalars(
                        select(User.id).where(User.role == "admin", User.suspended_at.is_(None))
                    )
                ).all()
                server = (
                    await session.execute(
                        select(BlockedTerm.term, BlockedTerm.action)
                        .where(BlockedTerm.channel_id.is_(None))
                        .order_by(BlockedTerm.id)
                    )
                ).all()
                self._global = _Global(
                    frozenset(admins), DEFAULT_TERMS + tuple((t, a) for t, a in server), now
                )
            channel = (
                await session.execute(
                    select(Channel.id, Channel.owner_id).where(Channel.name == room)
                )
            ).one_or_none()
            settings, moderators, terms = Settings(), frozenset[str](), ()
            bans: dict[str, float | None] = {}
            if channel is not None:
                settings = Settings.of(await session.get(ChatSettings, channel.id))
                moderators = frozenset(
                    (
                        await session.scalars(
                            select(ChannelModerator.user_id).where(
                                ChannelModerator.channel_id == channel.id
                            )
                        )
                    ).all()
                )
                wall_now = datetime.fromtimestamp(self.wall(), UTC)
                for target, expires_at in (
                    await session.execute(
                        select(ChatBan.target, ChatBan.expires_at).where(
                            ChatBan.channel_id == channel.id,
                            or_(ChatBan.expires_at.is_(None), ChatBan.expires_at > wall_now),
                        )
                    )
                ).all():
                    bans[target] = None if expires_at is None else expires_at.timestamp()
                terms = tuple(
                    (t, a)
                    for t, a in (
                        await session.execute(
                            select(BlockedTerm.term, BlockedTerm.action)
                            .where(BlockedTerm.channel_id == channel.id)
                            .order_by(BlockedTerm.id)
                        )
                    ).all()
                )
        rules = RoomRules(
            channel.id if channel else None,
            channel.owner_id if channel else None,
            settings,
            moderators,
            bans,
            await self._matcher(self._global.terms + terms),
            now,
            now,
        )
        if self._epoch != epoch:  # invalidated meanwhile: answer the waiters, keep nothing
            return rules
        if len(self._rooms) >= MAX_ROOMS:
            self._rooms = {r: v for r, v in self._rooms.items() if now - v.used_at < 60.0}
        self._rooms[room] = rules
        return rules

    async def _matcher(self, terms: tuple[tuple[str, str], ...]) -> TermMatcher:
        """One compiled matcher per distinct term list, recompiled only when the list changed
        (in a worker thread: a 1,000-term list takes a few hundred ms to compile)."""
        matcher = self._matchers.get(terms)
        if matcher is None:
            matcher = await asyncio.to_thread(TermMatcher.compile, terms)
            if len(self._matchers) >= 256:
                self._matchers.clear()
            self._matchers[terms] = matcher
        return matcher

    async def _followed_at(self, channel_id: str, user_id: str) -> float | None:
        """When ``user_id`` followed the channel (epoch s), ``None`` if not following."""
        key = (channel_id, user_id)
        now = self.clock()
        cached = self._follows.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        async with self.db.session() as session:
            created_at = await session.scalar(
                select(Follow.created_at).where(
                    Follow.channel_id == channel_id, Follow.user_id == user_id
                )
            )
        at = None if created_at is None else created_at.timestamp()
        if len(self._follows) >= MAX_ROOMS * 10:
            self._follows = {k: v for k, v in self._follows.items() if now < v[1]}
        self._follows[key] = (at, now + (FOLLOW_TTL_S if at is not None else self.ttl_s))
        return at

    # --------------------------------------------------------------- policy
    def badges(self, rules: RoomRules, user_id: str | None) -> tuple[str, ...]:
        """``user_id``'s badges in the room of ``rules``."""
        return roles(user_id, rules.owner_id, rules.moderators, user_id in self._global.admins)

    async def check(self, room: str, sender: Sender, text: str) -> Verdict:
        """The verdict on one cleaned message (module docstring: order and codes); refused
        ``unavailable`` when the room's rules were never loaded and the database is
        unreachable."""
        try:
            rules = await self.rules(room)
        except RulesUnavailable:
            return Verdict(
                "refuse", "unavailable", "chat moderation is unavailable right now; not sent"
            )
        badges = self.badges(rules, sender.user_id)
        target = sender.target
        if target in rules.bans:
            expires = rules.bans[target]
            if expires is None:
                return Verdict("refuse", "banned", "you are banned from this channel's chat")
            left = expires - self.wall()
            if left > 0:
                until = datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")
                return Verdict("refuse", "timed_out", f"you are timed out until {until}", left)
        settings = rules.settings
        if sender.user_id is None and not settings.guests_allowed:
            return Verdict(
                "refuse", "guests_off", "this channel does not let guests write: log in to chat"
            )
        moderator = bool(badges)
        if settings.followers_only_s is not None and not moderator:
            verdict = await self._followers_only(rules, sender, settings.followers_only_s)
            if verdict is not None:
                return verdict
        now = self.clock()
        slow = settings.slow_mode_s > 0 and not moderator
        if slow:
            last = self._last_sent.get((room, target))
            if last is not None and now - last < settings.slow_mode_s:
                return Verdict(
                    "refuse",
                    "slow_mode",
                    f"slow mode: one message every {_human_s(settings.slow_mode_s)}",
                    settings.slow_mode_s - (now - last),
                )
        if not settings.links_allowed and not moderator and contains_link(text):
            return Verdict("refuse", "links_off", "links are not allowed in this channel's chat")
        hit = rules.matcher.match(text)
        held = False
        if hit is not None:
            if hit.action == "block":
                return Verdict("refuse", "blocked_term", "your message contains a blocked term")
            held = not moderator
        if slow:  # the slot is taken now: a second message in flight waits its turn
            self._remember(room, target, now, settings.slow_mode_s)
        if held:
            return Verdict("hold", "held", "your message is held for a moderator's review")
        return Verdict(badges=badges)

    async def _followers_only(
        self, rules: RoomRules, sender: Sender, min_age_s: int
    ) -> Verdict | None:
        need = (
            "follow this channel to chat"
            if min_age_s == 0
            else f"follow this channel for at least {_human_s(min_age_s)} to chat"
        )
        if sender.user_id is None or rules.channel_id is None:
            return Verdict("refuse", "followers_only", f"followers-only chat: log in and {need}")
        since = await self._followed_at(rules.channel_id, sender.user_id)
        if since is None:
            return Verdict("refuse", "followers_only", f"followers-only chat: {need}")
        left = since + min_age_s - self.wall()
        if min_age_s > 0 and left > 0:
            return Verdict("refuse", "followers_only", f"followers-only chat: {need}", left)
        return None

    def _remember(self, room: str, target: str, at: float, slow_mode_s: int) -> None:
        if len(self._last_sent) >= MAX_ROOMS * 10:
            self._last_sent = {k: t for k, t in self._last_sent.items() if at - t < 86400}
        self._last_sent[(room, target)] = at

    async def accepted(self, room: str, sender: Sender, message: dict[str, Any]) -> None:
        """Slow mode counts from the moment the message was numbered."""
        key = (room, sender.target)
        if key in self._last_sent:
            self._last_sent[key] = self.clock()

    async def hold(self, room: str, message: dict[str, Any], verdict: Verdict) -> None:
        """Put the held ``message`` (as it would have been shown, without ``seq``) in the
        channel's moderation queue (``chat_reports`` kind ``held``)."""
        rules = await self.rules(room)
        if rules.channel_id is None:
            return
        snapshot = {k: v for k, v in message.items() if k != "type"}
        async with self.db.transaction() as session:
            stream_id = await open_stream(session, rules.channel_id)
            session.add(
                ChatReport(
                    channel_id=rules.channel_id,
                    stream_id=stream_id,
                    kind="held",
                    message_id=str(message.get("id", ""))[:32],
                    message=snapshot,
                    reason="matched a blocked term held for review",
                )
            )

    async def describe(self, room: str, sender: Sender) -> dict[str, Any]:
        """``{"badges": [...], "moderator": bool}`` of ``sender`` in ``room``."""
        badges = self.badges(await self.rules(room), sender.user_id)
        return {"badges": list(badges), "moderator": bool(badges)}


async def open_stream(session: AsyncSession, channel_id: str) -> str | None:
    """The id of the channel's pending-or-live stream, if any."""
    return await session.scalar(
        select(Stream.id).where(Stream.channel_id == channel_id, Stream.status != "ended")
    )


def ban_expiry(duration_s: int | None, now: datetime) -> datetime | None:
    """When a timeout of ``duration_s`` starting at ``now`` ends (``None``: a ban)."""
    return None if duration_s is None else now + timedelta(seconds=duration_s)


def policy_of(app: web.Application) -> ChannelChatPolicy | None:
    """This process's :class:`ChannelChatPolicy` (``None`` before start-up)."""
    policy = app[COMMUNITY].services.get(POLICY)
    return policy if isinstance(policy, ChannelChatPolicy) else None


def setup(app: web.Application) -> None:
    """On start-up (the database open): make the policy, and make it the rules of the app's
    :class:`signaling.chat.ChatService` when the app has one."""

    async def start(app: web.Application) -> None:
        community = app[COMMUNITY]
        policy = ChannelChatPolicy(community.db)
        community.services[POLICY] = policy
        if CHAT in app:
            app[CHAT].policy = policy

    app.on_startup.append(start)
