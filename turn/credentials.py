"""TURN REST credentials (draft-uberti-behave-turn-rest-00 §2, coturn ``use-auth-secret``).

The signaling server and coturn share a secret.  For each session signaling
mints a username ``"<unix-expiry>:<user-id>"`` and the password
``base64(HMAC-SHA1(secret, username))``; coturn recomputes the password from
the username and refuses it (401) once ``unix-expiry`` is in the past.  coturn
checks the expiry when an allocation is created, not afterwards, so a lifetime
of minutes is enough for sessions of hours (coturn/coturn#774); a page that
reconnects fetches fresh credentials.

Passwords are secrets: they are never logged and :class:`TurnCredential` keeps
them out of its ``repr``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TTL_S = 600
"""Default credential lifetime: 10 minutes."""
MIN_TTL_S = 60
MAX_TTL_S = 3600
"""Lifetimes are bounded to [1 min, 1 h]: minutes, not a day (coturn checks the expiry
only when an allocation is created, so a short lifetime bounds how long a leaked
credential can open new allocations)."""
MIN_SECRET_LENGTH = 16

ICE_URL = re.compile(r"^(stun|stuns|turn|turns):[^\s,]+$")
_USER_ID = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")


class TurnError(ValueError):
    """Invalid TURN configuration or input; the message says which value and why."""


def check_secret(secret: str, name: str = "TURN secret") -> None:
    """:raises TurnError: when ``secret`` is shorter than :data:`MIN_SECRET_LENGTH` characters."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise TurnError(f"{name}: use at least {MIN_SECRET_LENGTH} characters")


def check_ttl(ttl_s: int, name: str = "TURN credential lifetime") -> None:
    """:raises TurnError: unless ``MIN_TTL_S <= ttl_s <= MAX_TTL_S`` (seconds)."""
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise TurnError(f"{name}: {ttl_s} s is outside [{MIN_TTL_S}, {MAX_TTL_S}] s")


def check_urls(urls: Iterable[str], name: str = "TURN URLs") -> tuple[str, ...]:
    """Validate ``stun:``/``stuns:``/``turn:``/``turns:`` URLs (RFC 7064, RFC 7065).

    :returns: the URLs, stripped, empty entries dropped.
    :raises TurnError: naming the first URL that is not one of those schemes.
    """
    out = []
    for url in urls:
        url = url.strip()
        if not url:
            continue
        if not ICE_URL.match(url):
            raise TurnError(f"{name}: {url!r} is not a stun:, stuns:, turn: or turns: URL")
        out.append(url)
    return tuple(out)


def password_for(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))`` — what coturn computes for ``use-auth-secret``."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class TurnCredential:
    """One minted credential.

    :ivar username: ``"<unix-expiry>:<user-id>"``.
    :ivar password: ``base64(HMAC-SHA1(secret, username))`` (not in ``repr``).
    :ivar expires_at: the expiry, Unix seconds.
    """

    username: str
    password: str = field(repr=False)
    expires_at: int

    @property
    def ttl_s(self) -> float:
        """Seconds left until expiry (negative once expired)."""
        return self.expires_at - time.time()


def mint(
    secret: str, user_id: str | None = None, ttl_s: int = DEFAULT_TTL_S, *, now: float | None = None
) -> TurnCredential:
    """Mint a credential for ``user_id`` (random when ``None``) valid ``ttl_s`` seconds from ``now``.

    ``user_id`` appears in clear in STUN messages and coturn's log: never put a
    secret (a WHIP session id, a stream key) there.

    :raises TurnError: short secret, lifetime outside [:data:`MIN_TTL_S`,
        :data:`MAX_TTL_S`], or a user id that is not 1–64 of ``[A-Za-z0-9._@+-]``.
    """
    check_secret(secret)
    check_ttl(ttl_s)
    user_id = secrets.token_hex(8) if user_id is None else user_id
    if not _USER_ID.match(user_id):
        raise TurnError(f"TURN user id {user_id!r}: use 1-64 of A-Z a-z 0-9 . _ @ + -")
    expires_at = int(time.time() if now is None else now) + ttl_s
    username = f"{expires_at}:{user_id}"
    return TurnCredential(username, password_for(secret, username), expires_at)


def verify(secret: str, username: str, password: str, *, now: float | None = None) -> bool:
    """What coturn checks: the password matches and the username's expiry is not past."""
    expiry, sep, _ = username.partition(":")
    if not sep or not expiry.isdigit():
        return False
    if int(expiry) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(password_for(secret, username), password)


def ice_servers(
    urls: Iterable[str],
    secret: str | None,
    user_id: str | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    *,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """``RTCIceServer`` dicts (W3C webrtc-pc §4.2.4) for one session.

    ``stun:``/``stuns:`` URLs go into one entry without credentials; all
    ``turn:``/``turns:`` URLs share one freshly minted credential (so they count
    as one user for coturn's ``user-quota``).  Empty ``urls`` → ``[]``.

    :raises TurnError: a URL of another scheme, or ``turn:`` URLs without a secret.
    """
    urls = check_urls(urls)
    stun = [u for u in urls if u.startswith(("stun:", "stuns:"))]
    turn = [u for u in urls if u.startswith(("turn:", "turns:"))]
    out: list[dict[str, Any]] = []
    if stun:
        out.append({"urls": stun})
    if turn:
        if not secret:
            raise TurnError("turn: URLs need a TURN secret to mint credentials")
        credential = mint(secret, user_id, ttl_s, now=now)
        out.append({
            "urls": turn,
            "username": credential.username,
            "credential": credential.password,
        })
    return out
