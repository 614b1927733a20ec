"""The studio tells the broadcaster what the ingest advises and how many frames it dropped:
the real service and headless Chromium.  An encoder publishes as the RTMP/SRT ingest
republishes one (``POST /whip`` with the stream key, an aiortc publisher) and its session is
given the ingest's B-frame advice (``PATCH`` ``{"advice"}``, docs/whip-whep.md), then its
count of dropped video frames alone (``PATCH`` ``{"dropped_frames"}``, as the ingest sends it
every few seconds); the owner's studio shows the advice as a warning line with the server's
ingest health and the count among its figures, and drops both once a new session (the
encoder reconnecting) replaces that one.

Screenshots at 390 px (phone) and 1280 px (desktop) width land in
/tmp/relaycast-shots/studio-advice-*.png (the server's figures folded) and
/tmp/relaycast-shots/studio-dropped-*.png (unfolded, with the count).
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
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

pytest.importorskip("playwright.async_api")
from playwright.async_api import expect  # noqa: E402

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(120)]

ADVICE = "set bframes=0 / profile baseline for lower latency and no transcoding"
SHOWN = ("Your encoder sends B-frames, so relaycast transcodes the video for WebRTC viewers: "
         "set bframes=0 / profile baseline for lower latency and no transcoding.")
PASSWORD = "a long enough passphrase"
WIDTHS = (390, 1280)
POLL_MS = 15_000
"""The studio reads the ingest every 5 s: three rounds."""


async def shots(page: Any, name: str) -> None:
    """Full-page screenshots at each of :data:`WIDTHS`, none wider than the viewport."""
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 860})
        await wait_for_js(page, "document.documentElement.scrollWidth <= innerWidth", timeout=5_000)
        await page.screenshot(path=str(SHOTS_DIR / f"{name}-{width}.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 860})


async def register_with_a_key(context: Any, base: str, username: str) -> str:
    """Register ``username`` in ``context`` (its cookies log the pages in) and create a stream
    key of the user's channel, as the studio's key form does.  :returns: the key."""
    web = {"X-Relaycast-Client": "web"}
    resp = await context.request.post(f"{base}/api/users/register", headers=web,
                                      data={"username": username, "password": PASSWORD})
    assert resp.status == 201, await resp.text()
    csrf = next(c["value"] for c in await context.cookies() if c["name"] == "rc_csrf")
    resp = await context.request.post(f"{base}/api/channels/{username}/keys",
                                      headers={**web, "X-CSRF-Token": csrf}, data={"label": "OBS"})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["key"]


async def publish(base: str, key: str) -> whip_client.WhipSession:
    session = await whip_client.publish(f"{base}/whip", key, [PatternVideoTrack(640, 360, 30)])
    await whip_client.wait_connected(session.pc)
    return session


async def patch_session(location: str, key: str, body: dict[str, Any]) -> None:
    """``PATCH`` of the encoder's WHIP session with ``body``, as the ingest sends it."""
    async with aiohttp.ClientSession() as http:
        async with http.patch(location, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 204, await resp.text()


async def test_the_studio_shows_the_ingest_advice_and_dropped_frames_until_a_new_session(
        service) -> None:
    base = service.url
    replaced = None
    async with chromium(chromium_args()) as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        await context.add_init_script(CSP_REPORTER_JS)
        key = await register_with_a_key(context, base, "caster")
        encoder = await publish(base, key)
        try:
            await patch_session(encoder.location, key, {"advice": ADVICE})
            page = await context.new_page()
            page.set_default_timeout(20_000)
            errors = PageErrors(page)
            await page.goto(f"{base}/studio")
            await expect(tid(page, "room")).to_have_text("caster")

            advice = tid(page, "ingest-advice")
            await expect(advice).to_have_text(SHOWN, timeout=POLL_MS)
            await expect(advice).to_be_visible()  # outside the collapsed server-health details
            assert await page.evaluate(
                "!document.querySelector('[data-testid=server-health]').open")
            await expect(advice).to_have_attribute("role", "status")
            await expect(tid(page, "ingest-resolution")).to_have_text("640×360", timeout=POLL_MS)
            dropped = tid(page, "ingest-dropped")
            await expect(dropped).to_have_text("–")  # read, but no count reported yet
            await shots(page, "studio-advice")

            # The ingest's count, alone: it shows among the server's figures, the advice stays.
            await patch_session(encoder.location, key, {"dropped_frames": 1234})
            await tid(page, "server-health").locator("summary").click()
            await expect(dropped).to_be_visible()
            await expect(dropped).to_have_text("1,234", timeout=POLL_MS)
            await expect(dropped.locator("xpath=preceding-sibling::dt")).to_have_text("Dropped frames")
            await expect(advice).to_have_text(SHOWN)
            await expect(tid(page, "ingest-loss")).not_to_have_text("–")  # the SFU's own figures
            await shots(page, "studio-dropped")
            await patch_session(encoder.location, key, {"dropped_frames": 0})
            await expect(dropped).to_have_text("0", timeout=POLL_MS)  # counted, none dropped

            # The encoder reconnects: a new session, without advice or count; both go.
            replaced = await publish(base, key)
            await expect(advice).to_be_hidden(timeout=POLL_MS)
            await expect(advice).to_have_text("")
            await expect(dropped).to_have_text("–")
            # ... while the channel is live and its ingest is read: not for want of a sample.
            await expect(tid(page, "ingest-state")).to_have_text(re.compile(r"^\(at "))
            await expect(tid(page, "ingest-resolution")).to_have_text("640×360")
            assert errors.errors == []
        finally:
            await encoder.close()
            if replaced is not None:
                await replaced.close()
