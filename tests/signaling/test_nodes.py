"""Node placement as a unit: `SfuNode`'s load view, the `least_loaded` strategy and the
in-memory `MemoryNodeRegistry` (sticky rooms, release, NoNodeAvailable, room states, expiry
of a node whose load reports stop)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from signaling.nodes import (
    MemoryNodeRegistry,
    NoNodeAvailable,
    SfuNode,
    acts_on,
    least_loaded,
    load_view,
    occupied,
)
from tests.polling import wait_for


def node(node_id: str, sessions: int = 0, capacity: int | None = 100, draining: bool = False) -> SfuNode:
    load: dict[str, Any] = {"sessions": sessions, "draining": draining}
    if capacity is not None:
        load["capacity"] = capacity
    return SfuNode(sid=f"sid-{node_id}", node_id=node_id, load=load)


# ------------------------------------------------------------------ SfuNode
@pytest.mark.parametrize(
    ("load", "available"),
    [
        ({}, True),  # no report yet: no sessions, unlimited capacity
        ({"sessions": 9, "capacity": 10}, True),
        ({"sessions": 10, "capacity": 10}, False),
        ({"sessions": 11, "capacity": 10}, False),
        ({"sessions": 0, "capacity": 10, "draining": True}, False),
        ({"sessions": 0, "capacity": 0}, False),
    ],
)
def test_available(load: dict[str, Any], available: bool) -> None:
    assert SfuNode("sid", "n", load=load).available is available


def test_load_view_keeps_the_viewer_count_of_each_room() -> None:
    report = {
        "sessions": 4, "capacity": 10,
        "room_states": {
            "a": {"live": True, "viewers": 3},
            "b": {"live": True, "viewers": 0},
            "c": {"viewers": "7"},  # not an int: ignored
            "d": "garbage",
        },
    }
    view = load_view(report)
    assert view == {"sessions": 4, "capacity": 10, "room_viewers": {"a": 3}}
    n = SfuNode("sid", "n", load=view)
    assert (n.room_viewers("a"), n.room_viewers("b"), n.room_viewers("zz")) == (3, 0, 0)
    assert load_view({"sessions": 1}) == {"sessions": 1}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"live": True, "viewers": 0, "pipes": 0}, True),
        ({"live": False, "viewers": 2, "pipes": 0}, True),
        ({"live": False, "viewers": 0, "pipes": 1}, True),
        ({"live": False, "viewers": 0, "pipes": 0}, False),
        ({"live": True, "viewers": 5, "pipe": True}, False),  # an edge never holds the room
        ({}, False),
    ],
)
def test_occupied(state: dict[str, Any], expected: bool) -> None:
    assert occupied(state) is expected


@pytest.mark.parametrize(
    ("local", "data", "expected"),
    [(True, {}, True), (False, {}, False), (False, {"here": True}, True)],
)
def test_acts_on(local: bool, data: dict[str, Any], expected: bool) -> None:
    assert acts_on(SfuNode("sid", "n", local=local), data) is expected


# ------------------------------------------------------------- least_loaded
@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param([node("a", 5), node("b", 3)], "b", id="fewer-sessions"),
        pytest.param([node("a", 5, capacity=10), node("b", 30, capacity=100)], "b", id="lower-ratio-first"),
        pytest.param([node("a", 10, capacity=100), node("b", 1, capacity=10)], "b",
                     id="same-ratio-fewer-sessions"),
        pytest.param([node("b", 2), node("a", 2), node("c", 2)], "a", id="tie-by-node-id"),
        pytest.param([node("a", 0, capacity=0), node("b", 1, capacity=1)], "a",
                     id="zero-capacity-counts-as-one"),
        pytest.param([node("only", 99)], "only", id="single"),
    ],
)
def test_least_loaded(candidates: list[SfuNode], expected: str) -> None:
    assert least_loaded("room", candidates).node_id == expected
    assert least_loaded("room", list(reversed(candidates))).node_id == expected  # order-free


# -------------------------------------------------------- MemoryNodeRegistry
@pytest.fixture
async def router() -> AsyncIterator[MemoryNodeRegistry]:
    r = MemoryNodeRegistry()
    yield r
    await r.close()


async def add(router: MemoryNodeRegistry, *nodes: SfuNode) -> None:
    for n in nodes:
        await router.register(n)


async def test_no_node_at_all(router: MemoryNodeRegistry) -> None:
    with pytest.raises(NoNodeAvailable):
        await router.node_for_room("r")
    assert router.room_nodes == {}


async def test_no_available_node(router: MemoryNodeRegistry) -> None:
    await add(router, node("full", 10, capacity=10), node("draining", draining=True))
    with pytest.raises(NoNodeAvailable):
        await router.node_for_room("r")


async def test_rooms_go_to_the_least_loaded_node_and_stay(router: MemoryNodeRegistry) -> None:
    busy, idle = node("busy", 50), node("idle", 1)
    await add(router, busy, idle)
    assert await router.node_for_room("r") is idle
    idle.load["sessions"] = 99  # idle fills up, but the room is placed: sticky
    assert await router.node_for_room("r") is idle
    assert await router.node_for_room("other") is busy  # a new room sees the new loads


async def test_a_placed_room_stays_even_on_a_node_that_started_draining(router: MemoryNodeRegistry) -> None:
    """The room's publisher and viewers are there: new sessions of the room go there too."""
    a, b = node("a"), node("b", 5)
    await add(router, a, b)
    assert await router.node_for_room("r") is a
    a.load["draining"] = True
    assert await router.node_for_room("r") is a


async def test_release_room(router: MemoryNodeRegistry) -> None:
    a, b = node("a"), node("b", 5)
    await add(router, a, b)
    assert await router.node_for_room("r") is a
    await router.release_room("r", b)  # not b's room: nothing happens
    assert router.room_nodes == {"r": a.sid}
    a.load["sessions"] = 10
    await router.release_room("r", a)
    assert router.room_nodes == {}
    assert await router.node_for_room("r") is b  # placed anew
    await router.release_room("r")  # whoever holds it
    assert router.room_nodes == {}
    await router.release_room("never-placed")


async def test_unregister_releases_the_nodes_rooms(router: MemoryNodeRegistry) -> None:
    a, b = node("a"), node("b", 5)
    await add(router, a, b)
    await router.node_for_room("r1")
    await router.node_for_room("r2")
    router.room_nodes["r3"] = b.sid
    assert await router.unregister(a.sid) is a
    assert router.room_nodes == {"r3": b.sid}
    assert list(router.nodes) == [b.sid]
    assert await router.unregister(a.sid) is None
    assert await router.node_for_room("r1") is b


async def test_a_custom_placement_sees_only_available_nodes() -> None:
    seen: list[list[str]] = []

    def last_by_id(room: str, candidates: Sequence[SfuNode]) -> SfuNode:
        seen.append(sorted(n.node_id for n in candidates))
        return max(candidates, key=lambda n: n.node_id)

    router = MemoryNodeRegistry(placement=last_by_id)
    await add(router, node("a"), node("b"), node("c", draining=True), node("d", 3, capacity=3))
    assert (await router.node_for_room("r")).node_id == "b"
    assert seen == [["a", "b"]]
    await router.node_for_room("r")  # sticky: the strategy is not asked again
    assert seen == [["a", "b"]]


async def test_heartbeat_keeps_the_load_view(router: MemoryNodeRegistry) -> None:
    a = node("a")
    await add(router, a)
    assert await router.heartbeat("sid-unknown", {"sessions": 1}) is None
    before = a.seen
    got = await router.heartbeat(a.sid, {"sessions": 3, "capacity": 8,
                                         "room_states": {"r": {"live": True, "viewers": 2}}})
    assert got is a
    assert a.load == {"sessions": 3, "capacity": 8, "room_viewers": {"r": 2}}
    assert a.seen >= before


@pytest.mark.parametrize(
    ("state", "placed_after"),
    [
        pytest.param({"live": False, "viewers": 0, "pipes": 0}, None, id="idle-releases"),
        pytest.param({"live": True, "viewers": 0, "pipes": 0}, "a", id="live-keeps"),
        pytest.param({"live": False, "viewers": 0, "pipes": 0, "pipe": True}, "a", id="edge-state-ignored"),
    ],
)
async def test_room_state_of_the_hosting_node(router: MemoryNodeRegistry, state: dict[str, Any],
                                              placed_after: str | None) -> None:
    a = node("a")
    await add(router, a)
    await router.node_for_room("r")
    await router.update_room(a, "r", state)
    assert router.room_nodes.get("r") == (f"sid-{placed_after}" if placed_after else None)


async def test_room_state_of_another_node(router: MemoryNodeRegistry) -> None:
    a, b = node("a"), node("b", 5)
    await add(router, a, b)
    await router.node_for_room("r")
    await router.update_room(b, "r", {"live": False, "viewers": 0, "pipes": 0})  # not b's room
    assert router.room_nodes == {"r": a.sid}
    await router.update_room(b, "r", {"live": True, "viewers": 0, "pipes": 0})  # a still holds it
    assert router.room_nodes == {"r": a.sid}


async def test_a_reconnected_node_reclaims_its_room(router: MemoryNodeRegistry) -> None:
    """A node that reconnects (new sid) and reports a live room gets it back."""
    old = node("a")
    await add(router, old)
    await router.node_for_room("r")
    await router.unregister(old.sid)
    again = SfuNode(sid="sid-a-2", node_id="a", load={"sessions": 1})
    await add(router, again)
    await router.update_room(again, "r", {"live": True, "viewers": 0, "pipes": 0})
    assert router.room_nodes == {"r": "sid-a-2"}


async def test_a_node_whose_reports_stop_is_lost() -> None:
    router = MemoryNodeRegistry(ttl=0.4)
    events: list[tuple[str, str]] = []
    disconnected: list[str] = []
    router.listener = lambda event, n, data: events.append((event, n.node_id))

    async def disconnect(sid: str) -> None:
        disconnected.append(sid)

    router.disconnect = disconnect
    silent, alive = node("silent"), node("alive")
    await add(router, silent, alive)
    assert await router.node_for_room("r") is alive  # both idle: the first by node id
    router.room_nodes["s"] = silent.sid
    await router.start()
    try:
        async def keep_alive() -> bool:
            await router.heartbeat(alive.sid, {"sessions": 0})
            return ("node_lost", "silent") in events

        await wait_for(keep_alive, 10, "the silent node to be declared lost", interval_s=0.05)
    finally:
        await router.close()
    assert events == [("node_lost", "silent")]
    assert disconnected == [silent.sid]
    assert [n.node_id for n in router.nodes.values()] == ["alive"]
    assert router.room_nodes == {"r": alive.sid}


# ------------------------------------------------------------------ roles
@pytest.mark.parametrize(
    ("registered", "load", "role", "placeable"),
    [
        pytest.param("media", {}, "media", True, id="default"),
        pytest.param("hls", {}, "hls", False, id="hls-at-registration"),
        pytest.param("media", {"role": "hls"}, "hls", False, id="hls-in-the-load-report"),
        pytest.param("hls", {"role": "media"}, "media", True, id="the-load-report-wins"),
        pytest.param("media", {"role": "media", "draining": True}, "media", False, id="draining-media"),
    ],
)
def test_role_and_placeable(registered: str, load: dict[str, Any], role: str, placeable: bool) -> None:
    n = SfuNode("sid", "n", load=load, registered_role=registered)
    assert (n.role, n.placeable) == (role, placeable)


def hls_node(node_id: str, sessions: int = 0) -> SfuNode:
    n = node(node_id, sessions)
    n.load["role"] = "hls"
    return n


async def test_rooms_are_never_placed_on_an_hls_node(router: MemoryNodeRegistry) -> None:
    """An LL-HLS bridge's node (role ``hls``) is idle, yet publishers go to the busier
    media node; with only an ``hls`` node there is no node for them at all."""
    bridge, media = hls_node("hls-1"), node("sfu-1", 50)
    await add(router, bridge)
    with pytest.raises(NoNodeAvailable):
        await router.node_for_room("r")
    await add(router, media)
    assert await router.node_for_room("r") is media
    router.room_nodes["s"] = bridge.sid  # however a room came to point there: not sticky
    assert await router.node_for_room("s") is media


async def test_an_hls_node_never_claims_a_room_through_its_room_states(router: MemoryNodeRegistry) -> None:
    bridge, media = hls_node("hls-1"), node("sfu-1")
    await add(router, bridge, media)
    await router.update_room(bridge, "r", {"live": True, "viewers": 0})
    assert router.room_nodes == {}
    await router.update_room(media, "r", {"live": True, "viewers": 0})
    assert router.room_nodes == {"r": media.sid}
