"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) HTTP resources.

WHEP is WHIP's resource model in the other direction, so one handler class
serves both: ``POST /whip/{room}`` publishes, ``POST /whep/{room}`` views, and
each creates a session resource ``/{whip|whep}/{room}/{session}`` that accepts
PATCH (trickle ICE), DELETE and OPTIONS.

Choices where the specs leave room (documented in docs/whip-whep.md):

* Trickle ICE is supported (PATCH ``application/trickle-ice-sdpfrag`` → 204);
  ICE restart is not (aiortc cannot restart ICE) → 422 (RFC 9725 §4.3.1).
  Because trickle is supported, PATCH is a conditional request: the 201 carries
  a strong ``ETag`` and a PATCH without ``If-Match`` gets 428, a stale one 412
  (RFC 9725 §4.3.1–§4.3.2).
* WHEP before any publisher → 409 + ``Retry-After`` (no hold-and-start).
* A new WHIP session for a live room replaces the old publisher session.
* GET on an endpoint or session → 204: the resources have no representation
  (RFC 9725 §4.1); other methods → 405.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from common.problems import HttpProblem, reason
from sfu.protocol import Identity

from .app_keys import CASCADE, CONFIG, LIMITER, NAMESPACE_KEY, ROOMS, SESSIONS
from .cascade import PipeFailed
from .client_ip import client_of
from .names import viewer_name
from .nodes import NoNodeAvailable
from .rooms import KeyCheck

logger = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_SDP_BYTES = 64 * 1024
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.MULTILINE)
_PWD = re.compile(r"^a=ice-pwd:(\S+)\s*$", re.MULTILINE)
_SDP_LINE = re.compile(r"^[a-z]=\S")
# RFC 8839 §5.1 candidate-attribute: foundation component transport priority address port typ type ...
_CANDIDATE = re.compile(
    r"^a=candidate:[A-Za-z0-9+/]{1,32} [0-9]{1,3} [A-Za-z0-9-]+ [0-9]{1,10} \S+ [0-9]{1,5}"
    r" typ [A-Za-z0-9-]+( .*)?$"
)


@dataclass
class SdpFrag:
    """An ``application/trickle-ice-sdpfrag`` body (RFC 8840 §4.4)."""

    ufrag: str | None
    pwd: str | None
    candidates: list[str]  # "candidate:..." (without "a=")
    end_of_candidates: bool


def parse_sdpfrag(body: bytes) -> SdpFrag:
    """Parse a PATCH body; :raises HttpProblem: 400 when it is not a well-formed SDP fragment."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpProblem(400, None, "the SDP fragment is not UTF-8") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise HttpProblem(400, None, "the SDP fragment is empty")
    for line in lines:
        if not _SDP_LINE.match(line):
            raise HttpProblem(400, None, f"not an SDP line: {line[:80]!r}")
        if line.startswith("a=candidate") and not _CANDIDATE.match(line):
            raise HttpProblem(400, None, f"malformed candidate line: {line[:120]!r}")
    ufrag, pwd = _UFRAG.search(text), _PWD.search(text)
    return SdpFrag(
        ufrag.group(1) if ufrag else None,
        pwd.group(1) if pwd else None,
        [ln[2:] for ln in lines if ln.startswith("a=candidate:")],
        "a=end-of-candidates" in lines,
    )


def if_match(header: str, etag: str) -> bool:
    """RFC 9110 §13.1.1 with strong comparison: ``*`` or a listed tag equal to ``etag``."""
    return any(tag.strip() in ("*", etag) for tag in header.split(","))


def quoted_string(value: str) -> str:
    """RFC 9110 §5.6.4 quoted-string (for Link parameters)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Session:
    """A WHIP/WHEP session resource held by signaling."""

    id: str
    kind: str  # "whip" | "whep"
    room: str
    node_sid: str
    etag: str
    remote_ufrag: str | None
    remote_pwd: str | None
    identity: Identity
    created: float


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
            web.get(base, self.get_endpoint),
            web.options(base, self.options_endpoint),
            web.patch(base + "/{session}", self.patch),
            web.delete(base + "/{session}", self.delete),
            web.get(base + "/{session}", self.get_session),
            web.options(base + "/{session}", self.options_session),
        ]

    # ----------------------------------------------------------- helpers
    def _limit(self, request: web.Request) -> None:
        wait = request.app[LIMITER].take(client_of(request))
        if wait > 0:
            raise HttpProblem(
                429, None, "slow down", headers={"Retry-After": str(max(1, int(wait + 0.999)))}
            )

    def _authorize(self, request: web.Request, room: str) -> None:
        """Bearer stream key (RFC 6750 §3, RFC 9725 §4.7)."""
        rooms = request.app[ROOMS]
        client = client_of(request)
        realm = 'Bearer realm="relaycast"'
        if rooms.blocked(client):
            raise HttpProblem(
                429, None, "too many failed stream-key attempts", headers={"Retry-After": "60"}
            )
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpProblem(
                401,
                None,
                "send the stream key as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": realm},
            )
        check = rooms.check_key(room, token.strip())
        if check is KeyCheck.OK:
            return
        rooms.record_failure(client)
        if check is KeyCheck.WRONG_ROOM:
            raise HttpProblem(
                403,
                None,
                f"this stream key is not valid for room {room!r}",
                headers={"WWW-Authenticate": f'{realm}, error="insufficient_scope"'},
            )
        raise HttpProblem(
            401,
            None,
            "invalid stream key",
            headers={"WWW-Authenticate": f'{realm}, error="invalid_token"'},
        )

    def _session(self, request: web.Request) -> Session:
        session = request.app[SESSIONS].get(request.match_info["session"])
        if (
            session is None
            or session.kind != self.kind
            or session.room != request.match_info["room"]
        ):
            raise HttpProblem(404, None, "no such session (it ended or never existed)")
        return session

    def _ice_links(self, request: web.Request, user_id: str) -> list[str]:
        """``Link: <url>; rel="ice-server"`` per URL (RFC 9725 §4.6): the static servers and
        TURN REST credentials minted for this session (``user_id`` is not a secret)."""
        links = []
        for server in request.app[CONFIG].client_ice_servers(user_id):
            for url in server["urls"]:
                link = f'<{url}>; rel="ice-server"'
                if "username" in server:
                    link += (
                        f"; username={quoted_string(server['username'])}"
                        f"; credential={quoted_string(server.get('credential') or '')}"
                        '; credential-type="password"'
                    )
                links.append(link)
        return links

    @staticmethod
    def _sfu_error(result: dict[str, Any], retry_after: int) -> HttpProblem:
        """The SFU's ``{"error": {status, title, detail}}`` as a problem (title → detail)."""
        err = result.get("error") or {}
        try:
            status = int(err.get("status", 502))
        except (TypeError, ValueError):
            status = 502
        if not 400 <= status < 600 or (status >= 500 and status not in (503, 504)):
            status = 502
        headers = {"Retry-After": str(retry_after)} if status in (409, 503) else {}
        title, detail = str(err.get("title") or ""), str(err.get("detail") or "")
        text = f"{title}: {detail}" if title and detail and title != detail else (detail or title)
        return HttpProblem(status, None, text or reason(status), headers=headers)

    # ---------------------------------------------------------- handlers
    async def post(self, request: web.Request) -> web.Response:
        """Create a session (RFC 9725 §4.2): 201 + SDP answer + ``Location`` + strong ``ETag``.

        Errors: 404 unknown room, 415 not ``application/sdp``, 401/403 stream key
        (WHIP), 413 over 64 KiB, 400 not a UTF-8 SDP offer, 422 unsupported
        media (SFU), 409 + ``Retry-After`` WHEP before a publisher, 503 +
        ``Retry-After`` no SFU capacity.  Nothing stays allocated after an error.
        A WHEP viewer may be placed on an edge node (:mod:`signaling.cascade`).
        """
        self._limit(request)
        config = request.app[CONFIG]
        room_name = request.match_info["room"]
        room = request.app[ROOMS].get(room_name)
        if room is None:
            raise HttpProblem(404, None, f"no room named {room_name!r}")
        if request.content_type != SDP:
            raise HttpProblem(415, None, f"the offer must be {SDP}", headers={"Accept-Post": SDP})
        if self.kind == "whip":
            self._authorize(request, room_name)
        offer = await self._read_offer(request)
        namespace = request.app[NAMESPACE_KEY]
        try:
            node = await namespace.router.node_for_room(room_name)
            if self.kind == "whep":  # the origin, or an edge node piped from it
                node = await request.app[CASCADE].node_for_viewer(room_name, node)
        except PipeFailed as exc:
            raise self._sfu_error(exc.result, config.retry_after_s) from None
        except NoNodeAvailable as exc:  # RouterUnavailable too: Redis unreachable
            raise HttpProblem(
                503,
                None,
                str(exc) or "no SFU node is available",
                headers={"Retry-After": str(config.retry_after_s)},
            ) from None
        session_id = secrets.token_urlsafe(24)  # 192 bits from a CSPRNG (RFC 9725 §5)
        identity = Identity(
            id=secrets.token_hex(6),
            name=room_name if self.kind == "whip" else viewer_name(),
            role="publisher" if self.kind == "whip" else "viewer",
        )
        result = await namespace.call(
            node,
            self.rpc,
            {
                "room": room_name,
                "session_id": session_id,
                "sdp": offer,
                "identity": identity.to_dict(),
            },
            timeout=config.rpc_timeout_s,
        )
        if "sdp" not in result:
            if (result.get("error") or {}).get("status") == 504:
                # The node may still create the session after the deadline: do not leak it.
                await namespace.call(
                    node, "close", {"session_id": session_id}, timeout=config.rpc_timeout_s
                )
            if not room.live and not room.viewers and not any(
                s.room == room_name for s in request.app[SESSIONS].values()
            ):
                with contextlib.suppress(NoNodeAvailable):
                    await namespace.router.release_room(room_name, node)
            raise self._sfu_error(result, config.retry_after_s)
        ufrag, pwd = _UFRAG.search(offer), _PWD.search(offer)
        session = Session(
            session_id,
            self.kind,
            room_name,
            node.sid,
            f'"{secrets.token_urlsafe(16)}"',
            ufrag.group(1) if ufrag else None,
            pwd.group(1) if pwd else None,
            identity,
            time.time(),
        )
        request.app[SESSIONS][session_id] = session
        headers = {
            "Location": f"/{self.kind}/{room_name}/{session_id}",
            "ETag": session.etag,
            "Accept-Patch": SDPFRAG,
        }
        response = web.Response(status=201, text=result["sdp"], content_type=SDP, headers=headers)
        for link in self._ice_links(request, f"{self.kind}-{identity.id}"):
            response.headers.add("Link", link)
        logger.info(
            "%s session %s… created in room %s", self.kind.upper(), session_id[:6], room_name
        )
        return response

    @staticmethod
    async def _read_offer(request: web.Request) -> str:
        """The body as text: 413 over :data:`MAX_SDP_BYTES`, 400 unless UTF-8 starting ``v=0``."""
        too_large = HttpProblem(413, None, f"SDP offers are limited to {MAX_SDP_BYTES} bytes")
        if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
            raise too_large
        body = await request.content.read(MAX_SDP_BYTES + 1)
        if len(body) > MAX_SDP_BYTES:
            raise too_large
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpProblem(400, None, "the SDP offer is not UTF-8") from None
        if not offer.startswith("v=0"):
            raise HttpProblem(400, None, "the body is not an SDP offer (must start with v=0)")
        return offer

    async def patch(self, request: web.Request) -> web.Response:
        """Trickle ICE (RFC 9725 §4.3.2) → 204 without body or ETag.

        Checked in this order (RFC 9110 §13.2.2: preconditions before the content):
        404 unknown session, 415 not ``application/trickle-ice-sdpfrag``, 428 no
        ``If-Match``, 412 ``If-Match`` neither ``*`` nor the current ETag, 413,
        400 malformed fragment, 422 ICE restart (new ufrag/pwd; not supported,
        RFC 9725 §4.3.1 — the session and its ICE session stay as they were).
        """
        self._limit(request)
        session = self._session(request)
        if request.content_type != SDPFRAG:
            raise HttpProblem(
                415, None, f"PATCH bodies must be {SDPFRAG}", headers={"Accept-Patch": SDPFRAG}
            )
        match = request.headers.get("If-Match")
        if match is None:
            raise HttpProblem(
                428, None, "send If-Match with the ETag of the 201 response (RFC 9725 §4.3.1)"
            )
        if not if_match(match, session.etag):
            raise HttpProblem(412, None, "If-Match does not match the session's ETag")
        if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
            raise HttpProblem(413, None, f"SDP fragments are limited to {MAX_SDP_BYTES} bytes")
        body = await request.content.read(MAX_SDP_BYTES + 1)
        if len(body) > MAX_SDP_BYTES:
            raise HttpProblem(413, None, f"SDP fragments are limited to {MAX_SDP_BYTES} bytes")
        frag = parse_sdpfrag(body)
        if (frag.ufrag and frag.ufrag != session.remote_ufrag) or (
            frag.pwd and frag.pwd != session.remote_pwd
        ):
            raise HttpProblem(
                422, None, "ICE restart is not supported; DELETE this session and POST a new offer"
            )
        if frag.candidates or frag.end_of_candidates:
            config = request.app[CONFIG]
            namespace = request.app[NAMESPACE_KEY]
            node = namespace.router.nodes.get(session.node_sid)
            if node is None:
                raise HttpProblem(404, None, "the session's SFU node is gone")
            result = await namespace.call(
                node,
                "trickle",
                {
                    "session_id": session.id,
                    "candidates": frag.candidates,
                    "end_of_candidates": frag.end_of_candidates,
                },
                timeout=config.rpc_timeout_s,
            )
            if "error" in result:
                raise self._sfu_error(result, config.retry_after_s)
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        """End the session and free everything (RFC 9725 §4.2) → 200; ``If-Match`` is ignored."""
        self._limit(request)
        session = self._session(request)
        request.app[SESSIONS].pop(session.id, None)
        namespace = request.app[NAMESPACE_KEY]
        node = namespace.router.nodes.get(session.node_sid)
        if node is not None:
            await namespace.call(
                node, "close", {"session_id": session.id}, timeout=request.app[CONFIG].rpc_timeout_s
            )
        logger.info("%s session %s… deleted", self.kind.upper(), session.id[:6])
        return web.Response(status=200)

    async def get_endpoint(self, request: web.Request) -> web.Response:
        """No representation is defined (RFC 9725 §4.1): 204, or 404 for an unknown room."""
        room_name = request.match_info["room"]
        if request.app[ROOMS].get(room_name) is None:
            raise HttpProblem(404, None, f"no room named {room_name!r}")
        return web.Response(status=204)

    async def get_session(self, request: web.Request) -> web.Response:
        """No representation is defined (RFC 9725 §4.1): 204, or 404 once the session ended."""
        self._session(request)
        return web.Response(status=204)

    async def options_endpoint(self, request: web.Request) -> web.Response:
        """CORS preflight / capability discovery: ``Accept-Post``, never ICE credentials (RFC 9725 §4.6)."""
        return web.Response(
            status=200,
            headers={
                "Accept-Post": SDP,
                "Allow": "GET, HEAD, POST, OPTIONS",
                "Access-Control-Allow-Methods": "POST, OPTIONS",
            },
        )

    async def options_session(self, request: web.Request) -> web.Response:
        """CORS preflight for the session: ``Accept-Patch: application/trickle-ice-sdpfrag``."""
        return web.Response(
            status=200,
            headers={
                "Accept-Patch": SDPFRAG,
                "Allow": "GET, HEAD, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Methods": "PATCH, DELETE, OPTIONS",
            },
        )

