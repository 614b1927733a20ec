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

from aiortc.sdp import candidate_from_sdp

from . import aiortc_private
from .chat import Identity
from .chat_bus import RedisChatBus
from .config import SfuConfig
from .errors import BadOffer, Overloaded, RoomNotLive, SessionNotFound, SfuError
from .negotiation import candidate_reachable
from .router import Router

RouterFactory = Callable[..., Router]
"""Builds a room's Router: ``factory(room, config, on_session_closed, on_room_state, chat_bus=...)``."""

logger = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class Worker:
    """All rooms of this SFU process.

    :param emit: ``emit(event, data)`` towards signaling: ``session_closed``
        ``{room, session_id, reason}`` and ``room_state`` ``{room, live, viewers}``.
    """

    def __init__(
        self, config: SfuConfig, emit: EventSink | None = None, router_factory: RouterFactory = Router
    ) -> None:
        self.config = config
        self.router_factory = router_factory
        self.routers: dict[str, Router] = {}
        self._session_rooms: dict[str, str] = {}
        self._emit = emit
        self._tick_task: asyncio.Task[None] | None = None
        self.draining = False
        self._sessions_changed = asyncio.Event()
        self.load_reporters: dict[str, Callable[[], Any]] = {}
        """Extra sections of `load()`, e.g. ``{"hls": bridge_manager.report}`` (JSON values)."""
        self.chat_bus: RedisChatBus | None = None
        """Chat shared across nodes through Redis (``config.redis_url`` set)."""
        if config.redis_url:
            self.chat_bus = RedisChatBus(config.redis_url, history=config.chat_history)
            self.chat_bus.on_message = self._deliver_chat
        aiortc_private.set_host_addresses(config.ice_gather or None)
        aiortc_private.extend_codec_capabilities()
        aiortc_private.accept_peer_consent_checks()

    async def __aenter__(self) -> Worker:
        self._tick_task = asyncio.create_task(self._run_tick(), name="sfu-tick")
        if self.chat_bus is not None:
            await self.chat_bus.start()
        return self

    def _deliver_chat(self, room: str, message: dict[str, Any]) -> None:
        router = self.routers.get(room)
        if router is not None:
            router.chat.deliver(message)

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

    async def stats(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"node_id": self.config.node_id, "sessions": len(self._session_rooms),
                "rooms": {name: router.state() for name, router in self.routers.items()}}

    async def _rpc(self, fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], data: Any) -> dict[str, Any]:
        try:
            if not isinstance(data, dict):
                raise BadOffer("RPC payload must be an object")
            return await fn(data)
        except SfuError as exc:
            return {"error": exc.to_dict()}
        except Exception as exc:
            logger.exception("SFU RPC failed")
            return {"error": {"status": 500, "title": "SFU internal error", "detail": type(exc).__name__}}

    # --------------------------------------------------------------- impl
    def _router(self, room: str) -> Router:
        router = self.routers.get(room)
        if router is None:
            router = self.router_factory(room, self.config, self._session_closed, self._room_state,
                         chat_bus=self.chat_bus)
            self.routers[room] = router
        return router

    def _admit(self) -> None:
        if self.draining:
            raise Overloaded("this SFU node is draining")
        if len(self._session_rooms) >= self.config.max_sessions:
            raise Overloaded(f"this SFU node is full ({self.config.max_sessions} sessions)")

    async def _publish(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._open_session(data, publish=True)

    async def _subscribe(self, data: dict[str, Any]) -> dict[str, Any]:
        return await self._open_session(data, publish=False)

    async def _open_session(self, data: dict[str, Any], *, publish: bool) -> dict[str, Any]:
        self._admit()
        room, session_id, sdp, identity = _session_args(data)
        router = self._router(room)
        self._session_rooms[session_id] = room
        try:
            open_session = router.publish if publish else router.subscribe
            answer = await open_session(session_id, sdp, identity)
        except BaseException:
            self._forget(session_id)
            raise
        return {"sdp": answer}

    async def _pipe_offer(self, data: dict[str, Any]) -> dict[str, Any]:
        self._admit()
        room, session_id = data.get("room"), data.get("session_id")
        if not (isinstance(room, str) and isinstance(session_id, str)):
            raise BadOffer("room and session_id are required strings")
        router = self.routers.get(room)
        if router is None or not router.live:
            raise RoomNotLive(f"room {room!r} has no publisher on this node")
        ident = data.get("identity")
        if not isinstance(ident, dict):
            ident = {}
        identity = Identity(id=str(ident.get("id") or f"pipe-{session_id[:8]}"),
                            name=str(ident.get("name") or "node pipe")[:64], role="pipe")
        self._session_rooms[session_id] = room
        try:
            offer = await router.pipe_offer(session_id, identity)
        except BaseException:
            self._forget(session_id)
            raise
        return {"sdp": offer}

    async def _pipe_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        session_id, sdp = data.get("session_id"), data.get("sdp")
        if not (isinstance(session_id, str) and isinstance(sdp, str)):
            raise BadOffer("session_id and sdp are required strings")
        room = self._session_rooms.get(session_id)
        router = self.routers.get(room) if room else None
        if router is None:
            raise SessionNotFound("no such pipe on this node")
        await router.pipe_answer(session_id, sdp)
        return {"ok": True}

    async def _close(self, data: dict[str, Any]) -> dict[str, Any]:
        session_id = str(data.get("session_id", ""))
        room = self._session_rooms.get(session_id)
        router = self.routers.get(room) if room else None
        if router is None or not await router.close_session(session_id):
            raise SessionNotFound("no such session on this node")
        self._forget(session_id)
        return {"ok": True}

    async def _trickle(self, data: dict[str, Any]) -> dict[str, Any]:
        """Trickle ICE (RFC 9725 §4.3.2): remote candidates for an existing session."""
        session_id = str(data.get("session_id", ""))
        room = self._session_rooms.get(session_id)
        participant = self.routers[room].find(session_id) if room in self.routers else None
        if participant is None:
            raise SessionNotFound("no such session on this node")
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise BadOffer("candidates must be a list")
        transceivers = participant.pc.getTransceivers()
        mid = transceivers[0].mid if transceivers else None
        for line in candidates:
            try:
                candidate = candidate_from_sdp(str(line).removeprefix("a=").removeprefix("candidate:"))
            except (ValueError, IndexError, AssertionError) as exc:
                raise BadOffer(f"bad candidate line: {line!r}") from exc
            if not candidate_reachable(candidate.ip, aiortc_private.host_addresses()):
                continue  # a loopback-only node never checks other addresses
            candidate.sdpMid = mid
            candidate.sdpMLineIndex = 0
            await participant.pc.addIceCandidate(candidate)
        if data.get("end_of_candidates"):
            await participant.pc.addIceCandidate(None)
        return {"ok": True}

    def _forget(self, session_id: str) -> None:
        """Drop a session; its room's Router goes too once nothing uses it — neither a
        session in it nor one still being opened for the room (it is registered here
        before its SDP is answered, while `Router.empty` cannot see it yet)."""
        room = self._session_rooms.pop(session_id, None)
        self._sessions_changed.set()
        router = self.routers.get(room) if room else None
        if (room is not None and router is not None and router.empty
                and room not in self._session_rooms.values()):
            self.routers.pop(room, None)

    # -------------------------------------------------------------- events
    def _session_closed(self, room: str, session_id: str, reason: str) -> None:
        self._forget(session_id)
        self._send("session_closed", {"room": room, "session_id": session_id, "reason": reason})

    def _room_state(self, state: dict[str, Any]) -> None:
        self._send("room_state", state)

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
        viewers = sum(len(r.viewers) for r in self.routers.values())
        load: dict[str, Any] = {"sessions": len(self._session_rooms), "rooms": len(self.routers),
                                "viewers": viewers, "capacity": self.config.max_sessions,
                                "draining": self.draining}
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
        if self.chat_bus is not None:
            await self.chat_bus.close()


def _session_args(data: dict[str, Any]) -> tuple[str, str, str, Identity]:
    room, session_id, sdp = data.get("room"), data.get("session_id"), data.get("sdp")
    ident = data.get("identity") or {}
    if not (isinstance(room, str) and isinstance(session_id, str) and isinstance(sdp, str)):
        raise BadOffer("room, session_id and sdp are required strings")
    if not isinstance(ident, dict):
        raise BadOffer("identity must be an object")
    identity = Identity(
        id=str(ident.get("id") or session_id[:12]),
        name=str(ident.get("name") or "anonymous")[:64],
        role=ident["role"] if ident.get("role") in ("publisher", "pipe") else "viewer",
    )
    return room, session_id, sdp, identity
