"""coturn configuration files for relaycast: production and development.

Both use TURN REST credentials (``use-auth-secret`` + ``static-auth-secret``,
see :mod:`turn.credentials`).  They differ in what may be relayed to:

* **production** denies every peer address that could reach the TURN host's own
  network instead of the Internet — loopback, RFC 1918, CGNAT, link-local,
  IPv6 ULA/link-local and IPv4-mapped IPv6 (``denied-peer-ip``; coturn refuses
  the unspecified addresses itself;
  coturn CVE-2020-26262, CVE-2026-27624) — and never has
  ``allow-loopback-peers``.  SFU nodes on a private network must be listed in
  ``allowed_peer_ips`` (``allowed-peer-ip``, which coturn checks before the deny
  list) or TURN users cannot reach them.
* **development** listens on loopback only and allows loopback peers, so tests
  and a laptop setup can relay to an SFU on 127.0.0.1.  It refuses any
  non-loopback listening address: a loopback-relaying TURN server on a public
  interface would be an open door to the host's local services.

Values are validated (:class:`~turn.credentials.TurnError` with the field
named) and may not contain whitespace, so nothing can inject extra lines.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .credentials import TurnError, check_secret

DENIED_PEER_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "127.0.0.0/8",  # loopback
    "10.0.0.0/8",  # RFC 1918
    "172.16.0.0/12",  # RFC 1918
    "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598 shared address space (CGNAT)
    "169.254.0.0/16",  # link-local (cloud metadata endpoints live here)
    "::1/128",  # loopback
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "::ffff:0:0/96",  # IPv4-mapped: ::ffff:127.0.0.1 is loopback in disguise (coturn 4.6.1 relays it)
)
"""Peer networks the production config refuses to relay to (standards.md, "TURN REST credentials").

The unspecified addresses (``0.0.0.0``, ``::``) are refused by coturn itself
(a zero peer address is never relayed).  ``::`` must not be written as a
``denied-peer-ip``: coturn 4.6.1 reads a zero address as an open range bound,
so ``denied-peer-ip=::`` denies *every* peer (tests/turn check both).
"""

DEFAULT_PORT = 3478
# Development relay ports lie above Linux's default ephemeral range (32768-60999), so a
# listening port picked by the kernel never falls inside the relay range.
DEV_MIN_PORT = 61000
DEV_MAX_PORT = 65535
DEFAULT_REALM = "relaycast"
_TOKEN = re.compile(r"^[^\s#]+$")
_REALM = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


def coturn_range(network: str) -> str:
    """``"10.0.0.0/8"`` → ``"10.0.0.0-10.255.255.255"`` (coturn wants ``a-b``); a single host → ``"a"``.

    :raises TurnError: for a range whose upper end is a zero address (``::``,
        ``0.0.0.0``): coturn would treat it as unbounded (see :data:`DENIED_PEER_NETWORKS`).
    """
    net = ipaddress.ip_network(network, strict=True)
    first, last = net.network_address, net.broadcast_address
    if last.is_unspecified:
        raise TurnError(f"{network}: coturn reads a zero address as an open bound; it refuses zero peers anyway")
    return str(first) if first == last else f"{first}-{last}"


def _check_port(name: str, port: int) -> None:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise TurnError(f"{name}: {port!r} is not a port number in [1, 65535]")


def _check_ip(name: str, value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise TurnError(f"{name}: {value!r} is not an IP address") from None


def _check_peer_range(name: str, value: str) -> None:
    """``a`` or ``a-b`` (coturn syntax); refuse loopback and unspecified addresses."""
    ends = [_check_ip(name, part) for part in value.split("-", 1)]
    if len(ends) == 2 and (ends[0].version != ends[1].version or ends[0] > ends[1]):  # type: ignore[operator]
        raise TurnError(f"{name}: {value!r} is not a range low-high of one address family")
    for address in ends:
        if address.is_loopback or address.is_unspecified:
            raise TurnError(f"{name}: {value!r} would let TURN users reach the TURN host itself")


@dataclass(frozen=True)
class CoturnConfig:
    """Everything a relaycast coturn config needs; :meth:`render` writes it.

    :ivar secret: the shared secret (``static-auth-secret``); ≥ 16 characters; not in ``repr``.
    :ivar development: loopback-only development mode (see the module docstring).
    :ivar realm: TURN realm (RFC 8656 §9.2).
    :ivar listening_ips: addresses to listen on (``()`` = all interfaces; development: loopback only).
    :ivar port: UDP/TCP listening port (default 3478).
    :ivar relay_ips: local addresses for relay sockets (``()`` = coturn's choice).
    :ivar external_ip: ``public`` or ``public/private`` when behind 1:1 NAT.
    :ivar min_port/max_port: UDP relay port range.
    :ivar user_quota: concurrent allocations per username (one minted credential).
    :ivar total_quota: concurrent allocations for the whole server.
    :ivar max_bps: per-session bandwidth cap in bytes per second (``None`` = unlimited).
    :ivar allowed_peer_ips: ``a`` or ``a-b`` ranges relaying may reach despite the deny
        list (production: the SFU nodes' private addresses).
    :ivar tls_port/cert/pkey: ``turns:`` on ``tls_port`` with this certificate; without
        them TLS and DTLS listeners are off.
    :ivar log_file/pid_file: where coturn writes its log and pid (``None``: stdout / none).
    :ivar db_file: coturn's SQLite database (``userdb``; unused with ``use-auth-secret``
        but opened anyway; ``None`` = coturn's default /var/lib/turn/turndb).
    """

    secret: str = field(repr=False)
    development: bool = False
    realm: str = DEFAULT_REALM
    listening_ips: tuple[str, ...] = ()
    port: int = DEFAULT_PORT
    relay_ips: tuple[str, ...] = ()
    external_ip: str | None = None
    min_port: int = 49152
    max_port: int = 65535
    user_quota: int = 12
    total_quota: int = 1200
    max_bps: int | None = None
    allowed_peer_ips: tuple[str, ...] = ()
    tls_port: int | None = None
    cert: str | None = None
    pkey: str | None = None
    log_file: str | None = None
    pid_file: str | None = None
    db_file: str | None = None

    @classmethod
    def production(cls, secret: str, **options: object) -> CoturnConfig:
        """A production config (validated); ``options`` are the other fields."""
        return cls(secret=secret, development=False, **options)  # type: ignore[arg-type]

    @classmethod
    def for_development(cls, secret: str, port: int = DEFAULT_PORT, **options: object) -> CoturnConfig:
        """A development config on 127.0.0.1 with loopback peers allowed (validated)."""
        options.setdefault("listening_ips", ("127.0.0.1",))
        options.setdefault("relay_ips", ("127.0.0.1",))
        options.setdefault("min_port", DEV_MIN_PORT)
        options.setdefault("max_port", DEV_MAX_PORT)
        return cls(secret=secret, development=True, port=port, **options)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """:raises TurnError: naming the first invalid field."""
        check_secret(self.secret, "static-auth-secret")
        if not _TOKEN.match(self.secret):
            raise TurnError("static-auth-secret: no whitespace or '#' allowed")
        if not _REALM.match(self.realm):
            raise TurnError(f"realm: {self.realm!r} must be a host-like name (A-Z a-z 0-9 . -)")
        _check_port("listening port", self.port)
        _check_port("min-port", self.min_port)
        _check_port("max-port", self.max_port)
        if self.min_port > self.max_port:
            raise TurnError(f"min-port {self.min_port} is above max-port {self.max_port}")
        if self.min_port <= self.port <= self.max_port:
            raise TurnError(f"listening port {self.port} lies inside the relay range {self.min_port}-{self.max_port}")
        for name, value in (("user-quota", self.user_quota), ("total-quota", self.total_quota)):
            if not isinstance(value, int) or value < 1:
                raise TurnError(f"{name}: {value!r} must be a positive integer")
        if self.max_bps is not None and self.max_bps < 1:
            raise TurnError(f"max-bps: {self.max_bps!r} must be a positive integer")
        for ip in self.listening_ips:
            _check_ip("listening-ip", ip)
        for ip in self.relay_ips:
            _check_ip("relay-ip", ip)
        if self.external_ip is not None:
            for part in self.external_ip.split("/", 1):
                _check_ip("external-ip", part)
        for peer_range in self.allowed_peer_ips:
            _check_peer_range("allowed-peer-ip", peer_range)
        tls = (self.tls_port, self.cert, self.pkey)
        if any(v is not None for v in tls) and not all(v is not None for v in tls):
            raise TurnError("TLS: give tls_port, cert and pkey together (or none of them)")
        if self.tls_port is not None:
            _check_port("tls-listening-port", self.tls_port)
            if self.tls_port == self.port:
                raise TurnError("tls-listening-port must differ from the listening port")
        for name, path in (("cert", self.cert), ("pkey", self.pkey), ("log-file", self.log_file),
                           ("pidfile", self.pid_file), ("userdb", self.db_file)):
            if path is not None and not _TOKEN.match(path):
                raise TurnError(f"{name}: {path!r} must be a path without whitespace or '#'")
        if self.development:
            if not self.listening_ips or not all(ipaddress.ip_address(ip).is_loopback for ip in self.listening_ips):
                raise TurnError("development config: listen on loopback addresses only "
                                "(it relays to loopback peers)")
            if not self.relay_ips or not all(ipaddress.ip_address(ip).is_loopback for ip in self.relay_ips):
                raise TurnError("development config: relay-ip must be loopback")

    def render(self) -> str:
        """The ``turnserver.conf`` text (contains the secret: store it mode 0600)."""
        mode = "development (loopback only)" if self.development else "production"
        lines = [
            f"# relaycast coturn configuration: {mode}",
            "# Generated by turn.config (relaycast turn --print-config); contains the shared secret.",
            f"listening-port={self.port}",
        ]
        lines += [f"listening-ip={ip}" for ip in self.listening_ips]
        lines += [f"relay-ip={ip}" for ip in self.relay_ips]
        if self.external_ip:
            lines.append(f"external-ip={self.external_ip}")
        lines += [
            f"min-port={self.min_port}",
            f"max-port={self.max_port}",
            "# TURN REST credentials (draft-uberti-behave-turn-rest): minted by relaycast signaling",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            f"realm={self.realm}",
            "fingerprint",
            "stale-nonce=600",
            "no-cli",
            "no-multicast-peers",
            "no-tcp-relay",
            f"user-quota={self.user_quota}",
            f"total-quota={self.total_quota}",
        ]
        if self.max_bps is not None:
            lines.append(f"max-bps={self.max_bps}")
        if self.tls_port is not None:
            lines += [
                f"tls-listening-port={self.tls_port}",
                f"cert={self.cert}",
                f"pkey={self.pkey}",
                "no-tlsv1",
                "no-tlsv1_1",
                "no-dtls",
            ]
        else:
            lines += ["no-tls", "no-dtls"]
        if self.development:
            lines += [
                "# development only: peers on loopback (an SFU on 127.0.0.1) may be relayed to",
                "allow-loopback-peers",
            ]
        else:
            lines += [
                "no-software-attribute",
                "no-rfc5780",
                "no-stun-backward-compatibility",
                "# never relay into the TURN host's own networks (standards.md; CVE-2020-26262).",
                "# 0.0.0.0 and :: are refused by coturn itself; do not add denied-peer-ip=:: here:",
                "# coturn 4.6.1 reads it as an open range and then denies every peer.",
            ]
            lines += [f"denied-peer-ip={coturn_range(net)}" for net in DENIED_PEER_NETWORKS]
            lines += [f"allowed-peer-ip={value}" for value in self.allowed_peer_ips]
        if self.log_file is not None:
            lines += [f"log-file={self.log_file}", "simple-log", "no-stdout-log"]
        else:
            lines.append("log-file=stdout")
        if self.pid_file is not None:
            lines.append(f"pidfile={self.pid_file}")
        if self.db_file is not None:
            lines.append(f"userdb={self.db_file}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> Path:
        """Render into ``path`` with mode 0600 (it holds the secret)."""
        path = Path(path)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(self.render())
        return path


def split_list(raw: str | Iterable[str]) -> tuple[str, ...]:
    """``"a, b"`` or ``["a", "b"]`` → ``("a", "b")`` without empty entries."""
    items = raw.split(",") if isinstance(raw, str) else raw
    return tuple(s.strip() for s in items if s.strip())
