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

from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from loadtest.chromium import WEBRTC_ARGS
from tests.polling import wait_for

CHROMIUM = Path("/usr/lib/chromium/chromium-headless-shell")

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"Debian chromium-headless-shell not found at {CHROMIUM}"
    ),
]
"""The marks of a test that drives Debian's headless Chromium: ``pytestmark =
[*BROWSER_MARKS, pytest.mark.timeout(S)]``."""
SHOTS_DIR = Path("/tmp/relaycast-shots")

BASE_ARGS = WEBRTC_ARGS


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
    expects are passed in ``expected_statuses`` and ignored, and so is the refusal to
    run a script answered with such an error (an RFC 9457 problem+json body under
    ``X-Content-Type-Options: nosniff``).
    """

    def __init__(self, page: Any, expected_statuses: Sequence[int] = ()) -> None:
        self.errors: list[str] = []
        self._expected = [f"status of {s} " for s in expected_statuses]
        if expected_statuses:
            self._expected.append("MIME type ('application/problem+json') is not executable")
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _on_console(self, msg: Any) -> None:
        if msg.type == "error" and not any(e in msg.text for e in self._expected):
            self.errors.append(f"console: {msg.text}")


# Content Security Policy violations as console errors, which PageErrors collects
# (Chromium logs most of them itself; this also names the directive and the blocked URL).
CSP_REPORTER_JS = """
document.addEventListener('securitypolicyviolation', (e) => {
  console.error(`CSP violation: ${e.effectiveDirective} blocked ${e.blockedURI || 'inline'}`);
});
"""


async def open_page(
    browser: Any, url: str, expected_statuses: Sequence[int] = (), *, timeout_ms: int = 20_000
):
    """New context + page at ``url`` (1280x860); returns ``(page, PageErrors)``.

    Content Security Policy violations are reported as errors (:data:`CSP_REPORTER_JS`).
    """
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    await context.add_init_script(CSP_REPORTER_JS)
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    errors = PageErrors(page, expected_statuses)
    await page.goto(url)
    return page, errors


def tid(page: Any, testid: str):
    """Locator for ``[data-testid=testid]``."""
    return page.locator(f'[data-testid="{testid}"]')


async def wait_for_js(
    page: Any, expression: str, arg: Any = None, *, timeout: float = 20_000
) -> Any:
    """Wait until the JavaScript ``expression`` (or function of ``arg``) is truthy in
    ``page``; returns its value.  ``timeout`` in ms.

    Use it instead of ``page.wait_for_function``, which compiles its predicate with
    ``new Function`` inside the page and so fails under the pages' Content Security
    Policy (no ``'unsafe-eval'``); ``page.evaluate`` goes through the DevTools protocol,
    which the policy does not govern.
    """
    return await wait_for(lambda: page.evaluate(expression, arg), timeout / 1000,
                          f"{expression} in {page.url}")


async def enter_stream_key(page: Any, key: str) -> None:
    """Type ``key`` into the broadcast page's stream-key field, as a person does (the page
    keeps it in sessionStorage; it never reads a key from the URL)."""
    await tid(page, "stream-key").fill(key)


async def screenshot(page: Any, name: str) -> Path:
    """Full-page PNG at /tmp/relaycast-shots/{name}.png."""
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    path = SHOTS_DIR / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


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

    :raises tests.polling.WaitTimeout: not within ``timeout`` seconds.
    """
    last: dict[str, Any] | None = None

    async def holds() -> dict[str, Any] | None:
        nonlocal last
        last = await page_stats(page)
        return last if last is not None and predicate(last) else None

    return await wait_for(holds, timeout, lambda: f"{what}; last stats: {last}", interval_s=0.2)
