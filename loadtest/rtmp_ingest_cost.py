"""CPU per RTMP (and SRT) ingest: what the service spends to take in one RTMP or SRT stream,
against what it spends on the same stream as a WHIP publisher.

Starts a real ``relaycast serve`` (default configuration, the LL-HLS bridge allowed to run,
RTMP on a free port) on 127.0.0.1, encodes a test clip once with Debian's ffmpeg (1280x720,
30 fps, ~2.5 Mbit/s H.264 + AAC: baseline without B-frames for the passthrough case, High
with 2 B-frames — OBS's x264 default — for the transcode case), then has ffmpeg publish it
over RTMP (and the baseline clip over SRT as MPEG-TS) with ``-c copy -re`` and reads, over a window, the CPU seconds of

* the forwarding process (``relaycast serve``: it receives the stream as the WHIP publisher
  the ingest process makes of it — what any WHIP publisher of that stream costs it), and
* the ingest process (``python -m ingest.main``: RTMP, AAC → Opus, the H.264 passthrough or
  the transcode).

Each case runs without a viewer — the service then pauses the relay's Opus (RFC 7728), which
is not encoded — and the RTMP and SRT passthrough cases again with one WebRTC viewer (a
WHEP session that counts the packets without decoding them), against FFmpeg's WHIP muxer
with one such viewer.

Two ratios per case: ``ratio_to_whip`` = (forwarding + ingest) / forwarding — the ingest's
cost in what that same stream costs the forwarding process (which also receives the relay's
AAC section, a WHIP publisher's does not) — and ``ratio_to_whip_publisher`` = (forwarding +
ingest) / the forwarding process's CPU for a real WHIP publisher of the same size, rate,
bitrate and key-frame interval, measured in the same run (FFmpeg's own WHIP muxer,
:mod:`loadtest.ffmpeg_whip`, H.264 + Opus, encoding live in a process of its own).  The
encoders (ffmpeg) and the bridge's transcoder are not counted.  Usage::

    python -m loadtest.rtmp_ingest_cost [--seconds 10] [--warmup 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from loadtest.cluster_procs import RelaycastProcess, free_port
from loadtest.ffmpeg_whip import FfmpegWhipProcess
from loadtest.procstat import children, cpu_seconds
from loadtest.subscriber import LightSubscriber

KEY = "sk_cost_" + "c" * 24
FIRST_VIDEO_TIMEOUT_S = 10.0
"""How long a viewer may wait for its first video packet (the next key frame), s."""


async def _encode(path: Path, size: str, clip_s: float, *video: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(clip_s),
        "-c:v", "libx264", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "5000k", "-g", "60", *video,
        "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path))
    if await proc.wait() != 0:
        raise RuntimeError(f"ffmpeg could not encode {path}")


@dataclass(frozen=True)
class Serve:
    """A started ``relaycast serve``: the process, its base URL, its RTMP and SRT ports."""

    process: RelaycastProcess
    url: str
    rtmp_port: int
    srt_port: int

    def srt_url(self, key: str) -> str:
        return f"srt://127.0.0.1:{self.srt_port}?streamid=#!::r=demo,m=publish,s={key}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_serve(work: Path, key: str, **env_vars: str) -> Serve:
    """A ``relaycast serve`` on 127.0.0.1 with its data in ``work``, RTMP and SRT on free
    ports, demo room key ``key`` and ``env_vars`` set; returned once it printed its URLs."""
    rtmp_port, srt_port = free_port(), free_udp_port()
    env = dict(os.environ, RELAYCAST_RTMP_PORT=str(rtmp_port), RELAYCAST_SRT_PORT=str(srt_port),
               RELAYCAST_ICE_GATHER="127.0.0.1", RELAYCAST_DATA_DIR=str(work / "data"), **env_vars)
    serve = RelaycastProcess("relaycast serve", work / "serve.log")
    port = free_port()
    await serve.launch(["--log-level", "warning", "serve", "--host", "127.0.0.1", "--port", str(port),
                        "--stream-key", key], env, lambda line: "RTMP:" in line, timeout=60)
    return Serve(serve, f"http://127.0.0.1:{port}", rtmp_port, srt_port)


def _ingest_pid(serve_pid: int) -> int:
    for pid in children(serve_pid):
        try:
            if b"ingest.main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise RuntimeError("no ingest process under relaycast serve")


@contextlib.asynccontextmanager
async def _viewer(serve: Serve, watch: bool) -> AsyncIterator[None]:
    """With ``watch``, one WebRTC viewer of the room for the block: a WHEP session that takes
    video and audio and counts the packets without decoding them
    (:class:`loadtest.subscriber.LightSubscriber`), so its own CPU stays small."""
    if not watch:
        yield
        return
    async with aiohttp.ClientSession() as http:
        viewer = LightSubscriber(0, decode=False)
        await viewer.join(f"{serve.url}/whep/demo", http, fast=True)
        try:
            # A new viewer's video starts at the source's next key frame (the clip's GOP,
            # 2 s: a relayed encoder cannot make one on request); measure once it flows.
            try:
                await asyncio.wait_for(viewer.first_video.wait(), FIRST_VIDEO_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(f"the viewer got no video in {FIRST_VIDEO_TIMEOUT_S:g} s") from None
            yield
            if not (viewer.video.received and viewer.audio.received):
                raise RuntimeError(f"the viewer got {viewer.video.received} video and "
                                   f"{viewer.audio.received} audio packets")
        finally:
            await viewer.close(http)


async def measure(clip: Path, serve: Serve, protocol: str, seconds: float, warmup: float,
                  watch: bool = False) -> dict[str, float]:
    """``clip`` published with ``-c copy -re`` over ``protocol`` (``rtmp``: FLV, ``srt``:
    MPEG-TS); the CPU of the forwarding and the ingest processes over ``seconds`` (with
    ``watch``, while one WebRTC viewer watches)."""
    ingest = _ingest_pid(serve.process.pid)
    output = ["-f", "flv", f"rtmp://127.0.0.1:{serve.rtmp_port}/live/{KEY}"] if protocol == "rtmp" else \
        ["-f", "mpegts", serve.srt_url(KEY)]
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
        "-t", str(warmup + seconds + FIRST_VIDEO_TIMEOUT_S + 2), "-c", "copy", *output)
    try:
        await asyncio.sleep(warmup / 2)
        async with _viewer(serve, watch):
            await asyncio.sleep(warmup / 2)
            serve_cpu, ingest_cpu = await _window([serve.process.pid, ingest], seconds)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    return {"forwarding_cpu_pct": round(100 * serve_cpu, 1), "ingest_cpu_pct": round(100 * ingest_cpu, 1),
            "ratio_to_whip": round((serve_cpu + ingest_cpu) / serve_cpu, 2) if serve_cpu else float("nan")}


async def _window(pids: list[int], seconds: float) -> list[float]:
    """Each process's CPU over ``seconds`` (cores)."""
    loop = asyncio.get_running_loop()
    t0, before = loop.time(), [cpu_seconds(pid) for pid in pids]
    await asyncio.sleep(seconds)
    elapsed = loop.time() - t0
    return [(cpu_seconds(pid) - start) / elapsed for pid, start in zip(pids, before, strict=True)]


async def measure_whip(serve: Serve, size: str, seconds: float, warmup: float, watch: bool = False) -> dict[str, float]:
    """The forwarding process's CPU for FFmpeg's WHIP muxer publishing ``size`` at 30 fps,
    2.5 Mbit/s, a key frame every 60 frames, with Opus (the baseline of the ratios); with
    ``watch``, while one WebRTC viewer watches."""
    width, height = (int(n) for n in size.split("x"))
    publisher = await FfmpegWhipProcess.start(
        f"{serve.url}/whip/demo", KEY, warmup + seconds + 2, width, height,
        args=["--bitrate", "2500000", "--gop", "60"])
    try:
        await publisher.wait_connected()
        await asyncio.sleep(warmup / 2)
        async with _viewer(serve, watch):
            await asyncio.sleep(warmup / 2)
            (serve_cpu,) = await _window([serve.process.pid], seconds)
        return {"forwarding_cpu_pct": round(100 * serve_cpu, 1)}
    finally:
        await publisher.stop()


async def main_async(seconds: float, warmup: float, size: str = "1280x720", clip_s: float = 20.0) -> dict[str, object]:
    """Both cases; ``size`` and ``clip_s`` (the clip's length, looped) make a quick run."""
    with tempfile.TemporaryDirectory(prefix="rtmp-cost-") as tmp:
        work = Path(tmp)
        baseline, bframes = work / "baseline.flv", work / "bframes.flv"
        await _encode(baseline, size, clip_s, "-preset", "veryfast", "-profile:v", "baseline", "-bf", "0")
        await _encode(bframes, size, clip_s, "-preset", "veryfast", "-profile:v", "high", "-bf", "2")
        cases = {"passthrough": (baseline, "rtmp", False), "transcode (B-frames)": (bframes, "rtmp", False),
                 "SRT passthrough": (baseline, "srt", False), "passthrough, 1 viewer": (baseline, "rtmp", True),
                 "SRT passthrough, 1 viewer": (baseline, "srt", True)}
        serve = await start_serve(work, KEY)
        results: dict[str, object] = {"seconds": seconds, "warmup": warmup, "size": size}
        try:
            baselines = {}
            for watch in (False, True):
                whip = await measure_whip(serve, size, seconds, warmup, watch)
                baselines[watch] = whip["forwarding_cpu_pct"]
                name = "WHIP publisher, 1 viewer" if watch else "WHIP publisher"
                results[name] = whip
                print(f"{name} (FFmpeg's muxer): {json.dumps(whip)}", flush=True)
                await asyncio.sleep(2)
            for name, (clip, protocol, watch) in cases.items():
                figures = await measure(clip, serve, protocol, seconds, warmup, watch)
                total = figures["forwarding_cpu_pct"] + figures["ingest_cpu_pct"]
                base = baselines[watch]
                figures["ratio_to_whip_publisher"] = round(total / base, 2) if base else float("nan")
                results[name] = figures
                print(f"{name}: {json.dumps(figures)}", flush=True)
                await asyncio.sleep(2)
        finally:
            await serve.process.stop()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.rtmp_ingest_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window (s)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds of stream before the window")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.seconds, args.warmup)), indent=2))


if __name__ == "__main__":
    main()
