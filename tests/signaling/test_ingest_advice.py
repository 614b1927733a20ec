"""Ingest advice, relaycast's extension of the WHIP session (docs/whip-whep.md): ``PATCH
{session}`` ``application/json`` ``{"advice": str | null}`` with the publisher's stream key →
204, and the publisher on its SFU node keeps it (``ingest_advice`` RPC) for its ingest
report; errors as RFC 9457 problems.  Against a real service (signaling + embedded SFU);
sessions are opened with real aiortc offers over ``POST /whip`` (the key alone, as the RTMP
ingest publishes), media need not flow."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from relaycast.service import Service
from sfu.router import Router
from tests.services import STREAM_KEY, make_channel
from tests.signaling.whip_helpers import FRAG, SDP, new_offer, problem, sdpfrag

AUTH = {"Authorization": f"Bearer {STREAM_KEY}"}
JSON = {"Content-Type": "application/json"}
ADVICE = "set bframes=0 / profile baseline for lower latency and no transcoding"
MakeOffer = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_offer() -> AsyncIterator[MakeOffer]:
    pcs: list[RTCPeerConnection] = []
    yield lambda *args, **kwargs: new_offer(pcs, *args, **kwargs)
    for pc in pcs:
        await pc.close()


async def publish(svc: Service, http: aiohttp.ClientSession, offer: str) -> str:
    """``POST /whip`` with the demo key; the session's absolute URL."""
    async with http.post(f"{svc.url}/whip", data=offer, headers={"Content-Type": SDP, **AUTH}) as resp:
        assert resp.status == 201, await resp.text()
        return svc.url + resp.headers["Location"]


def router(svc: Service) -> Router:
    assert svc.worker is not None
    return svc.worker.routers["demo"]


def reported_advice(svc: Service) -> str | None:
    """The ``advice`` of the demo room's ingest report on its node."""
    ingest = router(svc).ingest()
    assert ingest is not None
    return ingest["advice"]


async def patch_advice(http: aiohttp.ClientSession, url: str, body: object,
                       headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    resp = await http.patch(url, json=body, headers=AUTH if headers is None else headers)
    await resp.read()
    return resp


async def test_advice_reaches_the_publisher_on_its_node_and_clears(
        service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer) -> None:
    offer = await make_offer()
    url = await publish(service, http, offer)
    assert reported_advice(service) is None  # a new session has none

    resp = await patch_advice(http, url, {"advice": ADVICE})  # no If-Match needed
    assert resp.status == 204, await resp.text()
    assert await resp.read() == b"" and "ETag" not in resp.headers
    assert router(service).publisher.ingest_advice == ADVICE
    assert reported_advice(service) == ADVICE
    # The ICE session's ETag is untouched: a trickle with the 201's tag (here *) still works.
    trickle = await http.patch(url, data=sdpfrag(offer),
                               headers={"Content-Type": FRAG, "If-Match": "*", **AUTH})
    assert trickle.status == 204, await trickle.text()
    assert reported_advice(service) == ADVICE

    for longest in ("x" * 200, "é" * 200, "🎥" * 200):  # characters, not bytes
        assert (await patch_advice(http, url, {"advice": longest})).status == 204
        assert reported_advice(service) == longest

    resp = await patch_advice(http, url, {"advice": None})
    assert resp.status == 204, await resp.text()
    assert reported_advice(service) is None


async def test_a_new_publisher_session_starts_without_advice(
        service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer) -> None:
    first = await publish(service, http, await make_offer())
    assert (await patch_advice(http, first, {"advice": ADVICE})).status == 204
    second = await publish(service, http, await make_offer())  # replaces the first
    assert router(service).publisher.session_id == second.rsplit("/", 1)[1]
    assert reported_advice(service) is None
    await problem(await patch_advice(http, first, {"advice": ADVICE}), 404)  # the old one ended
    assert reported_advice(service) is None


VALUE = "1 to 200 characters"
SHAPE = '{"advice": string or null}'


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"advice": ""}', 400, VALUE),
        (b'{"advice": "' + b"x" * 201 + b'"}', 400, VALUE),
        (b'{"advice": "line one\\nline two"}', 400, VALUE),
        (b'{"advice": "tab\\there"}', 400, VALUE),
        (b'{"advice": 42}', 400, VALUE),
        (b'{"advice": true}', 400, VALUE),
        (b'{"advice": ["set bframes=0"]}', 400, VALUE),
        (b'{"advice": {"text": "set bframes=0"}}', 400, VALUE),
        (b'{}', 400, SHAPE),
        (b'{"advice": "set bframes=0", "level": "warning"}', 400, SHAPE),
        (b'{"Advice": "set bframes=0"}', 400, SHAPE),
        (b'["set bframes=0"]', 400, SHAPE),
        (b'"set bframes=0"', 400, SHAPE),
        (b'null', 400, SHAPE),
        (b'advice=set', 400, "not JSON"),
        (b'', 400, "not JSON"),
        (b'\xff\xfe', 400, "not JSON"),
        (b"[" * 4000, 400, "not JSON"),  # nested past the parser's recursion limit
        (b'{"advice": "' + b"x" * 5000 + b'"}', 413, "4096 bytes"),
    ],
)
async def test_malformed_advice_is_a_problem_and_changes_nothing(
        service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer,
        body: bytes, status: int, detail: str) -> None:
    url = await publish(service, http, await make_offer())
    assert (await patch_advice(http, url, {"advice": ADVICE})).status == 204
    resp = await http.patch(url, data=body, headers={**JSON, **AUTH})
    assert detail in str((await problem(resp, status))["detail"])
    assert reported_advice(service) == ADVICE
    assert (await http.get(url)).status == 204  # the broadcast goes on


async def test_advice_needs_the_publishers_key(
        service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer) -> None:
    url = await publish(service, http, await make_offer())
    other_key = await make_channel(service.app, "other")
    for authorization, status, error in (
        (None, 401, None),
        ("Basic dXNlcjpwYXNz", 401, None),
        ("Bearer sk_not_the_key", 403, "insufficient_scope"),
        (f"Bearer {other_key}", 403, "insufficient_scope"),  # a real key, of another room
    ):
        headers = {"Authorization": authorization} if authorization else {}
        resp = await patch_advice(http, url, {"advice": ADVICE}, headers)
        await problem(resp, status)
        challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer")
        assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert reported_advice(service) is None


async def test_unknown_sessions_are_404_and_other_bodies_keep_their_meaning(
        service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer) -> None:
    url = await publish(service, http, await make_offer())
    await problem(await patch_advice(http, url.rsplit("/", 1)[0] + "/" + "x" * 32, {"advice": ADVICE}), 404)
    # Not JSON: as before, a trickle fragment or 415 (the extension is not advertised).
    resp = await http.patch(url, data=ADVICE, headers={"Content-Type": "text/plain", **AUTH})
    await problem(resp, 415)
    assert resp.headers["Accept-Patch"] == FRAG
    # A WHEP session has no advice: JSON there is 415 as before.
    async with http.post(f"{service.url}/whep/demo", data=await make_offer(direction="recvonly"),
                         headers={"Content-Type": SDP}) as resp:
        assert resp.status == 201, await resp.text()
        whep = service.url + resp.headers["Location"]
    await problem(await patch_advice(http, whep, {"advice": ADVICE}, {}), 415)
    assert reported_advice(service) is None
    # Nor does the node take one for a viewer's session (the RPC, behind signaling's back).
    assert service.worker is not None
    answer = await service.worker.ingest_advice({"session_id": whep.rsplit("/", 1)[1], "advice": ADVICE})
    assert answer["error"]["status"] == 404
    answer = await service.worker.ingest_advice({"session_id": url.rsplit("/", 1)[1], "advice": 7})
    assert answer["error"]["status"] == 400
    # Once the publisher's session ended, its advice resource is gone too.
    assert (await http.delete(url, headers=AUTH)).status == 200
    await problem(await patch_advice(http, url, {"advice": ADVICE}), 404)
