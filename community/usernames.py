"""The username rule.  A username is also the user's channel name, so it appears in URL
paths (``/watch/{name}``, ``/whip/{name}``, ``/hls/{name}/...``) and must not shadow a page
or a service path."""

from __future__ import annotations

import re

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{2,24}$")
"""3–25 characters: lower-case ASCII letters, digits and ``_``, not starting with ``_``."""

RESERVED = frozenset(
    {
        "admin",
        "administrator",
        "api",
        "static",
        "hls",
        "vod",
        "whip",
        "whep",
        "watch",
        "broadcast",
        "studio",
        "login",
        "logout",
        "register",
        "signup",
        "settings",
        "notifications",
        "search",
        "category",
        "categories",
        "thumbnails",
        "socket_io",
        "socketio",
        "healthz",
        "readyz",
        "metrics",
        "demo",
        "root",
        "system",
        "relaycast",
        "support",
        "help",
        "about",
        "me",
        "null",
        "undefined",
        "anonymous",
        "moderator",
        "streams",
        "channels",
        "users",
        "openapi",
    }
)
"""Names nobody can register.  ``demo`` is the system's demo channel, created by the
service itself; ``admin`` is the first-run administrator."""


def normalize_username(value: str) -> str:
    """``value`` stripped and lower-cased (logins are case-insensitive)."""
    return value.strip().lower()


def username_problem(name: str) -> str | None:
    """Why ``name`` (already normalized) cannot be registered, or ``None`` when it can."""
    if not USERNAME_RE.fullmatch(name):
        return (
            "3 to 25 characters: lower-case letters, digits and '_', "
            "starting with a letter or digit"
        )
    if name in RESERVED:
        return "this name is reserved"
    return None
