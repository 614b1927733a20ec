"""The pages' Socket.IO namespace (``/``): live room state pushed to watch pages.

A page connects without credentials (rooms are public), joins one room and then gets a
``room`` event whenever the SFU node hosting it reports a new state:

* ``join`` ``{"room": name}`` → ack ``{"room": name, "live": bool, "viewers": int}`` (the
  room's current state on this instance), or ``{"error": str}`` when the room does not
  exist, the request is malformed, or the client's address joins more than `JOIN_RATE`
  times per second (then also ``"retry_after"``, seconds).  A client is in at most one
  room: joining another leaves the previous one.
* ``leave`` (no data) → ack ``{"left": name | None}``.
* any other event → ack ``{"error": "unknown event ..."}``.  Every event asking for an
  ack gets one, whatever its payload (none, several arguments, any JSON); bad input is
  answered, never logged above DEBUG.
* server → client ``room`` ``{"room": name, "live": bool, "viewers": int, "ts": int}``,
  ``ts`` = emit time, Unix epoch milliseconds (`announce_room`).

Limits, per client address (`signaling.client_ip.client_of`, behind
``RELAYCAST_TRUSTED_PROXIES``), so that reconnecting does not reset them: at most
``RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS`` concurrent connections to this namespace on this
instance (more are refused with a ``ConnectionRefusedError`` message), and the `join`
token bucket.  The ``Origin`` check (``RELAYCAST_ALLOWED_ORIGINS``) is python-engineio's,
configured in `signaling.app.create_app`.

Identity: a page may also be someone.  The platform plugs identifiers into
``app[SIO_IDENTIFY]`` (a list; signaling knows nothing about accounts): on connect each is
called with the handshake request (cookies, headers) and the client's ``auth`` payload and
returns the Socket.IO rooms that connection enters (e.g. ``user:{id}`` for a valid access
cookie; none for an anonymous page).  A failing identifier is logged and the page stays
anonymous.  The rooms are fixed for the connection's life: a page that logs in reconnects.

Clients of a room are in the Socket.IO room ``room:{name}``.  In Redis mode the server's
client manager (`signaling.redis_state.SocketIORedisManager`) delivers an emit to the
clients of every signaling instance, so exactly one instance — the one the reporting node
is connected to — emits each state (`announce_room`'s ``origin``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import socketio
from aiohttp import web

from common.ratelimit import TokenBuckets

from .app_keys import CONFIG, ROOMS, SIO
from .client_ip import client_of, handshake_request

logger = logging.getLogger(__name__)

NAMESPACE = "/"
EVENT = "room"
JOIN_RATE = 10.0
"""Joins per second per client address (burst as many); more are refused with ``retry_after``."""

Ack = dict[str, Any]

Identifier = Callable[[web.Request, Any], Awaitable[Collection[str]]]
"""``identify(handshake_request, auth) -> rooms`` (see the module docstring)."""

SIO_IDENTIFY: web.AppKey[list[Identifier]] = web.AppKey("sio_identify", list)
"""The identifiers of the pages' connections (``app.setdefault(SIO_IDENTIFY, []).append(f)``)."""


def sio_room(name: str) -> str:
    """The Socket.IO room of a relaycast room's pages: ``room:{name}``."""
    return f"room:{name}"


class BrowserNamespace(socketio.AsyncNamespace):
    """``/``: pages join one public room and receive its ``room`` events (module docstring).

    :param join_rate: joins per second per client address (burst as many).
    :param clock: monotonic seconds for the join limiter (injectable for tests).
    """

    def __init__(
        self, app: web.Application, join_rate: float = JOIN_RATE, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(NAMESPACE)
        self.app = app
        self.joined: dict[str, str] = {}
        """Socket.IO sid → the relaycast room it joined (clients connected here)."""
        self.addresses: dict[str, str] = {}
        """Socket.IO sid → its client address (clients connected here)."""
        self.connections: dict[str, int] = {}
        """Client address → its connections to this namespace here (only addresses with some)."""
        self.join_limiter = TokenBuckets(join_rate, max(1, int(join_rate)), clock=clock)
        self._events: dict[str, Callable[[str, tuple[Any, ...]], Awaitable[Ack]]] = {
            "join": self._join, "leave": self._leave,
        }

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Dispatch connect, disconnect and the client's events (python-socketio's hook).

        python-socketio hands a client's event to the handler with the client's arguments
        as they came, and a client may even name its events ``connect`` or
        ``disconnect``; here only the server's own connect (it carries the handshake
        request) and disconnect (the sid is already leaving) reach those handlers, and a
        client event always gets an ack dict."""
        if event == "connect" and len(args) >= 2 and handshake_request(args[1]) is not None:
            return await self.on_connect(*args)
        if event == "disconnect" and args and not self.server.manager.is_connected(args[0], NAMESPACE):
            return await self.on_disconnect(*args)
        if not args:  # not a client event: python-socketio always passes the sid
            return None
        sid, payload = args[0], args[1:]
        handler = self._events.get(event) if isinstance(event, str) else None
        if handler is None:
            return {"error": f"unknown event; send one of: {', '.join(self._events)}"}
        try:
            return await handler(sid, payload)
        except Exception:  # a bug here, not bad input: log it, still answer
            logger.exception("%s event failed", event)
            return {"error": "internal error"}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Public rooms: no credentials; at most ``sio_connections_per_address`` per address.

        :raises ConnectionRefusedError: the address has that many connections here."""
        request = handshake_request(environ)
        address = client_of(request) if request is not None else "?"
        limit = self.app[CONFIG].sio_connections_per_address
        if self.connections.get(address, 0) >= limit:
            logger.debug("refused a Socket.IO connection from %s: %d open", address, limit)
            raise socketio.exceptions.ConnectionRefusedError(
                f"too many connections from {address} (at most {limit}); close one and retry")
        self.connections[address] = self.connections.get(address, 0) + 1
        self.addresses[sid] = address
        if request is not None:
            await self._identify(sid, request, auth)

    async def _identify(self, sid: str, request: web.Request, auth: Any) -> None:
        """Enter the rooms ``app[SIO_IDENTIFY]`` names for this connection."""
        for identify in self.app.get(SIO_IDENTIFY, ()):
            try:
                rooms = await identify(request, auth)
            except Exception:
                logger.exception("Socket.IO identifier %r failed", identify)
                continue
            for room in rooms:
                await self.enter_room(sid, room)

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        self.joined.pop(sid, None)  # python-socketio leaves its rooms itself
        address = self.addresses.pop(sid, None)
        if address is not None:
            left = self.connections.get(address, 1) - 1
            if left > 0:
                self.connections[address] = left
            else:
                self.connections.pop(address, None)

    async def _join(self, sid: str, payload: tuple[Any, ...]) -> Ack:
        wait = self.join_limiter.take(self.addresses.get(sid, sid))
        if wait > 0:
            return {"error": "too many joins", "retry_after": round(wait, 3)}
        data = payload[0] if len(payload) == 1 else None
        name = data.get("room") if isinstance(data, dict) else None
        if not isinstance(name, str):
            return {"error": 'expected {"room": name}'}
        room = await self.app[ROOMS].find(name)
        if room is None:
            return {"error": "no such room"}
        previous = self.joined.get(sid)
        if previous is not None and previous != name:
            await self.leave_room(sid, sio_room(previous))
        await self.enter_room(sid, sio_room(name))
        self.joined[sid] = name
        return room.to_json()

    async def _leave(self, sid: str, payload: tuple[Any, ...]) -> Ack:
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
