"""WHIP (RFC 9725) status codes and headers, against a real service (signaling + embedded SFU).

Offers come from real aiortc peer connections; one status-code rule of RFC 9725 (or of
relaycast's choices in docs/whip-whep.md) per test where practical.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from relaycast.service import Service
from signaling.app_keys import SESSION_SERVICE
from signaling.config import IceServer
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_channel, make_config
from tests.signaling.whip_helpers import (
    FRAG,
    SDP,
    STRONG_ETAG,
    MakeOffer,
    check_answer,
    problem,
    sdpfrag,
)

AUTH = {"Authorization": f"Bearer {STREAM_KEY}"}
SESSION_PATH = re.compile(r"^/whip/demo/([A-Za-z0-9_-]{32})$")  # token_urlsafe(24): 192 bits


def assert_nothing_allocated(svc: Service) -> None:
    assert svc.worker is not None
    assert svc.worker.load()["sessions"] == 0
    assert svc.worker.routers == {}
    assert svc.app[SESSION_SERVICE].store.sessions == {}


async def publish(svc: Service, http: aiohttp.ClientSession, offer: str) -> aiohttp.ClientResponse:
    resp = await http.post(
        f"{svc.url}/whip/demo", data=offer, headers={"Content-Type": SDP, **AUTH}
    )
    await resp.read()
    return resp


# ------------------------------------------------------------------ 201 Created (§4.2, §4.4, §5)
async def test_post_answers_recvonly_bundle_on_loopback(service: Service, http, make_offer) -> None:
    resp = await publish(service, http, await make_offer())
    assert resp.status == 201, await resp.text()
    assert resp.content_type == SDP
    match = SESSION_PATH.match(resp.headers["Location"])
    assert match, resp.headers["Location"]
    assert service.app[SESSION_SERVICE].store.sessions[match.group(1)].resource == "whip"
    assert STRONG_ETAG.match(resp.headers["ETag"]), resp.headers["ETag"]
    assert "Link" not in resp.headers  # no ICE servers configured
    assert check_answer(await resp.text(), "recvonly") == ["video", "audio"]
    assert service.worker.load()["sessions"] == 1


async def test_session_ids_are_distinct_and_publisher_is_replaced(
    service: Service, http, make_offer
) -> None:
    first = await publish(service, http, await make_offer())
    second = await publish(service, http, await make_offer())
    assert (first.status, second.status) == (201, 201)
    assert first.headers["Location"] != second.headers["Location"]
    old_id = SESSION_PATH.match(first.headers["Location"]).group(1)

    # The SFU reports the replaced session to signaling asynchronously.
    await wait_for(
        lambda: old_id not in service.app[SESSION_SERVICE].store.sessions,
        10,
        "signaling to forget the replaced publisher session",
        interval_s=0.02,
    )
    await problem(await http.delete(service.url + first.headers["Location"]), 404)
    assert service.worker.load()["sessions"] == 1
    url = service.url + second.headers["Location"]
    assert (await http.delete(url, headers=AUTH)).status == 200


async def test_ice_servers_as_link_headers_not_in_options(http, make_offer) -> None:
    servers = (
        IceServer("turn:127.0.0.1:3478?transport=udp", "1700000000:alice", 'pa"ss\\word'),
        IceServer("stun:127.0.0.1:3478"),
    )
    async with Service(make_config(ice_servers=servers)) as svc:
        resp = await publish(svc, http, await make_offer())
        assert resp.status == 201
        assert resp.headers.getall("Link") == [
            '<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; username="1700000000:alice"; '
            'credential="pa\\"ss\\\\word"; credential-type="password"',
            '<stun:127.0.0.1:3478>; rel="ice-server"',
        ]
        for path in ("/whip/demo", resp.headers["Location"]):
            options = await http.options(
                svc.url + path,
                headers={"Origin": "http://127.0.0.1", "Access-Control-Request-Method": "POST"},
            )
            assert options.status == 200 and "Link" not in options.headers


# --------------------------------------------------------------- refused offers (§4.2, §4.4)
async def _chunks() -> AsyncIterator[bytes]:
    yield b"v=0\r\n"
    for _ in range(70):  # 70 KiB, chunked: no Content-Length to refuse it early
        yield b"a=x" + b"y" * 1021


OFFERS: dict[str, Callable[[MakeOffer], Awaitable[object]]] = {
    "valid": lambda mk: mk(),
    "empty": lambda mk: _const(b""),
    "not-sdp": lambda mk: _const(b"hello"),
    "no-media": lambda mk: _const(b"v=0\r\nthis is not sdp\r\n"),
    "non-utf8": lambda mk: _const(b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=\xff\xfe\r\n"),
    "no-ice": lambda mk: _edit(mk(), lambda o: re.sub(r"a=ice-(ufrag|pwd):\S+\r\n", "", o)),
    "64KiB+": lambda mk: _const(b"v=0\r\n" + b"a=x\r\n" * 13200),
    "64KiB+chunked": lambda mk: _const(_chunks()),
    "vp9": lambda mk: _edit(mk(("video",), codecs={"video": ["video/vp8"]}), _vp8_to_vp9),
    "pcmu": lambda mk: mk(("audio",), codecs={"audio": ["audio/pcmu"]}),
    "2-video": lambda mk: mk(("video", "video")),
    "recvonly": lambda mk: mk(direction="recvonly"),
}


async def _const(value: object) -> object:
    return value


async def _edit(offer: Awaitable[str], edit: Callable[[str], str]) -> str:
    return edit(await offer)


def _vp8_to_vp9(offer: str) -> str:
    return offer.replace("VP8/90000", "VP9/90000")


@pytest.mark.parametrize(
    ("content_type", "offer", "status"),
    [
        ("text/plain", "valid", 415),
        ("application/json", "valid", 415),
        (SDP, "empty", 400),
        (SDP, "not-sdp", 400),
        (SDP, "no-media", 400),
        (SDP, "non-utf8", 400),
        (SDP, "no-ice", 400),
        (SDP, "64KiB+", 413),
        (SDP, "64KiB+chunked", 413),
        (SDP, "vp9", 422),  # video offering only VP9: nothing forwardable
        (SDP, "pcmu", 422),  # audio offering only PCMU
        (SDP, "2-video", 422),
        (SDP, "recvonly", 422),
    ],
)
async def test_refused_offer_allocates_nothing(
    service: Service, http, make_offer, content_type, offer, status
) -> None:
    body = await OFFERS[offer](make_offer)
    headers = {"Content-Type": content_type, **AUTH}
    resp = await http.post(f"{service.url}/whip/demo", data=body, headers=headers)
    await problem(resp, status)
    if status == 415:
        assert resp.headers["Accept-Post"] == SDP
    assert_nothing_allocated(service)


INVALID_SDP: dict[str, Callable[[str], str]] = {
    "no-mid": lambda o: re.sub(r"a=mid:\S+\r\n", "", o),
    "duplicate-mid": lambda o: o.replace("a=mid:1", "a=mid:0"),
    "md5-fingerprint": lambda o: re.sub(r"a=fingerprint:\S+ \S+",
                                        "a=fingerprint:md5 " + ":".join(["AB"] * 16), o),
    "truncated-fingerprint": lambda o: re.sub(r"(a=fingerprint:sha-256 )(\S+)",
                                              lambda m: m.group(1) + m.group(2)[:29], o),
    "junk-c": lambda o: re.sub(r"c=IN IP4 \S+", "c=IN IP4 junk!!", o),
    "sctp-port": lambda o: o.replace("a=sctp-port:5000", "a=sctp-port:-1"),
}


@pytest.mark.parametrize("name", list(INVALID_SDP))
async def test_invalid_sdp_is_400_with_a_problem_type(
    service: Service, http, make_offer, name, caplog
) -> None:
    offer = await make_offer(("video", "audio", "application"))
    broken = INVALID_SDP[name](offer)
    assert broken != offer
    resp = await publish(service, http, broken)
    assert (resp.status, resp.content_type) == (400, "application/problem+json")
    body = await resp.json(content_type=None)
    assert body["type"] == "https://relaycast.dev/problems/invalid-sdp"
    assert body["title"] == "Invalid SDP offer" and body["status"] == 400
    assert "RFC" in body["detail"] and "Error" not in body["detail"]  # no exception texts
    assert_nothing_allocated(service)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_no_sfu_node_is_503_with_retry_after(http, make_offer) -> None:
    async with Service(make_config(embedded_sfu=False)) as svc:
        resp = await publish(svc, http, await make_offer())
        await problem(resp, 503)
        assert int(resp.headers["Retry-After"]) > 0


# ------------------------------------------------------------------ authentication (§4.7)
@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [
        (None, 401, None),
        ("Basic dXNlcjpwYXNz", 401, None),
        ("Bearer", 401, None),
        ("Bearer sk_not_a_key_of_any_room", 401, "invalid_token"),
        ("other-room", 403, "insufficient_scope"),
    ],
    ids=["missing", "basic", "empty-bearer", "wrong-key", "other-room-key"],
)
async def test_bearer_auth(
    service: Service, http, make_offer, authorization, status, error
) -> None:
    if authorization == "other-room":
        authorization = "Bearer " + await make_channel(service.app, "other")
    headers = {"Content-Type": SDP} | ({"Authorization": authorization} if authorization else {})
    resp = await http.post(f"{service.url}/whip/demo", data=await make_offer(), headers=headers)
    await problem(resp, status)
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert_nothing_allocated(service)


async def test_post_whip_without_a_room_publishes_to_the_keys_room(service: Service, http, make_offer) -> None:
    """``POST /whip``: the stream key alone names the room (RTMP ingest, encoders given one
    URL); a key no room has is 401 like a wrong key."""
    resp = await http.post(f"{service.url}/whip", data=await make_offer(), headers={"Content-Type": SDP, **AUTH})
    assert resp.status == 201, await resp.text()
    assert SESSION_PATH.match(resp.headers["Location"]), resp.headers["Location"]
    other_key = await make_channel(service.app, "other")
    resp = await http.post(f"{service.url}/whip", data=await make_offer(),
                           headers={"Content-Type": SDP, "Authorization": f"Bearer {other_key}"})
    assert resp.status == 201 and resp.headers["Location"].startswith("/whip/other/")
    for headers in ({"Authorization": "Bearer sk_guess"}, {}):
        resp = await http.post(f"{service.url}/whip", data=await make_offer(), headers={"Content-Type": SDP, **headers})
        await problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await http.options(f"{service.url}/whip")).headers["Accept-Post"] == SDP


async def test_wrong_keys_are_throttled_but_the_right_key_is_accepted(
    service: Service, http, make_offer
) -> None:
    offer = await make_offer()
    bad = {"Content-Type": SDP, "Authorization": "Bearer sk_guess"}
    for _ in range(10):
        await problem(await http.post(f"{service.url}/whip/demo", data=offer, headers=bad), 401)
    # The address is blocked for wrong keys: the next guess is refused unchecked ...
    resp = await http.post(f"{service.url}/whip/demo", data=offer, headers=bad)
    await problem(resp, 429)
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    other = {"Content-Type": SDP, "Authorization": "Bearer " + await make_channel(service.app, "other")}
    await problem(await http.post(f"{service.url}/whip/demo", data=offer, headers=other), 429)
    assert_nothing_allocated(service)
    # ... but the publisher behind the same address is not locked out.
    resp = await publish(service, http, offer)
    assert resp.status == 201
    url = service.url + resp.headers["Location"]
    await problem(await http.delete(url, headers={"Authorization": "Bearer sk_guess"}), 429)
    assert (await http.delete(url, headers=AUTH)).status == 200


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_whip_session_needs_the_publishers_key(
    service: Service, http, make_offer, method
) -> None:
    offer = await make_offer()
    created = await publish(service, http, offer)
    url = service.url + created.headers["Location"]
    patch = {"Content-Type": FRAG, "If-Match": "*"}
    body = sdpfrag(offer) if method == "PATCH" else None
    other_key = await make_channel(service.app, "other")
    for authorization, status, error in (
        (None, 401, None),
        ("Basic dXNlcjpwYXNz", 401, None),
        ("Bearer sk_not_the_key", 403, "insufficient_scope"),
        (f"Bearer {other_key}", 403, "insufficient_scope"),  # a real key, of another room
    ):
        headers = {**patch} | ({"Authorization": authorization} if authorization else {})
        resp = await http.request(method, url, data=body, headers=headers)
        await problem(resp, status)
        challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer")
        assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
        assert (await http.get(url)).status == 204  # the broadcast goes on
    assert service.worker.load()["sessions"] == 1
    resp = await http.request(method, url, data=body, headers={**patch, **AUTH})
    assert resp.status == (204 if method == "PATCH" else 200), await resp.text()


async def test_request_rate_limit_is_429(http) -> None:
    async with Service(make_config(request_rate=0.01, request_burst=3)) as svc:
        text = {"Content-Type": "text/plain"}
        for _ in range(3):
            await problem(await http.post(f"{svc.url}/whip/demo", data=b"x", headers=text), 415)
        for method, path in (("POST", ""), ("PATCH", "/abc"), ("DELETE", "/abc")):
            resp = await http.request(method, f"{svc.url}/whip/demo{path}")
            await problem(resp, 429)
            assert int(resp.headers["Retry-After"]) >= 1
        # Preflights are not limited.
        assert (await http.options(f"{svc.url}/whip/demo")).status == 200


# ----------------------------------------------------------------------- PATCH (§4.3)
NEW_PWD = "aNewIcePasswordOf22chars"
TCP = "a=candidate:7 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active"
FRAGMENTS: dict[str, Callable[[str], str | bytes]] = {
    "trickle": lambda o: sdpfrag(o),
    "end": lambda o: sdpfrag(o, end=True),
    "tcp": lambda o: sdpfrag(o, candidate=TCP),  # unsupported transport: silently discarded
    "restart": lambda o: sdpfrag(o, "newU", NEW_PWD),
    "new-pwd": lambda o: sdpfrag(o, pwd=NEW_PWD),
    "bad-candidate": lambda o: sdpfrag(o, candidate="a=candidate:garbage"),
    "not-sdp": lambda o: "hello world\r\n",
    "empty": lambda o: "",
    "non-utf8": lambda o: b"a=ice-ufrag:\xff\xfe\r\n",
    "64KiB+": lambda o: sdpfrag(o) + "a=x\r\n" * 13200,
}


@pytest.mark.parametrize(
    ("content_type", "match", "fragment", "status"),
    [
        (FRAG, "etag", "trickle", 204),
        (FRAG, "*", "trickle", 204),
        (FRAG, '"other", etag', "trickle", 204),
        (FRAG, "etag", "end", 204),
        (FRAG, "etag", "tcp", 204),
        (SDP, "etag", "trickle", 415),
        (FRAG, None, "trickle", 428),
        (FRAG, '"stale"', "trickle", 412),
        (FRAG, "W/etag", "trickle", 412),  # weak tags never match (strong comparison)
        # An ICE restart (RFC 9725 §4.3.3) of a session whose ICE never connected: 409, the
        # session stays as it was (a connected one restarts: tests/signaling/test_ice_restart_api.py).
        (FRAG, "*", "restart", 409),
        (FRAG, "etag", "restart", 409),
        (FRAG, "*", "new-pwd", 409),
        (FRAG, None, "restart", 428),
        (FRAG, '"stale"', "restart", 412),
        (FRAG, "etag", "bad-candidate", 400),
        (FRAG, "etag", "not-sdp", 400),
        (FRAG, "etag", "empty", 400),
        (FRAG, "etag", "non-utf8", 400),
        (FRAG, "etag", "64KiB+", 413),
    ],
)
async def test_patch(
    service: Service, http, make_offer, content_type, match, fragment, status
) -> None:
    offer = await make_offer()
    created = await publish(service, http, offer)
    etag, url = created.headers["ETag"], service.url + created.headers["Location"]
    headers = {"Content-Type": content_type, **AUTH}
    if match is not None:
        headers["If-Match"] = match.replace("etag", etag)
    resp = await http.patch(url, data=FRAGMENTS[fragment](offer), headers=headers)
    if status == 204:
        assert resp.status == 204, await resp.text()
        assert await resp.read() == b""
        assert "ETag" not in resp.headers  # RFC 9725 §4.3.2
    else:
        await problem(resp, status)
    if status == 415:
        assert resp.headers["Accept-Patch"] == FRAG
    # Neither a trickle nor a refused PATCH (not even a failed restart) ends the session.
    assert (await http.get(url)).status == 204
    assert service.worker.load()["sessions"] == 1


# ------------------------------------------------------------ DELETE, OPTIONS, GET (§4.1, §4.2)
async def test_delete_frees_everything(service: Service, http, make_offer) -> None:
    created = await publish(service, http, await make_offer())
    url = service.url + created.headers["Location"]
    pc = service.worker.routers["demo"].publisher.pc
    resp = await http.delete(url, headers={"If-Match": '"ignored-on-delete"', **AUTH})
    assert resp.status == 200
    assert pc.connectionState == "closed"
    assert_nothing_allocated(service)
    await problem(await http.delete(url, headers=AUTH), 404)
    await problem(await http.get(url), 404)
    patch = {"Content-Type": FRAG, "If-Match": "*"}
    await problem(await http.patch(url, data="a=end-of-candidates\r\n", headers=patch), 404)
    await problem(await http.delete(f"{service.url}/whip/demo/{'x' * 32}", headers=AUTH), 404)


async def test_options_endpoint_and_session(service: Service, http, make_offer) -> None:
    preflight = {
        "Origin": "http://127.0.0.1",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    resp = await http.options(f"{service.url}/whip/demo", headers=preflight)
    assert resp.status == 200
    assert resp.headers["Accept-Post"] == SDP
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "if-match"} <= allowed
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "etag", "link"} <= exposed
    created = await publish(service, http, await make_offer())
    resp = await http.options(service.url + created.headers["Location"], headers=preflight)
    assert resp.status == 200
    assert resp.headers["Accept-Patch"] == FRAG
    assert {"PATCH", "DELETE"} <= {
        m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")
    }


async def test_get_has_no_representation(service: Service, http, make_offer) -> None:
    resp = await http.get(f"{service.url}/whip/demo")
    assert (resp.status, await resp.read()) == (204, b"")
    created = await publish(service, http, await make_offer())
    resp = await http.get(service.url + created.headers["Location"])
    assert (resp.status, await resp.read()) == (204, b"")


# ------------------------------------------------------ every error is problem+json (RFC 9457)
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/whip/no-such-room", 404),
        ("GET", "/whip/no-such-room", 404),
        ("GET", "/no/such/path", 404),
        ("PUT", "/whip/demo", 405),
        ("DELETE", "/whip/demo", 405),
        ("PATCH", "/whip/demo", 405),
        ("POST", "/whip/demo/" + "x" * 32, 405),
        ("PUT", "/whip/demo/" + "x" * 32, 405),
    ],
)
async def test_routing_errors_are_problems(
    service: Service, http, make_offer, method, path, status
) -> None:
    resp = await http.request(
        method, service.url + path, data=await make_offer(), headers={"Content-Type": SDP, **AUTH}
    )
    await problem(resp, status)
    if status == 405:
        assert method not in resp.headers["Allow"]
    assert_nothing_allocated(service)
