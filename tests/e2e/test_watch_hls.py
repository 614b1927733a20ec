"""The watch page's LL-HLS fallback, in headless Chromium against the real service.

An aiortc WHIP publisher feeds room "demo"; the page plays it over WebRTC (WHEP) or
over LL-HLS (hls.js from /static/vendor/hls.min.js on /hls/demo/index.m3u8, served by
the embedded bridge):

1. without RTCPeerConnection (removed by an init script) the page falls back to
   hls.js by itself and plays, with a latency figure from the program date time;
2. a WHEP request that hangs past ?fallback_s, or fails, makes it fall back too,
   while "409 no publisher yet" does not (no stream means no LL-HLS either);
3. the manual switch goes WebRTC → LL-HLS → WebRTC, tearing the other path down
   (WHEP DELETE; hls.destroy()) and playing each time;
4. /static/vendor/hls.min.js is JavaScript from the npm install; when it is missing
   the route answers problem+json 404 and the page says LL-HLS is unavailable;
5. through a real nginx edge (loadtest/nginx_edge.py), two viewers play LL-HLS and
   the HLS objects come from the edge cache.

Screenshots land in /tmp/relaycast-shots/.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import signaling.app as signaling_app
from loadtest import whip_client
from loadtest.clips import make_counter_y4m, make_tone_wav
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.e2e.browser import (
    BROWSER_MARKS,
    PageErrors,
    chromium,
    chromium_args,
    enter_stream_key,
    screenshot,
    tid,
    wait_for_js,
)
from tests.polling import wait_for
from tests.services import STREAM_KEY

pytest.importorskip("playwright.async_api")
from playwright.async_api import expect  # noqa: E402

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(180)]

NO_WEBRTC = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"
# Chromium now plays HLS natively too; hide that to get a browser with neither engine.
NO_NATIVE_HLS = """
{
  const canPlayType = HTMLMediaElement.prototype.canPlayType;
  HTMLMediaElement.prototype.canPlayType = function (type) {
    return /mpegurl/i.test(type) ? "" : canPlayType.call(this, type);
  };
}
"""
NO_MSE = "delete window.MediaSource; delete window.ManagedMediaSource;"
PLAY_TIMEOUT_MS = 60_000  # first bridge playlist + hls.js start on a loaded 2-core machine
MAX_HLS_LATENCY_MS = 6_000  # LL-HLS measures ~0.7 s here; plain HLS would be 3+ segments
PART_RE = re.compile(r"/hls/demo/(?:[^/]+/)+part\d+\.\d+\.m4s")


class Requests:
    """Every request a page makes: (method, url)."""

    def __init__(self, page: Any) -> None:
        self.seen: list[tuple[str, str]] = []
        page.on("request", lambda r: self.seen.append((r.method, r.url)))

    def matching(self, pattern: str, method: str | None = None) -> list[str]:
        return [u for m, u in self.seen if re.search(pattern, u) and method in (None, m)]


async def new_page(
    browser: Any, url: str, *, init_scripts: tuple[str, ...] = (), expected_statuses=()
) -> tuple[Any, PageErrors, Requests]:
    """New context (1280x860) with ``init_scripts``, a page at ``url``."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    for script in init_scripts:
        await context.add_init_script(script)
    page = await context.new_page()
    page.set_default_timeout(30_000)
    errors = PageErrors(page, expected_statuses)
    requests = Requests(page)
    await page.goto(url)
    return page, errors, requests


async def wait_advancing(page: Any, seconds: float) -> None:
    """Wait until the page says "playing" and its video plays ``seconds`` more media."""
    await expect(tid(page, "state")).to_have_text("playing", timeout=PLAY_TIMEOUT_MS)
    t0 = await tid(page, "video").evaluate("v => v.currentTime")
    await wait_for_js(page,
        """([t0, s]) => {
             const v = document.querySelector('[data-testid=video]');
             return !v.paused && v.videoWidth > 0 && v.currentTime >= t0 + s;
           }""",
        arg=[t0, seconds],
        timeout=PLAY_TIMEOUT_MS,
    )


async def shown_latency_ms(page: Any) -> int:
    """The latency figure the page shows (data-latency-ms), once there is one."""
    latency = tid(page, "latency")
    await expect(latency).to_have_attribute("data-latency-ms", re.compile(r"^\d+$"))
    return int(await latency.get_attribute("data-latency-ms"))


async def check_hls_playing(page: Any, requests: Requests) -> int:
    """Assert the page plays LL-HLS with hls.js; returns the latency it shows (ms)."""
    path = tid(page, "path")
    await expect(path).to_have_attribute("data-path", "hls")
    await expect(path).to_have_text("LL-HLS (hls.js)")
    await wait_advancing(page, 2.0)
    assert await page.evaluate("window.relaycastWatch.engine") == "hls.js"
    assert await page.evaluate("document.querySelector('[data-testid=video]').srcObject") is None
    # Frames keep being decoded (counted since the element's source was set; a loaded
    # machine may need longer than the 2 s above to show 30 of them).
    await wait_for_js(page,
        "document.querySelector('[data-testid=video]').getVideoPlaybackQuality()"
        ".totalVideoFrames > 30", timeout=PLAY_TIMEOUT_MS)
    quality = await tid(page, "video").evaluate(
        "v => [v.videoWidth, v.videoHeight, v.getVideoPlaybackQuality().totalVideoFrames]"
    )
    assert quality[:2] == [640, 360] and quality[2] > 30, quality
    # Low-latency mode at work: parts and blocking playlist reloads (RFC 8216bis §6.2.5.2).
    assert requests.matching(r"/hls/demo/index\.m3u8$"), requests.seen
    assert requests.matching(PART_RE.pattern), "no LL-HLS part was requested"
    assert requests.matching(r"/hls/demo/(?:[^/]+/)+index\.m3u8\?.*_HLS_msn="), "no blocking reload"
    ms = await shown_latency_ms(page)
    await expect(tid(page, "latency-method")).to_contain_text("program date time")
    assert 0 < ms < MAX_HLS_LATENCY_MS, ms
    # Without a data channel the chat runs over the pages' Socket.IO connection.
    await expect(tid(page, "chat-input")).to_be_enabled()
    assert await page.evaluate("window.relaycastWatch.chat.transport.kind") == "socketio"
    return ms


@pytest.fixture
async def publisher(service) -> AsyncIterator[Any]:
    """An aiortc WHIP publisher (640x360 counter pattern + tone) live in room "demo"."""
    pub = await whip_client.publish(
        f"{service.url}/whip/demo",
        STREAM_KEY,
        [PatternVideoTrack(640, 360, 30, code="counter"), ToneAudioTrack()],
    )
    try:
        await whip_client.wait_connected(pub.pc)
        yield pub
    finally:
        await pub.close()


async def test_falls_back_to_hls_without_webrtc(service, publisher) -> None:
    async with chromium(chromium_args()) as browser:
        page, errors, requests = await new_page(
            browser, f"{service.url}/watch/demo", init_scripts=(NO_WEBRTC,)
        )
        await expect(tid(page, "path-reason")).to_contain_text("this browser has no WebRTC")
        ms = await check_hls_playing(page, requests)
        print(f"LL-HLS fallback: latency shown {ms} ms")
        await expect(tid(page, "path-webrtc")).to_be_disabled()
        await expect(tid(page, "path-hls")).to_have_attribute("aria-pressed", "true")
        assert requests.matching(r"/whep/") == []  # never tried: no RTCPeerConnection
        assert requests.matching(r"/static/vendor/hls\.min\.js$")
        await screenshot(page, "watch-hls-fallback")
        assert errors.errors == []

        # The publisher leaves: the page says so (ENDLIST, then 404s) and polls; a new
        # publisher plays again, still on LL-HLS.
        await publisher.close()
        await expect(tid(page, "state")).to_have_text("waiting", timeout=30_000)
        await expect(tid(page, "notice")).to_contain_text("Waiting for the broadcaster")
        again = await whip_client.publish(
            f"{service.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(640, 360, 30), ToneAudioTrack()]
        )
        try:
            await whip_client.wait_connected(again.pc)
            await wait_advancing(page, 2.0)
            await expect(tid(page, "path")).to_have_attribute("data-path", "hls")
            await expect(tid(page, "notice")).to_be_hidden()
        finally:
            await again.close()
        # 404s are expected now: the ended stream's tail and the polls while nobody publishes.
        assert [e for e in errors.errors if "status of 404 " not in e] == []


@pytest.mark.parametrize("failure", ["hangs", "503"])
async def test_falls_back_when_whep_does_not_connect(service, publisher, failure: str) -> None:
    async def whep(route: Any) -> None:
        if route.request.method != "POST":
            await route.continue_()
        elif failure == "503":
            body = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                    "detail": "no SFU node is available"}
            await route.fulfill(status=503, content_type="application/problem+json",
                                body=json.dumps(body))
        # "hangs": never answered (the page must give up by itself).

    async with chromium(chromium_args()) as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        await context.route(re.compile(r"/whep/demo$"), whep)
        page = await context.new_page()
        errors = PageErrors(page, expected_statuses=[503])
        requests = Requests(page)
        await page.goto(f"{service.url}/watch/demo?fallback_s=2")
        reason = (
            "auto fallback: WebRTC did not connect within 2 s"
            if failure == "hangs"
            else "auto fallback: WebRTC failed: Service Unavailable: no SFU node is available"
        )
        await expect(tid(page, "path-reason")).to_have_text(reason, timeout=20_000)
        await check_hls_playing(page, requests)
        assert requests.matching(r"/whep/demo$", "POST")
        assert errors.errors == []


async def test_no_fallback_while_nobody_publishes(service) -> None:
    svc = service
    async with chromium(chromium_args()) as browser:
        page, errors, requests = await new_page(
            browser, f"{svc.url}/watch/demo?fallback_s=4", expected_statuses=[409]
        )
        await expect(tid(page, "state")).to_have_text("waiting")
        # Retry-After: 3 -> three 409s take > 6 s, well past the 4 s fallback deadline.
        await wait_for(
            lambda: len(requests.matching(r"/whep/demo$", "POST")) >= 3, 30, "three WHEP POSTs"
        )
        await expect(tid(page, "state")).to_have_text("waiting")
        await expect(tid(page, "path")).to_have_attribute("data-path", "webrtc")
        assert requests.matching(r"/hls/|/static/vendor/") == []

        # The broadcaster arrives: the next poll plays it, still over WebRTC.
        pub = await whip_client.publish(
            f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(640, 360, 30), ToneAudioTrack()]
        )
        try:
            await whip_client.wait_connected(pub.pc)
            await wait_advancing(page, 1.0)
            await expect(tid(page, "path")).to_have_attribute("data-path", "webrtc")
            assert requests.matching(r"/hls/") == []
        finally:
            await pub.close()
        assert errors.errors == []


async def test_manual_switch_webrtc_hls_webrtc(service, publisher) -> None:
    svc = service
    router = svc.worker.routers["demo"]
    async with chromium(chromium_args()) as browser:
        page, errors, requests = await new_page(browser, f"{svc.url}/watch/demo")
        path = tid(page, "path")

        # 1. WebRTC (the default), with its latency estimate.
        await expect(path).to_have_attribute("data-path", "webrtc")
        await expect(path).to_have_text("WebRTC")
        await wait_advancing(page, 1.0)
        await expect(tid(page, "chat-input")).to_be_enabled()
        assert await page.evaluate("window.relaycastWatch.chat.transport.kind") == "datachannel"
        webrtc_ms = await shown_latency_ms(page)
        await expect(tid(page, "latency-method")).to_contain_text("jitter buffer")
        assert 0 <= webrtc_ms < 2_000, webrtc_ms
        assert len(router.viewers) == 1
        await screenshot(page, "watch-webrtc")

        # 2. LL-HLS: the WHEP session is DELETEd and the SFU lets the viewer go.
        async with page.expect_response(
            lambda r: r.request.method == "DELETE" and "/whep/demo/" in r.url
        ) as deleted:
            await tid(page, "path-hls").click()
        assert (await deleted.value).status == 200
        await wait_for(lambda: not router.viewers, 10, "the SFU to drop the WHEP viewer")
        assert "path=hls" in page.url  # a reload keeps the choice
        hls_ms = await check_hls_playing(page, requests)
        await expect(tid(page, "path-hls")).to_have_attribute("aria-pressed", "true")
        await expect(tid(page, "path-reason")).to_have_text("")  # a choice, not a fallback
        print(f"latency shown: WebRTC {webrtc_ms} ms, LL-HLS {hls_ms} ms")
        await screenshot(page, "watch-hls-manual")

        # 3. Back to WebRTC: hls.js destroyed (no more HLS requests), a new WHEP session.
        await tid(page, "path-webrtc").click()
        await expect(path).to_have_attribute("data-path", "webrtc")
        await wait_advancing(page, 1.0)
        state = await page.evaluate(
            """() => { const v = document.querySelector('[data-testid=video]');
                       return {hls: window.relaycastWatch.hls, src: v.getAttribute('src'),
                               stream: v.srcObject instanceof MediaStream}; }"""
        )
        assert state == {"hls": None, "src": None, "stream": True}, state
        assert len(router.viewers) == 1
        assert len(requests.matching(r"/whep/demo$", "POST")) == 2
        await expect(tid(page, "chat-input")).to_be_enabled()
        await expect(tid(page, "latency-method")).to_contain_text("jitter buffer")
        hls_requests = len(requests.matching(r"/hls/"))
        await wait_advancing(page, 1.0)
        assert len(requests.matching(r"/hls/")) == hls_requests
        assert errors.errors == []


async def test_native_hls_when_hls_js_is_not_supported(service, publisher) -> None:
    """No Media Source Extensions (so Hls.isSupported() is false): the video element's
    own HLS player, where the browser has one (Chromium does since 2025)."""
    async with chromium(chromium_args()) as browser:
        page, errors, requests = await new_page(
            browser, f"{service.url}/watch/demo", init_scripts=(NO_WEBRTC, NO_MSE)
        )
        native = await tid(page, "video").evaluate(
            "v => v.canPlayType('application/vnd.apple.mpegurl')"
        )
        if not native:
            pytest.skip("this Chromium has no native HLS player")
        await expect(tid(page, "path")).to_have_text("LL-HLS (native)")
        await wait_advancing(page, 2.0)
        assert await page.evaluate("window.relaycastWatch.engine") == "native"
        assert await page.evaluate("window.relaycastWatch.hls") is None
        assert requests.matching(r"/hls/demo/index\.m3u8$")
        # Chromium's native player has no getStartDate() and no seekable range.
        await expect(tid(page, "latency")).to_have_text(re.compile(r"^(≈ .+|unknown)$"))
        await expect(tid(page, "chat-input")).to_be_enabled()  # over Socket.IO
        assert errors.errors == []


async def test_hls_js_is_served_locally(service, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{service.url}/static/vendor/hls.min.js") as resp:
        body = await resp.text()
        assert resp.status == 200
        assert resp.content_type in ("text/javascript", "application/javascript")
    assert len(body) > 100_000 and ".Hls=" in body  # the UMD build defines window.Hls
    for name in ("nothing.js", "..%2Fpackage.json"):
        async with http.get(f"{service.url}/static/vendor/{name}") as resp:
            assert resp.status == 404
            assert resp.content_type == "application/problem+json"
    async with http.get(f"{service.url}/static/js/hls-player.js") as resp:
        assert resp.status == 200  # the rest of /static/ is unaffected


async def test_page_says_hls_is_unavailable_without_hls_js(
    service, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(signaling_app.VENDOR_FILES, "hls.min.js", tmp_path / "not-installed.js")
    async with http.get(f"{service.url}/static/vendor/hls.min.js") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert "npm ci --prefix web" in (await resp.json())["detail"]
    async with chromium(chromium_args()) as browser:
        page, errors, _ = await new_page(
            browser,
            f"{service.url}/watch/demo",
            init_scripts=(NO_WEBRTC, NO_NATIVE_HLS),
            expected_statuses=[404],
        )
        await expect(tid(page, "state")).to_have_text("error: LL-HLS unavailable")
        await expect(tid(page, "notice")).to_have_text(
            "The LL-HLS fallback is unavailable: the HLS player (hls.js) is not installed "
            "on this server."
        )
        await expect(tid(page, "path-hls")).to_be_disabled()
        await expect(tid(page, "path-webrtc")).to_be_disabled()
        await screenshot(page, "watch-hls-unavailable")
        assert errors.errors == []


async def test_hls_through_nginx_edge(service, publisher, tmp_path: Path) -> None:
    nginx_edge = pytest.importorskip("loadtest.nginx_edge")
    if nginx_edge.find_nginx() is None:
        pytest.skip("nginx is not installed")
    async with nginx_edge.NginxEdge(service.url, tmp_path / "edge") as edge:
        started = time.time()
        cache_status: dict[str, list[str]] = {}
        async with chromium(chromium_args()) as browser:
            pages = []
            for _ in range(2):  # two viewers: the second one's objects come from the cache
                page, errors, requests = await new_page(browser, f"{edge.url}/watch/demo?path=hls")
                page.on(
                    "response",
                    lambda r: cache_status.setdefault(r.url, []).append(
                        r.headers.get("x-cache-status", "")
                    ),
                )
                pages.append((page, errors, requests))
            for page, errors, requests in pages:
                await check_hls_playing(page, requests)
                http_urls = [u for _, u in requests.seen if u.startswith("http")]
                assert all(u.startswith(edge.url) for u in http_urls), http_urls
                assert errors.errors == []
            await screenshot(pages[0][0], "watch-hls-edge")
        edge_parts = {u: s for u, s in cache_status.items() if PART_RE.search(u)}
        assert edge_parts and all(s and s[0] for s in edge_parts.values()), edge_parts
    # Every HLS request went through the cache (cache status set), and some objects
    # were fetched by both viewers yet reached the origin once.
    hls = [e for e in nginx_edge.parse_access_log(edge.access_log, since=started)
           if e.uri.startswith("/hls/demo/")]
    assert hls and all(e.cache_status != "-" for e in hls), hls[:5]
    by_uri: dict[str, list[Any]] = {}
    for entry in hls:
        if entry.status == 200:
            by_uri.setdefault(entry.uri, []).append(entry)
    shared = [u for u, es in by_uri.items()
              if len(es) >= 2 and sum(e.reached_origin for e in es) == 1]
    assert any(PART_RE.search(u) or u.endswith("init.mp4") for u in shared), sorted(by_uri)[:20]
    print(f"edge: {len(hls)} HLS requests, {len(shared)} objects shared by both viewers "
          f"with one origin fetch, {sum(e.cache_status == 'HIT' for e in hls)} HITs")


async def test_broadcast_page_watched_by_hls_js_through_nginx(service, tmp_path: Path) -> None:
    """The issue's end-to-end: a room live from the broadcast page (Chromium, fake camera
    and microphone, WHIP through the edge) watched with hls.js through the nginx edge."""
    nginx_edge = pytest.importorskip("loadtest.nginx_edge")
    if nginx_edge.find_nginx() is None:
        pytest.skip("nginx is not installed")
    video = make_counter_y4m(tmp_path / "counter.y4m", 640, 360, fps=30, frames=60)
    audio = make_tone_wav(tmp_path / "tone.wav", seconds=2, frequency=440)
    async with nginx_edge.NginxEdge(service.url, tmp_path / "edge") as edge:
        async with chromium(chromium_args(video, audio)) as browser:
            studio, studio_errors, _ = await new_page(browser, f"{edge.url}/broadcast/demo")
            await enter_stream_key(studio, STREAM_KEY)
            await wait_for_js(studio,
                "document.querySelector('[data-testid=preview]').videoWidth > 0")
            await tid(studio, "resolution").select_option("360p")
            await tid(studio, "go-live").click()
            await expect(tid(studio, "state")).to_have_text("live", timeout=PLAY_TIMEOUT_MS)

            page, errors, requests = await new_page(browser, f"{edge.url}/watch/demo?path=hls")
            ms = await check_hls_playing(page, requests)
            http_urls = [u for _, u in requests.seen if u.startswith("http")]
            assert all(u.startswith(edge.url) for u in http_urls), http_urls
            # Let hls.js settle on its target latency, then read the figure again.
            await wait_advancing(page, 4.0)
            settled = await shown_latency_ms(page)
            print(f"broadcast page -> nginx -> hls.js: latency shown {ms} ms, "
                  f"after 4 s more {settled} ms")
            assert settled < MAX_HLS_LATENCY_MS, settled
            await screenshot(page, "watch-hls-from-broadcast-page")
            assert errors.errors == [] and studio_errors.errors == []
