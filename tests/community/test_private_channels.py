"""Private channels: allowed viewers, playback tokens, and their enforcement on WHEP
(signaling) and on LL-HLS/VOD (`hls_bridge.access`), whose private answers are never
stored by shared caches and carry the viewer's token in every URI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection

from common.problems import HttpProblem
from hls_bridge.access import with_token
from hls_bridge.origin import create_origin_app
from hls_bridge.playlist import VariantStream
from hls_bridge.store import RoomStore
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from tests.services import access_token, make_channel, make_config
from tests.signaling.whip_helpers import SDP, new_offer, problem


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    async with Service(make_config()) as service:
        yield service


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def playback_token(http: aiohttp.ClientSession, svc: Service, channel: str, user: str) -> aiohttp.ClientResponse:
    resp = await http.post(f"{svc.url}/api/channels/{channel}/playback-token",
                           headers=auth(await access_token(svc.app, user)))
    await resp.read()
    return resp


async def test_allowed_viewers_get_playback_tokens_others_do_not(svc: Service, http: aiohttp.ClientSession) -> None:
    await make_channel(svc.app, "alice", private=True)
    await make_channel(svc.app, "bob")
    await make_channel(svc.app, "carol")
    owner = auth(await access_token(svc.app, "alice"))
    assert (await playback_token(http, svc, "alice", "bob")).status == 403
    added = await http.post(f"{svc.url}/api/channels/alice/viewers", json={"username": "Bob"}, headers=owner)
    assert added.status == 201, await added.text()
    bob = await added.json()
    assert bob["username"] == "bob"
    listed = await (await http.get(f"{svc.url}/api/channels/alice/viewers", headers=owner)).json()
    assert [v["username"] for v in listed["viewers"]] == ["bob"]
    granted = await playback_token(http, svc, "alice", "bob")
    assert granted.status == 200
    assert set(await granted.json()) == {"token", "expires_at"}
    assert (await playback_token(http, svc, "alice", "alice")).status == 200
    assert (await playback_token(http, svc, "alice", "carol")).status == 403
    # carol may neither see nor change the list
    carol = auth(await access_token(svc.app, "carol"))
    assert (await http.get(f"{svc.url}/api/channels/alice/viewers", headers=carol)).status == 403
    assert (await http.post(f"{svc.url}/api/channels/alice/viewers", json={"username": "carol"},
                            headers=carol)).status == 403
    assert (await http.delete(f"{svc.url}/api/channels/alice/viewers/{bob['id']}", headers=carol)).status == 403
    assert (await http.post(f"{svc.url}/api/channels/alice/viewers", json={"username": "nobody"},
                            headers=owner)).status == 404
    removed = await http.delete(f"{svc.url}/api/channels/alice/viewers/{bob['id']}", headers=owner)
    assert removed.status == 204
    assert (await playback_token(http, svc, "alice", "bob")).status == 403
    assert (await http.delete(f"{svc.url}/api/channels/alice/viewers/{bob['id']}", headers=owner)).status == 404


async def test_whep_of_a_private_channel_needs_its_playback_token(svc: Service, http: aiohttp.ClientSession) -> None:
    key = await make_channel(svc.app, "alice", private=True)
    await make_channel(svc.app, "other", private=True)
    publisher = await whip_client.publish(f"{svc.url}/whip/alice", key, [PatternVideoTrack(320, 180, 15)])
    pcs: list[RTCPeerConnection] = []
    try:
        await whip_client.wait_connected(publisher.pc)
        offer = await new_offer(pcs, direction="recvonly")
        resp = await http.post(f"{svc.url}/whep/alice", data=offer, headers={"Content-Type": SDP})
        await problem(resp, 401)
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="relaycast"'
        for wrong in ("not-a-token", (await (await playback_token(http, svc, "other", "other")).json())["token"]):
            resp = await http.post(f"{svc.url}/whep/alice?token={quote(wrong)}", data=offer,
                                   headers={"Content-Type": SDP})
            await problem(resp, 401)
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        token = (await (await playback_token(http, svc, "alice", "alice")).json())["token"]
        resp = await http.post(f"{svc.url}/whep/alice?token={quote(token)}", data=offer,
                               headers={"Content-Type": SDP})
        assert resp.status == 201, await resp.text()
        offer = await new_offer(pcs, direction="recvonly")
        resp = await http.post(f"{svc.url}/whep/alice", data=offer, headers={"Content-Type": SDP, **auth(token)})
        assert resp.status == 201, await resp.text()
        # a public channel needs none
        await make_channel(svc.app, "pub")
        resp = await http.post(f"{svc.url}/whep/pub", data=await new_offer(pcs, direction="recvonly"),
                               headers={"Content-Type": SDP})
        await problem(resp, 409)  # offline, but admitted
    finally:
        for pc in pcs:
            await pc.close()
        await publisher.close()


async def test_hls_of_a_private_channel_needs_its_playback_token(svc: Service, http: aiohttp.ClientSession) -> None:
    await make_channel(svc.app, "alice", private=True)
    resp = await http.get(f"{svc.url}/hls/alice/index.m3u8")
    await problem(resp, 401)
    assert resp.headers["Cache-Control"] == "no-store"
    token = (await (await playback_token(http, svc, "alice", "alice")).json())["token"]
    resp = await http.get(f"{svc.url}/hls/alice/index.m3u8", params={"token": token})
    assert resp.status == 404  # admitted: the channel is not live
    resp = await http.get(f"{svc.url}/hls/alice/index.m3u8", params={"token": token + "x"})
    assert resp.status == 401


@pytest.mark.parametrize(("playlist", "expected"), [
    ("#EXTM3U\nv0/index.m3u8\n", "#EXTM3U\nv0/index.m3u8?token=T\n"),
    ('#EXT-X-MAP:URI="init.mp4?v=1"\nseg3.m4s\n', '#EXT-X-MAP:URI="init.mp4?v=1&token=T"\nseg3.m4s?token=T\n'),
    ('#EXT-X-PART:DURATION=0.2,URI="part3.0.m4s"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part3.1.m4s"\n',
     '#EXT-X-PART:DURATION=0.2,URI="part3.0.m4s?token=T"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part3.1.m4s?token=T"\n'),
    ("#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n", "#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n"),
])
def test_with_token_adds_the_token_to_every_uri(playlist: str, expected: str) -> None:
    assert with_token(playlist, "T") == expected


def test_with_token_escapes_the_token() -> None:
    assert with_token("seg1.m4s", "a b&c") == "seg1.m4s?token=a%20b%26c"


async def test_private_answers_are_not_shared_cached_and_carry_the_token() -> None:
    room = _fed_room()
    seen: list[tuple[str, str | None]] = []

    async def access(name: str, token: str | None) -> bool:
        seen.append((name, token))
        if name == "secret" and token != "good":
            raise HttpProblem(401, None, "send a playback token")
        return name == "secret"

    app = web.Application()
    app.add_subapp("/hls", create_origin_app({"secret": room, "open": room}, access=access))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/hls/secret/index.m3u8")
        assert resp.status == 401 and resp.headers["Cache-Control"] == "no-store"
        resp = await client.get("/hls/secret/index.m3u8?token=good")
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "private, no-store"
        assert "v0/index.m3u8?token=good" in await resp.text()
        resp = await client.get("/hls/secret/s1/v0/index.m3u8?token=good")
        text = await resp.text()
        assert resp.headers["Cache-Control"] == "private, no-store"
        assert 'URI="init.mp4?token=good"' in text and "seg0.m4s?token=good" in text, text
        resp = await client.get("/hls/secret/s1/v0/seg0.m4s", headers={"Authorization": "Bearer good"})
        assert resp.status == 200 and resp.headers["Cache-Control"] == "private, no-store"
        resp = await client.get("/hls/open/s1/v0/index.m3u8")
        assert resp.headers["Cache-Control"].startswith("public") and "token" not in await resp.text()
    assert ("secret", "good") in seen and ("open", None) in seen


def _fed_room() -> RoomStore:
    room = RoomStore(stream_id="s1")
    store = room.add_rendition("v0", target_duration=1, part_target=0.2)
    store.set_init(b"init")
    room.set_variants([VariantStream("v0/index.m3u8", 800_000, "avc1.64001e", resolution=(640, 360))])
    for index in range(5):
        store.publish_part(b"part", 0.2, independent=index == 0)
    store.close_segment(datetime(2026, 1, 1, tzinfo=UTC))
    return room


async def test_the_nginx_edge_never_caches_a_private_channels_answers(
        svc: Service, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The deploy edge (deploy/nginx) in front of an origin whose access hook is the
    service's own (real playback tokens): a private channel's playlists and media reach
    the origin on every request, a public one's come from the cache."""
    nginx_edge = pytest.importorskip("loadtest.nginx_edge")
    if nginx_edge.find_nginx() is None:
        pytest.skip("nginx is not installed")
    await make_channel(svc.app, "alice", private=True)
    await make_channel(svc.app, "pub")
    token = (await (await playback_token(http, svc, "alice", "alice")).json())["token"]
    room = _fed_room()
    origin = web.Application()
    origin.add_subapp("/hls", create_origin_app({"alice": room, "pub": room}, access=svc.view_access))
    async with TestServer(origin, host="127.0.0.1") as server:
        origin_url = str(server.make_url("")).rstrip("/")
        async with nginx_edge.NginxEdge(origin_url, tmp_path / "edge") as edge:
            async def twice(path: str, **params: str) -> list[tuple[int, str, str]]:
                out = []
                for _ in range(2):
                    async with http.get(edge.url + path, params=params) as resp:
                        out.append((resp.status, resp.headers.get("X-Cache-Status", ""),
                                    resp.headers.get("Cache-Control", "")))
                        await resp.read()
                return out

            assert [s for s, _, _ in await twice("/hls/alice/index.m3u8")] == [401, 401]
            for path in ("/hls/alice/index.m3u8", "/hls/alice/s1/v0/index.m3u8", "/hls/alice/s1/v0/seg0.m4s"):
                answers = await twice(path, token=token)
                assert [(s, c) for s, _, c in answers] == [(200, "private, no-store")] * 2, (path, answers)
                assert all(cache != "HIT" for _, cache, _ in answers), (path, answers)
            public = await twice("/hls/pub/s1/v0/seg0.m4s")
            assert [c for _, c, _ in public] == ["MISS", "HIT"], public
        entries = nginx_edge.parse_access_log(edge.access_log)
        private = [e for e in entries if e.uri.startswith("/hls/alice/")]
        assert private and all(e.reached_origin for e in private), private
