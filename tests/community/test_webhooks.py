"""Operator webhooks (community/webhooks.py) against a real aiohttp receiver on 127.0.0.1
that checks each Standard Webhooks signature with its own implementation: retries with
backoff, failure after the schedule or on 410, bounded timeouts, deliveries that survive a
restart (or an instance dying mid-attempt), one send per attempt with two instances on one
database (SQLite and PostgreSQL), and the admin delivery log."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from community.app import COMMUNITY
from community.config import CommunityConfig, CommunityConfigError
from community.database import Database
from community.models import WebhookDelivery
from community.tokens import tokens_of
from community.webhooks import WebhookSender, new_secret, secret_key, signature
from tests.community.platform_app import make_user, platform_app
from tests.community.webhook_receiver import Receiver
from tests.polling import wait_for
from tests.redis_server import free_port

SECRET = new_secret()
FAST = (0.05, 0.05, 0.05)
"""A retry schedule for tests (s)."""


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    made: list[Receiver] = []

    async def make(answer: Callable[[str, int], int | None] = lambda msg_id, n: 204) -> Receiver:
        receiver = Receiver(SECRET, answer)
        made.append(receiver)
        return await receiver.start()

    yield make
    for receiver in made:
        await receiver.close()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await Database.open(db_url)
    yield database
    await database.close()


@pytest.fixture
async def senders() -> AsyncIterator[Callable[..., WebhookSender]]:
    made: list[WebhookSender] = []

    def make(db: Database, urls: list[str], **kwargs: Any) -> WebhookSender:
        sender = WebhookSender(db, urls, SECRET, **{"schedule": FAST, "poll_s": 0.2, **kwargs})
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


async def delivery(db: Database, msg_id: str) -> WebhookDelivery:
    async with db.session() as session:
        row = await session.get(WebhookDelivery, msg_id)
    assert row is not None
    return row


async def settled(db: Database, msg_id: str, timeout_s: float = 10) -> WebhookDelivery:
    """The delivery once it is no longer pending."""

    async def done() -> WebhookDelivery | None:
        row = await delivery(db, msg_id)
        return row if row.status != "pending" else None

    return await wait_for(done, timeout_s, f"delivery {msg_id} to settle")


def test_signature_matches_the_specs_test_vector() -> None:
    """The example of the Standard Webhooks reference libraries' tests."""
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
    ],
)
def test_malformed_secrets_are_refused_at_install(secret: str, tmp_path: Path) -> None:
    config = CommunityConfig(
        data_dir=tmp_path, webhook_urls=("http://127.0.0.1:9/hook",), webhook_secret=secret
    )
    with pytest.raises(CommunityConfigError, match="RELAYCAST_WEBHOOK_SECRET"):
        platform_app(config)


async def test_a_failed_attempt_is_retried_with_the_same_id(
    db: Database, receivers: Any, senders: Any
) -> None:
    receiver = await receivers(lambda msg_id, n: 503 if n == 1 else 204)
    sender = senders(db, [receiver.url])
    await sender.start()
    [msg_id] = await sender.enqueue("stream.started", {"id": "s1", "channel": "caster"})
    row = await settled(db, msg_id)
    assert (row.status, row.attempts, row.last_status, row.last_error) == ("delivered", 2, 204, "")
    assert row.delivered_at is not None and row.next_attempt_at is None
    attempts = receiver.of(msg_id)
    assert [a.answered for a in attempts] == [503, 204]
    assert all(a.verified for a in attempts)
    body = attempts[1].body
    assert body["type"] == "stream.started" and body["data"] == {"id": "s1", "channel": "caster"}
    assert body["timestamp"].endswith("Z") and attempts[0].body == body


async def test_retries_end_in_failed_and_410_fails_at_once(
    db: Database, receivers: Any, senders: Any
) -> None:
    broken = await receivers(lambda msg_id, n: 500)
    gone = await receivers(lambda msg_id, n: 410)
    sender = senders(db, [broken.url, gone.url])
    await sender.start()
    to_broken, to_gone = await sender.enqueue("stream.ended", {"id": "s1"})
    row = await settled(db, to_broken)
    assert (row.status, row.attempts, row.last_status, row.last_error) == (
        "failed",
        4,
        500,
        "HTTP 500",
    )
    assert len(broken.of(to_broken)) == 1 + len(FAST)
    row = await settled(db, to_gone)
    assert (row.status, row.attempts, row.last_status) == ("failed", 1, 410)
    assert len(gone.of(to_gone)) == 1


async def test_an_endpoint_that_does_not_answer_times_out(
    db: Database, receivers: Any, senders: Any
) -> None:
    silent = await receivers(lambda msg_id, n: None)
    sender = senders(db, [silent.url], schedule=(), timeout_s=0.3, lease_s=5)
    await sender.start()
    [msg_id] = await sender.enqueue(
        "recording.ready", {"stream_id": "s1", "channel": "c", "url": "/vod/x"}
    )
    started = time.monotonic()
    row = await settled(db, msg_id)
    assert time.monotonic() - started < 5  # bounded by timeout_s, not the endpoint
    assert (row.status, row.last_status, row.last_error) == (
        "failed",
        None,
        "no answer within 0.3 s",
    )


async def test_a_restarted_sender_resumes_pending_deliveries(
    db_url: str, receivers: Any, senders: Any
) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: connection refused
    first_db = await Database.open(db_url)
    try:
        first = senders(first_db, [down], schedule=(60.0,))
        await first.start()
        [refused] = await first.enqueue("stream.started", {"id": "s1"})
        await wait_for(lambda: first.attempted.is_set(), 10, "the first attempt")
        row = await delivery(first_db, refused)
        assert (row.status, row.attempts, row.last_status) == ("pending", 1, None)
        assert "Connect" in row.last_error
        await first.close()  # the sender stops ...
        [unsent] = await first.enqueue(
            "stream.ended", {"id": "s1"}
        )  # ... an event is stored, unsent
        assert (await delivery(first_db, unsent)).attempts == 0
    finally:
        await first_db.close()

    # The endpoint is back at another address, the service restarts (a new engine on the
    # same database): every pending delivery is sent without a new event.
    receiver = await receivers()
    second_db = await Database.open(db_url)
    try:
        async with second_db.transaction() as session:  # the new address; the retry now due
            for row in (await session.scalars(select(WebhookDelivery))).all():
                row.url, row.next_attempt_at = receiver.url, row.created_at
        second = senders(second_db, [receiver.url])
        await second.start()
        for msg_id in (refused, unsent):
            assert (await settled(second_db, msg_id)).status == "delivered"
            assert [a.verified for a in receiver.of(msg_id)] == [True]
    finally:
        await second.close()
        await second_db.close()


async def test_an_attempt_abandoned_mid_flight_is_retried_after_its_lease(
    db: Database, receivers: Any, senders: Any
) -> None:
    receiver = await receivers()
    dying = senders(db, [receiver.url], lease_s=0.5, timeout_s=0.2)
    [msg_id] = await dying.enqueue("stream.started", {"id": "s1"})
    claimed = await dying._claim()  # claimed, then the instance dies before sending
    assert [d.id for d in claimed] == [msg_id]
    other = senders(db, [receiver.url])
    assert await other.send_due() == 0  # still leased to the dead instance
    await other.start()
    row = await settled(db, msg_id)
    assert (row.status, row.attempts) == ("delivered", 2)
    assert len(receiver.of(msg_id)) == 1


async def test_two_instances_send_each_attempt_once(
    db_url: str, receivers: Any, senders: Any
) -> None:
    receiver = await receivers()
    databases = [await Database.open(db_url), await Database.open(db_url)]
    try:
        a, b = (senders(database, [receiver.url]) for database in databases)
        ids = [i for n in range(20) for i in await a.enqueue("stream.started", {"n": n})]
        await asyncio.gather(a.start(), b.start())
        for msg_id in ids:
            assert (await settled(databases[0], msg_id)).status == "delivered"
        assert sorted(a.msg_id for a in receiver.attempts) == sorted(ids)  # each exactly once
    finally:
        for sender in (a, b):
            await sender.close()
        for database in databases:
            await database.close()


@pytest.fixture
async def hooked(tmp_path: Path, receivers: Any) -> AsyncIterator[tuple[TestClient, Receiver]]:
    """The platform app with ``RELAYCAST_WEBHOOK_URLS`` = a receiver."""
    receiver = await receivers()
    config = CommunityConfig(data_dir=tmp_path, webhook_urls=(receiver.url,), webhook_secret=SECRET)
    client = TestClient(TestServer(platform_app(config)))
    await client.start_server()
    yield client, receiver
    await client.close()


async def test_platform_events_are_sent_and_logged_for_admins(
    hooked: tuple[TestClient, Receiver],
) -> None:
    client, receiver = hooked
    app = client.server.app
    events = app[COMMUNITY].events
    await events.emit("stream.started", {"id": "s1", "channel": "caster", "title": "hello"})
    await events.emit(
        "key.revoked", {"channel": "caster", "key_id": "k", "key_hash": "h"}
    )  # not a webhook
    await events.emit("stream.ended", {"id": "s1", "channel": "caster"})
    await events.emit(
        "recording.ready", {"stream_id": "s1", "channel": "caster", "url": "/vod/caster/s1"}
    )
    await wait_for(
        lambda: len(receiver.attempts) >= 3, 10, lambda: f"3 webhooks ({receiver.attempts})"
    )
    assert [a.body["type"] for a in receiver.attempts] == [
        "stream.started",
        "stream.ended",
        "recording.ready",
    ]
    assert all(a.verified and a.answered == 204 for a in receiver.attempts)
    assert receiver.attempts[0].body["data"] == {"id": "s1", "channel": "caster", "title": "hello"}

    admin = await make_user(app[COMMUNITY], "boss", role="admin")
    viewer = await make_user(app[COMMUNITY], "viewer")
    tokens = tokens_of(app)
    as_admin = {"Authorization": f"Bearer {(await tokens.issue_access(admin))[0]}"}
    as_viewer = {"Authorization": f"Bearer {(await tokens.issue_access(viewer))[0]}"}

    async def log(**params: str) -> dict[str, Any]:
        resp = await client.get("/api/admin/webhooks/deliveries", headers=as_admin, params=params)
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]

    async def delivered() -> bool:
        return len((await log(status="delivered"))["deliveries"]) == 3

    await wait_for(delivered, 10, "3 delivered in the log")
    first = await log(limit="2")
    rest = await log(limit="2", cursor=first["next_cursor"])
    entries = first["deliveries"] + rest["deliveries"]
    assert rest["next_cursor"] is None
    assert [e["event"] for e in entries] == ["recording.ready", "stream.ended", "stream.started"]
    assert [e["id"] for e in reversed(entries)] == [a.msg_id for a in receiver.attempts]
    assert all(
        e["url"] == receiver.url and e["attempts"] == 1 and e["last_status"] == 204 for e in entries
    )
    assert entries[2]["payload"]["data"]["title"] == "hello"
    assert (await log(status="failed"))["deliveries"] == []

    resp = await client.get("/api/admin/webhooks/deliveries", headers=as_viewer)
    assert resp.status == 403 and resp.content_type == "application/problem+json"
    resp = await client.get("/api/admin/webhooks/deliveries")
    assert resp.status == 401
    for params in ({"status": "lost"}, {"limit": "500"}, {"cursor": "nope"}):
        resp = await client.get("/api/admin/webhooks/deliveries", headers=as_admin, params=params)
        assert resp.status == 400, params


async def test_without_endpoints_nothing_is_written(platform_client: TestClient) -> None:
    app = platform_client.server.app
    await app[COMMUNITY].events.emit("stream.started", {"id": "s1", "channel": "caster"})
    async with app[COMMUNITY].db.session() as session:
        assert (await session.scalars(select(WebhookDelivery))).all() == []
    assert "webhooks" not in app[COMMUNITY].services
