"""``python -m loadtest.adaptive_viewer``: what one rate-limited browser viewer gets, before and
after adaptive delivery (issue 13's before/after benchmark).

One run = the service in this process (an embedded SFU gathering on 127.0.0.1 and the
namespace's root-side address), a publisher, and Chromium's real watch page inside a network
namespace (:mod:`loadtest.netns`) whose download link is limited with ``tbf``:

* ``--mode adaptive`` (today's default): a 3-layer VP8 simulcast publisher with L1T3
  (:mod:`loadtest.simulcast_publisher`, 1280x720 / 640x360 / 320x180) and the default
  configuration — the SFU estimates the viewer's bandwidth and picks its layer;
* ``--mode single`` (before issue 13): one 1280x720 VP8 stream (aiortc's encoder, as
  ``loadtest publish``; VP8 at up to 1.5 Mbps) with ``RELAYCAST_ADAPTIVE=0`` — every viewer
  gets the whole stream, as the SFU did before.

Timeline: ``--warmup`` s unlimited, then ``--limited`` s at ``--rate`` bits/s, then
``--recover`` s unlimited again.  Chromium's ``getStats()`` (inbound-rtp video) is read every
second: decoded frames, frame size, freezes (``totalFreezesDuration``), bytes.  Printed and
returned (``--json``): per phase the decoded fps, seconds frozen, the frame sizes seen and
the received kbit/s; for ``adaptive`` also when the SFU's consumer left the top layer after the
limit (``adapt_s``) and when it was back on it after the limit was lifted (``recover_s``).
Needs root, iproute2 and Debian's ``chromium-headless-shell``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

from relaycast.service import Service
from signaling.config import SignalingConfig

from . import whip_client
from .netns import NetNs, skip_reason
from .netns_chromium import InboundVideoSampler, VideoSample, chromium_in_netns
from .simulcast_publisher import SimulcastPublisher
from .sources import PatternVideoTrack, ToneAudioTrack

STREAM_KEY = "adaptive-viewer-bench-key"


def _phase(samples: list[VideoSample], start: float, end: float) -> dict[str, Any]:
    inside = [x for x in samples if start <= x.t <= end]
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    dt = max(last.t - first.t, 1e-3)
    sizes: dict[str, int] = {}
    for x in inside[1:]:
        if x.frame_width:
            key = f"{x.frame_width}x{x.frame_height}"
            sizes[key] = sizes.get(key, 0) + 1
    return {
        "seconds": round(dt, 1),
        "fps": round((last.frames_decoded - first.frames_decoded) / dt, 1),
        "frozen_s": round(last.total_freezes_duration_s - first.total_freezes_duration_s, 2),
        "freezes": last.freeze_count - first.freeze_count,
        "kbps": round((last.bytes_received - first.bytes_received) * 8 / dt / 1000, 1),
        "sizes": sizes,
        "packets_lost": last.packets_lost - first.packets_lost,
    }


async def _single_publisher(url: str, http: Any) -> whip_client.WhipSession:
    tracks = [PatternVideoTrack(1280, 720, 30, code="capture_time"), ToneAudioTrack()]
    session = await whip_client.publish(url, STREAM_KEY, tracks, http=http)
    from . import aiortc_hooks

    for transceiver in session.pc.getTransceivers():
        if transceiver.kind == "video":
            for _ in range(100):
                if aiortc_hooks.set_encoder_target_bitrate(transceiver.sender, 1_500_000):
                    break
                await asyncio.sleep(0.1)
    return session


async def run(mode: str, rate_bps: int, warmup: float, limited: float, recover: float) -> dict[str, Any]:
    import aiohttp

    env = {"RELAYCAST_DATA_DIR": tempfile.mkdtemp(prefix="adaptive-viewer-"),
           "RELAYCAST_THUMBNAIL_INTERVAL_S": "0"}
    if mode == "single":
        env["RELAYCAST_ADAPTIVE"] = "0"
    out: dict[str, Any] = {"mode": mode, "rate_bps": rate_bps}
    async with NetNs() as ns, aiohttp.ClientSession() as http:
        config = SignalingConfig.from_env(env, host="127.0.0.1", port=0, demo_stream_key=STREAM_KEY,
                                          ice_gather=("127.0.0.1", ns.server_address))
        async with Service(config) as service:
            port = int(service.url.rsplit(":", 1)[1])
            await ns.expose_tcp(port)
            url = f"{service.url}/whip/demo"
            publisher: Any
            if mode == "adaptive":
                publisher = SimulcastPublisher(url, STREAM_KEY, width=1280, height=720, pin_loopback=False,
                                               http=http)
                await publisher.start()
            else:
                publisher = await _single_publisher(url, http)
            router = service.worker.routers["demo"]

            def spatial() -> int | None:
                viewer = next(iter(router.viewers.values()), None)
                consumer = None if viewer is None else viewer.consumers.get("video")
                layer = None if consumer is None else consumer.current_layer
                return None if layer is None or consumer.paused else layer.spatial

            try:
                async with chromium_in_netns(ns.name) as browser:
                    page = await (await browser.new_context(viewport={"width": 1600, "height": 1000})).new_page()
                    await page.goto(f"http://127.0.0.1:{port}/watch/demo")
                    sampler = InboundVideoSampler(page).start()
                    deadline = time.monotonic() + 30
                    while not (sampler.samples and (sampler.samples[-1].frames_decoded or 0) > 0):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"no video in the page: {sampler.samples[-1:]}")
                        await asyncio.sleep(0.2)
                    t0 = sampler.samples[-1].t
                    await asyncio.sleep(warmup)
                    ns.set_rate("down", rate_bps)
                    limited_at, t1 = time.monotonic(), t0 + warmup
                    adapt_s = None
                    while time.monotonic() - limited_at < limited:
                        if adapt_s is None and mode == "adaptive" and (spatial() or 0) < 2:
                            adapt_s = round(time.monotonic() - limited_at, 2)
                        await asyncio.sleep(0.05)
                    ns.clear_rate("down")
                    cleared_at, t2 = time.monotonic(), t1 + limited
                    recover_s = None
                    while time.monotonic() - cleared_at < recover:
                        if recover_s is None and mode == "adaptive" and spatial() == 2:
                            recover_s = round(time.monotonic() - cleared_at, 2)
                        await asyncio.sleep(0.05)
                    samples = await sampler.stop()
                    t3 = t2 + recover
            finally:
                if isinstance(publisher, SimulcastPublisher):
                    await publisher.stop()
                else:
                    await publisher.close(http)
    out["unlimited"] = _phase(samples, t0, t1)
    # the first 2 s of the limit are the adaptation itself: reported apart
    out["limit_first_2s"] = _phase(samples, t1, t1 + 2)
    out["limited"] = _phase(samples, t1 + 2, t2)
    out["recovered"] = _phase(samples, t2, t3)
    out["adapt_s"], out["recover_s"] = adapt_s, recover_s
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.adaptive_viewer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["adaptive", "single"], default="adaptive")
    parser.add_argument("--rate", type=int, default=800_000, help="the limited link, bits/s (default 800000)")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds unlimited first (default 8)")
    parser.add_argument("--limited", type=float, default=12.0, help="seconds at --rate (default 12)")
    parser.add_argument("--recover", type=float, default=12.0, help="seconds unlimited after (default 12)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    reason = skip_reason()
    if reason is not None:
        print(f"adaptive_viewer: {reason}", file=sys.stderr)
        return 2
    whip_client.pin_loopback()
    result = asyncio.run(run(args.mode, args.rate, args.warmup, args.limited, args.recover))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
