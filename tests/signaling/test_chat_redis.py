"""Chat across signaling instances through a real Redis (the ``redis_server`` fixture of
tests/conftest.py, 127.0.0.1): two ChatServices with RedisChatLogs share one sequence,
one order, the history and moderation events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from signaling.chat import ChatRefused, ChatService, Sender
from signaling.chat_redis import RedisChatLog, room_keys
from tests.polling import WaitTimeout, wait_for


class Pages:
    """A sink: what one instance delivered to its local pages and nodes."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, room: str, event: dict[str, Any]) -> None:
        self.events.append(event)

    def chats(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "chat"]


@pytest.fixture
async def instances(redis_server: Any) -> AsyncIterator[list[tuple[ChatService, Pages]]]:
    out = []
    for _ in range(2):
        service = ChatService(RedisChatLog(redis_server.url, history=5, timeout=1.0),
                              rate=1000, burst=1000, history=5)
        pages = Pages()
        service.sinks.append(pages)
        await service.start()
        out.append((service, pages))
    yield out
    for service, _ in out:
        await service.close()


def sender(name: str) -> Sender:
    return Sender(name, name, user_id=f"u-{name}")


async def test_interleaved_senders_on_two_instances_get_one_sequence(instances) -> None:
    (a, pages_a), (b, pages_b) = instances
    for i in range(10):
        await (a if i % 2 == 0 else b).submit("demo", sender("alice" if i % 2 == 0 else "bob"), f"m{i}")
    await wait_for(lambda: len(pages_a.chats()) == 10 and len(pages_b.chats()) == 10, 5,
                   "10 chats delivered on both instances", interval_s=0.01)
    assert [m["seq"] for m in pages_a.chats()] == list(range(1, 11))
    assert [m["id"] for m in pages_a.chats()] == [m["id"] for m in pages_b.chats()]
    assert [m["text"] for m in pages_b.chats()] == [f"m{i}" for i in range(10)]
    assert pages_b.chats()[0]["from"] == {"id": "alice", "name": "alice", "role": "viewer", "user": "u-alice"}


async def test_history_is_bounded_shared_and_honours_delete_and_clear(redis_server, instances) -> None:
    (a, _), (b, pages_b) = instances
    ids = [(await a.submit("demo", sender("alice"), f"h{i}"))["id"] for i in range(7)]
    assert [m["text"] for m in await b.history("demo")] == ["h2", "h3", "h4", "h5", "h6"]
    assert [m["seq"] for m in await b.history("demo")] == [3, 4, 5, 6, 7]
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.xlen(room_keys("demo")[1]) == 5
        assert 0 < await client.ttl(room_keys("demo")[0]) <= 86_400
    finally:
        await client.aclose()
    await b.delete("demo", [ids[3], ids[5]])
    assert [m["text"] for m in await a.history("demo")] == ["h2", "h4", "h6"]
    await a.clear("demo")
    assert await b.history("demo") == []
    await wait_for(lambda: [e["type"] for e in pages_b.events][-2:] == ["delete", "clear"], 5,
                   "delete and clear delivered to the other instance", interval_s=0.01)
    assert pages_b.events[-2] == {"type": "delete", "ids": [ids[3], ids[5]]}


async def test_redis_outage_is_told_to_the_sender_and_chat_recovers(redis_server, instances) -> None:
    (a, _), (b, pages_b) = instances
    await a.submit("demo", sender("alice"), "before")
    await wait_for(lambda: len(pages_b.chats()) == 1, 5, "the first chat at b", interval_s=0.01)

    redis_server.stop()
    with pytest.raises(ChatRefused) as refused:
        await a.submit("demo", sender("alice"), "during")
    assert refused.value.code == "unavailable"  # not silently lost: the sender is told

    redis_server.start()  # same port, empty (no persistence)

    # The subscribers reconnect with backoff; a message published before b subscribed
    # again is gone (pub/sub keeps nothing): resend until one arrives, 0.5 s per try.
    def delivered() -> bool:
        return any(m["text"] == "after" for m in pages_b.chats())

    async def send_after() -> bool:
        with contextlib.suppress(ChatRefused):
            await a.submit("demo", sender("alice"), "after")
        with contextlib.suppress(WaitTimeout):
            await wait_for(delivered, 0.5, "one try", interval_s=0.01)
        return delivered()

    await wait_for(send_after, 20, "chat to flow again after Redis restarted")
    assert pages_b.chats()[0]["text"] == "before"
