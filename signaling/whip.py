"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) HTTP resources.

WHEP is WHIP's resource model in the other direction, so one handler class
serves both: ``POST /whip/{room}`` publishes, ``POST /whep/{room}`` views, and
each creates a session resource ``/{whip|whep}/{room}/{session}`` that accepts
PATCH (trickle ICE), DELETE and OPTIONS.

Choices where the specs leave room (documented in docs/whip-whep.md):

* Trickle ICE is supported (PATCH ``application/trickle-ice-sdpfrag`` → 204);
  ICE restart is not (aiortc cannot restart ICE) → 422 (RFC 9725 §4.3.1).
* WHEP before any publisher → 409 + ``Retry-After`` (no hold-and-start).
* A new WHIP session for a live room replaces the old publisher session.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sfu.chat import Identity

from .app_keys import CONFIG, NAMESPACE_KEY, ROOMS, SESSIONS
from .errors import HttpProblem
from .names import viewer_name
from .nodes import NoNodeAvailable
from .rooms import KeyCheck

logger = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_SDP_BYTES = 64 * 1024
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.MULTILINE)


@dataclass
class Session:
    """A WHIP/WHEP session resource held by signaling."""

    id: str
    kind: str  # "whip" | "whep"
    room: str
    node_sid: str
    etag: str
    remote_ufrag: str | None
    identity: Identity
    created: float


class TokenBuckets:
    """Per-client request limiter for POST/PATCH/DELETE (RFC 9725 §5)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        """0 when allowed, else seconds until a token is available."""
        now = time.monotonic()
        tokens, stamp = self._buckets.get(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > 10000:  # bounded memory under address churn
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return 0.0


class MediaResources:
    """Handlers for one of ``whip`` or ``whep``."""

    def __init__(self, kind: str) -> None:
        assert kind in ("whip", "whep")
        self.kind = kind
        self.rpc = "publish" if kind == "whip" else "subscribe"

    def routes(self) -> list[web.RouteDef]:
        base = f"/{self.kind}/{{room}}"
        return [
            web.post(base, self.post),
            web.options(base, self.options_endpoint),
            web.patch(base + "/{session}", self.patch),
            web.delete(base + "/{session}", self.delete),
            web.options(base + "/{session}", self.options_session),
        ]

    # ----------------------------------------------------------- helpers
    def _limit(self, request: web.Request) -> None:
        wait = request.app[LIMITER].take(request.remote or "?")
        if wait > 0:
            raise HttpProblem(429, "Too Many Requests", "slow down",
                              headers={"Retry-After": str(max(1, int(wait + 0.999)))})

    def _authorize(self, request: web.Request, room: str) -> None:
        """Bearer stream key (RFC 6750 §3, RFC 9725 §4.7)."""
        rooms = request.app[ROOMS]
        client = request.remote or "?"
        realm = 'Bearer realm="relaycast"'
        if rooms.blocked(client):
            raise HttpProblem(429, "Too Many Requests", "too many failed stream-key attempts",
                              headers={"Retry-After": "60"})
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpProblem(401, "Unauthorized", "send the stream key as 'Authorization: Bearer <key>'",
                              headers={"WWW-Authenticate": realm})
        check = rooms.check_key(room, token.strip())
        if check is KeyCheck.OK:
            return
        rooms.record_failure(client)
        if check is KeyCheck.WRONG_ROOM:
            raise HttpProblem(403, "Forbidden", f"this stream key is not valid for room {room!r}",
                              headers={"WWW-Authenticate": f'{realm}, error="insufficient_scope"'})
        raise HttpProblem(401, "Unauthorized", "invalid stream key",
                          headers={"WWW-Authenticate": f'{realm}, error="invalid_token"'})

    def _session(self, request: web.Request) -> Session:
        session = request.app[SESSIONS].get(request.match_info["session"])
        if session is None or session.kind != self.kind or session.room != request.match_info["room"]:
            raise HttpProblem(404, "Not Found", "no such session (it ended or never existed)")
        return session

    def _ice_links(self, request: web.Request) -> list[str]:
        links = []
        for server in request.app[CONFIG].ice_servers:
            link = f'<{server.url}>; rel="ice-server"'
            if server.username is not None:
                link += (f'; username="{server.username}"; credential="{server.credential or ""}"'
                         '; credential-type="password"')
            links.append(link)
        return links

    @staticmethod
    def _sfu_error(result: dict[str, Any], retry_after: int) -> HttpProblem:
        err = result.get("error") or {}
        status = int(err.get("status", 502))
        headers = {"Retry-After": str(retry_after)} if status in (409, 503) else {}
        if status >= 500 and status not in (503, 504):
            status = 502
        return HttpProblem(status, str(err.get("title", "SFU error")), str(err.get("detail", "")), headers=headers)

    # ---------------------------------------------------------- handlers
    async def post(self, request: web.Request) -> web.Response:
        """Create a session (RFC 9725 §4.2): 201 + SDP answer + Location + ETag."""
        self._limit(request)
        config = request.app[CONFIG]
        room_name = request.match_info["room"]
        room = request.app[ROOMS].get(room_name)
        if room is None:
            raise HttpProblem(404, "Not Found", f"no room named {room_name!r}")
        if request.content_type != SDP:
            raise HttpProblem(415, "Unsupported Media Type", f"the offer must be {SDP}",
                              headers={"Accept-Post": SDP})
        if self.kind == "whip":
            self._authorize(request, room_name)
        if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
            raise HttpProblem(413, "Content Too Large", f"SDP offers are limited to {MAX_SDP_BYTES} bytes")
        body = await request.content.read(MAX_SDP_BYTES + 1)
        if len(body) > MAX_SDP_BYTES:
            raise HttpProblem(413, "Content Too Large", f"SDP offers are limited to {MAX_SDP_BYTES} bytes")
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpProblem(400, "Bad Request", "the SDP offer is not UTF-8") from None
        if not offer.startswith("v=0"):
            raise HttpProblem(400, "Bad Request", "the body is not an SDP offer (must start with v=0)")
        namespace = request.app[NAMESPACE_KEY]
        try:
            node = namespace.router.node_for_room(room_name)
        except NoNodeAvailable:
            raise HttpProblem(503, "Service Unavailable", "no SFU node is available",
                              headers={"Retry-After": str(config.retry_after_s)}) from None
        session_id = secrets.token_urlsafe(24)  # 192 bits from a CSPRNG (RFC 9725 §5)
        identity = Identity(
            id=secrets.token_hex(6),
            name=room_name if self.kind == "whip" else viewer_name(),
            role="publisher" if self.kind == "whip" else "viewer",
        )
        result = await namespace.call(
            node, self.rpc,
            {"room": room_name, "session_id": session_id, "sdp": offer, "identity": identity.to_dict()},
            timeout=config.rpc_timeout_s,
        )
        if "sdp" not in result:
            if not room.live and not any(s.room == room_name for s in request.app[SESSIONS].values()):
                namespace.router.release_room(room_name)
            raise self._sfu_error(result, config.retry_after_s)
        m = _UFRAG.search(offer)
        session = Session(session_id, self.kind, room_name, node.sid, f'"{secrets.token_hex(16)}"',
                          m.group(1) if m else None, identity, time.time())
        request.app[SESSIONS][session_id] = session
        location = f"/{self.kind}/{room_name}/{session_id}"
        headers = {
            "Location": location,
            "ETag": session.etag,
            "Accept-Patch": SDPFRAG,
        }
        response = web.Response(status=201, text=result["sdp"], content_type=SDP, headers=headers)
        for link in self._ice_links(request):
            response.headers.add("Link", link)
        logger.info("%s session %s… created in room %s", self.kind.upper(), session_id[:6], room_name)
        return response

    async def patch(self, request: web.Request) -> web.Response:
        """Trickle ICE (RFC 9725 §4.3.2) → 204; ICE restart → 422 (not supported)."""
        self._limit(request)
        session = self._session(request)
        if request.content_type != SDPFRAG:
            raise HttpProblem(415, "Unsupported Media Type", f"PATCH bodies must be {SDPFRAG}",
                              headers={"Accept-Patch": SDPFRAG})
        if_match = request.headers.get("If-Match")
        if if_match is not None and if_match.strip() != "*" and if_match.strip() != session.etag:
            raise HttpProblem(412, "Precondition Failed", "If-Match does not match the session's ETag")
        body = (await request.content.read(MAX_SDP_BYTES + 1)).decode("utf-8", "replace")
        if len(body) > MAX_SDP_BYTES:
            raise HttpProblem(413, "Content Too Large", "sdpfrag too large")
        m = _UFRAG.search(body)
        if m and session.remote_ufrag and m.group(1) != session.remote_ufrag:
            raise HttpProblem(422, "Unprocessable Content",
                              "ICE restart is not supported; DELETE this session and POST a new offer")
        lines = [ln.strip() for ln in body.splitlines()]
        candidates = [ln[2:] for ln in lines if ln.startswith("a=candidate:")]
        end = "a=end-of-candidates" in lines
        if candidates or end:
            namespace = request.app[NAMESPACE_KEY]
            node = namespace.router.nodes.get(session.node_sid)
            if node is None:
                raise HttpProblem(404, "Not Found", "the session's SFU node is gone")
            result = await namespace.call(node, "trickle", {"session_id": session.id, "candidates": candidates,
                                                             "end_of_candidates": end},
                                          timeout=request.app[CONFIG].rpc_timeout_s)
            if "error" in result:
                raise self._sfu_error(result, request.app[CONFIG].retry_after_s)
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        """End the session and free everything (RFC 9725 §4.2) → 200."""
        self._limit(request)
        session = self._session(request)
        request.app[SESSIONS].pop(session.id, None)
        namespace = request.app[NAMESPACE_KEY]
        node = namespace.router.nodes.get(session.node_sid)
        if node is not None:
            await namespace.call(node, "close", {"session_id": session.id}, timeout=request.app[CONFIG].rpc_timeout_s)
        logger.info("%s session %s… deleted", self.kind.upper(), session.id[:6])
        return web.Response(status=200)

    async def options_endpoint(self, request: web.Request) -> web.Response:
        """CORS preflight / capability discovery: ``Accept-Post``, never ICE credentials."""
        return web.Response(status=200, headers={
            "Accept-Post": SDP,
            "Allow": "POST, OPTIONS",
            "Access-Control-Allow-Methods": "POST, OPTIONS",
        })

    async def options_session(self, request: web.Request) -> web.Response:
        return web.Response(status=200, headers={
            "Accept-Patch": SDPFRAG,
            "Allow": "PATCH, DELETE, OPTIONS",
            "Access-Control-Allow-Methods": "PATCH, DELETE, OPTIONS",
        })


LIMITER = web.AppKey("limiter", TokenBuckets)
