"""Driving Debian's headless Chromium with Playwright for the end-to-end tests.

Never ``playwright install``: Playwright is pointed at the distribution binary
(``apt-get install chromium-headless-shell``).  Pages must be served from
http://127.0.0.1 (getUserMedia needs a secure context, and loopback counts).

Fake capture devices: ``--use-file-for-fake-video-capture=FILE.y4m`` and
``--use-file-for-fake-audio-capture=FILE.wav`` make getUserMedia play those
files in a loop (see :mod:`loadtest.clips`).  ``--allow-loopback-in-peer-connection``
and mDNS off (``WebRtcHideLocalIpsWithMdns``) let ICE work over 127.0.0.1 with a
server that only offers loopback candidates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/lib/chromium/chromium-headless-shell")
SHOTS_DIR = Path("/tmp/relaycast-shots")

BASE_ARGS = (
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)


def chromium_args(video: Path | None = None, audio: Path | None = None) -> list[str]:
    """Launch flags; ``video``/``audio`` are y4m/wav files for the fake devices."""
    args = list(BASE_ARGS)
    if video is not None:
        args.append(f"--use-file-for-fake-video-capture={video}")
    if audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={audio}")
    return args


@asynccontextmanager
async def chromium(args: Sequence[str]):  # -> AsyncIterator[Browser]
    """``async with chromium(args) as browser``: headless Chromium, closed on exit."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=list(args), headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors:
    """Console errors and uncaught exceptions of a page.

    Chromium logs every non-2xx fetch as a console error; statuses a test
    expects are passed in ``expected_statuses`` and ignored.
    """

    def __init__(self, page: Any, expected_statuses: Sequence[int] = ()) -> None:
        self.errors: list[str] = []
        self._expected = [f"status of {s} " for s in expected_statuses]
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _on_console(self, msg: Any) -> None:
        if msg.type == "error" and not any(e in msg.text for e in self._expected):
            self.errors.append(f"console: {msg.text}")


async def open_page(
    browser: Any, url: str, expected_statuses: Sequence[int] = (), *, timeout_ms: int = 20_000
):
    """New context + page at ``url`` (1280x860); returns ``(page, PageErrors)``."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    errors = PageErrors(page, expected_statuses)
    await page.goto(url)
    return page, errors


def tid(page: Any, testid: str):
    """Locator for ``[data-testid=testid]``."""
    return page.locator(f'[data-testid="{testid}"]')


async def screenshot(page: Any, name: str) -> Path:
    """Full-page PNG at /tmp/relaycast-shots/{name}.png."""
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    path = SHOTS_DIR / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a Python-side condition (state with no event to await) until true or ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# JavaScript run in the page: a getStats() summary of the page's peer connection
# (exposed by the pages as window.__relaycast.pc).
PAGE_STATS_JS = """
async () => {
  const pc = window.__relaycast?.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  const out = { inbound: {}, outbound: {}, remoteAddresses: [], selectedRemote: null,
                selectedLocal: null, codecs: {} };
  let pairId = null;
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  }
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp') out.inbound[s.kind] = s;
    if (s.type === 'outbound-rtp') out.outbound[s.kind] = s;
    if (s.type === 'remote-candidate') out.remoteAddresses.push(s.address);
    if (s.type === 'codec') out.codecs[s.id] = s.mimeType;
  }
  const pair = pairId && report.get(pairId);
  if (pair) {
    out.selectedRemote = report.get(pair.remoteCandidateId)?.address ?? null;
    out.selectedLocal = report.get(pair.localCandidateId)?.address ?? null;
  }
  return JSON.parse(JSON.stringify(out));
}
"""


async def page_stats(page: Any) -> dict[str, Any] | None:
    """:data:`PAGE_STATS_JS` evaluated in ``page``; ``None`` while there is no session."""
    return await page.evaluate(PAGE_STATS_JS)


async def wait_for_page_stats(
    page: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    """Poll :func:`page_stats` until ``predicate(stats)`` holds; returns those stats.

    (``page.wait_for_function`` cannot do this: it treats the Promise an async
    predicate returns as truthy and returns at once.)
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while True:
        last = await page_stats(page)
        if last is not None and predicate(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last stats: {last}")
        await asyncio.sleep(0.2)
