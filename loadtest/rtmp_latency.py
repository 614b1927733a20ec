"""Glass-to-glass latency RTMP → WHEP against WHIP → WHEP, in one run.

A real ``relaycast serve`` (default configuration, RTMP on a free port) on 127.0.0.1 and
one aiortc WHEP viewer in this process that decodes every frame and reads the capture time
drawn into it (:mod:`loadtest.pattern`).  Publishers, one after the other, 640x360 at 30 fps
with the same x264 settings (veryfast, zerolatency, baseline, ``-g 60``, 800 kbit/s):

* ``whip``: FFmpeg's own WHIP muxer (:class:`loadtest.ffmpeg_whip.FfmpegWhipProcess`);
* ``rtmp``: Debian's ffmpeg, fed raw frames drawn here, publishing over RTMP (passthrough);
* ``rtmp-bframes``: the same with High profile and 2 B-frames (transcoded in the ingest
  process).

g2g = the viewer's wall clock when a frame is decoded − the capture time in the frame.
Usage::

    python -m loadtest.rtmp_latency [--seconds 10]
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


async def _rtmp_publisher(url: str, seconds: float, *profile: str) -> None:
    """Raw frames with capture-time codes, drawn here at 30 fps, into Debian's ffmpeg → RTMP."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p",
        "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0", *X264, *profile, "-f", "flv", url,
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


CASES = ("whip", "rtmp", "rtmp-bframes")


async def main_async(seconds: float, cases: tuple[str, ...] = CASES) -> dict[str, Any]:
    """Each case of ``cases`` in turn (see the module docstring); their g2g summaries."""
    whip_client.pin_loopback()
    with tempfile.TemporaryDirectory(prefix="rtmp-latency-") as tmp:
        serve, base, rtmp_port = await start_serve(Path(tmp), KEY)
        rtmp = f"rtmp://127.0.0.1:{rtmp_port}/live/{KEY}"
        results: dict[str, Any] = {"seconds": seconds, "size": f"{WIDTH}x{HEIGHT}", "fps": FPS}
        try:
            for case in cases:
                length = seconds + 12
                if case == "whip":
                    publisher: Any = await FfmpegWhipProcess.start(f"{base}/whip/demo", KEY, length, WIDTH, HEIGHT,
                                                                   FPS, "capture_time")
                    task = asyncio.ensure_future(publisher.wait(length + 30))
                else:
                    profile = ["-profile:v", "baseline", "-bf", "0"] if case == "rtmp" else \
                        ["-profile:v", "high", "-bf", "2"]
                    task = asyncio.ensure_future(_rtmp_publisher(rtmp, length, *profile))
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
            await serve.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.rtmp_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="viewing window per publisher (s)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.seconds)), indent=2))


if __name__ == "__main__":
    main()
