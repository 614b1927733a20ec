"""Signaling with TURN REST configured: per-session credentials in WHIP/WHEP ``Link``
headers (RFC 9725 §4.6) and GET /api/ice-servers, checked against a real coturn."""

from __future__ import annotations

import logging
import re
import time

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from common.config import ConfigError
from relaycast.service import Service
from signaling.config import IceServer, SignalingConfig
from tests.services import STREAM_KEY, make_config
from tests.turn.turn_probe import TurnProbe
from turn.credentials import verify
from turn.server import TurnServer, find_turnserver

SECRET = "signaling-turn-secret-0123"
TURN_URL = "turn:127.0.0.1:3478?transport=udp"
TURN_TCP = "turn:127.0.0.1:3478?transport=tcp"
STUN_URL = "stun:127.0.0.1:3478"
SDP = "application/sdp"
LINK = re.compile(
    r'^<([^>]+)>; rel="ice-server"'
    r'(?:; username="((?:[^"\\]|\\.)*)"; credential="((?:[^"\\]|\\.)*)"; credential-type="password")?$'
)
needs_coturn = pytest.mark.skipif(find_turnserver() is None, reason="coturn's turnserver is not installed")


def parse_links(values: list[str]) -> list[tuple[str, str | None, str | None]]:
    out = []
    for value in values:
        match = LINK.match(value)
        assert match, value
        out.append(match.groups())
    return out


async def _offer(pcs: list[RTCPeerConnection], direction: str) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.append(pc)
    for kind in ("video", "audio"):
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


def turn_config(**overrides: object) -> SignalingConfig:
    values: dict[str, object] = {
        "turn_urls": (STUN_URL, TURN_URL, TURN_TCP), "turn_secret": SECRET, "turn_ttl_s": 300
    }
    return make_config(**(values | overrides))


async def _post(http: aiohttp.ClientSession, url: str, offer: str, **headers: str) -> aiohttp.ClientResponse:
    resp = await http.post(url, data=offer, headers={"Content-Type": SDP, **headers})
    await resp.read()
    assert resp.status == 201, await resp.text()
    return resp


async def test_whip_and_whep_201_carry_fresh_per_session_credentials(
    http: aiohttp.ClientSession, pcs: list[RTCPeerConnection], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    static = IceServer("stun:stun.example.org:3478")
    async with Service(turn_config(ice_servers=(static,))) as svc:
        before = time.time()
        whip = await _post(http, f"{svc.url}/whip/demo", await _offer(pcs, "sendonly"),
                           Authorization=f"Bearer {STREAM_KEY}")
        whep = await _post(http, f"{svc.url}/whep/demo", await _offer(pcs, "recvonly"))
        credentials = []
        for resp in (whip, whep):
            links = parse_links(resp.headers.getall("Link"))
            # The static server first, then the TURN REST URLs; one Link per URL.
            assert [url for url, _, _ in links] == ["stun:stun.example.org:3478", STUN_URL, TURN_URL, TURN_TCP]
            assert links[0][1:] == (None, None) and links[1][1:] == (None, None)
            (_, user_udp, pass_udp), (_, user_tcp, pass_tcp) = links[2], links[3]
            assert (user_udp, pass_udp) == (user_tcp, pass_tcp)  # one credential per session
            expiry, _, user_id = user_udp.partition(":")
            assert before + 300 - 1 <= int(expiry) <= time.time() + 300
            assert verify(SECRET, user_udp, pass_udp)
            assert not verify("some-other-secret-123", user_udp, pass_udp)
            credentials.append((user_id, pass_udp))
            assert pass_udp not in caplog.text
        (whip_user, whip_pass), (whep_user, whep_pass) = credentials
        assert whip_user.startswith("whip-") and whep_user.startswith("whep-")
        assert whip_pass != whep_pass
        # The session id (the capability URL) never appears in the TURN username.
        for resp, (user, _) in zip((whip, whep), credentials, strict=True):
            assert resp.headers["Location"].rsplit("/", 1)[1] not in user
        assert "Link" in whip.headers.get("Access-Control-Expose-Headers", "")


async def test_options_carry_no_credentials(http: aiohttp.ClientSession, pcs: list[RTCPeerConnection]) -> None:
    async with Service(turn_config()) as svc:
        whip = await _post(http, f"{svc.url}/whip/demo", await _offer(pcs, "sendonly"),
                           Authorization=f"Bearer {STREAM_KEY}")
        for path in ("/whip/demo", "/whep/demo", whip.headers["Location"]):
            resp = await http.options(
                svc.url + path,
                headers={"Origin": "http://127.0.0.1", "Access-Control-Request-Method": "POST"},
            )
            body = await resp.text()
            assert resp.status == 200
            assert "Link" not in resp.headers, path
            assert "credential" not in body and SECRET not in body


async def test_api_ice_servers_mints_per_request_and_is_not_stored(http: aiohttp.ClientSession) -> None:
    static = IceServer("turn:turn.example.org:3478", "static-user", "static-pass")
    async with Service(turn_config(ice_servers=(static,))) as svc:
        bodies = []
        for _ in range(2):
            resp = await http.get(f"{svc.url}/api/ice-servers")
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "no-store"
            bodies.append((await resp.json())["iceServers"])
        first, second = bodies
        assert first[0] == {"urls": ["turn:turn.example.org:3478"], "username": "static-user",
                            "credential": "static-pass"}
        assert first[1] == {"urls": [STUN_URL]}
        assert first[2]["urls"] == [TURN_URL, TURN_TCP]
        assert verify(SECRET, first[2]["username"], first[2]["credential"])
        assert first[2]["username"] != second[2]["username"]  # a fresh user id each time


async def test_without_turn_settings_nothing_changes(http: aiohttp.ClientSession) -> None:
    async with Service(make_config()) as svc:
        resp = await http.get(f"{svc.url}/api/ice-servers")
        assert (await resp.json()) == {"iceServers": []}


@needs_coturn
async def test_link_header_credentials_allocate_on_a_real_coturn(
    http: aiohttp.ClientSession, pcs: list[RTCPeerConnection]
) -> None:
    async with TurnServer(SECRET) as turn, Service(turn_config(turn_urls=(turn.url,))) as svc:
        whip = await _post(http, f"{svc.url}/whip/demo", await _offer(pcs, "sendonly"),
                           Authorization=f"Bearer {STREAM_KEY}")
        [(url, username, password)] = parse_links(whip.headers.getall("Link"))
        assert url == turn.url and username and password
        async with TurnProbe(("127.0.0.1", turn.port)) as client:
            relayed = await client.allocate(username, password)
            assert relayed[0] == "127.0.0.1"
        api = await (await http.get(f"{svc.url}/api/ice-servers")).json()
        [server] = api["iceServers"]
        async with TurnProbe(("127.0.0.1", turn.port)) as client:
            await client.allocate(server["username"], server["credential"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAYCAST_TURN_URLS": TURN_URL}, "set RELAYCAST_TURN_SECRET"),
        ({"RELAYCAST_TURN_URLS": TURN_URL, "RELAYCAST_TURN_SECRET": "short"}, "RELAYCAST_TURN_SECRET"),
        ({"RELAYCAST_TURN_URLS": "http://127.0.0.1:3478", "RELAYCAST_TURN_SECRET": SECRET}, "RELAYCAST_TURN_URLS"),
        ({"RELAYCAST_TURN_SECRET": SECRET}, "RELAYCAST_TURN_URLS is empty"),
        ({"RELAYCAST_TURN_URLS": TURN_URL, "RELAYCAST_TURN_SECRET": SECRET, "RELAYCAST_TURN_TTL_S": "30"},
         "RELAYCAST_TURN_TTL_S"),
        ({"RELAYCAST_TURN_URLS": TURN_URL, "RELAYCAST_TURN_SECRET": SECRET, "RELAYCAST_TURN_TTL_S": "86400"},
         "RELAYCAST_TURN_TTL_S"),
    ],
)
def test_turn_environment_is_validated(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SignalingConfig.from_env(env)


def test_turn_environment_is_read_and_the_secret_is_not_in_repr() -> None:
    config = SignalingConfig.from_env({
        "RELAYCAST_TURN_URLS": f" {STUN_URL} , {TURN_URL} ,", "RELAYCAST_TURN_SECRET": SECRET,
        "RELAYCAST_TURN_TTL_S": "900",
    })
    assert config.turn_urls == (STUN_URL, TURN_URL)
    assert config.turn_ttl_s == 900
    assert SECRET not in repr(config)
    stun_only = SignalingConfig.from_env({"RELAYCAST_TURN_URLS": STUN_URL})
    assert stun_only.client_ice_servers() == [{"urls": [STUN_URL]}]
