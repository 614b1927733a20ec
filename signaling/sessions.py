"""The session service: WHIP/WHEP sessions between the HTTP edge and the SFU nodes.

The HTTP handlers (:mod:`signaling.whip`) parse and authorize a request and call one
method here; this module owns the rest (LiveKit's service → routing split):

* :meth:`SessionService.open` places the session (the room's origin node, or for a viewer an
  edge node piped from it, :mod:`signaling.cascade`), opens it on the node over the typed
  SFU protocol (:class:`~signaling.sfu_client.SfuClient`), cleans up after a failure (a
  session the node may still create after a 504 is closed; a room placed for nothing is
  released) and records the session;
* :meth:`SessionService.trickle`, :meth:`SessionService.restart_ice` (RFC 9725 §4.3.3: the
  record takes the client's new ICE credentials and a new ETag),
  :meth:`SessionService.video_size` (a viewer's size hint),
  :meth:`SessionService.ingest_advice` (a publisher's encoder advice and dropped-frame
  count, kept on its node) and
  :meth:`SessionService.close` act on a recorded session;
* :meth:`SessionService.on_node_event` forgets sessions the nodes ended or lost.

Session records live in a :class:`SessionStore`: in memory for one signaling process, in
Redis in Redis mode (:class:`RedisSessionStore`), so PATCH and DELETE on a session work
through any signaling instance behind a load balancer, not only the one that created it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sfu.protocol import (
    IceRestart,
    IceRestarted,
    Identity,
    IngestAdvice,
    NodeEvent,
    OpenSession,
    ProtocolError,
    RpcError,
    SessionClosed,
    SessionKind,
    Trickle,
    VideoSize,
)

from .admission import PendingLimitReached, PendingSessions
from .cascade import PipeFailed
from .names import viewer_name
from .nodes import NoNodeAvailable, SfuNode
from .sfu_client import RpcFailed, SfuClient

if TYPE_CHECKING:
    from .cascade import Cascade
    from .config import SignalingConfig
    from .nodes import SfuNamespace
    from .redis_state import RedisNodeRegistry
    from .rooms import RoomRegistry

logger = logging.getLogger(__name__)

RESOURCES = ("whip", "whep")


@dataclass
class Session:
    """A WHIP or WHEP session resource (RFC 9725 §4.2: ``/{resource}/{room}/{id}``).

    :ivar id: 192 random bits, URL-safe (RFC 9725 §5: not guessable).
    :ivar resource: ``"whip"`` (a publisher) or ``"whep"`` (a viewer).
    :ivar node_sid: the SFU node's Socket.IO sid (the RPC address); ``node_id`` its id.
    :ivar etag: the strong ETag of the ICE session (RFC 9725 §4.3.1); a new one after each
        ICE restart (§4.3.3).
    :ivar remote_ufrag: the client's ``ice-ufrag`` / ``ice-pwd`` from the offer or its last ICE
        restart (a PATCH with other ones is an ICE restart).
    :ivar created: Unix time, s.
    :ivar client: the client's address (behind trusted proxies, :mod:`common.client_address`).
    :ivar connected: ICE and DTLS completed on the node (``session_connected``); until then
        the session is *pending* and counts against its address's pending cap.
    :ivar owner_digest: WHIP: the owner of the publish grant that created the session
        (:attr:`signaling.publish_auth.PublishGrant.owner`: the stream key's hex SHA-256, or
        ``user:<id>``); its PATCH and DELETE must present that credential
        (:mod:`signaling.whip`).  ``""`` for WHEP.
    """

    id: str
    resource: str
    room: str
    node_sid: str
    node_id: str
    etag: str
    remote_ufrag: str | None
    remote_pwd: str | None
    identity: Identity
    created: float
    client: str = ""
    connected: bool = False
    owner_digest: str = ""

    @property
    def kind(self) -> SessionKind:
        return SessionKind.PUBLISHER if self.resource == "whip" else SessionKind.VIEWER

    def to_json(self) -> str:
        return json.dumps({
            "id": self.id, "resource": self.resource, "room": self.room, "node_sid": self.node_sid,
            "node_id": self.node_id, "etag": self.etag, "remote_ufrag": self.remote_ufrag,
            "remote_pwd": self.remote_pwd, "identity": self.identity.to_dict(), "created": self.created,
            "client": self.client, "connected": self.connected, "owner_digest": self.owner_digest,
        })

    @classmethod
    def from_json(cls, raw: str) -> Session | None:
        """A record written by :meth:`to_json`; ``None`` for anything else."""
        try:
            data = json.loads(raw)
            return cls(str(data["id"]), str(data["resource"]), str(data["room"]), str(data["node_sid"]),
                       str(data["node_id"]), str(data["etag"]), _opt(data.get("remote_ufrag")),
                       _opt(data.get("remote_pwd")), Identity.from_dict(data["identity"]),
                       float(data["created"]), str(data.get("client") or ""), bool(data.get("connected")),
                       str(data.get("owner_digest") or ""))
        except (ValueError, KeyError, TypeError, ProtocolError):
            return None


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class SessionRefused(Exception):
    """A session request the service refuses; the HTTP edge answers ``status`` with ``detail``
    (RFC 9457) and ``Retry-After: retry_after_s`` when set; a ``problem_type`` URI comes with
    its ``title`` (RFC 9457 §3.1.3: the title summarizes the type)."""

    def __init__(self, status: int, detail: str, *, retry_after_s: int | None = None,
                 problem_type: str | None = None, title: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.retry_after_s, self.problem_type = retry_after_s, problem_type
        self.title = title


# ------------------------------------------------------------------ stores
class SessionStore(ABC):
    """Where session records live.  ``get`` may be asked on any signaling instance."""

    @abstractmethod
    async def add(self, session: Session) -> None: ...

    @abstractmethod
    async def get(self, session_id: str) -> Session | None: ...

    @abstractmethod
    async def replace(self, session: Session) -> bool:
        """Store ``session`` over its record, only while that record still exists (a session
        closed meanwhile is not brought back).  :returns: whether it was stored."""

    @abstractmethod
    async def mark_connected(self, session_id: str, node_id: str) -> Session | None:
        """Record that the session on ``node_id`` connected; the updated record."""

    @abstractmethod
    async def remove(self, session_id: str, node_id: str | None = None) -> Session | None:
        """Remove and return the record (only if it is on ``node_id``, when given)."""

    @abstractmethod
    async def in_room(self, room: str, node_id: str) -> bool:
        """Whether any recorded session of ``room`` is on node ``node_id``."""

    @abstractmethod
    async def forget_node(self, node_id: str) -> None:
        """Drop every record of a lost node."""

    @abstractmethod
    async def of_room(self, room: str) -> list[Session]:
        """Every recorded session of ``room``, on any node."""


class MemorySessionStore(SessionStore):
    """One signaling process: a dict."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    async def add(self, session: Session) -> None:
        self.sessions[session.id] = session

    async def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    async def replace(self, session: Session) -> bool:
        if session.id not in self.sessions:
            return False
        self.sessions[session.id] = session
        return True

    async def mark_connected(self, session_id: str, node_id: str) -> Session | None:
        session = self.sessions.get(session_id)
        if session is None or session.node_id != node_id:
            return None
        session.connected = True
        return session

    async def remove(self, session_id: str, node_id: str | None = None) -> Session | None:
        session = self.sessions.get(session_id)
        if session is None or (node_id is not None and session.node_id != node_id):
            return None
        return self.sessions.pop(session_id)

    async def in_room(self, room: str, node_id: str) -> bool:
        return any(s.room == room and s.node_id == node_id for s in self.sessions.values())

    async def forget_node(self, node_id: str) -> None:
        for sid in [s.id for s in self.sessions.values() if s.node_id == node_id]:
            del self.sessions[sid]

    async def of_room(self, room: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.room == room]


class RedisSessionStore(SessionStore):
    """Session records in Redis, one hash per SFU node: ``relaycast:node:{node_id}:sessions``
    (session id → :meth:`Session.to_json`).  The hash expires with the node's other keys
    (its TTL is refreshed by the node's load reports, :meth:`RedisNodeRegistry.heartbeat`), so
    nothing outlives the node; a lookup asks every live node's hash in one pipeline."""

    def __init__(self, registry: RedisNodeRegistry) -> None:
        self.registry = registry

    async def add(self, session: Session) -> None:
        r = self.registry
        key = r.k_node_sessions(session.node_id)
        pipe = r.redis.pipeline(transaction=True)
        pipe.hset(key, session.id, session.to_json())
        pipe.pexpire(key, r.ttl_ms)
        await r._op(pipe.execute())

    async def get(self, session_id: str) -> Session | None:
        r = self.registry
        node_ids = sorted({n.node_id for n in r.nodes.values()})
        if not node_ids:
            return None
        pipe = r.redis.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.hget(r.k_node_sessions(node_id), session_id)
        for raw in await r._op(pipe.execute()):
            if raw:
                return Session.from_json(raw)
        return None

    async def replace(self, session: Session) -> bool:
        r = self.registry
        stored = await r._op(r.redis.eval(_REPLACE, 1, r.k_node_sessions(session.node_id), session.id,
                                          session.to_json(), r.ttl_ms))
        return bool(stored)

    async def mark_connected(self, session_id: str, node_id: str) -> Session | None:
        r = self.registry
        raw = await r._op(r.redis.hget(r.k_node_sessions(node_id), session_id))
        session = Session.from_json(raw) if raw else None
        if session is None:
            return None
        session.connected = True
        await self.add(session)
        return session

    async def remove(self, session_id: str, node_id: str | None = None) -> Session | None:
        session = await self.get(session_id)
        if session is None or (node_id is not None and session.node_id != node_id):
            return None
        removed = await self.registry._op(
            self.registry.redis.hdel(self.registry.k_node_sessions(session.node_id), session_id))
        return session if removed else None

    async def in_room(self, room: str, node_id: str) -> bool:
        values = await self.registry._op(self.registry.redis.hvals(self.registry.k_node_sessions(node_id)))
        return any((s := Session.from_json(v)) is not None and s.room == room for v in values)

    async def forget_node(self, node_id: str) -> None:
        await self.registry._op(self.registry.redis.delete(self.registry.k_node_sessions(node_id)))

    async def of_room(self, room: str) -> list[Session]:
        r = self.registry
        node_ids = sorted({n.node_id for n in r.nodes.values()})
        if not node_ids:
            return []
        pipe = r.redis.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.hvals(r.k_node_sessions(node_id))
        out = []
        for values in await r._op(pipe.execute()):
            out.extend(s for v in values if (s := Session.from_json(v)) is not None and s.room == room)
        return out


_REPLACE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
"""RedisSessionStore.replace: HSET only an existing field (atomic; a closed session stays closed)."""


def new_etag() -> str:
    """A strong entity tag (RFC 9110 §8.8.3) for a session's ICE session, 128 random bits."""
    return f'"{secrets.token_urlsafe(16)}"'


# ----------------------------------------------------------------- service
class SessionService:
    """Open, trickle and close WHIP/WHEP sessions (see the module docstring).

    :param store: where records live (:class:`MemorySessionStore` or :class:`RedisSessionStore`).
    """

    def __init__(self, config: SignalingConfig, rooms: RoomRegistry, namespace: SfuNamespace,
                 cascade: Cascade, store: SessionStore, pending: PendingSessions | None = None) -> None:
        self.config = config
        self.rooms = rooms
        self.namespace = namespace
        self.cascade = cascade
        self.store = store
        self.client = SfuClient(namespace, config.rpc_timeout_s)
        self.pending = pending or PendingSessions(
            config.pending_sessions_per_address, config.sfu.connect_timeout_s + config.rpc_timeout_s)
        """WHEP sessions not yet connected, per client address (:mod:`signaling.admission`)."""

    async def open(self, resource: str, room: str, offer: str, client: str = "",
                   owner_digest: str = "", user: tuple[str, str | None] | None = None) -> tuple[Session, str]:
        """Open a session with the client's SDP ``offer`` (RFC 9725 §4.2).

        :param resource: ``"whip"`` (publish; the caller checked the stream key) or ``"whep"``.
        :param client: the client's address (recorded with the session).
        :param owner_digest: WHIP: the publish grant's owner (recorded with the session).
        :param user: the platform user behind the session, ``(user_id, username)``: the
            session's identity carries the user, and a viewer chats under the username
            (``None`` keeps the room name for a publisher).  Without it a viewer is a guest
            with a generated name.
        :returns: the recorded session and the SDP answer.
        :raises SessionRefused: 429 + Retry-After (WHEP: ``client`` already holds
            ``RELAYCAST_PENDING_SESSIONS_PER_ADDRESS`` sessions that have not connected),
            503 + Retry-After (no node, Redis unreachable, node full or draining), 409 +
            Retry-After (WHEP before a publisher), 400/422 (the node refused the offer), 504
            (no answer in time).  Nothing stays allocated.

        A WHEP session counts as pending for ``client`` from before it is opened (so
        simultaneous offers cannot slip past the cap) until its node reports it connected
        or closed, it is closed here, or the connect deadline has certainly passed.
        """
        if resource not in RESOURCES:
            raise ValueError(f"resource must be one of {RESOURCES}")
        session_id = secrets.token_urlsafe(24)  # 192 bits from a CSPRNG (RFC 9725 §5)
        if resource == "whep":
            try:
                self.pending.add(client, session_id)
            except PendingLimitReached as exc:
                raise SessionRefused(429, str(exc), retry_after_s=self.config.retry_after_s) from None
        try:
            return await self._open(resource, room, offer, client, owner_digest, session_id, user)
        except BaseException:
            self.pending.discard(session_id)
            raise

    async def _open(self, resource: str, room: str, offer: str, client: str, owner_digest: str,
                    session_id: str, user: tuple[str, str | None] | None) -> tuple[Session, str]:
        retry_after = self.config.retry_after_s
        try:
            node = await self.namespace.registry.node_for_room(room)
            if resource == "whep":  # the origin, or an edge node piped from it
                node = await self.cascade.node_for_viewer(room, node)
        except PipeFailed as exc:
            raise _refused(exc.error, retry_after) from None
        except NoNodeAvailable as exc:  # RegistryUnavailable too: Redis unreachable
            raise SessionRefused(503, str(exc) or "no SFU node is available",
                                 retry_after_s=retry_after) from None
        user_id, username = user if user else (None, None)
        identity = Identity(
            id=secrets.token_hex(6),
            name=(room if resource == "whip" else None) or username or viewer_name(),
            role=SessionKind.PUBLISHER if resource == "whip" else SessionKind.VIEWER,
            user=user_id,
        )
        request = OpenSession(room, session_id, offer, identity)
        try:
            if resource == "whip":
                answer = await self.client.publish(node, request)
            else:
                answer = await self.client.subscribe(node, request)
        except RpcFailed as exc:
            await self._undo(node, room, session_id, exc.error)
            raise _refused(exc.error, retry_after) from None
        ufrag, pwd = ice_credentials(offer)
        session = Session(session_id, resource, room, node.sid, node.node_id,
                          new_etag(), ufrag, pwd, identity, time.time(), client,
                          owner_digest=owner_digest)
        try:
            await self.store.add(session)
        except NoNodeAvailable:  # Redis went away after the node answered: do not leak it
            with contextlib.suppress(RpcFailed):
                await self.client.close(node, session_id)
            raise SessionRefused(503, "session state is unavailable (Redis)",
                                 retry_after_s=retry_after) from None
        logger.info("%s session %s… created in room %s", resource.upper(), session_id[:6], room)
        return session, answer.sdp

    async def _undo(self, node: SfuNode, room: str, session_id: str, error: RpcError) -> None:
        if error.status == 504:
            # The node may still create the session after the deadline: do not leak it.
            with contextlib.suppress(RpcFailed):
                await self.client.close(node, session_id)
        state = self.rooms.get(room)
        with contextlib.suppress(NoNodeAvailable):
            if (state is not None and not state.live and not state.viewers
                    and not await self.store.in_room(room, node.node_id)):
                await self.namespace.registry.release_room(room, node)

    async def get(self, resource: str, room: str, session_id: str) -> Session | None:
        """The session at ``/{resource}/{room}/{session_id}``, or ``None`` (ended, never
        existed, or another resource's).  :raises SessionRefused: 503 when Redis is down."""
        try:
            session = await self.store.get(session_id)
        except NoNodeAvailable:
            raise SessionRefused(503, "session state is unavailable (Redis)",
                                 retry_after_s=self.config.retry_after_s) from None
        if session is None or session.resource != resource or session.room != room:
            return None
        return session

    async def trickle(self, session: Session, candidates: list[str], end_of_candidates: bool) -> None:
        """Hand trickled candidates to the session's node (RFC 9725 §4.3.2).

        :raises SessionRefused: 404 when the node is gone, else the node's error.
        """
        node = self._node_of(session)
        try:
            await self.client.trickle(node, Trickle(session.id, tuple(candidates), end_of_candidates))
        except RpcFailed as exc:
            raise _refused(exc.error, self.config.retry_after_s) from None

    async def restart_ice(self, session: Session, ufrag: str, pwd: str, candidates: Sequence[str],
                          end_of_candidates: bool = False) -> tuple[Session, IceRestarted]:
        """Restart the session's ICE with the client's new ``ufrag`` / ``pwd`` (RFC 9725 §4.3.3,
        RFC 8445 §9); its DTLS, SRTP and media stay.  The record keeps the new credentials
        and a new ETag (in Redis mode too: any instance then serves the next PATCH).

        :param candidates: the fragment's ``candidate:...`` values (without ``a=``).
        :returns: the updated session and the node's new credentials and candidates.
        :raises SessionRefused: 404 the session or its node is gone, 409 its first ICE checks
            have not connected yet (nothing changed), 400 malformed, 503 Redis unavailable
            (the node restarted ICE: the client may restart again), 504 no answer.
        """
        node = self._node_of(session)
        request = IceRestart(session.id, ufrag, pwd, tuple(candidates), end_of_candidates)
        try:
            restarted = await self.client.ice_restart(node, request)
        except RpcFailed as exc:
            raise _refused(exc.error, self.config.retry_after_s) from None
        updated = dataclasses.replace(session, etag=new_etag(), remote_ufrag=ufrag, remote_pwd=pwd)
        try:
            stored = await self.store.replace(updated)
        except NoNodeAvailable:
            raise SessionRefused(503, "session state is unavailable (Redis)",
                                 retry_after_s=self.config.retry_after_s) from None
        if not stored:
            raise SessionRefused(404, "the session ended during the ICE restart")
        logger.info("%s session %s… restarted ICE", session.resource.upper(), session.id[:6])
        return updated, restarted

    async def video_size(self, session: Session, width: int | None, height: int | None) -> None:
        """A WHEP viewer's rendered video size, device pixels (``None`` both: no hint), for its
        video Consumer on the node (``video_size`` RPC, docs/whip-whep.md).

        :raises SessionRefused: 404 the session or its node is gone, 400 malformed, 504."""
        node = self._node_of(session)
        try:
            await self.client.video_size(node, VideoSize(session.id, width, height))
        except RpcFailed as exc:
            raise _refused(exc.error, self.config.retry_after_s) from None

    async def ingest_advice(self, session: Session, members: Mapping[str, Any]) -> None:
        """A WHIP session's ingest advice: ``advice``, what its encoder should change, in
        words (at most :data:`~sfu.protocol.MAX_ADVICE_CHARS` characters), and/or
        ``dropped_frames``, the running total of video frames its republisher dropped (at most
        :data:`~sfu.protocol.MAX_DROPPED_FRAMES`) — only the members present in ``members``
        change, ``None`` clears one (:meth:`sfu.protocol.IngestAdvice.of`).  They are kept
        with the publisher on the session's node (``ingest_advice`` RPC), not in the session
        record: the ingest health comes from that node, and a new publisher session starts
        without them (docs/whip-whep.md).

        :raises ProtocolError: neither member, or a value out of shape (checked before any RPC).
        :raises SessionRefused: 404 the session or its node is gone, 400 malformed, 504."""
        request = IngestAdvice.of(session.id, members)
        node = self._node_of(session)
        try:
            await self.client.ingest_advice(node, request)
        except RpcFailed as exc:
            raise _refused(exc.error, self.config.retry_after_s) from None

    async def close(self, session: Session) -> None:
        """End the session on its node and forget it (RFC 9725 §4.2 DELETE); idempotent."""
        self.pending.discard(session.id)
        with contextlib.suppress(NoNodeAvailable):
            await self.store.remove(session.id)
        node = self.namespace.registry.nodes.get(session.node_sid)
        if node is not None:
            with contextlib.suppress(RpcFailed):  # already ended there
                await self.client.close(node, session.id)
        logger.info("%s session %s… deleted", session.resource.upper(), session.id[:6])

    async def close_publishers(self, room: str, owner: str | None = None) -> int:
        """End the WHIP sessions of ``room`` (those whose ``owner_digest`` is ``owner``, when
        given) on whichever node and signaling instance holds them: a revoked stream key or a
        suspended user stops broadcasting.  :returns: how many were closed.

        :raises SessionRefused: 503 when the session records are unavailable (Redis).
        """
        try:
            sessions = await self.store.of_room(room)
        except NoNodeAvailable:
            raise SessionRefused(503, "session state is unavailable (Redis)",
                                 retry_after_s=self.config.retry_after_s) from None
        closing = [s for s in sessions
                   if s.resource == "whip" and (owner is None or s.owner_digest == owner)]
        for session in closing:
            await self.close(session)
        return len(closing)

    async def on_node_event(self, event: str, node: SfuNode, data: Mapping[str, Any]) -> None:
        """Forget sessions a node ended (``session_closed``) or lost with it (``node_lost``);
        mark connected ones (``session_connected``)."""
        if event in (NodeEvent.SESSION_CONNECTED, NodeEvent.SESSION_CLOSED):
            session_id = data.get("session_id")
            if isinstance(session_id, str):
                self.pending.discard(session_id)  # no longer pending
        with contextlib.suppress(NoNodeAvailable):
            if event == NodeEvent.SESSION_CONNECTED:
                session_id = data.get("session_id")
                if isinstance(session_id, str):
                    await self.store.mark_connected(session_id, node.node_id)
            elif event == NodeEvent.SESSION_CLOSED:
                try:
                    closed = SessionClosed.from_wire(dict(data))
                except ProtocolError:
                    return
                await self.store.remove(closed.session_id, node.node_id)
            elif event == NodeEvent.NODE_LOST:
                await self.store.forget_node(node.node_id)

    def _node_of(self, session: Session) -> SfuNode:
        node = self.namespace.registry.nodes.get(session.node_sid)
        if node is None or node.node_id != session.node_id:
            raise SessionRefused(404, "the session's SFU node is gone")
        return node


def _refused(error: RpcError, retry_after_s: int) -> SessionRefused:
    """An RPC error as the HTTP edge answers it: the node's status for client errors, 503/504
    for the SFU's, 502 for anything else; the title is not repeated as the detail."""
    status = error.status
    if not 400 <= status < 600 or (status >= 500 and status not in (503, 504)):
        status = 502
    title, detail = error.title, error.detail
    text = f"{title}: {detail}" if title and detail and title != detail else (detail or title)
    if error.type:  # a typed problem: the title names the type, the detail this occurrence
        text = detail or title
    return SessionRefused(status, text or "the SFU node refused the session",
                          retry_after_s=retry_after_s if status in (409, 503) else None,
                          problem_type=error.type, title=title if error.type else None)


_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.MULTILINE)
_PWD = re.compile(r"^a=ice-pwd:(\S+)\s*$", re.MULTILINE)


def ice_credentials(sdp: str) -> tuple[str | None, str | None]:
    """The first ``a=ice-ufrag`` and ``a=ice-pwd`` values of an SDP or SDP fragment (RFC 8839
    §5.4); a PATCH naming other ones asks for an ICE restart (RFC 9725 §4.3.1)."""
    ufrag, pwd = _UFRAG.search(sdp), _PWD.search(sdp)
    return (ufrag.group(1) if ufrag else None), (pwd.group(1) if pwd else None)
