"""A real coturn on 127.0.0.1 with the configs turn.config renders.

* development config: an allocation with minted credentials relays UDP to a
  peer on 127.0.0.1 and back (our TURN client, then coturn's own
  ``turnutils_uclient``); expired and forged credentials are refused (401).
* production config (also on 127.0.0.1: only the *peer* address is denied,
  the client reaches the server on loopback): CreatePermission to 127.0.0.1 and
  to every private/link-local/reserved range and the IPv6 forms that carry an
  IPv4 address (mapped, NAT64, 6to4, Teredo) is refused with 403 Forbidden IP,
  while a documentation-range public address is permitted (so the 403s come
  from the deny list, not from a server that refuses everything).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import stat
import time

import pytest

from tests.turn.turn_probe import TurnProbe, TurnRefused
from turn.credentials import mint
from turn.server import DEV_MAX_PORT, DEV_MIN_PORT, TurnServer, TurnServerError, find_turnserver

pytestmark = [
    pytest.mark.skipif(find_turnserver() is None, reason="coturn's turnserver is not installed (apt-get install coturn)"),
    pytest.mark.timeout(90),
]

SECRET = "coturn-live-secret-" + "q" * 8


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
async def dev_turn():
    async with TurnServer(SECRET) as turn:
        yield turn


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]


async def test_dev_server_relays_to_a_loopback_peer_with_minted_credentials(dev_turn: TurnServer) -> None:
    assert re.fullmatch(r"turn:127\.0\.0\.1:\d+\?transport=udp", dev_turn.url)
    conf = dev_turn.workdir / "turnserver.conf"
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600  # it holds the secret
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    peer = echo.get_extra_info("sockname")
    try:
        credential = mint(SECRET, "alice", 600)
        async with TurnProbe(("127.0.0.1", dev_turn.port)) as client:
            relayed = await client.allocate(credential.username, credential.password)
            assert relayed[0] == "127.0.0.1" and DEV_MIN_PORT <= relayed[1] <= DEV_MAX_PORT, relayed
            assert client.lifetime and client.lifetime > 0
            await client.create_permission("127.0.0.1")
            client.send(peer, b"hello through coturn")
            source, payload = await client.receive(timeout=5)
            assert payload == b"echo:hello through coturn"
            assert source == peer
            await client.refresh(0)  # delete the allocation
    finally:
        echo.close()


async def test_expired_and_forged_credentials_are_refused(dev_turn: TurnServer) -> None:
    expired = mint(SECRET, "late", 60, now=time.time() - 120)  # expired a minute ago
    forged = mint("not-the-coturn-secret", "mallory", 600)
    tampered = mint(SECRET, "bob", 600)
    cases = {
        "expired": (expired.username, expired.password),
        "forged": (forged.username, forged.password),
        # A valid password with the expiry pushed out: the HMAC no longer matches.
        "tampered": (f"{tampered.expires_at + 86400}:bob", tampered.password),
    }
    for name, (username, password) in cases.items():
        async with TurnProbe(("127.0.0.1", dev_turn.port)) as client:
            with pytest.raises(TurnRefused) as refused:
                await client.allocate(username, password)
            assert refused.value.code in (401, 438), (name, refused.value)
    # ... while a fresh credential on the same server works.
    good = mint(SECRET, "carol", 60)
    async with TurnProbe(("127.0.0.1", dev_turn.port)) as client:
        await client.allocate(good.username, good.password)


async def test_turnutils_uclient_relays_with_minted_credentials(dev_turn: TurnServer) -> None:
    """coturn's own test client, client-to-client through two relays on loopback."""
    credential = mint(SECRET, "uclient", 600)

    async def uclient(password: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "turnutils_uclient", "-y", "-c", "-n", "20", "-m", "1", "-l", "120", "-z", "5",
            "-L", "127.0.0.1", "-p", str(dev_turn.port), "-u", credential.username, "-w", password,
            "127.0.0.1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 45)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        return process.returncode or 0, out.decode(errors="replace")

    code, out = await uclient(credential.password)
    assert code == 0, out
    totals = re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out, re.MULTILINE)
    assert totals and int(totals.group(1)) == 40 and int(totals.group(2)) == 40, out
    code, out = await uclient("A" * 27 + "=")
    assert code != 0 and "Cannot complete Allocation" in out, out


DENIED_V4 = ["127.0.0.1", "127.1.2.3", "0.0.0.0", "0.1.2.3", "10.1.2.3", "172.16.0.1", "172.31.255.254",
             "192.168.1.1", "100.64.0.1", "169.254.169.254", "192.0.0.9", "198.18.0.1", "198.19.255.254",
             "240.0.0.1", "255.255.255.254"]
DENIED_V6 = ["::", "::1", "fc00::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:8.8.8.8",
             "64:ff9b::7f00:1", "64:ff9b:1::a9fe:a9fe", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2002:7f00:1::1"]
NO_MULTICAST_PEERS = ipaddress.ip_network("224.0.0.0/3")
"""coturn 4.6.1's ``no-multicast-peers`` refuses 224.0.0.0-255.255.255.255 (multicast and
240.0.0.0/4) on its own; production denies 240.0.0.0/4 explicitly as well."""
CONFIG_COMPLAINTS = re.compile(r"Bad configuration format|Wrong address format|ERROR", re.IGNORECASE)
"""What coturn 4.6.1 logs for a config line it does not understand (and then starts anyway)."""


def assert_config_accepted(turn: TurnServer) -> None:
    """coturn ignores a bad config line after logging it: the log must have no complaint."""
    complaints = [line for line in turn.log_tail(10_000).splitlines() if CONFIG_COMPLAINTS.search(line)]
    assert complaints == [], complaints


async def test_production_config_refuses_relaying_to_loopback_and_private_peers() -> None:
    async with TurnServer(SECRET, production=True, allowed_peer_ips=("10.9.9.9", "192.168.7.0-192.168.7.255")) as turn:
        config = (turn.workdir / "turnserver.conf").read_text()
        assert "allow-loopback-peers" not in config and "denied-peer-ip=127.0.0.0-127.255.255.255" in config
        assert_config_accepted(turn)
        credential = mint(SECRET, "prod", 600)
        async with TurnProbe(("127.0.0.1", turn.port)) as client:
            await client.allocate(credential.username, credential.password)
            for peer in DENIED_V4:
                with pytest.raises(TurnRefused) as refused:
                    await client.create_permission(peer)
                assert refused.value.code == 403, (peer, refused.value)
            # Not refused wholesale: a public (documentation-range) peer and an explicitly
            # allowed SFU address get their permission.  Nothing is sent to them.
            await client.create_permission("203.0.113.7")
            await client.create_permission("10.9.9.9")
            await client.create_permission("192.168.7.200")
            with pytest.raises(TurnRefused, match="403"):
                await client.create_permission("10.9.9.10")


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_production_config_refuses_ipv6_and_ipv4_mapped_peers() -> None:
    """coturn 4.6.1 on its own relays to ::ffff:127.0.0.1; the deny list stops it."""
    ips = ("127.0.0.1", "::1")
    async with TurnServer(SECRET, production=True, listening_ips=ips, relay_ips=ips,
                          allowed_peer_ips=("fd00::9",)) as turn:
        assert_config_accepted(turn)
        credential = mint(SECRET, "prod6", 600)
        async with TurnProbe(("127.0.0.1", turn.port)) as client:
            relayed = await client.allocate(credential.username, credential.password, family=6)
            assert relayed[0] == "::1"
            for peer in DENIED_V6:
                with pytest.raises(TurnRefused) as refused:
                    await client.create_permission(peer)
                assert refused.value.code == 403, (peer, refused.value)
            await client.create_permission("2001:db8::7")
            await client.create_permission("2001:1::7")  # next to Teredo's 2001::/32, public
            await client.create_permission("fd00::9")  # the allowed SFU address


async def test_dev_config_relays_where_production_refuses() -> None:
    """The same peers through the development config: all permitted (the contrast
    that makes the production 403s meaningful), except the zero address and what
    ``no-multicast-peers`` (in both configs) refuses by itself."""
    async with TurnServer(SECRET) as turn:
        credential = mint(SECRET, "dev", 600)
        async with TurnProbe(("127.0.0.1", turn.port)) as client:
            await client.allocate(credential.username, credential.password)
            for peer in DENIED_V4:
                if peer.startswith("0.") or ipaddress.ip_address(peer) in NO_MULTICAST_PEERS:
                    continue
                await client.create_permission(peer)


async def test_start_failures_are_reported_with_the_log() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        server = TurnServer(SECRET, port=port, start_timeout_s=3)
        with pytest.raises(TurnServerError, match="already in use"):
            await server.start()
        assert server.process is None and server.workdir is None
    # A server process that exits during start-up ("false" stands in for a coturn that dies).
    server = TurnServer(SECRET, start_timeout_s=5, binary="false")
    with pytest.raises(TurnServerError, match="exited with status 1"):
        await server.start()
    assert server.process is None and server.workdir is None
    with pytest.raises(TurnServerError, match="not found"):
        await TurnServer(SECRET, binary="no-such-turnserver").start()
