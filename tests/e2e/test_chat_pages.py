"""Chat on every tier, moderation and analytics, end to end: the real service (``relaycast``
with the platform, SQLite) and headless Chromium, four people in four browser contexts.

The broadcaster goes live from the studio (fake camera).  ``rtc_fan`` watches over WebRTC
and chats on the WHEP session's data channel; ``hls_fan`` watches over LL-HLS and chats over
the pages' Socket.IO connection: both see one conversation in one order, and a mention is
highlighted for the one mentioned.  From the studio's chat the broadcaster times out
``rtc_fan`` (the next message is refused on the data channel and, after switching the page
to LL-HLS, over Socket.IO too) and deletes a message (gone on every page, in a newcomer's
history and in the stored history of ``GET /api/streams/{id}/chat``).  On the moderation
panel: slow mode (a second message within the interval is refused with the time left), a
blocked term caught in look-alike (Cyrillic) letters, and a report that reaches the queue.
The studio shows the SFU's view of the ingest; the broadcaster stops, and the studio's
analytics page draws the viewer curve (both tiers) of the stream that just ran, whose
quality-of-experience figures came from the watch pages' beacons.

Screenshots at 390 x 844 and 1280 x 800 land in /tmp/relaycast-shots/chat-e2e-*.png.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from loadtest.clips import make_counter_y4m, make_tone_wav
from tests.e2e.browser import (
    BROWSER_MARKS,
    CSP_REPORTER_JS,
    SHOTS_DIR,
    PageErrors,
    chromium,
    chromium_args,
    tid,
    wait_for_js,
)
from tests.polling import wait_for

pytest.importorskip("playwright.async_api")
from playwright.async_api import expect  # noqa: E402

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(300)]

PASSWORD = "a long enough passphrase"
SIZES = ((390, 844), (1280, 800))
TRANSPORT = "(window.relaycastWatch?.chat?.transport?.kind ?? null)"


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path]:
    video = make_counter_y4m(tmp_path / "counter.y4m", 640, 360, fps=30, frames=60)
    audio = make_tone_wav(tmp_path / "tone.wav", seconds=2, frequency=440)
    return video, audio


async def person(browser: Any, base: str, username: str | None,
                 expected_statuses: tuple[int, ...] = (404, 409)) -> tuple[Any, Any, PageErrors]:
    """A browser context of its own (its own cookies), registered as ``username`` (None: a
    guest); returns ``(context, page, errors)``."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.add_init_script(CSP_REPORTER_JS)
    if username:
        resp = await context.request.post(f"{base}/api/users/register", headers={"X-Relaycast-Client": "web"},
                                          data={"username": username, "password": PASSWORD})
        assert resp.status == 201, await resp.text()
    page = await context.new_page()
    page.set_default_timeout(20_000)
    return context, page, PageErrors(page, expected_statuses)


async def shots(page: Any, name: str) -> None:
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        await page.set_viewport_size({"width": width, "height": height})
        await wait_for_js(page, "document.documentElement.scrollWidth <= innerWidth", timeout=5_000)
        await page.screenshot(path=str(SHOTS_DIR / f"chat-e2e-{name}-{width}.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 800})


async def send(page: Any, text: str) -> None:
    await expect(tid(page, "chat-send")).to_be_enabled()
    await tid(page, "chat-input").fill(text)
    await tid(page, "chat-input").press("Enter")


def texts(page: Any) -> Any:
    return page.locator('[data-testid="chat-message"] .chat-text')


def message(page: Any, text: str) -> Any:
    return page.locator('[data-testid="chat-message"]').filter(
        has=page.locator(".chat-text", has_text=re.compile(f"^{re.escape(text)}$")))


async def act_on(page: Any, text: str, action: str) -> None:
    """Open the actions of the message saying ``text`` and press ``action`` (a testid)."""
    await message(page, text).locator('[data-testid="chat-more"]').click()
    await tid(page, action).click()


async def test_chat_on_both_tiers_moderation_and_analytics(service, clip) -> None:
    base = service.url
    async with chromium(chromium_args(*clip)) as browser:
        caster_ctx, studio, studio_errors = await person(browser, base, "caster")
        rtc_ctx, rtc, rtc_errors = await person(browser, base, "rtc_fan")
        _hls_ctx, hls, hls_errors = await person(browser, base, "hls_fan")

        # ---- the broadcaster goes live from the studio ----
        await studio.goto(f"{base}/studio")
        await expect(tid(studio, "room")).to_have_text("caster")
        await wait_for_js(studio, "document.querySelector('[data-testid=preview]').videoWidth > 0")
        await tid(studio, "title").fill("Chat test")
        await tid(studio, "resolution").select_option("360p")
        await tid(studio, "go-live").click()
        await expect(tid(studio, "state")).to_have_text("live")
        channel = await (await caster_ctx.request.get(f"{base}/api/channels/caster")).json()
        stream_id = channel["stream_id"]
        assert stream_id

        # ---- one conversation across the tiers ----
        await rtc.goto(f"{base}/watch/caster")
        await hls.goto(f"{base}/watch/caster?path=hls")
        assert await wait_for_js(rtc, f"{TRANSPORT} === 'datachannel'", timeout=30_000)
        assert await wait_for_js(hls, f"{TRANSPORT} === 'socketio'")
        await expect(tid(rtc, "chat-me")).to_have_text("You are rtc_fan")
        await expect(tid(hls, "chat-me")).to_have_text("You are hls_fan")
        said = ["hi from hls @rtc_fan", "hi from webrtc", "third", "fourth"]
        for page, text in zip((hls, rtc, hls, rtc), said, strict=True):
            await send(page, text)
            await expect(message(page, text)).to_have_count(1)
        for page in (rtc, hls, studio):
            await expect(texts(page)).to_have_text(said)
        orders = [await p.evaluate("window.relaycastWatch.chat.order") for p in (rtc, hls)]
        assert orders[0] == orders[1] and len(orders[0]) == 4 and orders[0] == sorted(orders[0]), orders
        await expect(message(rtc, said[0])).to_have_attribute("data-mention", "true")
        await expect(message(hls, said[0])).not_to_have_attribute("data-mention", "true")
        await expect(message(studio, said[0])).to_contain_text("hls_fan")
        await shots(rtc, "watch-webrtc")
        await shots(hls, "watch-hls")

        # A guest reads along over WebRTC (guests may write by default).
        _guest_ctx, guest, guest_errors = await person(browser, base, None)
        await guest.goto(f"{base}/watch/caster")
        await expect(texts(guest)).to_have_text(said)
        assert await wait_for_js(guest, f"{TRANSPORT} === 'datachannel'", timeout=30_000)
        await expect(tid(guest, "chat-more")).to_have_count(0)  # neither moderate nor report
        await shots(guest, "watch-guest")

        # ---- the broadcaster times out rtc_fan: refused on the data channel... ----
        await act_on(studio, "hi from webrtc", "chat-timeout")
        await expect(tid(studio, "chat-error")).to_have_text("rtc_fan is timed out for 10 min.")
        await send(rtc, "am I muted?")
        await expect(tid(rtc, "chat-error")).to_have_text(re.compile(r"^You are timed out for another (9|10) min\.$"))
        await expect(tid(rtc, "chat-send")).to_be_disabled()
        # ... and over Socket.IO, once the page plays LL-HLS.
        await rtc.evaluate("window.relaycastWatch.select('hls')")
        assert await wait_for_js(rtc, f"{TRANSPORT} === 'socketio' && window.relaycastWatch.chat.online")
        ack = await rtc.evaluate("window.relaycastWatch.chat.transport.send('still muted?')")
        assert ack.get("error") == "timed_out", ack
        assert ack.get("retry_after", 0) > 500, ack

        # ---- the broadcaster deletes hls_fan's "third": gone for everyone, and from history ----
        await act_on(studio, "third", "chat-delete")
        await expect(tid(studio, "chat-error")).to_have_text("Message deleted.")
        left = [t for t in said if t != "third"]
        for page in (studio, rtc, hls, guest):
            await expect(texts(page)).to_have_text(left)
        await guest.reload()
        await expect(texts(guest)).to_have_text(left)

        async def stored() -> list[str] | None:
            resp = await caster_ctx.request.get(f"{base}/api/streams/{stream_id}/chat")
            got = [m["text"] for m in (await resp.json())["messages"]]
            return got if got == left else None

        await wait_for(stored, 10, "the stored history without the deleted message")

        # ---- the moderation panel: slow mode ----
        panel = await caster_ctx.new_page()
        panel_errors = PageErrors(panel)
        await panel.goto(f"{base}/moderation/caster")
        await expect(tid(panel, "mod-panels")).to_be_visible()
        await tid(panel, "slow-mode").fill("30")
        await tid(panel, "save-settings").click()
        await expect(tid(panel, "settings-result")).to_have_text("Saved.")
        # (the guest, who has not written yet, so that no earlier message counts)
        await send(guest, "slow one")
        await expect(message(guest, "slow one")).to_have_count(1)
        await send(guest, "slow two")
        await expect(tid(guest, "chat-error")).to_have_text(
            re.compile(r"^Slow mode: you can send again in (\d+ s|1 min)\.$"))
        await expect(tid(guest, "chat-send")).to_be_disabled()
        await expect(message(studio, "slow two")).to_have_count(0)
        await send(studio, "the broadcaster is exempt")  # twice within the interval
        await send(studio, "from slow mode")
        await expect(message(hls, "from slow mode")).to_have_count(1)
        await tid(panel, "slow-mode").fill("0")
        await tid(panel, "save-settings").click()
        await expect(tid(panel, "settings-result")).to_have_text("Saved.")

        # ---- a blocked term, caught in look-alike letters ----
        await tid(panel, "term-input").fill("badword")
        await tid(panel, "term-action").select_option("block")
        await tid(panel, "term-add").click()
        await expect(tid(panel, "term").filter(has_text="badword")).to_have_count(1)
        await send(hls, "what a b\u0430dw\u043erd")  # Cyrillic а and о
        await expect(tid(hls, "chat-error")).to_have_text("That message contains a blocked term.")
        await send(hls, "a clean one")
        await expect(message(studio, "a clean one")).to_have_count(1)
        await expect(studio.locator(".chat-text", has_text="dw")).to_have_count(0)

        # ---- a report reaches the queue ----
        await act_on(rtc, said[0], "chat-report")
        await expect(tid(rtc, "chat-error")).to_have_text("Reported to the moderators. Thank you.")
        await panel.reload()
        report = tid(panel, "queue-item").filter(has_text=said[0])
        await expect(report).to_have_count(1)
        await expect(report).to_contain_text("reported by rtc_fan")
        await expect(tid(panel, "ban").filter(has_text="rtc_fan")).to_have_count(1)
        await expect(tid(panel, "log-entry")).not_to_have_count(0)
        await shots(panel, "moderation")

        # ---- the stream ends; the analytics page shows its viewer curve ----
        last: dict[str, Any] = {}

        async def sampled() -> bool:
            resp = await caster_ctx.request.get(f"{base}/api/streams/{stream_id}/analytics")
            last.update(await resp.json())
            samples = last["viewers"]["samples"]
            return any(s["webrtc"] >= 1 for s in samples) and any(s["llhls"] >= 1 for s in samples)

        await wait_for(sampled, 60, lambda: f"viewer samples of both tiers; last analytics: {last}", interval_s=1)
        # The watch pages' beacons reached it: sessions with a join time on both tiers.
        for tier in ("webrtc", "llhls"):
            assert last["qoe"][tier]["sessions"] >= 1, last["qoe"]
        assert last["qoe"]["webrtc"]["join_ms"] is not None, last["qoe"]
        # The studio shows the SFU's view of the ingest (GET /api/channels/caster/ingest).
        await expect(tid(studio, "ingest-bitrate")).to_have_text(re.compile(r"^[1-9]\d* kbps$"), timeout=15_000)
        await expect(tid(studio, "ingest-resolution")).to_have_text("640×360")
        await tid(studio, "stop").click()
        await expect(tid(studio, "state")).to_have_text("stopped")
        await studio.goto(f"{base}/studio/analytics?stream={stream_id}")
        await expect(tid(studio, "stream-state")).to_have_attribute("data-status", "ended")
        viewers = tid(studio, "chart-viewers")
        await expect(viewers).to_have_attribute("data-samples", re.compile(r"^[1-9]\d*$"))
        await expect(viewers).to_have_attribute("data-max", re.compile(r"^[1-9]\d*$"))
        await expect(tid(studio, "stat-peak")).not_to_have_text(re.compile(r"^[0–]$"))
        # Chart.js drew it: a WebRTC and an LL-HLS series, one point per sample.
        series = await studio.evaluate(
            "window.relaycastAnalytics.charts.viewers.data.datasets.map(d => [d.label, d.data])")
        assert [label for label, _ in series] == ["WebRTC", "LL-HLS"]
        assert max(series[0][1]) >= 1 and max(series[1][1]) >= 1, series
        await expect(tid(studio, "qoe-webrtc").locator("td").first).not_to_have_text("0")
        await expect(tid(studio, "stat-chat")).not_to_have_text("0")
        await shots(studio, "analytics")

        await rtc_ctx.close()
        for errors in (studio_errors, rtc_errors, hls_errors, guest_errors, panel_errors):
            assert errors.errors == []
