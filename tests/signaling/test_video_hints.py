"""Viewer size hints: ``POST <WHEP session>/video-size`` ``{"width", "height"}`` (device pixels)
→ 204 and the viewer's video Consumer gets ``set_max_size(width, height)``; validation and
errors as RFC 9457 problems (docs/whip-whep.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from loadtest import whip_client
from relaycast.service import Service
from sfu.consumer import Consumer
from tests.services import make_config
from tests.sfu.sfu_helpers import publish_pattern
from tests.signaling.whip_helpers import problem

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def size_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int | None, int | None]]:
    """``(consumer kind, width, height)`` of every ``Consumer.set_max_size`` call (which still runs)."""
    calls: list[tuple[str, int | None, int | None]] = []
    original = getattr(Consumer, "set_max_size", None)  # LEAD's method (issue 13), if merged yet

    def set_max_size(self: Consumer, width: int | None, height: int | None) -> None:
        calls.append((self.kind, width, height))
        if original is not None:
            original(self, width, height)

    monkeypatch.setattr(Consumer, "set_max_size", set_max_size, raising=False)
    return calls


@pytest.fixture
async def watching(service: Service, http: aiohttp.ClientSession) -> AsyncIterator[whip_client.WhipSession]:
    """A WHEP viewer of the pattern publisher (its session exists; media need not flow)."""
    publisher = await publish_pattern(service, audio=True)
    viewer = await whip_client.view(f"{service.url}/whep/demo", http=http)
    yield viewer
    await viewer.close(http)
    await publisher.close(http)


async def test_hint_reaches_the_video_consumer_and_clears(
        service: Service, http: aiohttp.ClientSession, watching: whip_client.WhipSession,
        size_calls: list[Any]) -> None:
    url = watching.location + "/video-size"
    resp = await http.post(url, json={"width": 640, "height": 360})
    assert resp.status == 204, await resp.text()
    assert await resp.read() == b""
    assert size_calls == [("video", 640, 360)]  # the video consumer only, not audio's
    consumer = service.worker.routers["demo"].viewers[watching.location.rsplit("/", 1)[1]].consumers["video"]
    applied = hasattr(consumer, "max_width")  # the real method keeps the hint
    assert not applied or (consumer.max_width, consumer.max_height) == (640, 360)
    resp = await http.post(url, json={"width": None, "height": None})
    assert resp.status == 204, await resp.text()
    assert size_calls[-1] == ("video", None, None)
    assert not applied or (consumer.max_width, consumer.max_height) == (None, None)
    # The boundaries are accepted.
    for width, height in ((1, 1), (16384, 16384)):
        assert (await http.post(url, json={"width": width, "height": height})).status == 204
    assert size_calls[-1] == ("video", 16384, 16384)


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"width": 0, "height": 360}', JSON, 400),
        (b'{"width": 640, "height": 16385}', JSON, 400),
        (b'{"width": -1, "height": 360}', JSON, 400),
        (b'{"width": 640.5, "height": 360}', JSON, 400),
        (b'{"width": "640", "height": 360}', JSON, 400),
        (b'{"width": true, "height": 360}', JSON, 400),
        (b'{"width": 640, "height": null}', JSON, 400),
        (b'{"width": 640}', JSON, 400),
        (b'{}', JSON, 400),
        (b'{"width": 640, "height": 360, "dpr": 2}', JSON, 400),
        (b'[640, 360]', JSON, 400),
        (b'width=640', JSON, 400),
        (b'\xff\xfe', JSON, 400),
        (b'{"width": 640, "height": 360}', {"Content-Type": "text/plain"}, 415),
        (b'{"width": 640, "height": 360}', {}, 415),
        (b'{"width": 640, "height": 360, "pad": "' + b"x" * 2000 + b'"}', JSON, 413),
    ],
)
async def test_malformed_hints_are_problems_and_change_nothing(
        http: aiohttp.ClientSession, watching: whip_client.WhipSession, size_calls: list[Any],
        body: bytes, headers: dict[str, str], status: int) -> None:
    resp = await http.post(watching.location + "/video-size", data=body, headers=headers)
    await problem(resp, status)
    if status == 415:
        assert resp.headers["Accept-Post"] == "application/json"
    assert size_calls == []


async def test_unknown_session_and_whip_sessions_are_404(
        service: Service, http: aiohttp.ClientSession, watching: whip_client.WhipSession) -> None:
    base = watching.location.rsplit("/", 1)[0]
    await problem(await http.post(base + "/" + "x" * 32 + "/video-size",
                                  json={"width": 640, "height": 360}), 404)
    # A WHIP (publisher) session has no size hint resource.
    whip = f"{service.url}/whip/demo/" + "x" * 32 + "/video-size"
    await problem(await http.post(whip, json={"width": 640, "height": 360}), 404)
    # Once the viewer's session ended, its hint resource is gone too.
    assert (await http.delete(watching.location)).status == 200
    await problem(await http.post(watching.location + "/video-size",
                                  json={"width": 640, "height": 360}), 404)


async def test_hints_share_the_patch_rate_limit(http: aiohttp.ClientSession) -> None:
    async with Service(make_config(request_rate=0.01, request_burst=2)) as svc:
        url = f"{svc.url}/whep/demo/" + "x" * 32 + "/video-size"
        for _ in range(2):
            await problem(await http.post(url, json={"width": 1, "height": 1}), 404)
        resp = await http.post(url, json={"width": 1, "height": 1})
        await problem(resp, 429)
        assert int(resp.headers["Retry-After"]) >= 1
        # The preflight is not limited, and names the body type.
        preflight = await http.options(url)
        assert preflight.status == 200 and preflight.headers["Accept-Post"] == "application/json"
