"""The pages' Socket.IO namespace (``/``): live room state pushed to watch pages.

A page connects without credentials (a private room asks for its playback token at
``join``), joins one room and then gets a ``room`` event whenever the SFU node hosting it
reports a new state:

* ``join`` ``{"room": name, "token"?: playback token}`` → ack ``{"room": name, "live":
  bool, "viewers": int}`` (the room's current state on this instance), or ``{"error": str}``
  when the room does not exist, the request is malformed, the room is private and
  ``token`` is not a valid playback token for it (then also ``"status": 401``), or the
  client's address joins more than `JOIN_RATE` times per second (then also
  ``"retry_after"``, seconds).  A client is in at most one
  room: joining another leaves the previous one.
  The ack also carries ``chat``: ``{"participant": {id, name, role, user?}, "history":
  [messages], "moderator": bool, "badges": [...]}`` — who this connection chats as and the
  room's recent messages (``history`` is ``[]`` and ``error`` is set when the chat log is
  unreachable).
* ``chat`` ``{"text": str}`` (after ``join``) → ack ``{"message": <numbered message>}`` or
  ``{"error": code, "detail": str, "retry_after"?: s}``: the room's chat authority
  (:class:`signaling.chat.ChatService`) decides, exactly as for data-channel messages.  A
  connection refused ``rate_limited`` :data:`FLOOD_REFUSALS` times within
  :data:`FLOOD_WINDOW_S` seconds is disconnected; a guest's address is then muted for
  :data:`FLOOD_MUTE_S` seconds.
* ``leave`` (no data) → ack ``{"left": name | None}``.
* any other event → ack ``{"error": "unknown event ..."}``.  Every event asking for an
  ack gets one, whatever its payload (none, several arguments, any JSON); bad input is
  answered, never logged above DEBUG.
* server → client ``room`` ``{"room": name, "live": bool, "viewers": int, "ts": int}``,
  ``ts`` = emit time, Unix epoch milliseconds (`announce_room`).
* server → client ``chat``: every chat event of the joined room — a numbered message,
  ``{"type": "delete", "ids"}`` or ``{"type": "clear"}`` (docs/chat.md) — delivered by
  each signaling instance to its own connections (:meth:`BrowserNamespace.deliver_chat`).

Limits, per client address (`signaling.client_ip.client_of`, behind
``RELAYCAST_TRUSTED_PROXIES``), so that reconnecting does not reset them: at most
``RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS`` concurrent connections to this namespace on this
instance (more are refused with a ``ConnectionRefusedError`` message), and the `join`
token bucket.  The ``Origin`` check (``RELAYCAST_ALLOWED_ORIGINS``) is python-engineio's,
configured in `signaling.app.create_app`.

Identity: a page may also be someone.  The platform plugs identifiers into
``app[SIO_IDENTIFY]`` (a list; signaling knows nothing about accounts): on connect each is
called with the handshake request (cookies, headers) and the client's ``auth`` payload and
returns a :class:`PageIdentity` — the Socket.IO rooms that connection enters (e.g.
``user:{id}`` for a valid access cookie) and the user it chats as — or just the rooms.  A
failing identifier is logged and the page stays anonymous; an anonymous page chats as a
guest with a generated name.  The identity is fixed for the connection's life: a page that
logs in reconnects.

Clients of a room are in the Socket.IO room ``room:{name}``.  In Redis mode the server's
client manager (`signaling.redis_state.SocketIORedisManager`) delivers an emit to the
clients of every signaling instance, so exactly one instance — the one the reporting node
is connected to — emits each state (`announce_room`'s ``origin``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import socketio
from aiohttp import web

from common.ratelimit import TokenBuckets

from .app_keys import CHAT, CONFIG, ROOMS, SIO
from .chat import ChatRefused, ChatUnavailable, Sender
from .client_ip import client_of, handshake_request
from .names import viewer_name
from .publish_auth import AccessRefused

logger = logging.getLogger(__name__)

NAMESPACE = "/"
EVENT = "room"
JOIN_RATE = 10.0
"""Joins per second per client address (burst as many); more are refused with ``retry_after``."""

CHAT_EVENT = "chat"
FLOOD_REFUSALS = 200
FLOOD_WINDOW_S = 10.0
"""A connection whose chat messages are refused ``rate_limited`` this many times within
this many seconds is flooding: it is disconnected (its refusals cost the instance CPU that
the room's deliveries need)."""
FLOOD_MUTE_S = 60.0
"""After a guest's connection was disconnected for flooding, guests from its address are
refused ``rate_limited`` for this long without their messages reaching the chat authority
(a reconnecting guest is a new participant with a fresh bucket).  Users keep their own
bucket across connections."""

Ack = dict[str, Any]


@dataclass(frozen=True)
class PageIdentity:
    """What an identifier found for a page's connection: Socket.IO ``rooms`` to enter and
    the platform user it chats as (``user_id``/``username``; ``None`` = a guest)."""

    rooms: Collection[str] = ()
    user_id: str | None = None
    username: str | None = None


Identifier = Callable[[web.Request, Any], Awaitable[PageIdentity | Collection[str]]]
"""``identify(handshake_request, auth) -> PageIdentity | rooms`` (see the module docstring)."""

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
        self.senders: dict[str, Sender] = {}
        """Socket.IO sid → who it chats as (connections here)."""
        self.floods: dict[str, tuple[float, int]] = {}
        """Socket.IO sid → (start of its refusal window, monotonic s; ``rate_limited`` refusals in it)."""
        self.clock = clock
        self.muted: dict[str, float] = {}
        """Client address → until when (monotonic s) its guests' chat is refused (:data:`FLOOD_MUTE_S`)."""
        self.join_limiter = TokenBuckets(join_rate, max(1, int(join_rate)), clock=clock)
        self._events: dict[str, Callable[[str, tuple[Any, ...]], Awaitable[Ack]]] = {
            "join": self._join, "leave": self._leave, "chat": self._chat,
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
        """No credentials needed (a page may be someone, :data:`SIO_IDENTIFY`); at most
        ``sio_connections_per_address`` per address.

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
        user: tuple[str, str] | None = None
        if request is not None:
            user = await self._identify(sid, request, auth)
        participant = secrets.token_hex(6)
        self.senders[sid] = Sender(participant, user[1] if user else viewer_name(),
                                   user_id=user[0] if user else None, via="socketio")

    async def _identify(self, sid: str, request: web.Request, auth: Any) -> tuple[str, str] | None:
        """Enter the rooms ``app[SIO_IDENTIFY]`` names for this connection; the
        ``(user_id, username)`` one of them found, if any."""
        user = None
        for identify in self.app.get(SIO_IDENTIFY, ()):
            try:
                found = await identify(request, auth)
            except Exception:
                logger.exception("Socket.IO identifier %r failed", identify)
                continue
            if isinstance(found, PageIdentity):
                if found.user_id and found.username and user is None:
                    user = (found.user_id, found.username)
                found = found.rooms
            for room in found:
                await self.enter_room(sid, room)
        return user

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        self.joined.pop(sid, None)  # python-socketio leaves its rooms itself
        self.senders.pop(sid, None)
        self.floods.pop(sid, None)
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
        token = data.get("token") if isinstance(data, dict) else None
        try:  # a private room's pages need its playback token, as its WHEP and LL-HLS do
            await self.app[ROOMS].authority.authorize_view(name, token if isinstance(token, str) else None)
        except AccessRefused as refused:
            return {"error": refused.detail, "status": refused.status}
        previous = self.joined.get(sid)
        if previous is not None and previous != name:
            await self.leave_room(sid, sio_room(previous))
        await self.enter_room(sid, sio_room(name))
        self.joined[sid] = name
        return {**room.to_json(), "chat": await self._chat_welcome(sid, name)}

    async def _chat_welcome(self, sid: str, room: str) -> Ack:
        sender = self.senders.get(sid) or Sender(secrets.token_hex(6), viewer_name(), via="socketio")
        chat = self.app[CHAT]
        out: Ack = {"participant": sender.to_dict(), "history": [], "moderator": False, "badges": []}
        try:
            out.update(await chat.policy.describe(room, sender))
        except Exception:
            logger.exception("chat policy describe failed")
        try:
            out["history"] = await chat.history(room)
        except ChatUnavailable as exc:
            out["error"] = f"chat history is unavailable: {exc}"
        return out

    async def _chat(self, sid: str, payload: tuple[Any, ...]) -> Ack:
        room = self.joined.get(sid)
        sender = self.senders.get(sid)
        if room is None or sender is None:
            return {"error": "bad_message", "detail": "join a room first"}
        data = payload[0] if len(payload) == 1 else None
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            return {"error": "bad_message", "detail": 'expected {"text": "..."}'}
        address = self.addresses.get(sid, "?")
        muted_for = self.muted.get(address, 0.0) - self.clock() if sender.user_id is None else 0.0
        if muted_for > 0:
            self._count_flood(sid)
            return {"error": "rate_limited", "detail": "this address flooded the chat; wait",
                    "retry_after": round(muted_for, 3)}
        try:
            return {"message": await self.app[CHAT].submit(room, sender, text)}
        except ChatRefused as refused:
            if refused.code == "rate_limited":
                self._count_flood(sid)
            return refused.to_error()

    def _count_flood(self, sid: str) -> None:
        """Disconnect ``sid`` at its :data:`FLOOD_REFUSALS`-th ``rate_limited`` refusal within
        :data:`FLOOD_WINDOW_S` (after this ack is sent)."""
        now = self.clock()
        start, count = self.floods.get(sid, (now, 0))
        if now - start > FLOOD_WINDOW_S:
            start, count = now, 0
        self.floods[sid] = (start, count + 1)
        if count + 1 == FLOOD_REFUSALS:
            address = self.addresses.get(sid, "?")
            logger.info("disconnecting a flooding chat connection from %s (%d refusals in %.0f s)",
                        address, FLOOD_REFUSALS, FLOOD_WINDOW_S)
            sender = self.senders.get(sid)
            if sender is not None and sender.user_id is None:
                self.muted = {a: t for a, t in self.muted.items() if t > now}  # bounded
                self.muted[address] = now + FLOOD_MUTE_S
            task = asyncio.ensure_future(self._disconnect_later(sid))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _disconnect_later(self, sid: str) -> None:
        await asyncio.sleep(0)  # let the refusal's ack go out first
        await self.server.disconnect(sid, namespace=NAMESPACE)

    async def deliver_chat(self, room: str, event: dict[str, Any]) -> None:
        """A :class:`~signaling.chat.ChatService` sink: ``event`` to this instance's pages
        in ``room`` (each instance delivers to its own; ``ignore_queue`` keeps the Redis
        manager from repeating it on the others)."""
        await self.server.emit(CHAT_EVENT, event, room=sio_room(room), namespace=NAMESPACE,
                               ignore_queue=True)

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
