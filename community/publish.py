"""Publishing to channels: the platform's :class:`~signaling.publish_auth.PublishAuthority`.

Every channel is a room.  ``POST /whip/{channel}`` is admitted with

* one of the channel's stream keys (``Authorization: Bearer sk_…``): looked up by its
  SHA-256 hex digest (``stream_keys.key_hash``); a revoked key is 401 ``invalid_token``, a
  key of another channel 403 ``insufficient_scope`` (RFC 6750 §3.1); or
* an access JWT (RFC 7519) whose ``grants.publish`` lists the channel (403 when it does
  not; 401 when expired or invalid).

A suspended owner's credentials are refused (403).  A private channel's viewers (WHEP,
LL-HLS, VOD) need a playback token for it (:meth:`ChannelPublishAuthority.authorize_view`).

The WHIP hot path stays cheap: key digest → (channel, key id, owner) and channel name →
(owner, private) are cached for :data:`CACHE_TTL_S`, dropped at once on this instance when a
key is revoked (``key.revoked``), a user is suspended (``user.suspended``) or a channel is
changed; other instances see the change within :data:`CACHE_TTL_S` (the revocation itself
also ends the live session on every instance through the session service).
``last_used_at`` is written in batches (:data:`LAST_USED_FLUSH_S`) off the admission path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from signaling.app_keys import ROOMS, SESSION_SERVICE
from signaling.publish_auth import (
    AccessRefused,
    PublishAuthority,
    PublishGrant,
    key_digest,
    same_digest,
)
from signaling.sessions import SessionRefused

from .app import COMMUNITY, Community
from .models import Channel, StreamKey, utcnow
from .tokens import InvalidToken, TokenService

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger(__name__)

CACHE_TTL_S = 5.0
"""How long a key or channel lookup is reused, s (also: how long another instance may still
admit a key revoked elsewhere, or serve a channel made private elsewhere)."""
MISSING_TTL_S = 1.0
"""How long "no such channel" is reused, s."""
LAST_USED_FLUSH_S = 2.0
"""``stream_keys.last_used_at`` is written at most this long after the admission, s."""
USER_OWNER = "user:"
""":attr:`PublishGrant.owner` prefix of a grant from an access token."""


@dataclass(frozen=True)
class _Key:
    channel: str
    key_id: str
    owner_id: str
    revoked: bool
    expires: float


@dataclass(frozen=True)
class _Channel:
    owner_id: str
    private: bool
    expires: float


def looks_like_jwt(bearer: str) -> bool:
    """A JWS compact serialization has three dot-separated parts (RFC 7515 §7.1); a stream
    key has none."""
    return bearer.count(".") == 2


class ChannelPublishAuthority(PublishAuthority):
    """Channels as rooms (see the module docstring).

    :param app: the signaling app the platform is installed on (its token service, session
        service and suspended-user cache are looked up there when needed).
    """

    def __init__(self, app: web.Application, cache_ttl_s: float = CACHE_TTL_S,
                 flush_delay_s: float = LAST_USED_FLUSH_S) -> None:
        self.app = app
        self.cache_ttl_s = cache_ttl_s
        self.flush_delay_s = flush_delay_s
        self._keys: dict[str, _Key] = {}
        self._channels: dict[str, _Channel] = {}
        self._missing_until: dict[str, float] = {}
        self._used: dict[str, datetime] = {}
        self._flush: asyncio.Task[None] | None = None

    @property
    def community(self) -> Community:
        return self.app[COMMUNITY]

    # ------------------------------------------------------------- lookups
    async def _channel(self, name: str) -> _Channel | None:
        now = time.monotonic()
        cached = self._channels.get(name)
        if cached is not None and cached.expires > now:
            return cached
        if self._missing_until.get(name, 0.0) > now:
            return None
        async with self.community.db.session() as session:
            row = (await session.execute(select(Channel.owner_id, Channel.private)
                                         .where(Channel.name == name))).one_or_none()
        if row is None:
            self._channels.pop(name, None)
            if len(self._missing_until) > 10000:
                self._missing_until.clear()
            self._missing_until[name] = now + MISSING_TTL_S
            return None
        entry = _Channel(row.owner_id, bool(row.private), now + self.cache_ttl_s)
        self._channels[name] = entry
        return entry

    async def _key(self, digest: str) -> _Key | None:
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached.expires > now:
            return cached
        async with self.community.db.session() as session:
            row = (await session.execute(
                select(StreamKey.id, StreamKey.revoked_at, Channel.name, Channel.owner_id)
                .join(Channel, Channel.id == StreamKey.channel_id)
                .where(StreamKey.key_hash == digest))).one_or_none()
        if row is None:
            self._keys.pop(digest, None)
            return None  # unknown keys are not cached: guesses cannot fill the cache
        entry = _Key(row.name, row.id, row.owner_id, row.revoked_at is not None, now + self.cache_ttl_s)
        self._keys[digest] = entry
        return entry

    def _suspended(self, user_id: str) -> bool:
        suspended = self.community.services.get("suspended")
        return suspended is not None and suspended.contains(user_id)

    def _tokens(self) -> TokenService:
        tokens: TokenService | None = self.community.services.get("tokens")
        if tokens is None:
            raise AccessRefused.invalid("access tokens are not available")
        return tokens

    # ------------------------------------------------------ PublishAuthority
    async def room_exists(self, room: str) -> bool:
        return await self._channel(room) is not None

    async def authorize(self, room: str, bearer: str) -> PublishGrant:
        """A stream key of ``room`` or an access token granting it (module docstring).

        :raises AccessRefused: 401 unknown/revoked key or invalid/expired token; 403 a key
            or token of another channel, or a suspended owner.
        """
        if looks_like_jwt(bearer):
            return self._authorize_token(room, bearer)
        digest = key_digest(bearer)
        key = await self._key(digest)
        if key is None:
            raise AccessRefused.invalid("invalid stream key")
        if key.revoked:
            raise AccessRefused.invalid("this stream key was revoked")
        if key.channel != room:
            raise AccessRefused.scope(f"this stream key is not valid for channel {room!r}")
        if self._suspended(key.owner_id):
            raise AccessRefused.scope("the channel's owner is suspended")
        self._note_use(key.key_id)
        return PublishGrant(room, digest, key.key_id, key.owner_id)

    async def room_for_key(self, key: str) -> str | None:
        """The channel of stream key ``key`` (revoked or not: :meth:`authorize` says why
        it refuses); None for an unknown key or an access token."""
        if looks_like_jwt(key):
            return None
        found = await self._key(key_digest(key))
        return None if found is None else found.channel

    def _authorize_token(self, room: str, bearer: str) -> PublishGrant:

        try:
            claims = self._tokens().verify_access(bearer)
        except InvalidToken as exc:
            raise AccessRefused.invalid(exc.detail) from None
        if room not in claims.publish:
            raise AccessRefused.scope(f"the access token grants no publishing to channel {room!r}")
        if self._suspended(claims.user_id):
            raise AccessRefused.scope("this account is suspended")
        return PublishGrant(room, USER_OWNER + claims.user_id, None, claims.user_id)

    async def owns(self, grant_owner: str, room: str, bearer: str) -> bool:
        """A stream-key session: the same key (constant time); a token session: any valid
        access token of the same user that still grants the channel."""
        if grant_owner.startswith(USER_OWNER):
            if not looks_like_jwt(bearer):
                return False
            try:
                grant = self._authorize_token(room, bearer)
            except AccessRefused:
                return False
            return grant.owner == grant_owner
        return bool(grant_owner) and same_digest(grant_owner, bearer)

    async def authorize_view(self, room: str, token: str | None) -> bool:
        """Public channels: anyone (``False``).  Private ones: a playback token for the
        channel (``community.tokens.TokenService.verify_playback``; ``True``).

        :raises AccessRefused: 401 without one (``invalid_token`` when one was sent).
        """
        channel = await self._channel(room)
        if channel is None or not channel.private:
            return False
        if not token:
            raise AccessRefused(401, "this channel is private: send a playback token "
                                     "(?token= or Authorization: Bearer)")

        try:
            self._tokens().verify_playback(token, room)
        except InvalidToken as exc:
            raise AccessRefused.invalid(exc.detail) from None
        return True

    # -------------------------------------------------------- invalidation
    def forget_key(self, digest: str) -> None:
        self._keys.pop(digest, None)

    def forget_channel(self, name: str) -> None:
        self._channels.pop(name, None)
        self._missing_until.pop(name, None)

    def forget_user(self, user_id: str) -> None:
        for digest in [d for d, k in self._keys.items() if k.owner_id == user_id]:
            del self._keys[digest]

    # ------------------------------------------------------- last_used_at
    def _note_use(self, key_id: str) -> None:
        self._used[key_id] = utcnow()
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._flush_later(), name="key-last-used")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_delay_s)
        await self.flush()

    async def flush(self) -> None:
        """Write the pending ``last_used_at`` times now (one transaction)."""
        used, self._used = self._used, {}
        if not used:
            return
        try:
            async with self.community.db.transaction() as session:
                for key_id, at in used.items():
                    await session.execute(update(StreamKey).where(StreamKey.id == key_id).values(last_used_at=at))
        except Exception:
            logger.exception("recording when %d stream keys were last used failed", len(used))

    async def close(self) -> None:
        """Write what is pending; stop the flush task."""
        if self._flush is not None and not self._flush.done():
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
        await self.flush()


def publish_authority_of(app: web.Application) -> ChannelPublishAuthority | None:
    """The installed :class:`ChannelPublishAuthority` (``Community.services["publish"]``)."""
    return app[COMMUNITY].services.get("publish")


async def end_publishing(app: web.Application, channel: str, owner: str | None = None) -> int:
    """End the live WHIP session(s) of ``channel`` — those created with credential ``owner``
    (:attr:`PublishGrant.owner`, e.g. a revoked key's digest) when given — on any signaling
    instance (:meth:`signaling.sessions.SessionService.close_publishers`).

    :returns: how many were ended (0 where the platform runs without signaling).
    """
    service = app.get(SESSION_SERVICE)
    if service is None:
        return 0
    try:
        return await service.close_publishers(channel, owner)
    except SessionRefused as exc:
        logger.warning("could not end the WHIP session of channel %s: %s", channel, exc.detail)
        return 0


def install(app: web.Application) -> None:
    """Make channels the rooms of the signaling app ``app`` (a no-op on an app without
    signaling) and listen for ``key.revoked`` and ``user.suspended``."""
    community = app[COMMUNITY]
    authority = ChannelPublishAuthority(app)
    community.services["publish"] = authority
    rooms = app.get(ROOMS)
    if rooms is not None:
        rooms.authority = authority

    async def on_event(event: str, payload: dict[str, Any]) -> None:
        if event == "key.revoked":
            digest, channel = str(payload.get("key_hash") or ""), str(payload.get("channel") or "")
            authority.forget_key(digest)
            if digest and channel:
                await end_publishing(app, channel, digest)
        elif event == "user.suspended":
            user_id = str(payload.get("user_id") or payload.get("id") or "")
            authority.forget_user(user_id)
            async with community.db.session() as session:
                name = (await session.execute(
                    select(Channel.name).where(Channel.owner_id == user_id))).scalar_one_or_none()
            if name is not None:
                await end_publishing(app, name)
        elif event == "channel.updated":
            authority.forget_channel(str(payload.get("name") or ""))

    community.events.subscribe(on_event, "key.revoked", "user.suspended", "channel.updated")

    async def close(app: web.Application) -> None:
        await authority.close()

    app.on_shutdown.append(close)
