"""Access, playback and refresh tokens.

* **Access tokens** are JWTs (RFC 7519) signed with HS256 — the only algorithm accepted
  (``algorithms=["HS256"]``, RFC 8725 §3.1: the ``alg`` header never chooses the
  verification algorithm, so ``none``, ``HS512`` or ``RS256`` headers are refused).  The
  header names the signing key (``kid``, RFC 7515 §4.1.4).  Claims: ``iss``
  (``config.issuer``), ``aud`` = :data:`ACCESS_AUDIENCE`, ``sub`` (user id), ``name``
  (username), ``role``, ``iat``, ``nbf``, ``exp`` (``config.access_ttl_s``), ``jti`` and
  ``grants`` = ``{"publish": [channel, ...]}``.  ``iss``, ``aud``, ``exp``, ``nbf`` and
  ``iat`` are required and checked (RFC 7519 §4.1.1–4.1.6; RFC 8725 §3.8–3.9), with
  :data:`LEEWAY_S` of clock skew.
* **Playback tokens** are JWTs of the same keys with ``aud`` = :data:`PLAYBACK_AUDIENCE` and
  ``ch`` = the channel: an access token is never a playback token and vice versa.
* **Signing keys** live in the ``signing_keys`` table (shared by every instance) and are
  cached in memory, so verifying is synchronous and touches no database.  The newest
  unretired key signs.  :meth:`TokenService.rotate_signing_key` retires the current key;
  a retired key still verifies until ``retired_at + config.key_overlap_s``.  The cache is
  reloaded every :data:`KEY_RELOAD_S` and soon after a token names an unknown ``kid`` (a
  key another instance just created).  A key is created on first start.
* **Refresh tokens** are opaque (``rt_`` + 256 random bits), stored as SHA-256 hex, single
  use and rotating: redeeming one issues its successor in the same family; presenting a
  used one again revokes the whole family (RFC 9700 §4.14.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt
from sqlalchemy import select, update

from .app import COMMUNITY
from .config import CommunityConfig
from .database import Database
from .models import RefreshToken, SigningKey, User, new_id, utcnow

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
ACCESS_AUDIENCE = "relaycast"
PLAYBACK_AUDIENCE = "relaycast:playback"
LEEWAY_S = 5.0
"""Clock skew allowed on ``exp``/``nbf``/``iat`` between instances, s."""
KEY_RELOAD_S = 10.0
"""How often the signing-key cache is reloaded from the database, s."""
REFRESH_PREFIX = "rt_"
_REQUIRED = ["iss", "aud", "sub", "exp", "nbf", "iat"]


class InvalidToken(Exception):
    """A token was refused; ``detail`` says why in words safe to show the client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class AccessClaims:
    """A verified access token.  ``expires_at``: UTC."""

    user_id: str
    username: str
    role: str
    publish: tuple[str, ...]
    expires_at: datetime
    session_id: str | None = None
    """``sid``: the refresh-token family (login session) the token was issued in."""


@dataclass(frozen=True)
class _Key:
    kid: str
    secret: bytes
    created_at: datetime
    retired_at: datetime | None


def refresh_digest(token: str) -> str:
    """SHA-256 hex of a refresh token (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenService:
    """Issues and verifies tokens.  ``await start()`` after the database opens (loads the
    keys, creating the first one); ``await close()`` on shutdown.

    :param db: the open :class:`~community.database.Database`.
    :param config: lifetimes (``access_ttl_s``, ``refresh_ttl_s``, ``key_overlap_s``, s)
        and ``issuer``.
    """

    def __init__(self, db: Database, config: CommunityConfig) -> None:
        self.db = db
        self.config = config
        self._keys: dict[str, _Key] = {}
        self._signing: _Key | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._reload_soon: asyncio.Task[None] | None = None
        self._last_reload = 0.0

    # -- signing keys -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the signing keys (creating one when there is none) and reload them every
        :data:`KEY_RELOAD_S`."""
        await self.reload_keys()
        if self._signing is None:
            async with self.db.transaction() as session:
                session.add(SigningKey(secret=secrets.token_urlsafe(32)))
            await self.reload_keys()
        self._reloader = asyncio.create_task(self._run_reload(), name="signing-key-reload")

    async def close(self) -> None:
        for task in (self._reloader, self._reload_soon):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run_reload(self) -> None:
        while True:
            await asyncio.sleep(KEY_RELOAD_S)
            try:
                await self.reload_keys()
            except Exception:
                logger.exception("reloading the JWT signing keys failed")

    async def reload_keys(self) -> None:
        """Read every signing key still valid for verification into the cache."""
        async with self.db.session() as session:
            rows = (await session.execute(select(SigningKey))).scalars().all()
        now = utcnow()
        overlap = timedelta(seconds=self.config.key_overlap_s)
        keys = {
            row.kid: _Key(row.kid, row.secret.encode("ascii"), row.created_at, row.retired_at)
            for row in rows
            if row.retired_at is None or row.retired_at + overlap > now
        }
        current = [k for k in keys.values() if k.retired_at is None]
        self._keys = keys
        self._signing = max(current, key=lambda k: (k.created_at, k.kid)) if current else None
        self._last_reload = time.monotonic()

    async def rotate_signing_key(self) -> str:
        """Retire every current key and create a new one; keys retired longer than the
        overlap window ago are deleted.  :returns: the new ``kid``."""
        now = utcnow()
        async with self.db.transaction() as session:
            await session.execute(
                update(SigningKey).where(SigningKey.retired_at.is_(None)).values(retired_at=now)
            )
            for old in (
                await session.execute(select(SigningKey).where(SigningKey.retired_at.is_not(None)))
            ).scalars():
                if (
                    old.retired_at is not None
                    and old.retired_at + timedelta(seconds=self.config.key_overlap_s) <= now
                ):
                    await session.delete(old)
            key = SigningKey(secret=secrets.token_urlsafe(32), created_at=now)
            session.add(key)
            await session.flush()
            kid = key.kid
        await self.reload_keys()
        logger.info("JWT signing key rotated; new kid %s", kid)
        return kid

    def _key_for(self, kid: str) -> _Key:
        key = self._keys.get(kid)
        if key is not None and key.retired_at is not None:
            if key.retired_at + timedelta(seconds=self.config.key_overlap_s) <= utcnow():
                key = None
        if key is None:
            self._schedule_reload()
            raise InvalidToken("the token's signing key is unknown or retired")
        return key

    def _schedule_reload(self) -> None:
        """Reload the key cache soon (at most once a second): another instance may have
        rotated."""
        if self._reload_soon is not None and not self._reload_soon.done():
            return
        if time.monotonic() - self._last_reload < 1.0:
            return
        try:
            self._reload_soon = asyncio.get_running_loop().create_task(self.reload_keys())
        except RuntimeError:  # no loop: a synchronous caller outside the service
            pass

    def _sign(self, claims: dict[str, Any]) -> str:
        if self._signing is None:
            raise RuntimeError("TokenService.start() has not run")
        return jwt.encode(
            claims, self._signing.secret, algorithm=ALGORITHM, headers={"kid": self._signing.kid}
        )

    def _decode(self, token: str, audience: str) -> dict[str, Any]:
        """Verify signature, algorithm, ``kid`` and the registered claims.
        :raises InvalidToken:"""
        if not token or len(token) > 4096:
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"the token's algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("the token has no kid")
        key = self._key_for(kid)
        try:
            return jwt.decode(
                token,
                key.secret,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self.config.issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is not meant for this use (aud)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token has the wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("invalid token") from None

    def _registered(
        self, audience: str, ttl_s: float, sub: str | None
    ) -> tuple[dict[str, Any], datetime]:
        now = int(time.time())
        expires = now + max(1, int(ttl_s))
        claims: dict[str, Any] = {
            "iss": self.config.issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "jti": new_id(),
        }
        if sub is not None:
            claims["sub"] = sub
        return claims, datetime.fromtimestamp(expires, UTC)

    # -- access tokens ------------------------------------------------------------------

    async def issue_access(
        self, user: User, *, publish: list[str] | None = None, session_id: str | None = None
    ) -> tuple[str, int]:
        """A signed access token for ``user``.  ``publish``: channels granted (default:
        the user's own channel, named after the username); ``session_id``: the refresh
        family it belongs to (claim ``sid``).  :returns: (token, expires_in s)."""
        ttl = int(self.config.access_ttl_s)
        claims, _ = self._registered(ACCESS_AUDIENCE, ttl, user.id)
        claims.update(
            name=user.username,
            role=user.role,
            grants={"publish": list(publish) if publish is not None else [user.username]},
        )
        if session_id is not None:
            claims["sid"] = session_id
        return self._sign(claims), ttl

    def verify_access(self, token: str) -> AccessClaims:
        """Verify an access token (synchronous, no I/O).  :raises InvalidToken:"""
        claims = self._decode(token, ACCESS_AUDIENCE)
        grants = claims.get("grants") or {}
        publish = grants.get("publish", []) if isinstance(grants, dict) else []
        sub, name, role = claims.get("sub"), claims.get("name"), claims.get("role", "viewer")
        if (
            not isinstance(sub, str)
            or not isinstance(name, str)
            or not isinstance(role, str)
            or not isinstance(publish, list)
            or not all(isinstance(c, str) for c in publish)
        ):
            raise InvalidToken("the token's claims are malformed")
        sid = claims.get("sid")
        return AccessClaims(
            sub,
            name,
            role,
            tuple(publish),
            datetime.fromtimestamp(claims["exp"], UTC),
            sid if isinstance(sid, str) else None,
        )

    # -- playback tokens ----------------------------------------------------------------

    async def issue_playback(
        self, channel: str, user_id: str | None, ttl_s: float = 300
    ) -> tuple[str, datetime]:
        """A playback token for ``channel`` (``sub`` = ``user_id`` when given, else
        ``"anonymous"``).  :returns: (token, expires_at UTC)."""
        claims, expires_at = self._registered(PLAYBACK_AUDIENCE, ttl_s, user_id or "anonymous")
        claims["ch"] = channel
        return self._sign(claims), expires_at

    def verify_playback(self, token: str, channel: str) -> None:
        """Verify a playback token for ``channel``.  :raises InvalidToken:"""
        claims = self._decode(token, PLAYBACK_AUDIENCE)
        if claims.get("ch") != channel:
            raise InvalidToken("the playback token is for another channel")

    # -- refresh tokens -----------------------------------------------------------------

    async def issue_refresh(self, session: Any, user_id: str, family_id: str | None = None) -> str:
        """Add a new refresh token for ``user_id`` to ``session`` (the caller commits).
        ``family_id``: the family it succeeds in (a new family when ``None``).
        :returns: the token in clear (``rt_`` + 43 characters), never stored."""
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        session.add(
            RefreshToken(
                user_id=user_id,
                token_hash=refresh_digest(token),
                family_id=family_id or new_id(),
                expires_at=utcnow() + timedelta(seconds=self.config.refresh_ttl_s),
            )
        )
        return token

    async def redeem_refresh(self, token: str) -> tuple[str, str, str]:
        """Use a refresh token once and issue its successor (RFC 9700 §4.14.2).

        The token is marked used atomically (a single conditional ``UPDATE``), so of two
        concurrent redemptions only one wins.  Presenting a token that was already used
        revokes its whole family (committed) before refusing.

        :returns: (user id, family id, the successor refresh token in clear).
        :raises InvalidToken: unknown, expired, revoked or reused.
        """
        if not token.startswith(REFRESH_PREFIX) or len(token) > 128:
            raise InvalidToken("invalid refresh token")
        digest = refresh_digest(token)
        now = utcnow()
        async with self.db.transaction() as session:
            won = await session.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.token_hash == digest,
                    RefreshToken.used_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(used_at=now)
            )
            row = (
                await session.execute(select(RefreshToken).where(RefreshToken.token_hash == digest))
            ).scalar_one_or_none()
            if won.rowcount == 1 and row is not None:  # type: ignore[attr-defined]
                successor = await self.issue_refresh(session, row.user_id, row.family_id)
                return row.user_id, row.family_id, successor
            reused = row is not None and row.used_at is not None and row.revoked_at is None
            if reused and row is not None:
                await session.execute(
                    update(RefreshToken)
                    .where(
                        RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None)
                    )
                    .values(revoked_at=now)
                )
                logger.warning("refresh token reuse: family of user %s revoked", row.user_id)
        if reused:
            raise InvalidToken(
                "refresh token already used; every session of that login was revoked"
            )
        raise InvalidToken("invalid or expired refresh token")

    async def revoke_refresh_family(self, token: str) -> str | None:
        """Revoke the family of ``token`` (logout).  :returns: the user id, or ``None`` when
        the token is unknown."""
        if not token.startswith(REFRESH_PREFIX) or len(token) > 128:
            return None
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(RefreshToken).where(RefreshToken.token_hash == refresh_digest(token))
                )
            ).scalar_one_or_none()
            if row is None:
                return None
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return row.user_id

    @staticmethod
    async def revoke_user_refresh(
        session: Any, user_id: str, *, keep_family: str | None = None
    ) -> None:
        """Revoke every refresh token of ``user_id`` in ``session`` (the caller commits),
        except those of ``keep_family``."""
        where = [RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)]
        if keep_family is not None:
            where.append(RefreshToken.family_id != keep_family)
        await session.execute(update(RefreshToken).where(*where).values(revoked_at=utcnow()))


def tokens_of(app: web.Application) -> TokenService:
    """The :class:`TokenService` of a started platform app (``Community.services["tokens"]``)."""
    service = app[COMMUNITY].services.get("tokens")
    if service is None:
        raise RuntimeError("the token service is not started (community.api.users.setup)")
    return service  # type: ignore[no-any-return]
