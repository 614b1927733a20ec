"""hls.js in headless Chromium plays across a ladder re-plan: a stream whose source goes
from 320x180 to 640x360 mid-stream, transcoded by the real LadderTranscoder, keeps
playing on rendition v0 through its EXT-X-DISCONTINUITY and new EXT-X-MAP, and the
picture grows to 640x360.

The media are served straight from the `RoomStore` (each init segment by its
``?v=`` version, as `RenditionStore.init_segment` keeps them) by a small aiohttp app
on 127.0.0.1, next to npm hls.js; the stream has ended, so hls.js plays it from its
first segment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hls_bridge.encoders import choose_encoder
from hls_bridge.ladder import Rung
from hls_bridge.store import RoomStore
from hls_bridge.transcoder import LadderTranscoder
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.e2e.browser import (
    BROWSER_MARKS,
    PageErrors,
    chromium,
    chromium_args,
    wait_for_js,
)

pytest.importorskip("playwright.async_api")

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(120)]

HLS_JS = Path(__file__).parents[2] / "web" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
FPS = 30

PAGE = """<!doctype html><html><body>
<script>const LEVEL = Number(new URLSearchParams(location.search).get("level"));</script>
<video id="v" muted playsinline></video>
<script src="/hls.min.js"></script>
<script>
  window.sizes = []; window.fatal = [];
  const video = document.getElementById("v");
  const hls = new Hls({ lowLatencyMode: true, startLevel: LEVEL, capLevelToPlayerSize: false, debug: Boolean(window.HLS_DEBUG) });
  hls.on(Hls.Events.ERROR, (_, data) => { console.log("hlserr " + data.details + " " + data.fatal + " " + (data.reason || "") + " " + (data.error && data.error.message)); if (data.fatal) window.fatal.push(data.details); });
  hls.on(Hls.Events.MANIFEST_PARSED, () => { hls.currentLevel = LEVEL; video.play(); });
  video.requestVideoFrameCallback(function frame(_, meta) {
    const last = window.sizes[window.sizes.length - 1];
    if (!last || last[0] !== meta.width) {
      window.sizes.push([meta.width, meta.height, video.currentTime]);
    }
    video.requestVideoFrameCallback(frame);
  });
  hls.loadSource("/hls/index.m3u8");
  hls.attachMedia(video);
</script></body></html>"""


def transcoded_room() -> RoomStore:
    """3 s at 320x180 then 5 s at 640x360 (+ a tone), a 360p/240p ladder, ended: v0
    (hls.js level 1, the higher bitrate) changes size at segment 5."""
    room = RoomStore(stream_id="s1")
    transcoder = LadderTranscoder(
        room, [Rung("360p", 360, 600_000), Rung("240p", 240, 300_000)], fps=FPS,
        encoder_choice=choose_encoder(["libx264"]), parallel_rungs=False,
    )
    small, large = (
        PatternVideoTrack(w, h, FPS, code="counter") for w, h in ((320, 180), (640, 360))
    )
    tone = ToneAudioTrack(channels=2)
    items: list[tuple[Fraction, int, av.Frame]] = []
    for i in range(8 * FPS):
        frame = (small if i < 3 * FPS else large).make_frame(i, i)
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90_000)
        items.append((Fraction(i, FPS), 0, frame))
    for i in range(8 * 50):
        items.append((Fraction(i, 50), 1, tone.make_frame(i * 960)))
    try:
        for _, _, frame in sorted(items, key=lambda item: item[:2]):
            transcoder.feed(frame)
        transcoder.end()
    finally:
        transcoder.close()
    assert transcoder.stats.replans == 1
    return room


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    room = transcoded_room()

    async def media(request: web.Request) -> web.Response:
        name, rendition = request.match_info["name"], request.match_info["rendition"]
        store = room.renditions[rendition]
        if name == "index.m3u8":
            return web.Response(text=room.render_media(rendition),
                                content_type="application/vnd.apple.mpegurl")
        if name == "init.mp4":
            data = store.init_segment(int(request.query.get("v", "0")))
        elif name.startswith("seg"):
            data = store.segment(int(name[3:-4]))
        else:
            msn, part = name[4:-4].split(".")
            data = store.part(int(msn), int(part))
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="video/mp4")

    app = web.Application()
    app.router.add_get("/", lambda _: web.Response(text=PAGE, content_type="text/html"))
    app.router.add_get("/hls.min.js", lambda _: web.FileResponse(HLS_JS))
    app.router.add_get("/hls/index.m3u8", lambda _: web.Response(
        text=room.multivariant, content_type="application/vnd.apple.mpegurl"))
    app.router.add_get("/hls/s1/{rendition}/{name}", media)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def play(server: TestServer, level: int, until_s: float) -> list[list[float]]:
    """Play hls.js level ``level`` until ``until_s``; the picture sizes it showed
    (``[width, height, currentTime]`` at each change).  Asserts no fatal error, no page
    error and no dropped playback (decoded frames for the whole time)."""
    async with chromium(chromium_args()) as browser:
        page = await browser.new_page()
        errors = PageErrors(page)
        await page.goto(str(server.make_url(f"/?level={level}")))
        await wait_for_js(
            page, f"window.fatal.length > 0 || document.getElementById('v').currentTime > {until_s}",
            timeout=60_000,
        )
        assert await page.evaluate("window.fatal") == []
        frames = await page.evaluate(
            "document.getElementById('v').getVideoPlaybackQuality().totalVideoFrames")
        assert frames > until_s * FPS * 0.8
        assert errors.errors == []
        return await page.evaluate("window.sizes")


async def test_hls_js_plays_through_a_resolution_change(server: TestServer) -> None:
    """Level 1 (v0) from its first segment: 320x180, then 640x360 from 5 s."""
    if not HLS_JS.is_file():
        pytest.skip("hls.js is not installed (npm ci --prefix web)")
    sizes = await play(server, 1, 6.5)
    assert [tuple(s[:2]) for s in sizes] == [(320, 180), (640, 360)], sizes
    assert 4.5 < sizes[1][2] < 5.5, sizes  # the new size from the discontinuity at 5 s


async def test_hls_js_plays_a_rendition_added_by_the_re_plan(server: TestServer) -> None:
    """Level 0 (v1, added at segment 5 with Discontinuity Sequence Number 1) plays with
    its audio: the audio rendition took its discontinuity at the same segment, so
    hls.js finds the video timestamps of the audio's Discontinuity Sequence."""
    if not HLS_JS.is_file():
        pytest.skip("hls.js is not installed (npm ci --prefix web)")
    sizes = await play(server, 0, 1.5)
    assert [tuple(s[:2]) for s in sizes] == [(426, 240)], sizes
