"""Connection-level limits of the HTTP server: a request-head deadline and a per-address cap.

aiohttp reads request heads without a deadline of its own (an idle or half-sent request
waits ``keepalive_timeout``, 3630 s by default) and accepts any number of connections per
peer, so a few hundred slow clients ("slowloris") can hold a server's sockets.
:class:`EdgeSite` listens like :class:`aiohttp.web.TCPSite` but makes its connections
with :class:`EdgeRequestHandler`, which

* closes a connection that has not delivered a complete request head within
  ``header_timeout_s`` of opening, or of its previous response (so an idle keep-alive
  connection is closed after the same time).  It is aiohttp's keep-alive timer, which
  fires only while the connection waits for a head (never during a request, a WebSocket,
  a long poll or an LL-HLS blocking playlist request) and is not pushed back by bytes
  that trickle in;
* admits at most ``connections_per_address`` open connections per TCP peer address
  (the rest get a 429 problem+json, RFC 6585 §4, before any request is read).  Trusted
  proxies (``RELAYCAST_TRUSTED_PROXIES``) carry many clients and are not capped;
* answers malformed requests (aiohttp's parser errors) with RFC 9457 problem+json
  without echoing the offending bytes, logged at INFO rather than as an ERROR traceback;
* names itself ``Server: relaycast`` on those answers (the application does so on its
  own, :mod:`signaling.security_headers`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from common.client_address import Network
from common.problems import PROBLEM_TYPE, reason

from .security_headers import SERVER_NAME

logger = logging.getLogger(__name__)

REFUSED_LINGER_S = 2.0
"""How long a refused connection may stay open (s) for the client to read the 429."""


class ConnectionGuard:
    """Counts open connections per peer address and admits at most ``limit`` of each.

    :param limit: connections per address (>= 1).
    :param exempt: networks never capped (trusted reverse proxies).
    """

    def __init__(self, limit: int, exempt: tuple[Network, ...] = ()) -> None:
        self.limit = limit
        self.exempt = exempt
        self.open: Counter[str] = Counter()
        self.refused = 0

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (nothing counted) when it is over
        the limit."""
        if self.open[address] >= self.limit and not self._exempt(address):
            self.refused += 1
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        """A connection :meth:`admit` counted has closed."""
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    def _exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.exempt)


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The TCP peer's address as text (IPv4-mapped IPv6 as IPv4); "" for a Unix socket."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return ""
    try:
        ip = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return str(peer[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _problem_bytes(status: int, detail: str, headers: dict[str, str]) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection."""
    body = json.dumps(
        {"type": "about:blank", "title": reason(status), "status": status, "detail": detail}
    ).encode()
    lines = [
        f"HTTP/1.1 {status} {reason(status)}",
        f"Content-Type: {PROBLEM_TYPE}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"Server: {SERVER_NAME}",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class EdgeRequestHandler(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol with :class:`ConnectionGuard` admission and problem+json
    answers to malformed requests; ``keepalive_timeout`` is the request-head deadline."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address: str | None = None  # set when admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = peer_address(transport)
        if self._guard.admit(address):
            self._address = address
            super().connection_made(transport)
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("refusing a connection from %s: %d open", address, self._guard.limit)
        detail = f"more than {self._guard.limit} connections from this address"
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_problem_bytes(429, detail, {"Retry-After": "10"}))
        # Half-close after the answer and drop what the client sends until it closes:
        # closing with its request unread would reset the connection, and the reset could
        # overtake the answer.  At most REFUSED_LINGER_S.
        transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is None:
            return  # refused in connection_made: aiohttp never saw this connection
        self._guard.release(self._address)
        self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is None:
            return  # refused: dropped
        super().data_received(data)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            # The client's bytes are at fault: no traceback, and the bytes are not echoed
            # (they may hold an Authorization header); the log record is redacted anyway.
            self.logger.info("malformed HTTP request from %s: %s", request.remote, exc)
            detail = "malformed HTTP request: " + HTTPStatus(status).phrase.lower()
            response: web.StreamResponse = web.Response(
                status=status,
                text=json.dumps(
                    {
                        "type": "about:blank",
                        "title": reason(status),
                        "status": status,
                        "detail": detail,
                    }
                ),
                content_type=PROBLEM_TYPE,
            )
            response.force_close()
        else:
            response = super().handle_error(request, status, exc, message)
        response.headers["Server"] = SERVER_NAME
        return response


class EdgeSite(web.BaseSite):
    """A TCP site (like :class:`aiohttp.web.TCPSite`) whose connections are
    :class:`EdgeRequestHandler` with ``header_timeout_s`` (s) and ``guard``.

    :param runner: a set-up :class:`aiohttp.web.AppRunner`.
    :param host: listen address ("" or ``None``: all).
    :param port: listen port (0: a free one).
    """

    __slots__ = ("_host", "_port", "_guard", "_handler_kwargs")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        guard: ConnectionGuard,
        header_timeout_s: float,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._guard = guard
        self._handler_kwargs: dict[str, Any] = {
            "keepalive_timeout": header_timeout_s,
            "access_log": None,
        }

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None, "call runner.setup() first"

        def protocol() -> EdgeRequestHandler:
            return EdgeRequestHandler(server, self._guard, loop=loop, **self._handler_kwargs)

        self._server = await loop.create_server(
            protocol, self._host or None, self._port, backlog=self._backlog, reuse_address=True
        )
