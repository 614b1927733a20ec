"""signaling.sessions without a network: the SessionService's rules over a fake SFU link.

The fake namespace answers RPCs from a table and records every call; placement is the real
MemoryNodeRegistry with one registered node; records live in the real MemorySessionStore."""

from __future__ import annotations

from typing import Any

import pytest

from sfu.protocol import Identity, NodeEvent, SessionClosed, SessionKind
from signaling.cascade import Cascade, MemoryPipeRegistry
from signaling.config import SignalingConfig
from signaling.nodes import MemoryNodeRegistry, SfuNode
from signaling.rooms import RoomRegistry
from signaling.sessions import MemorySessionStore, Session, SessionRefused, SessionService

OFFER = "v=0\r\na=ice-ufrag:uf1\r\na=ice-pwd:pw1\r\n"


class FakeNamespace:
    def __init__(self, router: MemoryNodeRegistry) -> None:
        self.registry = router
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.replies: dict[str, dict[str, Any]] = {}

    async def call(self, node: SfuNode, rpc: str, data: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append((node.node_id, str(rpc), data))
        return self.replies.get(str(rpc), {"ok": True})


@pytest.fixture
async def service() -> SessionService:
    router = MemoryNodeRegistry()
    await router.register(SfuNode(sid="sid-a", node_id="node-a", load={"sessions": 0, "capacity": 10}))
    namespace = FakeNamespace(router)
    rooms = RoomRegistry()
    rooms.ensure("demo")
    config = SignalingConfig(rpc_timeout_s=1.0, retry_after_s=7)
    cascade = Cascade(namespace, MemoryPipeRegistry(), rpc_timeout_s=1.0, rooms=rooms)  # type: ignore[arg-type]
    return SessionService(config, rooms, namespace, cascade, MemorySessionStore())  # type: ignore[arg-type]


async def test_open_records_the_session_with_the_offer_ice_credentials(service: SessionService) -> None:
    service.namespace.replies["publish"] = {"sdp": "v=0 answer"}
    session, answer = await service.open("whip", "demo", OFFER, client="192.0.2.1")
    assert answer == "v=0 answer"
    assert (session.resource, session.kind, session.node_id, session.client) == ("whip", SessionKind.PUBLISHER, "node-a", "192.0.2.1")
    assert (session.remote_ufrag, session.remote_pwd) == ("uf1", "pw1")
    assert session.etag.startswith('"') and len(session.id) == 32
    [(node, rpc, data)] = service.namespace.calls
    assert (node, rpc, data["room"], data["identity"]["role"]) == ("node-a", "publish", "demo", "publisher")
    assert await service.get("whip", "demo", session.id) is session
    assert await service.get("whep", "demo", session.id) is None, "another resource's session"
    assert await service.get("whip", "other", session.id) is None, "another room's session"


@pytest.mark.parametrize(("status", "expected", "retry", "closes"), [
    (422, 422, None, False),   # unsupported media: the node's answer, nothing to undo
    (409, 409, 7, False),      # WHEP before a publisher: Retry-After
    (503, 503, 7, False),      # node full/draining
    (504, 504, None, True),    # no ack in time: the node may still open it -> close it
    (500, 502, None, False),   # the node failed: a bad gateway, not our 500
])
async def test_a_refused_open_leaves_nothing(service: SessionService, status: int, expected: int,
                                             retry: int | None, closes: bool) -> None:
    service.namespace.replies["subscribe"] = {"error": {"status": status, "title": "T", "detail": "D"}}
    with pytest.raises(SessionRefused) as refused:
        await service.open("whep", "demo", OFFER)
    assert (refused.value.status, refused.value.retry_after_s) == (expected, retry)
    assert refused.value.detail == "T: D"
    assert [rpc for _, rpc, _ in service.namespace.calls] == ["subscribe"] + (["close"] if closes else [])
    assert service.store.sessions == {}  # type: ignore[attr-defined]
    assert "demo" not in service.namespace.registry.room_nodes, "the room placed for nothing is released"


async def test_no_node_is_a_503_with_retry_after(service: SessionService) -> None:
    await service.namespace.registry.unregister("sid-a")
    with pytest.raises(SessionRefused) as refused:
        await service.open("whip", "demo", OFFER)
    assert (refused.value.status, refused.value.retry_after_s) == (503, 7)


async def test_node_events_forget_and_mark_sessions(service: SessionService) -> None:
    service.namespace.replies["subscribe"] = {"sdp": "v=0"}
    one, _ = await service.open("whep", "demo", OFFER)
    two, _ = await service.open("whep", "demo", OFFER)
    node = service.namespace.registry.nodes["sid-a"]
    await service.on_node_event(NodeEvent.SESSION_CONNECTED, node, {"session_id": one.id})
    assert one.connected and not two.connected
    other = SfuNode(sid="sid-b", node_id="node-b")
    await service.on_node_event(NodeEvent.SESSION_CLOSED, other, SessionClosed("demo", one.id).to_wire())
    assert await service.get("whep", "demo", one.id) is one, "only the session's own node ends it"
    await service.on_node_event(NodeEvent.SESSION_CLOSED, node, {"junk": 1})  # ignored
    await service.on_node_event(NodeEvent.SESSION_CLOSED, node, SessionClosed("demo", one.id).to_wire())
    assert await service.get("whep", "demo", one.id) is None
    await service.on_node_event(NodeEvent.NODE_LOST, node, {})
    assert await service.get("whep", "demo", two.id) is None


async def test_trickle_and_close_reach_the_node(service: SessionService) -> None:
    service.namespace.replies["subscribe"] = {"sdp": "v=0"}
    session, _ = await service.open("whep", "demo", OFFER)
    await service.trickle(session, ["candidate:1 1 udp 1 127.0.0.1 5000 typ host"], True)
    service.namespace.replies["close"] = {"error": {"status": 404, "title": "Unknown session"}}
    await service.close(session)  # already gone on the node: still forgotten here
    assert [rpc for _, rpc, _ in service.namespace.calls] == ["subscribe", "trickle", "close"]
    assert service.namespace.calls[1][2]["end_of_candidates"] is True
    assert await service.get("whep", "demo", session.id) is None
    await service.namespace.registry.unregister("sid-a")
    with pytest.raises(SessionRefused) as refused:
        await service.trickle(session, [], True)
    assert refused.value.status == 404


def test_session_records_round_trip_through_json() -> None:
    session = Session("id1", "whep", "demo", "sid", "node-a", '"e"', "u", None,
                      Identity("v1", "swift-otter-1", SessionKind.VIEWER), 12.5, "192.0.2.9", True)
    assert Session.from_json(session.to_json()) == session
    assert Session.from_json("{}") is None and Session.from_json("not json") is None
