"""Publisher ramp-up: how long a Chromium publisher takes to send its full camera resolution.

``python -m loadtest publisher-ramp --runs 3 [--compare]``

Starts the service (signaling + embedded SFU) on 127.0.0.1 and headless Chromium with
its fake camera at ``--size`` (1280x720 by default).  Each run opens the broadcast
page, goes live over WHIP, and from the WHIP ``201 Created`` on samples the page's
``getStats()`` every 100 ms (outbound-rtp ``frameWidth``/``frameHeight``,
``targetBitrate``, ``qualityLimitationReason``; the selected candidate pair's
``availableOutgoingBitrate``) while an aiortc WHEP viewer decodes the forwarded video.
It reports, per run, the time from the 201 to the publisher's first outbound frame at
full size and to the viewer's first decoded frame at full size, and whether the WHIP
answer negotiated transport-cc (draft-holmer-rmcat-transport-wide-cc-extensions-01).
``--compare`` alternates with publishes answered as without transport-cc (the SFU's
``negotiate_transport_cc`` switched off in this process), the baseline on the same
machine at the same time.  Results go to ``--out``/publisher_ramp.json.

The same helpers drive tests/e2e/test_publisher_ramp.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import whip_client
from .chromium import CHROMIUM, WEBRTC_ARGS

__all__ = ["RampResult", "RampSample", "add_arguments", "go_live_and_measure", "main"]

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RESOLUTION_CHOICE = {(640, 360): "360p", (1280, 720): "720p", (1920, 1080): "1080p"}

# The publisher's video sender as getStats() reports it (the broadcast page exposes its
# peer connection as window.__relaycast.pc); with simulcast, its largest stream.
SENDER_STATS_JS = """
async () => {
  const pc = window.__relaycast?.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  let out = null, pairId = null;
  for (const s of report.values()) {
    if (s.type === 'outbound-rtp' && s.kind === 'video'
        && (!out || (s.frameWidth ?? 0) > (out.frameWidth ?? 0))) out = s;
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  }
  const pair = pairId ? report.get(pairId) : null;
  return {
    frameWidth: out?.frameWidth ?? 0, frameHeight: out?.frameHeight ?? 0,
    targetBitrate: out?.targetBitrate ?? null,
    qualityLimitationReason: out?.qualityLimitationReason ?? null,
    availableOutgoingBitrate: pair?.availableOutgoingBitrate ?? null,
  };
}
"""


@dataclass
class RampSample:
    """One getStats() sample; ``t_s`` is seconds after the WHIP 201, bitrates in bps."""

    t_s: float
    frame_width: int
    frame_height: int
    target_bitrate_bps: float | None
    available_outgoing_bps: float | None
    limitation: str | None


@dataclass
class RampResult:
    """One publish.  Times are seconds after the WHIP ``201 Created`` (``None``: not
    reached within the run's timeout)."""

    answer: str = field(repr=False)
    transport_cc: bool
    connected_s: float | None = None
    publisher_full_s: float | None = None
    viewer_full_s: float | None = None
    samples: list[RampSample] = field(default_factory=list, repr=False)


def answer_has_transport_cc(answer: str) -> bool:
    """The SDP answer's video section carries ``a=rtcp-fb:<pt> transport-cc`` and the
    transport-wide sequence number extmap (draft-holmer-rmcat-transport-wide-cc-extensions-01)."""
    for section in answer.split("\nm=")[1:]:
        if section.startswith("video"):
            return " transport-cc" in section and TWCC_URI in section
    return False


SUSTAINED_FRAMES = 30
"""Frames in a row at full size that count as "at full size" at the viewer: Chromium may
encode its first frames at the camera's size and then drop below it for seconds."""


async def _viewer_first_full(url: str, width: int, height: int, started: float,
                             timeout_s: float) -> float | None:
    """WHEP-view ``url`` with aiortc and decode until :data:`SUSTAINED_FRAMES` frames in a
    row are ``width``x``height``: the first one's arrival in seconds after ``started``
    (monotonic), or ``None`` after ``timeout_s``."""
    session = await whip_client.view(url, kinds=("video",))
    try:
        track = next(t.receiver.track for t in session.pc.getTransceivers() if t.kind == "video")
        deadline = started + timeout_s
        run_started: float | None = None
        run = 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(track.recv(), left)
            except TimeoutError:
                return None
            if frame.width >= width and frame.height >= height:
                if run == 0:
                    run_started = time.monotonic() - started
                run += 1
                if run >= SUSTAINED_FRAMES:
                    return run_started
            else:
                run = 0
        return None
    finally:
        await session.close()


async def go_live_and_measure(
    page: Any,
    base_url: str,
    room: str,
    key: str,
    size: tuple[int, int] = (1280, 720),
    *,
    timeout_s: float = 30.0,
    viewer: bool = True,
    stop: bool = True,
) -> RampResult:
    """On an open broadcast page (``{base_url}/broadcast/{room}``): choose the resolution,
    go live with ``key``, and sample until the publisher sends ``size`` (and, with
    ``viewer``, an aiortc WHEP viewer decodes it) or ``timeout_s`` passes.  With ``stop``,
    stops the broadcast before returning.

    :raises RuntimeError: the WHIP POST was not answered ``201 Created``.
    """
    width, height = size
    await page.locator('[data-testid="stream-key"]').fill(key)
    await page.locator('[data-testid="resolution"]').select_option(
        RESOLUTION_CHOICE.get(size, "720p"))
    async with page.expect_response(
        lambda r: r.request.method == "POST" and "/whip/" in r.url, timeout=20_000
    ) as posted:
        await page.locator('[data-testid="go-live"]').click()
    response = await posted.value
    started = time.monotonic()
    if response.status != 201:
        raise RuntimeError(f"WHIP POST answered {response.status}: {await response.text()}")
    answer = await response.text()
    result = RampResult(answer=answer, transport_cc=answer_has_transport_cc(answer))
    viewer_task = (asyncio.ensure_future(_viewer_first_full(
        f"{base_url}/whep/{room}", width, height, started, timeout_s)) if viewer else None)
    try:
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            stats = await page.evaluate(SENDER_STATS_JS)
            now = time.monotonic() - started
            if stats is not None:
                result.samples.append(RampSample(
                    round(now, 3), stats["frameWidth"], stats["frameHeight"],
                    stats["targetBitrate"], stats["availableOutgoingBitrate"],
                    stats["qualityLimitationReason"]))
                if result.connected_s is None and stats["availableOutgoingBitrate"] is not None:
                    result.connected_s = now
                if (result.publisher_full_s is None and stats["frameWidth"] >= width
                        and stats["frameHeight"] >= height):
                    result.publisher_full_s = now
            if result.publisher_full_s is not None and (
                    viewer_task is None or viewer_task.done()):
                break
            await asyncio.sleep(0.1)
        if viewer_task is not None:
            result.viewer_full_s = await asyncio.wait_for(
                viewer_task, max(0.1, deadline - time.monotonic()) + 5)
    finally:
        if viewer_task is not None and not viewer_task.done():
            viewer_task.cancel()
        button = page.locator('[data-testid="stop"]')
        if stop and await button.is_enabled():
            await button.click()
    return result


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from relaycast.service import Service
    from sfu import router as sfu_router
    from signaling.config import SignalingConfig

    whip_client.pin_loopback()
    key = "sk_publisher_ramp_bench_0123456789"
    config = SignalingConfig.from_env({}, host="127.0.0.1", port=0, demo_stream_key=key,
                                      ice_gather=("127.0.0.1",))
    results: list[RampResult] = []
    baseline: list[bool] = []
    answer_transport_cc = sfu_router.negotiate_transport_cc
    async with Service(config) as svc, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=list(WEBRTC_ARGS))
        try:
            for n in range(args.runs * (2 if args.compare else 1)):
                room = "demo"  # the service's one room
                # --compare: every other publish is answered as without transport-cc.
                without = args.compare and n % 2 == 0
                sfu_router.negotiate_transport_cc = (  # type: ignore[assignment]
                    (lambda pc, transceiver: False) if without else answer_transport_cc)
                baseline.append(without)
                context = await browser.new_context()
                page = await context.new_page()
                await page.goto(f"{svc.url}/broadcast/{room}")
                result = await go_live_and_measure(page, svc.url, room, key, args.size,
                                                   timeout_s=args.timeout, viewer=True)
                await context.close()
                results.append(result)
                print(f"run {n + 1}: transport-cc {'yes' if result.transport_cc else 'no'}, "
                      f"connected {_fmt(result.connected_s)} s, publisher "
                      f"{args.size[0]}x{args.size[1]} at {_fmt(result.publisher_full_s)} s, "
                      f"viewer at {_fmt(result.viewer_full_s)} s after the WHIP 201", flush=True)
        finally:
            sfu_router.negotiate_transport_cc = answer_transport_cc  # type: ignore[assignment]
            await browser.close()

    def median(values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return statistics.median(got) if len(got) == len(values) and got else None

    report: dict[str, Any] = {"size": list(args.size), "timeout_s": args.timeout}
    for label, picked in (("without_transport_cc", True), ("with_transport_cc", False)):
        runs = [r for r, b in zip(results, baseline, strict=True) if b == picked]
        if not runs:
            continue
        report[label] = {
            "transport_cc": [r.transport_cc for r in runs],
            "publisher_full_s": [r.publisher_full_s for r in runs],
            "viewer_full_s": [r.viewer_full_s for r in runs],
            "median_publisher_full_s": median([r.publisher_full_s for r in runs]),
            "median_viewer_full_s": median([r.viewer_full_s for r in runs]),
            "runs": [{k: v for k, v in asdict(r).items() if k != "answer"} for r in runs],
        }
        print(f"{label.replace('_', ' ')}: median publisher "
              f"{_fmt(report[label]['median_publisher_full_s'])} s, viewer "
              f"{_fmt(report[label]['median_viewer_full_s'])} s (— = a run timed out)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "publisher_ramp.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'publisher_ramp.json'}")
    return report


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if size not in RESOLUTION_CHOICE:
        raise argparse.ArgumentTypeError(
            "the broadcast page offers " + ", ".join(f"{w}x{h}" for w, h in RESOLUTION_CHOICE))
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="publishes, one after another (default 3)")
    parser.add_argument("--timeout", type=float, default=45.0,
                        help="seconds after the WHIP 201 before a run gives up (default 45)")
    parser.add_argument("--size", type=_size, default=(1280, 720),
                        help="camera resolution: 640x360, 1280x720 or 1920x1080 (default 1280x720)")
    parser.add_argument("--compare", action="store_true",
                        help="alternate with publishes answered without transport-cc (the "
                             "baseline), --runs of each, in the same process")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results"), help="results folder")


def main(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.timeout <= 0:
        raise SystemExit("--runs must be >= 1 and --timeout > 0")
    asyncio.run(run(args))
    return 0
