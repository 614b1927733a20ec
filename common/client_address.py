"""The client's address behind trusted reverse proxies (RFC 7239 ``Forwarded``, ``X-Forwarded-For``).

The TCP peer is the client unless it is a trusted proxy (``RELAYCAST_TRUSTED_PROXIES``: a
comma-separated list of addresses or CIDR networks, default none).  Behind a trusted proxy the
forwarding chain is read right to left, skipping trusted hops: the first address that is not a
trusted proxy is the client.  Headers from an untrusted peer are ignored, so a client cannot
choose the address that rate limits and failure throttles are keyed by.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from .config import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 7239 §4: forwarded-element = forwarded-pair *( ";" forwarded-pair ); "for" node (§6).
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def parse_trusted_proxies(raw: str | Iterable[str], name: str = "RELAYCAST_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8"`` → networks.  :raises ConfigError: naming ``name``."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    out: list[Network] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not an IP address or network") from None
    return tuple(out)


def _address(text: str) -> Address | None:
    """An RFC 7239 §6 node (``1.2.3.4``, ``1.2.3.4:80``, ``"[::1]:80"``) or XFF entry → address."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", obfuscated identifiers ("_hidden"), junk
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, proxies: tuple[Network, ...]) -> bool:
    return address is not None and any(address.version == n.version and address in n for n in proxies)


def forwarding_chain(headers: Mapping[str, str]) -> list[str]:
    """The hops a request names, oldest first: ``Forwarded`` ``for=`` values when that header
    is present (RFC 7239 §4; one header field or several joined by commas), else
    ``X-Forwarded-For``."""
    getall = getattr(headers, "getall", None)
    forwarded = getall("Forwarded", []) if getall else [headers.get("Forwarded", "")]
    forwarded = [f for f in forwarded if f]
    if forwarded:
        chain = []
        for element in ",".join(forwarded).split(","):
            match = _FOR.search(element)
            chain.append(match.group(1) if match else "")
        return chain
    xff = getall("X-Forwarded-For", []) if getall else [headers.get("X-Forwarded-For", "")]
    return [hop for hop in ",".join(x for x in xff if x).split(",") if hop.strip()]


def client_address(peer: str | None, headers: Mapping[str, str], proxies: tuple[Network, ...]) -> str:
    """The address to key per-client limits by.

    :param peer: the TCP peer address (``request.remote``); ``None`` for a Unix socket.
    :param headers: the request headers (``Forwarded`` / ``X-Forwarded-For`` are read only when
        ``peer`` is a trusted proxy).
    :param proxies: trusted proxy networks (:func:`parse_trusted_proxies`).
    :returns: the client's address as text; the nearest trusted proxy's own address when
        the chain names no usable client (so one bad header cannot merge clients with
        another proxy's, nor pick an arbitrary key).
    """
    current = _address(peer or "")
    shown = str(current) if current is not None else (peer or "?")
    if not proxies or not _trusted(current, proxies):
        return shown
    for hop in reversed(forwarding_chain(headers)):
        address = _address(hop)
        if address is None:
            return shown  # "unknown" or junk: stop at the last hop we can vouch for
        shown = str(address)
        if not _trusted(address, proxies):
            return shown
    return shown
