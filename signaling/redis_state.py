"""Redis mode (``REDIS_URL``): SFU nodes, the room → node map and room state shared by
several signaling instances, and python-socketio's `AsyncRedisManager` for their
Socket.IO traffic.

Keys (prefix ``relaycast:``; every key has a TTL, so nothing outlives its owner):

=================================  ======  ==============================================  =========
key                                type    content                                         TTL
=================================  ======  ==============================================  =========
``relaycast:node:{node_id}``       hash    sid, node_id, address, instance, sessions,      ``ttl``
                                           capacity, draining, load (JSON), seen (ms)      (4 s)
``relaycast:node:{node_id}:rooms`` set     rooms placed on the node                        ``ttl``
``relaycast:nodes``                zset    node ids (score: last heartbeat, ms)            ``ttl``
``relaycast:room:{room}``          hash    node (origin node id), live (0/1), viewers,     ``ttl``
                                           updated (ms)
``relaycast:pipes:{room}``         hash    the room's node pipes: edge node id → JSON      ``ttl``
                                           {origin, session, ready, written_at_ms}
``relaycast:instance:{id}``        string  a signaling instance is alive                   ``ttl``
``relaycast:events``               pubsub  node events between signaling instances         —
``relaycast:socketio``             pubsub  python-socketio's manager channel               —
=================================  ======  ==============================================  =========

A node's load report (every second, through the signaling instance it is connected
to) is its heartbeat: it rewrites the node hash and re-asserts the rooms the node
reports (``room_states``), refreshing all their TTLs (an edge node's pipe-fed rooms
refresh the rooms' pipe records instead).  A node is gone when its
connection drops (that instance releases it at once) or when its hash expires
(the first instance whose sync loop sees it missing releases its rooms).  Room state
therefore survives a signaling restart and heals within a second of a Redis restart.
An instance shutting down orphans its nodes' hashes (``instance`` = "") so nobody
places sessions on their dead connections until they re-register (takeover).

Redis calls are bounded (1 s socket timeouts, one immediate retry, ``op_timeout``
overall); an unreachable Redis makes placement raise `RegistryUnavailable` (503 +
``Retry-After`` at the HTTP edge) and ``/readyz`` answer 503, while existing sessions
keep running; background loops reconnect with a capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
import socketio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from sfu.protocol import NodeEvent

from .nodes import (
    DEFAULT_NODE_TTL_S,
    NodeIdInUse,
    NodeRegistry,
    NoNodeAvailable,
    PlacementStrategy,
    RegistryUnavailable,
    SfuNode,
    _ExpiryClock,
    load_view,
    occupied,
)

if TYPE_CHECKING:
    from .rooms import RoomRegistry

logger = logging.getLogger(__name__)

PREFIX = "relaycast:"
T = TypeVar("T")


def client_options() -> dict[str, Any]:
    """Options for every Redis client: short timeouts, one quick retry (a pooled
    connection may be stale after a Redis restart), no unbounded waits."""
    return {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
    }


async def cancel_and_wait(task: asyncio.Future[Any], retry_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again every ``retry_s`` s.

    On Python 3.11, ``asyncio.wait_for`` can swallow a cancellation that arrives as its inner
    awaitable completes (fixed in 3.12); a loop built on it then carries on, and a plain
    ``await task`` after ``cancel()`` would wait forever.  The task's own exception, if any,
    is logged at DEBUG (it is ending on purpose).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled() and task.exception() is not None:
        logger.debug("background task ended with %r", task.exception())


def make_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True, **client_options())


# KEYS[1] room hash.  ARGV: node id, ttl ms, room, prefix, live ("" = claim only), viewers, now ms.
# Claims the room for the node unless a live other node holds it; returns the holder.
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'node')
if cur and cur ~= ARGV[1] then
  if redis.call('EXISTS', ARGV[4] .. 'node:' .. cur) == 1 then return cur end
  redis.call('SREM', ARGV[4] .. 'node:' .. cur .. ':rooms', ARGV[3])
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'updated', ARGV[7])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'live', ARGV[5], 'viewers', ARGV[6])
elseif redis.call('HEXISTS', KEYS[1], 'live') == 0 then
  redis.call('HSET', KEYS[1], 'live', '0', 'viewers', '0')
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local set = ARGV[4] .. 'node:' .. ARGV[1] .. ':rooms'
redis.call('SADD', set, ARGV[3])
redis.call('PEXPIRE', set, ARGV[2])
return ARGV[1]
"""

# KEYS[1] room hash.  ARGV: node id ("" = any), room, prefix.  Deletes the placement.
_RELEASE = """
local cur = redis.call('HGET', KEYS[1], 'node')
if not cur then return 0 end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[3] .. 'node:' .. cur .. ':rooms', ARGV[2])
return 1
"""

# Releases a node's rooms (those still placed on it) and forgets the node.
# KEYS: node hash, node rooms set, nodes zset.  ARGV: node id, prefix, mode, sid.
# mode "sid": unless the hash belongs to another connection than ARGV[4] (a disconnect).
# mode "expired": only if the hash is gone and this call removes the zset entry (a reaper;
# exactly one instance wins).  Returns the released rooms, or false.
_FORGET = """
if ARGV[3] == 'sid' then
  local cur = redis.call('HGET', KEYS[1], 'sid')
  if cur and cur ~= ARGV[4] then return false end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  if redis.call('EXISTS', KEYS[1]) == 1 then return false end
  if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return false end
end
local released = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[2] .. 'room:' .. room
  if redis.call('HGET', key, 'node') == ARGV[1] then
    redis.call('DEL', key)
    table.insert(released, room)
  end
end
redis.call('DEL', KEYS[2])
return released
"""


class RedisNodeRegistry(NodeRegistry):
    """`NodeRegistry` over Redis, shared by every signaling instance using the same Redis.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` URL.
    :param placement: strategy for rooms not placed yet (default `least_loaded`).
    :param ttl: heartbeat TTL, seconds: a node silent this long is gone.
    :param rooms: this instance's `RoomRegistry`, kept in step with the rooms' state
        in Redis (at start, after Redis comes back, and every few seconds).
    :param op_timeout: bound on any Redis operation a request waits for.
    :param extra_check: another readiness check (the Socket.IO manager's).
    """

    def __init__(
        self,
        url: str,
        *,
        placement: PlacementStrategy | None = None,
        ttl: float = DEFAULT_NODE_TTL_S,
        rooms: RoomRegistry | None = None,
        prefix: str = PREFIX,
        op_timeout: float = 2.0,
        extra_check: Callable[[], str | None] | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(placement, ttl)
        self.url = url
        self.prefix = prefix
        # decode_responses=True: str replies (redis-py's types say bytes | str).
        self.redis: Any = make_client(url)
        self.instance = instance_id or uuid.uuid4().hex[:12]
        self.rooms = rooms
        self.op_timeout = op_timeout
        self.interval = max(0.1, ttl / 8)
        self.healthy = False
        self.problem = "not started"
        self._extra_check = extra_check
        self._local: dict[str, SfuNode] = {}
        self._writing: set[str] = set()
        self._recently_lost: dict[str, float] = {}
        self._orphans: dict[str, SfuNode] = {}
        self._subscribed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._ttl_ms = int(ttl * 1000)

    # --------------------------------------------------------------- keys
    def k_node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def k_node_sessions(self, node_id: str) -> str:
        """The node's WHIP/WHEP session records (:class:`signaling.sessions.RedisSessionStore`)."""
        return f"{self.prefix}node:{node_id}:sessions"

    @property
    def ttl_ms(self) -> int:
        """Lifetime of the keys a node's load reports keep alive, ms."""
        return self._ttl_ms

    def k_node_rooms(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:rooms"

    def k_room(self, room: str) -> str:
        return f"{self.prefix}room:{room}"

    def k_pipes(self, room: str) -> str:
        return f"{self.prefix}pipes:{room}"

    @property
    def k_nodes(self) -> str:
        return f"{self.prefix}nodes"

    @property
    def k_instance(self) -> str:
        return f"{self.prefix}instance:{self.instance}"

    @property
    def channel(self) -> str:
        return f"{self.prefix}events"

    # ---------------------------------------------------------- plumbing
    async def _op(self, awaitable: Awaitable[T]) -> T:
        """Run one Redis operation with a bound; failures become `RegistryUnavailable`."""
        try:
            result = await asyncio.wait_for(awaitable, self.op_timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            raise RegistryUnavailable(f"Redis is unreachable ({type(exc).__name__})") from exc
        return result

    def _failed(self, exc: BaseException) -> None:
        if self.healthy:
            logger.warning("Redis unreachable: %s", exc or type(exc).__name__)
        self.healthy = False
        self.problem = f"Redis unreachable: {type(exc).__name__}"

    def _ok(self) -> None:
        if not self.healthy and self.problem != "not started":
            logger.info("Redis reachable again")
        self.healthy = True
        self.problem = ""

    def _node_from_hash(self, data: dict[str, str]) -> SfuNode | None:
        """The node a hash describes; ``None`` while it is orphaned (its instance shut down
        and it has not re-registered yet: RPCs to its old connection would go nowhere)."""
        sid = data.get("sid")
        if not sid or not data.get("instance"):
            return None
        local = self._local.get(sid)
        if local is not None:
            return local
        try:
            load = json.loads(data.get("load") or "{}")
        except ValueError:
            load = {}
        return SfuNode(sid=sid, node_id=data.get("node_id") or sid, address=data.get("address", ""),
                       load=load if isinstance(load, dict) else {}, local=False)

    # ---------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect (a failure is tolerated: the loops retry) and start the loops."""
        try:
            await self._sync()
            await self._resync_rooms()  # a restarted instance learns its rooms' state
        except RegistryUnavailable:
            logger.warning("Redis at startup: %s; retrying in the background", self.problem)
        self._tasks = [
            asyncio.create_task(self._sync_forever(), name="redis-node-sync"),
            asyncio.create_task(self._listen_forever(), name="redis-node-events"),
        ]

    async def close(self) -> None:
        await super().close()
        if self._local:  # orphan them: not placed on until they re-register somewhere
            pipe = self.redis.pipeline(transaction=False)
            for node in self._local.values():
                pipe.hset(self.k_node(node.node_id), "instance", "")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pipe.execute(), 1.0)
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.delete(self.k_instance), 1.0)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    # --------------------------------------------------------------- nodes
    async def register(self, node: SfuNode) -> None:
        node.local = True
        try:
            existing = await self._op(self.redis.hgetall(self.k_node(node.node_id)))
            old_sid = existing.get("sid")
            if old_sid and old_sid != node.sid:
                owner = existing.get("instance", "")
                if owner == self.instance:
                    in_use = old_sid in self._local
                else:
                    in_use = bool(await self._op(self.redis.exists(f"{self.prefix}instance:{owner}")))
                if in_use:
                    raise NodeIdInUse(f"node id {node.node_id!r} is already registered by a live connection")
                logger.info("SFU node %s takes over its previous registration", node.node_id)
        except RegistryUnavailable:
            logger.warning("registering SFU node %s without Redis (%s)", node.node_id, self.problem)
        self._local[node.sid] = node
        self.nodes[node.sid] = node
        with contextlib.suppress(RegistryUnavailable):
            await self._write_heartbeat(node, {})

    async def heartbeat(self, sid: str, load: dict[str, Any]) -> SfuNode | None:
        node = self._local.get(sid)
        if node is None or self.closing:
            return node
        room_states = load.get("room_states")
        node.load = load_view(load)
        node.seen = time.monotonic()
        if sid in self._writing:  # a slow write is still pending; the next report refreshes
            return node
        self._writing.add(sid)
        try:
            await self._write_heartbeat(node, room_states if isinstance(room_states, dict) else {})
        except RegistryUnavailable:
            pass
        finally:
            self._writing.discard(sid)
        return node

    async def _write_heartbeat(self, node: SfuNode, room_states: dict[str, Any]) -> None:
        now_ms = int(time.time() * 1000)
        key = self.k_node(node.node_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={
            "sid": node.sid, "node_id": node.node_id, "address": node.address,
            "instance": self.instance, "sessions": node.sessions, "capacity": node.capacity,
            "draining": int(node.draining), "load": json.dumps({"role": node.role, **node.load}),
            "seen": now_ms,
        })
        pipe.pexpire(key, self._ttl_ms)
        pipe.zadd(self.k_nodes, {node.node_id: now_ms})
        pipe.pexpire(self.k_nodes, self._ttl_ms)
        for room, state in room_states.items():
            if not isinstance(room, str) or not isinstance(state, dict):
                continue
            if state.get("pipe"):  # an edge: keeps the room's pipe records alive
                pipe.pexpire(self.k_pipes(room), self._ttl_ms)
            elif occupied(state):
                self._claim(pipe, room, node.node_id, bool(state.get("live")),
                            _int(state.get("viewers")), now_ms)
        pipe.pexpire(self.k_node_rooms(node.node_id), self._ttl_ms)
        pipe.pexpire(self.k_node_sessions(node.node_id), self._ttl_ms)
        await self._op(pipe.execute())

    def _claim(self, client: Any, room: str, node_id: str, live: bool | None, viewers: int,
               now_ms: int) -> Any:
        args = [node_id, self._ttl_ms, room, self.prefix,
                "" if live is None else int(live), viewers, now_ms]
        return client.eval(_CLAIM, 1, self.k_room(room), *args)

    async def unregister(self, sid: str) -> SfuNode | None:
        node = self._local.pop(sid, None)
        self.nodes.pop(sid, None)
        if node is None or self.closing:
            return None  # closing: the node reconnects elsewhere; its keys expire otherwise
        try:
            released = await self._forget(node, "sid")
        except RegistryUnavailable:
            return node  # its keys expire; another instance's sync releases its rooms
        if released is None:
            return None  # it re-registered through another connection meanwhile
        self._recently_lost[sid] = time.monotonic()
        return node

    async def _forget(self, node: SfuNode, mode: str) -> list[str] | None:
        keys = [self.k_node(node.node_id), self.k_node_rooms(node.node_id), self.k_nodes]
        result = await self._op(self.redis.eval(_FORGET, 3, *keys, node.node_id, self.prefix, mode, node.sid))
        if result is None or result is False:
            return None
        rooms = [str(r) for r in result]
        if rooms:
            logger.info("released rooms of SFU node %s: %s", node.node_id, ", ".join(sorted(rooms)))
        return rooms

    async def _live_nodes(self) -> list[SfuNode]:
        ids = await self._op(self.redis.zrange(self.k_nodes, 0, -1))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for node_id in ids:
            pipe.hgetall(self.k_node(node_id))
        hashes = await self._op(pipe.execute())
        nodes = [self._node_from_hash(h) for h in hashes if h]
        return [n for n in nodes if n is not None]

    async def _fetch_node(self, node_id: str) -> SfuNode | None:
        data = await self._op(self.redis.hgetall(self.k_node(node_id)))
        return self._node_from_hash(data) if data else None

    # --------------------------------------------------------------- rooms
    async def node_for_room(self, room: str) -> SfuNode:
        current = await self._op(self.redis.hget(self.k_room(room), "node"))
        if current:
            node = await self._fetch_node(current)
            if node is not None:
                return node
        candidates = [n for n in await self._live_nodes() if n.placeable]
        if not candidates:
            raise NoNodeAvailable("no SFU node is available")
        chosen = self.placement(room, candidates)
        holder = await self._op(self._claim(self.redis, room, chosen.node_id, None, 0,
                                            int(time.time() * 1000)))
        if holder == chosen.node_id:
            return chosen
        node = await self._fetch_node(str(holder))  # another instance placed it first
        if node is None:
            raise NoNodeAvailable("the room's SFU node just went away; retry")
        return node

    async def release_room(self, room: str, node: SfuNode | None = None) -> None:
        node_id = node.node_id if node is not None else ""
        await self._op(self.redis.eval(_RELEASE, 1, self.k_room(room), node_id, room, self.prefix))

    async def update_room(self, node: SfuNode, room: str, state: dict[str, Any]) -> None:
        if state.get("pipe"):
            return
        try:
            if not occupied(state):
                await self.release_room(room, node)
            else:
                await self._op(self._claim(self.redis, room, node.node_id, bool(state.get("live")),
                                           _int(state.get("viewers")), int(time.time() * 1000)))
        except RegistryUnavailable:
            pass  # the node's next heartbeats re-assert it

    async def room_state(self, room: str) -> dict[str, Any] | None:
        """``{"node", "live", "viewers"}`` of a placed room, else ``None``."""
        data = await self._op(self.redis.hgetall(self.k_room(room)))
        if not data:
            return None
        return {"node": data.get("node"), "live": data.get("live") == "1", "viewers": _int(data.get("viewers"))}

    async def _resync_rooms(self) -> None:
        """Copy the rooms' state from Redis into this instance's `RoomRegistry`."""
        if self.rooms is None or not self.rooms.rooms:
            return
        names = list(self.rooms.rooms)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.k_room(name))
        hashes = await self._op(pipe.execute())
        for name, data in zip(names, hashes, strict=True):
            room = self.rooms.get(name)
            if room is None:
                continue
            node_id = data.get("node")
            if node_id:
                room.apply_state(node_id, {"live": data.get("live") == "1", "viewers": _int(data.get("viewers"))})
            elif room.node is not None:
                room.forget_node(room.node)

    # -------------------------------------------------------------- events
    async def broadcast(self, event: str, node: SfuNode, data: dict[str, Any]) -> None:
        message = json.dumps({"i": self.instance, "e": event, "d": data,
                              "n": {"sid": node.sid, "node_id": node.node_id, "address": node.address}})
        with contextlib.suppress(RegistryUnavailable):
            await self._op(self.redis.publish(self.channel, message))

    async def _on_message(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            if message.get("i") == self.instance:
                return
            event, info, data = str(message["e"]), message["n"], message.get("d") or {}
            node = SfuNode(sid=str(info["sid"]), node_id=str(info["node_id"]),
                           address=str(info.get("address") or ""), local=False)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed node event")
            return
        if event == NodeEvent.NODE_LOST:
            known = self.nodes.pop(node.sid, None)
            if node.sid in self._recently_lost:
                return
            self._recently_lost[node.sid] = time.monotonic()
            node = known or node
        await self._deliver(event, node, data if isinstance(data, dict) else {})

    async def _listen_forever(self) -> None:
        backoff = 0.25
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(self.channel), self.op_timeout)
                self._subscribed, backoff = True, 0.25
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        await self._on_message(str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._subscribed:
                    logger.warning("node event bus lost (%s); resubscribing", type(exc).__name__)
                self._subscribed = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)

    # ---------------------------------------------------------------- sync
    async def _sync_forever(self) -> None:
        """Every ``ttl / 8`` s: instance heartbeat, cluster view, expiry; backoff on errors."""
        clock = _ExpiryClock(self.interval)
        backoff = self.interval
        resync_every = max(1, int(2.0 / self.interval))
        tick = 0
        while True:
            await asyncio.sleep(backoff)
            stalled = clock.stalled()
            was_healthy = self.healthy
            try:
                await self._sync(stalled=stalled)
                tick += 1
                if not was_healthy or tick % resync_every == 0:
                    await self._resync_rooms()
                backoff = self.interval
            except RegistryUnavailable:
                backoff = min(max(backoff * 2, 0.25), 2.0)
            except Exception:
                logger.exception("Redis node sync failed")
                backoff = min(max(backoff * 2, 0.25), 2.0)

    async def _sync(self, stalled: bool = False) -> None:
        now = time.monotonic()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.k_instance, "1", px=self._ttl_ms)
        pipe.zrange(self.k_nodes, 0, -1)
        _, ids = await self._op(pipe.execute())
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            for node_id in ids:
                pipe.hgetall(self.k_node(node_id))
            hashes = await self._op(pipe.execute())
        else:
            hashes = []
        previous = {sid: n for sid, n in self.nodes.items() if not n.local}
        known = {**{n.node_id: n for n in previous.values()}, **self._orphans}
        remote: dict[str, SfuNode] = {}
        orphans: dict[str, SfuNode] = {}
        for node_id, data in zip(ids, hashes, strict=True):
            if not data:  # expired
                if any(n.node_id == node_id and now - n.seen <= self.ttl for n in self._local.values()):
                    continue  # reporting here: its next heartbeat rewrites the hash
                await self._reap(known.get(node_id) or SfuNode(sid="", node_id=node_id, local=False))
                continue
            node = self._node_from_hash(data)
            if node is None:  # orphaned: its instance shut down; it is reconnecting
                orphans[node_id] = known.get(node_id) or SfuNode(
                    sid=data.get("sid", ""), node_id=node_id, local=False)
            elif not node.local:
                remote[node.sid] = node
        self._orphans = orphans
        present = {n.node_id for n in remote.values()} | {n.node_id for n in self._local.values()}
        for sid, node in previous.items():
            if sid in remote or sid in self._recently_lost:
                continue
            if node.node_id in orphans or node.node_id in present:
                continue  # reconnecting, or re-registered under a new connection
            self._recently_lost[sid] = now
            await self._deliver(NodeEvent.NODE_LOST, node, {})  # its node_lost event was missed
        self.nodes = {**remote, **self._local}
        # Local nodes that stopped reporting: gone, even though their socket is open.
        for node in list(self._local.values()):
            if stalled:
                node.seen = now
            elif now - node.seen > self.ttl:
                logger.warning("SFU node %s missed its heartbeats for %.1f s: gone",
                               node.node_id, now - node.seen)
                if await self.unregister(node.sid) is not None:
                    await self._announce_lost(node)
                await self._disconnect(node.sid)
        self._recently_lost = {s: t for s, t in self._recently_lost.items() if now - t < 60}
        self._ok()  # only now: the view of the cluster is fresh

    async def _reap(self, node: SfuNode) -> None:
        """A node's hash expired: the instance that wins the zset removal releases it."""
        if await self._forget(node, "expired") is None:
            return
        logger.warning("SFU node %s missed its heartbeats: gone", node.node_id)
        if node.sid:
            self._recently_lost[node.sid] = time.monotonic()
        self.nodes.pop(node.sid, None)
        await self._announce_lost(node)

    async def _announce_lost(self, node: SfuNode) -> None:
        # "here": this instance noticed the loss, so it is the one that cleans up after
        # the node (its pipes); the other instances get the event without it.
        await self._deliver(NodeEvent.NODE_LOST, node, {"here": True})
        await self.broadcast(NodeEvent.NODE_LOST, node, {})

    # ----------------------------------------------------------- readiness
    async def check(self) -> str | None:
        try:
            await asyncio.wait_for(self.redis.ping(), min(1.0, self.op_timeout))
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return self.problem
        if not self.healthy:
            return "Redis reachable; resynchronizing"
        if not self._subscribed:
            return "Redis node event bus reconnecting"
        if self._extra_check is not None:
            return self._extra_check()
        return None

    def reachable(self, node: SfuNode) -> bool:
        return node.local or self.healthy


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


class SocketIORedisManager(socketio.AsyncRedisManager):
    """python-socketio's `AsyncRedisManager` with bounded Redis calls.

    It implements the pub/sub manager's two backend hooks itself: publishing with a
    timeout (the upstream one may wait on Socket timeouts twice per emit) and a
    listener that reconnects with a capped backoff (upstream: up to 60 s) and says
    whether it is subscribed (``listening``, for ``/readyz``).
    """

    def __init__(self, url: str, channel: str = PREFIX + "socketio") -> None:
        super().__init__(url, channel=channel, redis_options=client_options())
        self.listening = False
        self._pub: aioredis.Redis | None = None
        self._sub: aioredis.Redis | None = None
        self._errors = 0
        self._skip_until = 0.0

    def start(self, server: socketio.AsyncServer) -> None:
        """Start listening now (upstream waits for the first client to connect, but this
        instance must receive RPC acks for nodes connected to other instances)."""
        if not server.manager_initialized:
            server.manager_initialized = True
            self.initialize()

    async def close(self) -> None:
        thread = getattr(self, "thread", None)
        if thread is not None:
            await cancel_and_wait(thread)
        for client in (self._pub, self._sub):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def problem(self) -> str | None:
        return None if self.listening else "Socket.IO Redis manager reconnecting"

    async def _publish(self, data: Any) -> Any:
        # Emits to local clients were delivered before this; while Redis is failing, do not
        # make every emit wait for it again (at most one try per 0.5 s).
        if time.monotonic() < self._skip_until:
            return None
        if self._pub is None:
            self._pub = aioredis.Redis.from_url(self.redis_url, **self.redis_options)
        try:
            result = await asyncio.wait_for(self._pub.publish(self.channel, self.json.dumps(data)), 2.0)
            self._errors = 0
            return result
        except (TimeoutError, RedisError, OSError) as exc:
            self._errors += 1
            self._skip_until = time.monotonic() + 0.5
            if self._errors == 1:
                logger.warning("Socket.IO Redis publish failed: %s", type(exc).__name__)
            return None

    async def _listen(self) -> AsyncIterator[Any]:  # type: ignore[override]
        channel = self.channel.encode()
        backoff = 0.25
        while True:
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.aclose()
            self._sub = aioredis.Redis.from_url(self.redis_url, **self.redis_options)
            pubsub = self._sub.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(self.channel), 2.0)
                if not self.listening:
                    logger.info("Socket.IO Redis manager subscribed")
                self.listening, backoff = True, 0.25
                async for message in pubsub.listen():
                    if message.get("channel") in (channel, self.channel) and message.get("type") == "message":
                        yield message["data"]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.listening:
                    logger.warning("Socket.IO Redis manager lost Redis (%s); reconnecting",
                                   type(exc).__name__)
                self.listening = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
