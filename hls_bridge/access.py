"""Who may fetch a room's LL-HLS and VOD resources: a hook the composition root supplies.

``access(room, token) -> private`` is awaited before every request naming a room, with the
viewer's token from ``?token=`` (or ``Authorization: Bearer``, RFC 6750 §2.1/§2.3).  It
raises a ``web.HTTPException`` (e.g. a 401 problem) to refuse, and returns whether the room
is private.  Answers for a private room

* carry ``Cache-Control: private, no-store`` (RFC 9111 §5.2.2.5, §5.2.2.7), so neither a
  CDN nor the nginx edge stores one viewer's token-bearing response for another;
* have the token appended to every URI of a playlist (media lines and ``URI="…"``
  attributes) when it came in the query: players resolve relative URIs against the
  playlist's URL (RFC 3986 §5.2), which drops its query string, so the segments, parts and
  renditions they fetch next would otherwise arrive without it.

Without a hook every room is public (the bridge used on its own, tests).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from common.bearer import bearer_token

ViewAccess = Callable[[str, str | None], Awaitable[bool]]
"""``await access(room, token)`` → whether the room is private; raises to refuse."""

PRIVATE = "private, no-store"
TOKEN_PARAM = "token"
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
_URI_ATTRIBUTE = re.compile(r'URI="([^"]*)"')


def viewer_token(request: web.Request) -> tuple[str | None, bool]:
    """The viewer's token and whether it came in the query string."""
    token = request.query.get(TOKEN_PARAM)
    if token:
        return token, True
    return bearer_token(request), False


def _with_param(uri: str, param: str) -> str:
    return uri + ("&" if "?" in uri else "?") + param


def with_token(playlist: str, token: str) -> str:
    """``playlist`` (RFC 8216 text) with ``token=<token>`` added to every URI in it."""
    param = f"{TOKEN_PARAM}={quote(token, safe='')}"
    lines = []
    for line in playlist.split("\n"):
        if line and not line.startswith("#"):
            line = _with_param(line, param)
        elif line.startswith("#") and 'URI="' in line:
            line = _URI_ATTRIBUTE.sub(lambda m: f'URI="{_with_param(m.group(1), param)}"', line)
        lines.append(line)
    return "\n".join(lines)


def access_middleware(access: ViewAccess) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware applying ``access`` to every route with a ``{room}`` (see the module
    docstring).  Put it innermost, after the CORS and problem middlewares."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        room = request.match_info.get("room")
        if room is None:
            return await handler(request)
        token, in_query = viewer_token(request)
        if not await access(room, token):
            return await handler(request)
        response = await handler(request)
        response.headers["Cache-Control"] = PRIVATE
        if (in_query and token and isinstance(response, web.Response) and response.body is not None
                and response.content_type == PLAYLIST_TYPE):
            body = response.body if isinstance(response.body, bytes) else bytes(response.body)  # type: ignore[arg-type]
            response.body = with_token(body.decode("utf-8"), token).encode("utf-8")
        return response

    return middleware
