"""``/api/streams/start``, ``/api/streams/{id}``, ``/api/streams/{id}/stop`` and
``/api/admin/streams/{id}/takedown`` on SQLite and PostgreSQL: validation, object-level
authorization, keys stored hashed, audit entries and events."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from community.config import CommunityConfig
from community.lifecycle import lifecycle_of
from community.models import AuditEntry, Channel, ChannelViewer, Stream, StreamKey, StreamTag
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from signaling.app_keys import ROOMS, SESSION_SERVICE
from tests.community.platform_app import bearer, community_of, make_user, record_events
from tests.polling import wait_for
from tests.services import access_token, make_channel, make_config

pytestmark = pytest.mark.timeout(60)






async def test_start_creates_then_updates_the_pending_stream(db_client: TestClient) -> None:
    community = community_of(db_client)
    alice = await make_user(community, "alice")
    auth = await bearer(db_client, alice)
    response = await db_client.post("/api/streams/start", headers=auth, json={
        "title": "  Building   a compiler ", "category": "software-development", "tags": ["Rust", "compilers"],
        "language": "en"})
    assert response.status == 201, await response.text()
    body = await response.json()
    stream = body["stream"]
    base = str(db_client.make_url("")).rstrip("/")
    assert stream["status"] == "pending" and stream["channel"] == "alice"
    assert stream["title"] == "Building a compiler"
    assert (stream["category"], stream["category_name"]) == ("software-development", "Software Development")
    assert stream["tags"] == ["rust", "compilers"]
    assert stream["channel_display_name"] == "Alice"
    assert body["whip_url"] == stream["whip_url"] == f"{base}/whip/alice"
    assert stream["hls_url"] == f"{base}/hls/alice/master.m3u8" and stream["whep_url"] == f"{base}/whep/alice"
    assert stream["started_at"] is None and stream["vod_url"] is None and stream["thumbnail_url"] is None
    assert body["stream_key"] is None

    again = await db_client.post("/api/streams/start", headers=auth, json={"title": "Part two", "tags": ["llvm"]})
    assert again.status == 201
    second = (await again.json())["stream"]
    assert second["id"] == stream["id"]  # the open stream is updated, not duplicated
    assert (second["title"], second["tags"], second["category"]) == ("Part two", ["llvm"], "software-development")
    async with community.db.session() as session:
        tags = list((await session.execute(select(StreamTag.tag).where(StreamTag.stream_id == stream["id"])))
                    .scalars())
    assert tags == ["llvm"]

    fetched = await db_client.get(f"/api/streams/{stream['id']}")
    assert fetched.status == 200 and (await fetched.json())["title"] == "Part two"


async def test_start_with_new_key_stores_it_hashed(db_client: TestClient) -> None:
    community = community_of(db_client)
    bob = await make_user(community, "bob")
    response = await db_client.post("/api/streams/start", headers=await bearer(db_client, bob),
                                    json={"title": "with a key", "new_key": True})
    assert response.status == 201
    key = (await response.json())["stream_key"]
    assert key.startswith("sk_") and len(key) >= 32
    async with community.db.session() as session:
        [row] = (await session.execute(select(StreamKey))).scalars().all()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in (row.hint, row.label) and row.hint.startswith(key[:6])


@pytest.mark.parametrize("body, status", [
    ({}, 422),
    ({"title": ""}, 422),
    ({"title": "   "}, 422),
    ({"title": "x" * 141}, 422),
    ({"title": "ok", "category": "no-such-category"}, 422),
    ({"title": "ok", "tags": ["a"] * 11}, 422),
    ({"title": "ok", "tags": ["x" * 33]}, 422),
    ({"title": "ok", "tags": ["<script>"]}, 422),
    ({"title": "ok", "language": "english!"}, 422),
    ({"title": "ok", "new_key": "yes please"}, 422),
    ({"title": "nul \u0000 byte"}, 422),
    ({"title": "ok", "category": "\u0000"}, 422),
])
async def test_start_rejects_bad_bodies(db_client: TestClient, body: dict[str, Any], status: int) -> None:
    user = await make_user(community_of(db_client), "carol")
    response = await db_client.post("/api/streams/start", headers=await bearer(db_client, user),
                                    json=body)
    assert response.status == status
    assert response.content_type == "application/problem+json"


async def test_start_needs_a_login(platform_client: TestClient) -> None:
    response = await platform_client.post("/api/streams/start", json={"title": "anonymous"})
    assert response.status == 401
    assert response.content_type == "application/problem+json"


async def test_stop_is_for_the_owner_or_an_admin(db_client: TestClient) -> None:
    community = community_of(db_client)
    events = record_events(community)
    owner = await make_user(community, "dave")
    other = await make_user(community, "mallory")
    admin = await make_user(community, "root_admin", role="admin")
    started = await db_client.post("/api/streams/start", headers=await bearer(db_client, owner),
                                   json={"title": "my show"})
    stream_id = (await started.json())["stream"]["id"]
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None
    await lifecycle.go_live("dave", 2)

    refused = await db_client.post(f"/api/streams/{stream_id}/stop", headers=await bearer(db_client, other))
    assert refused.status == 403
    assert (await db_client.get(f"/api/streams/{stream_id}")).status == 200
    async with community.db.session() as session:
        assert (await session.get(Stream, stream_id)).status == "live"  # type: ignore[union-attr]

    anonymous = await db_client.post(f"/api/streams/{stream_id}/stop")
    assert anonymous.status == 401

    stopped = await db_client.post(f"/api/streams/{stream_id}/stop", headers=await bearer(db_client, owner))
    assert stopped.status == 200
    body = await stopped.json()
    assert body["status"] == "ended" and body["ended_at"] is not None and body["viewers"] == 0
    assert [e for e, _ in events] == ["stream.started", "stream.ended"]
    # The room still reports live while the WHIP session closes: no new stream starts.
    assert await lifecycle.go_live("dave", 2) is None
    lifecycle.room_changed("dave", True, 3)
    await lifecycle.idle()
    async with community.db.session() as session:
        assert len((await session.execute(select(Stream))).all()) == 1
    # Idempotent; an admin may stop any stream too.
    again = await db_client.post(f"/api/streams/{stream_id}/stop", headers=await bearer(db_client, admin))
    assert again.status == 200 and (await again.json())["status"] == "ended"
    assert [e for e, _ in events] == ["stream.started", "stream.ended"]

    missing = await db_client.post("/api/streams/AAAAAAAAAAAAAAAA/stop", headers=await bearer(db_client, owner))
    assert missing.status == 404


async def test_private_channel_streams_are_hidden(db_client: TestClient) -> None:
    community = community_of(db_client)
    owner = await make_user(community, "erin")
    friend = await make_user(community, "friend")
    stranger = await make_user(community, "stranger")
    async with community.db.transaction() as session:
        channel = (await session.execute(select(Channel).where(Channel.name == "erin"))).scalar_one()
        channel.private = True
        session.add(ChannelViewer(channel_id=channel.id, user_id=friend.id))
    started = await db_client.post("/api/streams/start", headers=await bearer(db_client, owner),
                                   json={"title": "secret"})
    stream_id = (await started.json())["stream"]["id"]
    assert (await db_client.get(f"/api/streams/{stream_id}")).status == 404
    hidden = await db_client.get(f"/api/streams/{stream_id}", headers=await bearer(db_client, stranger))
    assert hidden.status == 404
    stop = await db_client.post(f"/api/streams/{stream_id}/stop", headers=await bearer(db_client, stranger))
    assert stop.status == 404
    for user in (owner, friend):
        shown = await db_client.get(f"/api/streams/{stream_id}", headers=await bearer(db_client, user))
        assert shown.status == 200
    assert (await db_client.get("/api/streams/nope")).status == 404
    assert (await db_client.get("/api/streams/a%00b")).status == 404
    assert (await db_client.get("/api/channels/a%00b/videos")).status == 404


async def test_takedown_ends_revokes_the_key_and_audits(db_client: TestClient) -> None:
    community = community_of(db_client)
    events = record_events(community)
    owner = await make_user(community, "frank")
    admin = await make_user(community, "boss", role="admin")
    started = await db_client.post("/api/streams/start", headers=await bearer(db_client, owner),
                                   json={"title": "bad content", "new_key": True})
    stream_id = (await started.json())["stream"]["id"]
    async with community.db.transaction() as session:
        key = (await session.execute(select(StreamKey))).scalar_one()
        stream = await session.get(Stream, stream_id)
        assert stream is not None
        stream.key_id = key.id  # the key the broadcast went live with
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None
    await lifecycle.go_live("frank")

    body = {"reason": "terms of service"}
    refused = await db_client.post(f"/api/admin/streams/{stream_id}/takedown", json=body,
                                   headers=await bearer(db_client, owner))
    assert refused.status == 403
    response = await db_client.post(f"/api/admin/streams/{stream_id}/takedown", json=body,
                                    headers=await bearer(db_client, admin))
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "ended"
    async with community.db.session() as session:
        stream = await session.get(Stream, stream_id)
        key = await session.get(StreamKey, key.id)
        [entry] = (await session.execute(select(AuditEntry))).scalars().all()
    assert stream is not None and stream.ended_reason == "takedown"
    assert key is not None and key.revoked_at is not None
    assert (entry.actor_id, entry.action, entry.target_type, entry.target_id, entry.reason) == (
        admin.id, "stream.takedown", "stream", stream_id, "terms of service")
    revoked = [p for e, p in events if e == "key.revoked"]
    assert revoked == [{"channel": "frank", "key_id": key.id, "key_hash": key.key_hash}]
    assert [e for e, _ in events if e.startswith("stream.")] == ["stream.started", "stream.ended"]

    empty = await db_client.post(f"/api/admin/streams/{stream_id}/takedown", json={"reason": ""},
                                 headers=await bearer(db_client, admin))
    assert empty.status == 422
    missing = await db_client.post("/api/admin/streams/unknown/takedown", json=body,
                                   headers=await bearer(db_client, admin))
    assert missing.status == 404


async def test_start_publish_and_stop_through_the_service(tmp_path: Path) -> None:
    """Integration: ``POST /api/streams/start``, a real WHIP publisher with the channel's
    key, the pending stream goes live with the title given; ``stop`` ends it and closes the
    WHIP session (the room goes offline, no new stream starts)."""
    async with Service(make_config(), community=CommunityConfig(data_dir=tmp_path)) as svc:
        key = await make_channel(svc.app, "carol")
        auth = {"Authorization": f"Bearer {await access_token(svc.app, 'carol')}"}
        lifecycle = lifecycle_of(svc.app)
        assert lifecycle is not None
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{svc.url}/api/streams/start", headers=auth,
                                 json={"title": "Live from the test", "category": "music"}) as response:
                assert response.status == 201
                started = await response.json()
            assert started["whip_url"] == f"{svc.url}/whip/carol"
            stream_id = started["stream"]["id"]
            pub = await whip_client.publish(started["whip_url"], key,
                                            [PatternVideoTrack(320, 180, 15), ToneAudioTrack()])
            try:
                await whip_client.wait_connected(pub.pc, timeout=20)

                async def status() -> str:
                    async with http.get(f"{svc.url}/api/streams/{stream_id}") as answer:
                        return str((await answer.json())["status"])

                await wait_for(lambda: _is(status(), "live"), 20, "the stream to go live")
                async with http.get(f"{svc.url}/api/streams/search", params={"q": "live test"}) as answer:
                    assert [s["id"] for s in (await answer.json())["streams"]] == [stream_id]
                async with http.post(f"{svc.url}/api/streams/{stream_id}/stop", headers=auth) as answer:
                    assert answer.status == 200
                    assert (await answer.json())["status"] == "ended"
                sessions = svc.app[SESSION_SERVICE]
                await wait_for(lambda: _empty(sessions.store.of_room("carol")), 10, "the WHIP session to close")
                await wait_for(lambda: not svc.app[ROOMS].ensure("carol").live, 20, "the room to go offline")
                await lifecycle.idle()
            finally:
                await pub.close()
        async with svc.community.db.session() as session:
            [stream] = (await session.execute(select(Stream))).scalars().all()
            stream_key = (await session.execute(select(StreamKey).where(
                StreamKey.key_hash == hashlib.sha256(key.encode()).hexdigest()))).scalar_one()
        assert (stream.id, stream.title, stream.ended_reason, stream.key_id) == (
            stream_id, "Live from the test", "stopped", stream_key.id)


async def _is(value: Any, expected: str) -> bool:
    return await value == expected


async def _empty(value: Any) -> bool:
    return not await value
