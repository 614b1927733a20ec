"""coturn configuration files for relaycast: production and development.

Both use TURN REST credentials (``use-auth-secret`` + ``static-auth-secret``,
see :mod:`turn.credentials`).  They differ in what may be relayed to:

* **production** denies every peer address that could reach the TURN host's own
  network instead of the Internet (:data:`DENIED_NETWORKS`: loopback, RFC 1918,
  CGNAT, link-local, reserved and benchmarking space, IPv6 ULA/link-local and the
  IPv6 forms that carry an IPv4 address — mapped, NAT64, 6to4, Teredo;
  ``denied-peer-ip``; coturn refuses the unspecified addresses itself;
  coturn CVE-2020-26262, CVE-2026-27624) — and never has
  ``allow-loopback-peers``.  SFU nodes on a private network must be listed in
  ``allowed_peer_ips`` (``allowed-peer-ip``, which coturn checks before the deny
  list) or TURN users cannot reach them; such an entry must lie wholly inside one
  private network and overlap no other denied network (:func:`check_allowed_peer`).
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
from typing import NamedTuple

from .credentials import TurnError, check_secret


class DeniedNetwork(NamedTuple):
    """One ``denied-peer-ip`` network of the production config.

    :ivar network: CIDR, e.g. ``"127.0.0.0/8"``.
    :ivar what: its name in the IANA special-purpose address registry.
    :ivar reference: the RFC (section) that defines it, as the registry cites it.
    :ivar private: an SFU node may live here, so ``allowed-peer-ip`` may open
        addresses inside it (RFC 1918, RFC 6598, RFC 4193 networks).  An
        ``allowed-peer-ip`` entry must not overlap any other denied network.
    """

    network: str
    what: str
    reference: str
    private: bool = False


# Sources: IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 §2.2.2, §2.2.3),
# https://www.iana.org/assignments/iana-ipv4-special-registry and iana-ipv6-special-registry.
DENIED_NETWORKS: tuple[DeniedNetwork, ...] = (
    # IANA IPv4 registry: "This network", RFC 791 §3.2 (0.0.0.0 itself is refused by coturn).
    DeniedNetwork("0.0.0.0/8", "this network", "RFC 791 §3.2"),
    # IANA IPv4 registry: Loopback, RFC 1122 §3.2.1.3.
    DeniedNetwork("127.0.0.0/8", "loopback", "RFC 1122 §3.2.1.3"),
    # IANA IPv4 registry: Private-Use, RFC 1918 §3.
    DeniedNetwork("10.0.0.0/8", "private-use", "RFC 1918 §3", private=True),
    DeniedNetwork("172.16.0.0/12", "private-use", "RFC 1918 §3", private=True),
    DeniedNetwork("192.168.0.0/16", "private-use", "RFC 1918 §3", private=True),
    # IANA IPv4 registry: Shared Address Space (carrier-grade NAT), RFC 6598 §7.
    DeniedNetwork("100.64.0.0/10", "shared address space", "RFC 6598 §7", private=True),
    # IANA IPv4 registry: Link Local, RFC 3927 §2.1 (cloud metadata endpoints: 169.254.169.254).
    DeniedNetwork("169.254.0.0/16", "link-local", "RFC 3927 §2.1"),
    # IANA IPv4 registry: IETF Protocol Assignments, RFC 6890 §2.1 (DS-Lite, NAT64 discovery).
    DeniedNetwork("192.0.0.0/24", "IETF protocol assignments", "RFC 6890 §2.1"),
    # IANA IPv4 registry: Benchmarking, RFC 2544 §C.2.2 (not routed on the Internet).
    DeniedNetwork("198.18.0.0/15", "benchmarking", "RFC 2544 §C.2.2"),
    # IANA IPv4 registry: Reserved, RFC 1112 §4; includes limited broadcast 255.255.255.255
    # (RFC 919 §7).
    DeniedNetwork("240.0.0.0/4", "reserved", "RFC 1112 §4"),
    # IANA IPv6 registry: Loopback Address, RFC 4291 §2.5.3 (:: itself is refused by coturn).
    DeniedNetwork("::1/128", "loopback", "RFC 4291 §2.5.3"),
    # IANA IPv6 registry: IPv4-mapped Address, RFC 4291 §2.5.5.2: ::ffff:127.0.0.1 is
    # loopback in disguise (coturn 4.6.1 relays it unless denied).
    DeniedNetwork("::ffff:0:0/96", "IPv4-mapped", "RFC 4291 §2.5.5.2"),
    # IANA IPv6 registry: IPv4-IPv6 Translation (NAT64 well-known prefix), RFC 6052 §2.1:
    # 64:ff9b::7f00:1 reaches 127.0.0.1 through a NAT64 on the TURN host's network.
    DeniedNetwork("64:ff9b::/96", "IPv4-IPv6 translation", "RFC 6052 §2.1"),
    # IANA IPv6 registry: IPv4-IPv6 Translation, local use, RFC 8215 §3 (the same risk).
    DeniedNetwork("64:ff9b:1::/48", "IPv4-IPv6 translation (local use)", "RFC 8215 §3"),
    # IANA IPv6 registry: TEREDO, RFC 4380 §2.6 (the address embeds the Teredo server and
    # client IPv4 addresses).
    DeniedNetwork("2001::/32", "Teredo", "RFC 4380 §2.6"),
    # IANA IPv6 registry: 6to4, RFC 3056 §2: 2002:7f00:1:: embeds 127.0.0.1.
    DeniedNetwork("2002::/16", "6to4", "RFC 3056 §2"),
    # IANA IPv6 registry: Unique-Local, RFC 4193 §3.
    DeniedNetwork("fc00::/7", "unique-local", "RFC 4193 §3", private=True),
    # IANA IPv6 registry: Link-Local Unicast, RFC 4291 §2.5.6.
    DeniedNetwork("fe80::/10", "link-local", "RFC 4291 §2.5.6"),
)
"""Peer networks the production config refuses to relay to (``denied-peer-ip``).

Every network that leads into the TURN host's own networks instead of the Internet
(CVE-2020-26262): loopback, private, shared, link-local and reserved space, and the
IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4, Teredo).  The unspecified
addresses (``0.0.0.0``, ``::``) are refused by coturn itself (a zero peer address is
never relayed).  ``::`` must not be written as a ``denied-peer-ip``: coturn 4.6.1 reads
a zero address as an open range bound, so ``denied-peer-ip=::`` denies *every* peer
(tests/turn check both).
"""

DENIED_PEER_NETWORKS: tuple[str, ...] = tuple(denied.network for denied in DENIED_NETWORKS)
"""The CIDRs of :data:`DENIED_NETWORKS`, in rendering order."""

_PRIVATE = tuple(denied.network for denied in DENIED_NETWORKS if denied.private)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def _check_ip(name: str, value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise TurnError(f"{name}: {value!r} is not an IP address") from None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped (RFC 4291 §2.5.5.2),
    NAT64 well-known prefix (RFC 6052 §2.2), 6to4 (RFC 3056 §2) or Teredo client
    (RFC 4380 §4); ``None`` otherwise."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return address.teredo[1] if address.teredo is not None else None


def _denied_network_of(address: IPAddress) -> DeniedNetwork | None:
    for denied in DENIED_NETWORKS:
        if address in ipaddress.ip_network(denied.network):
            return denied
    return None


def check_allowed_peer(value: str, name: str = "allowed-peer-ip") -> None:
    """Validate one ``allowed-peer-ip`` entry: ``a`` or ``a-b`` (coturn syntax).

    coturn checks ``allowed-peer-ip`` before ``denied-peer-ip``, so an allowed entry
    reopens whatever it covers.  An entry must therefore lie outside every network of
    :data:`DENIED_NETWORKS`, or wholly inside one private network (RFC 1918, RFC 6598,
    RFC 4193: where SFU nodes on a private network live).  IPv6 forms that carry an IPv4
    address (``::ffff:127.0.0.1``, NAT64, 6to4, Teredo) are refused with the IPv4
    address named.

    :raises TurnError: naming the entry and the denied network it overlaps; also for a
        malformed entry, a range whose ends differ in family or are reversed, or an
        unspecified address.
    """
    parts = value.split("-", 1)
    ends = [_check_ip(name, part) for part in parts]
    low, high = ends[0], ends[-1]
    if low.version != high.version or low > high:  # type: ignore[operator]
        raise TurnError(f"{name}: {value!r} is not a range low-high of one address family")
    if low.is_unspecified:
        raise TurnError(f"{name}: {value!r} starts at the unspecified address "
                        "(it would let TURN users reach the TURN host itself)")
    for denied in DENIED_NETWORKS:
        net = ipaddress.ip_network(denied.network)
        if net.version != low.version:
            continue
        if high < net.network_address or low > net.broadcast_address:  # type: ignore[operator]
            continue
        inside = net.network_address <= low and high <= net.broadcast_address  # type: ignore[operator]
        if denied.private and inside:
            continue
        note = ""
        for text, end in dict(zip(parts, ends, strict=True)).items():
            v4 = _embedded_ipv4(end)
            if v4 is None:
                continue
            where = _denied_network_of(v4)
            note += f"; {text} stands for the IPv4 address {v4}"
            if where is not None:
                note += f" in {where.network} ({where.what})"
                if where.private and len(parts) == 1:
                    note += f": write {v4}"
        raise TurnError(
            f"{name}: {value!r} overlaps the denied network {denied.network} "
            f"({denied.what}, {denied.reference}){note}. allowed-peer-ip overrides coturn's "
            "deny list, so an entry must lie outside every denied network or wholly inside "
            f"one private network ({', '.join(_PRIVATE)}) where an SFU node lives"
        )


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
            check_allowed_peer(peer_range)
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
                "# Never relay into the TURN host's own networks (CVE-2020-26262): the",
                "# special-purpose ranges of the IANA IPv4/IPv6 registries (RFC 6890).",
                "# 0.0.0.0 and :: are refused by coturn itself; do not add denied-peer-ip=:: here:",
                "# coturn 4.6.1 reads it as an open range and then denies every peer.",
            ]
            for denied in DENIED_NETWORKS:
                lines += [f"# {denied.network}: {denied.what} ({denied.reference})",
                          f"denied-peer-ip={coturn_range(denied.network)}"]
            lines.append("# SFU nodes on a private network (checked before the deny list)"
                         if self.allowed_peer_ips else "# no allowed-peer-ip: SFU nodes are reached on public addresses")
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
