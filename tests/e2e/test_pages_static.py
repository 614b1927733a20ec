"""Browser smoke tests for the static pages in web/static.

The real signaling server is not needed: a tiny aiohttp app on 127.0.0.1 serves
the pages with the real service's response headers (Content Security Policy
included, :mod:`signaling.security_headers`) and stubs the few JSON/WHIP/WHEP
endpoints they call. The pages are
driven with Debian's headless Chromium through Playwright (never
``playwright install``). Screenshots land in /tmp/relaycast-shots/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("playwright.async_api")
from aiohttp import web  # noqa: E402
from playwright.async_api import async_playwright, expect  # noqa: E402

from signaling.app import vendor_file  # noqa: E402
from signaling.security_headers import PAGE_CSP, harden_response  # noqa: E402
from tests.e2e.browser import (  # noqa: E402
    BASE_ARGS,
    BROWSER_MARKS,
    CHROMIUM,
    SHOTS_DIR,
    enter_stream_key,
    wait_for_js,
)
from tests.e2e.browser import open_page as _open_page  # noqa: E402
from tests.polling import wait_for  # noqa: E402

STATIC_DIR = Path(__file__).resolve().parents[2] / "web" / "static"
LAUNCH_ARGS = list(BASE_ARGS)
ROOMS = [
    {"room": "demo", "live": True, "viewers": 3},
    {"room": "quiet <room>", "live": False, "viewers": 0},
]

pytestmark = BROWSER_MARKS


def _problem(status: int, title: str, detail: str, **headers: str) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


async def record(request: web.Request, key: str) -> str:
    """Remember a WHIP/WHEP POST in app[key]; returns its body (the SDP offer)."""
    body = await request.text()
    request.app[key].append(
        {
            "room": request.match_info["room"],
            "content_type": request.headers.get("Content-Type"),
            "authorization": request.headers.get("Authorization"),
            "body": body,
        }
    )
    return body


async def whep_not_live(request: web.Request) -> web.Response:
    await record(request, "whep_posts")
    return _problem(409, "Not live", "room is not live", **{"Retry-After": "1"})


async def whip_unauthorized(request: web.Request) -> web.Response:
    await record(request, "whip_posts")
    return _problem(401, "Unauthorized", "bad stream key")


def make_app(whip=whip_unauthorized, whep=whep_not_live) -> web.Application:
    app = web.Application()
    app.on_response_prepare.append(harden_response)  # CSP etc., as the real service
    app["whep_posts"] = []
    app["whip_posts"] = []

    def page(name: str):
        async def handler(_request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC_DIR / name)

        return handler

    async def ice_servers(_request: web.Request) -> web.Response:
        return web.json_response({"iceServers": []})

    async def rooms(_request: web.Request) -> web.Response:
        return web.json_response({"rooms": ROOMS})

    app.router.add_get("/", page("index.html"))
    app.router.add_get("/broadcast/{room}", page("broadcast.html"))
    app.router.add_get("/watch/{room}", page("watch.html"))
    app.router.add_get("/api/ice-servers", ice_servers)
    app.router.add_get("/api/rooms", rooms)
    app.router.add_post("/whep/{room}", whep)
    app.router.add_post("/whip/{room}", whip)
    app.router.add_get("/static/vendor/{name}", vendor_file)  # hls.js, as the real service
    app.router.add_static("/static/", STATIC_DIR)
    return app


async def start(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def server():
    app = make_app()
    runner, base = await start(app)
    yield app, base
    await runner.cleanup()


@pytest.fixture
async def browser():
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        yield b
        await b.close()


async def open_page(browser, url: str, expected_statuses=()):
    return await _open_page(browser, url, expected_statuses, timeout_ms=15_000)


async def screenshot(page, name: str) -> None:
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS_DIR / f"{name}.png"), full_page=True)


def tid(page, testid: str):
    return page.locator(f'[data-testid="{testid}"]')


async def test_index_lists_rooms(server, browser):
    _app, base = server
    page, errors = await open_page(browser, base + "/")
    rows = page.locator('[data-testid="room"]')
    await expect(rows).to_have_count(2)
    demo = page.locator('[data-room="demo"]')
    await expect(demo).to_contain_text("LIVE")
    await expect(demo).to_contain_text("3 watching")
    await expect(demo.locator('[data-testid="watch-link"]')).to_have_attribute(
        "href", "/watch/demo"
    )
    await expect(demo.locator('[data-testid="broadcast-link"]')).to_have_attribute(
        "href", "/broadcast/demo"
    )
    quiet = page.locator('[data-room="quiet <room>"]')
    await expect(quiet.locator("strong")).to_have_text("quiet <room>")  # textContent, not HTML
    await expect(quiet.locator('[data-testid="watch-link"]')).to_have_attribute(
        "href", "/watch/quiet%20%3Croom%3E"
    )
    await screenshot(page, "index")
    assert errors.errors == []


async def test_broadcast_populates_devices_and_previews(server, browser):
    _app, base = server
    page, errors = await open_page(browser, base + "/broadcast/demo%20room")
    await expect(tid(page, "room")).to_have_text("demo room")
    # Pickers are filled from enumerateDevices() after the first getUserMedia grant.
    await expect(tid(page, "camera").locator("option")).not_to_have_count(0)
    await expect(tid(page, "microphone").locator("option")).not_to_have_count(0)
    # Autoplay starts the muted preview some time after its first frame: wait for it.
    await wait_for_js(
        page,
        "(v => v.videoWidth > 0 && v.muted && !v.paused)"
        "(document.querySelector('[data-testid=preview]'))",
        timeout=15_000,
    )
    await expect(tid(page, "resolution")).to_have_value("720p")
    await expect(tid(page, "state")).to_have_text("idle")
    await expect(tid(page, "stream-key")).to_have_value("")
    await expect(tid(page, "stream-key")).to_have_attribute("type", "password")
    await enter_stream_key(page, "s3cret")
    stored = await page.evaluate("sessionStorage.getItem('relaycast:stream-key:demo room')")
    assert stored == "s3cret"
    await expect(tid(page, "go-live")).to_be_enabled()
    await expect(tid(page, "stop")).to_be_disabled()
    await expect(tid(page, "chat-input")).to_be_disabled()
    await screenshot(page, "broadcast")

    # Resolution picker re-constrains the camera; microphone picker swaps the track.
    await tid(page, "resolution").select_option("360p")
    await wait_for_js(
        page,
        "document.querySelector('[data-testid=preview]').videoHeight === 360"
    )
    mic_ids = (
        await tid(page, "microphone").locator("option").evaluate_all("os => os.map(o => o.value)")
    )
    await tid(page, "microphone").select_option(mic_ids[-1])
    await wait_for_js(
        page,
        "id => document.querySelector('[data-testid=preview]').srcObject"
        "?.getAudioTracks()[0]?.getSettings().deviceId === id",
        arg=mic_ids[-1],
    )
    assert errors.errors == []


async def test_broadcast_go_live_shows_problem_details(server, browser):
    app, base = server
    page, errors = await open_page(browser, base + "/broadcast/demo", expected_statuses=[401])
    await wait_for_js(page, "document.querySelector('[data-testid=preview]').videoWidth > 0")
    await enter_stream_key(page, "wrong")
    await tid(page, "go-live").click()
    await expect(tid(page, "state")).to_have_text("error: Unauthorized: bad stream key")
    await expect(tid(page, "go-live")).to_be_enabled()
    [post] = app["whip_posts"]
    assert post["room"] == "demo"
    assert post["content_type"] == "application/sdp"
    assert post["authorization"] == "Bearer wrong"
    sdp = post["body"]
    assert sdp.startswith("v=0")
    for section in ("m=audio", "m=video", "m=application"):
        assert section in sdp, section
    assert "a=sendonly" in sdp
    assert "a=candidate" in sdp  # non-trickle: candidates are in the offer
    await screenshot(page, "broadcast-error")
    assert errors.errors == []


async def test_watch_waits_and_retries_when_not_live(server, browser):
    app, base = server
    page, errors = await open_page(browser, base + "/watch/demo", expected_statuses=[409])
    await expect(tid(page, "room")).to_have_text("demo")
    await expect(tid(page, "state")).to_have_text("waiting")
    await expect(tid(page, "notice")).to_have_text("Waiting for the broadcaster…")
    # Retry-After: 1 -> a second and third POST within a few seconds.
    await wait_for(lambda: len(app["whep_posts"]) >= 3, 8, "3 WHEP offers", interval_s=0.1)
    await expect(tid(page, "state")).to_have_text("waiting")
    post = app["whep_posts"][0]
    assert post["content_type"] == "application/sdp"
    assert post["authorization"] is None
    sdp = post["body"]
    for section in ("m=video", "m=audio", "m=application"):
        assert section in sdp, section
    assert "a=recvonly" in sdp
    await expect(tid(page, "unmute")).to_be_visible()
    assert await tid(page, "video").evaluate("v => v.muted && v.controls && v.autoplay")
    await screenshot(page, "watch-waiting")
    assert errors.errors == []


async def test_watch_sends_token_as_bearer(server, browser):
    app, base = server
    page, errors = await open_page(browser, base + "/watch/demo?token=t0k", expected_statuses=[409])
    await expect(tid(page, "state")).to_have_text("waiting")
    assert app["whep_posts"][0]["authorization"] == "Bearer t0k"
    assert errors.errors == []


async def test_broadcast_never_takes_the_stream_key_from_the_url(server, browser):
    """A key in the URL would sit in the history and proxies' logs: the page ignores
    ``?key=``; a typed key is kept in sessionStorage and comes back on reload."""
    _app, base = server
    page, errors = await open_page(browser, base + "/broadcast/demo?key=s3cret")
    await expect(tid(page, "room")).to_have_text("demo")
    await expect(tid(page, "stream-key")).to_have_value("")
    assert await page.evaluate("sessionStorage.getItem('relaycast:stream-key:demo')") is None
    await enter_stream_key(page, "typed-key")
    await page.goto(base + "/broadcast/demo")
    await expect(tid(page, "stream-key")).to_have_value("typed-key")
    assert errors.errors == []


HLS_UNDER_CSP = """
async () => {
  const { hlsSupport } = await import('/static/js/hls-player.js');
  const video = document.querySelector('[data-testid=video]');
  const support = await hlsSupport(video);
  if (support.engine !== 'hls.js') return support.engine;
  const hls = new support.Hls();
  await new Promise((resolve) => {
    hls.on(support.Hls.Events.MEDIA_ATTACHED, resolve);
    hls.attachMedia(video);
  });
  return video.src.split(':')[0];  // Media Source Extensions: a blob: URL
}
"""


async def test_pages_work_under_the_content_security_policy(server, browser):
    """Every page is served with the CSP and runs without a violation: scripts and styles
    from /static, hls.js from /static/vendor attached through a blob: MediaSource; an
    injected inline script is refused."""
    _app, base = server
    for path, statuses in (("/", []), ("/broadcast/demo", []), ("/watch/demo", [409])):
        page, errors = await open_page(browser, base + path, expected_statuses=statuses)
        await expect(tid(page, "state").or_(tid(page, "rooms"))).not_to_have_count(0)
        csp = await page.evaluate(
            "fetch(location.href).then(r => r.headers.get('content-security-policy'))"
        )
        assert csp == PAGE_CSP, path
        assert errors.errors == [], (path, errors.errors)
    await expect(tid(page, "state")).to_have_text("waiting")
    assert await page.evaluate(HLS_UNDER_CSP) == "blob"
    assert errors.errors == []
    await page.evaluate(
        "document.head.append(Object.assign(document.createElement('script'),"
        " {textContent: 'window.inlineRan = true'}))"
    )
    await wait_for(lambda: errors.errors, 15, "a page error", interval_s=0.1)
    assert await page.evaluate("window.inlineRan === undefined")
    assert all("script-src" in e for e in errors.errors), errors.errors


CHAT_HARNESS = """
async () => {
  const { attachChat } = await import('/static/js/chat.js');
  const box = document.createElement('div');
  box.id = 'chat-under-test';
  document.body.append(box);
  // A stand-in for RTCDataChannel: an EventTarget with readyState and send().
  const dc = new EventTarget();
  dc.readyState = 'connecting';
  dc.sent = [];
  dc.send = (t) => dc.sent.push(JSON.parse(t));
  window.__dc = dc;
  window.__presence = [];
  attachChat(dc, box, { onPresence: (p) => window.__presence.push(p) });
  window.__push = (m) => dc.dispatchEvent(new MessageEvent('message', { data: JSON.stringify(m) }));
  return true;
}
"""


async def test_chat_component(server, browser):
    _app, base = server
    page, errors = await open_page(browser, base + "/")
    await page.evaluate(CHAT_HARNESS)
    box = page.locator("#chat-under-test")
    inp, send, log = (
        box.locator(f'[data-testid="{t}"]') for t in ("chat-input", "chat-send", "chat-log")
    )
    await expect(inp).to_be_disabled()
    await page.evaluate("__dc.readyState = 'open'; __dc.dispatchEvent(new Event('open'))")
    await expect(inp).to_be_enabled()
    await expect(send).to_be_enabled()

    ts = 1_700_000_000_000
    frm = {"id": "p1", "name": "Host", "role": "publisher"}
    viewer = {"id": "v9", "name": "viewer-9", "role": "viewer"}
    await page.evaluate(
        "m => __push(m)",
        {"type": "welcome", "participant": viewer, "room": "demo", "viewers": 4, "live": True},
    )
    await expect(box.locator('[data-testid="chat-me"]')).to_have_text("You are viewer-9")
    history = [
        {"type": "chat", "seq": 1, "id": "a", "ts": ts, "from": frm, "text": "first"},
        {
            "type": "chat",
            "seq": 3,
            "id": "c",
            "ts": ts,
            "from": viewer,
            "text": "<img src=x onerror=alert(1)>",
        },
    ]
    await page.evaluate("m => __push(m)", {"type": "history", "messages": history})
    # Out of order and duplicated: must end up sorted by seq, once each.
    await page.evaluate(
        "m => __push(m)",
        {"type": "chat", "seq": 2, "id": "b", "ts": ts, "from": frm, "text": "second"},
    )
    await page.evaluate("m => __push(m)", history[0])
    items = log.locator("[data-seq]")
    await expect(items).to_have_count(3)
    assert await items.evaluate_all("els => els.map(e => e.dataset.seq)") == ["1", "2", "3"]
    await expect(items.nth(2)).to_contain_text("<img src=x onerror=alert(1)>")
    assert await log.locator("img").count() == 0
    await expect(items.nth(0).locator("b")).to_have_text("Host")
    await expect(items.nth(0)).to_contain_text("broadcaster")
    assert re.search(r"\d\d:\d\d:\d\d", await items.nth(0).inner_text())

    await page.evaluate("m => __push(m)", {"type": "presence", "viewers": 7, "live": False})
    assert await page.evaluate("__presence") == [
        {"viewers": 4, "live": True},
        {"viewers": 7, "live": False},
    ]

    await inp.fill("   ")
    await inp.press("Enter")
    await inp.fill("  hello there  ")
    await inp.press("Enter")
    await send.click()  # input was cleared: nothing more to send
    assert await page.evaluate("__dc.sent") == [{"type": "chat", "text": "hello there"}]
    await expect(inp).to_have_value("")

    await page.evaluate(
        "m => __push(m)", {"type": "error", "code": "rate_limited", "detail": "slow down"}
    )
    await expect(box.locator('[data-testid="chat-error"]')).to_have_text("slow down")
    await page.evaluate("__dc.readyState = 'closed'; __dc.dispatchEvent(new Event('close'))")
    await expect(inp).to_be_disabled()
    await screenshot(page, "chat-component")
    assert errors.errors == []


# ---------------------------------------------------------------------------
# Loopback WHIP/WHEP: a minimal aiortc peer stands in for the SFU so the pages'
# publish / play / chat / reconnect paths run end to end. Everything stays on
# 127.0.0.1: aioice is limited to loopback, non-loopback candidates are removed
# from the browser's offer, and aiortc gets no (default Google) STUN server.
# ---------------------------------------------------------------------------


def _loopback_only(sdp: str) -> str:
    keep = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and (
            " 127.0.0.1 " not in line or " udp " not in line.lower()
        ):
            continue
        keep.append(line)
    return "\r\n".join(keep) + "\r\n"


def make_live_app() -> web.Application:
    aiortc = pytest.importorskip("aiortc")
    from aiortc.contrib.media import MediaBlackhole
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    async def whip(request):
        return await answer(request, "whip")

    async def whep(request):
        return await answer(request, "whep")

    app = make_app(whip=whip, whep=whep)
    app["sessions"] = {}  # sid -> {"kind", "pc", "channel"}
    app["deletes"] = []
    app["chat_log"] = []
    app["drop"] = lambda sid: drop(sid)
    app["live"] = True
    app["broadcast"] = lambda msg: broadcast(msg)

    def chat_channels():
        return [s["channel"] for s in app["sessions"].values() if s.get("channel")]

    def viewers() -> int:
        return sum(1 for s in app["sessions"].values() if s["kind"] == "whep")

    def live() -> bool:
        return app["live"]  # the stub itself is the "broadcaster" for WHEP

    def broadcast(msg: dict) -> None:
        for ch in chat_channels():
            if ch.readyState == "open":
                ch.send(json.dumps(msg))

    async def answer(request: web.Request, kind: str) -> web.Response:
        room = request.match_info["room"]
        offer = await record(request, f"{kind}_posts")
        pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        sid = f"{kind}{len(app[f'{kind}_posts'])}"
        session = {"kind": kind, "pc": pc, "channel": None, "sink": MediaBlackhole()}
        role = "publisher" if kind == "whip" else "viewer"
        me = {"id": sid, "name": f"{role}-{sid}", "role": role}

        @pc.on("track")
        def on_track(track):
            session["sink"].addTrack(track)

        @pc.on("datachannel")
        def on_datachannel(ch):
            session["channel"] = ch
            welcome = {
                "type": "welcome",
                "participant": me,
                "room": room,
                "viewers": viewers(),
                "live": live(),
            }
            ch.send(json.dumps(welcome))
            ch.send(json.dumps({"type": "history", "messages": app["chat_log"][-50:]}))
            broadcast({"type": "presence", "viewers": viewers(), "live": live()})

            @ch.on("message")
            def on_message(raw):
                msg = json.loads(raw)
                seq = len(app["chat_log"]) + 1
                chat = {
                    "type": "chat",
                    "seq": seq,
                    "id": f"m{seq}",
                    "ts": 1_700_000_000_000,
                    "from": me,
                    "text": msg["text"],
                }
                app["chat_log"].append(chat)
                broadcast(chat)

        await pc.setRemoteDescription(aiortc.RTCSessionDescription(_loopback_only(offer), "offer"))
        if kind == "whep":
            pc.addTrack(VideoStreamTrack())
            pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createAnswer())
        await session["sink"].start()
        app["sessions"][sid] = session
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/{kind}/{room}/sessions/{sid}"},
        )

    async def drop(sid: str) -> bool:
        """End a session server-side (also what the tests use to simulate a kick)."""
        session = app["sessions"].pop(sid, None)
        if session is None:
            return False
        await session["pc"].close()
        await session["sink"].stop()
        return True

    async def delete(request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        app["deletes"].append((sid, request.headers.get("Authorization")))
        if not await drop(sid):
            return _problem(404, "Not found", "no such session")
        return web.Response(status=204)

    async def close_all(_app):
        for sid in list(app["sessions"]):
            await drop(sid)

    app.router.add_delete("/{kind}/{room}/sessions/{sid}", delete)
    app.on_cleanup.append(close_all)
    return app


@pytest.fixture
async def live_server(monkeypatch):
    pytest.importorskip("aiortc")
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    app = make_live_app()
    runner, base = await start(app)
    yield app, base
    await runner.cleanup()


async def test_loopback_publish_chat_reconnect_stop(live_server, browser):
    app, base = live_server
    page, errors = await open_page(browser, base + "/broadcast/demo", expected_statuses=[404])
    await wait_for_js(page, "document.querySelector('[data-testid=preview]').videoWidth > 0")
    await enter_stream_key(page, "k1")
    await tid(page, "go-live").click()
    await expect(tid(page, "state")).to_have_text("live")
    await expect(tid(page, "stop")).to_be_enabled()
    await expect(tid(page, "viewers")).to_have_text("0")
    await expect(tid(page, "chat-me")).to_have_text("You are publisher-whip1")
    await expect(tid(page, "stats")).to_have_text(
        re.compile(r"video [1-9]\d* kbps · \d+ fps · \d+×\d+")
    )
    await tid(page, "chat-input").fill("hello from the studio")
    await tid(page, "chat-input").press("Enter")
    await expect(tid(page, "chat-log").locator('[data-seq="1"]')).to_contain_text(
        "hello from the studio"
    )

    # The server drops the session: the page must re-publish by itself.
    assert await app["drop"]("whip1")
    await expect(tid(page, "state")).to_have_text("reconnecting")
    await expect(tid(page, "state")).to_have_text("live", timeout=15_000)
    assert len(app["whip_posts"]) == 2
    assert all(p["authorization"] == "Bearer k1" for p in app["whip_posts"])
    await screenshot(page, "broadcast-live")

    await tid(page, "stop").click()
    await expect(tid(page, "state")).to_have_text("stopped")
    await wait_for(
        lambda: ("whip2", "Bearer k1") in app["deletes"], 15, "DELETE of whip2", interval_s=0.1
    )
    assert "whip2" not in app["sessions"]
    await expect(tid(page, "go-live")).to_be_enabled()

    # Going live again re-captures the (stopped) camera and publishes anew.
    await tid(page, "go-live").click()
    await expect(tid(page, "state")).to_have_text("live")
    await wait_for_js(page, "document.querySelector('[data-testid=preview]').videoWidth > 0")
    assert len(app["whip_posts"]) == 3
    assert errors.errors == []


async def test_loopback_watch_plays_and_reconnects(live_server, browser):
    app, base = live_server
    page, errors = await open_page(browser, base + "/watch/demo", expected_statuses=[404])
    await expect(tid(page, "state")).to_have_text("playing")
    await wait_for_js(page, "document.querySelector('[data-testid=video]').videoWidth > 0")
    await expect(tid(page, "viewers")).to_have_text("1")
    await expect(tid(page, "stats")).to_have_text(
        re.compile(r"frames [1-9]\d* · \d+ fps · lost \d+ · jitter buffer \d+ ms")
    )
    await expect(tid(page, "chat-input")).to_be_enabled()
    await tid(page, "unmute").click()
    await expect(tid(page, "unmute")).to_be_hidden()
    assert await tid(page, "video").evaluate("v => !v.muted")

    # Presence says the broadcaster left (session kept): waiting, then back.
    app["broadcast"]({"type": "presence", "viewers": 1, "live": False})
    await expect(tid(page, "state")).to_have_text("waiting")
    await expect(tid(page, "notice")).to_contain_text("Waiting for the broadcaster")
    app["broadcast"]({"type": "presence", "viewers": 2, "live": True})
    await expect(tid(page, "state")).to_have_text("playing")
    await expect(tid(page, "viewers")).to_have_text("2")

    assert await app["drop"]("whep1")
    await expect(tid(page, "state")).to_have_text("reconnecting")
    await expect(tid(page, "state")).to_have_text("playing", timeout=15_000)
    assert len(app["whep_posts"]) == 2
    await screenshot(page, "watch-playing")

    # Leaving the page DELETEs the session (keepalive fetch on pagehide).
    await page.goto(base + "/")
    await wait_for(
        lambda: any(sid == "whep2" for sid, _ in app["deletes"]),
        15,
        "DELETE of whep2",
        interval_s=0.1,
    )
    assert errors.errors == []
