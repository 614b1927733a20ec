"""WHIP (RFC 9725) and WHEP (draft-ietf-wish-whep) HTTP resources.

WHEP is WHIP's resource model in the other direction, so one handler class
serves both: ``POST /whip/{room}`` publishes, ``POST /whep/{room}`` views, and
each creates a session resource ``/{whip|whep}/{room}/{session}`` that accepts
PATCH (trickle ICE and ICE restart), DELETE and OPTIONS; a WHEP session also has
``/{session}/video-size`` (POST: the viewer's rendered video size).

Choices where the specs leave room (documented in docs/whip-whep.md):

* Trickle ICE (PATCH ``application/trickle-ice-sdpfrag`` → 204, RFC 9725 §4.3.2) and ICE
  restart (a fragment with a new ``ice-ufrag``/``ice-pwd`` → 200 with the server's new
  ones, its candidates and a new ``ETag``, §4.3.3) are both supported.  PATCH is a
  conditional request: the 201 carries a strong ``ETag`` and a PATCH without ``If-Match``
  gets 428, a stale one 412 (§4.3.1).  A refused restart leaves the session and its ICE
  session as they were.
* A WHEP viewer reports its rendered video size with ``POST {session}/video-size``
  ``{"width", "height"}`` (device pixels) → 204; its video never comes in a layer much
  larger (docs/whip-whep.md).
* Ingest advice, relaycast's extension of the WHIP session (RFC 9725 §4.9 allows
  extensions; not advertised): PATCH ``application/json`` ``{"advice": str | null,
  "dropped_frames": int | null}`` (either or both) with the publisher's Bearer credential →
  204; the studio shows them with the ingest health (the RTMP/SRT ingest process sends the
  advice when it transcodes B-frames, and its count of dropped video frames;
  docs/whip-whep.md).
* WHEP before any publisher → 409 + ``Retry-After`` (no hold-and-start).
* A new WHIP session for a live room replaces the old publisher session.
* GET on an endpoint or session → 204: the resources have no representation
  (RFC 9725 §4.1); other methods → 405.
* A WHIP session's PATCH and DELETE need the publisher's Bearer token (the stream key that
  created it): the session URL alone does not end a broadcast.  WHEP sessions stay
  capability URLs (RFC 9725 §4.2 allows either).
* One client address may hold ``pending_sessions_per_address`` WHEP sessions that have not
  connected yet (:mod:`signaling.admission`); more → 429.
* Who may publish is the rooms' :class:`~signaling.publish_auth.PublishAuthority`'s
  decision (a stream key, or the platform's access token with a publish grant); a right
  credential is always accepted, wrong ones are throttled per address (:mod:`signaling.rooms`).
* A private room's WHEP needs a playback token (``?token=`` or Bearer).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from common.bearer import bearer_token
from common.http_body import parse_json, read_body
from common.problems import HttpProblem
from hls_bridge.access import viewer_token
from sfu.protocol import (
    INGEST_ADVICE_MEMBERS,
    IceRestarted,
    ProtocolError,
    ice_credentials_problem,
    size_hint,
)
from sfu.sdp_validation import valid_candidate

from .app_keys import CONFIG, LIMITER, ROOMS, SESSION_SERVICE, VIEWER_IDENTIFY
from .client_ip import client_of
from .publish_auth import REALM, AccessRefused, PublishGrant
from .sessions import Session, SessionRefused, ice_credentials

logger = logging.getLogger(__name__)
T = TypeVar("T")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
JSON = "application/json"
MAX_SDP_BYTES = 64 * 1024
MAX_HINT_BYTES = 1024
"""The largest ``video-size`` body, bytes."""
MAX_ADVICE_BYTES = 4096
"""The largest ingest advice body (PATCH ``application/json`` of a WHIP session), bytes:
200 characters, each up to a 12-byte JSON escape, a 16-digit ``dropped_frames`` and the
member names."""
_SDP_LINE = re.compile(r"^[a-z]=\S")


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
        if line.startswith("a=candidate") and not valid_candidate(line[2:]):
            raise HttpProblem(400, None, f"malformed candidate line: {line[:120]!r}")
    ufrag, pwd = ice_credentials(text)
    return SdpFrag(
        ufrag,
        pwd,
        [ln[2:] for ln in lines if ln.startswith("a=candidate:")],
        "a=end-of-candidates" in lines,
    )


def restart_sdpfrag(restarted: IceRestarted) -> str:
    """The 200 body of an ICE restart (RFC 9725 §4.3.3, RFC 8840 §4.4): the server's new
    ``ice-ufrag``/``ice-pwd``, the bundle group and its tag ``m=`` section with the server's
    candidates and ``a=end-of-candidates`` (it has no others)."""
    lines = [f"a=ice-ufrag:{restarted.ice_ufrag}", f"a=ice-pwd:{restarted.ice_pwd}"]
    if restarted.mids:
        lines.append("a=group:BUNDLE " + " ".join(restarted.mids))
    if restarted.media:
        lines.append(restarted.media)
    if restarted.mids:
        lines.append(f"a=mid:{restarted.mids[0]}")
    lines += [f"a={c}" for c in restarted.candidates]
    lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def if_match(header: str, etag: str) -> bool:
    """RFC 9110 §13.1.1 with strong comparison: ``*`` or a listed tag equal to ``etag``."""
    return any(tag.strip() in ("*", etag) for tag in header.split(","))


def quoted_string(value: str) -> str:
    """RFC 9110 §5.6.4 quoted-string (for Link parameters)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MediaResources:
    """Handlers for one of ``whip`` or ``whep``."""

    def __init__(self, kind: str) -> None:
        assert kind in ("whip", "whep")
        self.kind = kind

    def routes(self) -> list[web.RouteDef]:
        base = f"/{self.kind}/{{room}}"
        return [
            *([web.post("/whip", self.post_by_key), web.options("/whip", self.options_endpoint)]
              if self.kind == "whip" else []),
            web.post(base, self.post),
            web.get(base, self.get_endpoint),
            web.options(base, self.options_endpoint),
            web.patch(base + "/{session}", self.patch),
            *([web.post(base + "/{session}/video-size", self.video_size),
               web.options(base + "/{session}/video-size", self.options_video_size)]
              if self.kind == "whep" else []),
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

    @staticmethod
    def _bearer(request: web.Request, what: str = "the stream key") -> str:
        """The ``Authorization: Bearer`` token; 401 without one (RFC 6750 §3)."""
        token = bearer_token(request)
        if token is None:
            raise HttpProblem(
                401,
                None,
                f"send {what} as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": REALM},
            )
        return token

    @staticmethod
    def _key_failure(request: web.Request) -> None:
        """Count a wrong credential from the client; 429 while its address is blocked (a
        blocked address only learns "not the key", not 401 from 403)."""
        rooms, client = request.app[ROOMS], client_of(request)
        wait = rooms.blocked_for(client)
        rooms.record_failure(client)
        if wait > 0:
            raise HttpProblem(
                429,
                None,
                "too many wrong stream keys from this address",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )

    async def _authorize(self, request: web.Request, room: str,
                         checked: PublishGrant | AccessRefused | None = None) -> PublishGrant:
        """Bearer stream key or access token (RFC 6750 §3, RFC 9725 §4.7), checked by the
        rooms' :class:`~signaling.publish_auth.PublishAuthority` (``checked``: its answer
        for this request's credential, when already asked).  A right credential is accepted
        even from an address blocked for wrong ones; a wrong one is 429 while blocked, else
        401 (``invalid_token``) or 403 (``insufficient_scope``: a credential of another room)."""
        token = self._bearer(request)
        try:
            if isinstance(checked, PublishGrant):
                return checked
            if isinstance(checked, AccessRefused):
                raise checked
            return await request.app[ROOMS].authority.authorize(room, token)
        except AccessRefused as refused:
            self._key_failure(request)
            raise _access_problem(refused) from None

    async def _authorize_owner(self, request: web.Request, session: Session) -> None:
        """PATCH and DELETE of a WHIP session need the credential that created it
        (:meth:`PublishAuthority.owns`): 401 without a Bearer token, 403 with another one,
        429 while the address is blocked for wrong keys.  WHEP sessions are capability URLs."""
        if self.kind != "whip":
            return
        token = self._bearer(request)
        authority = request.app[ROOMS].authority
        if await authority.owns(session.owner_digest, session.room, token):
            return
        self._key_failure(request)
        raise HttpProblem(
            403,
            None,
            "only the stream key that created this session may change or end it",
            headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'},
        )

    @staticmethod
    async def _authorize_viewer(request: web.Request, room: str) -> None:
        """A private room's viewers need a playback token: ``?token=`` or ``Authorization:
        Bearer`` (RFC 6750 §2.1, §2.3); 401 without a valid one."""
        token, _ = viewer_token(request)
        try:
            await request.app[ROOMS].authority.authorize_view(room, token)
        except AccessRefused as refused:
            raise _access_problem(refused) from None

    async def _session(self, request: web.Request) -> Session:
        session = await _refusal_as_problem(request.app[SESSION_SERVICE].get(
            self.kind, request.match_info["room"], request.match_info["session"]))
        if session is None:
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

    # ---------------------------------------------------------- handlers
    async def post(self, request: web.Request) -> web.Response:
        """Create a session (RFC 9725 §4.2): 201 + SDP answer + ``Location`` + strong ``ETag``.

        Errors: 404 unknown room, 415 not ``application/sdp``, 401/403 stream key
        (WHIP; 429 for a wrong key from a blocked address), 429 + ``Retry-After`` too
        many pending WHEP sessions from the address, 413 over 64 KiB, 400 not a UTF-8
        SDP offer or (SFU, problem type ``https://relaycast.dev/problems/invalid-sdp``) an offer that
        breaks an SDP rule, 422 unsupported media (SFU), 409 + ``Retry-After`` WHEP
        before a publisher, 503 + ``Retry-After`` no SFU capacity (viewers never take the
        node's publisher reserve).  Nothing stays allocated after an error.
        A WHEP viewer may be placed on an edge node (:mod:`signaling.cascade`).
        """
        self._limit(request)
        return await self._open(request, request.match_info["room"])

    async def post_by_key(self, request: web.Request) -> web.Response:
        """``POST /whip``: publish to the room of the stream key presented (RFC 9725 §4.2
        leaves the endpoint URL to the service).  For clients configured with a key alone
        (the RTMP ingest's ``rtmp://HOST/live`` + key, a WHIP encoder given one URL for all
        channels).  ``Location`` is the session under ``/whip/{room}/`` as usual.

        Errors: 401 without a Bearer credential or with a key no room has (429 while the
        address is blocked for wrong keys), then as :meth:`post`."""
        self._limit(request)
        token = self._bearer(request)
        room_name = await request.app[ROOMS].authority.room_for_key(token)
        if room_name is None:
            self._key_failure(request)
            raise _access_problem(AccessRefused.invalid("invalid stream key"))
        return await self._open(request, room_name)

    async def _open(self, request: web.Request, room_name: str) -> web.Response:
        rooms = request.app[ROOMS]
        checked: PublishGrant | AccessRefused | None = None
        if self.kind == "whip" and rooms.get(room_name) is None and bearer_token(request) is not None:
            # A first publish: a credential the authority accepts also proves the room
            # exists (one lookup, not two); the outcome is answered in the usual order.
            try:
                checked = await rooms.authority.authorize(room_name, self._bearer(request))
                rooms.ensure(room_name)
            except AccessRefused as refused:
                checked = refused
        if not isinstance(checked, PublishGrant) and await rooms.find(room_name) is None:
            raise HttpProblem(404, None, f"no room named {room_name!r}")
        if request.content_type != SDP:
            raise HttpProblem(415, None, f"the offer must be {SDP}", headers={"Accept-Post": SDP})
        client = client_of(request)
        owner = ""
        user: tuple[str, str | None] | None = None
        if self.kind == "whip":
            grant = await self._authorize(request, room_name, checked)
            owner = grant.owner
            user = (grant.user_id, None) if grant.user_id else None
        else:
            await self._authorize_viewer(request, room_name)
            user = await _viewer_user(request)
        offer = await self._read_offer(request)
        session, answer = await _refusal_as_problem(
            request.app[SESSION_SERVICE].open(self.kind, room_name, offer, client, owner, user))
        headers = {
            "Location": f"/{self.kind}/{room_name}/{session.id}",
            "ETag": session.etag,
            "Accept-Patch": SDPFRAG,
        }
        response = web.Response(status=201, text=answer, content_type=SDP, headers=headers)
        for link in self._ice_links(request, f"{self.kind}-{session.identity.id}"):
            response.headers.add("Link", link)
        return response

    @staticmethod
    async def _read_offer(request: web.Request) -> str:
        """The body as text: 413 over :data:`MAX_SDP_BYTES`, 400 unless UTF-8 starting ``v=0``."""
        body = await read_body(request, MAX_SDP_BYTES, "SDP offers")
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpProblem(400, None, "the SDP offer is not UTF-8") from None
        if not offer.startswith("v=0"):
            raise HttpProblem(400, None, "the body is not an SDP offer (must start with v=0)")
        return offer

    async def patch(self, request: web.Request) -> web.Response:
        """Trickle ICE (RFC 9725 §4.3.2) → 204 without body or ETag; ICE restart (§4.3.3: the
        fragment names another ``ice-ufrag`` or ``ice-pwd``) → 200 ``application/trickle-ice-sdpfrag``
        with the server's new ``ice-ufrag``/``ice-pwd`` and candidates, and a new ``ETag``;
        on a WHIP session, ``application/json`` is an ingest advice and/or dropped-frame count
        (:meth:`_ingest_advice`).

        Checked in this order (RFC 9110 §13.2.2: preconditions before the content):
        404 unknown session, 401/403/429 a WHIP session without its stream key
        (:meth:`_authorize_owner`), 415 not ``application/trickle-ice-sdpfrag``, 428 no
        ``If-Match``, 412 ``If-Match`` neither ``*`` nor the current ETag, 413,
        400 malformed fragment (a restart also needs both ``ice-ufrag`` and ``ice-pwd``,
        RFC 8839 §5.4); a restart the node cannot do now → 409 (its first ICE checks are
        still running) — a refused restart leaves the session and its ICE session as they
        were (§4.3.3).
        """
        self._limit(request)
        session = await self._session(request)
        await self._authorize_owner(request, session)
        if self.kind == "whip" and request.content_type == JSON:
            return await self._ingest_advice(request, session)
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
            return await self._restart(request, session, frag)
        if frag.candidates or frag.end_of_candidates:
            await _refusal_as_problem(
                request.app[SESSION_SERVICE].trickle(session, frag.candidates, frag.end_of_candidates))
        return web.Response(status=204)

    @staticmethod
    async def _restart(request: web.Request, session: Session, frag: SdpFrag) -> web.Response:
        """ICE restart (RFC 9725 §4.3.3) → 200 with the server's fragment and a new ``ETag``."""
        if not frag.ufrag or not frag.pwd:
            raise HttpProblem(400, None, "an ICE restart needs both a=ice-ufrag and a=ice-pwd")
        problem = ice_credentials_problem(frag.ufrag, frag.pwd)
        if problem:
            raise HttpProblem(400, None, problem)
        session, restarted = await _refusal_as_problem(request.app[SESSION_SERVICE].restart_ice(
            session, frag.ufrag, frag.pwd, frag.candidates, frag.end_of_candidates))
        return web.Response(status=200, text=restart_sdpfrag(restarted), content_type=SDPFRAG,
                            headers={"ETag": session.etag})

    @staticmethod
    async def _ingest_advice(request: web.Request, session: Session) -> web.Response:
        """relaycast's extension of a WHIP session (RFC 9725 §4.9): PATCH ``application/json``
        with an object of one or both of ``"advice": "<1–200 characters, one line>"`` and
        ``"dropped_frames": <integer 0–2^53−1>`` (the running total of video frames the
        republisher dropped) → 204 No Content; the publisher's ingest health (``GET
        /api/channels/{name}/ingest``, the studio) carries each until ``null`` clears it or
        the session ends; a member left out stays as it was.  ``If-Match`` is not needed
        (the ETag tags the ICE session, which this does not change).

        Reached after the session (404) and its stream key (401/403/429) were checked; then
        413 over :data:`MAX_ADVICE_BYTES`, 400 not JSON, not an object of one or both of
        ``advice`` and ``dropped_frames`` and nothing else, an advice that is not null nor a
        string of 1–200 characters without control characters, or a count that is not null
        nor an integer from 0 to 2^53−1 (booleans and ``3.0`` are not) (RFC 9457
        problem+json); a 400 changes neither."""
        data = await _read_json(request, MAX_ADVICE_BYTES, "advice bodies")
        if not isinstance(data, dict) or not data or not set(data) <= set(INGEST_ADVICE_MEMBERS):
            raise HttpProblem(400, None, 'the body must be an object with "advice" (string or null), '
                                         '"dropped_frames" (integer or null) or both, and nothing else')
        try:
            await _refusal_as_problem(request.app[SESSION_SERVICE].ingest_advice(session, data))
        except ProtocolError as exc:  # a value out of shape, found before any RPC
            raise HttpProblem(400, None, str(exc)) from None
        return web.Response(status=204)

    async def video_size(self, request: web.Request) -> web.Response:
        """A WHEP viewer's rendered video size: ``{"width": int, "height": int}`` in device
        pixels (1–16384 each; both ``null`` clears the hint) → 204; the session's video never
        comes in a layer much larger (:meth:`sfu.consumer.Consumer.set_max_size`).

        Checked in this order: 429 (the PATCH rate limit), 404 unknown session, 415 not
        ``application/json``, 413 over 1 KiB, 400 not a JSON object of that shape (RFC 9457
        problem+json)."""
        self._limit(request)
        session = await self._session(request)
        if request.content_type != JSON:
            raise HttpProblem(415, None, f"the size must be {JSON}", headers={"Accept-Post": JSON})
        data = await _read_json(request, MAX_HINT_BYTES, "size bodies")
        if not isinstance(data, dict) or set(data) != {"width", "height"}:
            raise HttpProblem(400, None, 'the body must be {"width": int, "height": int}')
        try:
            width, height = size_hint(data.get("width"), data.get("height"))
        except ProtocolError as exc:
            raise HttpProblem(400, None, str(exc)) from None
        await _refusal_as_problem(request.app[SESSION_SERVICE].video_size(session, width, height))
        return web.Response(status=204)

    async def options_video_size(self, request: web.Request) -> web.Response:
        """CORS preflight of ``video-size``: ``Accept-Post: application/json``."""
        return web.Response(status=200, headers={
            "Accept-Post": JSON, "Allow": "POST, OPTIONS", "Access-Control-Allow-Methods": "POST, OPTIONS"})

    async def delete(self, request: web.Request) -> web.Response:
        """End the session and free everything (RFC 9725 §4.2) → 200; ``If-Match`` is ignored.

        404 unknown session; a WHIP session needs its stream key (401/403/429,
        :meth:`_authorize_owner`)."""
        self._limit(request)
        session = await self._session(request)
        await self._authorize_owner(request, session)
        await request.app[SESSION_SERVICE].close(session)
        return web.Response(status=200)

    async def get_endpoint(self, request: web.Request) -> web.Response:
        """No representation is defined (RFC 9725 §4.1): 204, or 404 for an unknown room."""
        room_name = request.match_info["room"]
        if await request.app[ROOMS].find(room_name) is None:
            raise HttpProblem(404, None, f"no room named {room_name!r}")
        return web.Response(status=204)

    async def get_session(self, request: web.Request) -> web.Response:
        """No representation is defined (RFC 9725 §4.1): 204, or 404 once the session ended."""
        await self._session(request)
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


async def _read_json(request: web.Request, max_bytes: int, what: str) -> Any:
    """The body as JSON: 413 over ``max_bytes`` (``what`` names the bodies in its detail),
    400 when it is not UTF-8 JSON (:mod:`common.http_body`)."""
    return parse_json(await read_body(request, max_bytes, what))


def _access_problem(refused: AccessRefused) -> HttpProblem:
    """An authority's refusal as problem+json with its RFC 6750 §3 challenge."""
    return HttpProblem(refused.status, None, refused.detail,
                       headers={"WWW-Authenticate": refused.challenge})


async def _viewer_user(request: web.Request) -> tuple[str, str | None] | None:
    """The platform user a WHEP request comes from (``app[VIEWER_IDENTIFY]``), if any."""
    for identify in request.app.get(VIEWER_IDENTIFY, ()):
        try:
            found = await identify(request)
        except Exception:
            logger.exception("viewer identifier %r failed", identify)
            continue
        if found is not None:
            return found
    return None


async def _refusal_as_problem(call: Awaitable[T]) -> T:
    """Await a :class:`~signaling.sessions.SessionService` call; its refusal as problem+json."""
    try:
        return await call
    except SessionRefused as exc:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
        extra = {"type": exc.problem_type} if exc.problem_type else {}
        raise HttpProblem(exc.status, exc.title, exc.detail, headers=headers, **extra) from None
