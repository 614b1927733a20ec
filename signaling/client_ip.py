"""The address a request comes from, behind the configured trusted proxies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from common.client_address import Network, client_address

TRUSTED_PROXIES: web.AppKey[tuple[Network, ...]] = web.AppKey("trusted_proxies", tuple)
"""``RELAYCAST_TRUSTED_PROXIES``, set on the app by :func:`signaling.app.create_app`."""


def client_of(request: web.Request) -> str:
    """The client address of ``request`` (:func:`common.client_address.client_address` with
    ``RELAYCAST_TRUSTED_PROXIES``); per-client limits and throttles are keyed by it."""
    return client_address(request.remote, request.headers, request.config_dict.get(TRUSTED_PROXIES, ()))


def handshake_request(environ: Mapping[str, Any]) -> web.Request | None:
    """The aiohttp request that opened a Socket.IO connection: python-engineio keeps it in
    the connection's environ as ``"aiohttp.request"`` (the handshake, whichever transport
    carries the session afterwards); ``None`` when ``environ`` is not such an environ."""
    request = environ.get("aiohttp.request") if isinstance(environ, Mapping) else None
    return request if isinstance(request, web.Request) else None
