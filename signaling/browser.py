"""The pages' Socket.IO namespace (``/``): live room state pushed to watch pages.

A page connects without credentials (rooms are public), joins one room and then gets a
``room`` event whenever the SFU node hosting it reports a new state:

* ``join`` ``{"room": name}`` → ack ``{"room": name, "live": bool, "viewers": int}`` (the
  room's current state on this instance), or ``{"error": str}`` when the room does not
  exist, the request is malformed, or the client joins more than `JOIN_RATE` times per
  second (then also ``"retry_after"``, seconds).  A client is in at most one room:
  joining another leaves the previous one.
* ``leave`` (no data) → ack ``{"left": name | None}``.
* server → client ``room`` ``{"room": name, "live": bool, "viewers": int, "ts": int}``,
  ``ts`` = emit time, Unix epoch milliseconds (`announce_room`).

Clients of a room are in the Socket.IO room ``room:{name}``.  In Redis mode the server's
client manager (`signaling.redis_state.SocketIORedisManager`) delivers an emit to the
clients of every signaling instance, so exactly one instance — the one the reporting node
is connected to — emits each state (`announce_room`'s ``origin``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import socketio
from aiohttp import web

from common.ratelimit import TokenBuckets

from .app_keys import ROOMS, SIO

logger = logging.getLogger(__name__)

NAMESPACE = "/"
EVENT = "room"
JOIN_RATE = 10.0
"""Joins per second per client (burst as many); more are refused with ``retry_after``."""


def sio_room(name: str) -> str:
    """The Socket.IO room of a relaycast room's pages: ``room:{name}``."""
    return f"room:{name}"


class BrowserNamespace(socketio.AsyncNamespace):
    """``/``: pages join one public room and receive its ``room`` events (module docstring)."""

    def __init__(self, app: web.Application, join_rate: float = JOIN_RATE) -> None:
        super().__init__(NAMESPACE)
        self.app = app
        self.joined: dict[str, str] = {}
        """Socket.IO sid → the relaycast room it joined (clients connected here)."""
        self._limiter = TokenBuckets(join_rate, max(1, int(join_rate)))

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        return None  # public rooms: no credentials

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        self.joined.pop(sid, None)  # python-socketio leaves its rooms itself

    async def on_join(self, sid: str, data: Any) -> dict[str, Any]:
        wait = self._limiter.take(sid)
        if wait > 0:
            return {"error": "too many joins", "retry_after": round(wait, 3)}
        name = data.get("room") if isinstance(data, dict) else None
        if not isinstance(name, str):
            return {"error": 'expected {"room": name}'}
        room = self.app[ROOMS].get(name)
        if room is None:
            return {"error": "no such room"}
        previous = self.joined.get(sid)
        if previous is not None and previous != name:
            await self.leave_room(sid, sio_room(previous))
        await self.enter_room(sid, sio_room(name))
        self.joined[sid] = name
        return room.to_json()

    async def on_leave(self, sid: str, data: Any = None) -> dict[str, Any]:
        name = self.joined.pop(sid, None)
        if name is not None:
            await self.leave_room(sid, sio_room(name))
        return {"left": name}


def register(app: web.Application) -> BrowserNamespace:
    """Create the pages' namespace and register it on ``app[SIO]`` (call in ``create_app``)."""
    namespace = BrowserNamespace(app)
    app[SIO].register_namespace(namespace)
    return namespace


async def announce_room(app: web.Application, room_name: str, origin: bool) -> None:
    """Push ``room_name``'s state (from ``app[ROOMS]``) to its pages, on every instance.

    Emits ``room`` ``{"room", "live", "viewers", "ts"}`` (``ts``: now, epoch ms) to
    ``room:{room_name}``.  Node events reach every signaling instance, but one emit
    already reaches every instance's pages, so only the instance the node is connected
    to emits: pass ``origin=node.local``; with ``origin`` False (or an unknown room)
    nothing is sent.  In Redis mode the emit waits for the publish (bounded, 2 s).
    """
    if not origin:
        return
    room = app[ROOMS].get(room_name)
    if room is None:
        return
    payload = {**room.to_json(), "ts": int(time.time() * 1000)}
    try:
        await app[SIO].emit(EVENT, payload, room=sio_room(room_name), namespace=NAMESPACE)
    except Exception:  # never let a page push break the node event path
        logger.exception("announcing room %s failed", room_name)
