"""The chat, moderation, analytics and quality-of-experience parts of the pages, in headless
Chromium against stand-in back ends (tests/e2e/chat_stub.py: a real python-socketio server
and in-memory REST answers), so that every notice, action and chart is checked without
the real service; tests/e2e/test_chat_pages.py runs the same pages against it.

Screenshots at 390 and 1280 px land in /tmp/relaycast-shots/chat-*.png.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("playwright.async_api")
from playwright.async_api import async_playwright, expect  # noqa: E402

from tests.e2e.browser import (  # noqa: E402
    BROWSER_MARKS,
    CHROMIUM,
    CSP_REPORTER_JS,
    SHOTS_DIR,
    PageErrors,
    wait_for_js,
)
from tests.e2e.chat_stub import STATE  # noqa: E402
from tests.e2e.test_pages_static import LAUNCH_ARGS, make_app, start  # noqa: E402
from tests.polling import wait_for  # noqa: E402

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(120)]

WIDTHS = (390, 1280)


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


async def new_page(browser: Any, base: str, path: str, who: str | None = None,
                   expected_statuses: tuple[int, ...] = (409,)) -> tuple[Any, PageErrors]:
    """A page in a context of its own; ``who`` = "moderator" / "viewer" logs it in (the
    stub's session cookies), None = a guest."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    await context.add_init_script(CSP_REPORTER_JS)
    if who:
        await context.add_cookies([{"name": "rc_access", "value": who, "url": base},
                                   {"name": "rc_csrf", "value": "csrf-" + who, "url": base}])
    page = await context.new_page()
    page.set_default_timeout(15_000)
    errors = PageErrors(page, expected_statuses)
    await page.goto(base + path)
    return page, errors


def tid(page: Any, testid: str) -> Any:
    return page.locator(f'[data-testid="{testid}"]')


async def shots(page: Any, name: str) -> None:
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 844 if width < 500 else 800})
        # Charts follow their box on the next animation frames: wait until nothing is wider.
        await wait_for_js(page, "document.documentElement.scrollWidth <= innerWidth", timeout=5_000)
        await page.screenshot(path=str(SHOTS_DIR / f"chat-{name}-{width}.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 860})


async def send(page: Any, text: str) -> None:
    await tid(page, "chat-input").fill(text)
    await tid(page, "chat-input").press("Enter")


def texts(page: Any):
    return page.locator('[data-testid="chat-message"] .chat-text')


async def test_chat_over_socketio_for_guests_and_users(server, browser) -> None:
    app, base = server
    state = app[STATE]
    guest, guest_errors = await new_page(browser, base, "/watch/demo")
    fan, fan_errors = await new_page(browser, base, "/watch/demo", "viewer")
    # No WebRTC session (WHEP answers 409): the chat runs over Socket.IO on both pages.
    await expect(tid(guest, "chat-me")).to_have_text("You are swift-otter-42")
    await expect(tid(fan, "chat-me")).to_have_text("You are fan")
    for page in (guest, fan):
        await expect(tid(page, "chat-input")).to_be_enabled()
        assert await page.evaluate("window.relaycastWatch.chat.transport.kind") == "socketio"

    # One conversation, in seq order on both pages; a mention of the user is highlighted.
    for page, text in ((guest, "hello @Fan"), (fan, "hi guest"), (guest, "third")):
        await send(page, text)
        await expect(texts(page).filter(has_text=text)).to_have_count(1)  # then the next one
    for page in (guest, fan):
        await expect(texts(page)).to_have_text(["hello @Fan", "hi guest", "third"])
    orders = [await p.evaluate("window.relaycastWatch.chat.order") for p in (guest, fan)]
    assert orders[0] == orders[1] == [1, 2, 3]
    await expect(fan.locator('[data-testid="chat-message"][data-mention="true"]')).to_have_count(1)
    await expect(guest.locator('[data-testid="chat-message"][data-mention="true"]')).to_have_count(0)
    await expect(fan.locator(".chat-msg.from-me .chat-text")).to_have_text(["hi guest"])

    # Characters left, in grapheme clusters: a family emoji (5 code points) counts once.
    await tid(fan, "chat-input").fill("👨‍👩‍👧👍🏽é")
    await expect(tid(fan, "chat-counter")).to_have_text("497")
    await tid(fan, "chat-input").fill("x" * 501)
    await expect(tid(fan, "chat-counter")).to_have_text("-1")
    await expect(tid(fan, "chat-counter")).to_have_class(re.compile("over"))
    sent = len(state["sent"])
    await tid(fan, "chat-input").press("Enter")
    await expect(tid(fan, "chat-error")).to_have_text("Messages are limited to 500 characters.")
    assert len(state["sent"]) == sent

    # Refusals: one friendly line each; slow mode counts down with Send off.
    await send(fan, "!held spoiler")
    await expect(tid(fan, "chat-error")).to_have_text("Your message is held for review.")
    await send(fan, "!slow again")
    await expect(tid(fan, "chat-error")).to_have_text(re.compile(r"^Slow mode: you can send again in [67] s\.$"))
    await expect(tid(fan, "chat-send")).to_be_disabled()
    await expect(tid(fan, "chat-input")).to_have_value("!slow again")  # kept to send later
    await send(guest, "!guest hi")
    await expect(tid(guest, "chat-error")).to_have_text("Log in to chat.")
    await expect(tid(guest, "chat-login")).to_have_attribute("href", "/login?next=%2Fwatch%2Fdemo")
    await expect(tid(guest, "chat-input")).to_be_disabled()
    await shots(fan, "watch-user")
    await shots(guest, "watch-guest")

    # Moderation events: a deleted message leaves every page; clear empties the list.
    first = state["log"]["demo"][0]
    await app["sio"].emit("chat", {"type": "delete", "ids": [first["id"]]}, room="room:demo")
    for page in (guest, fan):
        await expect(texts(page)).to_have_text(["hi guest", "third"])
    # A page that joins later gets the history once, without the deleted message.
    state["log"]["demo"].remove(first)
    late, late_errors = await new_page(browser, base, "/watch/demo")
    await expect(texts(late)).to_have_text(["hi guest", "third"])
    await app["sio"].emit("chat", {"type": "clear"}, room="room:demo")
    for page in (guest, fan, late):
        await expect(texts(page)).to_have_count(0)
        await expect(tid(page, "chat-error")).to_contain_text(re.compile("cleared|Log in"))
    for errors in (guest_errors, fan_errors, late_errors):
        assert errors.errors == []


async def test_inline_actions_for_moderators_and_reporters(server, browser) -> None:
    app, base = server
    state = app[STATE]
    guest, _ = await new_page(browser, base, "/watch/demo")
    await expect(tid(guest, "chat-input")).to_be_enabled()
    await send(guest, "spam spam spam")
    mod, mod_errors = await new_page(browser, base, "/watch/demo", "moderator")
    fan, fan_errors = await new_page(browser, base, "/watch/demo", "viewer")
    await expect(tid(mod, "chat-moderation-link")).to_have_attribute("href", "/moderation/demo")
    await expect(tid(fan, "chat-moderation-link")).to_have_count(0)
    await expect(tid(guest, "chat-more")).to_have_count(0)  # a guest can neither moderate nor report
    message = state["log"]["demo"][-1]

    # A viewer may only report.
    await tid(fan, "chat-more").click()
    await expect(tid(fan, "chat-actions").locator("button")).to_have_text(["Report"])
    await tid(fan, "chat-report").click()
    await expect(tid(fan, "chat-error")).to_have_text("Reported to the moderators. Thank you.")
    assert ("POST", "/api/channels/demo/chat/reports", {"message_id": message["id"]}) in state["calls"]

    # A moderator: delete, time out 10 min, ban, report; a guest is targeted by participant id.
    await tid(mod, "chat-more").click()
    await expect(tid(mod, "chat-actions").locator("button")).to_have_text(
        ["Delete", "Time out 10 min", "Ban", "Report"])
    await tid(mod, "chat-timeout").click()
    await expect(tid(mod, "chat-error")).to_have_text("swift-otter-42 is timed out for 10 min.")
    assert ("POST", "/api/channels/demo/chat/bans", {
        "participant": message["from"]["id"], "duration_s": 600, "reason": "timed out from the chat"}) in state["calls"]
    await tid(mod, "chat-more").click()
    await tid(mod, "chat-delete").click()
    await expect(tid(mod, "chat-error")).to_have_text("Message deleted.")
    assert ("DELETE", f"/api/channels/demo/chat/messages/{message['id']}", None) in state["calls"]
    # Escape closes the actions and gives the focus back.
    await tid(mod, "chat-more").click()
    await mod.keyboard.press("Escape")
    await expect(tid(mod, "chat-actions")).to_have_count(0)
    await expect(tid(mod, "chat-more")).to_be_focused()
    assert mod_errors.errors == [] and fan_errors.errors == []


async def test_moderation_panel(server, browser) -> None:
    app, base = server
    state = app[STATE]
    page, errors = await new_page(browser, base, "/moderation/demo", "moderator", expected_statuses=())
    await expect(tid(page, "queue-item")).to_have_count(2)
    await expect(tid(page, "queue-item").first).to_contain_text("reported by fan")
    await expect(tid(page, "slow-mode")).to_have_value("0")
    await expect(tid(page, "guests-allowed")).to_be_checked()
    await expect(tid(page, "term")).to_have_count(1)
    await expect(tid(page, "ban")).to_contain_text("loud-otter-7")
    await expect(tid(page, "moderator")).to_contain_text("helper")  # the broadcaster sees moderators
    await expect(tid(page, "log-entry")).to_have_count(1)
    await shots(page, "moderation")

    # Approve the held message; it leaves the open queue.
    held = page.locator('[data-testid="queue-item"][data-kind="held"]')
    await held.locator('[data-testid="queue-approve"]').click()
    await expect(tid(page, "mod-status")).to_have_text("Message approved and sent.")
    await expect(tid(page, "queue-item")).to_have_count(1)
    assert ("POST", "/api/channels/demo/chat/reports/r2/resolve", {"action": "approve"}) in state["calls"]

    # Settings: slow mode 30 s, followers-only after 10 minutes.
    await tid(page, "slow-mode").fill("30")
    await tid(page, "followers-only").check()
    await tid(page, "followers-min").fill("10")
    await tid(page, "save-settings").click()
    await expect(tid(page, "settings-result")).to_have_text("Saved.")
    assert ("PATCH", "/api/channels/demo/chat/settings", {
        "slow_mode_s": 30, "followers_only_s": 600, "guests_allowed": True, "links_allowed": False}) in state["calls"]

    # A blocked term, a time-out by username, a new moderator, an unban.
    await tid(page, "term-input").fill("b4dword")
    await tid(page, "term-action").select_option("block")
    await tid(page, "term-add").click()
    await expect(tid(page, "term")).to_have_count(2)
    await tid(page, "ban-user").fill("@troll")
    await tid(page, "ban-add").click()
    await expect(tid(page, "mod-status")).to_have_text("troll is timed out.")
    assert ("POST", "/api/channels/demo/chat/bans", {"user": "troll", "duration_s": 600}) in state["calls"]
    await tid(page, "mod-user").fill("newmod")
    await tid(page, "mod-add").click()
    await expect(tid(page, "mod-status")).to_have_text("newmod is a moderator now.")
    assert ("PUT", "/api/channels/demo/moderators/newmod", None) in state["calls"]
    await tid(page, "unban").first.click()
    assert await wait_for(lambda: ("DELETE", "/api/channels/demo/chat/bans/guest:abc123", None) in state["calls"],
                          5, "the unban")
    assert errors.errors == []

    # Someone who is not a moderator is told so.
    other, other_errors = await new_page(browser, base, "/moderation/demo", "viewer", expected_statuses=())
    await expect(tid(other, "mod-error")).to_have_text("You are not a moderator of this channel.")
    await expect(tid(other, "mod-panels")).to_be_hidden()
    assert other_errors.errors == []


async def test_analytics_page_draws_the_charts(server, browser) -> None:
    _app, base = server
    page, errors = await new_page(browser, base, "/studio/analytics", "moderator", expected_statuses=())
    await expect(tid(page, "stream-select").locator("option")).to_have_count(2)
    await expect(tid(page, "stream-select").locator("option").first).to_have_text("Live now: Default title")
    await expect(tid(page, "stat-peak")).to_have_text("20")
    await expect(tid(page, "stat-unique")).to_have_text("31")
    await expect(tid(page, "stat-chat")).to_have_text("57")
    await expect(tid(page, "chart-viewers")).to_have_attribute("data-samples", "30")
    await expect(tid(page, "chart-chat")).to_have_attribute("data-samples", "5")
    await expect(tid(page, "chart-ingest")).to_have_attribute("data-samples", "30")
    await expect(tid(page, "ingest-resolution")).to_have_text("1280×720")
    await expect(tid(page, "ingest-rtt")).to_have_text("n/a")
    await expect(tid(page, "qoe-llhls")).to_contain_text("1.9 s / 3.1 s")
    # Chart.js (from /static/vendor) drew the viewer curve: two tiers, 30 points each.
    datasets = await page.evaluate(
        "window.relaycastAnalytics.charts.viewers.data.datasets.map(d => [d.label, d.data.length])")
    assert datasets == [["WebRTC", 30], ["LL-HLS", 30]]
    assert await wait_for_js(page, "document.querySelector('[data-testid=chart-viewers]').width > 0")
    await shots(page, "analytics")
    # Picking a past broadcast loads it and keeps it in the URL.
    await tid(page, "stream-select").select_option("s-old")
    await page.wait_for_url(re.compile(r"stream=s-old"))
    assert errors.errors == []


QOE_HARNESS = """
async () => {
  const { QoeBeacons } = await import('/static/js/qoe.js');
  const video = new EventTarget();
  Object.assign(video, { videoHeight: 0, paused: false });
  const q = new QoeBeacons(video, 'demo', { latency: () => 321.4 });
  q.start('webrtc', performance.now() - 850);
  video.videoHeight = 360;
  video.dispatchEvent(new Event('playing'));               // join
  video.dispatchEvent(new Event('waiting'));
  await new Promise((r) => setTimeout(r, 120));
  video.dispatchEvent(new Event('playing'));               // a stall ended
  video.videoHeight = 720;
  video.dispatchEvent(new Event('resize'));                // a switch
  q.heartbeat();
  q.error('HLS: fragLoadError (HTTP 500)');
  q.stop();                                                // end
  return q.sent;
}
"""


async def test_qoe_beacons_pass_the_servers_validation(server, browser) -> None:
    app, base = server
    state = app[STATE]
    page, errors = await new_page(browser, base, "/")
    assert await page.evaluate(QOE_HARNESS) == 6
    await wait_for(lambda: len(state["beacons"]) >= 6, 10, "six beacons at the stub")
    beacons = state["beacons"]
    assert not [b for b in beacons if "invalid" in b], beacons
    # Four requests (join; stall + switch + heartbeat; error; end) may arrive in any order.
    by_event = {b["event"]: b for b in beacons}
    assert sorted(b["event"] for b in beacons) == sorted(["join", "stall", "switch", "heartbeat", "error", "end"])
    assert len({b["session"] for b in beacons}) == 1
    assert {(b["channel"], b["tier"]) for b in beacons} == {("demo", "webrtc")}
    join, stall, switch, heartbeat, end = (by_event[e] for e in ("join", "stall", "switch", "heartbeat", "end"))
    assert by_event["error"]["error"] == "HLS: fragLoadError (HTTP 500)"
    assert 850 <= join["join_ms"] < 5000 and join["height"] == 360
    assert stall["stalls"] == 1 and stall["stall_ms"] >= 100
    assert switch["switches"] == 1 and switch["height"] == 720
    assert heartbeat["latency_ms"] == 321
    assert end["stalls"] == 1 and end["switches"] == 1
    assert errors.errors == []


REPLAY_HARNESS = """
async () => {
  const { ChatReplay, fetchReplay } = await import('/static/js/chat-replay.js');
  const messages = await fetchReplay('s-old');
  const list = document.createElement('ol');
  document.body.append(list);
  const video = new EventTarget();
  video.currentTime = 0;
  const replay = new ChatReplay(video, list, messages);
  const at = (s) => { video.currentTime = s; video.dispatchEvent(new Event('timeupdate'));
                      return [...list.children].map((li) => li.querySelector('.chat-text').textContent); };
  return { total: messages.length, start: at(0), later: at(5.5), back: at(1.5), end: at(60) };
}
"""


async def test_chat_replay_follows_the_recordings_time(server, browser) -> None:
    app, base = server
    app[STATE]["replay"] = [
        {"id": f"m{i}", "seq": i, "ts": 0, "from": {"id": "p", "name": "fan", "role": "viewer"},
         "text": f"at {offset}", "offset_ms": offset}
        for i, offset in enumerate([0, 1000, 2000, 5000, 9000], start=1)
    ]
    page, errors = await new_page(browser, base, "/")
    got = await page.evaluate(REPLAY_HARNESS)
    assert got == {
        "total": 5,
        "start": ["at 0"],
        "later": ["at 0", "at 1000", "at 2000", "at 5000"],
        "back": ["at 0", "at 1000"],
        "end": ["at 0", "at 1000", "at 2000", "at 5000", "at 9000"],
    }
    assert errors.errors == []


PANEL_HARNESS = """
async () => {
  const { ChatPanel } = await import('/static/js/chat.js');
  const box = document.createElement('div');
  document.body.append(box);
  const panel = new ChatPanel(box);
  const msg = (seq) => ({ type: 'chat', seq, id: 'm' + seq, ts: 0, from: { id: 'p', name: 'n', role: 'viewer' },
                          text: 't' + seq });
  for (let seq = 600; seq >= 1; seq -= 1) panel.handle(msg(seq));   // newest first
  for (let seq = 1; seq <= 600; seq += 1) panel.handle(msg(seq));   // again, from the other transport
  const first = panel.order;
  panel.handle({ type: 'delete', ids: ['m600'] });
  panel.handle(msg(600));                                              // a later history repeats it
  panel.handle(msg(601));
  return { count: first.length, head: first[0], tail: first.at(-1), sorted: first.every((s, i) => !i || first[i - 1] < s),
           after: panel.order.slice(-2) };
}
"""


async def test_panel_keeps_the_newest_500_once_each(server, browser) -> None:
    """Out of order and twice over (two transports), at most 500 rows in seq order; an
    evicted or deleted message never comes back."""
    _app, base = server
    page, errors = await new_page(browser, base, "/")
    assert await page.evaluate(PANEL_HARNESS) == {
        "count": 500, "head": 101, "tail": 600, "sorted": True, "after": [599, 601]}
    assert errors.errors == []


async def test_past_broadcast_opens_with_its_chat(server, browser) -> None:
    """The channel page's past broadcast loads its stored chat for the replay."""
    app, base = server
    app[STATE]["replay"] = [
        {"id": f"m{i}", "seq": i, "ts": 0, "from": {"id": "p", "name": "fan", "role": "viewer"},
         "text": f"line {i}", "offset_ms": 1000 * i} for i in range(1, 6)
    ]
    page, errors = await new_page(browser, base, "/watch/demo", expected_statuses=(404, 409))
    await tid(page, "past-video-link").click()
    await expect(tid(page, "replay")).to_be_visible()
    await expect(tid(page, "replay-chat-status")).to_have_text("(5 messages)")
    await expect(tid(page, "replay-chat")).to_have_attribute("data-total", "5")
    await tid(page, "replay-close").click()
    await expect(tid(page, "replay-message")).to_have_count(0)
    assert errors.errors == []
