"""The web app against the real service, in headless Chromium: two people use the platform.

A broadcaster registers, creates a stream key (shown once, with the OBS and FFmpeg
settings), sets the stream's title, category and tags and goes live from the studio with
Chromium's fake camera; the stream shows up in the directory, its category page and the
search.  A second person, in another browser context (other cookies), registers, finds
the stream, follows the channel, watches it (WebRTC) and sees the viewer count, which
the studio's ingest health shows too.  The broadcaster stops; the next time the channel
goes live the follower's bell counts the notification as it arrives (Socket.IO) and the
notifications page lists it.  Then: a page whose access cookie expired refreshes the
session itself, the profile is edited, a key is revoked, the user menu works from the
keyboard, and logging out asks for a login again.

Every page is photographed at 390 px (phone) and 1280 px (desktop) width into
/tmp/relaycast-shots/platform-*.png.
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

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(180)]

PASSWORD = "a long enough passphrase"
WIDTHS = (390, 1280)


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path]:
    video = make_counter_y4m(tmp_path / "counter.y4m", 640, 360, fps=30, frames=60)
    audio = make_tone_wav(tmp_path / "tone.wav", seconds=2, frequency=440)
    return video, audio


async def new_page(browser: Any, expected_statuses: tuple[int, ...] = ()) -> tuple[Any, PageErrors]:
    """A page in a context of its own (its own cookies), 1280 px wide."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    await context.add_init_script(CSP_REPORTER_JS)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    return page, PageErrors(page, expected_statuses)


async def shots(page: Any, name: str) -> None:
    """Full-page screenshots at each of :data:`WIDTHS`; the page ends at 1280 px."""
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 860})
        await page.screenshot(path=str(SHOTS_DIR / f"platform-{name}-{width}.png"), full_page=True)


async def register(page: Any, base: str, username: str, display_name: str) -> None:
    await page.goto(f"{base}/register")
    await tid(page, "username").fill(username)
    await tid(page, "display-name").fill(display_name)
    await tid(page, "password").fill(PASSWORD)
    await tid(page, "submit").click()
    await page.wait_for_url(f"{base}/")
    await expect(tid(page, "user-name")).to_have_text(display_name)


async def card_appears(page: Any, url: str, channel: str) -> Any:
    """Load ``url`` until a card of ``channel`` is on it (the live state lands in the
    directory when the SFU reports the room live)."""
    card = page.locator(f'[data-testid="stream-card"][data-channel="{channel}"]')

    async def shown() -> bool:
        await page.goto(url)
        await expect(tid(page, "directory-status")).not_to_have_text("Loading…")
        return await card.count() == 1

    await wait_for(shown, 20, f"{channel} on {url}", interval_s=0.5)
    return card


async def test_register_go_live_find_follow_watch_and_get_notified(service, clip) -> None:
    base = service.url
    async with chromium(chromium_args(*clip)) as browser:
        studio, studio_errors = await new_page(browser)
        # 409: WHEP before the publisher is up; 401: the expired access cookie, then refreshed.
        fan, fan_errors = await new_page(browser, expected_statuses=(409, 401))

        # ---- the broadcaster: register, a stream key, stream info, go live ----
        await register(studio, base, "caster", "Caster")
        await shots(studio, "home-empty")
        await studio.goto(f"{base}/studio")
        await expect(tid(studio, "room")).to_have_text("caster")
        await wait_for_js(studio, "document.querySelector('[data-testid=preview]').videoWidth > 0")
        await tid(studio, "key-label").fill("OBS at home")
        await tid(studio, "create-key").click()
        await expect(tid(studio, "new-key")).to_be_visible()
        key = await tid(studio, "new-key-value").text_content()
        assert re.fullmatch(r"sk_\S{16,}", key or ""), key
        await expect(tid(studio, "obs-server")).to_have_text(f"{base}/whip/caster")
        await expect(tid(studio, "obs-token")).to_have_text(key)
        await expect(tid(studio, "ffmpeg-command")).to_contain_text(
            f'-f whip -authorization "{key}" {base}/whip/caster')
        await expect(tid(studio, "key-row")).to_have_count(1)
        await expect(tid(studio, "key-row")).to_contain_text("OBS at home")
        await expect(tid(studio, "key-row")).not_to_contain_text(key)  # shown once only
        await shots(studio, "studio-new-key")
        await tid(studio, "hide-key").click()
        await expect(tid(studio, "new-key")).to_be_hidden()
        assert key not in await studio.content()

        await tid(studio, "title").fill("Retro speedrun marathon")
        await tid(studio, "category").select_option("gaming")
        await tid(studio, "tags").fill("speedrun, retro")
        await tid(studio, "resolution").select_option("360p")
        await tid(studio, "go-live").click()
        await expect(tid(studio, "state")).to_have_text("live")
        await expect(tid(studio, "health-bitrate")).to_have_text(re.compile(r"^[1-9]\d* kbps$"))
        await expect(tid(studio, "health-resolution")).to_have_text("640×360")
        await expect(tid(studio, "health-fps")).to_have_text(re.compile(r"^[1-9]\d*$"))
        # The browser's own key ("Browser studio") joined the list.
        await expect(tid(studio, "key-row")).to_have_count(2)

        # ---- the stream in the directory, its category and the search ----
        await register(fan, base, "fan_one", "Fan One")
        card = await card_appears(fan, f"{base}/", "caster")
        await expect(card.locator('[data-testid="stream-title"]')).to_contain_text(
            "Retro speedrun marathon")
        await expect(card).to_contain_text("Caster")
        await expect(card).to_contain_text("Gaming")
        await expect(card.locator('[data-testid="stream-viewers"]')).to_have_text(
            re.compile(r"^\d+ watching$"))
        await shots(fan, "home-live")
        await fan.locator('[data-testid="category-chip"][data-slug="gaming"]').click()
        await fan.wait_for_url(f"{base}/category/gaming")
        await expect(card).to_have_count(1)
        await shots(fan, "category")
        await tid(fan, "search-input").fill("speedrun")
        await tid(fan, "search-input").press("Enter")
        await fan.wait_for_url(f"{base}/search?q=speedrun")
        await expect(card).to_have_count(1)
        await shots(fan, "search")

        # ---- the fan follows and watches; both pages count the viewer ----
        await card.locator('[data-testid="stream-title"]').click()
        await fan.wait_for_url(f"{base}/watch/caster")
        await expect(tid(fan, "stream-title")).to_have_text("Retro speedrun marathon")
        await expect(tid(fan, "state")).to_have_text("playing", timeout=30_000)
        await wait_for_js(fan, "document.querySelector('[data-testid=video]').videoWidth > 0")
        await expect(tid(fan, "followers")).to_have_text("0")
        await tid(fan, "follow").click()
        await expect(tid(fan, "follow")).to_have_attribute("aria-pressed", "true")
        await expect(tid(fan, "followers")).to_have_text("1")
        await expect(tid(fan, "viewers")).to_have_text("1")
        await expect(tid(studio, "viewers")).to_have_text("1")
        await shots(fan, "watch-live")
        await shots(studio, "studio-live")
        # Still followed after a reload (GET /api/users/me/following).
        await fan.reload()
        await expect(tid(fan, "follow")).to_have_attribute("aria-pressed", "true")

        # ---- the broadcaster stops; the fan waits on the home page ----
        await tid(studio, "stop").click()
        await expect(tid(studio, "state")).to_have_text("stopped")
        await fan.goto(f"{base}/")
        await expect(tid(fan, "unread-count")).to_be_hidden()

        async def gone() -> bool:
            await fan.reload()
            await expect(tid(fan, "directory-status")).not_to_have_text("Loading…")
            return await tid(fan, "stream-card").count() == 0

        await wait_for(gone, 20, "the ended stream to leave the directory", interval_s=0.5)

        # ---- live again: the fan's bell counts it as it arrives ----
        await tid(studio, "go-live").click()
        await expect(tid(studio, "state")).to_have_text("live")
        await expect(tid(fan, "unread-count")).to_have_text("1", timeout=20_000)
        await expect(tid(fan, "stream-card")).to_have_count(1)  # the directory heard it too
        await shots(fan, "home-notified")
        await tid(fan, "bell").click()
        await fan.wait_for_url(f"{base}/notifications")
        note = tid(fan, "notification")
        await expect(note).to_have_count(1)
        await expect(note).to_contain_text("Caster")
        await expect(note.locator("a")).to_have_attribute("href", "/watch/caster")
        await shots(fan, "notifications")
        await tid(fan, "mark-all-read").click()
        await expect(tid(fan, "unread-count")).to_be_hidden()
        await expect(note).not_to_have_class(re.compile("unread"))

        # ---- an expired access cookie: the page refreshes the session by itself ----
        await fan.context.clear_cookies(name="rc_access")
        await fan.goto(f"{base}/settings")
        await expect(tid(fan, "display-name")).to_have_value("Fan One")
        assert fan.url == f"{base}/settings"
        assert "rc_access" in {c["name"] for c in await fan.context.cookies()}
        await expect(tid(fan, "display-name")).to_have_value("Fan One")
        await tid(fan, "bio").fill("Here for the speedruns.")
        await tid(fan, "save-profile").click()
        await expect(tid(fan, "profile-result")).to_have_text("Profile saved.")
        await shots(fan, "settings")
        await tid(studio, "stop").click()
        await expect(tid(studio, "state")).to_have_text("stopped")

        # ---- revoking a key (after a confirmation) ----
        studio.once("dialog", lambda dialog: dialog.accept())
        obs_row = tid(studio, "key-row").filter(has_text="OBS at home")
        await obs_row.locator('[data-testid="revoke-key"]').click()
        await expect(obs_row).to_have_count(0)
        await expect(tid(studio, "key-row")).to_have_count(1)  # the browser's own

        # ---- the user menu from the keyboard; logging out: a login is needed again ----
        menu = tid(fan, "user-menu")
        await menu.locator("summary").focus()
        await fan.keyboard.press("Enter")
        await expect(menu).to_have_attribute("open", "")
        await fan.keyboard.press("Escape")
        await expect(menu).not_to_have_attribute("open", "")
        await expect(menu.locator("summary")).to_be_focused()
        await fan.keyboard.press("Enter")
        await tid(fan, "logout").click()
        await fan.wait_for_url(f"{base}/")
        await expect(tid(fan, "nav-login")).to_be_visible()
        await shots(fan, "home-visitor")
        await fan.goto(f"{base}/login")
        await shots(fan, "login")
        await fan.goto(f"{base}/register")
        await shots(fan, "register")
        await fan.goto(f"{base}/studio")
        await fan.wait_for_url(f"{base}/login?next=%2Fstudio")

        assert studio_errors.errors == []
        assert fan_errors.errors == []
