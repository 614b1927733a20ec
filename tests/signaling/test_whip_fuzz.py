"""Fuzzing the WHIP/WHEP HTTP surface of a real service (hypothesis).

Every request is drawn from: a method, a path (the endpoints, a live session resource of
either kind, an unknown session, an unknown room, junk), a content type, an
``Authorization`` (none, the room's key, a wrong one, junk), an ``If-Match`` and a body
(nothing, junk bytes, a fragment, or a real aiortc offer with lines dropped, duplicated,
garbled or cut).  Whatever arrives, the service answers below 500 and logs no ERROR;
every error is problem+json.  Most examples fail early (method, type, key or SDP checks),
so the run stays short.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest import whip_client
from relaycast.service import Service
from signaling.config import SignalingConfig
from tests.sdp_mutations import sdp_mutations
from tests.services import STREAM_KEY

METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"]
CONTENT_TYPES = [None, "application/sdp", "application/trickle-ice-sdpfrag", "text/plain",
                 "application/sdp; charset=utf-8", "application/json", "multipart/form-data"]
AUTHORIZATIONS = [None, f"Bearer {STREAM_KEY}", "Bearer sk_wrong", "Bearer", "Basic eDp5",
                  "bearer  " + STREAM_KEY, "Bearer \u00e9"]
IF_MATCH = [None, "*", '"stale"', "W/\"x\"", ""]


async def _offer(direction: str) -> list[str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in ("video", "audio"):
        pc.addTransceiver(kind, direction=direction)
    pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp.split("\r\n")


@pytest.fixture
async def live() -> AsyncIterator[tuple[Service, dict[str, str]]]:
    """A service without request limits (the fuzzer would only meet 429s) whose room
    ``demo`` has a publisher session and a viewer session (offer/answer only)."""
    config = SignalingConfig.from_env(
        {"RELAYCAST_PENDING_SESSIONS_PER_ADDRESS": "1000"}, host="127.0.0.1", port=0,
        demo_stream_key=STREAM_KEY, request_rate=100000.0, request_burst=100000)
    async with Service(config) as svc, aiohttp.ClientSession() as http:
        paths = {}
        for kind, direction in (("whip", "sendonly"), ("whep", "recvonly")):
            async with http.post(f"{svc.url}/{kind}/demo", data="\r\n".join(await _offer(direction)),
                                 headers={"Content-Type": "application/sdp",
                                          "Authorization": f"Bearer {STREAM_KEY}"}) as resp:
                assert resp.status == 201, await resp.text()
                paths[kind] = resp.headers["Location"]
        yield svc, paths


def _paths(live_paths: dict[str, str]) -> st.SearchStrategy[str]:
    junk = st.text(alphabet=st.sampled_from("abcXYZ019-_.%~"), min_size=0, max_size=40)
    return st.one_of(
        st.sampled_from(["/whip/demo", "/whep/demo", "/whip/nowhere", "/whep/Bad%20Room",
                         "/whip/demo/" + "x" * 32, "/whep/demo/short", "/whip/", "/whep/demo/a/b",
                         *live_paths.values(),
                         live_paths["whip"].replace("/whip/", "/whep/")]),
        junk.map(lambda s: "/whip/demo/" + s),
        junk.map(lambda s: "/whep/" + s),
    )


whip_client.pin_loopback()  # the offers' host candidates are on 127.0.0.1
PUBLISHER_LINES = asyncio.run(_offer("sendonly"))
VIEWER_LINES = asyncio.run(_offer("recvonly"))


def _bodies() -> st.SearchStrategy[bytes | None]:
    return st.one_of(
        st.none(),
        st.binary(max_size=64),
        st.just(b"a=end-of-candidates\r\n"),
        st.just(b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n"),
        sdp_mutations(PUBLISHER_LINES).map(lambda lines: "\r\n".join(lines).encode()),
        sdp_mutations(VIEWER_LINES).map(lambda lines: "\r\n".join(lines).encode()),
    )


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_http_surface_never_5xx_nor_error_log(
    live: tuple[Service, dict[str, str]], caplog: pytest.LogCaptureFixture, data: st.DataObject
) -> None:
    svc, paths = live
    caplog.clear()
    headers = {}
    if data.draw(st.booleans(), "an offer POST"):  # half the examples reach the SFU's checks
        method, kind = "POST", data.draw(st.sampled_from(["whip", "whep"]), "kind")
        path = f"/{kind}/demo"
        headers["Content-Type"] = "application/sdp"
        lines = PUBLISHER_LINES if kind == "whip" else VIEWER_LINES
        body: bytes | None = "\r\n".join(data.draw(sdp_mutations(lines), "offer")).encode()
        if kind == "whip":
            headers["Authorization"] = f"Bearer {STREAM_KEY}"
    else:
        method = data.draw(st.sampled_from(METHODS), "method")
        path = data.draw(_paths(paths), "path")
        for name, choices in (("Content-Type", CONTENT_TYPES), ("Authorization", AUTHORIZATIONS),
                              ("If-Match", IF_MATCH)):
            value = data.draw(st.sampled_from(choices), name)
            if value is not None:
                headers[name] = value
        body = data.draw(_bodies(), "body")
    async with aiohttp.ClientSession() as http, http.request(
            method, svc.url + path, data=body, headers=headers) as resp:
        text = await resp.text(errors="replace")
        assert resp.status < 500, (resp.status, text)
        if resp.status >= 400 and method != "HEAD":
            assert resp.content_type == "application/problem+json", text
            if "type" in text and "invalid-sdp" in text:
                assert re.search(r"Error|Traceback", text) is None, text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
