"""The platform's settings, from the environment (and CLI flags through overrides)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CommunityConfigError(ValueError):
    """A platform setting is invalid; the message names the variable."""


def _float(env: Mapping[str, str], name: str, default: float, low: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CommunityConfigError(f"{name}: {raw!r} is not a number") from None
    if value < low:
        raise CommunityConfigError(f"{name}: must be at least {low:g}, got {value:g}")
    return value


@dataclass(frozen=True)
class CommunityConfig:
    """Settings of the platform (:mod:`community`).

    :ivar data_dir: where the embedded SQLite database lives (``--data-dir`` /
        ``RELAYCAST_DATA_DIR``, default ``./relaycast-data``); created on first start.
    :ivar database_url: a SQLAlchemy async URL (``RELAYCAST_DATABASE_URL``), e.g.
        ``postgresql+asyncpg://user:pw@127.0.0.1/relaycast``; default SQLite in ``data_dir``.
    :ivar public_url: the service's public base URL for links in API answers and webhooks
        (``RELAYCAST_PUBLIC_URL``; default: the request's own scheme and host).
    :ivar access_ttl_s: lifetime of JWT access tokens, s (``RELAYCAST_ACCESS_TTL_S``, 600).
    :ivar refresh_ttl_s: lifetime of refresh tokens, s (``RELAYCAST_REFRESH_TTL_S``, 30 days).
    :ivar key_overlap_s: a retired JWT signing key is still accepted this long, s
        (``RELAYCAST_JWT_KEY_OVERLAP_S``; default: the access token lifetime).
    :ivar issuer: JWT ``iss`` (``RELAYCAST_JWT_ISSUER``, "relaycast").
    :ivar webhook_urls: operator webhook endpoints (``RELAYCAST_WEBHOOK_URLS``, comma-separated).
    :ivar webhook_secret: their Standard Webhooks secret (``RELAYCAST_WEBHOOK_SECRET``,
        ``whsec_`` + base64).
    :ivar cookie_secure: mark cookies ``Secure`` (``RELAYCAST_COOKIE_SECURE``; default when
        ``public_url`` is https).
    :ivar demo_user: the user owning the demo channel created at start-up (""= none).
    :ivar chat_retention_days: stored chat messages older than this are deleted, days
        (``RELAYCAST_CHAT_RETENTION_DAYS``, 30; 0 keeps them forever).
    """

    data_dir: Path = Path("relaycast-data")
    database_url: str = field(default="", repr=False)
    public_url: str = ""
    access_ttl_s: float = 600.0
    refresh_ttl_s: float = 30 * 86400.0
    key_overlap_s: float = 600.0
    issuer: str = "relaycast"
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = field(default="", repr=False)
    cookie_secure: bool = False
    chat_retention_days: float = 30.0

    @property
    def url(self) -> str:
        """The SQLAlchemy URL in use: ``database_url`` or SQLite in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'relaycast.db').resolve()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> CommunityConfig:
        """Read ``RELAYCAST_*``; non-None ``overrides`` win.  :raises CommunityConfigError:"""
        env = os.environ if env is None else env
        access = _float(env, "RELAYCAST_ACCESS_TTL_S", 600.0, 30.0)
        public = env.get("RELAYCAST_PUBLIC_URL", "").rstrip("/")
        values: dict[str, Any] = {
            "data_dir": Path(env.get("RELAYCAST_DATA_DIR") or "relaycast-data"),
            "database_url": env.get("RELAYCAST_DATABASE_URL", ""),
            "public_url": public,
            "access_ttl_s": access,
            "refresh_ttl_s": _float(env, "RELAYCAST_REFRESH_TTL_S", 30 * 86400.0, 60.0),
            "key_overlap_s": _float(env, "RELAYCAST_JWT_KEY_OVERLAP_S", access, 0.0),
            "issuer": env.get("RELAYCAST_JWT_ISSUER") or "relaycast",
            "webhook_urls": tuple(u.strip() for u in env.get("RELAYCAST_WEBHOOK_URLS", "").split(",") if u.strip()),
            "webhook_secret": env.get("RELAYCAST_WEBHOOK_SECRET", ""),
            "chat_retention_days": _float(env, "RELAYCAST_CHAT_RETENTION_DAYS", 30.0, 0.0),
            "cookie_secure": env.get("RELAYCAST_COOKIE_SECURE", "1" if public.startswith("https:") else "0").lower()
            in ("1", "true", "yes"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values["data_dir"], str):
            values["data_dir"] = Path(values["data_dir"])
        url = values["database_url"]
        if url and not url.startswith(("sqlite+aiosqlite:", "postgresql+asyncpg:")):
            raise CommunityConfigError(
                "RELAYCAST_DATABASE_URL: use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        for hook in values["webhook_urls"]:
            if not hook.startswith(("http://", "https://")):
                raise CommunityConfigError(f"RELAYCAST_WEBHOOK_URLS: {hook!r} is not an http(s) URL")
        if values["webhook_urls"] and not values["webhook_secret"]:
            raise CommunityConfigError("RELAYCAST_WEBHOOK_SECRET is required with RELAYCAST_WEBHOOK_URLS")
        return cls(**values)
