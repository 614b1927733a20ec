"""Per-stream analytics (:mod:`community.analytics`, ``GET /api/streams/{id}/analytics``).

* Through a real :class:`relaycast.service.Service`: a WHIP publisher, two WHEP viewers (a
  guest and a logged-in user), an LL-HLS player's beacons, chat through the chat service,
  follows — the samples, unique viewers, watch time, chat per minute, followers gained,
  QoE and ``/metrics``; who may read the report.
* On SQLite and PostgreSQL: the sampler's writes are idempotent per 10 s boundary (two
  instances sampling the same room count once), LL-HLS sessions leave with ``end`` or
  silence, chat minutes add up across instances.
* Ingest health: readings are stored every sample and shown as gauges.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from community import stream_sampler
from community.analytics import Analytics, analytics_of
from community.analytics_store import utc_boundary
from community.api.ingest import ingest_of_room
from community.app import Community
from community.beacons import Beacon
from community.config import CommunityConfig
from community.models import (
    Channel,
    ChatMinute,
    Follow,
    IngestSample,
    Stream,
    StreamViewer,
    User,
    ViewerSample,
)
from community.qoe_metrics import IngestCollector, QoeMetrics
from community.stream_sampler import SAMPLE_INTERVAL_S
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from signaling.app_keys import CHAT, ROOMS, SESSION_SERVICE
from signaling.chat import Sender
from tests.community.platform_app import bearer, community_of, make_user
from tests.polling import wait_for
from tests.services import access_token, make_channel, make_config

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
"""Sample boundaries of the tests (explicit, so the rounds are deterministic)."""


def beacon(session: str, channel: str, tier: str, event: str, **fields: Any) -> dict[str, Any]:
    return {"session": session, "channel": channel, "tier": tier, "event": event, **fields}


async def live_stream_id(community: Community, channel: str) -> str | None:
    async with community.db.session() as session:
        return (
            await session.execute(
                select(Stream.id)
                .join(Channel, Channel.id == Stream.channel_id)
                .where(Channel.name == channel, Stream.status == "live")
            )
        ).scalar_one_or_none()


async def user_id(community: Community, username: str) -> str:
    async with community.db.session() as session:
        return (
            await session.execute(select(User.id).where(User.username == username))
        ).scalar_one()


async def chat_total(community: Community, analytics: Analytics, stream_id: str) -> int:
    await analytics.chat.flush()
    async with community.db.session() as session:
        rows = (
            await session.execute(
                select(ChatMinute.messages).where(ChatMinute.stream_id == stream_id)
            )
        ).all()
    return sum(n for (n,) in rows)


async def test_stream_analytics_through_the_service(tmp_path: Path) -> None:
    async with Service(make_config(), community=CommunityConfig(data_dir=tmp_path)) as svc:
        app, community = svc.app, svc.community
        analytics = analytics_of(app)
        analytics.tasks["sampler"].cancel()  # the test drives the rounds at chosen boundaries
        key = await make_channel(app, "alice")
        await make_channel(app, "bob")
        await make_channel(app, "carol")
        bob_id = await user_id(community, "bob")
        async with community.db.transaction() as session:  # a follow from before the stream
            channel_id = (
                await session.execute(select(Channel.id).where(Channel.name == "alice"))
            ).scalar_one()
            session.add(
                Follow(
                    user_id=await user_id(community, "carol"),
                    channel_id=channel_id,
                    created_at=datetime.now(UTC) - timedelta(days=3),
                )
            )

        pub = await whip_client.publish(
            f"{svc.url}/whip/alice", key, [PatternVideoTrack(320, 180, 15), ToneAudioTrack()]
        )
        viewers: list[whip_client.WhipSession] = []
        try:
            await whip_client.wait_connected(pub.pc, timeout=20)
            stream_id = await wait_for(
                lambda: live_stream_id(community, "alice"), 20, "the stream to go live"
            )
            guest = await whip_client.view(f"{svc.url}/whep/alice")
            viewers.append(guest)
            viewers.append(
                await whip_client.view(
                    f"{svc.url}/whep/alice", token=await access_token(app, "bob")
                )
            )
            for viewer in viewers:
                await whip_client.wait_connected(viewer.pc, timeout=20)

            async def connected_viewers() -> bool:
                room = app[ROOMS].get("alice")
                sessions = await app[SESSION_SERVICE].store.of_room("alice")
                return (
                    room is not None
                    and room.viewers == 2
                    and sum(s.resource == "whep" and s.connected for s in sessions) == 2
                )

            await wait_for(connected_viewers, 20, "two connected WebRTC viewers")
            first = await analytics.sampler.sample(T0)
            assert first.streams == {stream_id: {"webrtc": 2, "llhls": 0}}
            assert first.ingest == 1  # the publisher's ingest health, from its SFU node

            # An LL-HLS player and the guest's WebRTC player report their QoE.
            async with aiohttp.ClientSession() as http:
                batch = [
                    beacon(
                        "hls-player-1",
                        "alice",
                        "llhls",
                        "join",
                        join_ms=900.0,
                        latency_ms=2600.0,
                        height=720,
                    ),
                    beacon(
                        "hls-player-1",
                        "alice",
                        "llhls",
                        "stall",
                        stalls=1,
                        stall_ms=1500.0,
                        latency_ms=3400.0,
                    ),
                    beacon(
                        "rtc-player-1", "alice", "webrtc", "join", join_ms=300.0, latency_ms=150.0
                    ),
                    beacon("rtc-player-1", "alice", "webrtc", "switch", switches=1, height=360),
                ]
                async with http.post(f"{svc.url}/api/beacons", json={"beacons": batch}) as response:
                    assert response.status == 202
                    assert await response.json() == {"accepted": 4}

            second = await analytics.sampler.sample(T0 + timedelta(seconds=10))
            assert second.streams == {stream_id: {"webrtc": 2, "llhls": 1}}
            again = await analytics.sampler.sample(
                T0 + timedelta(seconds=10)
            )  # the same boundary twice
            assert again.streams == second.streams

            await guest.close()
            viewers.remove(guest)
            await wait_for(lambda: app[ROOMS].get("alice").viewers == 1, 20, "the guest to leave")

            async def bitrate_measured() -> bool:  # the SFU's ~2 s window has filled
                reading = await ingest_of_room(app, "alice")
                return reading is not None and bool(reading["bitrate_bps"]) and bool(reading["fps"])

            await wait_for(bitrate_measured, 20, "the publisher's bitrate and frame rate")
            await analytics.sampler.sample(T0 + timedelta(seconds=20))

            # Chat through the chat service: its listener counts per minute.
            chat = app[CHAT]
            for text in ("hello", "gg", "nice stream"):
                await chat.submit(
                    "alice", Sender(f"api-{bob_id}", "bob", user_id=bob_id, via="api"), text
                )
            await wait_for(
                lambda: chat_total(community, analytics, stream_id), 10, "3 chat messages counted"
            )
            assert await chat_total(community, analytics, stream_id) == 3

            async with community.db.transaction() as session:  # two follows during the stream
                for name in ("bob", "carol"):
                    follower = await user_id(community, name)
                    if name == "carol":
                        await session.execute(
                            Follow.__table__.delete().where(Follow.user_id == follower)
                        )
                    session.add(Follow(user_id=follower, channel_id=channel_id))

            async with aiohttp.ClientSession() as http:
                owner = {"Authorization": f"Bearer {await access_token(app, 'alice')}"}
                async with http.get(
                    f"{svc.url}/api/streams/{stream_id}/analytics", headers=owner
                ) as response:
                    assert response.status == 200, await response.text()
                    report = await response.json()
                other = {"Authorization": f"Bearer {await access_token(app, 'bob')}"}
                async with http.get(
                    f"{svc.url}/api/streams/{stream_id}/analytics", headers=other
                ) as response:
                    assert response.status == 403
                async with http.get(f"{svc.url}/api/streams/{stream_id}/analytics") as response:
                    assert response.status == 401
                async with http.get(
                    f"{svc.url}/api/streams/nosuchstream/analytics", headers=owner
                ) as response:
                    assert response.status == 404
                    assert response.content_type == "application/problem+json"
                async with http.get(f"{svc.url}/metrics") as response:
                    metrics = await response.text()
        finally:
            for viewer in viewers:
                await viewer.close()
            await pub.close()

    assert report["stream_id"] == stream_id and report["status"] == "live"
    v = report["viewers"]
    assert [(s["webrtc"], s["llhls"]) for s in v["samples"]] == [(2, 0), (2, 1), (1, 1)]
    assert [s["at"] for s in v["samples"]] == [
        "2030-01-01T12:00:00Z",
        "2030-01-01T12:00:10Z",
        "2030-01-01T12:00:20Z",
    ]
    assert v["peak"] == 3
    # guest (2 samples), bob (3, as user:<id>), the LL-HLS player (2): 7 × 10 s.
    assert (v["unique"], v["watch_time_s"], v["average_watch_s"]) == (3, 70.0, 23.3)
    assert (
        report["chat"]["total"] == 3
        and sum(m["messages"] for m in report["chat"]["per_minute"]) == 3
    )
    assert report["followers_gained"] == 2
    ingest = report["ingest"]
    assert [s["at"] for s in ingest["samples"]] == [s["at"] for s in v["samples"]]
    assert ingest["latest"] == ingest["samples"][-1]
    latest = ingest["latest"]
    assert (latest["width"], latest["height"]) == (320, 180)  # from the VP8 key frame
    assert latest["bitrate_bps"] > 0 and latest["fps"] > 0
    assert 'relaycast_ingest_bitrate_bps{room="alice"}' in metrics
    llhls, webrtc = report["qoe"]["llhls"], report["qoe"]["webrtc"]
    assert llhls == {
        "sessions": 1,
        "join_ms": {"p50": 900.0, "p95": 900.0},
        "latency_ms": {"p50": 3000.0, "p95": 3000.0},
        "stalls": 1,
        "stall_s": 1.5,
        "switches": 0,
        "errors": 0,
    }
    assert (webrtc["sessions"], webrtc["join_ms"], webrtc["switches"], webrtc["stalls"]) == (
        1,
        {"p50": 300.0, "p95": 300.0},
        1,
        0,
    )
    assert 'relaycast_qoe_join_seconds_bucket{le="1.0",tier="llhls"} 1.0' in metrics
    assert 'relaycast_qoe_join_seconds_bucket{le="0.25",tier="webrtc"} 0.0' in metrics
    assert 'relaycast_qoe_stalls_total{tier="llhls"} 1.0' in metrics
    assert 'relaycast_qoe_stall_seconds_sum{tier="llhls"} 1.5' in metrics
    assert 'relaycast_qoe_latency_seconds_count{tier="llhls"} 2.0' in metrics


# ---------------------------------------------------------------------- both databases
async def start_live(community: Community, channel: str) -> str:
    async with community.db.transaction() as session:
        channel_id = (
            await session.execute(select(Channel.id).where(Channel.name == channel))
        ).scalar_one()
        stream = Stream(
            channel_id=channel_id,
            status="live",
            started_at=datetime.now(UTC) - timedelta(minutes=5),
        )
        session.add(stream)
        await session.flush()
        return stream.id


async def post(client: TestClient, *beacons: dict[str, Any]) -> None:
    response = await client.post("/api/beacons", json={"beacons": list(beacons)})
    assert response.status == 202, await response.text()
    await analytics_of(client.server.app).beacons.flush()  # as its writer does within 0.5 s


async def test_sampler_writes_are_idempotent_per_boundary(db_client: TestClient) -> None:
    """Two processes sampling the same stream at the same boundary (a node moving between
    instances) count it once; LL-HLS sessions leave with ``end``."""
    community = community_of(db_client)
    owner = await make_user(community, "dana")
    stream_id = await start_live(community, "dana")
    analytics = analytics_of(db_client.server.app)
    analytics.tasks["sampler"].cancel()
    other = Analytics(db_client.server.app, community.db)  # a second instance's analytics

    await post(
        db_client,
        beacon("viewer-aaaa", "dana", "llhls", "join", join_ms=1200.0),
        beacon("viewer-bbbb", "dana", "llhls", "heartbeat", latency_ms=2000.0),
    )
    for sampler in (analytics.sampler, other.sampler, analytics.sampler):
        round_ = await sampler.sample(T0)
        assert round_.streams == {stream_id: {"webrtc": 0, "llhls": 2}}
    await post(db_client, beacon("viewer-bbbb", "dana", "llhls", "end"))
    await other.sampler.sample(T0 + timedelta(seconds=10))
    await analytics.sampler.sample(T0 + timedelta(seconds=10))

    async with community.db.session() as session:
        samples = (
            await session.execute(
                select(ViewerSample.at, ViewerSample.llhls)
                .where(ViewerSample.stream_id == stream_id)
                .order_by(ViewerSample.at)
            )
        ).all()
        watched = dict(
            (
                await session.execute(
                    select(StreamViewer.viewer, StreamViewer.watch_s).where(
                        StreamViewer.stream_id == stream_id
                    )
                )
            ).all()
        )
    assert [(at, n) for at, n in samples] == [(T0, 2), (T0 + timedelta(seconds=10), 1)]
    assert watched == {
        "session:viewer-aaaa": 2 * SAMPLE_INTERVAL_S,
        "session:viewer-bbbb": SAMPLE_INTERVAL_S,
    }

    response = await db_client.get(
        f"/api/streams/{stream_id}/analytics", headers=await bearer(db_client, owner)
    )
    report = await response.json()
    assert report["viewers"]["unique"] == 2 and report["viewers"]["watch_time_s"] == 30.0
    assert report["qoe"]["llhls"]["sessions"] == 2


async def test_chat_minutes_add_up_across_instances(db_client: TestClient) -> None:
    community = community_of(db_client)
    await make_user(community, "erin")
    stream_id = await start_live(community, "erin")
    here = analytics_of(db_client.server.app).chat
    there = Analytics(db_client.server.app, community.db).chat
    minute = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    ts = int(minute.timestamp() * 1000)
    for counter, offsets in ((here, (0, 1_000, 59_999)), (there, (5_000, 60_000))):
        for offset in offsets:
            await counter.on_chat_event("erin", {"type": "chat", "ts": ts + offset, "text": "hi"})
        await counter.on_chat_event("erin", {"type": "delete", "ids": ["x"]})  # not a message
        await counter.on_chat_event("nobody", {"type": "chat", "ts": ts})  # no such channel
    assert await here.flush() == 3 and await there.flush() == 2
    async with community.db.session() as session:
        rows = (
            await session.execute(
                select(ChatMinute.minute, ChatMinute.messages)
                .where(ChatMinute.stream_id == stream_id)
                .order_by(ChatMinute.minute)
            )
        ).all()
    assert [(m, n) for m, n in rows] == [(minute, 4), (minute + timedelta(minutes=1), 1)]


async def test_followers_gained_counts_the_streams_time_only(db_client: TestClient) -> None:
    community = community_of(db_client)
    owner = await make_user(community, "fay")
    fans = [await make_user(community, f"fan{i}") for i in range(4)]
    started = datetime.now(UTC) - timedelta(hours=2)
    ended = datetime.now(UTC) - timedelta(hours=1)
    async with community.db.transaction() as session:
        channel_id = (
            await session.execute(select(Channel.id).where(Channel.name == "fay"))
        ).scalar_one()
        stream = Stream(channel_id=channel_id, status="ended", started_at=started, ended_at=ended)
        session.add(stream)
        for fan, at in zip(
            fans,
            (
                started - timedelta(minutes=1),
                started + timedelta(minutes=1),
                ended - timedelta(seconds=1),
                ended + timedelta(minutes=1),
            ),
            strict=True,
        ):
            session.add(Follow(user_id=fan.id, channel_id=channel_id, created_at=at))
        await session.flush()
        stream_id = stream.id
    response = await db_client.get(
        f"/api/streams/{stream_id}/analytics", headers=await bearer(db_client, owner)
    )
    assert response.status == 200
    report = await response.json()
    assert report["followers_gained"] == 2 and report["status"] == "ended"
    assert report["viewers"] == {
        "samples": [],
        "peak": 0,
        "unique": 0,
        "watch_time_s": 0.0,
        "average_watch_s": 0.0,
    }
    assert report["ingest"] == {"latest": None, "samples": []}


async def test_private_channel_report_is_hidden_from_others(platform_client: TestClient) -> None:
    community = community_of(platform_client)
    await make_user(community, "gus")
    admin = await make_user(community, "root", role="admin")
    stranger = await make_user(community, "hal")
    async with community.db.transaction() as session:
        channel = (await session.execute(select(Channel).where(Channel.name == "gus"))).scalar_one()
        channel.private = True
    stream_id = await start_live(community, "gus")
    url = f"/api/streams/{stream_id}/analytics"
    assert (
        await platform_client.get(url, headers=await bearer(platform_client, stranger))
    ).status == 404
    assert (
        await platform_client.get(url, headers=await bearer(platform_client, admin))
    ).status == 200


async def test_ingest_readings_are_stored_and_exposed(
    platform_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler stores the ingest reading every round, keyed by the round's boundary,
    and the gauges show the latest (the reading itself, from the SFU's ``stats`` RPC, is a
    stand-in here; the service test reads a real one).  The publisher session's ``advice``
    is live state, and its ``dropped_frames`` has no column: neither is stored nor in the
    analytics."""
    community = community_of(platform_client)
    owner = await make_user(community, "ivy")
    stream_id = await start_live(community, "ivy")
    reading = {
        "bitrate_bps": 2_500_000,
        "fps": 29.97,
        "width": 1280,
        "height": 720,
        "keyframe_interval_s": 2.0,
        "loss": 0.01,
        "rtt_ms": None,
        "jitter_ms": 4.5,
    }

    async def read(app: Any, rooms: Any) -> dict[str, dict[str, Any]]:
        return {room: {"at": datetime.now(UTC), **reading, "advice": "set bframes=0",  # read now
                       "dropped_frames": 7}
                for room in rooms}

    monkeypatch.setattr(stream_sampler, "ingest_of_rooms", read)
    analytics = analytics_of(platform_client.server.app)
    analytics.tasks["sampler"].cancel()
    await analytics.sampler.sample(T0)
    async with community.db.session() as session:
        [row] = (
            await session.execute(select(IngestSample).where(IngestSample.stream_id == stream_id))
        ).scalars()
    assert (row.at, row.bitrate_bps, row.fps, row.width, row.loss, row.rtt_ms, row.jitter_ms) == (
        T0,
        2_500_000,
        29.97,
        1280,
        0.01,
        None,
        4.5,
    )
    response = await platform_client.get(
        f"/api/streams/{stream_id}/analytics", headers=await bearer(platform_client, owner)
    )
    ingest = (await response.json())["ingest"]
    assert ingest["latest"] == {"at": "2030-01-01T12:00:00Z", **reading}
    assert len(ingest["samples"]) == 1

    registry = CollectorRegistry()
    registry.register(IngestCollector(lambda: analytics.sampler.ingest_latest))
    text = generate_latest(registry).decode()
    assert 'relaycast_ingest_bitrate_bps{room="ivy"} 2.5e+06' in text
    assert 'relaycast_ingest_jitter_seconds{room="ivy"} 0.0045' in text
    assert 'relaycast_ingest_loss_ratio{room="ivy"} 0.01' in text


def test_utc_boundary() -> None:
    assert utc_boundary(datetime(2030, 1, 1, 12, 0, 19, 999000, tzinfo=UTC), 10) == datetime(
        2030, 1, 1, 12, 0, 10, tzinfo=UTC
    )
    assert utc_boundary(datetime(2030, 1, 1, 12, 0, 59, tzinfo=UTC), 60) == datetime(
        2030, 1, 1, 12, 0, tzinfo=UTC
    )


def test_stall_metrics_count_each_stall_once() -> None:
    """Totals are cumulative per session: stalls are counted from the difference to the
    session's previous beacon; a restarted player (smaller totals) starts over; ``end``
    forgets the session."""
    metrics = QoeMetrics()
    registry = CollectorRegistry()
    metrics.register(registry)

    def send(session: str, event: str, stalls: int, stall_ms: float) -> None:
        metrics.observe(
            Beacon(
                session=session,
                channel="room",
                tier="llhls",
                event=event,
                stalls=stalls,
                stall_ms=stall_ms,
            )
        )

    send("session-a", "heartbeat", 0, 0)
    send("session-a", "stall", 1, 2000)  # one stall of 2 s
    send("session-a", "heartbeat", 1, 2000)  # nothing new
    send("session-a", "stall", 3, 3000)  # two more, 0.5 s each
    send("session-b", "stall", 1, 400)  # another session
    send("session-a", "end", 3, 3000)
    send("session-a", "stall", 1, 100)  # forgotten after "end": counted from zero

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"tier": "llhls"})

    assert value("relaycast_qoe_stalls_total") == 5
    assert value("relaycast_qoe_stall_seconds_count") == 5
    assert value("relaycast_qoe_stall_seconds_sum") == pytest.approx(2.0 + 0.5 + 0.5 + 0.4 + 0.1)
    assert (
        registry.get_sample_value(
            "relaycast_qoe_stall_seconds_bucket", {"tier": "llhls", "le": "0.5"}
        )
        == 4
    )
