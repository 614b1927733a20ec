"""`signaling.cascade.Cascade` as a unit: where WHEP viewers are placed, when a node pipe is
opened (once per room and edge) and closed, and what a failing pipe RPC does.

The ``/sfu`` namespace is a fake that records the RPCs, reads each request with its
`sfu.protocol` dataclass as a node does, and answers as a node would (``pipe_offer`` and
``publish`` → an SDP, ``pipe_answer`` and ``close`` → ok), unless a test scripts an
`RpcError` for a (node, RPC).  Nodes live in a real `MemoryNodeRegistry`; pipe
records in a real `MemoryPipeRegistry`; per-node viewer counts in a real `RoomRegistry`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sfu.protocol import (
    OK,
    Answer,
    CloseSession,
    NodeEvent,
    OpenSession,
    PipeAnswer,
    PipeOffer,
    Rpc,
    RpcError,
    SessionClosed,
    SessionKind,
)
from signaling import cascade as cascade_module
from signaling.cascade import Cascade, MemoryPipeRegistry, Pipe, PipeFailed
from signaling.nodes import MemoryNodeRegistry, SfuNode
from signaling.rooms import RoomRegistry
from tests.polling import wait_for

ROOM = "demo"
ERROR = RpcError(503, "SFU unavailable", "scripted")
REQUESTS = {Rpc.PIPE_OFFER: PipeOffer, Rpc.PUBLISH: OpenSession, Rpc.PIPE_ANSWER: PipeAnswer,
            Rpc.CLOSE: CloseSession}


def node(node_id: str, *, viewers: int = 0, sessions: int = 0, capacity: int = 100,
         draining: bool = False, local: bool = True) -> SfuNode:
    """A node whose last load report says ``viewers`` of `ROOM` and ``sessions`` in all."""
    load = {"sessions": sessions, "capacity": capacity, "draining": draining,
            "room_viewers": {ROOM: viewers} if viewers else {}}
    return SfuNode(sid=f"sid-{node_id}", node_id=node_id, load=load, local=local)


class FakeNamespace:
    """The part of `SfuNamespace` a `Cascade` uses: ``router.nodes`` and ``call``."""

    def __init__(self, *nodes: SfuNode) -> None:
        self.registry = MemoryNodeRegistry()
        for n in nodes:
            self.registry.nodes[n.sid] = n
        self.calls: list[tuple[str, str, Any]] = []
        self.errors: dict[tuple[str, str], RpcError] = {}

    async def call(self, node: SfuNode, event: str, data: dict[str, Any], timeout: float) -> dict[str, Any]:
        request = REQUESTS[Rpc(event)].from_wire(data)  # raises ProtocolError on a bad shape
        self.calls.append((node.node_id, str(event), request))
        await asyncio.sleep(0)  # an RPC takes a turn of the loop: concurrent callers interleave
        if (node.node_id, event) in self.errors:
            return self.errors[(node.node_id, event)].to_wire()
        if event in (Rpc.PIPE_OFFER, Rpc.PUBLISH):
            return Answer(f"v=0 {event} by {node.node_id}").to_wire()
        return dict(OK)

    def events(self, *names: str) -> list[tuple[str, str]]:
        """(node id, RPC) of the RPCs made, only ``names`` when given."""
        return [(n, e) for n, e, _ in self.calls if not names or e in names]

    def closes(self) -> set[tuple[str, str]]:
        """(node id, session id) of every ``close`` RPC."""
        return {(n, r.session_id) for n, e, r in self.calls if e == Rpc.CLOSE}


OPENING = [("a", Rpc.PIPE_OFFER), ("b", Rpc.PUBLISH), ("a", Rpc.PIPE_ANSWER)]
"""The RPCs opening one pipe from origin ``a`` to edge ``b`` (module doc of signaling.cascade)."""


def make(*nodes: SfuNode, viewers_per_node: int = 2, rooms: RoomRegistry | None = None,
         **kwargs: Any) -> tuple[Cascade, FakeNamespace, MemoryPipeRegistry]:
    ns = FakeNamespace(*nodes)
    registry = MemoryPipeRegistry()
    cascade = Cascade(ns, registry, viewers_per_node=viewers_per_node, rpc_timeout_s=1.0,  # type: ignore[arg-type]
                      rooms=rooms, **kwargs)
    return cascade, ns, registry


def by_id(ns: FakeNamespace, node_id: str) -> SfuNode:
    return next(n for n in ns.registry.nodes.values() if n.node_id == node_id)


# ---------------------------------------------------------------------- placement
@pytest.mark.parametrize(
    ("viewers_per_node", "origin", "others", "expected"),
    [
        pytest.param(2, node("a", viewers=1), [node("b")], "a", id="origin-below-viewers_per_node"),
        pytest.param(2, node("a", viewers=2), [node("b")], "b", id="origin-at-viewers_per_node"),
        pytest.param(0, node("a", viewers=500), [node("b")], "a", id="no-limit-origin-fits"),
        pytest.param(0, node("a", draining=True), [node("b")], "b", id="origin-draining"),
        pytest.param(0, node("a", sessions=10, capacity=10), [node("b")], "b", id="origin-full"),
        pytest.param(2, node("a", viewers=2), [node("b", draining=True), node("c", sessions=5, capacity=5)],
                     "a", id="full-everywhere-origin-answers"),
        pytest.param(2, node("a", viewers=2), [node("b", viewers=2)], "a",
                     id="every-node-has-its-share-the-origin-takes-more"),
        pytest.param(2, node("a", viewers=2, sessions=10, capacity=10), [node("b", viewers=2), node("c", viewers=2)],
                     "b", id="origin-full-others-have-their-share-and-free-sessions"),
        pytest.param(2, node("a", viewers=2), [node("b", viewers=2), node("c", viewers=1)], "c",
                     id="edge-with-room-for-the-room"),
        pytest.param(2, node("a", viewers=2), [node("b", sessions=50), node("c", sessions=10)], "c",
                     id="least-loaded-edge"),
    ],
)
async def test_viewer_placement(viewers_per_node: int, origin: SfuNode, others: list[SfuNode],
                                expected: str) -> None:
    cascade, ns, registry = make(origin, *others, viewers_per_node=viewers_per_node)
    placed = await cascade.node_for_viewer(ROOM, origin)
    assert placed.node_id == expected
    if expected == origin.node_id:
        assert ns.calls == [] and await registry.of_room(ROOM) == []
    else:
        assert ns.events() == [(origin.node_id, Rpc.PIPE_OFFER), (expected, Rpc.PUBLISH),
                               (origin.node_id, Rpc.PIPE_ANSWER)]
        [pipe] = await registry.of_room(ROOM)
        assert (pipe.edge, pipe.origin, pipe.ready) == (expected, origin.node_id, True)


async def test_room_state_counts_beat_the_last_load_report() -> None:
    """Viewer counts from the nodes' room-state events (the `RoomRegistry`) are newer than
    the once-a-second load report, so they decide."""
    rooms = RoomRegistry()
    rooms.ensure(ROOM)
    record = rooms.get(ROOM)
    assert record is not None
    origin = node("a", viewers=0)  # the load report is a second old
    cascade, _, _ = make(origin, node("b"), rooms=rooms)
    record.apply_state("a", {"live": True, "viewers": 2})
    assert cascade.viewers_on(origin, ROOM) == 2
    assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "b"
    record.apply_state("a", {"live": True, "viewers": 1})  # one left
    assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "a"


async def test_an_edge_already_piped_is_preferred_and_piped_once() -> None:
    origin = node("a", viewers=2)
    cascade, ns, registry = make(origin, node("b", sessions=40), node("c", sessions=30))
    first = await cascade.node_for_viewer(ROOM, origin)
    assert first.node_id == "c"
    by_id(ns, "c").load["sessions"] = 90  # c is now the busier one, but it has the pipe
    for _ in range(3):
        assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "c"
    assert ns.events(Rpc.PIPE_OFFER) == [("a", Rpc.PIPE_OFFER)]
    assert [p.edge for p in await registry.of_room(ROOM)] == ["c"]


async def test_concurrent_viewers_share_one_pipe_opening() -> None:
    origin = node("a", viewers=2)
    cascade, ns, registry = make(origin, node("b"))
    placed = await asyncio.gather(*(cascade.node_for_viewer(ROOM, origin) for _ in range(5)))
    assert {n.node_id for n in placed} == {"b"}
    assert ns.events() == [("a", Rpc.PIPE_OFFER), ("b", Rpc.PUBLISH), ("a", Rpc.PIPE_ANSWER)]
    assert len(await registry.of_room(ROOM)) == 1


async def test_a_pipe_per_room_and_edge() -> None:
    origin = node("a", viewers=2)
    origin.load["room_viewers"]["other"] = 2
    cascade, ns, registry = make(origin, node("b"))
    await cascade.node_for_viewer(ROOM, origin)
    await cascade.node_for_viewer("other", origin)
    await cascade.node_for_viewer("other", origin)
    offers = [r.room for n, e, r in ns.calls if e == Rpc.PIPE_OFFER]
    assert offers == [ROOM, "other"]
    sessions = {p.session for room in (ROOM, "other") for p in await registry.of_room(room)}
    assert len(sessions) == 2 and all(s.startswith("pipe-") for s in sessions)


async def test_the_pipe_rpcs_carry_one_session_and_the_sdp_across() -> None:
    origin = node("a", viewers=2)
    cascade, ns, registry = make(origin, node("b"))
    await cascade.node_for_viewer(ROOM, origin)
    (_, _, offer), (_, _, publish), (_, _, answer) = ns.calls
    [pipe] = await registry.of_room(ROOM)
    assert offer.session_id == publish.session_id == answer.session_id == pipe.session
    assert offer.room == publish.room == ROOM
    assert publish.sdp == "v=0 pipe_offer by a" and answer.sdp == "v=0 publish by b"
    assert offer.identity.role == publish.identity.role == SessionKind.PIPE


# ----------------------------------------------------------------------- failures
@pytest.mark.parametrize(("failing", "made"), [
    (("a", Rpc.PIPE_OFFER), OPENING[:1]),
    (("b", Rpc.PUBLISH), OPENING[:2]),
    (("a", Rpc.PIPE_ANSWER), OPENING),
])
async def test_a_failing_pipe_rpc_raises_and_cleans_up(failing: tuple[str, str],
                                                       made: list[tuple[str, str]]) -> None:
    origin = node("a", viewers=2)
    cascade, ns, registry = make(origin, node("b"))
    ns.errors[failing] = ERROR
    with pytest.raises(PipeFailed) as raised:
        await cascade.node_for_viewer(ROOM, origin)
    assert raised.value.error == ERROR
    assert ns.events(Rpc.PIPE_OFFER, Rpc.PUBLISH, Rpc.PIPE_ANSWER) == made
    assert await registry.of_room(ROOM) == []  # the record is dropped
    session = ns.calls[0][2].session_id
    # Both sides are told to close the half-open pipe (best effort, in the background).
    await wait_for(lambda: ns.closes() == {("a", session), ("b", session)}, 5, "both sides closed")

    # The next viewer tries again with a new pipe.
    del ns.errors[failing]
    assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "b"
    [pipe] = await registry.of_room(ROOM)
    assert pipe.ready and pipe.session != session
    await cascade.close()


async def test_an_opening_elsewhere_that_never_finishes_fails_with_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another signaling instance claimed the pipe and is opening it: wait for it, and give
    up with a 503 `PipeFailed` after `OPEN_TIMEOUT_S`."""
    monkeypatch.setattr(cascade_module, "OPEN_TIMEOUT_S", 0.2)
    origin, edge = node("a", viewers=2), node("b")
    cascade, ns, registry = make(origin, edge)
    other = Pipe(ROOM, "b", "a", "pipe-elsewhere", False, 2**62)  # fresh for ever
    registry.pipes[(ROOM, "b")] = other
    with pytest.raises(PipeFailed) as raised:
        await cascade.ensure_pipe(ROOM, origin, edge)
    assert raised.value.error.status == 503
    assert ns.calls == []  # never opened twice
    assert await registry.of_room(ROOM) == [other]


async def test_an_opening_elsewhere_that_finishes_is_used() -> None:
    origin, edge = node("a", viewers=2), node("b")
    cascade, ns, registry = make(origin, edge)
    other = Pipe(ROOM, "b", "a", "pipe-elsewhere", False, 2**62)
    registry.pipes[(ROOM, "b")] = other
    claims: list[Pipe] = []
    claim = registry.claim

    async def counted_claim(pipe: Pipe) -> tuple[bool, Pipe | None]:
        claims.append(pipe)
        return await claim(pipe)

    registry.claim = counted_claim  # type: ignore[method-assign]
    waiting = asyncio.create_task(cascade.node_for_viewer(ROOM, origin))
    await wait_for(lambda: len(claims) >= 2, 5, "the viewer to find the pipe opening and try again")
    assert not waiting.done()
    other.ready = True  # the other instance's pipe_answer went through
    assert (await asyncio.wait_for(waiting, 5)).node_id == "b"
    assert ns.calls == []


async def test_a_stale_opening_is_taken_over_and_closed() -> None:
    """A record still "opening" after `OPEN_TIMEOUT_S` belongs to a dead opener: the pipe is
    opened anew and the stale session closed on both sides."""
    origin, edge = node("a", viewers=2), node("b")
    cascade, ns, registry = make(origin, edge)
    registry.pipes[(ROOM, "b")] = Pipe(ROOM, "b", "a", "pipe-stale", False, 1)
    assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "b"
    [pipe] = await registry.of_room(ROOM)
    assert pipe.ready and pipe.session != "pipe-stale"
    await wait_for(lambda: {("a", "pipe-stale"), ("b", "pipe-stale")} <= ns.closes(), 5, "the stale pipe closed")


# ------------------------------------------------------------------ closing pipes
async def piped() -> tuple[Cascade, FakeNamespace, MemoryPipeRegistry, Pipe]:
    origin = node("a", viewers=2)
    cascade, ns, registry = make(origin, node("b"), node("c", sessions=50))
    assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "b"
    [pipe] = await registry.of_room(ROOM)
    ns.calls.clear()
    return cascade, ns, registry, pipe


@pytest.mark.parametrize(("lost", "closed_on"), [("b", "a"), ("a", "b")], ids=["edge-lost", "origin-lost"])
async def test_a_lost_node_ends_its_pipes_on_the_other_side(lost: str, closed_on: str) -> None:
    cascade, ns, registry, pipe = await piped()
    await cascade.on_node_event(NodeEvent.NODE_LOST, by_id(ns, lost), {})
    assert await registry.of_room(ROOM) == []
    await wait_for(lambda: ns.closes() == {(closed_on, pipe.session)}, 5, f"the pipe closed on {closed_on}")
    await cascade.close()
    assert ns.closes() == {(closed_on, pipe.session)}  # never on the lost node


async def test_losing_an_unrelated_node_keeps_the_pipe() -> None:
    cascade, ns, registry, pipe = await piped()
    await cascade.on_node_event(NodeEvent.NODE_LOST, by_id(ns, "c"), {})
    assert await registry.of_room(ROOM) == [pipe]
    await cascade.close()
    assert ns.calls == []


@pytest.mark.parametrize(("data", "acts"), [({}, False), ({"here": True}, True)])
async def test_only_the_instance_that_noticed_a_remote_node_loss_acts(data: dict[str, Any], acts: bool) -> None:
    cascade, ns, registry, pipe = await piped()
    remote = by_id(ns, "b")
    remote.local = False  # connected to another signaling instance
    await cascade.on_node_event(NodeEvent.NODE_LOST, remote, data)
    assert (await registry.of_room(ROOM) == []) is acts


@pytest.mark.parametrize(("ended_on", "closed_on"), [("b", "a"), ("a", "b")],
                         ids=["edge-lingered-out", "origin-dropped-it"])
async def test_a_pipe_session_ending_on_one_side_is_closed_on_the_other(ended_on: str, closed_on: str) -> None:
    cascade, ns, registry, pipe = await piped()
    closed = SessionClosed(ROOM, pipe.session, "no viewers", SessionKind.PIPE)
    await cascade.on_node_event(NodeEvent.SESSION_CLOSED, by_id(ns, ended_on), closed.to_wire())
    assert await registry.of_room(ROOM) == []
    assert ns.closes() == {(closed_on, pipe.session)}


async def test_a_viewer_session_ending_is_no_pipe_business() -> None:
    cascade, ns, registry, pipe = await piped()
    closed = SessionClosed(ROOM, "viewer-1", "left", SessionKind.VIEWER)
    await cascade.on_node_event(NodeEvent.SESSION_CLOSED, by_id(ns, "b"), closed.to_wire())
    assert await registry.of_room(ROOM) == [pipe] and ns.calls == []


async def test_going_live_pipes_the_room_to_nodes_that_still_have_viewers() -> None:
    """The publisher's next origin (here c) pipes the room to every node whose viewers
    wait (b), and to no node without viewers (a)."""
    cascade, ns, registry = make(node("a"), node("b", viewers=3), node("c"))
    c = by_id(ns, "c")
    await cascade.on_node_event(NodeEvent.ROOM_STATE, c, {"room": ROOM, "live": True, "viewers": 0})
    await wait_for(lambda: [(p.edge, p.origin, p.ready) for p in registry.pipes.values()] == [("b", "c", True)],
                   5, "the pipe from c to b")
    assert ns.events() == [("c", Rpc.PIPE_OFFER), ("b", Rpc.PUBLISH), ("c", Rpc.PIPE_ANSWER)]
    # The same live state again (a later report) opens nothing more.
    await cascade.on_node_event(NodeEvent.ROOM_STATE, c, {"room": ROOM, "live": True, "viewers": 0})
    await cascade.close()
    assert len(ns.events(Rpc.PIPE_OFFER)) == 1


async def test_pull_into_pipes_a_live_room_into_the_bridge_node() -> None:
    rooms = RoomRegistry()
    rooms.ensure(ROOM)
    cascade, ns, registry = make(node("a"), node("hls-1"), rooms=rooms)
    assert await cascade.pull_into(ROOM, "hls-1") is False  # not live anywhere
    record = rooms.get(ROOM)
    assert record is not None
    record.apply_state("a", {"live": True, "viewers": 0})
    assert await cascade.pull_into(ROOM, "hls-1") is True
    assert [(p.edge, p.origin, p.ready) for p in await registry.of_room(ROOM)] == [("hls-1", "a", True)]
    assert await cascade.pull_into(ROOM, "a") is False  # the origin itself
    ns.errors[("a", Rpc.PIPE_OFFER)] = ERROR
    await registry.drop(ROOM, "hls-1")
    assert await cascade.pull_into(ROOM, "hls-1") is False  # PipeFailed: logged, not raised
    await cascade.close()


async def test_viewers_never_go_to_an_hls_node_but_rooms_are_pulled_into_it() -> None:
    """An LL-HLS bridge's node (load role ``hls``) is no edge for viewers, however idle;
    `Cascade.pull_into` still pipes a live room into it."""
    rooms = RoomRegistry()
    rooms.ensure(ROOM)
    bridge = node("hls-1")
    bridge.load["role"] = "hls"
    origin = node("a", viewers=2)
    cascade, ns, registry = make(origin, bridge, rooms=rooms)
    assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "a"  # full everywhere else
    assert ns.calls == []
    ns.registry.nodes["sid-b"] = node("b", sessions=60)
    assert (await cascade.node_for_viewer(ROOM, origin)).node_id == "b"
    record = rooms.get(ROOM)
    assert record is not None
    record.apply_state("a", {"live": True, "viewers": 2})
    assert await cascade.pull_into(ROOM, "hls-1") is True
    assert sorted((p.edge, p.origin) for p in await registry.of_room(ROOM)) == [("b", "a"), ("hls-1", "a")]
    await cascade.close()


# ------------------------------------------------------------------ pipe records
@pytest.mark.parametrize(
    ("existing", "claimed"),
    [
        pytest.param(None, True, id="none"),
        pytest.param(Pipe(ROOM, "b", "a", "s0", True, 1), False, id="ready-same-origin"),
        pytest.param(Pipe(ROOM, "b", "a", "s0", False, 99_000), False, id="opening-same-origin"),
        pytest.param(Pipe(ROOM, "b", "a", "s0", False, 1), True, id="stale-opening"),
        pytest.param(Pipe(ROOM, "b", "x", "s0", True, 99_000), True, id="other-origin"),
    ],
)
async def test_memory_registry_claim(existing: Pipe | None, claimed: bool) -> None:
    registry = MemoryPipeRegistry()
    if existing is not None:
        registry.pipes[(ROOM, "b")] = existing
    new = Pipe(ROOM, "b", "a", "s1", False, 100_000)  # (Unix ms) 1 s after the "opening" one
    assert await registry.claim(new) == (claimed, existing)
    assert (await registry.of_room(ROOM))[0] is (new if claimed else existing)


async def test_memory_registry_update_and_drop_respect_the_session() -> None:
    registry = MemoryPipeRegistry()
    pipe = Pipe(ROOM, "b", "a", "s1")
    await registry.claim(pipe)
    await registry.update(Pipe(ROOM, "b", "a", "s2", ready=True))  # not the recorded session
    assert await registry.of_room(ROOM) == [pipe]
    assert await registry.drop(ROOM, "b", "s2") is None
    assert await registry.drop(ROOM, "b", "s1") is pipe
    assert await registry.all() == []


@pytest.mark.parametrize("raw", ["", "{", "[]", '{"origin": "a"}', '{"session": "s"}', "null"])
def test_a_broken_pipe_record_reads_as_none(raw: str) -> None:
    assert Pipe.from_json(ROOM, "b", raw) is None


def test_a_pipe_record_round_trips() -> None:
    pipe = Pipe(ROOM, "b", "a", "pipe-x", True, 1234)
    assert Pipe.from_json(ROOM, "b", pipe.to_json()) == pipe
