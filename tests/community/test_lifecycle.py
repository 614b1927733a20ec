"""The stream lifecycle (:mod:`community.lifecycle`): pending → live → ended driven by room
states, on SQLite and PostgreSQL; exactly-once go-live across two instances; throttled
viewer writes; expiry and crash recovery; recordings; and one real WHIP publish through
:class:`relaycast.service.Service`."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from community.api.streams import load_stream_json
from community.app import Community
from community.config import CommunityConfig
from community.database import Database
from community.lifecycle import StreamLifecycle, lifecycle_of
from community.models import Channel, Stream, StreamKey, StreamTag, utcnow
from hls_bridge.vod import RecordingLibrary
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from signaling.rooms import RoomRegistry
from tests.community.platform_app import community_of, make_user, record_events
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config

pytestmark = pytest.mark.timeout(120)




async def streams_of(community: Community, channel: str) -> list[Stream]:
    async with community.db.session() as session:
        rows = await session.execute(select(Stream).join(Channel, Channel.id == Stream.channel_id)
                                     .where(Channel.name == channel).order_by(Stream.created_at))
        return list(rows.scalars())


async def add_pending(community: Community, channel: str, title: str, **fields: Any) -> str:
    async with community.db.transaction() as session:
        owner = (await session.execute(select(Channel).where(Channel.name == channel))).scalar_one()
        stream = Stream(channel_id=owner.id, title=title, status="pending", **fields)
        session.add(stream)
        await session.flush()
        return stream.id


async def test_pending_stream_goes_live_then_ends(db_client: TestClient) -> None:
    community = community_of(db_client)
    events = record_events(community)
    await make_user(community, "alice")
    pending = await add_pending(community, "alice", "Speedrun tonight", category="gaming", tags=["any%"])
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None

    lifecycle.room_changed("alice", True, 4)
    await lifecycle.idle()
    [stream] = await streams_of(community, "alice")
    assert (stream.id, stream.status, stream.viewers, stream.peak_viewers) == (pending, "live", 4, 4)
    assert stream.started_at is not None
    assert [e for e, _ in events] == ["stream.started"]
    payload = events[0][1]
    assert (payload["id"], payload["title"], payload["status"], payload["category_name"]) == (
        pending, "Speedrun tonight", "live", "Gaming")

    lifecycle.room_changed("alice", True, 4)  # the same state again: nothing new
    lifecycle.room_changed("alice", False, 0)
    await lifecycle.idle()
    [stream] = await streams_of(community, "alice")
    assert (stream.status, stream.ended_reason, stream.viewers, stream.peak_viewers) == (
        "ended", "publisher_left", 0, 4)
    assert stream.ended_at is not None and stream.ended_at >= stream.started_at
    assert [e for e, _ in events] == ["stream.started", "stream.ended"]
    assert events[1][1]["status"] == "ended"


async def test_publish_without_start_uses_channel_defaults(db_client: TestClient) -> None:
    community = community_of(db_client)
    events = record_events(community)
    await make_user(community, "obsuser")
    async with community.db.transaction() as session:
        channel = (await session.execute(select(Channel).where(Channel.name == "obsuser"))).scalar_one()
        channel.title, channel.category, channel.tags, channel.language = "Pixel art", "art", ["pixel", "chill"], "de"
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None
    lifecycle.room_changed("obsuser", True, 0)
    await lifecycle.idle()
    [stream] = await streams_of(community, "obsuser")
    assert (stream.title, stream.category, stream.tags, stream.language, stream.status) == (
        "Pixel art", "art", ["pixel", "chill"], "de", "live")
    async with community.db.session() as session:
        tags = set((await session.execute(select(StreamTag.tag).where(StreamTag.stream_id == stream.id))).scalars())
    assert tags == {"pixel", "chill"}
    assert [e for e, _ in events] == ["stream.started"]
    # A room that is not a channel (no such channel) is ignored.
    lifecycle.room_changed("nobody", True, 1)
    await lifecycle.idle()
    assert len(await streams_of(community, "obsuser")) == 1


async def test_viewer_writes_are_throttled(db_client: TestClient) -> None:
    community = community_of(db_client)
    await make_user(community, "bob")
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None
    lifecycle.viewers_interval_s = 0.3
    writes: list[tuple[str, int]] = []
    original = lifecycle.write_viewers

    async def counting(stream_id: str, viewers: int, peak: int = 0) -> bool:
        writes.append((stream_id, viewers))
        return await original(stream_id, viewers, peak)

    lifecycle.write_viewers = counting  # type: ignore[method-assign]
    lifecycle.room_changed("bob", True, 1)
    await lifecycle.idle()
    for viewers in [*range(2, 40), 12]:  # a burst of 39 changes, peak 39, ending at 12
        lifecycle.room_changed("bob", True, viewers)
        await asyncio.sleep(0)
    await lifecycle.idle()
    [stream] = await streams_of(community, "bob")
    assert (stream.viewers, stream.peak_viewers) == (12, 39)  # the peak survives coalescing
    assert len(writes) <= 3, writes  # coalesced: not one write per change
    assert writes[-1][1] == 12


async def test_peak_is_kept_across_writes(db_client: TestClient) -> None:
    community = community_of(db_client)
    await make_user(community, "carol")
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None
    lifecycle.room_changed("carol", True, 0)
    await lifecycle.idle()
    [stream] = await streams_of(community, "carol")
    assert await lifecycle.write_viewers(stream.id, 9)
    assert await lifecycle.write_viewers(stream.id, 3)
    [stream] = await streams_of(community, "carol")
    assert (stream.viewers, stream.peak_viewers) == (3, 9)


async def test_go_live_is_exactly_once_across_instances(db_client: TestClient, db_url: str) -> None:
    """Two signaling instances (each its own engine and event bus, one database) see the
    same room go live and end at the same moment: one stream, one ``stream.started``, one
    ``stream.ended`` — with and without a pending stream."""
    first = community_of(db_client)
    await make_user(first, "dave")
    await make_user(first, "erin")
    await add_pending(first, "erin", "Erin's pending stream")
    second = Community(CommunityConfig(database_url=db_url))
    second.db = await Database.open(db_url, migrate=False)
    try:
        lifecycles = [lifecycle_of(db_client.server.app),
                      StreamLifecycle(second, lambda stream_id: load_stream_json(second, stream_id))]
        events = [record_events(first), record_events(second)]
        for channel in ("dave", "erin"):
            ids = await asyncio.gather(*(lc.go_live(channel, 1) for lc in lifecycles if lc is not None))
            assert ids[0] == ids[1] is not None
            started = [e for seen in events for e, p in seen if e == "stream.started" and p["channel"] == channel]
            assert started == ["stream.started"]
            [stream] = await streams_of(first, channel)
            assert stream.status == "live" and stream.id == ids[0]

            ended = await asyncio.gather(*(lc.end_live(channel, "publisher_left")
                                           for lc in lifecycles if lc is not None))
            assert sorted(ended) == [False, True]
            stops = [e for seen in events for e, p in seen if e == "stream.ended" and p["channel"] == channel]
            assert stops == ["stream.ended"]
    finally:
        await second.db.close()


async def test_pending_expires_and_never_announces(db_client: TestClient) -> None:
    community = community_of(db_client)
    events = record_events(community)
    await make_user(community, "frank")
    old = await add_pending(community, "frank", "never went live", created_at=utcnow() - timedelta(hours=1))
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None
    assert await lifecycle.expire_pending() == 1
    [stream] = await streams_of(community, "frank")
    assert (stream.id, stream.status, stream.ended_reason, stream.started_at) == (old, "ended", "expired", None)
    assert events == []
    await add_pending(community, "frank", "fresh")  # a new one is allowed and not expired
    assert await lifecycle.expire_pending() == 0


async def test_recover_ends_streams_left_live(db_client: TestClient) -> None:
    """At start-up, live streams whose room is not live (a crashed process) end."""
    community = community_of(db_client)
    events = record_events(community)
    for name in ("gina", "hank"):
        await make_user(community, name)
    lifecycle = lifecycle_of(db_client.server.app)
    assert lifecycle is not None
    for name in ("gina", "hank"):
        await lifecycle.go_live(name)
    rooms = RoomRegistry()
    rooms.ensure("hank").live = True  # hank's room is still live somewhere
    restarted = StreamLifecycle(community, lambda stream_id: load_stream_json(community, stream_id), rooms=rooms)
    assert await restarted.recover() == 1
    assert [s.status for s in await streams_of(community, "gina")] == ["ended"]
    assert [s.ended_reason for s in await streams_of(community, "gina")] == ["interrupted"]
    assert [s.status for s in await streams_of(community, "hank")] == ["live"]
    assert [e for e, p in events if p["channel"] == "gina"] == ["stream.started", "stream.ended"]


def write_recording(root: Path, room: str, recording_id: str, started: str, ended: str) -> None:
    """A finished recording as :class:`hls_bridge.recording.Recorder` publishes it (the
    manifest is written last; only its presence makes the recording finished)."""
    directory = root / room / recording_id
    (directory / "v0").mkdir(parents=True)
    (directory / "recording.json").write_text(json.dumps({
        "version": 1, "room": room, "id": recording_id, "started": started, "ended": ended,
        "duration_s": 10.0, "bytes": 1000, "renditions": [{"name": "v0", "segments": 5, "duration_s": 10.0,
                                                            "bytes": 1000}], "truncated": False}))


async def test_recording_is_attached_when_published(db_client: TestClient, tmp_path: Path) -> None:
    community = community_of(db_client)
    events = record_events(community)
    await make_user(community, "ivan")
    library = RecordingLibrary(tmp_path / "rec", retention_s=3600)
    lifecycle = StreamLifecycle(community, lambda stream_id: load_stream_json(community, stream_id),
                                recordings=library, recording_wait_s=30)
    stream_id = await lifecycle.go_live("ivan")
    assert stream_id is not None
    [stream] = await streams_of(community, "ivan")
    assert stream.started_at is not None
    assert await lifecycle.end_live("ivan", "publisher_left")
    started = stream.started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # An older recording of the channel must not be taken for this stream.
    write_recording(tmp_path / "rec", "ivan", "20200101T000000Z-00000000", "2020-01-01T00:00:00Z",
                    "2020-01-01T00:10:00Z")
    write_recording(tmp_path / "rec", "ivan", "20991231T000000Z-0000abcd", started, started)
    await wait_for(lambda: any(e == "recording.ready" for e, _ in events), 20, "recording.ready")
    ready = next(p for e, p in events if e == "recording.ready")
    path = "ivan/20991231T000000Z-0000abcd/index.m3u8"
    assert ready == {"stream_id": stream_id, "channel": "ivan", "url": f"/vod/{path}"}
    [stream] = await streams_of(community, "ivan")
    assert stream.recording == path
    response = await db_client.get("/api/channels/ivan/videos")
    assert response.status == 200
    [video] = (await response.json())["videos"]
    assert video["stream_id"] == stream_id and video["url"].endswith(f"/vod/{path}")
    await lifecycle.close()


async def test_whip_publish_drives_the_stream(tmp_path: Path) -> None:
    """Integration: a real WHIP publisher on a channel with its stream key, through the
    service; the stream goes live with the key it used, is listed, and ends when the
    publisher leaves."""
    config = CommunityConfig(data_dir=tmp_path)
    async with Service(make_config(), community=config) as svc:
        community = svc.community
        events = record_events(community)
        lifecycle = lifecycle_of(svc.app)
        assert lifecycle is not None
        pub = await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY,
                                        [PatternVideoTrack(320, 180, 15), ToneAudioTrack()])
        try:
            await whip_client.wait_connected(pub.pc, timeout=20)
            await wait_for(lambda: any(e == "stream.started" for e, _ in events), 20, "stream.started")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{svc.url}/api/streams") as response:
                    listed = await response.json()
            assert [s["channel"] for s in listed["streams"]] == ["demo"]
            [stream] = await streams_of(community, "demo")
            async with community.db.session() as session:
                key = await session.get(StreamKey, stream.key_id)
            assert key is not None and key.revoked_at is None  # the demo channel's key
        finally:
            await pub.close()
        await wait_for(lambda: any(e == "stream.ended" for e, _ in events), 20, "stream.ended")
        [stream] = await streams_of(community, "demo")
        assert stream.status == "ended" and stream.ended_reason == "publisher_left"
