"""LL-HLS latency in hls.js: ``EXT-X-PROGRAM-DATE-TIME`` of the frame on screen vs. now.

``python -m loadtest hlsjs-latency [--player stock|watch|both] [--seconds 30]``

Starts ``relaycast serve`` (LL-HLS bridge at /hls/) and a WHIP publisher of the
synthetic pattern (`loadtest.fanout.PublisherProcess`), then opens, in headless
Chromium (Playwright), one of two players on ``/hls/{room}/index.m3u8``:

- **stock**: a minimal page with the npm hls.js (``web/node_modules/hls.js/dist/
  hls.min.js``, served by the service at ``/static/vendor/hls.min.js``) and its default
  configuration plus ``lowLatencyMode: true`` (``--hls-config`` overrides it), ABR on;
- **watch**: relaycast's own watch page, ``/watch/{room}?path=hls`` (its hls.js config,
  catch-up and live-sync jump).

Each player is measured twice on the same service (``--starts``): **cold** — the page's
first request starts the room's bridge (what the first viewer of a room sees), then
**warm** — a new page joins the running bridge; ``--runs`` repeats that on a fresh
service and publisher, and the samples of all runs are also pooled.  From the moment
the video plays (``currentTime`` > 0, checked every 20 ms), every 250 ms for
``--seconds`` seconds, the page records ``Date.now() − hls.playingDate``
(ms; the bridge stamps media time 0 with the wall clock at which the first frame reached
it, so this is bridge ingest → screen, on this machine's one clock).  Also counted:
hls.js ``ERROR`` events by ``details`` (``levelEmptyError``, ``bufferStalledError``...),
the time from page load to ``playing`` (s), and hls.js's ``targetLatency`` (s) at the
end, and the bridge's real-time factor from ``/api/hls`` (below 1: the transcoder fell
behind, so every player's latency grew; a loaded machine, not the player).  Output:
p50/p95/max per run and pooled, and a JSON report in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .chromium import CHROMIUM
from .fanout import ROOM, PublisherProcess, SfuProcess
from .report import percentile

__all__ = ["STOCK_CONFIG", "measure_page", "main", "stock_page", "summarize"]

SAMPLE_MS = 250
STOCK_CONFIG: dict[str, Any] = {"lowLatencyMode": True}
"""A stock hls.js: its defaults plus low-latency mode."""

# Records latency samples from the first "playing" event and every hls.js ERROR event.
# getHls/getVideo are expressions evaluated on every tick: the watch page creates its
# Hls instance late (and a new one on each retry).
_PROBE = """
(() => {
  const probe = window.latencyProbe = {
    loadedAt: performance.now(), playingAt: null, samples: [], errors: [], until: null};
  const seen = new WeakSet();
  const tick = () => {
    const hls = GET_HLS, video = GET_VIDEO;
    if (hls && !seen.has(hls) && window.Hls) {
      seen.add(hls);
      hls.on(window.Hls.Events.ERROR, (_e, d) => probe.errors.push({
        details: d.details, fatal: d.fatal, code: d.response ? d.response.code : null,
        t: (performance.now() - probe.loadedAt) / 1000,
        media: video ? video.currentTime : null}));
    }
    if (video && probe.playingAt === null && !video.paused && video.currentTime > 0) {
      probe.playingAt = (performance.now() - probe.loadedAt) / 1000;
      probe.until = performance.now() + SECONDS * 1000;
      probe.sample = setInterval(() => {
        const h = GET_HLS, v = GET_VIDEO, date = h && h.playingDate;
        if (performance.now() > probe.until) { clearInterval(probe.sample); probe.done = true; }
        if (!h || !v || !date || !Number.isFinite(date.getTime())) return;
        probe.samples.push({ms: Date.now() - date.getTime(), target: h.targetLatency,
                            edge: h.latency, rate: v.playbackRate, level: h.currentLevel,
                            paused: v.paused});
      }, SAMPLE_MS);
    }
  };
  probe.poll = setInterval(tick, 20);
})();
"""


def probe_script(get_hls: str, get_video: str, seconds: float) -> str:
    """The probe for a page whose Hls instance is ``get_hls`` (a JS expression)."""
    return (_PROBE.replace("GET_HLS", f"({get_hls})").replace("GET_VIDEO", f"({get_video})")
            .replace("SECONDS", repr(float(seconds))).replace("SAMPLE_MS", str(SAMPLE_MS)))


def stock_page(playlist_url: str, hls_config: dict[str, Any], seconds: float) -> str:
    """A minimal page: hls.js with ``hls_config`` on ``playlist_url``, muted autoplay."""
    probe = probe_script("window.hls", "document.getElementById('v')", seconds)
    return f"""<!doctype html><meta charset="utf-8"><title>stock hls.js</title>
<video id="v" muted autoplay playsinline></video>
<script src="/static/vendor/hls.min.js"></script>
<script>
const video = document.getElementById('v');
const hls = window.hls = new Hls({json.dumps(hls_config)});
{probe}
hls.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {{}}));
hls.loadSource({json.dumps(playlist_url)});
hls.attachMedia(video);
</script>"""


async def measure_page(browser: Any, base_url: str, player: str, seconds: float,
                       hls_config: dict[str, Any], start_timeout: float = 30.0,
                       console: list[str] | None = None, room: str = ROOM) -> dict[str, Any]:
    """Open ``player`` ("stock" | "watch") on ``room`` in a new context and record ``seconds`` of
    playback; returns the probe's record (``samples`` [{ms, target, ...}], ``errors``,
    ``playingAt`` s after load, or None if it never played within ``start_timeout``);
    ``console``, when given, collects the page's console lines (hls.js ``debug`` logs)."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        if console is not None:
            t0 = time.monotonic()
            page.on("console", lambda msg: console.append(f"{time.monotonic() - t0:7.3f} {msg.text}"))
        if player == "watch":
            await context.add_init_script(probe_script(
                "window.relaycastWatch && window.relaycastWatch.hls",
                "document.querySelector('[data-testid=video]')", seconds))
            await page.goto(f"{base_url}/watch/{room}?path=hls")
        else:
            await page.goto(f"{base_url}/healthz")
            await page.set_content(stock_page(f"{base_url}/hls/{room}/index.m3u8", hls_config, seconds))
        deadline = time.monotonic() + start_timeout + seconds + 5
        while time.monotonic() < deadline:
            probe = await page.evaluate("({playingAt: window.latencyProbe.playingAt,"
                                        " done: !!window.latencyProbe.done})")
            if probe["done"] or (probe["playingAt"] is None
                                 and time.monotonic() > deadline - seconds - 5):
                break
            await asyncio.sleep(0.25)
        return await page.evaluate("window.latencyProbe")
    finally:
        await context.close()


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """p50/p95/max of the latency samples (s), error counts by ``details``, start-up."""
    values = sorted(s["ms"] / 1000 for s in record.get("samples", []) if not s.get("paused"))
    errors = Counter(e["details"] for e in record.get("errors", []))
    targets = [s["target"] for s in record.get("samples", []) if s.get("target") is not None]
    summary: dict[str, Any] = {
        "samples": len(values),
        "playing_after_s": None if record.get("playingAt") is None else round(record["playingAt"], 2),
        "errors": dict(errors),
        "target_latency_end_s": round(targets[-1], 2) if targets else None,
    }
    if values:
        summary.update(p50_s=round(percentile(values, 50), 3), p95_s=round(percentile(values, 95), 3),
                       max_s=round(values[-1], 3))
    return summary


async def bridge_report(base_url: str) -> dict[str, Any] | None:
    """The room's bridge entry of ``GET /api/hls`` (encoder, cpu, realtime_factor...)."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/api/hls") as resp:
        body = await resp.json()
    return next((b for b in body.get("bridges", []) if b.get("room") == ROOM), None)


def browser_command(out: Path, nice: int) -> str | None:
    """Debian's headless Chromium (None: Playwright's own), run under ``nice`` when
    ``nice`` > 0 through a wrapper script written to ``out``."""
    binary = CHROMIUM if os.path.exists(CHROMIUM) else None
    if nice <= 0 or binary is None:
        return binary
    wrapper = out / "chromium-nice.sh"
    wrapper.write_text(f'#!/bin/sh\nexec nice -n {int(nice)} {binary} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


async def start_bridge(base_url: str, settle_s: float = 3.0) -> None:
    """Start the room's bridge with a request for its multivariant playlist, then let it
    run ``settle_s`` seconds."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/hls/{ROOM}/index.m3u8") as resp:
            await resp.read()
    await asyncio.sleep(settle_s)


async def run_player(args: argparse.Namespace, player: str, out: Path, run: int) -> dict[str, Any]:
    """One service + publisher; the ``player`` page for each of ``args.starts`` (cold:
    its first request starts the bridge; warm: it joins the running bridge)."""
    from playwright.async_api import async_playwright

    sfu = SfuProcess("forward", out / f"serve-{player}-{run}.log")
    await sfu.start()
    publisher: PublisherProcess | None = None
    result: dict[str, Any] = {}
    try:
        width, _, height = args.size.partition("x")
        opts = SimpleNamespace(width=int(width), height=int(height), fps=args.fps, bitrate=args.bitrate)
        publisher = PublisherProcess(f"{sfu.url}/whip/{ROOM}", sfu.key, opts,  # type: ignore[arg-type]
                                     out / f"publisher-{player}-{run}.log")
        await publisher.start()
        hls_config = json.loads(args.hls_config)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=browser_command(out, args.browser_nice),
                args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
            try:
                for start in args.starts.split(","):
                    if start == "warm" and not result:
                        await start_bridge(sfu.url)
                    console: list[str] | None = [] if args.console else None
                    record = await measure_page(browser, sfu.url, player, args.seconds, hls_config,
                                                console=console)
                    if console is not None:
                        (out / f"console-{player}-{start}-{run}.log").write_text("\n".join(console))
                    summary = summarize(record)
                    bridge = await bridge_report(sfu.url)
                    summary["bridge_realtime_factor"] = (bridge or {}).get("realtime_factor")
                    result[start] = {"summary": summary, "record": record, "bridge": bridge}
                    print(f"{player} hls.js, {start} start, run {run}: {json.dumps(summary)}", flush=True)
            finally:
                await browser.close()
    finally:
        if publisher is not None:
            await publisher.stop()
        await sfu.stop()
    return result


def pooled(results: list[dict[str, Any]], start: str) -> dict[str, Any]:
    """All runs' samples of one start kind together, plus each run's p50 (s)."""
    records = [r[start]["record"] for r in results if start in r]
    merged = {"samples": [s for rec in records for s in rec.get("samples", [])],
              "errors": [e for rec in records for e in rec.get("errors", [])]}
    summary = summarize(merged)
    summary.pop("playing_after_s", None)
    summary.pop("target_latency_end_s", None)
    summary["runs"] = len(records)
    summary["run_p50_s"] = [r[start]["summary"].get("p50_s") for r in results if start in r]
    summary["playing_after_s"] = [r[start]["summary"]["playing_after_s"] for r in results if start in r]
    return summary


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update({"RELAYCAST_HLS_LADDER": args.ladder})
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items() if k != "run"},
                              "runs": {}, "pooled": {}}
    players = ["stock", "watch"] if args.player == "both" else [args.player]
    for player in players:
        results = report["runs"][player] = []
        for index in range(args.runs):
            results.append(await run_player(args, player, out, index))
            (out / "hlsjs_latency.json").write_text(json.dumps(report, indent=2))
        for start in args.starts.split(","):
            summary = report["pooled"][f"{player}/{start}"] = pooled(results, start)
            print(f"== {player} hls.js, {start} start, {args.runs} run(s) pooled: "
                  f"{json.dumps(summary)}", flush=True)
    (out / "hlsjs_latency.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'hlsjs_latency.json'}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--player", choices=["stock", "watch", "both"], default="both",
                        help="stock hls.js page, relaycast's watch page, or both (default both)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="sampling window after playback starts, s (default 30)")
    parser.add_argument("--runs", type=int, default=1,
                        help="fresh service + publisher per run and player (default 1)")
    parser.add_argument("--starts", default="cold,warm", choices=["cold,warm", "cold", "warm"],
                        help="cold: the page starts the bridge; warm: joins it (default cold,warm)")
    parser.add_argument("--size", default="1280x720", help="publisher WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--bitrate", type=int, default=1_500_000, help="publisher VP8 bps (default 1500000)")
    parser.add_argument("--ladder", default="720p,480p,360p",
                        help="RELAYCAST_HLS_LADDER (default 720p,480p,360p)")
    parser.add_argument("--hls-config", default=json.dumps(STOCK_CONFIG),
                        help=f"the stock page's hls.js config, JSON (default {json.dumps(STOCK_CONFIG)})")
    parser.add_argument("--browser-nice", type=int, default=0, metavar="N",
                        help="run Chromium under nice -n N: on one machine the player otherwise "
                             "takes CPU from the service it measures, which a viewer's browser "
                             "elsewhere does not (default 0)")
    parser.add_argument("--console", action="store_true",
                        help="save each page's console (e.g. with hls.js \"debug\": true) in --out")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/hlsjs-latency"))


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    asyncio.run(run(args))
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0
