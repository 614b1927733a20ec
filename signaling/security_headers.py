"""Response headers that harden the pages and hide the server's software versions.

Every response gets ``Server: relaycast`` (no aiohttp/Python versions), ``X-Content-Type-
Options: nosniff``, ``Referrer-Policy: no-referrer`` (the watch page's ``?token=`` never
leaves in a ``Referer``) and ``X-Frame-Options: DENY``; a response over HTTPS
``Strict-Transport-Security`` (:data:`HSTS`).  HTML pages also get
:data:`PAGE_CSP`, a Content Security Policy (CSP Level 3) that allows exactly what the
pages use: their own scripts, styles and images; ``fetch`` to this origin; hls.js from
``/static/vendor`` with its ``blob:`` worker and Media Source Extensions ``blob:`` media;
nothing may frame them (``frame-ancestors 'none'``, RFC 7034's ``X-Frame-Options`` for
older browsers).  WebRTC media is not governed by CSP.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

SERVER_NAME = "relaycast"
"""The ``Server`` header of every response (RFC 9110 §10.2.4), without versions."""

PAGE_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
"""``Content-Security-Policy`` of the HTML pages."""

HSTS = "max-age=31536000"
"""``Strict-Transport-Security`` on HTTPS responses (RFC 6797 §6.1): a year.  Browsers
ignore it from a connection with a certificate error (§8.1), so a development certificate
not trusted yet pins nothing."""

COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
"""Headers on every response."""

PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, **COMMON_HEADERS}
"""Headers on the HTML pages (also usable by a test server that serves them)."""


async def harden_response(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: :data:`SERVER_NAME`, :data:`COMMON_HEADERS` and, on
    ``text/html``, :data:`PAGE_CSP` (headers a handler set are kept)."""
    response.headers["Server"] = SERVER_NAME
    for name, value in COMMON_HEADERS.items():
        response.headers.setdefault(name, value)
    if is_https(request):
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)


def is_https(request: web.BaseRequest) -> bool:
    """The request came over TLS to this process (:mod:`signaling.tls`; not a proxy's word
    for it: behind a proxy, ``RELAYCAST_COOKIE_SECURE`` and the proxy's own HSTS)."""
    transport: Any = request.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None
