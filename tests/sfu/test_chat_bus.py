"""Chat across SFU nodes through a real Redis (the ``redis_server`` fixture of
tests/conftest.py, 127.0.0.1): two nodes' ChatRooms for one room share sequence
numbers, order and history."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sfu.chat import ChatRoom, Identity
from sfu.chat_bus import RedisChatBus, room_keys
from tests.polling import WaitTimeout, wait_for


class FakeChannel:
    """A data channel that records what the SFU sent."""

    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, data: str) -> None:
        self.sent.append(json.loads(data))

    def chats(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "chat"]


@pytest.fixture
async def nodes(redis_server: Any) -> AsyncIterator[list[tuple[RedisChatBus, ChatRoom]]]:
    """Two nodes: each a bus + the room's ChatRoom, wired like Worker does."""
    out = []
    for _ in range(2):
        bus = RedisChatBus(redis_server.url, history=5, timeout=1.0)
        room = ChatRoom("demo", rate=1000, burst=1000, history=5, bus=bus)
        bus.on_message = lambda name, message, room=room: room.deliver(message)
        await bus.start()
        out.append((bus, room))
    yield out
    for bus, _ in out:
        await bus.close()


def member(name: str) -> Identity:
    return Identity(id=name, name=name, role="viewer")


async def test_messages_reach_every_node_in_one_sequence(nodes) -> None:
    (_, room_a), (_, room_b) = nodes
    alice, bob = FakeChannel(), FakeChannel()
    room_a.join(member("alice"), alice, {"live": True})
    room_b.join(member("bob"), bob, {"live": True})
    # Interleaved senders on both nodes: one room-wide order, the same on both nodes.
    for i in range(10):
        sender, name = (room_a, "alice") if i % 2 == 0 else (room_b, "bob")
        sender.receive(name, json.dumps({"type": "chat", "text": f"m{i}"}))
    await wait_for(
        lambda: len(alice.chats()) == 10 and len(bob.chats()) == 10,
        5,
        lambda: f"10 chats on both nodes (alice {len(alice.chats())}, bob {len(bob.chats())})",
        interval_s=0.01,
    )
    seqs_a = [m["seq"] for m in alice.chats()]
    assert seqs_a == sorted(seqs_a) == list(range(1, 11))
    assert [m["id"] for m in alice.chats()] == [m["id"] for m in bob.chats()]
    # Identity is stamped by the sending node, never taken from the client.
    assert {m["from"]["id"] for m in bob.chats()} == {"alice", "bob"}
    assert room_a.seq == room_b.seq == 10


async def test_newcomer_on_a_fresh_node_gets_the_history_from_redis(redis_server, nodes) -> None:
    (_, room_a), _ = nodes
    alice = FakeChannel()
    room_a.join(member("alice"), alice, {})
    for i in range(7):
        room_a.receive("alice", json.dumps({"type": "chat", "text": f"h{i}"}))
    await wait_for(lambda: len(alice.chats()) == 7, 5, "7 chats at alice", interval_s=0.01)
    # A node started after the messages were sent (nothing in its memory).
    bus = RedisChatBus(redis_server.url, history=5)
    await bus.start()
    try:
        late_room = ChatRoom("demo", history=5, bus=bus)
        carol = FakeChannel()
        late_room.join(member("carol"), carol, {})
        await wait_for(
            lambda: any(m["type"] == "history" for m in carol.sent),
            5,
            "the history at carol",
            interval_s=0.01,
        )
        history = next(m for m in carol.sent if m["type"] == "history")["messages"]
        assert [m["text"] for m in history] == ["h2", "h3", "h4", "h5", "h6"]  # bounded: last 5
        assert [m["seq"] for m in history] == [3, 4, 5, 6, 7]
    finally:
        await bus.close()
    # The stream is bounded in Redis too.
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.xlen(room_keys("demo")[1]) == 5
    finally:
        await client.aclose()


async def test_redis_outage_tells_the_sender_and_recovers(redis_server, nodes) -> None:
    (_, room_a), (_, room_b) = nodes
    alice, bob = FakeChannel(), FakeChannel()
    room_a.join(member("alice"), alice, {})
    room_b.join(member("bob"), bob, {})
    room_a.receive("alice", json.dumps({"type": "chat", "text": "before"}))
    await wait_for(lambda: len(bob.chats()) == 1, 5, "the first chat at bob", interval_s=0.01)

    redis_server.stop()
    room_a.receive("alice", json.dumps({"type": "chat", "text": "during"}))
    await wait_for(
        lambda: any(m["type"] == "error" for m in alice.sent),
        10,
        "the error answer to alice",
        interval_s=0.01,
    )
    error = next(m for m in alice.sent if m["type"] == "error")
    assert error["code"] == "unavailable"  # not silently lost: the sender is told

    redis_server.start()  # same port, empty (no persistence)
    # The subscribers reconnect with backoff; then chat flows again.  A message published
    # before bob's node has subscribed again is gone (Redis pub/sub keeps nothing): resend
    # until one arrives, giving each try up to 0.5 s.
    def after_delivered() -> bool:
        return any(m["text"] == "after" for m in bob.chats())

    async def send_after() -> bool:
        room_a.receive("alice", json.dumps({"type": "chat", "text": "after"}))
        with contextlib.suppress(WaitTimeout):
            await wait_for(after_delivered, 0.5, "one try", interval_s=0.01)
        return after_delivered()

    await wait_for(send_after, 20, "chat to flow again after Redis restarted")
    assert [m["text"] for m in bob.chats()][0] == "before"
