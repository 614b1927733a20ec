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

from community.pages import PAGES  # noqa: E402
from signaling.app import vendor_file  # noqa: E402
from signaling.security_headers import PAGE_CSP, harden_response  # noqa: E402
from tests.e2e import chat_stub  # noqa: E402
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
CATEGORIES = [
    {"slug": "games", "name": "Games", "live_streams": 1, "viewers": 12},
    {"slug": "music", "name": "Music", "live_streams": 1, "viewers": 3},
]


def _stream(channel: str, title: str, category: str | None, viewers: int, **extra: object) -> dict:
    """A Stream as ``GET /api/streams`` answers it (the fields the pages read)."""
    names = {c["slug"]: c["name"] for c in CATEGORIES}
    return {
        "id": f"s-{channel}", "channel": channel, "channel_display_name": channel.title(),
        "title": title, "category": category, "category_name": names.get(category or ""),
        "tags": ["speedrun"] if category == "games" else [], "language": "en", "status": "live",
        "viewers": viewers, "peak_viewers": viewers, "thumbnail_url": None,
        "hls_url": f"/hls/{channel}/master.m3u8", "whep_url": f"/whep/{channel}",
        "whip_url": f"/whip/{channel}", "vod_url": None, **extra,
    }


STREAMS = [  # sorted by viewers, as the directory answers
    _stream("gamer", "Any% run <b>no</b> glitches", "games", 12,
            thumbnail_url="/static/favicon.svg?v=1"),
    _stream("demo", "Demo stream", "music", 3, tags=["lofi", "chill"]),
    _stream("quiet", "", None, 0),
]
CHANNEL = {
    "name": "demo", "owner": {"id": "u-demo", "username": "demo", "display_name": "Demo"},
    "title": "Default title", "category": "art", "description": "Tunes <i>all</i> day.",
    "language": "en", "tags": ["default-tag"], "private": False, "followers": 41, "live": True,
    "stream_id": "s-demo", "viewers": 3, "created_at": "2026-01-01T00:00:00Z",
}
VIDEOS = [
    {"stream_id": "s-old", "title": "Yesterday's show", "category": "music",
     "started_at": "2026-01-02T18:00:00Z", "ended_at": "2026-01-02T19:05:00Z",
     "duration_s": 3900, "url": "/vod/demo/s-old/index.m3u8"},
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
    app["sio"] = chat_stub.install(app)  # the pages' Socket.IO chat, moderation, analytics
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

    async def streams(request: web.Request) -> web.Response:
        request.app["stream_queries"].append(dict(request.query))
        category = request.query.get("category")
        found = [s for s in STREAMS if not category or s["category"] == category]
        return web.json_response({"streams": found, "next_cursor": None})

    async def search(request: web.Request) -> web.Response:
        request.app["stream_queries"].append(dict(request.query))
        q = request.query.get("q", "").lower()
        found = [s for s in STREAMS if q in (s["title"] + " " + s["channel"]).lower()]
        return web.json_response({"streams": found, "next_cursor": None})

    async def stream(request: web.Request) -> web.Response:
        found = [s for s in STREAMS if s["id"] == request.match_info["id"]]
        if not found:
            return _problem(404, "Not Found", "no such stream")
        return web.json_response(found[0])

    async def categories(_request: web.Request) -> web.Response:
        return web.json_response({"categories": CATEGORIES})

    async def channel(request: web.Request) -> web.Response:
        if request.match_info["name"] != "demo":
            return _problem(404, "Not Found", "no such channel")
        return web.json_response(CHANNEL)

    async def videos(request: web.Request) -> web.Response:
        found = VIDEOS if request.match_info["name"] == "demo" else []
        return web.json_response({"videos": found, "next_cursor": None})

    app["stream_queries"] = []
    app.router.add_get("/", page("index.html"))
    app.router.add_get("/broadcast/{room}", page("broadcast.html"))
    app.router.add_get("/watch/{room}", page("watch.html"))
    for path, name in PAGES.items():  # the platform's pages, as community.pages serves them
        app.router.add_get(path, page(name))
    app.router.add_get("/api/ice-servers", ice_servers)
    app.router.add_get("/api/rooms", rooms)
    app.router.add_get("/api/streams", streams)
    app.router.add_get("/api/streams/search", search)
    app.router.add_get("/api/streams/{id}", stream)
    app.router.add_get("/api/categories", categories)
    app.router.add_get("/api/channels/{name}", channel)
    app.router.add_get("/api/channels/{name}/videos", videos)
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


async def test_directory_lists_live_streams_by_viewers(server, browser):
    app, base = server
    page, errors = await open_page(browser, base + "/")
    cards = tid(page, "stream-card")
    await expect(cards).to_have_count(3)
    assert await cards.evaluate_all("els => els.map(e => e.dataset.channel)") == [
        "gamer", "demo", "quiet"]
    assert app["stream_queries"][0] == {"live": "true", "sort": "viewers", "limit": "24"}
    gamer = page.locator('[data-channel="gamer"]')
    # Titles are user input: text, never HTML.
    await expect(gamer.locator('[data-testid="stream-title"]')).to_contain_text(
        "Any% run <b>no</b> glitches")
    assert await gamer.locator("b").count() == 0
    await expect(gamer.locator('[data-testid="stream-title"]')).to_have_attribute(
        "href", "/watch/gamer")
    await expect(gamer.locator('[data-testid="stream-viewers"]')).to_have_text("12 watching")
    await expect(gamer.locator('[data-testid="stream-channel"]')).to_have_text("Gamer")
    await expect(gamer.locator('[data-testid="stream-thumbnail"]')).to_have_attribute(
        "src", "/static/favicon.svg?v=1")
    # No thumbnail yet: the placeholder, loaded (not a broken image).
    placeholder = page.locator('[data-channel="demo"] [data-testid="stream-thumbnail"]')
    await expect(placeholder).to_have_attribute("src", "/static/thumbnail-placeholder.svg")
    await wait_for_js(page, "document.querySelector('[data-channel=demo] img').naturalWidth > 0")
    # An untitled stream is named after its channel.
    await expect(page.locator('[data-channel="quiet"] [data-testid="stream-title"]')).to_contain_text(
        "Quiet's stream")
    await expect(tid(page, "directory-status")).to_have_text("3 live channels")
    chips = tid(page, "category-chip")
    await expect(chips).to_have_text([re.compile("^All"), re.compile("^Games"), re.compile("^Music")])
    await expect(chips.first).to_have_attribute("aria-current", "page")
    await screenshot(page, "directory")

    # A category page: its chip is current, the directory asks for that category.
    await page.locator('[data-testid="category-chip"][data-slug="games"]').click()
    await page.wait_for_url(base + "/category/games")
    await expect(tid(page, "directory-heading")).to_have_text("Games")
    await expect(cards).to_have_count(1)
    await expect(page.locator('[data-slug="games"]')).to_have_attribute("aria-current", "page")
    assert app["stream_queries"][-1]["category"] == "games"

    # The header's search box leads to /search?q=, answered by /api/streams/search.
    await tid(page, "search-input").fill("demo")
    await tid(page, "search-input").press("Enter")
    await page.wait_for_url(base + "/search?q=demo")
    await expect(tid(page, "directory-heading")).to_have_text("Results for “demo”")
    await expect(cards).to_have_count(1)
    await expect(cards.first).to_have_attribute("data-channel", "demo")
    await expect(tid(page, "search-input")).to_have_value("demo")
    assert app["stream_queries"][-1] == {"q": "demo", "live": "true", "sort": "viewers", "limit": "24"}
    # The filters re-ask and keep the URL shareable.
    await tid(page, "filter-sort").select_option("recent")
    await wait_for(lambda: app["stream_queries"][-1].get("sort") == "recent", 10, "a recent search")
    assert page.url == base + "/search?q=demo&sort=recent"
    await tid(page, "search-input").fill("nothing-like-it")
    await tid(page, "search-input").press("Enter")
    await expect(tid(page, "directory-status")).to_have_text("No streams match.")
    assert errors.errors == []


async def test_header_of_a_visitor_offers_log_in_and_sign_up(server, browser):
    _app, base = server
    page, errors = await open_page(browser, base + "/watch/demo", expected_statuses=[409])
    await expect(tid(page, "nav-login")).to_have_attribute("href", "/login?next=%2Fwatch%2Fdemo")
    await expect(tid(page, "nav-register")).to_have_attribute("href", "/register")
    await expect(tid(page, "bell")).to_have_count(0)
    # The channel side of the watch page, from GET /api/channels/demo and its videos; the
    # live stream's title, category and tags (GET /api/streams/s-demo) over the defaults.
    await expect(tid(page, "stream-title")).to_have_text("Demo stream")
    await expect(tid(page, "room")).to_have_text("demo")
    await expect(tid(page, "followers")).to_have_text("41")
    await expect(tid(page, "channel-category")).to_have_attribute("href", "/category/music")
    await expect(tid(page, "description")).to_have_text("Tunes <i>all</i> day.")
    await expect(tid(page, "tags").locator("li")).to_have_text(["lofi", "chill"])
    await expect(tid(page, "past-video")).to_have_count(1)
    await expect(tid(page, "past-video")).to_contain_text("Yesterday's show")
    await expect(tid(page, "past-video")).to_contain_text("1:05:00")
    await expect(tid(page, "follow")).to_have_attribute("aria-pressed", "false")
    await screenshot(page, "channel-visitor")
    # Following needs an account: the button leads to the log-in page and back.
    await tid(page, "follow").click()
    await page.wait_for_url(base + "/login?next=%2Fwatch%2Fdemo")
    await expect(tid(page, "login-form")).to_be_visible()
    # An empty form is refused on the page, naming the field.
    await tid(page, "submit").click()
    await expect(tid(page, "form-error")).to_contain_text("Username or email")
    await expect(tid(page, "username")).to_be_focused()
    assert errors.errors == []


async def test_pages_that_need_a_login_go_to_the_login_page(server, browser):
    _app, base = server
    for path in ("/studio", "/studio/analytics", "/moderation/demo", "/settings", "/notifications"):
        page, errors = await open_page(browser, base + path)
        await page.wait_for_url(base + "/login?next=" + path.replace("/", "%2F"))
        assert errors.errors == []
        await page.context.close()


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
    pages = [("/", []), ("/search?q=demo", []), ("/category/games", []), ("/login", []),
             ("/register", []), ("/broadcast/demo", []), ("/watch/demo", [409])]
    for path, statuses in pages:
        page, errors = await open_page(browser, base + path, expected_statuses=statuses)
        ready = tid(page, "state").or_(tid(page, "stream-card")).or_(tid(page, "submit"))
        await expect(ready.first).to_be_visible()
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
    await expect(box.locator('[data-testid="chat-error"]')).to_have_text("You're sending messages too fast.")
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
