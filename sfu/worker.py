"""Worker: the SFU of one process — its Routers (rooms) and the RPC surface signaling calls.

RPC methods take and return plain JSON-able dicts so they can travel over
Socket.IO acks unchanged (see :mod:`sfu.node`).  Errors come back as
``{"error": {"status", "title", "detail"}}`` and never raise across the wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from . import aiortc_private
from .chat import ChatUpstream
from .config import SfuConfig
from .errors import BadOffer, Overloaded, RoomNotLive, SessionNotFound, SfuError
from .estimator_link import EstimatorLink
from .negotiation import announce_address, candidate_reachable
from .participant import Participant
from .protocol import (
    OK,
    Answer,
    CloseSession,
    IceRestart,
    IceRestarted,
    IngestAdvice,
    NodeEvent,
    OpenSession,
    PipeAnswer,
    PipeOffer,
    ProtocolError,
    RpcError,
    SessionClosed,
    SessionConnected,
    SessionKind,
    Trickle,
    VideoSize,
)
from .router import Router

RouterFactory = Callable[..., Router]
"""Builds a room's Router: ``factory(room, config, on_session_closed, on_room_state,
chat_upstream=..., on_session_connected=...)``."""

logger = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class IceRestartRefused(SfuError):
    """ICE cannot be restarted now: the session's first checks have not connected (409;
    RFC 9725 §4.3.3: the session and its ICE state stay as they were)."""

    status = 409
    title = "ICE restart not possible now"


class Worker:
    """All rooms of this SFU process.

    :param emit: ``emit(event, data)`` towards signaling: ``session_closed``
        (:class:`~sfu.protocol.SessionClosed`), ``session_connected``
        (:class:`~sfu.protocol.SessionConnected`: ICE and DTLS up for the first time) and
        ``room_state`` (:class:`~sfu.protocol.RoomState`; ``viewers``: connected viewers).

    Admission (503 :class:`~sfu.errors.Overloaded`): the node takes at most
    ``config.max_sessions`` sessions, and a WHEP viewer only while
    ``config.reserved_for_publishers`` sessions stay free after it, so viewers never lock
    publishers out (publishers and node-to-node pipes, both opened with credentials, may
    use the reserve).  A session not connected ``config.connect_timeout_s`` after its answer
    is closed (`Router.tick`) and reported like any other closed session.
    """

    def __init__(
        self, config: SfuConfig, emit: EventSink | None = None, router_factory: RouterFactory = Router
    ) -> None:
        self.config = config
        self.router_factory = router_factory
        self.routers: dict[str, Router] = {}
        self._session_rooms: dict[str, str] = {}
        self._session_kinds: dict[str, SessionKind] = {}
        self._emit = emit
        self._tick_task: asyncio.Task[None] | None = None
        self.draining = False
        self._sessions_changed = asyncio.Event()
        self.load_reporters: dict[str, Callable[[], Any]] = {}
        """Extra sections of `load()`, e.g. ``{"hls": bridge_manager.report}`` (JSON values)."""
        self.estimators = EstimatorLink(enabled=config.estimator_process)
        """Viewers' bandwidth estimators, run in a process of their own (sfu.estimator_link)."""
        self.chat_upstream: ChatUpstream | None = None
        """Signaling's chat authority (set by :class:`sfu.node.SignalingLink` before any
        room exists); None = each room numbers its own chat."""
        aiortc_private.set_host_addresses(config.ice_gather or None)
        aiortc_private.extend_codec_capabilities()
        aiortc_private.add_latm_capability()
        aiortc_private.accept_peer_consent_checks()
        aiortc_private.enable_ice_restart()

    async def __aenter__(self) -> Worker:
        self._tick_task = asyncio.create_task(self._run_tick(), name="sfu-tick")
        return self

    def deliver_chat(self, data: Any) -> None:
        """Signaling's ``chat_event`` ``{room, event}``: hand it to the room's data channels
        (ignored for a room this node does not host, or a malformed payload)."""
        if not isinstance(data, dict) or not isinstance(data.get("event"), dict):
            return
        router = self.routers.get(data.get("room"))  # type: ignore[arg-type]
        if router is not None:
            router.chat.deliver(data["event"])

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_emitter(self, emit: EventSink | None) -> None:
        self._emit = emit

    # ------------------------------------------------------------- RPC API
    async def publish(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._rpc(self._publish, data)

    async def subscribe(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._rpc(self._subscribe, data)

    async def close_session(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._rpc(self._close, data)

    async def pipe_offer(self, data: dict[str, Any]) -> dict[str, Any]:
        """Origin side of a node-to-node pipe: ``{room, session_id, identity?}`` →
        ``{"sdp": offer}``; the other node answers it with ``publish`` (see
        :meth:`Router.pipe_offer`)."""
        return await self._rpc(self._pipe_offer, data)

    async def pipe_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        """``{session_id, sdp: answer}`` → ``{"ok": true}``: the pipe starts forwarding."""
        return await self._rpc(self._pipe_answer, data)

    async def trickle(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._rpc(self._trickle, data)

    async def ice_restart(self, data: dict[str, Any]) -> dict[str, Any]:
        """:class:`~sfu.protocol.IceRestart` → :class:`~sfu.protocol.IceRestarted` (RFC 9725
        §4.3.3): the session's ICE restarts with the client's new credentials, DTLS and
        SRTP stay.  400 malformed credentials or candidates, 404 unknown session, 409 its
        first ICE checks have not connected yet."""
        return await self._rpc(self._ice_restart, data)

    async def video_size(self, data: dict[str, Any]) -> dict[str, Any]:
        """:class:`~sfu.protocol.VideoSize` → ``{"ok": true}``: the viewer's rendered video
        size reaches its video Consumer (``Consumer.set_max_size``); a session without video
        takes it and does nothing.  400 malformed, 404 unknown session."""
        return await self._rpc(self._video_size, data)

    async def ingest_advice(self, data: dict[str, Any]) -> dict[str, Any]:
        """:class:`~sfu.protocol.IngestAdvice` → ``{"ok": true}``: the publisher session keeps
        the advice and the dropped-frame count given (a member absent is left as it was,
        ``None`` clears it) and its room's ``ingest`` report carries them
        (:meth:`Router.ingest`).  400 malformed, 404 no such publisher session here (a
        viewer's or a pipe's session is not one)."""
        return await self._rpc(self._ingest_advice, data)

    async def stats(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """``{room?}`` → ``{node_id, sessions, rooms: {name: {live, viewers, pipes, pipe?,
        ingest, delivery}}}``: every room here, or only ``data["room"]`` when given (``rooms``
        is then empty if this node does not host it).  ``ingest`` is the publisher's ingest
        health (:meth:`Router.ingest`, ``None`` without a publisher here), ``delivery`` how its
        video reaches the viewers here (:meth:`Router.delivery`: layers, viewers per layer,
        paused, estimates)."""
        room = data.get("room") if isinstance(data, dict) else None
        routers = self.routers.items() if not isinstance(room, str) else (
            [(room, self.routers[room])] if room in self.routers else [])
        return {"node_id": self.config.node_id, "sessions": len(self._session_rooms),
                "rooms": {name: {**router.state(), "ingest": router.ingest(), "delivery": router.delivery()}
                          for name, router in routers}}

    async def _rpc(self, fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], data: Any) -> dict[str, Any]:
        """Run one RPC: its ack, or :class:`~sfu.protocol.RpcError` on failure (a malformed
        payload is a 400; an unexpected exception a 500 whose details stay in the log)."""
        try:
            if not isinstance(data, dict):
                raise ProtocolError("RPC payload must be an object")
            return await fn(data)
        except ProtocolError as exc:
            return RpcError(400, "Malformed request", str(exc)).to_wire()
        except SfuError as exc:
            return exc.to_rpc_error().to_wire()
        except Exception:
            logger.exception("SFU RPC failed")
            return RpcError(500, "SFU internal error", "the error was logged").to_wire()

    # --------------------------------------------------------------- impl
    def _router(self, room: str) -> Router:
        router = self.routers.get(room)
        if router is None:
            router = self.router_factory(room, self.config, self._session_closed, self._room_state,
                                         chat_upstream=self.chat_upstream,
                                         on_session_connected=self._session_connected,
                                         estimators=self.estimators)
            self.routers[room] = router
        return router

    def _admit(self, *, viewer: bool) -> None:
        """:raises Overloaded: draining, full, or (a ``viewer``) into the publisher reserve."""
        if self.draining:
            raise Overloaded("this SFU node is draining")
        sessions, limit = len(self._session_rooms), self.config.max_sessions
        if sessions >= limit:
            raise Overloaded(f"this SFU node is full ({limit} sessions)")
        reserve = self.config.reserved_for_publishers
        if viewer and sessions + 1 + reserve > limit:
            raise Overloaded(f"this SFU node has no room for more viewers ({limit} sessions, "
                             f"{reserve} of them kept for publishers)")

    async def _publish(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._open_session(data, publish=True)

    async def _subscribe(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._open_session(data, publish=False)

    async def _open_session(self, data: dict[str, Any], *, publish: bool) -> dict[str, Any]:
        request = OpenSession.from_wire(data)
        self._admit(viewer=not publish)
        room, session_id = request.room, request.session_id
        router = self._router(room)
        self._session_rooms[session_id] = room
        try:
            open_session = router.publish if publish else router.subscribe
            answer = await open_session(session_id, request.sdp, request.identity)
        except BaseException:
            self._forget(session_id)
            raise
        self._session_kinds[session_id] = request.identity.role
        return Answer(answer).to_wire()

    async def _pipe_offer(self, data: dict[str, Any]) -> dict[str, Any]:
        request = PipeOffer.from_wire(data)
        self._admit(viewer=False)
        room, session_id = request.room, request.session_id
        router = self.routers.get(room)
        if router is None or not router.live:
            raise RoomNotLive(f"room {room!r} has no publisher on this node")
        self._session_rooms[session_id] = room
        try:
            offer = await router.pipe_offer(session_id, request.identity)
        except BaseException:
            self._forget(session_id)
            raise
        self._session_kinds[session_id] = SessionKind.PIPE
        return Answer(offer).to_wire()

    async def _pipe_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        request = PipeAnswer.from_wire(data)
        room = self._session_rooms.get(request.session_id)
        router = self.routers.get(room) if room else None
        if router is None:
            raise SessionNotFound("no such pipe on this node")
        await router.pipe_answer(request.session_id, request.sdp)
        return OK

    async def _close(self, data: dict[str, Any]) -> dict[str, Any]:
        session_id = CloseSession.from_wire(data).session_id
        room = self._session_rooms.get(session_id)
        router = self.routers.get(room) if room else None
        if router is None or not await router.close_session(session_id):
            raise SessionNotFound("no such session on this node")
        self._forget(session_id)
        return OK

    def _participant(self, session_id: str) -> Participant:
        """:raises SessionNotFound: no such session on this node."""
        room = self._session_rooms.get(session_id)
        participant = self.routers[room].find(session_id) if room in self.routers else None
        if participant is None:
            raise SessionNotFound("no such session on this node")
        return participant

    @staticmethod
    def _remote_candidates(participant: Participant, lines: tuple[str, ...]) -> tuple[list[Any], bool]:
        """Parse ``candidate:...`` values for ``participant``'s bundle transport, dropping those
        a loopback-only node cannot reach.  :returns: the candidates and whether any was
        dropped.  :raises BadOffer: a malformed line."""
        transceivers = participant.pc.getTransceivers()
        mid = transceivers[0].mid if transceivers else None
        candidates, dropped = [], False
        for line in lines:
            try:
                candidate = candidate_from_sdp(str(line).removeprefix("a=").removeprefix("candidate:"))
            except (ValueError, IndexError, AssertionError) as exc:
                raise BadOffer(f"bad candidate line: {line!r}") from exc
            if not candidate_reachable(candidate.ip, aiortc_private.host_addresses()):
                dropped = True  # a loopback-only node never checks other addresses
                continue
            candidate.sdpMid = mid
            candidate.sdpMLineIndex = 0
            candidates.append(candidate)
        return candidates, dropped

    async def _trickle(self, data: dict[str, Any]) -> dict[str, Any]:
        """Trickle ICE (RFC 9725 §4.3.2): remote candidates for an existing session."""
        request = Trickle.from_wire(data)
        participant = self._participant(request.session_id)
        candidates, _ = self._remote_candidates(participant, request.candidates)
        for candidate in candidates:
            await participant.pc.addIceCandidate(candidate)
        if request.end_of_candidates:
            await participant.pc.addIceCandidate(None)
        return OK

    async def _ice_restart(self, data: dict[str, Any]) -> dict[str, Any]:
        request = IceRestart.from_wire(data)
        participant = self._participant(request.session_id)
        candidates, dropped = self._remote_candidates(participant, request.candidates)
        try:
            ufrag, pwd, local = await aiortc_private.restart_ice(
                participant.pc, request.ice_ufrag, request.ice_pwd, candidates,
                # as for an offer: with candidates dropped, peer-reflexive ones must stay learnable
                end_of_candidates=request.end_of_candidates and not dropped)
        except aiortc_private.IceRestartUnavailable as exc:
            raise IceRestartRefused(f"{exc}; trickle candidates, or retry") from None
        except ValueError as exc:
            raise BadOffer(str(exc)) from None
        logger.info("session %s…: ICE restarted", request.session_id[:8])
        lines = "\r\n".join(f"a=candidate:{candidate_to_sdp(c)}" for c in local)
        lines = announce_address(lines, self.config.ice_announce)
        mids, media = _bundle_tag(participant.pc.localDescription.sdp if participant.pc.localDescription else "")
        announced = tuple(ln.removeprefix("a=") for ln in lines.split("\r\n") if ln)
        return IceRestarted(ufrag, pwd, announced, mids, media).to_wire()

    async def _video_size(self, data: dict[str, Any]) -> dict[str, Any]:
        request = VideoSize.from_wire(data)
        consumer = self._participant(request.session_id).consumers.get("video")
        if consumer is not None:
            consumer.set_max_size(request.width, request.height)
        return OK

    async def _ingest_advice(self, data: dict[str, Any]) -> dict[str, Any]:
        request = IngestAdvice.from_wire(data)
        participant = self._participant(request.session_id)
        if participant.identity.role != SessionKind.PUBLISHER:
            raise SessionNotFound("no such publisher session on this node")
        if "advice" in request.given:
            participant.ingest_advice = request.advice
            logger.info("session %s…: ingest advice %s", request.session_id[:8],
                        "set" if request.advice else "cleared", extra={"room": participant.room})
        if "dropped_frames" in request.given:  # every few seconds: not logged
            participant.ingest_dropped_frames = request.dropped_frames
        return OK

    def _forget(self, session_id: str) -> None:
        """Drop a session; its room's Router goes too once nothing uses it — neither a
        session in it nor one still being opened for the room (it is registered here
        before its SDP is answered, while `Router.empty` cannot see it yet)."""
        room = self._session_rooms.pop(session_id, None)
        self._session_kinds.pop(session_id, None)
        self._sessions_changed.set()
        router = self.routers.get(room) if room else None
        if (room is not None and router is not None and router.empty
                and room not in self._session_rooms.values()):
            self.routers.pop(room, None)

    # -------------------------------------------------------------- events
    def _session_closed(self, room: str, session_id: str, reason: str) -> None:
        kind = self._session_kinds.get(session_id, SessionKind.VIEWER)
        self._forget(session_id)
        self._send(NodeEvent.SESSION_CLOSED, SessionClosed(room, session_id, reason, kind).to_wire())

    def _session_connected(self, room: str, session_id: str) -> None:
        self._send(NodeEvent.SESSION_CONNECTED, SessionConnected(room, session_id).to_wire())

    def _room_state(self, state: dict[str, Any]) -> None:
        self._send(NodeEvent.ROOM_STATE, state)

    def _send(self, event: str, data: dict[str, Any]) -> None:
        if self._emit is None:
            return
        result = self._emit(event, data)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _run_tick(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.5)
                started = time.monotonic()
                for router in list(self.routers.values()):
                    router.tick()
                if time.monotonic() - started > 0.1:
                    logger.warning("SFU tick took %.0f ms", (time.monotonic() - started) * 1000)
        except asyncio.CancelledError:
            pass

    async def drain(self, deadline_s: float) -> bool:
        """Refuse new sessions (``draining``, RPCs answer 503) and wait up to ``deadline_s``
        for the existing ones to end.  :returns: whether they all ended in time."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        while self._session_rooms and loop.time() < deadline:
            self._sessions_changed.clear()
            try:
                await asyncio.wait_for(self._sessions_changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        return not self._session_rooms

    def load(self) -> dict[str, Any]:
        """``{sessions, rooms, viewers, pending, capacity, publisher_reserve, draining, role}``:
        ``viewers`` counts connected viewers, ``pending`` the sessions not connected yet;
        a viewer is admitted while ``sessions + 1 + publisher_reserve <= capacity``;
        ``role`` is ``config.role`` (``"media"``, or ``"hls"``: never placed on)."""
        viewers = sum(r.connected_viewers for r in self.routers.values())
        pending = sum(1 for r in self.routers.values() for p in r.sessions() if not p.connected)
        load: dict[str, Any] = {"sessions": len(self._session_rooms), "rooms": len(self.routers),
                                "viewers": viewers, "pending": pending,
                                "capacity": self.config.max_sessions,
                                "publisher_reserve": self.config.reserved_for_publishers,
                                "draining": self.draining, "role": self.config.role}
        for section, reporter in self.load_reporters.items():
            try:
                load[section] = reporter()
            except Exception:
                logger.exception("load reporter %r failed", section)
        return load

    async def close(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            try:
                await self._tick_task
            except asyncio.CancelledError:
                pass
            self._tick_task = None
        for router in list(self.routers.values()):
            await router.close()
        self.routers.clear()
        self._session_rooms.clear()
        await self.estimators.close()


def _bundle_tag(sdp: str) -> tuple[tuple[str, ...], str]:
    """The ``a=group:BUNDLE`` mids and the first ``m=`` line of a local description."""
    mids: tuple[str, ...] = ()
    media = ""
    for line in sdp.splitlines():
        if line.startswith("a=group:BUNDLE ") and not mids:
            mids = tuple(line.split()[1:])
        elif line.startswith("m=") and not media:
            media = line.strip()
    return mids, media
