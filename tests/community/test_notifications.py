"""Go-live notifications (community/notifications.py): one stored notification per follower
written in batches (SQLite and PostgreSQL), and the Socket.IO ``notification`` event on the
followers' pages — identified by their ``rc_access`` cookie — on one service, across two
services in Redis mode sharing one PostgreSQL, and after a real WHIP publish (with the
operator's webhooks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestClient
from sqlalchemy import event, func, insert, select, update

from community.app import COMMUNITY
from community.config import CommunityConfig
from community.models import Channel, ChannelViewer, Follow, Notification, User, new_id, utcnow
from community.notifications import KIND_LIVE, notifier_of
from community.tokens import tokens_of
from community.webhooks import new_secret
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from tests.community.platform_app import community_of, make_user
from tests.community.webhook_receiver import Receiver
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY, make_config

SECRET = "node-secret-for-notification-tests"
WEBHOOK_SECRET = new_secret()


def stream_started(channel: str, stream_id: str = "st1") -> dict[str, Any]:
    """A ``stream.started`` payload (the fields of ``stream_json`` the notification keeps)."""
    return {
        "id": stream_id,
        "channel": channel,
        "channel_display_name": channel.title(),
        "title": f"{channel} is live",
        "category": "music",
        "category_name": "Music",
        "started_at": utcnow().isoformat(),
        "viewers": 0,
    }


async def add_followers(app: Any, channel: str, count: int, prefix: str = "f") -> list[str]:
    """``count`` new users following ``channel`` (bulk-written). :returns: their ids."""
    community = app[COMMUNITY]
    ids = [new_id() for _ in range(count)]
    async with community.db.transaction() as session:
        channel_id = await session.scalar(select(Channel.id).where(Channel.name == channel))
        await session.execute(
            insert(User),
            [
                {
                    "id": uid,
                    "username": f"{prefix}{i:06d}",
                    "display_name": "",
                    "password_hash": "!",
                    "role": "viewer",
                    "bio": "",
                    "created_at": utcnow(),
                    "suspended_reason": "",
                }
                for i, uid in enumerate(ids)
            ],
        )
        await session.execute(
            insert(Follow),
            [{"user_id": uid, "channel_id": channel_id, "created_at": utcnow()} for uid in ids],
        )
    return ids


async def notified(app: Any) -> dict[str, int]:
    """User id → their stored go-live notifications."""
    async with app[COMMUNITY].db.session() as session:
        rows = await session.execute(
            select(Notification.user_id, func.count())
            .where(Notification.kind == KIND_LIVE)
            .group_by(Notification.user_id)
        )
        return {user_id: count for user_id, count in rows.all()}


async def go_live(app: Any, channel: str, stream_id: str = "st1") -> None:
    """Emit ``stream.started`` and wait until its fan-out finished."""
    notifier = notifier_of(app)
    await app[COMMUNITY].events.emit("stream.started", stream_started(channel, stream_id))
    await asyncio.gather(*list(notifier.tasks))


async def test_every_follower_is_notified_in_batches(db_client: TestClient) -> None:
    app = db_client.server.app
    community = community_of(db_client)
    await make_user(community, "bigchannel")
    await make_user(community, "quiet")
    followers = await add_followers(app, "bigchannel", 2500)
    bystanders = await add_followers(app, "quiet", 3, prefix="q")
    async with community.db.transaction() as session:  # a suspended follower is left out
        await session.execute(
            update(User).where(User.id == followers[7]).values(suspended_at=utcnow())
        )

    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(community.db.engine.sync_engine, "before_cursor_execute", record)
    try:
        await go_live(app, "bigchannel")
    finally:
        event.remove(community.db.engine.sync_engine, "before_cursor_execute", record)

    counts = await notified(app)
    assert set(counts) == set(followers) - {followers[7]}
    assert set(counts.values()) == {1}
    assert not set(bystanders) & set(counts)
    # 2,499 rows in batches of 1,000: a handful of statements, not one per follower.
    assert statements.count("INSERT") <= 6, statements
    assert len(statements) < 30, statements
    async with community.db.session() as session:
        row = (
            await session.scalars(select(Notification).where(Notification.user_id == followers[0]))
        ).one()
    assert row.payload["channel"] == "bigchannel" and row.payload["stream_id"] == "st1"
    assert (
        row.payload["title"] == "bigchannel is live" and row.payload["url"] == "/watch/bigchannel"
    )
    assert row.read_at is None


async def test_a_private_channel_notifies_only_followers_still_allowed(
    platform_client: TestClient,
) -> None:
    app = platform_client.server.app
    community = community_of(platform_client)
    await make_user(community, "hidden")
    allowed, revoked = await add_followers(app, "hidden", 2)
    async with community.db.transaction() as session:
        channel = (await session.scalars(select(Channel).where(Channel.name == "hidden"))).one()
        channel.private = True
        session.add(ChannelViewer(channel_id=channel.id, user_id=allowed))
    await go_live(app, "hidden")
    assert await notified(app) == {allowed: 1}
    assert revoked not in await notified(app)


async def test_unknown_channel_or_no_followers_writes_nothing(platform_client: TestClient) -> None:
    app = platform_client.server.app
    await make_user(community_of(platform_client), "lonely")
    await go_live(app, "lonely")
    await go_live(app, "no_such_channel")
    assert await notified(app) == {}


class Page:
    """A page's Socket.IO connection (optionally with the ``rc_access`` cookie) that records
    every ``notification`` event."""

    def __init__(self) -> None:
        self.http = aiohttp.ClientSession()
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

        def on_notification(data: dict[str, Any]) -> None:
            self.events.append(data)
            self.arrived.set()

        self.sio.on("notification", on_notification)

    async def connect(self, url: str, access_token: str | None = None, *, auth: Any = None) -> Page:
        """``access_token``: sent as the pages' ``rc_access`` cookie; ``auth``: the Socket.IO
        auth payload (``{"token": ...}`` from a client without cookies)."""
        headers = {"Cookie": f"rc_access={access_token}"} if access_token else {}
        await self.sio.connect(
            url, transports=["websocket"], headers=headers, auth=auth, wait_timeout=10
        )
        return self

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        await wait_for(
            lambda: len(self.events) >= count,
            10,
            lambda: f"{count} notifications ({self.events})",
            wake=self.arrived,
        )
        return self.events

    async def close(self) -> None:
        await self.sio.disconnect()
        await self.http.close()


@pytest.fixture
async def pages() -> AsyncIterator[list[Page]]:
    made: list[Page] = []
    yield made
    for page in made:
        await page.close()


async def open_page(
    pages: list[Page], url: str, access_token: str | None = None, *, auth: Any = None
) -> Page:
    page = Page()
    pages.append(page)
    return await page.connect(url, access_token, auth=auth)


async def access_token(app: Any, user: User) -> str:
    token, _ = await tokens_of(app).issue_access(user)
    return token


async def stored_for(app: Any, user: User) -> list[dict[str, Any]]:
    async with app[COMMUNITY].db.session() as session:
        rows = (
            await session.scalars(
                select(Notification)
                .where(Notification.user_id == user.id)
                .order_by(Notification.created_at)
            )
        ).all()
    return [{"id": r.id, "kind": r.kind, "payload": r.payload, "read_at": r.read_at} for r in rows]


async def test_online_followers_get_the_stored_notification(
    tmp_path: Path, pages: list[Page]
) -> None:
    async with Service(
        make_config(embedded_sfu=False), community=CommunityConfig(data_dir=tmp_path)
    ) as svc:
        app = svc.app
        community = app[COMMUNITY]
        await make_user(community, "caster")
        await make_user(community, "another")
        fan, stranger = await make_user(community, "fan"), await make_user(community, "stranger")
        async with community.db.transaction() as session:
            for user, channel in ((fan, "caster"), (stranger, "another")):
                channel_id = await session.scalar(select(Channel.id).where(Channel.name == channel))
                session.add(Follow(user_id=user.id, channel_id=channel_id))
        fan_token = await access_token(app, fan)
        # Two tabs of the fan.  (websocket only: a python-socketio polling client takes a
        # ping interval, 25 s, to disconnect; the cookie is read from the handshake either way.)
        fan_pages = [
            await open_page(pages, svc.url, fan_token),
            await open_page(pages, svc.url, fan_token),
        ]
        stranger_page = await open_page(pages, svc.url, await access_token(app, stranger))
        anonymous = await open_page(pages, svc.url)
        forged = await open_page(pages, svc.url, fan_token[:-4] + "AAAA")  # bad signature
        fan_pages.append(await open_page(pages, svc.url, auth={"token": fan_token}))  # no cookie

        await go_live(app, "caster")
        stored = await stored_for(app, fan)
        assert len(stored) == 1
        for page in fan_pages:
            [pushed] = await page.wait_for(1)
            assert {k: pushed[k] for k in ("id", "kind", "payload", "read_at")} == stored[0]
            assert pushed["created_at"].endswith("Z")
        # A marker: the stranger's own go-live arrives after anything sent to it before.
        await go_live(app, "another", "st2")
        [marker] = await stranger_page.wait_for(1)
        assert marker["payload"]["channel"] == "another"
        assert anonymous.events == [] and forged.events == []
        assert all(len(page.events) == 1 for page in fan_pages)


@pytest.fixture
async def cluster(
    redis_server: RedisServer, postgres_db: str, tmp_path: Path
) -> AsyncIterator[tuple[Service, Service]]:
    """Two signaling instances in Redis mode sharing one PostgreSQL database."""
    config = make_config(embedded_sfu=False, redis_url=redis_server.url, node_secret=SECRET)
    platform = CommunityConfig(data_dir=tmp_path, database_url=postgres_db)
    async with Service(config, community=platform) as a, Service(config, community=platform) as b:
        yield a, b


async def test_a_go_live_on_one_instance_reaches_pages_on_the_other_once(
    cluster: tuple[Service, Service], pages: list[Page]
) -> None:
    a, b = cluster
    await make_user(a.app[COMMUNITY], "caster")
    fan = await make_user(a.app[COMMUNITY], "fan")
    async with a.app[COMMUNITY].db.transaction() as session:
        channel_id = await session.scalar(select(Channel.id).where(Channel.name == "caster"))
        session.add(Follow(user_id=fan.id, channel_id=channel_id))
    # B verifies a token A issued: the signing keys are in the shared database.
    on_b = await open_page(pages, b.url, await access_token(a.app, fan))
    on_a = await open_page(pages, a.url, await access_token(b.app, fan))

    await go_live(a.app, "caster", "first")
    await go_live(a.app, "caster", "second")  # the marker: published after the first
    for page in (on_a, on_b):
        events = await page.wait_for(2)
        assert [e["payload"]["stream_id"] for e in events] == ["first", "second"]
    stored = await stored_for(b.app, fan)
    assert [s["id"] for s in stored] == [e["id"] for e in on_b.events]
    assert notifier_of(b.app).tasks == set()  # B's own notifier never ran: A fanned out


@pytest.mark.timeout(120)
async def test_a_real_publish_notifies_followers_and_operators(
    tmp_path: Path, pages: list[Page]
) -> None:
    """WHIP publish with the demo channel's key → the stream goes live (community.lifecycle)
    → the follower's page gets the notification and the operator's endpoint ``stream.started``;
    the publisher leaves → ``stream.ended``."""
    receiver = await Receiver(WEBHOOK_SECRET).start()
    platform = CommunityConfig(
        data_dir=tmp_path, webhook_urls=(receiver.url,), webhook_secret=WEBHOOK_SECRET
    )
    try:
        async with Service(make_config(), community=platform) as svc:
            community = svc.app[COMMUNITY]
            fan = await make_user(community, "fan")
            async with community.db.transaction() as session:
                demo = await session.scalar(select(Channel.id).where(Channel.name == "demo"))
                session.add(Follow(user_id=fan.id, channel_id=demo))
            page = await open_page(pages, svc.url, await access_token(svc.app, fan))
            publisher = await whip_client.publish(
                f"{svc.url}/whip/demo",
                STREAM_KEY,
                [PatternVideoTrack(320, 180, 15), ToneAudioTrack()],
            )
            try:
                await whip_client.wait_connected(publisher.pc, timeout=20)
                [pushed] = await page.wait_for(1)
                await wait_for(lambda: receiver.attempts, 20, "the stream.started webhook")
            finally:
                await publisher.close()
            await wait_for(lambda: len(receiver.attempts) >= 2, 20, "the stream.ended webhook")
    finally:
        await receiver.close()
    started, ended = receiver.attempts[:2]
    assert (started.body["type"], ended.body["type"]) == ("stream.started", "stream.ended")
    assert started.verified and ended.verified
    stream_id = started.body["data"]["id"]
    assert started.body["data"]["channel"] == "demo" and ended.body["data"]["id"] == stream_id
    assert pushed["kind"] == KIND_LIVE
    assert pushed["payload"]["stream_id"] == stream_id and pushed["payload"]["channel"] == "demo"
