"""``GET /api/channels/{name}/ingest``: the live publisher's ingest health for its owner and
admins, through the real service (signaling, the embedded SFU node's ``stats`` RPC, an aiortc
WHIP publisher on 127.0.0.1); 404 for everyone else, for unknown channels and when not live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

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
                 "rtt_ms", "jitter_ms"}


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
