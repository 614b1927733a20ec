"""The LL-HLS transcoder's CPU for an RTMP stream, top rendition passed through or encoded.

Encodes a clip once with Debian's ffmpeg (1280x720, 30 fps, H.264 baseline at 2.5 Mbit/s, a
key frame every second, no scene-cut key frames, + AAC), then for each mode starts a real
``relaycast serve`` on 127.0.0.1 — default configuration (ladder 720p,480p,360p, libx264
veryfast) but ``RELAYCAST_HLS_PASSTHROUGH`` 1 (``v0`` the source's H.264, ``a0`` the
encoder's 48 kHz AAC) or 0 (every rendition encoded), and ``RELAYCAST_HLS_MIN_IDLE_CORES=0``
(on a small machine the bridge's admission would otherwise refuse to start it beside the
encoder) — has ffmpeg publish the clip over RTMP with ``-c copy -re``, asks for
``/hls/demo/index.m3u8`` once the SFU saw three key frames, and reads the transcoder
process's CPU over a window.  Usage::

    python -m loadtest.hls_passthrough_cost [--seconds 10] [--warmup 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.procstat import children, cpu_seconds
from loadtest.rtmp_ingest_cost import KEY, Serve, start_serve


async def _encode(path: Path, size: str, clip_s: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(clip_s),
        "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "baseline", "-bf", "0", "-b:v", "2500k",
        "-maxrate", "2500k", "-bufsize", "5000k", "-g", "30", "-keyint_min", "30", "-sc_threshold", "0",
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path))
    if await proc.wait() != 0:
        raise RuntimeError(f"ffmpeg could not encode {path}")


def _transcoder_pid(serve_pid: int) -> int | None:
    for pid in children(serve_pid):
        try:
            if b"transcoder_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


async def _bridge(http: aiohttp.ClientSession, serve: Serve, timeout: float = 30) -> dict[str, Any]:
    """Ask for the stream until the bridge answers; its ``/api/hls`` entry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with http.get(f"{serve.url}/hls/demo/index.m3u8", timeout=aiohttp.ClientTimeout(total=20)) as resp:
            if resp.status == 200:
                break
            if loop.time() > deadline:
                raise RuntimeError(f"no LL-HLS stream: HTTP {resp.status} {await resp.text()}")
        await asyncio.sleep(1.0)
    async with http.get(f"{serve.url}/api/hls") as resp:
        report = await resp.json()
    return next((dict(b) for b in report.get("bridges", []) if b.get("room") == "demo"), {})


async def measure(clip: Path, work: Path, passthrough: bool, seconds: float, warmup: float) -> dict[str, Any]:
    serve = await start_serve(work, KEY, RELAYCAST_HLS_PASSTHROUGH="1" if passthrough else "0",
                              RELAYCAST_HLS_MIN_IDLE_CORES="0")
    encoder = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
        "-t", str(warmup + seconds + 30), "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{serve.rtmp_port}/live/{KEY}")
    try:
        await asyncio.sleep(4)  # three key frames at the SFU: the passthrough can be planned
        async with aiohttp.ClientSession() as http:
            bridge = await _bridge(http, serve)
            pid = _transcoder_pid(serve.process.pid)
            if pid is None:
                raise RuntimeError("no transcoder process under relaycast serve")
            await asyncio.sleep(warmup)
            loop = asyncio.get_running_loop()
            t0, cpu0 = loop.time(), cpu_seconds(pid)
            await asyncio.sleep(seconds)
            cpu = (cpu_seconds(pid) - cpu0) / (loop.time() - t0)
            bridge = await _bridge(http, serve) or bridge
    finally:
        if encoder.returncode is None:
            encoder.terminate()
        await encoder.wait()
        await serve.process.stop()
    return {"transcoder_cpu_pct": round(100 * cpu, 1), "passthrough": bridge.get("passthrough"),
            "audio_passthrough": bridge.get("audio_passthrough"),
            "renditions": bridge.get("renditions"), "restarts": bridge.get("restarts")}


async def main_async(seconds: float, warmup: float, size: str = "1280x720", clip_s: float = 20.0) -> dict[str, Any]:
    """Both modes, one after the other; ``size``/``clip_s`` make a quick run."""
    with tempfile.TemporaryDirectory(prefix="hls-passthrough-") as tmp:
        work = Path(tmp)
        clip = work / "source.flv"
        await _encode(clip, size, clip_s)
        results: dict[str, Any] = {"seconds": seconds, "warmup": warmup, "size": size}
        for name, passthrough in (("passthrough", True), ("encoded", False)):
            (work / name).mkdir()
            results[name] = await measure(clip, work / name, passthrough, seconds, warmup)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        on, off = results["passthrough"]["transcoder_cpu_pct"], results["encoded"]["transcoder_cpu_pct"]
        results["ratio"] = round(on / off, 2) if off else None
        return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.hls_passthrough_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window (s)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds of LL-HLS before the window")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.seconds, args.warmup)), indent=2))


if __name__ == "__main__":
    main()
