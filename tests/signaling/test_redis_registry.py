"""`RedisNodeRegistry` against a real redis-server: registration, heartbeats and their
expiry (no key outlives its TTL), least-loaded and pluggable placement, sticky rooms
shared by several instances, release, and bounded failure when Redis is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.config import ConfigError
from signaling.config import SignalingConfig
from signaling.nodes import NodeIdInUse, NoNodeAvailable, RegistryUnavailable, SfuNode
from signaling.redis_state import RedisNodeRegistry
from tests.polling import wait_for
from tests.redis_server import RedisServer, free_port

TTL = 1.0  # short TTLs keep these tests quick; production uses 4 s


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


PUMPS: dict[int, asyncio.Task[None]] = {}


async def _keep_reporting(router: RedisNodeRegistry) -> None:
    """What the nodes connected to ``router`` do: a load report every 200 ms."""
    while True:
        await asyncio.sleep(0.2)
        for node in list(router._local.values()):
            await router.heartbeat(node.sid, dict(node.load))


@pytest.fixture
async def make_router(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """``await make_router(pump=True, **kwargs)`` → a started router on the test Redis whose
    registered nodes keep reporting (``pump``); closed after the test."""
    routers: list[RedisNodeRegistry] = []

    async def make(pump: bool = True, **kwargs: Any) -> RedisNodeRegistry:
        kwargs.setdefault("ttl", TTL)
        router = RedisNodeRegistry(redis_server.url, **kwargs)
        routers.append(router)
        await router.start()
        if pump:
            PUMPS[id(router)] = asyncio.create_task(_keep_reporting(router))
        return router

    yield make
    for router in routers:
        await _stop_pump(router)
        await router.close()


async def _stop_pump(router: RedisNodeRegistry) -> None:
    task = PUMPS.pop(id(router), None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def crash(router: RedisNodeRegistry) -> None:
    """Stop a router as a killed process would: no cleanup in Redis."""
    await _stop_pump(router)
    for task in router._tasks:
        task.cancel()
    await asyncio.gather(*router._tasks, return_exceptions=True)
    router._tasks = []
    await router.redis.aclose()


def load(sessions: int, capacity: int = 10, draining: bool = False) -> dict[str, Any]:
    return {"sessions": sessions, "capacity": capacity, "draining": draining}


async def add_node(router: RedisNodeRegistry, node_id: str, sessions: int = 0, **kw: Any) -> SfuNode:
    node = SfuNode(sid=f"sid-{node_id}", node_id=node_id)
    await router.register(node)
    await router.heartbeat(node.sid, load(sessions, **kw))
    return node


async def relaycast_keys(redis: aioredis.Redis) -> list[str]:
    return sorted([key async for key in redis.scan_iter("relaycast:*")])


# ------------------------------------------------------------------ heartbeats
async def test_heartbeat_keys_have_ttls_and_nothing_outlives_them(make_router, redis) -> None:
    router = await make_router()
    node = await add_node(router, "n1", sessions=2)
    assert (await router.node_for_room("r1")).node_id == "n1"
    await router.update_room(node, "r1", {"live": True, "viewers": 3})

    keys = await relaycast_keys(redis)
    assert keys == sorted([
        "relaycast:node:n1", "relaycast:node:n1:rooms", "relaycast:nodes", "relaycast:room:r1",
        f"relaycast:instance:{router.instance}",
    ])
    for key in keys:
        assert 0 < await redis.pttl(key) <= TTL * 1000, key
    assert await redis.hgetall("relaycast:room:r1") == {
        "node": "n1", "live": "1", "viewers": "3", "updated": await redis.hget("relaycast:room:r1", "updated")}
    assert await redis.hget("relaycast:node:n1", "sessions") == "2"

    await crash(router)  # nobody refreshes anything any more
    crashed = time.monotonic()
    await wait_for(lambda: _empty(redis), TTL * 4, "every relaycast key to expire")
    print(f"all keys gone {time.monotonic() - crashed:.2f} s after the crash (TTL {TTL} s)")


async def _empty(redis: aioredis.Redis) -> bool:
    return not await relaycast_keys(redis)


async def test_expired_node_is_released_by_another_instance(make_router, redis) -> None:
    a, b = await make_router(), await make_router()
    lost: list[tuple[str, str]] = []
    b.listener = lambda event, node, data: lost.append((event, node.node_id))
    node = await add_node(a, "n1")
    await a.node_for_room("r1")
    await a.update_room(node, "r1", {"live": True, "viewers": 0})
    await wait_for(lambda: any(n.node_id == "n1" for n in b.nodes.values()), 5, "b to see n1")

    await crash(a)  # a's process dies with its node connection: only the TTL tells
    started = time.monotonic()
    await wait_for(lambda: ("node_lost", "n1") in lost, TTL * 5, "b to declare n1 lost")
    print(f"node lost noticed {time.monotonic() - started:.2f} s after its last heartbeat (TTL {TTL} s)")
    assert not any(n.node_id == "n1" for n in b.nodes.values())
    assert not await redis.exists("relaycast:room:r1", "relaycast:node:n1", "relaycast:node:n1:rooms")
    with pytest.raises(NoNodeAvailable):
        await b.node_for_room("r1")
    # Only b's own instance key is left, refreshed while b runs.
    await wait_for(lambda: _only(redis, [f"relaycast:instance:{b.instance}"]), TTL * 4, "stale keys to go")


async def _only(redis: aioredis.Redis, expected: list[str]) -> bool:
    return await relaycast_keys(redis) == expected


async def test_local_node_that_stops_reporting_is_dropped(make_router, redis) -> None:
    router = await make_router(pump=False)
    events: list[str] = []
    dropped: list[str] = []
    router.listener = lambda event, node, data: events.append(f"{event}:{node.node_id}")

    async def disconnect(sid: str) -> None:
        dropped.append(sid)

    router.disconnect = disconnect
    node = await add_node(router, "n1")
    await router.node_for_room("r1")
    started = time.monotonic()
    await wait_for(lambda: events == ["node_lost:n1"], TTL * 4, "the silent node to be dropped")
    print(f"silent local node dropped after {time.monotonic() - started:.2f} s (TTL {TTL} s)")
    assert dropped == [node.sid]
    assert not await redis.exists("relaycast:node:n1", "relaycast:room:r1")


async def test_disconnect_releases_rooms_but_not_after_a_takeover(make_router, redis) -> None:
    a, b = await make_router(), await make_router()
    node = await add_node(a, "n1")
    await a.node_for_room("r1")
    assert await a.unregister(node.sid) is node
    assert not await redis.exists("relaycast:node:n1", "relaycast:room:r1", "relaycast:node:n1:rooms")
    assert await redis.zscore("relaycast:nodes", "n1") is None

    # The node reconnects through b while a has not noticed its old connection dropping.
    node = await add_node(a, "n2")
    await a.node_for_room("r2")
    with pytest.raises(NodeIdInUse):  # a still holds that connection: a duplicate id
        await b.register(SfuNode(sid="other-sid", node_id="n2"))
    await a.close()  # a shuts down: its node will reconnect elsewhere, nothing is released
    assert await a.unregister(node.sid) is None
    assert await redis.hget("relaycast:room:r2", "node") == "n2"
    moved = SfuNode(sid="new-sid", node_id="n2")
    await b.register(moved)  # a's instance key is gone: takeover
    assert (await b.node_for_room("r2")).sid == "new-sid"
    assert await b.unregister("stale-sid") is None


# ------------------------------------------------------------------ placement
async def test_least_loaded_placement_skips_full_draining_and_expired(make_router) -> None:
    a = await make_router()
    await add_node(a, "busy", sessions=8)
    await add_node(a, "light", sessions=3)
    await add_node(a, "draining", sessions=0, draining=True)
    await add_node(a, "full", sessions=10)
    big = SfuNode(sid="sid-big", node_id="big")
    await a.register(big)
    await a.heartbeat(big.sid, load(30, capacity=100))  # 30 % like 'light', but more sessions
    assert (await a.node_for_room("r1")).node_id == "light"

    crashed = await make_router()
    await add_node(crashed, "idle-but-dead", sessions=0)
    assert (await a.node_for_room("r2")).node_id == "idle-but-dead"  # alive for now
    await crash(crashed)
    await wait_for(lambda: _missing(a, "idle-but-dead"), TTL * 4, "the dead node's hash to expire")
    assert (await a.node_for_room("r3")).node_id == "light"
    # r2 was on the dead node: placed again, on a live one.
    assert (await a.node_for_room("r2")).node_id == "light"


async def _missing(router: RedisNodeRegistry, node_id: str) -> bool:
    return not await router.redis.exists(router.k_node(node_id))


async def test_rooms_are_sticky_across_instances_and_races(make_router) -> None:
    a, b = await make_router(), await make_router()
    await add_node(a, "n1", sessions=1)
    await add_node(b, "n2", sessions=1)
    first = await b.node_for_room("shared")
    # Loads change; the room stays where it is, whichever instance asks.
    await a.heartbeat("sid-n1", load(0 if first.node_id == "n2" else 9))
    await b.heartbeat("sid-n2", load(0 if first.node_id == "n1" else 9))
    for router in (a, b, a):
        assert (await router.node_for_room("shared")).node_id == first.node_id

    # Many concurrent first placements of new rooms from both instances agree.
    rooms = [f"race{i}" for i in range(10)]
    results = await asyncio.gather(*(r.node_for_room(room) for room in rooms for r in (a, b)))
    by_room: dict[str, set[str]] = {}
    for i, node in enumerate(results):
        by_room.setdefault(rooms[i // 2], set()).add(node.node_id)
    assert all(len(ids) == 1 for ids in by_room.values()), by_room


async def test_placement_strategy_is_pluggable(make_router) -> None:
    seen: list[tuple[str, list[str]]] = []

    def most_loaded(room: str, candidates):  # type: ignore[no-untyped-def]
        seen.append((room, sorted(n.node_id for n in candidates)))
        return max(candidates, key=lambda n: n.sessions)

    a = await make_router(placement=most_loaded)
    await add_node(a, "n1", sessions=1)
    await add_node(a, "n2", sessions=7)
    await add_node(a, "n3", sessions=0, draining=True)
    assert (await a.node_for_room("r1")).node_id == "n2"
    assert seen == [("r1", ["n1", "n2"])]  # only available nodes are offered
    await a.node_for_room("r1")
    assert len(seen) == 1  # sticky: the strategy is not asked again


async def test_release_and_room_state(make_router, redis) -> None:
    a = await make_router()
    n1 = await add_node(a, "n1")
    n2 = await add_node(a, "n2", sessions=5)
    assert (await a.node_for_room("r1")).node_id == "n1"
    await a.update_room(n1, "r1", {"live": True, "viewers": 2})
    assert await a.room_state("r1") == {"node": "n1", "live": True, "viewers": 2}

    await a.release_room("r1", n2)  # not its node: nothing happens
    assert (await a.room_state("r1") or {}).get("node") == "n1"
    await a.update_room(n2, "r1", {"live": True, "viewers": 1})  # n2 cannot take a room n1 (alive) holds
    assert (await a.room_state("r1") or {}).get("node") == "n1"
    await a.update_room(n1, "r1", {"live": False, "viewers": 1})  # viewers waiting for the publisher: kept
    assert await a.room_state("r1") == {"node": "n1", "live": False, "viewers": 1}
    await a.update_room(n1, "r1", {"live": False, "viewers": 0})  # idle: released
    assert await a.room_state("r1") is None
    assert not await redis.sismember("relaycast:node:n1:rooms", "r1")

    await a.node_for_room("r2")
    await a.release_room("r2")  # unconditional
    assert await a.room_state("r2") is None


async def test_heartbeat_reasserts_rooms_after_redis_loses_everything(make_router, redis) -> None:
    a = await make_router()
    node = await add_node(a, "n1")
    await a.node_for_room("live-room")
    await redis.flushall()  # what a restarted redis-server without persistence looks like
    await a.heartbeat(node.sid, {**load(2), "room_states": {"live-room": {"live": True, "viewers": 1},
                                                            "idle": {"live": False, "viewers": 0}}})
    assert await a.room_state("live-room") == {"node": "n1", "live": True, "viewers": 1}
    assert await a.room_state("idle") is None
    assert (await a.node_for_room("live-room")).node_id == "n1"


async def test_events_reach_the_other_instances(make_router) -> None:
    a, b = await make_router(), await make_router()
    got: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
    b.listener = lambda event, node, data: got.put_nowait((event, node.sid, data))
    a.listener = lambda event, node, data: pytest.fail("an instance hears its own events")
    await wait_for(lambda: a._subscribed and b._subscribed, 5, "the event bus")
    node = await add_node(a, "n1")
    await a.broadcast("session_closed", node, {"session_id": "s1", "room": "r"})
    assert await asyncio.wait_for(got.get(), 5) == ("session_closed", node.sid, {"session_id": "s1", "room": "r"})


# ------------------------------------------------------------------ Redis down
async def test_unreachable_redis_fails_fast_and_recovers(make_router, redis_server: RedisServer) -> None:
    a = await make_router()
    await add_node(a, "n1")
    # Ready once its event bus has subscribed (a task started with the registry).
    await wait_for(lambda: _ready(a), 10, "the registry to be ready")
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        await a.node_for_room("r1")
    assert time.monotonic() - started < 3.0
    reason = await a.check()
    assert reason is not None and "Redis" in reason
    assert not a.reachable(SfuNode(sid="x", node_id="remote", local=False))
    await a.heartbeat("sid-n1", load(0))  # tolerated while Redis is down

    redis_server.start()
    await wait_for(lambda: _ready(a), 10, "the router to reconnect")
    await a.heartbeat("sid-n1", load(0))
    assert (await a.node_for_room("r1")).node_id == "n1"


async def _ready(router: RedisNodeRegistry) -> bool:
    return await router.check() is None


async def test_never_reachable_redis_is_bounded() -> None:
    router = RedisNodeRegistry(f"redis://127.0.0.1:{free_port()}/0", ttl=TTL)
    await router.start()  # tolerated: the loops keep retrying
    try:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            await router.node_for_room("r")
        assert "Redis unreachable" in (await router.check() or "")
        assert time.monotonic() - started < 4.0
    finally:
        await router.close()


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://", "redis://h:99999", "redis://h/x",
                                 "unix://relative"])
def test_bad_redis_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="RELAYCAST_REDIS_URL"):
        SignalingConfig.from_env({"RELAYCAST_REDIS_URL": url})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        SignalingConfig.from_env({"REDIS_URL": url})


def test_redis_url_sources() -> None:
    assert SignalingConfig.from_env({}).redis_url is None
    assert SignalingConfig.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}).redis_url == "redis://127.0.0.1:1/0"
    both = {"REDIS_URL": "redis://a:1", "RELAYCAST_REDIS_URL": "rediss://b:2/3"}
    assert SignalingConfig.from_env(both).redis_url == "rediss://b:2/3"
    secret = "redis://:hunter2hunter2@h:1/0"
    with pytest.raises(ConfigError) as err:
        SignalingConfig.from_env({"REDIS_URL": secret.replace("/0", "/db")})
    assert "hunter2" not in str(err.value)
