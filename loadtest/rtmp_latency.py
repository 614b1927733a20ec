"""Glass-to-glass latency RTMP → WHEP and SRT → WHEP against WHIP → WHEP, in one run.

A real ``relaycast serve`` (default configuration, RTMP on a free port) on 127.0.0.1 and
one aiortc WHEP viewer in this process that decodes every frame and reads the capture time
drawn into it (:mod:`loadtest.pattern`).  Publishers, one after the other, 640x360 at 30 fps
with the same x264 settings (veryfast, zerolatency, baseline, ``-g 60``, 800 kbit/s):

* ``whip``: FFmpeg's own WHIP muxer (:class:`loadtest.ffmpeg_whip.FfmpegWhipProcess`);
* ``rtmp``: Debian's ffmpeg, fed raw frames drawn here, publishing over RTMP (passthrough);
* ``srt``: the same publishing MPEG-TS over SRT (libsrt's default 120 ms receiver latency);
* ``rtmp-bframes``: the same with High profile and 2 B-frames (transcoded in the ingest
  process).

g2g = the viewer's wall clock when a frame is decoded − the capture time in the frame.
Usage::

    python -m loadtest.rtmp_latency [--seconds 10] [--cases whip,rtmp,srt,rtmp-bframes] [--srt-latency-ms 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import whip_client
from loadtest.ffmpeg_whip import FfmpegWhipProcess, _video_frame
from loadtest.pattern import MovingBackground, capture_time_code, code_to_capture_time, read_code
from loadtest.rtmp_ingest_cost import start_serve

KEY = "sk_latency_" + "l" * 24
WIDTH, HEIGHT, FPS = 640, 360, 30
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-b:v", "800k", "-g", "60"]


async def _ffmpeg_publisher(url: str, seconds: float, *profile: str) -> None:
    """Raw frames with capture-time codes, drawn here at 30 fps, into Debian's ffmpeg → RTMP
    (FLV) or SRT (MPEG-TS), by ``url``'s scheme."""
    muxer = "mpegts" if url.startswith("srt:") else "flv"
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p",
        "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0", *X264, *profile, "-f", muxer, url,
        stdin=asyncio.subprocess.PIPE)
    assert proc.stdin is not None
    background = MovingBackground(WIDTH, HEIGHT)
    start = time.monotonic()
    try:
        for index in range(int(seconds * FPS)):
            await asyncio.sleep(max(0.0, start + index / FPS - time.monotonic()))
            frame = _video_frame(background, index, capture_time_code(time.time()))
            proc.stdin.write(frame.to_ndarray().tobytes())
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        proc.stdin.close()
        await proc.wait()


async def _view(base: str, seconds: float) -> list[float]:
    """g2g samples (ms) of one WHEP viewer over ``seconds`` (after its first frame)."""
    session = await whip_client.view(f"{base}/whep/demo", kinds=("video",))
    samples: list[float] = []
    try:
        await whip_client.wait_connected(session.pc)
        track = next(t.receiver.track for t in session.pc.getTransceivers() if t.kind == "video")
        await asyncio.wait_for(track.recv(), 15)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame = await asyncio.wait_for(track.recv(), 5)
            code = read_code(frame)
            if code is not None:
                now = time.time()
                samples.append(1000 * (now - code_to_capture_time(code, now)))
    finally:
        await session.close()
    return samples


async def _wait_publisher(base: str, timeout: float = 20) -> None:
    """Until a WHEP POST is not refused for want of a publisher (409)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            session = await whip_client.view(f"{base}/whep/demo", kinds=("video",))
        except whip_client.WhipError as exc:
            if exc.status != 409 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        await session.close()
        return


def _summary(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"frames": 0}
    ordered = sorted(samples)
    return {"frames": len(samples), "g2g_p50_ms": round(statistics.median(ordered), 1),
            "g2g_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1), "g2g_min_ms": round(ordered[0], 1)}


CASES = ("whip", "rtmp", "srt", "rtmp-bframes")


async def main_async(seconds: float, cases: tuple[str, ...] = CASES, srt_latency_ms: int | None = None) -> dict[str, Any]:
    """Each case of ``cases`` in turn (see the module docstring); their g2g summaries.
    ``srt_latency_ms`` sets ``RELAYCAST_SRT_LATENCY_MS`` (default: libsrt's 120 ms)."""
    whip_client.pin_loopback()
    with tempfile.TemporaryDirectory(prefix="rtmp-latency-") as tmp:
        env = {"RELAYCAST_SRT_LATENCY_MS": str(srt_latency_ms)} if srt_latency_ms else {}
        serve = await start_serve(Path(tmp), KEY, **env)
        base = serve.url
        rtmp = f"rtmp://127.0.0.1:{serve.rtmp_port}/live/{KEY}"
        results: dict[str, Any] = {"seconds": seconds, "size": f"{WIDTH}x{HEIGHT}", "fps": FPS,
                                   "srt_latency_ms": srt_latency_ms or 120}
        try:
            for case in cases:
                length = seconds + 12
                if case == "whip":
                    publisher: Any = await FfmpegWhipProcess.start(f"{base}/whip/demo", KEY, length, WIDTH, HEIGHT,
                                                                   FPS, "capture_time")
                    task = asyncio.ensure_future(publisher.wait(length + 30))
                else:
                    profile = ["-profile:v", "high", "-bf", "2"] if case == "rtmp-bframes" else \
                        ["-profile:v", "baseline", "-bf", "0"]
                    url = serve.srt_url(KEY) if case == "srt" else rtmp
                    task = asyncio.ensure_future(_ffmpeg_publisher(url, length, *profile))
                await _wait_publisher(base)
                await asyncio.sleep(2)  # past the first key frame and any start-up queue
                results[case] = _summary(await _view(base, seconds))
                print(f"{case}: {json.dumps(results[case])}", flush=True)
                if case == "whip":
                    await publisher.stop()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                await asyncio.sleep(3)  # the session ends before the next publisher
        finally:
            await serve.process.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.rtmp_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="viewing window per publisher (s)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--srt-latency-ms", type=int, default=None,
                        help="the service's SRT receiver latency (RELAYCAST_SRT_LATENCY_MS; default 120)")
    args = parser.parse_args()
    cases = tuple(c for c in args.cases.split(",") if c)
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    print(json.dumps(asyncio.run(main_async(args.seconds, cases, args.srt_latency_ms)), indent=2))


if __name__ == "__main__":
    main()
