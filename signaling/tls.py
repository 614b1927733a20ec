"""HTTPS and WSS on the service's own port: the TLS context, its checks and reload, and a site
that answers plain HTTP on that port with a redirect.

Browsers give a page the camera and microphone only in a secure context (HTTPS, or
``localhost``), so a broadcaster on another machine needs the studio over HTTPS.

* :func:`server_context`: TLS 1.2 or newer (RFC 8996 retired 1.0 and 1.1), forward-secret
  AEAD suites only for TLS 1.2 (ECDHE with AES-GCM or ChaCha20-Poly1305, RFC 9325 §4.2;
  TLS 1.3's suites are all such), ALPN ``http/1.1`` (aiohttp speaks HTTP/1.1).  A
  certificate that is expired, not yet valid, unreadable, or whose key does not match is
  refused with a :class:`TlsError` that says which — at start-up, before anything listens.
* :func:`reload_context`: the same checks, then the new certificate and key go into the
  running context (``SIGHUP``): new connections get them, open ones (WebSockets, long
  polls) keep theirs; a refused file leaves the old certificate in use.
* :class:`HttpsSite`: one listening port for both.  Each accepted connection's first byte
  is peeked (``MSG_PEEK``, nothing consumed): a TLS handshake record (content type 22,
  RFC 8446 §5.1) goes to TLS and then the app; anything else is answered
  ``308 Permanent Redirect`` to the same path on ``https://`` (a ``POST`` stays a
  ``POST``, RFC 9110 §15.4.9) with a one-line "HTTPS needed" body, and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509

from .http_guard import ConnectionGuard, EdgeRequestHandler, EdgeSite
from .security_headers import HSTS, is_https

__all__ = ["HSTS", "HttpsSite", "TlsError", "is_https", "reload_context", "server_context"]

logger = logging.getLogger(__name__)

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""OpenSSL cipher string for TLS 1.2: ECDHE key exchange, AEAD only."""
_TLS_HANDSHAKE = 0x16
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_MAX_HEAD = 8192


class TlsError(ValueError):
    """A certificate or key that cannot be served (the message says why)."""


def check_certificate(cert_path: str, key_path: str, *, now: datetime.datetime | None = None) -> x509.Certificate:
    """The leaf certificate of ``cert_path`` (PEM; a chain may follow it), checked for
    dates.  :raises TlsError: unreadable, not PEM, expired or not yet valid."""
    for label, path in (("certificate", cert_path), ("key", key_path)):
        if not Path(path).is_file():
            raise TlsError(f"the TLS {label} file {path} does not exist")
    try:
        pem = Path(cert_path).read_bytes()
        cert = x509.load_pem_x509_certificates(pem)[0]
    except (OSError, ValueError) as exc:
        raise TlsError(f"{cert_path} is not a PEM certificate ({exc})") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        raise TlsError(f"the certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        raise TlsError(f"the certificate {cert_path} is not valid before "
                       f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return cert


def _load_chain(context: ssl.SSLContext, cert_path: str, key_path: str) -> None:
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsError(f"the key {key_path} does not belong to the certificate {cert_path}") from None
        raise TlsError(f"OpenSSL refused {cert_path} / {key_path}: {exc.reason or exc}") from None
    except OSError as exc:  # unreadable, or an encrypted key (no passphrase is asked for)
        raise TlsError(f"{cert_path} / {key_path} could not be read: {exc}") from None


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """The service's TLS context (see the module docstring).  :raises TlsError:"""
    check_certificate(cert_path, key_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    _load_chain(context, cert_path, key_path)
    return context


def reload_context(context: ssl.SSLContext, cert_path: str, key_path: str) -> x509.Certificate:
    """Put the (renewed) certificate and key into the running ``context``, after the same
    checks as at start-up; the old ones stay when they fail.  :raises TlsError:"""
    server_context(cert_path, key_path)  # every check, on a context of its own
    context.load_cert_chain(cert_path, key_path)
    return check_certificate(cert_path, key_path)


def https_needed(request_head: bytes) -> bytes:
    """The answer to a plain-HTTP request on the HTTPS port: 308 to ``https://`` + the
    request's own Host and target, or 400 when the request has no usable Host."""
    lines = request_head.split(b"\r\n")
    parts = lines[0].split(b" ")
    target = parts[1].decode("latin-1") if len(parts) == 3 and parts[1].startswith(b"/") else "/"
    host = next((line.split(b":", 1)[1].strip().decode("latin-1") for line in lines[1:]
                 if line.lower().startswith(b"host:")), "")
    if not _HOST.match(host) or any(c in target for c in "\r\n "):
        body = b"HTTPS needed: this server speaks HTTPS only.\n"
        return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    location = f"https://{host}{target}"
    body = f"HTTPS needed: {location}\n".encode()
    return (f"HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class _PlainHttp(asyncio.Protocol):
    """Reads a plain-HTTP request head (at most 8 KiB) and answers :func:`https_needed`."""

    def __init__(self) -> None:
        self._head = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head or len(self._head) > _MAX_HEAD:
            assert self._transport is not None
            self._transport.write(https_needed(self._head.split(b"\r\n\r\n", 1)[0]))
            self._transport.close()


class _Listeners:
    """What :class:`aiohttp.web.BaseSite` keeps as its server: the listening sockets and
    their accept loops (``close`` / ``wait_closed`` / ``sockets``, as an asyncio server)."""

    def __init__(self, sockets: list[socket.socket], tasks: list[asyncio.Task[None]],
                 connections: set[asyncio.Task[None]]) -> None:
        self.sockets = sockets
        self._tasks = tasks
        self._connections = connections

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._connections):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        for task in [*self._tasks, *self._connections]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class HttpsSite(EdgeSite):
    """:class:`~signaling.http_guard.EdgeSite` over TLS with ``context`` (see the module
    docstring); plain HTTP on the port is redirected to HTTPS."""

    __slots__ = ("_context", "_timeout_s")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, context: ssl.SSLContext,
                 guard: ConnectionGuard, header_timeout_s: float, backlog: int = 128) -> None:
        super().__init__(runner, host, port, guard=guard, header_timeout_s=header_timeout_s, backlog=backlog)
        self._context = context
        self._timeout_s = header_timeout_s

    @property
    def name(self) -> str:
        return f"https://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None, "call runner.setup() first"

        def protocol() -> EdgeRequestHandler:
            return EdgeRequestHandler(server, self._guard, loop=loop, **self._handler_kwargs)

        sockets = _listen(self._host, self._port, self._backlog)
        connections: set[asyncio.Task[None]] = set()
        tasks = [loop.create_task(self._accept(sock, protocol, connections), name="https-accept")
                 for sock in sockets]
        self._server = _Listeners(sockets, tasks, connections)  # type: ignore[assignment]

    async def _accept(self, listener: socket.socket, protocol: Callable[[], asyncio.Protocol],
                      connections: set[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and the like: wait, as asyncio's own server does
                logger.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._route(sock, protocol))
            connections.add(task)
            task.add_done_callback(connections.discard)

    async def _route(self, sock: socket.socket, protocol: Callable[[], asyncio.Protocol]) -> None:
        """TLS or plain HTTP, by the connection's first byte (peeked)."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self._timeout_s):
                first = await _peek(loop, sock)
            if not first:
                sock.close()
                return
            if first[0] == _TLS_HANDSHAKE:
                await loop.connect_accepted_socket(protocol, sock, ssl=self._context,
                                                   ssl_handshake_timeout=self._timeout_s)
            else:
                await loop.connect_accepted_socket(_PlainHttp, sock)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            logger.debug("connection dropped before HTTP: %r", exc)
            sock.close()


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first byte waiting on ``sock``, left there (empty: the peer closed)."""
    while True:
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())


def _listen(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (None or "": every IPv4 and IPv6 address) and ``port``
    (0: a free one, the same for all)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
