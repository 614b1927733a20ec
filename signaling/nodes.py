"""SFU nodes as seen by signaling: the ``/sfu`` Socket.IO namespace and node placement.

``NodeRegistry`` is the interface signaling places sessions through.  Two implementations:

* `MemoryNodeRegistry` (here): one signaling process, the embedded default.
* `signaling.redis_state.RedisNodeRegistry`: several signaling instances sharing SFU
  nodes, the room → node map and room state through Redis (``REDIS_URL``).

Both place a room on the node already hosting it (sticky), else on the node a
`PlacementStrategy` picks among the available ones (`least_loaded` by default) — never on
an ``hls`` node (`SfuNode.placeable`: an LL-HLS bridge's node gets rooms only through node
pipes, `signaling.cascade.Cascade.pull_into`) — and
forget a node — releasing its rooms — when its Socket.IO connection drops or when its
load reports (every second, the heartbeat) stop for ``ttl`` seconds.

``SfuNamespace`` authenticates nodes with the shared node secret, feeds their load
reports and room states to the registry, and hands their events to the app (and, through
the registry, to the other signaling instances).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import socketio

from sfu.config import NODE_ROLES
from sfu.protocol import (
    CHAT_EVENT,
    NAMESPACE,
    SOCKETIO_PATH,
    Identity,
    NodeEvent,
    ProtocolError,
    RoomState,
    Rpc,
    RpcError,
    SessionConnected,
    SessionKind,
)

from .chat import ChatRefused, ChatService, ChatUnavailable, Sender
from .client_ip import client_of, handshake_request
from .node_auth import NodeAuthThrottle

logger = logging.getLogger(__name__)

DEFAULT_NODE_TTL_S = 4.0
"""A node whose last load report is older than this is gone (reports come every second)."""


@dataclass
class SfuNode:
    """A registered SFU node.

    :ivar sid: its Socket.IO session id on the ``/sfu`` namespace (RPC address; works from
        any signaling instance in Redis mode).
    :ivar load: its last load report (``sessions``, ``capacity``, ``draining``, ...).
    :ivar seen: ``time.monotonic()`` of the last report received by this instance.
    :ivar local: connected to this signaling instance.
    :ivar registered_role: the role the node announced when it connected (``"media"`` or
        ``"hls"``, `sfu.config.NODE_ROLES`); its load reports' ``role`` takes precedence.
    """

    sid: str
    node_id: str
    address: str = ""
    load: dict[str, Any] = field(default_factory=dict)
    seen: float = field(default_factory=time.monotonic)
    local: bool = True
    registered_role: str = "media"

    @property
    def sessions(self) -> int:
        return int(self.load.get("sessions", 0))

    @property
    def capacity(self) -> int:
        return int(self.load.get("capacity", 1 << 30))

    @property
    def draining(self) -> bool:
        return bool(self.load.get("draining"))

    @property
    def available(self) -> bool:
        return not self.draining and self.sessions < self.capacity

    @property
    def role(self) -> str:
        """``"media"`` or ``"hls"``: from the last load report, else from registration."""
        return str(self.load.get("role") or self.registered_role)

    @property
    def placeable(self) -> bool:
        """Publishers and viewers may be placed here: `available` and not an ``hls`` node
        (an LL-HLS bridge's node takes rooms only through node pipes)."""
        return self.available and self.role != "hls"

    @property
    def accepts_viewers(self) -> bool:
        """Room for one more viewer: ``publisher_reserve`` sessions stay free after it (the
        node refuses viewers that would eat into its publishers' reserve, `sfu.worker`)."""
        reserve = int(self.load.get("publisher_reserve", 0))
        return self.available and self.sessions + 1 + reserve <= self.capacity

    def room_viewers(self, room: str) -> int:
        """Viewers of ``room`` on this node, as of its last load report."""
        return int((self.load.get("room_viewers") or {}).get(room, 0))


def load_view(load: dict[str, Any]) -> dict[str, Any]:
    """A node's load report as kept by signaling: ``room_states`` shrunk to
    ``room_viewers`` (``{room: viewers}`` for rooms with viewers on the node)."""
    view = {k: v for k, v in load.items() if k != "room_states"}
    states = load.get("room_states")
    if isinstance(states, dict):
        view["room_viewers"] = {
            room: int(state["viewers"]) for room, state in states.items()
            if isinstance(state, dict) and isinstance(state.get("viewers"), int) and state["viewers"] > 0
        }
    return view


def occupied(state: dict[str, Any]) -> bool:
    """Whether a node's room state keeps the room placed on it: a publisher, viewers or
    pipes to edges, and the node is the room's origin (not an edge fed by a pipe)."""
    return not state.get("pipe") and bool(state.get("live") or state.get("viewers") or state.get("pipes"))


class NoNodeAvailable(Exception):
    """No SFU node is registered (or all are full/draining)."""


class RegistryUnavailable(NoNodeAvailable):
    """The shared state (Redis) cannot be reached: placement is impossible for now."""


class NodeIdInUse(Exception):
    """Another live connection already registered this node id."""


PlacementStrategy = Callable[[str, Sequence[SfuNode]], SfuNode]
"""``strategy(room, candidates) -> node``: picks the node for a room not placed yet.
``candidates`` is never empty and holds only available (not full, not draining) nodes."""


def least_loaded(room: str, candidates: Sequence[SfuNode]) -> SfuNode:
    """The default strategy: lowest sessions/capacity, then fewest sessions, then node id.
    (Callers pass only `SfuNode.placeable` nodes.)"""
    return min(candidates, key=lambda n: (n.sessions / max(1, n.capacity), n.sessions, n.node_id))


def acts_on(node: SfuNode, data: dict[str, Any]) -> bool:
    """Every signaling instance gets every node event; the one that acts on it (tells the
    pages, cleans up pipes) is the instance the node is connected to, or for a lost node
    the one that noticed the loss (``data["here"]``), so nothing is done twice."""
    return node.local or bool(data.get("here"))


NodeEventListener = Callable[[str, SfuNode, dict[str, Any]], Any]
"""``listener(event, node, data)`` with event ``session_closed``, ``session_connected``,
``room_state`` or ``node_lost``."""


class NodeRegistry(ABC):
    """Where SFU nodes are registered and rooms are placed.

    :ivar nodes: the live nodes this instance knows, by Socket.IO sid (in Redis mode the
        whole cluster's, refreshed about every ``ttl / 8`` s); read synchronously by
        the HTTP handlers, metrics and ``/readyz``.
    :ivar listener: delivers node events to this instance's app (set by `SfuNamespace`).
    :ivar disconnect: closes a node's Socket.IO connection (set by `SfuNamespace`); used
        when a connected node stops reporting.
    """

    def __init__(self, placement: PlacementStrategy | None = None, ttl: float = DEFAULT_NODE_TTL_S) -> None:
        self.placement: PlacementStrategy = placement or least_loaded
        self.ttl = ttl
        self.nodes: dict[str, SfuNode] = {}
        self.listener: NodeEventListener | None = None
        self.disconnect: Callable[[str], Awaitable[None]] | None = None
        self.closing = False

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start background work (expiry; in Redis mode sync and the event bus)."""
        return None

    async def close(self) -> None:
        """Stop background work.  Nodes that disconnect from now on are not declared lost
        (they reconnect to another instance or to this one after its restart)."""
        self.closing = True

    # ------------------------------------------------------------- nodes
    @abstractmethod
    async def register(self, node: SfuNode) -> None:
        """A node connected to this instance.  :raises NodeIdInUse:"""

    @abstractmethod
    async def heartbeat(self, sid: str, load: dict[str, Any]) -> SfuNode | None:
        """A load report from a node connected here; it refreshes the node's heartbeat.

        ``load["room_states"]`` (``{room: {"live", "viewers"}}``), when present, re-asserts
        the rooms the node hosts, so room state heals after a Redis restart."""

    @abstractmethod
    async def unregister(self, sid: str) -> SfuNode | None:
        """The node's connection dropped: forget it and release its rooms (unless closing).

        :returns: the node, or ``None`` when it was not registered (any more)."""

    # ------------------------------------------------------------- rooms
    @abstractmethod
    async def node_for_room(self, room: str) -> SfuNode:
        """The node hosting ``room``, else the one `placement` picks (then sticky).

        :raises NoNodeAvailable: no available node.
        :raises RegistryUnavailable: the shared state cannot be reached (Redis mode)."""

    @abstractmethod
    async def release_room(self, room: str, node: SfuNode | None = None) -> None:
        """Forget where ``room`` is placed (only if on ``node`` when given)."""

    @abstractmethod
    async def update_room(self, node: SfuNode, room: str, state: dict[str, Any]) -> None:
        """A node's room state ``{live, viewers, pipes, pipe?}``: the room is placed on the
        node while `occupied`, released when idle; an edge's state (``pipe``) is ignored."""

    # ------------------------------------------------------------- events
    async def broadcast(self, event: str, node: SfuNode, data: dict[str, Any]) -> None:
        """Send a node event to the other signaling instances (none in memory)."""
        return None

    async def check(self) -> str | None:
        """``None`` when the shared state is usable, else why not (for ``/readyz``)."""
        return None

    def reachable(self, node: SfuNode) -> bool:
        """Whether an RPC to ``node`` can be delivered now."""
        return True

    # ------------------------------------------------------------ helpers
    async def _deliver(self, event: str, node: SfuNode, data: dict[str, Any]) -> None:
        if self.listener is not None:
            try:
                await _maybe_await(self.listener(event, node, data))
            except Exception:
                logger.exception("node event %s failed", event)

    async def _disconnect(self, sid: str) -> None:
        if self.disconnect is not None:
            with contextlib.suppress(Exception):
                await self.disconnect(sid)


class _ExpiryClock:
    """Tells stale nodes from a stalled event loop: if this process itself was stalled
    (a tick came much later than scheduled), reports could not be received either, so
    the local nodes get a fresh ``seen`` instead of being declared lost."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last = time.monotonic()

    def stalled(self) -> bool:
        now = time.monotonic()
        late = now - self.last - self.interval
        self.last = now
        return late > 1.0


class MemoryNodeRegistry(NodeRegistry):
    """In-memory registry (one signaling process): nodes by sid, rooms by sid."""

    def __init__(self, placement: PlacementStrategy | None = None, ttl: float = DEFAULT_NODE_TTL_S) -> None:
        super().__init__(placement, ttl)
        self.room_nodes: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._expire_forever(), name="node-expiry")

    async def close(self) -> None:
        await super().close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def register(self, node: SfuNode) -> None:
        self.nodes[node.sid] = node

    async def heartbeat(self, sid: str, load: dict[str, Any]) -> SfuNode | None:
        node = self.nodes.get(sid)
        if node is not None:
            node.load = load_view(load)
            node.seen = time.monotonic()
        return node

    async def unregister(self, sid: str) -> SfuNode | None:
        node = self.nodes.pop(sid, None)
        for room in [r for r, s in self.room_nodes.items() if s == sid]:
            del self.room_nodes[room]
        return node

    async def node_for_room(self, room: str) -> SfuNode:
        sid = self.room_nodes.get(room)
        if sid is not None and sid in self.nodes and self.nodes[sid].role != "hls":
            return self.nodes[sid]
        candidates = [n for n in self.nodes.values() if n.placeable]
        if not candidates:
            raise NoNodeAvailable("no SFU node is available")
        node = self.placement(room, candidates)
        self.room_nodes[room] = node.sid
        return node

    async def release_room(self, room: str, node: SfuNode | None = None) -> None:
        if node is None or self.room_nodes.get(room) == node.sid:
            self.room_nodes.pop(room, None)

    async def update_room(self, node: SfuNode, room: str, state: dict[str, Any]) -> None:
        if state.get("pipe") or node.role == "hls":
            return
        if not occupied(state):
            await self.release_room(room, node)
        elif self.room_nodes.get(room) not in self.nodes:  # e.g. the node reconnected
            self.room_nodes[room] = node.sid

    async def _expire_forever(self) -> None:
        interval = min(1.0, self.ttl / 4)
        clock = _ExpiryClock(interval)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if clock.stalled():
                for node in self.nodes.values():
                    node.seen = now
                continue
            for node in [n for n in self.nodes.values() if now - n.seen > self.ttl]:
                if await self.unregister(node.sid) is not None:
                    logger.warning("SFU node %s missed its heartbeats for %.1f s: gone",
                                   node.node_id, now - node.seen)
                    await self._deliver(NodeEvent.NODE_LOST, node, {})
                    await self._disconnect(node.sid)


class SfuNamespace(socketio.AsyncNamespace):
    """Socket.IO namespace SFU nodes connect to (auth: node id + shared secret)."""

    def __init__(
        self,
        secret: str,
        registry: NodeRegistry,
        on_event: NodeEventListener,
        auth_throttle: NodeAuthThrottle | None = None,
    ) -> None:
        super().__init__(NAMESPACE)
        self._secret = secret
        self.auth_throttle = auth_throttle or NodeAuthThrottle()
        """Bad node secrets per client address: lockout and rate-limited WARNING."""
        self.registry = registry
        self._on_event = on_event
        registry.listener = on_event
        registry.disconnect = self._disconnect_node
        self._locks: dict[str, asyncio.Lock] = {}
        self.chat: ChatService | None = None
        """The chat authority nodes' ``chat_send``/``chat_history`` go to (set by ``create_app``)."""

    async def _disconnect_node(self, sid: str) -> None:
        await self.server.disconnect(sid, namespace=NAMESPACE)

    async def _dispatch(self, event: str, node: SfuNode, data: dict[str, Any]) -> None:
        """An event of a node connected here: this instance's app, then the others."""
        await _maybe_await(self._on_event(event, node, data))
        await self.registry.broadcast(event, node, data)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Admit a node: its connection was opened on ``/{SOCKETIO_PATH}/`` (a public edge
        denies that path), its address is not locked out (`NodeAuthThrottle`) and
        ``auth`` is ``{"node_id", "secret", "address"?, "role"?}`` with the shared secret (compared
        in constant time); ``auth["role"]`` (optional, `sfu.config.NODE_ROLES`, default
        ``"media"``) is the node's role until its first load report.
        :raises ConnectionRefusedError: saying which rule failed."""
        request = handshake_request(environ)
        if request is None or not request.path.startswith(f"/{SOCKETIO_PATH}/"):
            logger.debug("refused a %s connection opened on %s", NAMESPACE, request and request.path)
            raise socketio.exceptions.ConnectionRefusedError(
                f"SFU nodes connect on /{SOCKETIO_PATH}/ (socketio_path={SOCKETIO_PATH!r})")
        address = client_of(request)
        locked_s = self.auth_throttle.locked(address)
        if locked_s > 0:  # refused without looking at the secret
            self.auth_throttle.refused(address, bad_secret=False)
            raise socketio.exceptions.ConnectionRefusedError(
                f"too many bad node credentials from {address}; retry in {math.ceil(locked_s)} s")
        secret = auth.get("secret") if isinstance(auth, dict) else None
        if not isinstance(secret, str) or not hmac.compare_digest(secret.encode(), self._secret.encode()):
            self.auth_throttle.refused(address, bad_secret=True)
            raise socketio.exceptions.ConnectionRefusedError(
                "bad node credentials" if isinstance(secret, str) else "node credentials required")
        role = auth.get("role") if auth.get("role") in NODE_ROLES else "media"
        node = SfuNode(sid=sid, node_id=str(auth.get("node_id") or sid), address=str(auth.get("address") or ""),
                       registered_role=role)
        try:
            await self.registry.register(node)
        except NodeIdInUse as exc:
            logger.warning("refused SFU node %s: %s", node.node_id, exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        logger.info("SFU node %s registered", node.node_id)

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        self._locks.pop(sid, None)
        node = await self.registry.unregister(sid)
        if node is not None:
            logger.warning("SFU node %s disconnected", node.node_id)
            await self._dispatch(NodeEvent.NODE_LOST, node, {})

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """python-socketio runs every event in its own task; a node's events must be
        handled in the order it sent them (a burst of room states would otherwise end
        on a stale one), so each node's events go through its own lock."""
        if event in (NodeEvent.LOAD, NodeEvent.ROOM_STATE, NodeEvent.SESSION_CLOSED,
                     NodeEvent.SESSION_CONNECTED) and args:
            lock = self._locks.setdefault(args[0], asyncio.Lock())
            async with lock:
                return await super().trigger_event(event, *args)
        return await super().trigger_event(event, *args)

    async def on_load(self, sid: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        node = self.registry.nodes.get(sid)
        first = node is not None and node.local and not node.load
        await self.registry.heartbeat(sid, data)
        states = data.get("room_states")
        if first and isinstance(states, dict):
            # A node (re)connecting says which rooms it hosts: every instance learns it now.
            for room, state in states.items():
                if isinstance(state, dict) and (occupied(state) or state.get("pipe")):
                    await self.on_room_state(sid, {**state, "room": room})

    async def on_session_closed(self, sid: str, data: Any) -> None:
        node = self.registry.nodes.get(sid)
        if node is not None and isinstance(data, dict):
            await self._dispatch(NodeEvent.SESSION_CLOSED, node, data)

    async def on_session_connected(self, sid: str, data: Any) -> None:
        """A session's ICE and DTLS are up (:class:`~sfu.protocol.SessionConnected`): it no
        longer counts as pending for its client address (:mod:`signaling.whip`)."""
        node = self.registry.nodes.get(sid)
        if node is None:
            return
        try:
            event = SessionConnected.from_wire(data)
        except ProtocolError:
            return
        await self._dispatch(NodeEvent.SESSION_CONNECTED, node, event.to_wire())

    async def on_room_state(self, sid: str, data: Any) -> None:
        node = self.registry.nodes.get(sid)
        if node is None or not isinstance(data, dict) or not isinstance(data.get("room"), str):
            return
        wire = RoomState.from_wire(data).to_wire()
        room = wire.pop("room")
        await self.registry.update_room(node, room, wire)
        await self._dispatch(NodeEvent.ROOM_STATE, node, {**wire, "room": room})

    async def on_chat_send(self, sid: str, data: Any) -> dict[str, Any]:
        """A data-channel message from a node's participant (:class:`~sfu.protocol.NodeCall`):
        ``{room, participant, text}`` → ``{"message"}`` or ``{"error", "detail", "retry_after"?}``.
        The node is authenticated, so the participant's identity is its session's."""
        if self.chat is None or sid not in self.registry.nodes or not isinstance(data, dict):
            return {"error": "unavailable", "detail": "chat is not served here"}
        room, text, deadline = data.get("room"), data.get("text"), data.get("deadline")
        if isinstance(deadline, int | float) and time.time() * 1000 > deadline:
            return {"error": "unavailable", "detail": "chat is too busy right now; not sent"}
        try:
            identity = Identity.from_dict(data.get("participant"))
        except ProtocolError as exc:
            return {"error": "bad_message", "detail": str(exc)}
        if not isinstance(room, str) or not isinstance(text, str) or identity.role == SessionKind.PIPE:
            return {"error": "bad_message", "detail": "expected {room, participant, text}"}
        sender = Sender(identity.id, identity.name, str(identity.role), identity.user, "datachannel")
        try:
            return {"message": await self.chat.submit(room, sender, text)}
        except ChatRefused as refused:
            return refused.to_error()

    async def on_chat_history(self, sid: str, data: Any) -> dict[str, Any]:
        """``{room}`` → ``{"messages": [...]}`` (oldest first) or ``{"error", "detail"}``."""
        if self.chat is None or sid not in self.registry.nodes or not isinstance(data, dict) \
                or not isinstance(data.get("room"), str):
            return {"error": "bad_message", "detail": "expected {room}"}
        try:
            return {"messages": await self.chat.history(data["room"])}
        except ChatUnavailable as exc:
            return {"error": "unavailable", "detail": str(exc)}

    async def deliver_chat(self, room: str, event: dict[str, Any]) -> None:
        """A :class:`~signaling.chat.ChatService` sink: ``event`` to every node connected to
        this instance (``chat_event``; a node without the room ignores it)."""
        data = {"room": room, "event": event}
        for node in list(self.registry.nodes.values()):
            if node.local:
                await self.server.emit(CHAT_EVENT, data, to=node.sid, namespace=NAMESPACE, ignore_queue=True)

    async def call(self, node: SfuNode, rpc: Rpc, data: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One RPC to a node (the transport under :class:`signaling.sfu_client.SfuClient`):
        the ack, or a :class:`~sfu.protocol.RpcError` object for a failure of the link itself
        (503 unreachable, 504 no ack in ``timeout`` s, 502 an ack that is not an object)."""
        if not self.registry.reachable(node):
            return RpcError(503, "SFU unavailable", f"node {node.node_id} is connected to another "
                            "signaling instance and Redis is unreachable").to_wire()
        try:
            result = await self.server.call(str(rpc), data, to=node.sid, namespace=NAMESPACE, timeout=timeout)
        except socketio.exceptions.TimeoutError:
            return RpcError(504, "SFU timeout", f"{rpc} timed out").to_wire()
        except Exception as exc:
            logger.info("RPC %s to node %s failed: %r", rpc, node.node_id, exc)
            return RpcError(503, "SFU unavailable", "the SFU node could not be reached").to_wire()
        if not isinstance(result, dict):
            return RpcError(502, "Bad SFU reply", f"{rpc} returned {type(result).__name__}").to_wire()
        return result



async def _maybe_await(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value
