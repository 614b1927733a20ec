"""LL-HLS origin: serves :class:`~hls_bridge.store.RoomStore` contents over HTTP.

Mount it as a sub-application::

    rooms: dict[str, RoomStore] = {}
    app.add_subapp("/hls", create_origin_app(rooms))

``rooms`` may instead be a :class:`RoomProvider` (``async get(room) -> RoomStore |
None``), asked on every request; a provider may start a room's stream lazily.

Routes (relative to the mount point):

- ``GET /{room}/index.m3u8`` — multivariant playlist.
- ``GET /{room}/{stream}/{rendition}/index.m3u8`` — media playlist (``stream`` is the
  store's `RoomStore.stream_id`, named by the multivariant playlist; another stream's
  id answers 404); ``_HLS_msn``/``_HLS_part``
  block until that part (segment) exists and return the whole playlist (§6.2.5.2);
  ``_HLS_skip=YES|v2`` asks for a delta update (§6.2.5.1).
- ``GET /{room}/{stream}/{rendition}/init.mp4``, ``seg{msn}.m4s``, ``part{msn}.{part}.m4s`` —
  media from memory; the preload-hinted part waits until it is published (§4.4.5.3).

**First playlists.** A starting stream is never handed out empty: a media playlist is
served once its rendition has a closed segment (an ``EXTINF``), and the multivariant
playlist once every rendition it names has one.  A playlist of parts alone is valid
LL-HLS (§4.4.4.9), but hls.js rejects it (``levelEmptyError``), retries it later and then
starts far behind the live edge.  Such a request is held like a blocking reload
(§6.2.5.2), at most `~hls_bridge.playlist.blocking_timeout` (3 × target duration), then
answered 503 with ``Retry-After: 1``.

Delivery directives are ``decimal-integer``s (§4.2: ASCII digits, at most
:data:`MAX_DIGITS`); anything else is a 400.  Media names follow the same rule; any
other name is a 404.

Caching is CDN-friendly: media are immutable for a year; playlists live about one part
target (blocking responses are keyed by their query string, which CDNs include in the
cache key); errors are ``no-store``.  Every response carries
``Access-Control-Allow-Origin: *``; errors are RFC 9457 problem+json with the types of
:mod:`hls_bridge.problems`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import web

from common.problems import problem_middleware
from hls_bridge.access import ViewAccess, access_middleware
from hls_bridge.errors import BridgeRefused
from hls_bridge.playlist import (
    BadDeliveryDirective,
    blocking_timeout,
    check_blocking_request,
)
from hls_bridge.problems import BAD_DIRECTIVE, NOT_FOUND, NOT_READY, hls_problem
from hls_bridge.store import RenditionStore, RoomStore

__all__ = ["PROVIDER", "RoomProvider", "create_origin_app", "media_cors_middleware", "playable"]

logger = logging.getLogger(__name__)

MAX_DIGITS = 20
"""Longest ``decimal-integer`` accepted in a directive or media name (2**64 - 1 has 20
digits, §4.2)."""
_NUMBER = rf"[0-9]{{1,{MAX_DIGITS}}}"
_DECIMAL_INTEGER = re.compile(_NUMBER)


class RoomProvider(Protocol):
    """Looks up (or lazily starts) a room's store; None when the room has no stream.
    May raise :class:`~hls_bridge.errors.BridgeRefused` (answered 503 + ``Retry-After``)
    when a stream could be started but the machine has no CPU for it now."""

    async def get(self, room: str) -> RoomStore | None: ...


class _MappingProvider:
    def __init__(self, rooms: Mapping[str, RoomStore]) -> None:
        self.rooms = rooms

    async def get(self, room: str) -> RoomStore | None:
        return self.rooms.get(room)


PROVIDER = web.AppKey("hls_room_provider", RoomProvider)

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
INIT_TYPE = "video/mp4"
MEDIA_TYPE = "video/iso.segment"
IMMUTABLE = "public, max-age=31536000, immutable"
NO_STORE = "no-store"


@web.middleware
async def media_cors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``Access-Control-Allow-Origin: *`` on every answer; errors are never cached."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["Access-Control-Allow-Origin"] = "*"
        if exc.status >= 400:
            exc.headers["Cache-Control"] = NO_STORE
        raise
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def create_origin_app(rooms: Mapping[str, RoomStore] | RoomProvider,
                      access: ViewAccess | None = None) -> web.Application:
    """The origin sub-application serving ``rooms``.

    ``rooms``: a mapping room name → store (live-updated) or a `RoomProvider`.
    ``access``: who may watch which room (:mod:`hls_bridge.access`; default: everyone).
    """
    middlewares = [media_cors_middleware, problem_middleware]
    if access is not None:
        middlewares.append(access_middleware(access))
    app = web.Application(middlewares=middlewares)
    app[PROVIDER] = _MappingProvider(rooms) if isinstance(rooms, Mapping) else rooms
    app.router.add_get("/{room}/index.m3u8", _multivariant)
    app.router.add_get("/{room}/{stream}/{rendition}/index.m3u8", _media_playlist)
    app.router.add_get("/{room}/{stream}/{rendition}/init.mp4", _init)
    app.router.add_get(f"/{{room}}/{{stream}}/{{rendition}}/seg{{msn:{_NUMBER}}}.m4s", _segment)
    app.router.add_get(
        f"/{{room}}/{{stream}}/{{rendition}}/part{{msn:{_NUMBER}}}.{{part:{_NUMBER}}}.m4s", _part
    )
    app.router.add_get("/{tail:.*}", _not_found)
    return app


# -- lookups ------------------------------------------------------------------------


async def _room(request: web.Request) -> RoomStore:
    name = request.match_info["room"]
    try:
        room = await request.config_dict[PROVIDER].get(name)
    except BridgeRefused as exc:  # no CPU for a bridge now: come back later
        raise hls_problem(503, NOT_READY, str(exc), headers={"Retry-After": "10"}) from None
    if room is None:
        raise hls_problem(404, NOT_FOUND, "no HLS stream for that room")
    return room


async def _rendition(request: web.Request) -> tuple[RoomStore, RenditionStore]:
    room = await _room(request)
    if request.match_info["stream"] != room.stream_id:
        raise hls_problem(404, NOT_FOUND, "that stream of the room is over")
    name = request.match_info["rendition"]
    store = room.renditions.get(name)
    if store is None:
        raise hls_problem(404, NOT_FOUND, "no such rendition")
    return room, store


def _int_query(request: web.Request, key: str) -> int | None:
    """Directive ``key`` as a ``decimal-integer`` (§4.2), None when absent.

    Raises a 400 problem for anything but 1 to :data:`MAX_DIGITS` ASCII digits (no sign,
    no other Unicode digits) and for a directive given twice.
    """
    values = request.query.getall(key, [])
    if not values:
        return None
    if len(values) > 1:
        raise hls_problem(400, BAD_DIRECTIVE, f"{key} is given more than once")
    if not _DECIMAL_INTEGER.fullmatch(values[0]):
        raise hls_problem(
            400, BAD_DIRECTIVE, f"{key} must be a decimal integer of 1 to {MAX_DIGITS} digits"
        )
    return int(values[0])


def _playlist_response(text: str, max_age: int) -> web.Response:
    return web.Response(
        text=text,
        content_type=PLAYLIST_TYPE,
        charset=None,
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )


def _media_response(data: bytes, content_type: str) -> web.Response:
    return web.Response(body=data, content_type=content_type, headers={"Cache-Control": IMMUTABLE})


# -- handlers -----------------------------------------------------------------------


def playable(store: RenditionStore) -> bool:
    """True once ``store``'s playlist can start a player: it lists a closed segment
    (``EXTINF``, §4.4.4.1) besides any parts, or the stream ended.

    hls.js counts only closed segments and answers a playlist of parts alone with
    ``levelEmptyError``, however valid it is (§4.4.4.9).
    """
    return bool(store.playlist.segments) or store.playlist.ended


async def _multivariant(request: web.Request) -> web.Response:
    """Multivariant playlist, once every rendition is `playable` (held at most
    `blocking_timeout`, then 503 with ``Retry-After``): a player that starts from it
    never meets an empty media playlist.  Before the transcoder has planned its ladder
    (a bridge just started, a starved transcoder) there is none yet: 503 with
    ``Retry-After: 1`` too — a temporary state, not a missing resource (RFC 9110 §15.6.4)."""
    room = await _room(request)
    if room.multivariant is None:
        raise hls_problem(503, NOT_READY, "the multivariant playlist is not ready yet",
                          headers={"Retry-After": "1"})
    stores = list(room.renditions.values())
    if not all(playable(store) for store in stores):
        loop = asyncio.get_running_loop()
        timeout = max(blocking_timeout(store.playlist) for store in stores)
        deadline = loop.time() + timeout
        for store in stores:
            if not await store.wait_until(
                lambda store=store: playable(store), max(0.0, deadline - loop.time())
            ):
                raise hls_problem(
                    503, NOT_READY, f"the stream's first segments did not appear within {timeout:g} s",
                    headers={"Retry-After": "1"},
                )
    return _playlist_response(room.multivariant, 1)


async def _media_playlist(request: web.Request) -> web.Response:
    """Media playlist, with Blocking Playlist Reload and Delta Updates (§6.2.5).

    Until the rendition is `playable` (a closed segment) the request is held like a
    blocking reload, until it is, the stream ends, or `blocking_timeout` passes (503).
    """
    room, store = await _rendition(request)
    playlist = store.playlist
    msn = _int_query(request, "_HLS_msn")
    part = _int_query(request, "_HLS_part")
    skip_value = request.query.get("_HLS_skip")
    if skip_value not in (None, "YES", "v2"):
        raise hls_problem(400, BAD_DIRECTIVE, "_HLS_skip must be YES or v2")

    def ready() -> bool:
        decision = check_blocking_request(playlist, msn, part)
        return decision == "ready" and playable(store)

    try:
        if not ready():
            timeout = blocking_timeout(playlist)
            if not await store.wait_until(ready, timeout):
                raise hls_problem(
                    503, NOT_READY,
                    f"the requested playlist or part did not appear within {timeout:g} s",
                    headers={"Retry-After": "1"},
                )
    except BadDeliveryDirective as exc:
        raise hls_problem(400, BAD_DIRECTIVE, str(exc)) from None
    text = room.render_media(store.name, skip=skip_value is not None)
    max_age = max(1, math.ceil(playlist.part_target))
    if msn is not None and not playlist.ended:
        # The answer to a blocking request stays correct for its query key: it holds
        # the requested part, so a CDN may serve it to every player asking the same.
        max_age = 3 * playlist.target_duration
    return _playlist_response(text, max_age)


async def _init(request: web.Request) -> web.Response:
    """Init segment version ``?v=`` (default 0, `hls_bridge.store.init_uri`): the one a
    playlist's EXT-X-MAP names, even after a discontinuity replaced it."""
    _, store = await _rendition(request)
    version = request.query.get("v", "0")
    data = store.init_segment(int(version)) if _DECIMAL_INTEGER.fullmatch(version) else None
    if data is None:
        raise hls_problem(404, NOT_FOUND, "the init segment is not ready")
    return _media_response(data, INIT_TYPE)


async def _segment(request: web.Request) -> web.Response:
    _, store = await _rendition(request)
    msn = int(request.match_info["msn"])
    data = store.segment(msn)
    if data is None:
        raise hls_problem(404, NOT_FOUND, f"segment {msn} is unknown or expired")
    return _media_response(data, MEDIA_TYPE)


async def _part(request: web.Request) -> web.Response:
    """A part; the preload-hinted next part is answered as soon as it is published."""
    _, store = await _rendition(request)
    msn, index = int(request.match_info["msn"]), int(request.match_info["part"])
    data = store.part(msn, index)
    if data is None and store.is_hinted(msn, index):
        timeout = blocking_timeout(store.playlist)

        def settled() -> bool:
            return store.part(msn, index) is not None or not store.is_hinted(msn, index)

        if not await store.wait_until(settled, timeout):
            raise hls_problem(
                503, NOT_READY, f"part {msn}.{index} did not appear within {timeout:g} s",
                headers={"Retry-After": "1"},
            )
        data = store.part(msn, index)
    if data is None:
        raise hls_problem(404, NOT_FOUND, f"part {msn}.{index} is unknown or expired")
    return _media_response(data, MEDIA_TYPE)


async def _not_found(request: web.Request) -> web.Response:
    """Any other path: 404 (e.g. a media name that is not ``seg{msn}.m4s``/``part…``)."""
    raise hls_problem(404, NOT_FOUND, "no HLS resource at that path")
