"""``POST/GET /api/streams/{id}/chat`` through the platform app with the real chat service
(:class:`signaling.chat.ChatService` on a memory log) and the real chat store, on SQLite and
PostgreSQL: sending as the logged-in user, refusals as problem details, paginated history
without deleted messages, VOD offsets, and private channels closed to strangers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from community.app import COMMUNITY
from community.chat_store import chat_store_of
from community.config import CommunityConfig
from community.models import Channel, ChannelViewer, Stream, User
from relaycast.service import Service
from signaling.app_keys import CHAT
from signaling.chat import ChatPolicy, ChatService, MemoryChatLog, Sender, Verdict
from tests.community.platform_app import bearer, community_of, make_user, platform_app
from tests.services import access_token, make_channel


def chat_app(config: CommunityConfig) -> web.Application:
    """The platform app with a chat service, started and stopped with it."""
    app = platform_app(config)
    chat = ChatService(MemoryChatLog())
    app[CHAT] = chat

    async def start(app: web.Application) -> None:
        await chat.start()

    async def stop(app: web.Application) -> None:
        await chat.close()  # hands its queued events to the store before the store closes

    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)
    return app


@pytest.fixture
async def client(db_url: str, tmp_path: Path) -> AsyncIterator[TestClient]:
    client = TestClient(
        TestServer(chat_app(CommunityConfig(data_dir=tmp_path, database_url=db_url)))
    )
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def sqlite_client(tmp_path: Path) -> AsyncIterator[TestClient]:
    """:func:`client` on SQLite only (for what does not depend on the database)."""
    client = TestClient(TestServer(chat_app(CommunityConfig(data_dir=tmp_path))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def chat_of(client: TestClient) -> ChatService:
    return client.server.app[CHAT]


async def open_stream(
    client: TestClient, channel: str, *, status: str = "live", started_at: datetime | None = None
) -> str:
    async with community_of(client).db.transaction() as session:
        channel_id = (
            (await session.execute(Channel.__table__.select().where(Channel.name == channel)))
            .one()
            .id
        )
        stream = Stream(
            channel_id=channel_id,
            status=status,
            started_at=started_at
            if started_at is not None or status == "pending"
            else datetime.now(UTC),
        )
        if status == "ended":
            stream.ended_at = datetime.now(UTC)
        session.add(stream)
        await session.flush()
        return stream.id


async def call(
    client: TestClient,
    method: str,
    path: str,
    status: int,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    resp = await client.request(method, path, headers=headers or {}, **kwargs)
    assert resp.status == status, await resp.text()
    if status >= 400:
        assert resp.content_type == "application/problem+json"
    return await resp.json()


async def test_post_sends_as_the_user_and_history_has_it_at_once(client: TestClient) -> None:
    community = community_of(client)
    owner = await make_user(community, "caster")
    fan = await make_user(community, "fan")
    started = datetime.now(UTC) - timedelta(seconds=90)
    stream_id = await open_stream(client, "caster", started_at=started)
    heard: list[tuple[str, dict[str, Any]]] = []

    async def sink(room: str, event: dict[str, Any]) -> None:
        heard.append((room, event))

    chat_of(client).sinks.append(sink)

    sent = await call(
        client,
        "POST",
        f"/api/streams/{stream_id}/chat",
        201,
        await bearer(client, fan),
        json={"text": "  hi @Caster  "},
    )
    assert sent["text"] == "hi @Caster" and sent["mentions"] == ["caster"] and "type" not in sent
    assert sent["from"] == {"id": f"api-{fan.id}", "name": "fan", "role": "viewer", "user": fan.id}
    mine = await call(
        client,
        "POST",
        f"/api/streams/{stream_id}/chat",
        201,
        await bearer(client, owner),
        json={"text": "welcome"},
    )
    assert mine["from"]["role"] == "publisher" and mine["seq"] == sent["seq"] + 1
    assert [e["id"] for room, e in heard if room == "caster"] == [sent["id"], mine["id"]]

    page = await call(client, "GET", f"/api/streams/{stream_id}/chat", 200)  # anonymous, public
    assert page["next_before"] is None
    assert [(m["id"], m["seq"], m["ts"], m["text"]) for m in page["messages"]] == [
        (sent["id"], sent["seq"], sent["ts"], "hi @Caster"),
        (mine["id"], mine["seq"], mine["ts"], "welcome"),
    ]
    first = page["messages"][0]
    assert first["from"] == {"id": f"api-{fan.id}", "name": "fan", "role": "viewer", "user": fan.id}
    assert first["offset_ms"] == sent["ts"] - round(started.timestamp() * 1000)
    assert 89_000 <= first["offset_ms"] <= 120_000


async def test_guest_messages_have_no_user_and_pending_streams_no_offset(
    client: TestClient,
) -> None:
    await make_user(community_of(client), "caster")
    stream_id = await open_stream(client, "caster", status="pending")
    await chat_of(client).submit(
        "caster", Sender(id="sio-1", name="guest-42", via="socketio"), "hello"
    )
    [message] = (await call(client, "GET", f"/api/streams/{stream_id}/chat", 200))["messages"]
    assert message["from"] == {"id": "sio-1", "name": "guest-42", "role": "viewer"}
    assert message["offset_ms"] is None


async def test_history_pages_backwards_and_leaves_deleted_messages_out(client: TestClient) -> None:
    await make_user(community_of(client), "caster")
    stream_id = await open_stream(client, "caster")
    chat = chat_of(client)
    ids = []
    for i in range(120):  # ten messages per sender stays within each one's burst
        ids.append(
            (await chat.submit("caster", Sender(id=f"p{i // 10}", name=f"g{i // 10}"), f"m{i}"))[
                "id"
            ]
        )
    await chat.delete("caster", [ids[119], ids[50]])
    kept = [i for i in ids if i not in (ids[119], ids[50])]

    seen: list[str] = []
    before = None
    for _ in range(10):
        query = {"limit": "50"} | ({"before": before} if before else {})
        page = await call(client, "GET", f"/api/streams/{stream_id}/chat", 200, params=query)
        seen = [m["id"] for m in page["messages"]] + seen
        seqs = [m["seq"] for m in page["messages"]]
        assert seqs == sorted(seqs)
        before = page["next_before"]
        if before is None:
            break
    assert seen == kept

    await chat.clear("caster")
    assert (await call(client, "GET", f"/api/streams/{stream_id}/chat", 200))["messages"] == []


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"before": "a" * 33},
        {"before": "bad id"},
        {"other": "1"},
    ],
)
async def test_bad_history_queries_are_400(
    platform_client: TestClient, query: dict[str, str]
) -> None:
    await make_user(community_of(platform_client), "caster")
    stream_id = await open_stream(platform_client, "caster")
    await call(platform_client, "GET", f"/api/streams/{stream_id}/chat", 400, params=query)


async def test_unknown_before_is_400_and_unknown_stream_404(client: TestClient) -> None:
    await make_user(community_of(client), "caster")
    stream_id = await open_stream(client, "caster")
    await call(client, "GET", f"/api/streams/{stream_id}/chat", 400, params={"before": "0" * 32})
    await call(client, "GET", "/api/streams/nosuchstream/chat", 404)
    await call(client, "GET", "/api/streams/..%2F/chat", 404)


async def test_post_validation_and_refusals(client: TestClient) -> None:
    community = community_of(client)
    await make_user(community, "caster")
    fan = await make_user(community, "fan")
    auth = await bearer(client, fan)
    stream_id = await open_stream(client, "caster")
    path = f"/api/streams/{stream_id}/chat"
    await call(client, "POST", path, 401, json={"text": "hi"})
    for body in ({}, {"text": ""}, {"text": 5}, {"text": "x" * 4001}, {"text": "hi", "extra": 1}):
        await call(client, "POST", path, 422, auth, json=body)
    problem = await call(client, "POST", path, 422, auth, json={"text": "\u202e\u200f  "})
    assert problem["code"] == "bad_message"
    problem = await call(client, "POST", path, 422, auth, json={"text": "é" * 501})
    assert problem["code"] == "too_long"
    await call(
        client, "POST", path, 201, auth, json={"text": "👨‍👩‍👧" * 500}
    )  # 500 grapheme clusters

    statuses = []
    for i in range(12):
        resp = await client.post(path, headers=auth, json={"text": f"flood {i}"})
        statuses.append(resp.status)
        if resp.status == 429:
            problem = await resp.json()
            assert problem["code"] == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
    assert 429 in statuses and statuses[0] == 201


class Rules(ChatPolicy):
    """A policy that answers what the test sets (the moderation engine is tested elsewhere)."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.held: list[dict[str, Any]] = []

    async def check(self, room: str, sender: Sender, text: str) -> Verdict:
        return self.verdict

    async def hold(self, room: str, message: dict[str, Any], verdict: Verdict) -> None:
        self.held.append(message)


@pytest.mark.parametrize(
    ("verdict", "status", "retry_after"),
    [
        (Verdict("refuse", "timed_out", "timed out for 30 s", 30.0), 403, None),
        (Verdict("refuse", "banned", "banned"), 403, None),
        (Verdict("refuse", "blocked_term", "not allowed here"), 403, None),
        (Verdict("refuse", "slow_mode", "slow mode: 10 s", 7.2), 429, "8"),
        (Verdict("refuse", "followers_only", "follow for 10 minutes first"), 403, None),
    ],
)
async def test_policy_refusals_are_problems_with_their_code(
    sqlite_client: TestClient, verdict: Verdict, status: int, retry_after: str | None
) -> None:
    rules = Rules(verdict)
    chat_of(sqlite_client).policy = rules
    community = community_of(sqlite_client)
    await make_user(community, "caster")
    fan = await make_user(community, "fan")
    stream_id = await open_stream(sqlite_client, "caster")
    resp = await sqlite_client.post(
        f"/api/streams/{stream_id}/chat",
        headers=await bearer(sqlite_client, fan),
        json={"text": "hello"},
    )
    assert resp.status == status and resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == verdict.code and problem["detail"] == verdict.detail
    assert resp.headers.get("Retry-After") == retry_after
    if verdict.retry_after_s is not None:
        assert problem["retry_after"] == verdict.retry_after_s


async def test_a_held_message_is_202_and_not_in_history(client: TestClient) -> None:
    community = community_of(client)
    await make_user(community, "caster")
    fan = await make_user(community, "fan")
    stream_id = await open_stream(client, "caster")
    rules = Rules(Verdict("hold", "held", "held for review"))
    chat_of(client).policy = rules
    answer = await call(
        client,
        "POST",
        f"/api/streams/{stream_id}/chat",
        202,
        await bearer(client, fan),
        json={"text": "borderline"},
    )
    assert answer == {"held": True}
    assert [m["text"] for m in rules.held] == ["borderline"]
    assert (await call(client, "GET", f"/api/streams/{stream_id}/chat", 200))["messages"] == []


async def test_an_ended_stream_takes_no_messages_but_keeps_its_history(client: TestClient) -> None:
    community = community_of(client)
    await make_user(community, "caster")
    fan = await make_user(community, "fan")
    auth = await bearer(client, fan)
    stream_id = await open_stream(client, "caster")
    sent = await call(
        client, "POST", f"/api/streams/{stream_id}/chat", 201, auth, json={"text": "gg"}
    )
    store = chat_store_of(client.server.app)
    assert store is not None and await store.flush(10)
    async with community.db.transaction() as session:
        stream = await session.get(Stream, stream_id)
        assert stream is not None
        stream.status, stream.ended_at = "ended", datetime.now(UTC)
    problem = await call(
        client, "POST", f"/api/streams/{stream_id}/chat", 409, auth, json={"text": "late"}
    )
    assert "ended" in problem["detail"]
    page = await call(client, "GET", f"/api/streams/{stream_id}/chat", 200)
    assert [m["id"] for m in page["messages"]] == [sent["id"]]


async def test_private_channel_chat_is_closed_to_strangers(client: TestClient) -> None:
    community = community_of(client)
    owner = await make_user(community, "secret")
    friend = await make_user(community, "friend")
    stranger = await make_user(community, "stranger")
    admin = await make_user(community, "boss", role="admin")
    async with community.db.transaction() as session:
        channel = (
            await session.execute(Channel.__table__.select().where(Channel.name == "secret"))
        ).one()
        await session.execute(
            Channel.__table__.update().where(Channel.id == channel.id).values(private=True)
        )
        session.add(ChannelViewer(channel_id=channel.id, user_id=friend.id))
    stream_id = await open_stream(client, "secret")
    path = f"/api/streams/{stream_id}/chat"
    sent = await call(
        client, "POST", path, 201, await bearer(client, friend), json={"text": "just us"}
    )

    for headers in ({}, await bearer(client, stranger)):
        problem = await call(client, "GET", path, 404, headers)
        assert problem["detail"] == "no such stream"  # the same answer as an unknown stream
    await call(
        client, "POST", path, 404, await bearer(client, stranger), json={"text": "let me in"}
    )
    for user in (owner, friend, admin):
        page = await call(client, "GET", path, 200, await bearer(client, user))
        assert [m["id"] for m in page["messages"]] == [sent["id"]]


async def test_history_survives_a_restart(db_url: str, tmp_path: Path) -> None:
    config = CommunityConfig(data_dir=tmp_path, database_url=db_url)
    first = TestClient(TestServer(chat_app(config)))
    await first.start_server()
    try:
        user: User = await make_user(community_of(first), "caster")
        stream_id = await open_stream(first, "caster")
        auth = await bearer(first, user)
        sent = [
            (
                await call(
                    first,
                    "POST",
                    f"/api/streams/{stream_id}/chat",
                    201,
                    auth,
                    json={"text": f"line {i}"},
                )
            )["id"]
            for i in range(5)
        ]
    finally:
        await first.close()  # a clean stop: what the store holds is written

    second = TestClient(TestServer(chat_app(config)))
    await second.start_server()
    try:
        page = await call(second, "GET", f"/api/streams/{stream_id}/chat", 200)
        assert [m["id"] for m in page["messages"]] == sent
    finally:
        await second.close()


async def test_the_service_stores_every_path_in_one_history(service: Service) -> None:
    """The real service: its chat service (with the platform's moderation), the store it
    feeds, and the REST API agree on one order for REST and data-channel messages."""
    app = service.app
    await make_channel(app, "caster")
    await make_channel(app, "fan")
    async with app[COMMUNITY].db.transaction() as session:
        channel = await session.scalar(select(Channel).where(Channel.name == "caster"))
        assert channel is not None
        stream = Stream(channel_id=channel.id, status="pending")
        session.add(stream)
        await session.flush()
        stream_id = stream.id
    auth = {"Authorization": f"Bearer {await access_token(app, 'fan')}"}
    path = f"{service.url}/api/streams/{stream_id}/chat"
    async with aiohttp.ClientSession() as http:
        async with http.post(path, headers=auth, json={"text": "from the API"}) as resp:
            assert resp.status == 201, await resp.text()
            sent = await resp.json()
        relayed = await app[CHAT].submit(
            "caster", Sender(id="dc-1", name="guest-7"), "from a data channel"
        )
        async with http.get(path) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
    assert [(m["id"], m["seq"]) for m in page["messages"]] == [
        (sent["id"], sent["seq"]),
        (relayed["id"], relayed["seq"]),
    ]
    assert [m["id"] for m in await app[CHAT].history("caster")] == [sent["id"], relayed["id"]]
