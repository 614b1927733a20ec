"""TURN REST credentials and coturn config rendering (no processes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re

import pytest

from turn import credentials
from turn.config import DENIED_PEER_NETWORKS, CoturnConfig, coturn_range
from turn.credentials import TurnError, ice_servers, mint, password_for, verify

SECRET = "relaycast-test-secret"


def test_password_matches_a_known_vector() -> None:
    # printf '%s' "1700000000:alice" | openssl dgst -sha1 -hmac relaycast-test-secret -binary | base64
    assert password_for(SECRET, "1700000000:alice") == "72/p+OC2k4lwuAYQjucbQGviLnI="


def test_minted_username_is_expiry_colon_user_and_password_is_its_hmac() -> None:
    credential = mint(SECRET, "alice", ttl_s=600, now=1_700_000_000.7)
    assert credential.username == "1700000600:alice"
    assert credential.expires_at == 1_700_000_600
    digest = hmac.new(SECRET.encode(), b"1700000600:alice", hashlib.sha1).digest()
    assert credential.password == base64.b64encode(digest).decode()
    assert credential.password not in repr(credential)


def test_default_lifetime_is_ten_minutes_and_random_user_ids_differ() -> None:
    a, b = mint(SECRET, now=1000), mint(SECRET, now=1000)
    assert a.expires_at == 1000 + 600 == credentials.DEFAULT_TTL_S + 1000
    assert a.username.split(":")[1] != b.username.split(":")[1]
    assert re.fullmatch(r"1600:[0-9a-f]{16}", a.username)


def test_verify_checks_expiry_and_hmac() -> None:
    credential = mint(SECRET, "bob", ttl_s=120, now=5000)
    assert verify(SECRET, credential.username, credential.password, now=5000)
    assert verify(SECRET, credential.username, credential.password, now=5120)
    assert not verify(SECRET, credential.username, credential.password, now=5121)  # expired
    assert not verify("another-secret-of-16", credential.username, credential.password, now=5000)
    assert not verify(SECRET, "5120:mallory", credential.password, now=5000)  # username swapped
    assert not verify(SECRET, "bob", credential.password, now=5000)  # no expiry


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": "short"}, "at least 16"),
        ({"ttl_s": 59}, r"outside \[60, 3600\]"),
        ({"ttl_s": 86400}, r"outside \[60, 3600\]"),
        ({"user_id": "has space"}, "user id"),
        ({"user_id": "a:b"}, "user id"),
        ({"user_id": ""}, "user id"),
    ],
)
def test_mint_refuses_bad_input(kwargs: dict, message: str) -> None:
    args = {"secret": SECRET, "user_id": "alice", "ttl_s": 600} | kwargs
    with pytest.raises(TurnError, match=message):
        mint(args["secret"], args["user_id"], args["ttl_s"])


def test_ice_servers_for_one_session() -> None:
    urls = ["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp", " turns:turn.example.org:5349 "]
    servers = ice_servers(urls, SECRET, "whep-1", 300, now=2000)
    assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}
    turn = servers[1]
    assert turn["urls"] == ["turn:127.0.0.1:3478?transport=udp", "turns:turn.example.org:5349"]
    assert turn["username"] == "2300:whep-1"
    assert verify(SECRET, turn["username"], turn["credential"], now=2299)
    assert ice_servers([], SECRET) == []
    assert ice_servers(["stun:127.0.0.1:3478"], None) == [{"urls": ["stun:127.0.0.1:3478"]}]
    with pytest.raises(TurnError, match="need a TURN secret"):
        ice_servers(["turn:127.0.0.1:3478"], None)
    with pytest.raises(TurnError, match="not a stun:"):
        ice_servers(["http://127.0.0.1:3478"], SECRET)


def test_minting_never_logs_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    servers = ice_servers(["turn:127.0.0.1:3478"], SECRET, "x")
    assert servers[0]["credential"] not in caplog.text
    assert SECRET not in caplog.text


# ------------------------------------------------------------------ coturn config
def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_production_config_lines() -> None:
    config = CoturnConfig.production(
        SECRET, realm="turn.example.org", listening_ips=("203.0.113.10",), external_ip="203.0.113.10/10.0.0.5",
        allowed_peer_ips=("10.0.0.20", "10.0.1.0-10.0.1.255"), user_quota=8, total_quota=400, max_bps=1_000_000,
    )
    lines = _lines(config.render())
    for expected in [
        "use-auth-secret", f"static-auth-secret={SECRET}", "realm=turn.example.org", "no-cli", "fingerprint",
        "user-quota=8", "total-quota=400", "max-bps=1000000", "listening-port=3478",
        "listening-ip=203.0.113.10", "external-ip=203.0.113.10/10.0.0.5", "no-multicast-peers",
        "no-tls", "no-dtls", "no-software-attribute", "log-file=stdout",
        "allowed-peer-ip=10.0.0.20", "allowed-peer-ip=10.0.1.0-10.0.1.255",
    ]:
        assert expected in lines, expected
    assert "allow-loopback-peers" not in lines
    assert not any("lt-cred-mech" in ln or ln.startswith("user=") for ln in lines)
    denied = [ln.split("=", 1)[1] for ln in lines if ln.startswith("denied-peer-ip=")]
    assert denied == [
        "0.0.0.0-0.255.255.255",
        "127.0.0.0-127.255.255.255",
        "10.0.0.0-10.255.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
        "100.64.0.0-100.127.255.255",
        "169.254.0.0-169.254.255.255",
        "192.0.0.0-192.0.0.255",
        "198.18.0.0-198.19.255.255",
        "240.0.0.0-255.255.255.255",
        "::1",
        "::ffff:0:0-::ffff:ffff:ffff",
        "64:ff9b::-64:ff9b::ffff:ffff",
        "64:ff9b:1::-64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        "2001::-2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
        "2002::-2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ]
    # Each range is preceded by a comment naming it and its RFC (IANA special-purpose registry).
    comments = [ln for ln in config.render().splitlines() if ln.startswith("#")]
    for network in DENIED_PEER_NETWORKS:
        assert any(ln.startswith(f"# {network}: ") and "RFC " in ln for ln in comments), network
    assert not any("standards.md" in ln for ln in comments)
    # Never a zero-address bound: coturn 4.6.1 reads "::" as open and denies every peer.
    assert "::" not in denied


def test_every_special_purpose_range_is_covered() -> None:
    """The IANA special-purpose ranges (RFC 6890) that lead into the TURN host's networks,
    checked address by address against the rendered ranges."""
    denied = [ln.split("=", 1)[1] for ln in _lines(CoturnConfig.production(SECRET).render())
              if ln.startswith("denied-peer-ip=")]

    def covered(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        for text in denied:
            low, _, high = text.partition("-")
            lo, hi = ipaddress.ip_address(low), ipaddress.ip_address(high or low)
            if lo.version == ip.version and lo <= ip <= hi:  # type: ignore[operator]
                return True
        return False

    for address in ["0.1.2.3", "127.0.0.1", "127.255.255.254", "10.9.8.7", "172.16.0.1", "172.31.255.255",
                    "192.168.1.1", "100.64.0.1", "100.127.255.255", "169.254.169.254", "192.0.0.9",
                    "198.18.0.1", "198.19.255.255", "240.0.0.1", "255.255.255.255", "::1", "fc00::1",
                    "fd12:3456::1", "fe80::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1",
                    "64:ff9b:1::a9fe:a9fe", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2002:7f00:1::1"]:
        assert covered(address), address
    for address in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "192.0.1.1", "198.20.0.1", "239.255.255.254",
                    "2001:db8::1", "2001:1::1", "2003::1", "203.0.113.5"]:
        assert not covered(address), address
    assert set(DENIED_PEER_NETWORKS) >= {"127.0.0.0/8", "::ffff:0:0/96", "fc00::/7", "64:ff9b::/96",
                                         "2002::/16", "2001::/32", "192.0.0.0/24", "198.18.0.0/15",
                                         "240.0.0.0/4"}


@pytest.mark.parametrize(
    ("entry", "network"),
    [
        ("126.0.0.0-128.0.0.0", "127.0.0.0/8"),  # both ends public, loopback in between
        ("127.0.0.1", "127.0.0.0/8"),
        ("0.0.0.1", "0.0.0.0/8"),
        ("169.254.169.254", "169.254.0.0/16"),  # cloud metadata
        ("::ffff:127.0.0.1", "::ffff:0:0/96"),
        ("::ffff:10.0.0.7", "::ffff:0:0/96"),  # even a private SFU address: write it as IPv4
        ("::1", "::1/128"),
        ("::1-::ffff", "::1/128"),
        ("fe80::1", "fe80::/10"),
        ("64:ff9b::7f00:1", "64:ff9b::/96"),
        ("2002:7f00:1::1", "2002::/16"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32"),
        ("192.0.0.8", "192.0.0.0/24"),
        ("198.18.0.1", "198.18.0.0/15"),
        ("240.0.0.1", "240.0.0.0/4"),
        ("9.255.255.0-10.0.0.5", "10.0.0.0/8"),  # private, but not wholly inside it
        ("10.0.0.0-192.168.255.255", "127.0.0.0/8"),
        ("fc00::1-fe80::1", "fc00::/7"),
    ],
)
def test_allowed_peer_ip_may_not_reopen_a_denied_network(entry: str, network: str) -> None:
    """coturn checks allowed-peer-ip before denied-peer-ip: an entry overlapping a denied
    network (other than wholly inside one private network) is refused, naming both."""
    with pytest.raises(TurnError) as refused:
        CoturnConfig.production(SECRET, allowed_peer_ips=("10.0.0.7", entry))
    message = str(refused.value)
    assert f"allowed-peer-ip: {entry!r} overlaps the denied network {network} (" in message, message
    if entry.startswith(("::ffff:", "64:ff9b", "2002:", "2001:0:")):
        assert "stands for the IPv4 address" in message, message
    with pytest.raises(TurnError, match="overlaps the denied network"):
        CoturnConfig.for_development(SECRET, allowed_peer_ips=(entry,))


@pytest.mark.parametrize("entry", ["10.0.0.7", "10.0.1.0-10.0.1.255", "172.17.0.2", "192.168.1.5",
                                   "100.64.0.9", "fd00::7", "fd00::1-fd00::9", "203.0.113.9", "2001:db8::5"])
def test_allowed_peer_ip_inside_a_private_network_or_public_is_accepted(entry: str) -> None:
    lines = _lines(CoturnConfig.production(SECRET, allowed_peer_ips=(entry,)).render())
    assert f"allowed-peer-ip={entry}" in lines


def test_development_config_is_loopback_only_and_allows_loopback_peers() -> None:
    lines = _lines(CoturnConfig.for_development(SECRET, port=3478).render())
    for expected in ["listening-ip=127.0.0.1", "relay-ip=127.0.0.1", "allow-loopback-peers", "use-auth-secret",
                     f"static-auth-secret={SECRET}", "no-cli", "fingerprint"]:
        assert expected in lines, expected
    assert not any(ln.startswith("denied-peer-ip") for ln in lines)
    with pytest.raises(TurnError, match="loopback addresses only"):
        CoturnConfig.for_development(SECRET, listening_ips=("0.0.0.0",))
    with pytest.raises(TurnError, match="loopback addresses only"):
        CoturnConfig.for_development(SECRET, listening_ips=())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"secret": "too-short"}, "static-auth-secret: use at least 16"),
        ({"secret": SECRET + "\nallow-loopback-peers"}, "whitespace"),
        ({"realm": "evil\nallow-loopback-peers"}, "realm"),
        ({"port": 0}, "listening port"),
        ({"port": 70000}, "listening port"),
        ({"min_port": 50000, "max_port": 40000}, "min-port 50000 is above max-port"),
        ({"port": 50000}, "inside the relay range"),
        ({"user_quota": 0}, "user-quota"),
        ({"total_quota": -1}, "total-quota"),
        ({"listening_ips": ("nope",)}, "listening-ip"),
        ({"external_ip": "1.2.3.4/bad"}, "external-ip"),
        ({"allowed_peer_ips": ("127.0.0.1",)}, "overlaps the denied network 127.0.0.0/8"),
        ({"allowed_peer_ips": ("0.0.0.0",)}, "unspecified address"),
        ({"allowed_peer_ips": ("::",)}, "unspecified address"),
        ({"allowed_peer_ips": ("10.0.0.1-fd00::1",)}, "low-high"),
        ({"allowed_peer_ips": ("10.0.0.9-10.0.0.1",)}, "low-high"),
        ({"tls_port": 5349}, "together"),
        ({"log_file": "/tmp/a b"}, "log-file"),
    ],
)
def test_config_validation_names_the_field(options: dict, message: str) -> None:
    values = {"secret": SECRET} | options
    with pytest.raises(TurnError, match=message):
        CoturnConfig(**values)


def test_tls_lines_and_range_helper() -> None:
    config = CoturnConfig.production(SECRET, tls_port=5349, cert="/etc/ssl/turn.pem", pkey="/etc/ssl/turn.key")
    lines = _lines(config.render())
    assert {"tls-listening-port=5349", "cert=/etc/ssl/turn.pem", "pkey=/etc/ssl/turn.key", "no-tlsv1",
            "no-tlsv1_1", "no-dtls"} <= set(lines)
    assert "no-tls" not in lines
    assert coturn_range("192.168.0.0/16") == "192.168.0.0-192.168.255.255"
    assert coturn_range("::1/128") == "::1"
    with pytest.raises(TurnError, match="zero address"):
        coturn_range("::/128")
