"""common.client_address: the client behind trusted proxies (RFC 7239 ``Forwarded``,
``X-Forwarded-For``), never chosen by an untrusted peer's headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from common.client_address import client_address, forwarding_chain, parse_trusted_proxies
from common.config import ConfigError

PROXIES = parse_trusted_proxies("127.0.0.1, 10.0.0.0/8, fd00::/8")


def _headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # No proxy in front: the TCP peer, whatever the headers say.
        ("198.51.100.7", [("X-Forwarded-For", "203.0.113.1")], "198.51.100.7"),
        ("198.51.100.7", [("Forwarded", "for=203.0.113.1")], "198.51.100.7"),
        # A trusted proxy names the client.
        ("127.0.0.1", [("X-Forwarded-For", "203.0.113.1")], "203.0.113.1"),
        ("127.0.0.1", [("Forwarded", "for=203.0.113.1;proto=https")], "203.0.113.1"),
        # RFC 7239 §6: quoted IPv6 with a port, IPv4 with a port, case-insensitive "For".
        ("127.0.0.1", [("Forwarded", 'for="[2001:db8:cafe::17]:4711"')], "2001:db8:cafe::17"),
        ("127.0.0.1", [("Forwarded", "For=203.0.113.9:61000")], "203.0.113.9"),
        # Several trusted hops (right to left): the first untrusted address is the client.
        ("127.0.0.1", [("X-Forwarded-For", "203.0.113.1, 10.1.2.3, 10.0.0.1")], "203.0.113.1"),
        (
            "127.0.0.1",
            [("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "10.1.2.3")],
            "203.0.113.1",
        ),
        (
            "127.0.0.1",
            [("Forwarded", 'for=203.0.113.1, for="[fd00::2]:80", for=10.0.0.5')],
            "203.0.113.1",
        ),
        # A spoofed entry left of the real client is not believed: the nearest untrusted wins.
        ("127.0.0.1", [("X-Forwarded-For", "6.6.6.6, 203.0.113.1, 10.0.0.1")], "203.0.113.1"),
        # Forwarded wins over X-Forwarded-For when both are present.
        (
            "127.0.0.1",
            [("Forwarded", "for=203.0.113.1"), ("X-Forwarded-For", "6.6.6.6")],
            "203.0.113.1",
        ),
        # Obfuscated or unknown nodes (RFC 7239 §6.2-6.3): stop at the last hop vouched for.
        ("127.0.0.1", [("Forwarded", "for=_hidden")], "127.0.0.1"),
        ("127.0.0.1", [("Forwarded", "for=unknown, for=10.0.0.1")], "10.0.0.1"),
        ("127.0.0.1", [("X-Forwarded-For", "junk")], "127.0.0.1"),
        # No header, or every hop trusted: the nearest trusted proxy's own address.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", [("X-Forwarded-For", "10.0.0.1")], "10.0.0.1"),
        # IPv4-mapped IPv6 is IPv4.
        ("::ffff:127.0.0.1", [("X-Forwarded-For", "::ffff:203.0.113.1")], "203.0.113.1"),
        # A Unix socket peer is not a trusted proxy.
        (None, [("X-Forwarded-For", "203.0.113.1")], "?"),
    ],
)
def test_client_address(peer: str | None, headers: list[tuple[str, str]], expected: str) -> None:
    assert client_address(peer, _headers(*headers), PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    headers = _headers(("X-Forwarded-For", "203.0.113.1"), ("Forwarded", "for=203.0.113.2"))
    assert client_address("127.0.0.1", headers, ()) == "127.0.0.1"


def test_forwarding_chain_reads_forwarded_elements_in_order() -> None:
    headers = _headers(
        ("Forwarded", 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[::1]"'),
        ("Forwarded", "proto=https"),
    )
    assert forwarding_chain(headers) == ["192.0.2.60", '"[::1]"', ""]
    assert forwarding_chain({"X-Forwarded-For": "1.2.3.4, 5.6.7.8"}) == ["1.2.3.4", " 5.6.7.8"]


def test_trusted_proxies_are_parsed_and_validated() -> None:
    assert [str(n) for n in parse_trusted_proxies(" 127.0.0.1 ,10.0.0.0/8,,::1")] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
    ]
    with pytest.raises(ConfigError, match="RELAYCAST_TRUSTED_PROXIES: 'proxy.example'"):
        parse_trusted_proxies("127.0.0.1, proxy.example")
