"""A stock hls.js (npm, default config + ``lowLatencyMode``) in headless Chromium against
the real service's LL-HLS, from the first request of a room's bridge.

An aiortc WHIP publisher (640x360 + tone) is live in room "demo"; the page's first
request starts the bridge.  hls.js must start without ``levelEmptyError`` (the origin
never hands out a playlist without a closed segment) and play near the live edge: the
latency it shows (now − ``EXT-X-PROGRAM-DATE-TIME`` of the frame on screen, sampled
every 250 ms, `loadtest.hlsjs_latency`) stays under a generous bound.  The benchmark
(``python -m loadtest hlsjs-latency``) measures the figure itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from loadtest import whip_client
from loadtest.hlsjs_latency import STOCK_CONFIG, measure_page, summarize
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.e2e.browser import BROWSER_MARKS, chromium, chromium_args
from tests.services import STREAM_KEY

pytest.importorskip("playwright.async_api")

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(120)]

SAMPLE_S = 10.0
MAX_P50_S = 2.0
"""Bound with slack for a loaded 2-core machine; ``python -m loadtest hlsjs-latency``
measures ~0.85 s p50 here (one 360p rung) when the player does not stall."""
STALL_INCREASE_S = 1.0
"""hls.js's default ``liveSyncOnStallIncrease``: seconds its target latency grows per stall."""
EMPTY_PLAYLIST_ERRORS = {"levelEmptyError", "levelParsingError", "manifestParsingError"}


@pytest.fixture
async def publisher(service: Any) -> AsyncIterator[Any]:
    """An aiortc WHIP publisher (640x360 pattern + tone) live in room "demo"."""
    pub = await whip_client.publish(
        f"{service.url}/whip/demo", STREAM_KEY,
        [PatternVideoTrack(640, 360, 30), ToneAudioTrack()],
    )
    try:
        await whip_client.wait_connected(pub.pc)
        yield pub
    finally:
        await pub.close()


async def test_stock_hlsjs_starts_without_empty_playlists_near_the_live_edge(
    service: Any, publisher: Any
) -> None:
    # The player and the publisher share this machine with the service (a viewer's browser
    # would not): the transcoder keeps the service's CPU priority here, so the test measures
    # hls.js and the origin, not who wins the CPU.
    service.hls.config = dataclasses.replace(service.hls.config, nice=0)
    async with chromium(chromium_args()) as browser:
        record = await measure_page(
            browser, service.url, "stock", SAMPLE_S, STOCK_CONFIG, start_timeout=40.0, room="demo"
        )
    summary = summarize(record)
    print(f"stock hls.js from a starting bridge: {summary}")
    errors = record["errors"]
    assert not [e for e in errors if e["details"] in EMPTY_PLAYLIST_ERRORS], errors
    assert not [e for e in errors if e["fatal"]], errors
    assert summary["playing_after_s"] is not None, "hls.js never started playing"
    assert summary["samples"] >= SAMPLE_S * 2, summary  # ~4 samples/s with a program date time
    # A stock hls.js raises its target latency by liveSyncOnStallIncrease (1 s) on each
    # stall and never catches up (maxLiveSyncPlaybackRate 1): a start-up stall (seen in
    # about a third of cold starts here) costs that second for good; without one the
    # player stays ~0.85 s behind.  The origin's part is the rest of the bound.
    stalls = summary["errors"].get("bufferStalledError", 0)
    assert summary["p50_s"] <= MAX_P50_S + STALL_INCREASE_S * stalls, summary
