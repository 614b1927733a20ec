"""The pages' Socket.IO namespace (signaling/browser.py) against real services on 127.0.0.1:
join/leave acks, ``room`` pushes, the origin rule, and — in Redis mode with two instances —
one delivery per page whichever instance it is connected to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from conftest import make_config
from polling import wait_for
from redis_server import RedisServer

from relaycast.service import Service
from signaling import browser
from signaling.app_keys import NAMESPACE_KEY

SECRET = "node-secret-for-browser-tests"


class Page:
    """A page's Socket.IO client recording every ``room`` event."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[dict[str, Any]] = []
        self.sio.on("room", self.events.append)

    async def connect(self, svc: Service) -> Page:
        await self.sio.connect(svc.url, transports=["websocket"], wait_timeout=10)
        return self

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, timeout=5)

    async def close(self) -> None:
        await self.sio.disconnect()


@pytest.fixture
async def pages() -> AsyncIterator[list[Page]]:
    made: list[Page] = []
    yield made
    for page in made:
        await page.close()


async def page(pages: list[Page], svc: Service) -> Page:
    p = Page()
    pages.append(p)
    return await p.connect(svc)


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    async with Service(make_config(embedded_sfu=False)) as s:
        yield s


async def quiet(p: Page, seconds: float = 0.5) -> list[dict[str, Any]]:
    await asyncio.sleep(seconds)
    return p.events


# ---------------------------------------------------------------- one instance
async def test_join_acks_the_room_state(svc: Service, pages: list[Page]) -> None:
    p = await page(pages, svc)
    assert await p.call("join", {"room": "demo"}) == {"room": "demo", "live": False, "viewers": 0}
    assert await p.call("join", {"room": "nope"}) == {"error": "no such room"}
    assert "error" in await p.call("join", "demo")
    assert await p.call("leave") == {"left": "demo"}
    assert await p.call("leave") == {"left": None}


async def test_announce_reaches_joined_pages_only(svc: Service, pages: list[Page]) -> None:
    joined, other = await page(pages, svc), await page(pages, svc)
    await joined.call("join", {"room": "demo"})
    svc.app[browser.ROOMS].get("demo").viewers = 3  # type: ignore[union-attr]

    await browser.announce_room(svc.app, "demo", origin=False)
    assert await quiet(joined) == []

    await browser.announce_room(svc.app, "demo", origin=True)
    await wait_for(lambda: joined.events, 5, "the room event")
    event = joined.events[0]
    assert {k: event[k] for k in ("room", "live", "viewers")} == {"room": "demo", "live": False, "viewers": 3}
    assert isinstance(event["ts"], int) and event["ts"] > 1.6e12
    assert await quiet(other, 0.2) == []

    assert await joined.call("leave") == {"left": "demo"}
    await browser.announce_room(svc.app, "demo", origin=True)
    assert len(await quiet(joined)) == 1


async def test_joining_another_room_leaves_the_first(svc: Service, pages: list[Page]) -> None:
    svc.app[browser.ROOMS].create("second")
    p = await page(pages, svc)
    await p.call("join", {"room": "demo"})
    assert (await p.call("join", {"room": "second"}))["room"] == "second"
    await browser.announce_room(svc.app, "demo", origin=True)
    await browser.announce_room(svc.app, "second", origin=True)
    await wait_for(lambda: p.events, 5, "the room event")
    assert [e["room"] for e in await quiet(p)] == ["second"]


async def test_joins_are_rate_limited(svc: Service, pages: list[Page]) -> None:
    p = await page(pages, svc)
    replies = [await p.call("join", {"room": "demo"}) for _ in range(int(browser.JOIN_RATE) + 3)]
    refused = [r for r in replies if "error" in r]
    assert refused and refused[0]["error"] == "too many joins" and refused[0]["retry_after"] > 0
    await asyncio.sleep(refused[-1]["retry_after"] + 0.05)
    assert (await p.call("join", {"room": "demo"}))["room"] == "demo"


async def test_node_room_state_is_pushed(svc: Service, pages: list[Page]) -> None:
    """A node's room_state (a Socket.IO client on /sfu) reaches the joined page."""
    p = await page(pages, svc)
    await p.call("join", {"room": "demo"})
    node = await fake_node(svc, svc.config.node_secret)
    try:
        await node.emit("room_state", {"room": "demo", "live": True, "viewers": 2}, namespace="/sfu")
        await wait_for(lambda: p.events, 5, "the room event")
        assert {k: p.events[0][k] for k in ("live", "viewers")} == {"live": True, "viewers": 2}
    finally:
        await node.disconnect()
    await wait_for(lambda: len(p.events) == 2, 5, "node_lost to end the room")
    assert {k: p.events[1][k] for k in ("live", "viewers")} == {"live": False, "viewers": 0}


async def fake_node(svc: Service, secret: str) -> socketio.AsyncClient:
    node = socketio.AsyncClient(reconnection=False)
    await node.connect(svc.url, namespaces=["/sfu"], transports=["websocket"], wait_timeout=10,
                       auth={"node_id": "fake-node", "secret": secret})
    await node.emit("load", {"sessions": 0, "capacity": 10}, namespace="/sfu")
    await wait_for(lambda: svc.app[NAMESPACE_KEY].router.nodes, 5, "the node to register")
    return node


# ---------------------------------------------------------------- Redis mode
@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[tuple[Service, Service]]:
    config = make_config(embedded_sfu=False, redis_url=redis_server.url, node_secret=SECRET)
    async with Service(config) as a, Service(config) as b:
        yield a, b


async def test_redis_announce_on_a_reaches_b_once(cluster: tuple[Service, Service], pages: list[Page]) -> None:
    a, b = cluster
    on_a, on_b = await page(pages, a), await page(pages, b)
    for p in (on_a, on_b):
        assert (await p.call("join", {"room": "demo"}))["room"] == "demo"

    await browser.announce_room(b.app, "demo", origin=False)  # B got the event too: silent
    await browser.announce_room(a.app, "demo", origin=True)
    for p in (on_a, on_b):
        await wait_for(lambda p=p: p.events, 5, "the room event")
    assert len(await quiet(on_a)) == 1 and len(await quiet(on_b, 0.1)) == 1


async def test_redis_node_event_is_pushed_once_everywhere(
    cluster: tuple[Service, Service], pages: list[Page]
) -> None:
    """The node on A reports; both instances handle the event, pages on A and B get it once."""
    a, b = cluster
    on_a, on_b = await page(pages, a), await page(pages, b)
    for p in (on_a, on_b):
        await p.call("join", {"room": "demo"})
    node = await fake_node(a, SECRET)
    try:
        # One at a time: python-socketio runs each event handler in its own task, so the
        # states of a burst may be applied (and pushed) out of order.
        for viewers in (1, 2, 3):
            await node.emit("room_state", {"room": "demo", "live": True, "viewers": viewers}, namespace="/sfu")
            for p in (on_a, on_b):
                await wait_for(lambda p=p, n=viewers: len(p.events) >= n, 5, f"room event {viewers}")
        await asyncio.sleep(0.5)
        for p in (on_a, on_b):
            assert [e["viewers"] for e in p.events] == [1, 2, 3]
        assert (await on_b.call("join", {"room": "demo"}))["viewers"] == 3  # B's state, via Redis
    finally:
        await node.disconnect()
