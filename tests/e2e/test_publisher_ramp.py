"""A Chromium publisher reaches its camera's resolution soon after going live.

The broadcast page publishes Chromium's fake 1280x720 camera over WHIP to the real
service.  The WHIP answer must negotiate transport-cc (rtcp-fb and the transport-wide
sequence number extmap, draft-holmer-rmcat-transport-wide-cc-extensions-01) for video
and audio, the SFU must send transport feedback for the sequence numbers Chromium
stamps, and Chromium's outbound video must reach 1280x720 within :data:`RAMP_BOUND_S`.

Measured on loopback (docs/benchmarks.md, ``python -m loadtest publisher-ramp``): before
transport-cc the publisher needed ~28 s (its estimate grew from 300 kbps by ~8 % a
second on receiver reports alone); now the estimate is at 2.5 Mbps at once, and the
encoder's first frames are 1280x720 or, when Chromium starts below it, step up every
~4 s — 0.1 to 8.2 s seen, median ~2 s.  The bound leaves room for that and still fails
without the change.
"""

from __future__ import annotations

import pytest

from loadtest.publisher_ramp import TWCC_URI, go_live_and_measure
from sfu import aiortc_private
from tests.e2e.browser import BROWSER_MARKS, chromium, chromium_args, open_page
from tests.polling import wait_for
from tests.services import STREAM_KEY

pytest.importorskip("playwright.async_api")

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(90)]

RAMP_BOUND_S = 15.0
"""Seconds from the WHIP 201 to 1280x720 frames (see the module docstring)."""


async def test_chromium_publisher_reaches_720p_with_transport_cc(service) -> None:
    async with chromium(chromium_args()) as browser:  # the fake camera's own pattern
        page, errors = await open_page(browser, f"{service.url}/broadcast/demo")
        result = await go_live_and_measure(page, service.url, "demo", STREAM_KEY, (1280, 720),
                                           timeout_s=RAMP_BOUND_S, viewer=False, stop=False)
        ramp = [(s.t_s, s.frame_width, s.available_outgoing_bps) for s in result.samples]
        print(f"1280x720 at {result.publisher_full_s or float('nan'):.2f} s after the WHIP 201; "
              f"(t, width, availableOutgoingBitrate): {ramp[:3]} ... {ramp[-1:]}")

        sections = {part.split(" ", 1)[0]: part for part in result.answer.split("\nm=")[1:]}
        for kind in ("video", "audio"):
            assert " transport-cc" in sections[kind], sections[kind]
            assert TWCC_URI in sections[kind], sections[kind]

        # The SFU heard Chromium's transport-wide sequence numbers and reported them.
        publisher = service.worker.routers["demo"].publisher
        assert publisher is not None
        feedback = aiortc_private.transport_feedback(publisher.pc.getTransceivers()[0].receiver)
        assert feedback is not None
        await wait_for(lambda: feedback.sent > 0, 5, "the SFU to send transport feedback")

        assert result.publisher_full_s is not None, (
            f"no 1280x720 frame within {RAMP_BOUND_S} s: {ramp}")
        await page.locator('[data-testid="stop"]').click()
        assert errors.errors == []
