"""Cascading: one room's audience spread over several SFU nodes.

A room's *origin* node holds its publisher.  When a WHEP viewer is placed on another
node — the origin is full or draining, or already has ``viewers_per_node`` viewers of
the room — signaling pipes the room from the origin to that *edge* node once
(mediasoup ``pipeToRouter`` style) and serves every later viewer there from the pipe:

1. ``pipe_offer`` on the origin → an SDP offer with the room's producers, ``sendonly``;
2. ``publish`` on the edge with identity role ``"pipe"`` → the edge's answer (the pipe
   is the edge room's publisher, so its viewers get ordinary local Producers);
3. ``pipe_answer`` on the origin → forwarding starts.

The pipe is a WebRTC connection between the two nodes (ICE/DTLS-SRTP), negotiated only
through signaling over the nodes' authenticated ``/sfu`` links: each side accepts only
the DTLS fingerprint the other announced there.  Key-frame requests and NACKs of the
edge's viewers travel back across it as they would from a viewer on the origin.

Who tears pipes down:

* the edge, after ``RELAYCAST_PIPE_LINGER_S`` without a viewer (its ``session_closed``
  makes signaling close the origin side);
* signaling, when a node is lost: pipes from a lost origin are closed on their edges
  (the edges' viewers stay and wait: an edge with viewers becomes the room's origin
  for the broadcaster's next publish, and when the room goes live on a node, every
  other node with viewers of it is piped from there), pipes to a lost edge are closed
  on the origin;
* the origin, when an edge's connection fails (ICE consent), like any session.

Pipe records (room, edge → origin, session, ready) live in a `PipeRegistry`: in memory
for one signaling process, in Redis (``relaycast:pipes:{room}``, kept alive by the edge
node's heartbeats) when several instances must not open the same pipe twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sfu.protocol import (
    Identity,
    NodeEvent,
    OpenSession,
    PipeAnswer,
    PipeOffer,
    ProtocolError,
    RpcError,
    SessionClosed,
    SessionKind,
)

from .nodes import NoNodeAvailable, PlacementStrategy, SfuNode, acts_on, least_loaded
from .sfu_client import RpcFailed, SfuClient

if TYPE_CHECKING:
    from .nodes import SfuNamespace
    from .redis_state import RedisNodeRegistry
    from .rooms import RoomRegistry

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 15.0
"""A pipe still "opening" after this long is taken for dead (its opener failed)."""


@dataclass
class Pipe:
    """A node pipe of ``room`` from node ``origin`` to node ``edge`` (node ids).

    :ivar session: the pipe's session id (the same on both nodes).
    :ivar ready: forwarding; ``False`` while it is being opened.
    :ivar written_at_ms: when the record was written, Unix time in ms.
    """

    room: str
    edge: str
    origin: str
    session: str
    ready: bool = False
    written_at_ms: int = 0

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k not in ("room", "edge")})

    @classmethod
    def from_json(cls, room: str, edge: str, raw: str) -> Pipe | None:
        try:
            data = json.loads(raw)
            return cls(room, edge, str(data["origin"]), str(data["session"]), bool(data.get("ready")),
                       int(data.get("written_at_ms") or 0))
        except (ValueError, KeyError, TypeError):
            return None

    def fresh(self, now_ms: int) -> bool:
        """Usable, or being opened by someone for less than `OPEN_TIMEOUT_S`."""
        return self.ready or now_ms - self.written_at_ms < OPEN_TIMEOUT_S * 1000


class PipeFailed(Exception):
    """Opening a pipe failed; :attr:`error` is the failing RPC's error (its ``status`` is the
    HTTP status to answer with)."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(f"{error.status} {error.title}: {error.detail}")
        self.error = error


class PipeRegistry(ABC):
    """Where the pipes of every room are recorded (one record per room and edge)."""

    @abstractmethod
    async def claim(self, pipe: Pipe) -> tuple[bool, Pipe | None]:
        """Record ``pipe`` (opening) unless a fresh pipe of the room from the same origin
        to the same edge is recorded.  :returns: ``(True, replaced record or None)``, or
        ``(False, the existing record)``."""

    @abstractmethod
    async def update(self, pipe: Pipe) -> None:
        """Rewrite the record if it still belongs to ``pipe.session``."""

    @abstractmethod
    async def of_room(self, room: str) -> list[Pipe]:
        """The room's pipe records."""

    @abstractmethod
    async def drop(self, room: str, edge: str, session: str | None = None) -> Pipe | None:
        """Remove the record (only if of ``session`` when given); returns it."""

    @abstractmethod
    async def all(self) -> list[Pipe]:
        """Every pipe record (for cleaning up after a lost node)."""


class MemoryPipeRegistry(PipeRegistry):
    """One signaling process: a dict."""

    def __init__(self) -> None:
        self.pipes: dict[tuple[str, str], Pipe] = {}

    async def claim(self, pipe: Pipe) -> tuple[bool, Pipe | None]:
        current = self.pipes.get((pipe.room, pipe.edge))
        if current is not None and current.origin == pipe.origin and current.fresh(pipe.written_at_ms):
            return False, current
        self.pipes[(pipe.room, pipe.edge)] = pipe
        return True, current

    async def update(self, pipe: Pipe) -> None:
        current = self.pipes.get((pipe.room, pipe.edge))
        if current is not None and current.session == pipe.session:
            self.pipes[(pipe.room, pipe.edge)] = pipe

    async def of_room(self, room: str) -> list[Pipe]:
        return [p for (r, _), p in self.pipes.items() if r == room]

    async def drop(self, room: str, edge: str, session: str | None = None) -> Pipe | None:
        current = self.pipes.get((room, edge))
        if current is None or (session is not None and current.session != session):
            return None
        return self.pipes.pop((room, edge))

    async def all(self) -> list[Pipe]:
        return list(self.pipes.values())


# KEYS[1] pipes hash.  ARGV: edge, new record (JSON), origin, now ms, open timeout ms, ttl ms.
_CLAIM_PIPE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, p = pcall(cjson.decode, cur)
  if ok and p.origin == ARGV[3] and (p.ready or tonumber(ARGV[4]) - tonumber(p.written_at_ms) < tonumber(ARGV[5])) then
    return {0, cur}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return {1, cur or ''}
"""

# KEYS[1] pipes hash.  ARGV: edge, session ('' = any), new record ('' = delete).
_SWAP_PIPE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
if ARGV[2] ~= '' then
  local ok, p = pcall(cjson.decode, cur)
  if not ok or p.session ~= ARGV[2] then return false end
end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return cur
"""


class RedisPipeRegistry(PipeRegistry):
    """Pipe records in ``relaycast:pipes:{room}`` (hash: edge node id → JSON record).

    The hash's TTL is refreshed by the heartbeats of the edge nodes that report the
    room as pipe-fed, so records of pipes nobody serves any more expire on their own.
    """

    def __init__(self, registry: RedisNodeRegistry) -> None:
        self.registry = registry
        self._open_ms = int(OPEN_TIMEOUT_S * 1000)

    async def claim(self, pipe: Pipe) -> tuple[bool, Pipe | None]:
        r = self.registry
        ttl_ms = max(r._ttl_ms, self._open_ms)
        claimed, raw = await r._op(r.redis.eval(_CLAIM_PIPE, 1, r.k_pipes(pipe.room), pipe.edge,
                                                pipe.to_json(), pipe.origin, pipe.written_at_ms, self._open_ms, ttl_ms))
        other = Pipe.from_json(pipe.room, pipe.edge, raw) if raw else None
        return bool(int(claimed)), other

    async def update(self, pipe: Pipe) -> None:
        r = self.registry
        await r._op(r.redis.eval(_SWAP_PIPE, 1, r.k_pipes(pipe.room), pipe.edge, pipe.session, pipe.to_json()))

    async def of_room(self, room: str) -> list[Pipe]:
        r = self.registry
        records = await r._op(r.redis.hgetall(r.k_pipes(room)))
        pipes = [Pipe.from_json(room, edge, raw) for edge, raw in records.items()]
        return [p for p in pipes if p is not None]

    async def drop(self, room: str, edge: str, session: str | None = None) -> Pipe | None:
        r = self.registry
        raw = await r._op(r.redis.eval(_SWAP_PIPE, 1, r.k_pipes(room), edge, session or "", ""))
        return Pipe.from_json(room, edge, raw) if raw else None

    async def all(self) -> list[Pipe]:
        r = self.registry
        prefix = r.k_pipes("")

        async def scan() -> list[Pipe]:
            pipes: list[Pipe] = []
            async for key in r.redis.scan_iter(match=prefix + "*", count=200):
                pipes += await self.of_room(key[len(prefix):])
            return pipes

        return await r._op(scan())


class Cascade:
    """Places WHEP viewers across nodes and keeps the room's pipes (see module doc).

    :param namespace: the ``/sfu`` namespace (RPCs to nodes, the `NodeRegistry`).
    :param registry: pipe records (`MemoryPipeRegistry` or `RedisPipeRegistry`).
    :param viewers_per_node: 0 = cascade only when the origin is full or draining.
    :param placement: picks the edge among available nodes when none of them is
        already an edge of the room (default `least_loaded`).
    :param rooms: this instance's `RoomRegistry` (per-node viewer counts).
    """

    def __init__(
        self,
        namespace: SfuNamespace,
        registry: PipeRegistry,
        *,
        viewers_per_node: int = 0,
        rpc_timeout_s: float = 15.0,
        placement: PlacementStrategy | None = None,
        rooms: RoomRegistry | None = None,
    ) -> None:
        self.namespace = namespace
        self.client = SfuClient(namespace, rpc_timeout_s)
        self.rooms = rooms
        self.registry = registry
        self.viewers_per_node = viewers_per_node
        self.rpc_timeout_s = rpc_timeout_s
        self.placement = placement or least_loaded
        self._opening: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live_on: dict[str, str] = {}  # room → origin node id, rooms live on local nodes

    # ---------------------------------------------------------- placement
    def viewers_on(self, node: SfuNode, room: str) -> int:
        """Viewers of ``room`` on ``node``: from the nodes' room-state events when this
        instance has them (immediate), else from the node's last load report."""
        record = self.rooms.get(room) if self.rooms is not None else None
        if record is not None and node.node_id in record.node_viewers:
            return record.node_viewers[node.node_id]
        return node.room_viewers(room)

    def _fits(self, node: SfuNode, room: str) -> bool:
        return node.accepts_viewers and (self.viewers_per_node <= 0
                                   or self.viewers_on(node, room) < self.viewers_per_node)

    async def node_for_viewer(self, room: str, origin: SfuNode) -> SfuNode:
        """The node a new viewer of ``room`` should use: the origin while it fits, else an
        edge (one already fed by a pipe first), piped from the origin when new.  When every
        node has ``viewers_per_node`` viewers of the room, the origin takes more while it
        admits viewers, then any node that still does.  An ``hls`` node
        (`SfuNode.placeable`) is never an edge for viewers.

        Viewer counts come from the nodes' room-state events, so joins racing each other
        (POSTs before the previous viewer's session is reported) may overshoot
        ``viewers_per_node`` by a few.

        :raises PipeFailed: the pipe to the chosen edge could not be opened.
        :raises RegistryUnavailable: Redis is unreachable (Redis mode).
        """
        if self._fits(origin, room):
            return origin
        nodes = [n for n in self.namespace.registry.nodes.values()
                 if n.node_id != origin.node_id and n.role != "hls"]
        others = [n for n in nodes if self._fits(n, room)]
        if not others:
            if origin.accepts_viewers:
                return origin  # every node has its share of the room: the origin takes more
            # The origin has no session left for viewers: any node that has one.
            others = [n for n in nodes if n.accepts_viewers]
        if not others:
            return origin  # full everywhere: the origin answers (503 + Retry-After)
        edges = {p.edge for p in await self.registry.of_room(room) if p.origin == origin.node_id}
        piped = [n for n in others if n.node_id in edges]
        edge = least_loaded(room, piped) if piped else self.placement(room, others)
        await self.ensure_pipe(room, origin, edge)
        return edge

    async def pull_into(self, room: str, node_id: str) -> bool:
        """Pipe ``room`` from its origin into node ``node_id`` (an LL-HLS bridge's own
        node, usually of role ``hls``, which viewer placement skips) when the room is live
        on another node.  :returns: whether it is piped."""
        record = self.rooms.get(room) if self.rooms is not None else None
        if record is None or not record.live or record.node in (None, node_id):
            return False
        nodes = self._nodes_by_id()
        origin, here = nodes.get(record.node or ""), nodes.get(node_id)
        if origin is None or here is None:
            return False
        try:
            await self.ensure_pipe(room, origin, here)
        except (PipeFailed, NoNodeAvailable) as exc:
            logger.warning("room %s: no pipe into %s for LL-HLS: %s", room, node_id, exc)
            return False
        return True

    # --------------------------------------------------------------- pipes
    async def ensure_pipe(self, room: str, origin: SfuNode, edge: SfuNode) -> None:
        """Make ``edge`` serve ``room`` from a pipe from ``origin`` (no-op when it does).

        Concurrent callers — here or on other instances — share one opening.

        :raises PipeFailed: an RPC failed (its ``error`` tells the HTTP status).
        """
        key = (room, edge.node_id)
        task = self._opening.get(key)
        if task is None:
            task = asyncio.ensure_future(self._ensure(room, origin, edge))
            self._opening[key] = task
            task.add_done_callback(lambda _: self._opening.pop(key, None))
        await asyncio.shield(task)

    async def _ensure(self, room: str, origin: SfuNode, edge: SfuNode) -> None:
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            pipe = Pipe(room, edge.node_id, origin.node_id, "pipe-" + secrets.token_urlsafe(18),
                        written_at_ms=int(time.time() * 1000))
            claimed, other = await self.registry.claim(pipe)
            if claimed:
                if other is not None:  # a pipe from an earlier origin (or a failed opening)
                    self._spawn(self._close_pipe(other, edge_side=True, origin_side=True))
                await self._open(pipe, origin, edge)
                return
            if other is not None and other.ready:
                return
            if time.monotonic() > deadline:
                raise PipeFailed(RpcError(503, "SFU unavailable", f"the pipe of room {room!r} to "
                                          f"{edge.node_id} is still being opened"))
            await asyncio.sleep(0.05)  # another instance is opening it

    async def _open(self, pipe: Pipe, origin: SfuNode, edge: SfuNode) -> None:
        client = self.client
        started = time.monotonic()
        try:
            try:
                offer = await client.pipe_offer(origin, PipeOffer(pipe.room, pipe.session, Identity(
                    f"pipe-{edge.node_id}"[:32], f"pipe to {edge.node_id}"[:64], SessionKind.PIPE)))
                answer = await client.publish(edge, OpenSession(pipe.room, pipe.session, offer.sdp, Identity(
                    f"pipe-{origin.node_id}"[:32], f"pipe from {origin.node_id}"[:64], SessionKind.PIPE)))
                await client.pipe_answer(origin, PipeAnswer(pipe.session, answer.sdp))
            except RpcFailed as exc:
                raise PipeFailed(exc.error) from None
            pipe.ready, pipe.written_at_ms = True, int(time.time() * 1000)
            await self.registry.update(pipe)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.registry.drop(pipe.room, pipe.edge, pipe.session)
            self._spawn(self._close_pipe(pipe, edge_side=True, origin_side=True))
            raise
        logger.info("room %s: piped from %s to %s in %.0f ms", pipe.room, origin.node_id, edge.node_id,
                    (time.monotonic() - started) * 1000)

    async def _close_pipe(self, pipe: Pipe, *, edge_side: bool, origin_side: bool) -> None:
        """Close the pipe's session on the named sides (best effort; unknown → ignored)."""
        nodes = self._nodes_by_id()
        for side, node_id in ((edge_side, pipe.edge), (origin_side, pipe.origin)):
            node = nodes.get(node_id)
            if side and node is not None:
                with contextlib.suppress(RpcFailed):  # already gone there
                    await self.client.close(node, pipe.session)

    def _nodes_by_id(self) -> dict[str, SfuNode]:
        return {n.node_id: n for n in self.namespace.registry.nodes.values()}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.warning("pipe clean-up failed: %r", t.exception())

        task.add_done_callback(done)

    # -------------------------------------------------------------- events
    async def on_node_event(self, event: str, node: SfuNode, data: dict[str, Any]) -> None:
        """Node events; only the instance that `acts_on` them does anything."""
        if not acts_on(node, data):
            return
        try:
            if event == NodeEvent.SESSION_CLOSED:
                closed = SessionClosed.from_wire(data)
                if closed.kind == SessionKind.PIPE:
                    await self._pipe_closed(node, closed.room, closed.session_id)
            elif event == NodeEvent.NODE_LOST:
                await self._node_lost(node)
            elif event == NodeEvent.ROOM_STATE and not data.get("pipe"):
                room = str(data.get("room"))
                if not data.get("live"):
                    self._live_on.pop(room, None)
                elif self._live_on.get(room) != node.node_id:  # went live here just now
                    self._live_on[room] = node.node_id
                    await self._repipe(node, room)
        except ProtocolError as exc:
            logger.info("ignored a malformed %s event from node %s: %s", event, node.node_id, exc)
        except NoNodeAvailable as exc:  # RegistryUnavailable: Redis down; records expire
            logger.warning("pipe bookkeeping for %s skipped: %s", event, exc)

    async def _pipe_closed(self, node: SfuNode, room: str, session: str) -> None:
        """One side of a pipe ended: end the other side too."""
        for pipe in await self.registry.of_room(room):
            if pipe.session == session:
                await self.registry.drop(room, pipe.edge, session)
                await self._close_pipe(pipe, edge_side=node.node_id != pipe.edge,
                                       origin_side=node.node_id != pipe.origin)

    async def _node_lost(self, node: SfuNode) -> None:
        for pipe in await self.registry.all():
            if node.node_id in (pipe.edge, pipe.origin):
                await self.registry.drop(pipe.room, pipe.edge, pipe.session)
                # A lost edge: free the origin's side.  A lost origin: end the pipe on the
                # edge, whose viewers stay and wait for the room's next origin (`_repipe`).
                self._spawn(self._close_pipe(pipe, edge_side=pipe.origin == node.node_id,
                                             origin_side=pipe.edge == node.node_id))

    async def _repipe(self, origin: SfuNode, room: str) -> None:
        """The room went live on ``origin``: every other node that still has viewers of
        the room (edges of a lost origin, or of the publisher's previous node) is piped
        from here, so those viewers resume without a new WHEP request."""
        for node in list(self.namespace.registry.nodes.values()):
            if node.node_id != origin.node_id and self.viewers_on(node, room):
                self._spawn(self.ensure_pipe(room, origin, node))

    async def close(self) -> None:
        for task in list(self._tasks) + list(self._opening.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._opening.values(), return_exceptions=True)
