"""Ingest advice, relaycast's extension of the WHIP session (docs/whip-whep.md): ``PATCH
{session}`` ``application/json`` ``{"advice": str | null, "dropped_frames": int | null}``
(either or both; a member left out stays as it was) with the publisher's stream key → 204,
and the publisher on its SFU node keeps them (``ingest_advice`` RPC) for its ingest report;
errors as RFC 9457 problems.  Against a real service (signaling + embedded SFU);
sessions are opened with real aiortc offers over ``POST /whip`` (the key alone, as the RTMP
ingest publishes), media need not flow."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from relaycast.service import Service
from sfu.protocol import IngestAdvice
from sfu.router import Router
from tests.services import STREAM_KEY, make_channel
from tests.signaling.whip_helpers import FRAG, SDP, MakeOffer, problem, sdpfrag

AUTH = {"Authorization": f"Bearer {STREAM_KEY}"}
JSON = {"Content-Type": "application/json"}
ADVICE = "set bframes=0 / profile baseline for lower latency and no transcoding"


async def publish(svc: Service, http: aiohttp.ClientSession, offer: str) -> str:
    """``POST /whip`` with the demo key; the session's absolute URL."""
    async with http.post(f"{svc.url}/whip", data=offer, headers={"Content-Type": SDP, **AUTH}) as resp:
        assert resp.status == 201, await resp.text()
        return svc.url + resp.headers["Location"]


def router(svc: Service) -> Router:
    assert svc.worker is not None
    return svc.worker.routers["demo"]


def reported(svc: Service) -> dict[str, Any]:
    """The demo room's ingest report on its node."""
    ingest = router(svc).ingest()
    assert ingest is not None
    return ingest


def reported_advice(svc: Service) -> str | None:
    """The ``advice`` of the demo room's ingest report on its node."""
    return reported(svc)["advice"]


def reported_drops(svc: Service) -> int | None:
    """The ``dropped_frames`` of the demo room's ingest report on its node."""
    return reported(svc)["dropped_frames"]


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


async def test_dropped_frames_and_advice_change_apart(
        service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer) -> None:
    url = await publish(service, http, await make_offer())
    assert reported_drops(service) is None  # never reported

    # The count alone, as the RTMP/SRT ingest sends it every few seconds: no advice set yet.
    assert (await patch_advice(http, url, {"dropped_frames": 0})).status == 204
    assert (reported_advice(service), reported_drops(service)) == (None, 0)
    assert router(service).publisher.ingest_dropped_frames == 0
    assert (await patch_advice(http, url, {"advice": ADVICE})).status == 204  # advice alone
    assert (reported_advice(service), reported_drops(service)) == (ADVICE, 0)  # the count stays
    for count in (12, 13, MAX_SAFE):  # the count alone keeps the advice
        resp = await patch_advice(http, url, {"dropped_frames": count})
        assert resp.status == 204, await resp.text()
        assert (reported_advice(service), reported_drops(service)) == (ADVICE, count)
    assert (await patch_advice(http, url, {"advice": None})).status == 204  # clears the advice only
    assert (reported_advice(service), reported_drops(service)) == (None, MAX_SAFE)

    # Both at once; null clears each.
    resp = await patch_advice(http, url, {"advice": ADVICE, "dropped_frames": 40})
    assert resp.status == 204, await resp.text()
    assert (reported_advice(service), reported_drops(service)) == (ADVICE, 40)
    assert (await patch_advice(http, url, {"dropped_frames": None})).status == 204
    assert (reported_advice(service), reported_drops(service)) == (ADVICE, None)
    assert (await patch_advice(http, url, {"dropped_frames": 3, "advice": None})).status == 204
    assert (reported_advice(service), reported_drops(service)) == (None, 3)
    assert (await patch_advice(http, url, {"advice": None, "dropped_frames": None})).status == 204
    assert (reported_advice(service), reported_drops(service)) == (None, None)


async def test_a_new_publisher_session_starts_without_advice(
        service: Service, http: aiohttp.ClientSession, make_offer: MakeOffer) -> None:
    first = await publish(service, http, await make_offer())
    body = {"advice": ADVICE, "dropped_frames": 25}
    assert (await patch_advice(http, first, body)).status == 204
    second = await publish(service, http, await make_offer())  # replaces the first
    assert router(service).publisher.session_id == second.rsplit("/", 1)[1]
    assert (reported_advice(service), reported_drops(service)) == (None, None)
    await problem(await patch_advice(http, first, body), 404)  # the old one ended
    await problem(await patch_advice(http, first, {"dropped_frames": 26}), 404)
    assert (reported_advice(service), reported_drops(service)) == (None, None)


MAX_SAFE = 2**53 - 1
VALUE = "1 to 200 characters"
COUNT = "integer from 0 to 9007199254740991"
SHAPE = '"advice" (string or null), "dropped_frames" (integer or null) or both'


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
        (b'{"dropped_frames": -1}', 400, COUNT),
        (b'{"dropped_frames": 1.5}', 400, COUNT),
        (b'{"dropped_frames": 3.0}', 400, COUNT),  # JSON's number, parsed as a float
        (b'{"dropped_frames": 1e3}', 400, COUNT),
        (b'{"dropped_frames": true}', 400, COUNT),
        (b'{"dropped_frames": false}', 400, COUNT),
        (b'{"dropped_frames": "3"}', 400, COUNT),
        (b'{"dropped_frames": [3]}', 400, COUNT),
        (b'{"dropped_frames": 9007199254740992}', 400, COUNT),  # 2**53
        (b'{"dropped_frames": 1' + b"0" * 400 + b'}', 400, COUNT),
        (b'{"dropped_frames": 1' + b"0" * 4300 + b'}', 413, "4096 bytes"),
        # Both members: each is checked, the advice first; neither changes when one is wrong.
        (b'{"advice": "set bframes=0", "dropped_frames": -1}', 400, COUNT),
        (b'{"advice": "", "dropped_frames": -1}', 400, VALUE),
        (b'{"advice": 42, "dropped_frames": 3}', 400, VALUE),
        (b'{}', 400, SHAPE),
        (b'{"advice": "set bframes=0", "level": "warning"}', 400, SHAPE),
        (b'{"dropped_frames": 3, "dropped": 3}', 400, SHAPE),
        (b'{"advice": null, "dropped_frames": 3, "fps": 30}', 400, SHAPE),
        (b'{"Dropped_frames": 3}', 400, SHAPE),
        (b'{"droppedFrames": 3}', 400, SHAPE),
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
    assert (await patch_advice(http, url, {"advice": ADVICE, "dropped_frames": 8})).status == 204
    resp = await http.patch(url, data=body, headers={**JSON, **AUTH})
    assert detail in str((await problem(resp, status))["detail"])
    assert (reported_advice(service), reported_drops(service)) == (ADVICE, 8)
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
        for body in ({"advice": ADVICE}, {"dropped_frames": 5}):
            resp = await patch_advice(http, url, body, headers)
            await problem(resp, status)
            challenge = resp.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer")
            assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert (reported_advice(service), reported_drops(service)) == (None, None)


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
    await problem(await patch_advice(http, whep, {"dropped_frames": 5}, {}), 415)
    assert (reported_advice(service), reported_drops(service)) == (None, None)
    # Nor does the node take one for a viewer's session (the RPC, behind signaling's back).
    assert service.worker is not None
    answer = await service.worker.ingest_advice({"session_id": whep.rsplit("/", 1)[1], "advice": ADVICE})
    assert answer["error"]["status"] == 404
    session_id = url.rsplit("/", 1)[1]
    for malformed in ({"advice": 7}, {"dropped_frames": -1}, {"dropped_frames": True}, {}):
        answer = await service.worker.ingest_advice({"session_id": session_id, **malformed})
        assert answer["error"]["status"] == 400, malformed
    # The RPC's members as the protocol writes them: only those given, the others unchanged.
    count_only = IngestAdvice.of(session_id, {"dropped_frames": 9})
    assert count_only.to_wire() == {"session_id": session_id, "dropped_frames": 9}
    assert await service.worker.ingest_advice(count_only.to_wire()) == {"ok": True}
    assert (reported_advice(service), reported_drops(service)) == (None, 9)
    # Once the publisher's session ended, its advice resource is gone too.
    assert (await http.delete(url, headers=AUTH)).status == 200
    await problem(await patch_advice(http, url, {"advice": ADVICE}), 404)
