"""The signaling application factory: aiohttp + python-socketio on one server."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web

from common.names import is_room_name
from common.problems import HttpProblem, problem_middleware
from common.ratelimit import TokenBuckets
from sfu.protocol import SOCKETIO_PATH as NODE_SOCKETIO_PATH
from sfu.protocol import NodeEvent
from web import STATIC_DIR

from . import browser, hls_api
from .app_keys import (
    CASCADE,
    CHAT,
    CONFIG,
    LIMITER,
    NAMESPACE_KEY,
    ROOM_LISTENERS,
    ROOMS,
    SESSION_SERVICE,
    SIO,
)
from .cascade import Cascade, MemoryPipeRegistry, PipeRegistry, RedisPipeRegistry
from .chat import ChatLog, ChatService, MemoryChatLog
from .client_ip import TRUSTED_PROXIES, client_of
from .config import SignalingConfig
from .nodes import (
    MemoryNodeRegistry,
    NodeRegistry,
    PlacementStrategy,
    SfuNamespace,
    SfuNode,
    acts_on,
)
from .publish_auth import PublishAuthority
from .rooms import Room, RoomRegistry
from .security_headers import harden_response, is_https
from .sessions import MemorySessionStore, RedisSessionStore, SessionService, SessionStore
from .whip import MediaResources

logger = logging.getLogger(__name__)

_CORS_PREFIXES = ("/whip/", "/whep/", "/api/")
_EXPOSE = "Location, ETag, Link, Accept-Post, Accept-Patch, Retry-After, WWW-Authenticate"

ICE_LIMITER = web.AppKey("ice_limiter", TokenBuckets)
"""Per-client limiter of ``GET /api/ice-servers`` (it mints TURN credentials)."""


@web.middleware
async def cors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """CORS for the WHIP/WHEP and API resources, on success and on error alike."""
    if not (request.path.startswith(_CORS_PREFIXES) or request.path == "/whip"):
        return await handler(request)
    origin = request.app[CONFIG].cors_origin
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Expose-Headers": _EXPOSE,
        "Access-Control-Max-Age": "600",
    }
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update({k: v for k, v in headers.items() if k not in exc.headers})
        raise
    for key, value in headers.items():
        response.headers.setdefault(key, value)
    return response


_ENGINEIO_CLIENT_ERRORS = ("bad-origin", "bad-sid", "bad-transport", "bad-upgrade", "bad-version",
                           "bad-jsonp-index", "unexpected-http")


def sio_allowed_origins(allowed: tuple[str, ...]) -> str | list[str] | Callable[[str | None, dict[str, Any]], bool]:
    """python-engineio's ``cors_allowed_origins`` for ``RELAYCAST_ALLOWED_ORIGINS``:
    :func:`same_origin` when none are configured, ``"*"`` for any, else the list.  A request
    without ``Origin`` is accepted."""
    if not allowed:
        return same_origin
    return "*" if allowed == ("*",) else list(allowed)


def same_origin(origin: str | None, environ: dict[str, Any]) -> bool:
    """``Origin`` is the request's own ``scheme://Host`` (RFC 6454 §4): ``https`` when it came
    over TLS to this process (python-engineio's own check takes every aiohttp request for
    ``http``, and refused the pages' WebSocket over HTTPS), or the scheme a proxy's
    ``X-Forwarded-Proto`` names, as engineio's default allows."""
    host = environ.get("HTTP_HOST")
    if origin is None or host is None:
        return origin is None
    request = environ.get("aiohttp.request")
    schemes = {"https" if request is not None and is_https(request) else "http"}
    forwarded = environ.get("HTTP_X_FORWARDED_PROTO")
    if forwarded:
        schemes.add(forwarded.split(",")[0].strip())
    return origin in {f"{scheme}://{host}" for scheme in schemes}


def create_app(config: SignalingConfig, placement: PlacementStrategy | None = None,
               authority: PublishAuthority | None = None) -> web.Application:
    """Build the signaling app.  Embedded SFU startup lives in :mod:`relaycast.service`.

    :param placement: node placement strategy (default `signaling.nodes.least_loaded`).
    :param authority: which rooms exist and who publishes to them (default
        :class:`~signaling.static_keys.StaticKeys`); replaceable until start-up through
        ``app[ROOMS].authority``.
    """
    app = web.Application(middlewares=[cors_middleware, problem_middleware], client_max_size=1024 * 1024)
    app[CONFIG] = config
    app[TRUSTED_PROXIES] = config.trusted_proxies
    app[ROOMS] = RoomRegistry(authority=authority)
    app[ROOM_LISTENERS] = []
    app[LIMITER] = TokenBuckets(config.request_rate, config.request_burst)
    app[ICE_LIMITER] = TokenBuckets(config.ice_servers_rate, config.ice_servers_burst)
    app.on_response_prepare.append(harden_response)

    registry, manager = _node_registry(config, app[ROOMS], placement)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager,
                               cors_allowed_origins=sio_allowed_origins(config.allowed_origins),
                               logger=False, engineio_logger=False)
    # python-engineio logs the first bad request of each kind (a foreign Origin, an unknown
    # session, a bad transport...) at ERROR; they are the client's errors: INFO from the first.
    sio.eio.log_message_keys.update(_ENGINEIO_CLIENT_ERRORS)
    sio.attach(app)  # the pages: /socket.io/
    # SFU nodes: the same server on its own path, which a public edge denies
    # (SfuNamespace admits nodes only on it).
    sio.attach(app, socketio_path=NODE_SOCKETIO_PATH)
    app[SIO] = sio
    namespace = SfuNamespace(config.node_secret, registry, lambda event, node, data: _on_node_event(app, event, node, data))
    sio.register_namespace(namespace)
    app[NAMESPACE_KEY] = namespace
    app[CASCADE] = Cascade(namespace, _pipe_registry(registry), viewers_per_node=config.viewers_per_node,
                           rpc_timeout_s=config.rpc_timeout_s, rooms=app[ROOMS])
    app[SESSION_SERVICE] = SessionService(config, app[ROOMS], namespace, app[CASCADE], _session_store(registry))
    pages = browser.register(app)
    chat = ChatService(_chat_log(config), max_chars=config.sfu.chat_max_chars, rate=config.sfu.chat_rate,
                       burst=config.sfu.chat_burst, history=config.sfu.chat_history)
    chat.sinks += [pages.deliver_chat, namespace.deliver_chat]
    namespace.chat = chat
    app[CHAT] = chat
    app.on_startup.append(_start_chat)
    app.on_cleanup.append(_close_chat)
    app.on_startup.append(_start_registry)
    app.on_shutdown.append(_closing_registry)
    app.on_cleanup.append(_close_registry)

    for kind in ("whip", "whep"):
        app.router.add_routes(MediaResources(kind).routes())
    app.router.add_routes([
        web.get("/api/rooms", list_rooms),
        web.get("/api/rooms/{room}", get_room),
        web.get("/api/ice-servers", ice_servers),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/", page("index.html")),
        web.get("/broadcast/{room}", page("broadcast.html")),
        web.get("/watch/{room}", page("watch.html")),
        # hls.js for the watch page's LL-HLS fallback, from the npm install (no CDN).
        web.get("/static/vendor/{name}", vendor_file),
    ])
    hls_api.add_routes(app)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    return app


def _node_registry(
    config: SignalingConfig, rooms: RoomRegistry, placement: PlacementStrategy | None
) -> tuple[NodeRegistry, socketio.AsyncManager | None]:
    """In memory without ``REDIS_URL``; else Redis for nodes/rooms and Socket.IO."""
    if not config.redis_url:
        return MemoryNodeRegistry(placement), None
    from .redis_state import RedisNodeRegistry, SocketIORedisManager

    manager = SocketIORedisManager(config.redis_url)
    registry = RedisNodeRegistry(config.redis_url, placement=placement, rooms=rooms, extra_check=manager.problem)
    return registry, manager


def _chat_log(config: SignalingConfig) -> ChatLog:
    """The rooms' chat sequence and history: in Redis in Redis mode (one conversation across
    signaling instances), else in memory."""
    if not config.redis_url:
        return MemoryChatLog(config.sfu.chat_history)
    from .chat_redis import RedisChatLog

    return RedisChatLog(config.redis_url, history=config.sfu.chat_history)


async def _start_chat(app: web.Application) -> None:
    await app[CHAT].start()


async def _close_chat(app: web.Application) -> None:
    await app[CHAT].close()


def _session_store(registry: NodeRegistry) -> SessionStore:
    """Session records in Redis in Redis mode (any instance serves PATCH/DELETE), else in memory."""
    from .redis_state import RedisNodeRegistry

    return RedisSessionStore(registry) if isinstance(registry, RedisNodeRegistry) else MemorySessionStore()


def _pipe_registry(registry: NodeRegistry) -> PipeRegistry:
    from .redis_state import RedisNodeRegistry

    return RedisPipeRegistry(registry) if isinstance(registry, RedisNodeRegistry) else MemoryPipeRegistry()


async def _start_registry(app: web.Application) -> None:
    start = getattr(app[SIO].manager, "start", None)
    if start is not None:  # Redis mode: listen before any node connects
        start(app[SIO])
    await app[NAMESPACE_KEY].registry.start()


async def _closing_registry(app: web.Application) -> None:
    """Shutdown: stop the registry first (in Redis mode this instance stops counting as alive,
    so its nodes may register elsewhere at once), then let the nodes connected here go: they
    reconnect and are not declared lost; an open connection would hold the shutdown up."""
    await app[NAMESPACE_KEY].registry.close()
    eio = app[SIO].eio
    sockets = list(eio.sockets.values())
    if sockets:
        # WebSocket peers (SFU nodes, pages) get a graceful close, so they reconnect at
        # once; a polling client that never polls again would hold that close forever,
        # so polling-only sockets are aborted, and every close is bounded.
        async def close(sock: Any) -> None:
            if getattr(sock, "upgraded", False):
                await asyncio.wait_for(sock.close(reason=eio.reason.SERVER_DISCONNECT), 3)
            else:
                await sock.close(wait=False, abort=True, reason=eio.reason.SERVER_DISCONNECT)

        results = await asyncio.gather(*(close(s) for s in sockets), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.debug("closing an Engine.IO socket: %r", result)
        eio.sockets = {}


async def _close_registry(app: web.Application) -> None:
    await app[CASCADE].close()
    close = getattr(app[SIO].manager, "close", None)
    if close is not None:
        await close()


async def _on_node_event(app: web.Application, event: str, node: SfuNode, data: dict[str, Any]) -> None:
    rooms = app[ROOMS]
    origin = acts_on(node, data)  # tells the pages, through the Socket.IO manager, once
    # session_closed / session_connected / node_lost: the session records
    await app[SESSION_SERVICE].on_node_event(event, node, data)
    if event == NodeEvent.ROOM_STATE:
        name = str(data.get("room"))
        room = rooms.get(name)
        if room is None and is_room_name(name):  # a room the node admitted a session to
            room = rooms.ensure(name)
        if room is not None:
            room.apply_state(node.node_id, data)
            await browser.announce_room(app, room.name, origin)
            await _tell_listeners(app, room)
    elif event == NodeEvent.NODE_LOST:
        for room in list(rooms.rooms.values()):
            if room.forget_node(node.node_id):
                await browser.announce_room(app, room.name, origin)
                await _tell_listeners(app, room)
    await app[CASCADE].on_node_event(event, node, data)


async def _tell_listeners(app: web.Application, room: Room) -> None:
    for listener in list(app[ROOM_LISTENERS]):
        try:
            await listener(room)
        except Exception:
            logger.exception("room listener %r failed for %s", listener, room.name)


# ------------------------------------------------------------------ API
async def list_rooms(request: web.Request) -> web.Response:
    """``{"rooms": [{"room", "live", "viewers"}]}``."""
    return web.json_response({"rooms": [r.to_json() for r in request.app[ROOMS].rooms.values()]})


async def get_room(request: web.Request) -> web.Response:
    room = await request.app[ROOMS].find(request.match_info["room"])
    if room is None:
        raise HttpProblem(404, "Not Found", "no such room")
    return web.json_response(room.to_json())


async def ice_servers(request: web.Request) -> web.Response:
    """``{"iceServers": [RTCIceServer...]}`` for the pages' peer connections.

    With TURN REST configured every answer carries freshly minted credentials
    (:mod:`turn.credentials`), hence ``Cache-Control: no-store``.

    :raises HttpProblem: 429 + ``Retry-After`` (s) when the client address has used up
        its ``RELAYCAST_ICE_SERVERS_RATE`` / ``_BURST`` token bucket (RFC 6585 §4).
    """
    wait_s = request.app[ICE_LIMITER].take(client_of(request))
    if wait_s > 0:
        raise HttpProblem(429, None, "too many ICE server requests; retry later",
                          headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
    return web.json_response({"iceServers": request.app[CONFIG].client_ice_servers()},
                             headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when at least one SFU node that takes sessions (role ``media``, not an LL-HLS
    bridge's ``hls`` node) is registered and (Redis mode) Redis is reachable; else 503 with
    the reason in ``status``.  ``nodes`` / ``node_ids`` count every registered node.
    ``/healthz`` never depends on Redis."""
    registry = request.app[NAMESPACE_KEY].registry
    problem = await registry.check()
    nodes = registry.nodes
    media = any(n.role != "hls" for n in nodes.values())
    body: dict[str, Any] = {"status": problem or ("ready" if media else "no SFU node"), "nodes": len(nodes),
                            "node_ids": sorted({n.node_id for n in nodes.values()})}
    if request.app[CONFIG].redis_url:
        body["redis"] = "unavailable" if problem else "ok"
    return web.json_response(body, status=200 if media and not problem else 503,
                             headers={"Cache-Control": "no-store"})


# Files of web/node_modules (``npm ci --prefix web``) the pages may load.
_VENDOR_DIR = STATIC_DIR.parent / "node_modules"
VENDOR_FILES = {
    "hls.min.js": _VENDOR_DIR / "hls.js" / "dist" / "hls.min.js",
    "hls.min.js.map": _VENDOR_DIR / "hls.js" / "dist" / "hls.min.js.map",
    "chart.umd.min.js": _VENDOR_DIR / "chart.js" / "dist" / "chart.umd.min.js",
    "chart.umd.min.js.map": _VENDOR_DIR / "chart.js" / "dist" / "chart.umd.min.js.map",
}


async def vendor_file(request: web.Request) -> web.StreamResponse:
    """``GET /static/vendor/{name}``: an allow-listed file of the npm install.

    404 problem+json when the name is not listed or ``npm ci --prefix web`` was not
    run; the watch page then says the LL-HLS fallback is unavailable.
    """
    name = request.match_info["name"]
    path = VENDOR_FILES.get(name)
    if path is None or not path.is_file():
        detail = f"{name} is not installed (run: npm ci --prefix web)" if path else f"no vendor file {name!r}"
        raise HttpProblem(404, "Not Found", detail)
    content_type = "text/javascript" if name.endswith(".js") else "application/json"
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "public, max-age=3600"}
    )


def page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        path = STATIC_DIR / name
        if not path.exists():
            raise HttpProblem(404, "Not Found", f"{name} is missing")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return handler
