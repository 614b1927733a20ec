"""LL-HLS latency: capture time drawn in the frames vs. when a player has them.

``python -m loadtest hls-latency --seconds 20 [--edge] [--browser]``

Starts ``relaycast serve`` (its LL-HLS bridge mounted at /hls/) and a WHIP publisher of
the capture-time pattern (`loadtest.sources.PatternVideoTrack` draws ``time.time()`` in
ms into every frame), optionally a real nginx edge (`loadtest.nginx_edge`), and then
measures, per frame of the top rendition:

- **player**: `loadtest.llhls_player.LlhlsPlayer` follows the live edge with blocking
  playlist reload and preload hints; latency = the wall-clock time the part holding the
  frame was fully received − the capture time decoded from the frame (parts are kept in
  memory during the run and decoded with PyAV afterwards, so decoding does not delay
  the player);
- **hls.js** (``--browser``): hls.js 1.7 with ``lowLatencyMode`` and hls.js's own
  catch-up up to 1.5× (``--hls-config``; the watch page and a stock hls.js are measured
  by ``loadtest hlsjs-latency``) in headless Chromium plays the multivariant
  playlist pinned to one rendition (``--level``); after ``--warmup`` seconds of
  playback (start-up is not measured) a ``requestVideoFrameCallback``
  copies the code strip of every 3rd frame presented (with the presentation time,
  ``performance.timeOrigin + expectedDisplayTime``); latency = that time − the capture
  time read from the strip.

Both clocks are this machine's wall clock.  Output: p50/p95/max per measure, a JSON
report in ``--out``.  Bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np

from .chromium import CHROMIUM
from .fanout import ROOM, PublisherProcess, SfuProcess
from .llhls_player import LlhlsPlayer, PartRecord
from .pattern import code_to_capture_time, read_code
from .procstat import cpu_seconds, machine_cpu_seconds
from .report import ms_percentiles

__all__ = ["decode_part_latencies", "main"]



def decode_part_latencies(init: bytes, parts: list[tuple[PartRecord, bytes]]) -> list[float]:
    """Latency (s) of every decodable frame: its part's ``received`` − its capture time.

    ``parts`` in playlist order, starting with an independent part.  init + parts are one
    fragmented MP4 stream; a packet belongs to the part whose byte range holds its
    position.
    """
    data = bytearray(init)
    ranges: list[tuple[int, PartRecord]] = []
    for record, body in parts:
        ranges.append((len(data), record))
        data += body
    starts = [start for start, _ in ranges]
    latencies: list[float] = []
    with av.open(io.BytesIO(bytes(data)), format="mp4") as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pos is None or packet.pos < 0:
                continue
            index = int(np.searchsorted(starts, packet.pos, side="right")) - 1
            if index < 0:
                continue
            record = ranges[index][1]
            for frame in packet.decode():
                code = read_code(frame)
                if code is not None:
                    latencies.append(record.received - code_to_capture_time(code, record.received))
    return latencies


HLSJS_CONFIG: dict[str, Any] = {"lowLatencyMode": True, "liveDurationInfinity": True,
                                "backBufferLength": 30, "maxLiveSyncPlaybackRate": 1.5}
"""The hls.js settings measured by default: low-latency mode, hls.js's catch-up on."""

# hls.js page: pinned to the top level; samples the code strip of every 3rd frame.
_PAGE = """<!doctype html><meta charset="utf-8"><title>hls.js latency</title>
<video id="v" muted autoplay playsinline></video>
<script src="/static/vendor/hls.min.js"></script>
<script>
window.samples = []; window.sampling = false; window.state = {errors: []};
const video = document.getElementById('v');
const hls = window.hls = new Hls(HLS_CONFIG);
hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
  // levels ascend by bitrate: "top" pins the top rung, "bottom" the lowest, "auto" = ABR
  if (LEVEL !== 'auto') hls.currentLevel = LEVEL === 'top' ? data.levels.length - 1 : 0;
  video.play().catch(e => window.state.errors.push(String(e)));
});
hls.on(Hls.Events.ERROR, (_, d) => {
  const b = video.buffered, end = b.length ? b.end(b.length - 1) : 0;
  window.state.errors.push((d.fatal ? 'fatal ' : '') + d.details + ' at ' +
    (performance.now() / 1000).toFixed(1) + ' s, media ' + video.currentTime.toFixed(2) +
    ' buffered to ' + end.toFixed(2) + ' latency ' + (hls.latency || 0).toFixed(2));
});
hls.loadSource(URL_PLACEHOLDER);
hls.attachMedia(video);
const canvas = document.createElement('canvas');
const ctx = canvas.getContext('2d', {willReadFrequently: true});
let n = 0;
function onFrame(now, meta) {
  if (window.sampling && n++ % 3 === 0 && window.samples.length < 600 && video.videoWidth) {
    // The code layout is relative to the width: read it from a 448 px wide copy of the
    // strip (16 px blocks) to keep the page's own CPU use small.
    const vw = video.videoWidth, vh = Math.ceil(2 * vw / 28) + 2;
    const w = 448, h = Math.ceil(2 * w / 28) + 2;
    canvas.width = w; canvas.height = h;
    ctx.drawImage(video, 0, 0, vw, vh, 0, 0, w, h);
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const luma = new Uint8Array(w * h);
    for (let i = 0, j = 0; i < luma.length; i++, j += 4)
      luma[i] = (0.299 * rgba[j] + 0.587 * rgba[j + 1] + 0.114 * rgba[j + 2]) | 0;
    let bin = ''; for (let i = 0; i < luma.length; i++) bin += String.fromCharCode(luma[i]);
    window.samples.push({t: performance.timeOrigin + meta.expectedDisplayTime, w, h,
                         level: hls.currentLevel, data: btoa(bin)});
  }
  video.requestVideoFrameCallback(onFrame);
}
video.requestVideoFrameCallback(onFrame);
</script>"""


async def run_browser(
    base_url: str, playlist_url: str, seconds: float, hls_config: dict[str, Any],
    warmup: float = 5.0, level: str = "top",
) -> dict[str, Any]:
    """hls.js in headless Chromium: ``warmup`` seconds of playback (start-up and hls.js's
    catch-up, not measured), then ``seconds`` measured; latencies (s) of frames shown."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else None,
            args=["--autoplay-policy=no-user-gesture-required"])
        try:
            page = await browser.new_page()
            await page.goto(f"{base_url}/healthz")
            await page.set_content(_PAGE.replace("URL_PLACEHOLDER", json.dumps(playlist_url))
                                   .replace("HLS_CONFIG", json.dumps(hls_config))
                                   .replace("LEVEL", json.dumps(level)))
            await asyncio.sleep(warmup)
            await page.evaluate("window.samples.length = 0; window.sampling = true")
            await asyncio.sleep(seconds)
            samples = await page.evaluate("window.samples")
            state = await page.evaluate(
                "({errors: window.state.errors, currentTime: document.getElementById('v').currentTime,"
                " targetLatency: window.hls.targetLatency, latency: window.hls.latency,"
                " drift: window.hls.drift, playbackRate: document.getElementById('v').playbackRate})")
        finally:
            await browser.close()
    latencies = []
    for sample in samples:
        luma = np.frombuffer(base64.b64decode(sample["data"]), dtype=np.uint8)
        code = read_code(luma.reshape(sample["h"], sample["w"]))
        if code is not None:
            t = sample["t"] / 1000.0
            latencies.append(t - code_to_capture_time(code, t))
    return {"samples": len(samples), "read": len(latencies), "latencies": latencies, **state}


@dataclass
class _Captured:
    init: dict[str, bytes]
    parts: dict[str, list[tuple[PartRecord, bytes]]]


async def run_player(playlist_url: str, seconds: float) -> tuple[LlhlsPlayer, list[float]]:
    captured = _Captured({}, {})

    def on_init(rendition: str, data: bytes) -> None:
        captured.init[rendition] = data

    def on_part(record: PartRecord, data: bytes) -> None:
        captured.parts.setdefault(record.rendition, []).append((record, data))

    player = LlhlsPlayer(playlist_url, variant=0, duration=seconds, on_init=on_init, on_part=on_part)
    await player.run()
    latencies: list[float] = []
    for rendition, parts in captured.parts.items():
        live = [(r, d) for r, d in parts if not r.catchup]
        first = next((i for i, (r, _) in enumerate(live) if r.independent), None)
        if first is None or rendition not in captured.init:
            continue
        latencies += await asyncio.to_thread(
            decode_part_latencies, captured.init[rendition], live[first:])
    return player, latencies


async def bridge_report(base_url: str) -> dict[str, Any] | None:
    """The room's bridge entry of ``GET /api/hls`` (encoder, cpu, realtime_factor, ...)."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/api/hls") as resp:
        body = await resp.json()
    return next((b for b in body.get("bridges", []) if b.get("room") == ROOM), None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update({"RELAYCAST_HLS_LADDER": args.ladder, "RELAYCAST_HLS_PART_S": str(args.part_s),
                       "RELAYCAST_HLS_SEGMENT_S": str(args.segment_s)})
    clock_offset = time.time() - time.monotonic()
    sfu = SfuProcess("forward", out / "serve.log")
    await sfu.start()
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items() if k != "func"}}
    edge = None
    publisher: PublisherProcess | None = None
    try:
        width, _, height = args.size.partition("x")
        opts = SimpleNamespace(width=int(width), height=int(height), fps=args.fps, bitrate=args.bitrate)
        publisher = PublisherProcess(f"{sfu.url}/whip/{ROOM}", sfu.key, opts,  # type: ignore[arg-type]
                                     out / "publisher.log")
        await publisher.start()
        base = sfu.url
        if args.edge:
            from .nginx_edge import NginxEdge
            edge = NginxEdge(sfu.url, out / "edge")
            await edge.start()
            base = edge.url
        playlist = f"{base}/hls/{ROOM}/index.m3u8"
        # Start the bridge and let it settle (first playlist, encoder warm-up).
        warm = LlhlsPlayer(playlist, duration=args.warmup, max_parts=10_000)
        await warm.run()
        print(f"bridge up: {len(warm.records)} parts in {args.warmup:g} s warm-up", flush=True)

        cpu0, wall0 = machine_cpu_seconds(), time.monotonic()
        serve0 = cpu_seconds(sfu.pid)
        player, latencies = await run_player(playlist, args.seconds)
        wall = time.monotonic() - wall0
        report["cpu_cores"] = {"machine": round((machine_cpu_seconds() - cpu0) / wall, 2),
                               "serve": round((cpu_seconds(sfu.pid) - serve0) / wall, 2)}
        report["bridge_after_player"] = await bridge_report(sfu.url)
        print(f"CPU during the player window: {report['cpu_cores']} cores; bridge "
              f"{report['bridge_after_player']}", flush=True)
        report["player"] = {
            "frames": ms_percentiles(latencies), "parts": len(player.records),
            "part_latency_pdt": ms_percentiles([r.latency for r in player.records
                                             if r.latency is not None and not r.catchup]),
            "errors": len(player.errors), "resyncs": player.resyncs,
        }
        print(f"player (blocking reload): frames {report['player']['frames']}", flush=True)
        if args.browser:
            hls_config = json.loads(args.hls_config)
            cpu0, wall0 = machine_cpu_seconds(), time.monotonic()
            result = await run_browser(base, playlist, args.seconds, hls_config,
                                       warmup=args.warmup, level=args.level)
            browser_cpu = round((machine_cpu_seconds() - cpu0) / (time.monotonic() - wall0), 2)
            report["bridge_after_browser"] = await bridge_report(sfu.url)
            print(f"machine CPU with the browser: {browser_cpu} cores; bridge "
                  f"{report['bridge_after_browser']}", flush=True)
            report["hlsjs"] = {"frames": ms_percentiles(result["latencies"]), "machine_cpu": browser_cpu,
                               "samples": result["samples"],
                               "read": result["read"], "errors": result["errors"],
                               "current_time": result["currentTime"], "hls_config": hls_config,
                               **{k: result.get(k) for k in ("targetLatency", "latency", "drift",
                                                             "playbackRate")}}
            print(f"hls.js: frames {report['hlsjs']['frames']} ({result['read']}/{result['samples']} "
                  f"samples read; errors {result['errors']})", flush=True)
    finally:
        if publisher is not None:
            await publisher.stop()
        if edge is not None:
            await edge.stop()
        await sfu.stop()
    step = time.time() - time.monotonic() - clock_offset
    report["wall_clock_step_s"] = round(step, 3)
    if abs(step) > 0.05:
        print(f"WARNING: the wall clock was stepped by {step:+.3f} s during the run: "
              "latencies mixing both sides of the step are wrong; run again", flush=True)
    (out / "hls_latency.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'hls_latency.json'}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of playback before measuring (default 5)")
    parser.add_argument("--size", default="1280x720", help="publisher WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--bitrate", type=int, default=1_500_000, help="publisher VP8 bps (default 1500000)")
    parser.add_argument("--ladder", default="720p,480p,360p", help="RELAYCAST_HLS_LADDER (default 720p,480p,360p)")
    parser.add_argument("--part-s", type=float, default=0.2, help="part target, s (default 0.2)")
    parser.add_argument("--segment-s", type=float, default=1.0, help="segment target, s (default 1.0)")
    parser.add_argument("--edge", action="store_true", help="play through a real nginx edge")
    parser.add_argument("--browser", action="store_true", help="also measure hls.js in headless Chromium")
    parser.add_argument("--level", choices=["top", "bottom", "auto"], default="top",
                        help="hls.js rendition: top rung, bottom rung or ABR (default top)")
    parser.add_argument("--hls-config", default=json.dumps(HLSJS_CONFIG),
                        help=f"hls.js config, JSON (default {json.dumps(HLSJS_CONFIG)})")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/hls-latency"))


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    asyncio.run(run(args))
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0
