"""SFU nodes as seen by signaling: the ``/sfu`` Socket.IO namespace and node placement.

``NodeRouter`` decides which node hosts a room (in-memory here; a Redis
implementation arrives with scale-out).  ``SfuNamespace`` authenticates nodes,
tracks their load and forwards their events to the app.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

logger = logging.getLogger(__name__)

NAMESPACE = "/sfu"


@dataclass
class SfuNode:
    sid: str
    node_id: str
    address: str = ""
    load: dict[str, Any] = field(default_factory=dict)
    seen: float = field(default_factory=time.monotonic)

    @property
    def sessions(self) -> int:
        return int(self.load.get("sessions", 0))

    @property
    def available(self) -> bool:
        return not self.load.get("draining") and self.sessions < int(self.load.get("capacity", 1 << 30))


class NoNodeAvailable(Exception):
    """No SFU node is registered (or all are full/draining)."""


class NodeRouter:
    """In-memory node registry with least-loaded placement and sticky rooms."""

    def __init__(self) -> None:
        self.nodes: dict[str, SfuNode] = {}
        self.room_nodes: dict[str, str] = {}

    def add(self, node: SfuNode) -> None:
        self.nodes[node.sid] = node

    def remove(self, sid: str) -> SfuNode | None:
        node = self.nodes.pop(sid, None)
        for room in [r for r, s in self.room_nodes.items() if s == sid]:
            del self.room_nodes[room]
        return node

    def node_for_room(self, room: str) -> SfuNode:
        """The node already hosting ``room``, else the least-loaded available one."""
        sid = self.room_nodes.get(room)
        if sid is not None and sid in self.nodes:
            return self.nodes[sid]
        candidates = [n for n in self.nodes.values() if n.available]
        if not candidates:
            raise NoNodeAvailable("no SFU node is available")
        node = min(candidates, key=lambda n: n.sessions)
        self.room_nodes[room] = node.sid
        return node

    def release_room(self, room: str) -> None:
        self.room_nodes.pop(room, None)


class SfuNamespace(socketio.AsyncNamespace):
    """Socket.IO namespace SFU nodes connect to (auth: node id + shared secret)."""

    def __init__(
        self,
        secret: str,
        router: NodeRouter,
        on_event: Callable[[str, SfuNode, dict[str, Any]], Any],
    ) -> None:
        super().__init__(NAMESPACE)
        self._secret = secret
        self.router = router
        self._on_event = on_event

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if not isinstance(auth, dict) or not isinstance(auth.get("secret"), str):
            raise socketio.exceptions.ConnectionRefusedError("node credentials required")
        if not hmac.compare_digest(auth["secret"].encode(), self._secret.encode()):
            logger.warning("refused SFU node with a bad secret from %s", environ.get("REMOTE_ADDR"))
            raise socketio.exceptions.ConnectionRefusedError("bad node credentials")
        node = SfuNode(sid=sid, node_id=str(auth.get("node_id") or sid), address=str(auth.get("address") or ""))
        self.router.add(node)
        logger.info("SFU node %s registered", node.node_id)

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        node = self.router.remove(sid)
        if node is not None:
            logger.warning("SFU node %s disconnected", node.node_id)
            await _maybe_await(self._on_event("node_lost", node, {}))

    async def on_load(self, sid: str, data: Any) -> None:
        node = self.router.nodes.get(sid)
        if node is not None and isinstance(data, dict):
            node.load = data
            node.seen = time.monotonic()

    async def on_session_closed(self, sid: str, data: Any) -> None:
        node = self.router.nodes.get(sid)
        if node is not None and isinstance(data, dict):
            await _maybe_await(self._on_event("session_closed", node, data))

    async def on_room_state(self, sid: str, data: Any) -> None:
        node = self.router.nodes.get(sid)
        if node is not None and isinstance(data, dict):
            await _maybe_await(self._on_event("room_state", node, data))

    async def call(self, node: SfuNode, event: str, data: dict[str, Any], timeout: float) -> dict[str, Any]:
        """RPC to a node; the ack is the result dict (``{"error": ...}`` on failure)."""
        try:
            result = await self.server.call(event, data, to=node.sid, namespace=NAMESPACE, timeout=timeout)
        except socketio.exceptions.TimeoutError:
            return {"error": {"status": 504, "title": "SFU timeout", "detail": f"{event} timed out"}}
        except Exception as exc:
            return {"error": {"status": 503, "title": "SFU unavailable", "detail": type(exc).__name__}}
        if not isinstance(result, dict):
            return {"error": {"status": 502, "title": "Bad SFU reply", "detail": f"{event} returned {type(result).__name__}"}}
        return result


async def _maybe_await(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value
