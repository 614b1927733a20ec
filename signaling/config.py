"""Signaling configuration: ``RELAYCAST_*`` environment variables, overridable by CLI flags."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from common.client_address import Network, parse_trusted_proxies
from common.config import ConfigError, env_number
from common.names import ROOM_RE, is_room_name
from sfu.config import SfuConfig
from turn import credentials as turn_credentials


@dataclass(frozen=True)
class IceServer:
    """One ``RTCIceServer``: advertised in WHIP/WHEP ``Link`` headers (RFC 9725 §4.6)."""

    url: str
    username: str | None = None
    credential: str | None = None

    @classmethod
    def parse(cls, text: str) -> IceServer:
        """``stun:host:port`` or ``turn:host:port?transport=udp|user|pass``."""
        url, _, rest = text.partition("|")
        if not re.match(r"^(stun|stuns|turn|turns):", url):
            raise ConfigError(f"RELAYCAST_ICE_SERVERS: {url!r} is not a stun:/turn: URL")
        username, _, credential = rest.partition("|")
        return cls(url, username or None, credential or None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": [self.url]}
        if self.username is not None:
            out["username"] = self.username
            out["credential"] = self.credential or ""
        return out


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return int(env_number(env, name, default, lo, hi, integer=True))


@dataclass(frozen=True)
class SignalingConfig:
    """Everything ``relaycast serve`` needs.

    :ivar host/port: listen address (``RELAYCAST_HOST``, ``RELAYCAST_PORT``).
    :ivar demo_room: the demo channel (room) made sure of at start-up, owned by a user of
        the same name (``RELAYCAST_DEMO_ROOM``, default ``demo``; "" = none).
    :ivar demo_stream_key: a stream key of it, stored hashed (``RELAYCAST_STREAM_KEY``; a new
        random key on every start if unset).
    :ivar node_secret: shared secret SFU nodes authenticate with
        (``RELAYCAST_NODE_SECRET``; random per process in the embedded default).
    :ivar embedded_sfu: run one SFU worker in this process (``RELAYCAST_EMBEDDED_SFU``).
    :ivar ice_servers: STUN/TURN servers for clients (``RELAYCAST_ICE_SERVERS``,
        comma-separated ``url|user|pass``).
    :ivar turn_urls/turn_secret/turn_ttl_s: TURN REST (``RELAYCAST_TURN_URLS``,
        ``RELAYCAST_TURN_SECRET``, ``RELAYCAST_TURN_TTL_S``): every session gets
        credentials minted for it (:meth:`client_ice_servers`).
    :ivar request_rate/request_burst: per-client-IP token bucket for POST/PATCH/DELETE
        on WHIP/WHEP (RFC 9725 §5).
    :ivar retry_after_s: ``Retry-After`` for 409 (room not live) and 503.
    :ivar pending_sessions_per_address: WHEP sessions one client address may hold before
        they connect (``RELAYCAST_PENDING_SESSIONS_PER_ADDRESS``, default 5); a POST beyond
        it is answered 429 + ``Retry-After``.  A session stops being pending when the SFU
        reports it connected (ICE and DTLS up) or when it ends — at the latest after the
        SFU's ``RELAYCAST_CONNECT_TIMEOUT_S``.  Bounds the session slots (and sockets) that
        unauthenticated offers which never connect can hold.
    :ivar redis_url: Redis mode (``RELAYCAST_REDIS_URL``, else ``REDIS_URL``): SFU nodes,
        room placement and Socket.IO shared with other signaling instances; ``None`` =
        the in-memory embedded default.
    :ivar trusted_proxies: reverse proxies whose ``Forwarded`` / ``X-Forwarded-For`` name the
        client (``RELAYCAST_TRUSTED_PROXIES``, comma-separated addresses or CIDR networks;
        default none: the TCP peer is the client).  Rate limits and stream-key failure
        throttles are keyed by that client address (:mod:`common.client_address`).
    :ivar viewers_per_node: cascading: at most this many viewers of one room on one node
        before new viewers go to another node (``RELAYCAST_VIEWERS_PER_NODE``; 0 = only
        when the node is full or draining).
    :ivar allowed_origins: the ``Origin`` values the pages' Socket.IO endpoint accepts
        (``RELAYCAST_ALLOWED_ORIGINS``, comma-separated ``scheme://host[:port]``, or ``*``
        for any).  Default empty: the pages' own origin only (``Host``, as python-engineio
        checks it); a connection without an ``Origin`` header (SFU nodes, scripts) is never
        refused for it.  Browsers send ``Origin`` on WebSocket and cross-origin requests
        (RFC 6455 §4.1, RFC 6454 §7), so other sites' pages cannot open a connection.
    :ivar sio_connections_per_address: concurrent connections to the pages' Socket.IO
        namespace from one client address (``RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS``,
        default 20); more are refused.  Behind a reverse proxy set ``trusted_proxies``,
        or every client shares the proxy's address.
    :ivar header_timeout_s: a connection must deliver a complete request head within this
        many seconds of opening or of its previous response, else it is closed
        (``RELAYCAST_HEADER_TIMEOUT_S``; idle keep-alive connections close after it too).
    :ivar connections_per_address: open HTTP connections one TCP peer address may hold; more
        are answered 429 and closed (``RELAYCAST_CONNECTIONS_PER_ADDRESS``; trusted proxies
        are exempt).  See :mod:`signaling.http_guard`.
    :ivar ice_servers_rate/ice_servers_burst: per-client token bucket for
        ``GET /api/ice-servers``, which mints TURN credentials (``RELAYCAST_ICE_SERVERS_RATE``
        requests/s, ``RELAYCAST_ICE_SERVERS_BURST``); 429 + ``Retry-After`` beyond it.
    :ivar tls_cert/tls_key: PEM certificate (chain) and key: the port serves HTTPS and WSS,
        plain HTTP there is redirected (``RELAYCAST_TLS_CERT``, ``RELAYCAST_TLS_KEY``;
        :mod:`signaling.tls`).  Both or neither.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    demo_room: str = "demo"
    demo_stream_key: str | None = None
    node_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    embedded_sfu: bool = True
    ice_servers: tuple[IceServer, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: int = turn_credentials.DEFAULT_TTL_S
    cors_origin: str = "*"
    request_rate: float = 20.0
    request_burst: int = 100
    retry_after_s: int = 3
    rpc_timeout_s: float = 15.0
    redis_url: str | None = field(default=None, repr=False)
    viewers_per_node: int = 0
    pending_sessions_per_address: int = 5
    trusted_proxies: tuple[Network, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    sio_connections_per_address: int = 20
    header_timeout_s: float = 10.0
    connections_per_address: int = 100
    ice_servers_rate: float = 2.0
    ice_servers_burst: int = 30
    tls_cert: str | None = None
    tls_key: str | None = None
    sfu: SfuConfig = field(default_factory=SfuConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SignalingConfig:
        """Read the environment, apply non-None ``overrides`` (CLI flags), validate."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "host": env.get("RELAYCAST_HOST", "127.0.0.1"),
            "port": _int(env, "RELAYCAST_PORT", 8080, 0, 65535),
            "demo_room": env.get("RELAYCAST_DEMO_ROOM", "demo"),
            "demo_stream_key": env.get("RELAYCAST_STREAM_KEY") or None,
            "embedded_sfu": env.get("RELAYCAST_EMBEDDED_SFU", "1").lower() not in ("0", "false", "no"),
            "ice_servers": tuple(
                IceServer.parse(s.strip()) for s in env.get("RELAYCAST_ICE_SERVERS", "").split(",") if s.strip()
            ),
            "turn_urls": tuple(u.strip() for u in env.get("RELAYCAST_TURN_URLS", "").split(",") if u.strip()),
            "turn_secret": env.get("RELAYCAST_TURN_SECRET") or None,
            "turn_ttl_s": _int(env, "RELAYCAST_TURN_TTL_S", turn_credentials.DEFAULT_TTL_S,
                               turn_credentials.MIN_TTL_S, turn_credentials.MAX_TTL_S),
            "cors_origin": env.get("RELAYCAST_CORS_ORIGIN", "*"),
            "request_rate": float(_int(env, "RELAYCAST_REQUEST_RATE", 20, 1, 100000)),
            "request_burst": _int(env, "RELAYCAST_REQUEST_BURST", 100, 1, 1000000),
            "viewers_per_node": _int(env, "RELAYCAST_VIEWERS_PER_NODE", 0, 0, 1000000),
            "pending_sessions_per_address": _int(env, "RELAYCAST_PENDING_SESSIONS_PER_ADDRESS",
                                                 5, 1, 1000000),
            "trusted_proxies": parse_trusted_proxies(env.get("RELAYCAST_TRUSTED_PROXIES", "")),
            "allowed_origins": parse_origins(env.get("RELAYCAST_ALLOWED_ORIGINS", "")),
            "sio_connections_per_address": _int(env, "RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS", 20, 1, 1000000),
            "header_timeout_s": env_number(env, "RELAYCAST_HEADER_TIMEOUT_S", 10.0, 0.1, 3600),
            "connections_per_address": _int(env, "RELAYCAST_CONNECTIONS_PER_ADDRESS", 100, 1, 1000000),
            "ice_servers_rate": env_number(env, "RELAYCAST_ICE_SERVERS_RATE", 2.0, 0.001, 100000),
            "ice_servers_burst": _int(env, "RELAYCAST_ICE_SERVERS_BURST", 30, 1, 1000000),
            "tls_cert": env.get("RELAYCAST_TLS_CERT") or None,
            "tls_key": env.get("RELAYCAST_TLS_KEY") or None,
        }
        redis_var = "RELAYCAST_REDIS_URL" if env.get("RELAYCAST_REDIS_URL") else "REDIS_URL"
        if env.get(redis_var):
            values["redis_url"] = check_redis_url(env[redis_var], redis_var)
        if env.get("RELAYCAST_NODE_SECRET"):
            values["node_secret"] = env["RELAYCAST_NODE_SECRET"]
        sfu = SfuConfig.from_env(env)
        gather = overrides.pop("ice_gather", None)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if gather is not None:
            sfu = replace(sfu, ice_gather=gather)
        config = cls(**values, sfu=sfu)
        if not config.sfu.ice_gather and _is_loopback(config.host):
            # Serving on loopback only: viewers are on this machine, so gather there too.
            config = replace(config, sfu=replace(config.sfu, ice_gather=("127.0.0.1",)))
        config.validate()
        return config

    def validate(self) -> None:
        if self.demo_room and not is_room_name(self.demo_room):
            raise ConfigError(f"RELAYCAST_DEMO_ROOM: {self.demo_room!r} must match {ROOM_RE.pattern}")
        if self.demo_stream_key is not None and len(self.demo_stream_key) < 16:
            raise ConfigError("RELAYCAST_STREAM_KEY: use at least 16 characters")
        if len(self.node_secret) < 16:
            raise ConfigError("RELAYCAST_NODE_SECRET: use at least 16 characters")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range")
        if self.redis_url is not None:
            check_redis_url(self.redis_url, "RELAYCAST_REDIS_URL")
        parse_origins(self.allowed_origins)
        if self.sio_connections_per_address < 1:
            raise ConfigError("RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS: must be at least 1")
        if self.header_timeout_s <= 0:
            raise ConfigError("RELAYCAST_HEADER_TIMEOUT_S: must be positive")
        if self.connections_per_address < 1:
            raise ConfigError("RELAYCAST_CONNECTIONS_PER_ADDRESS: must be at least 1")
        if self.ice_servers_rate <= 0 or self.ice_servers_burst < 1:
            raise ConfigError("RELAYCAST_ICE_SERVERS_RATE / _BURST: must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("HTTPS needs both a certificate and its key (--tls-cert and --tls-key, "
                              "or RELAYCAST_TLS_CERT and RELAYCAST_TLS_KEY)")
        self._validate_turn()

    def _validate_turn(self) -> None:
        try:
            urls = turn_credentials.check_urls(self.turn_urls, "RELAYCAST_TURN_URLS")
            if self.turn_secret is not None:
                turn_credentials.check_secret(self.turn_secret, "RELAYCAST_TURN_SECRET")
            turn_credentials.check_ttl(self.turn_ttl_s, "RELAYCAST_TURN_TTL_S")
        except turn_credentials.TurnError as exc:
            raise ConfigError(str(exc)) from None
        if any(u.startswith(("turn:", "turns:")) for u in urls) and not self.turn_secret:
            raise ConfigError("RELAYCAST_TURN_URLS has turn: URLs: set RELAYCAST_TURN_SECRET (coturn's static-auth-secret)")
        if self.turn_secret and not urls:
            raise ConfigError("RELAYCAST_TURN_SECRET is set but RELAYCAST_TURN_URLS is empty")

    def client_ice_servers(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """``RTCIceServer`` dicts for one session: the static ``ice_servers`` and, with
        TURN REST configured, ``turn_urls`` with credentials minted now for ``user_id``
        (random when ``None``; it is visible to coturn, never use a secret)."""
        out = [s.to_json() for s in self.ice_servers]
        out += turn_credentials.ice_servers(self.turn_urls, self.turn_secret, user_id, self.turn_ttl_s)
        return out


_ORIGIN_RE = re.compile(r"^https?://[^\s/?#@]+$", re.IGNORECASE)


def parse_origins(raw: str | tuple[str, ...], name: str = "RELAYCAST_ALLOWED_ORIGINS") -> tuple[str, ...]:
    """``"https://a.example, http://b.example:8080"`` → origins (RFC 6454 §6.2 serialization:
    ``scheme://host[:port]``, no path; a trailing ``/`` is dropped, scheme and host lowered).

    ``"*"`` alone allows any origin; ``""`` (default) means the pages' own origin only.

    :raises ConfigError: naming ``name`` for anything else (a path, another scheme, ``*``
        mixed with origins).
    """
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part == "*":
            out.append(part)
            continue
        origin = part.removesuffix("/")
        if not _ORIGIN_RE.match(origin):
            raise ConfigError(f"{name}: {part!r} is not an origin (scheme://host[:port]) or *")
        out.append(origin.lower())
    if "*" in out and len(out) > 1:
        raise ConfigError(f"{name}: * allows every origin; do not list others with it")
    return tuple(out)


def check_redis_url(url: str, name: str) -> str:
    """``redis://[user:pass@]host[:port][/db]``, ``rediss://...`` or ``unix:///path``.

    :raises ConfigError: naming ``name`` (the password is never echoed).
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{name}: not a valid URL ({exc})") from None
    shown = f"{parts.scheme}://{parts.hostname or ''}{f':{port}' if port else ''}{parts.path}"
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{name}: {shown!r} must be a redis://, rediss:// or unix:// URL")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ConfigError(f"{name}: a unix:// URL needs an absolute socket path")
    elif not parts.hostname:
        raise ConfigError(f"{name}: {shown!r} has no host")
    elif parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise ConfigError(f"{name}: the path of {shown!r} must be a database number")
    return url.strip()


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")
