"""``GET /api/channels/{name}/ingest``: the live publisher's ingest health for its owner and
admins, through the real service (signaling, the embedded SFU node's ``stats`` RPC, an aiortc
WHIP publisher on 127.0.0.1); 404 for everyone else, for unknown channels and when not live.
The advice and dropped-frame count its WHIP session was given (``PATCH`` ``{"advice"}``, as
the RTMP/SRT ingest does when it transcodes B-frames, ``{"dropped_frames"}``, its running
total every few seconds) come with it, until cleared or a new session replaces that one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from community.api.ingest import ingest_values
from community.app import COMMUNITY
from community.config import CommunityConfig
from community.models import User
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from tests.community.platform_app import bearer, community_of, make_user, platform_app
from tests.polling import wait_for
from tests.services import access_token, make_channel, make_config

INGEST_FIELDS = {"at", "bitrate_bps", "fps", "width", "height", "keyframe_interval_s", "loss",
                 "rtt_ms", "jitter_ms", "advice", "dropped_frames"}
ADVICE = "set bframes=0 / profile baseline for lower latency and no transcoding"


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    async with Service(make_config()) as service:
        yield service


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_admin(svc: Service, username: str) -> None:
    async with svc.app[COMMUNITY].db.transaction() as session:
        session.add(User(username=username, display_name=username, password_hash="!", role="admin"))


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    return await resp.json()


@pytest.mark.timeout(90)
async def test_owner_and_admin_read_the_live_ingest_others_get_404(svc: Service,
                                                                    http: aiohttp.ClientSession) -> None:
    key = await make_channel(svc.app, "alice")
    await make_channel(svc.app, "bob")
    await make_admin(svc, "root")
    owner = auth(await access_token(svc.app, "alice"))
    other = auth(await access_token(svc.app, "bob"))
    admin = auth(await access_token(svc.app, "root"))
    url = f"{svc.url}/api/channels/alice/ingest"

    offline = await problem(await http.get(url, headers=owner), 404)
    assert "live" in offline["detail"]

    publisher = await whip_client.publish(f"{svc.url}/whip/alice", key, [PatternVideoTrack(320, 180, 15)])
    try:
        await whip_client.wait_connected(publisher.pc)

        async def measured() -> dict[str, Any] | None:
            async with http.get(url, headers=owner) as resp:
                body = await resp.json()
                return body if resp.status == 200 and body["fps"] and body["width"] else None

        ingest = await wait_for(measured, 30, "the owner's ingest report with fps and size", interval_s=0.25)
        assert set(ingest) == INGEST_FIELDS
        assert ingest["advice"] is None and ingest["dropped_frames"] is None  # a WebRTC encoder's
        assert (ingest["width"], ingest["height"]) == (320, 180)
        assert 5 <= ingest["fps"] <= 25 and ingest["bitrate_bps"] > 0
        assert ingest["at"].endswith(("Z", "+00:00"))

        async with http.get(url, headers=admin) as resp:
            assert resp.status == 200 and (await resp.json())["width"] == 320
        # Someone else's channel, an unknown one, a malformed name: the same 404.
        not_yours = await problem(await http.get(url, headers=other), 404)
        unknown = await problem(await http.get(f"{svc.url}/api/channels/nobody/ingest", headers=other), 404)
        assert not_yours["detail"] == unknown["detail"]
        await problem(await http.get(f"{svc.url}/api/channels/{'x' * 300}/ingest", headers=owner), 404)
        await problem(await http.get(url), 401)
        # bob's own channel is not live
        await problem(await http.get(f"{svc.url}/api/channels/bob/ingest", headers=other), 404)
    finally:
        await publisher.close()

    async def gone() -> bool:
        async with http.get(url, headers=owner) as resp:
            return resp.status == 404
    await wait_for(gone, 20, "404 once the publisher left")


@pytest.mark.timeout(90)
async def test_the_ingest_carries_the_sessions_dropped_frames_until_a_new_session(
        svc: Service, http: aiohttp.ClientSession) -> None:
    key = await make_channel(svc.app, "alice")
    owner = auth(await access_token(svc.app, "alice"))
    url = f"{svc.url}/api/channels/alice/ingest"

    async def reported(drops: int | None, advice: str | None = None) -> dict[str, Any] | None:
        async with http.get(url, headers=owner) as resp:
            body = await resp.json()
            ok = resp.status == 200 and (body["dropped_frames"], body["advice"]) == (drops, advice)
            return body if ok else None

    async def tell(location: str, body: dict[str, Any]) -> int:
        async with http.patch(location, json=body, headers=auth(key)) as resp:
            return resp.status

    # As the RTMP/SRT ingest publishes: POST /whip with the key alone, then PATCH its session
    # with the count (at once, then whenever it changed) and, with B-frames, the advice.
    first = await whip_client.publish(f"{svc.url}/whip", key, [PatternVideoTrack(320, 180, 15)])
    second = None
    try:
        await whip_client.wait_connected(first.pc)
        await wait_for(lambda: reported(None), 20, "the live publisher's ingest, no count", interval_s=0.25)
        assert await tell(first.location, {"dropped_frames": 0}) == 204
        ingest = await reported(0)  # at once: the node keeps it, nothing is sampled
        assert ingest is not None and set(ingest) == INGEST_FIELDS
        assert await tell(first.location, {"advice": ADVICE}) == 204
        assert await reported(0, ADVICE) is not None  # the advice leaves the count
        assert await tell(first.location, {"dropped_frames": 2**53 - 1}) == 204
        assert await reported(2**53 - 1, ADVICE) is not None  # the count leaves the advice
        assert await tell(first.location, {"dropped_frames": 17}) == 204
        assert await reported(17, ADVICE) is not None
        assert await tell(first.location, {"dropped_frames": -1}) == 400
        assert await reported(17, ADVICE) is not None
        assert await tell(first.location, {"dropped_frames": None}) == 204
        assert await reported(None, ADVICE) is not None
        assert await tell(first.location, {"dropped_frames": 30}) == 204
        assert await reported(30, ADVICE) is not None

        # The encoder reconnects: the ingest's new session starts without a count.
        second = await whip_client.publish(f"{svc.url}/whip", key, [PatternVideoTrack(320, 180, 15)])
        assert svc.worker is not None
        assert svc.worker.routers["alice"].publisher.session_id == second.location.rsplit("/", 1)[1]
        await whip_client.wait_connected(second.pc)
        await wait_for(lambda: reported(None), 20, "the new session's ingest, no count", interval_s=0.25)
        assert await tell(first.location, {"dropped_frames": 31}) == 404  # the old session is gone
        assert await reported(None) is not None
        assert await tell(second.location, {"dropped_frames": 0}) == 204  # counting anew
        assert await reported(0) is not None
    finally:
        await first.close()
        if second is not None:
            await second.close()


@pytest.mark.timeout(90)
async def test_the_ingest_carries_the_sessions_advice_until_a_new_session(
        svc: Service, http: aiohttp.ClientSession) -> None:
    key = await make_channel(svc.app, "alice")
    owner = auth(await access_token(svc.app, "alice"))
    url = f"{svc.url}/api/channels/alice/ingest"

    async def reported(advice: str | None) -> dict[str, Any] | None:
        async with http.get(url, headers=owner) as resp:
            body = await resp.json()
            return body if resp.status == 200 and body["advice"] == advice else None

    async def advise(location: str, advice: str | None) -> int:
        async with http.patch(location, json={"advice": advice}, headers=auth(key)) as resp:
            return resp.status

    # As the RTMP ingest publishes: POST /whip with the key alone, then PATCH its session.
    first = await whip_client.publish(f"{svc.url}/whip", key, [PatternVideoTrack(320, 180, 15)])
    second = None
    try:
        await whip_client.wait_connected(first.pc)
        await wait_for(lambda: reported(None), 20, "the live publisher's ingest, no advice", interval_s=0.25)
        assert await advise(first.location, ADVICE) == 204
        ingest = await reported(ADVICE)  # at once: the node keeps it, nothing is sampled
        assert ingest is not None and set(ingest) == INGEST_FIELDS
        assert await advise(first.location, None) == 204
        assert await reported(None) is not None
        assert await advise(first.location, ADVICE) == 204
        assert await reported(ADVICE) is not None

        # The encoder reconnects: its new session replaces the old one, without advice.
        second = await whip_client.publish(f"{svc.url}/whip", key, [PatternVideoTrack(320, 180, 15)])
        assert svc.worker is not None
        assert svc.worker.routers["alice"].publisher.session_id == second.location.rsplit("/", 1)[1]
        await whip_client.wait_connected(second.pc)
        await wait_for(lambda: reported(None), 20, "the new session's ingest, no advice", interval_s=0.25)
        assert await advise(first.location, ADVICE) == 404  # the old session is gone
        assert await reported(None) is not None
    finally:
        await first.close()
        if second is not None:
            await second.close()


@pytest.mark.parametrize(
    ("advice", "kept"),
    [(ADVICE, ADVICE), ("x" * 200, "x" * 200), ("x" * 201, None), ("", None), ("a\nb", None),
     (7, None), (["set bframes=0"], None), (None, None)],
)
def test_ingest_values_keep_only_an_advice_of_the_protocols_shape(advice: Any, kept: str | None) -> None:
    values = ingest_values({"bitrate_bps": 1000, "advice": advice})
    assert values is not None and values["advice"] == kept and values["bitrate_bps"] == 1000
    assert ingest_values({"bitrate_bps": 1000})["advice"] is None  # an older node: no member


@pytest.mark.parametrize(
    ("count", "kept"),
    [(0, 0), (1234, 1234), (2**53 - 1, 2**53 - 1), (2**53, None), (-1, None), (1.5, None),
     (3.0, None), (True, None), ("3", None), (float("nan"), None), ([3], None), (None, None)],
)
def test_ingest_values_keep_only_a_dropped_frame_count_of_the_protocols_shape(
        count: Any, kept: int | None) -> None:
    values = ingest_values({"bitrate_bps": 1000, "advice": ADVICE, "dropped_frames": count})
    assert values is not None and values["dropped_frames"] == kept
    assert type(values["dropped_frames"]) is type(kept)  # an int, never a float or a bool
    assert (values["advice"], values["bitrate_bps"]) == (ADVICE, 1000)  # the others as they were
    assert ingest_values({"bitrate_bps": 1000})["dropped_frames"] is None  # an older node


@pytest.fixture
async def platform_only(tmp_path: Path) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(platform_app(CommunityConfig(data_dir=tmp_path))))
    await client.start_server()
    yield client
    await client.close()


async def test_a_platform_without_an_sfu_reports_nothing_live(platform_only: TestClient) -> None:
    alice = await make_user(community_of(platform_only), "alice")
    resp = await platform_only.get("/api/channels/alice/ingest", headers=await bearer(platform_only, alice))
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
