"""The Bearer token of a request's ``Authorization`` header (RFC 6750 §2.1)."""

from __future__ import annotations

from aiohttp import web


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 9110
    §11.1), or ``None`` without a non-empty one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    token = value.strip()
    return token if scheme.lower() == "bearer" and token else None
