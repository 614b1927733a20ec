"""WHEP (draft-ietf-wish-whep) status codes and headers, against a real service.

WHEP is WHIP's resource model with the media the other way: the answer is
``sendonly``, and a viewer before any publisher gets 409 + ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from loadtest import whip_client
from loadtest.pattern import read_code
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from signaling.app_keys import SESSION_SERVICE
from signaling.config import IceServer
from tests.services import STREAM_KEY, make_config
from tests.signaling.whip_helpers import (
    FRAG,
    SDP,
    STRONG_ETAG,
    MakeOffer,
    check_answer,
    new_offer,
    problem,
    sdpfrag,
)

AUTH = {"Authorization": f"Bearer {STREAM_KEY}"}
SESSION_PATH = re.compile(r"^/whep/demo/([A-Za-z0-9_-]{32})$")
VP8 = {"video": ["video/vp8", "video/rtx"]}


@pytest.fixture
async def make_offer() -> AsyncIterator[MakeOffer]:
    """``await make_offer(kinds, direction="recvonly", codecs=...)`` → a real aiortc offer."""
    pcs: list[RTCPeerConnection] = []
    yield lambda kinds=("video", "audio"), direction="recvonly", codecs=None: new_offer(
        pcs, kinds, direction, codecs
    )
    for pc in pcs:
        await pc.close()


async def publish(svc: Service, http: aiohttp.ClientSession, offer: str) -> aiohttp.ClientResponse:
    resp = await http.post(
        f"{svc.url}/whip/demo", data=offer, headers={"Content-Type": SDP, **AUTH}
    )
    assert resp.status == 201, await resp.text()
    return resp


@pytest.fixture
async def live(service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer) -> str:
    """A VP8 + Opus publisher session in room ``demo`` (offer/answer only); its URL."""
    resp = await publish(service, http, await make_offer(direction="sendonly", codecs=VP8))
    return service.url + resp.headers["Location"]


def viewer_count(svc: Service) -> int:
    """Viewer sessions on the SFU, connected or not (offer/answer-only viewers never
    connect, and the load report counts connected viewers only)."""
    assert svc.worker is not None
    return sum(len(router.viewers) for router in svc.worker.routers.values())


async def view(
    svc: Service, http: aiohttp.ClientSession, offer: str | bytes, content_type: str = SDP
) -> aiohttp.ClientResponse:
    resp = await http.post(
        f"{svc.url}/whep/demo", data=offer, headers={"Content-Type": content_type}
    )
    await resp.read()
    return resp


# --------------------------------------------------------------------------- 409 Conflict
async def test_viewer_before_publisher_is_409_with_retry_after(
    service: Service, http, make_offer
) -> None:
    resp = await view(service, http, await make_offer())
    body = await problem(resp, 409)
    assert resp.headers["Retry-After"] == str(service.config.retry_after_s)
    assert "publisher" in str(body["detail"])
    assert service.worker.load()["sessions"] == 0 and service.worker.routers == {}
    assert service.app[SESSION_SERVICE].store.sessions == {}


async def test_viewer_after_publisher_left_is_409(service: Service, http, make_offer, live) -> None:
    assert (await http.delete(live, headers=AUTH)).status == 200
    resp = await view(service, http, await make_offer())
    await problem(resp, 409)
    assert int(resp.headers["Retry-After"]) > 0
    assert service.worker.load()["sessions"] == 0


# ---------------------------------------------------------------------------- 201 Created
async def test_answer_is_sendonly_bundle_on_loopback(
    service: Service, http, make_offer, live
) -> None:
    resp = await view(service, http, await make_offer())  # no Authorization: viewing is public
    assert resp.status == 201, await resp.text()
    assert resp.content_type == SDP
    match = SESSION_PATH.match(resp.headers["Location"])
    assert match, resp.headers["Location"]
    assert service.app[SESSION_SERVICE].store.sessions[match.group(1)].resource == "whep"
    assert STRONG_ETAG.match(resp.headers["ETag"])
    answer = await resp.text()
    assert check_answer(answer, "sendonly") == ["video", "audio"]
    video = answer.split("\nm=")[1]  # the publisher's codec only: no transcoding, no choice
    assert "VP8/90000" in video and "H264" not in video
    assert viewer_count(service) == 1


async def test_link_headers_on_201_not_on_options(http, make_offer) -> None:
    turn = IceServer("turn:127.0.0.1:3478?transport=udp", "1700000000:viewer", "secret")
    async with Service(make_config(ice_servers=(turn,))) as svc:
        await publish(svc, http, await make_offer(direction="sendonly"))
        resp = await view(svc, http, await make_offer())
        assert resp.status == 201
        assert resp.headers.getall("Link") == [
            '<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; username="1700000000:viewer"; '
            'credential="secret"; credential-type="password"'
        ]
        options = await http.options(f"{svc.url}/whep/demo")
        assert options.status == 200 and options.headers["Accept-Post"] == SDP
        assert "Link" not in options.headers


async def test_media_flows_to_a_real_viewer(service: Service) -> None:
    pub = await whip_client.publish(
        f"{service.url}/whip/demo",
        STREAM_KEY,
        [PatternVideoTrack(320, 180, 15, code="counter"), ToneAudioTrack()],
    )
    viewer = None
    try:
        await whip_client.wait_connected(pub.pc, timeout=20)
        viewer = await whip_client.view(f"{service.url}/whep/demo")
        assert SESSION_PATH.match(viewer.location.removeprefix(service.url))
        tracks = {t.kind: t.receiver.track for t in viewer.pc.getTransceivers()}
        await whip_client.wait_connected(viewer.pc, timeout=20)

        async def first_code() -> int:
            while True:
                code = read_code(await tracks["video"].recv())
                if code is not None:
                    return code

        assert await asyncio.wait_for(first_code(), 30) >= 0
        assert await viewer.close() == 200
        viewer = None
        assert viewer_count(service) == 0
    finally:
        if viewer is not None:
            await viewer.close()
        assert await pub.close() == 200
    assert service.worker.load()["sessions"] == 0


# ------------------------------------------------------------------------ refused offers
REFUSED = [
    # id, content type, body from make_offer, status
    (
        "h264-only-viewer-of-vp8",
        SDP,
        lambda mk: mk(("video",), codecs={"video": ["video/h264", "video/rtx"]}),
        422,
    ),
    ("sendonly-viewer", SDP, lambda mk: mk(direction="sendonly"), 422),
    ("inactive-viewer", SDP, lambda mk: mk(direction="inactive"), 422),
    ("two-video-tracks", SDP, lambda mk: mk(("video", "video")), 422),
    ("wrong-content-type", "text/plain", lambda mk: mk(), 415),
    ("malformed", SDP, lambda mk: _const("v=0\r\nnonsense\r\n"), 400),
    ("empty", SDP, lambda mk: _const(""), 400),
    ("non-utf8", SDP, lambda mk: _const(b"v=0\r\ns=\xff\r\n"), 400),
    ("over-64KiB", SDP, lambda mk: _const("v=0\r\n" + "a=x\r\n" * 13200), 413),
    ("duplicate-mid", SDP, lambda mk: _duplicate_mid(mk()), 400),  # a typed problem
]


async def _duplicate_mid(offer: Awaitable[str]) -> str:
    return (await offer).replace("a=mid:1", "a=mid:0")


async def _const(value: str | bytes) -> str | bytes:
    return value


@pytest.mark.parametrize(
    ("content_type", "body", "status"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
async def test_refused_viewer_allocates_nothing(
    service: Service, http, make_offer, live, content_type, body, status
) -> None:
    resp = await view(service, http, await body(make_offer), content_type)
    await problem(resp, status)
    assert viewer_count(service) == 0
    assert service.worker.load()["sessions"] == 1  # only the publisher
    assert [s.resource for s in service.app[SESSION_SERVICE].store.sessions.values()] == ["whip"]


async def test_offer_without_the_rooms_tracks_is_422(service: Service, http, make_offer) -> None:
    await publish(service, http, await make_offer(("video",), direction="sendonly"))
    await problem(await view(service, http, await make_offer(("audio",))), 422)
    assert viewer_count(service) == 0


async def test_unknown_room_is_404(service: Service, http, make_offer) -> None:
    resp = await http.post(
        f"{service.url}/whep/nowhere", data=await make_offer(), headers={"Content-Type": SDP}
    )
    await problem(resp, 404)


# -------------------------------------------------------------------- session resource
@pytest.mark.parametrize(
    ("if_match", "restart", "status"),
    [
        ("etag", False, 204),
        (None, False, 428),
        ('"stale"', False, 412),
        ("*", True, 409),  # ICE restart before ICE ever connected (RFC 9725 §4.3.3)
        (None, True, 428),
    ],
    ids=["trickle", "missing-if-match", "stale-if-match", "restart", "restart-missing-if-match"],
)
async def test_patch(service: Service, http, make_offer, live, if_match, restart, status) -> None:
    offer = await make_offer()
    created = await view(service, http, offer)
    url, etag = service.url + created.headers["Location"], created.headers["ETag"]
    headers = {"Content-Type": FRAG}
    if if_match:
        headers["If-Match"] = if_match.replace("etag", etag)
    fragment = sdpfrag(offer, ufrag="restartU" if restart else "")
    resp = await http.patch(url, data=fragment, headers=headers)
    if status == 204:
        assert (resp.status, await resp.read()) == (204, b"")
        assert "ETag" not in resp.headers
    else:
        await problem(resp, status)
    assert viewer_count(service) == 1  # the session survives a refused PATCH


async def test_delete_and_resource_errors(service: Service, http, make_offer, live) -> None:
    created = await view(service, http, await make_offer())
    url = service.url + created.headers["Location"]
    options = await http.options(url)
    assert options.status == 200 and options.headers["Accept-Patch"] == FRAG
    assert (await http.get(url)).status == 204
    session_id = SESSION_PATH.match(created.headers["Location"]).group(1)
    # A WHEP session is not reachable under /whip, nor under another room.
    await problem(await http.delete(f"{service.url}/whip/demo/{session_id}"), 404)
    assert (await http.delete(url)).status == 200
    assert viewer_count(service) == 0
    assert service.worker.load()["sessions"] == 1  # the publisher is untouched
    await problem(await http.delete(url), 404)
    await problem(await http.put(url, data=b""), 405)
    await problem(await http.delete(f"{service.url}/whep/demo/{'x' * 32}"), 404)
