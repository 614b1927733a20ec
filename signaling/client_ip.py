"""The address a request comes from, behind the configured trusted proxies."""

from __future__ import annotations

from aiohttp import web

from common.client_address import client_address

from .app_keys import CONFIG


def client_of(request: web.Request) -> str:
    """The client address of ``request`` (:func:`common.client_address.client_address` with
    ``RELAYCAST_TRUSTED_PROXIES``); per-client limits and throttles are keyed by it."""
    return client_address(request.remote, request.headers, request.app[CONFIG].trusted_proxies)
