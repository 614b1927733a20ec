"""What a live thumbnail costs: the worker's CPU per JPEG, and the forwarding process's share.

``python -m loadtest.thumbnail_cost [--images 20] [--seconds 20]`` prints Markdown:

1. **Worker step alone** (:class:`community.thumbnail_worker.Worker`, one thread): key
   frames made by aiortc's own VP8 / H.264 encoders (a smooth moving pattern, and a noisy
   worst case) at 360p, 720p and 1080p, turned into 640-px JPEGs; the thread CPU time per
   thumbnail (what the worker reports in IMAGE), and the JPEG size.
2. **The real service**: :class:`relaycast.service.Service` in this process (the
   forwarding process), an aiortc publisher (``loadtest publish --pattern``, 720p, answers
   PLI) in another; thumbnails every second for ``--seconds``, then none for as long, twice.
   Reported: the worker process's CPU per thumbnail (psutil), the packets one capture
   writes to the link and its wall time, and this process's CPU with and without
   thumbnails (the difference per capture; noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import statistics
import sys
import time

import av
import numpy as np
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_encoder

from community import thumbnail_link as link
from community.thumbnail_worker import Worker
from sfu.direct import MediaPacket

from .pattern import MovingBackground

SIZES = ((640, 360, 1_000_000), (1280, 720, 2_500_000), (1920, 1080, 4_500_000))
H264_PARAMETERS = {"packetization-mode": "1", "level-asymmetry-allowed": "1",
                   "profile-level-id": "42e01f"}


def _frames(width: int, height: int, noisy: bool, count: int) -> list[av.VideoFrame]:
    background = MovingBackground(width, height)
    rng = np.random.default_rng(1)
    out = []
    for n in range(count):
        planes = background.render(n * 37)
        y = planes[0]
        if noisy:
            y = np.clip(y.astype(np.int16) + rng.normal(0, 24, y.shape).astype(np.int16), 0, 255
                        ).astype(np.uint8)
        picture = np.concatenate([y, planes[1].reshape(height // 4, width),
                                  planes[2].reshape(height // 4, width)])
        video = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        video.pts, video.time_base = n * 3000, fractions.Fraction(1, 90000)
        out.append(video)
    return out


def worker_step(images: int) -> list[str]:
    """Markdown rows: codec, size, content, CPU ms per thumbnail (median, p90), JPEG KiB."""
    rows = []
    for mime in ("video/VP8", "video/H264"):
        codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000,
                                      parameters=dict(H264_PARAMETERS) if "264" in mime else {})
        track = {"mime_type": mime, "clock_rate": 90000, "channels": None,
                 "parameters": dict(codec.parameters)}
        for width, height, bitrate in SIZES:
            for noisy in (False, True):
                encoder = get_encoder(codec)
                encoder.target_bitrate = bitrate  # type: ignore[attr-defined]
                worker = Worker()
                cpu_ms, sizes, packets = [], [], []
                for n, frame in enumerate(_frames(width, height, noisy, images)):
                    payloads, timestamp = encoder.encode(frame, force_keyframe=True)
                    worker.handle(link.CAPTURE, link.capture(
                        link.CaptureRequest(n, track, 640, 80))[5:])
                    replies: list[bytes] = []
                    for i, payload in enumerate(payloads):
                        media = MediaPacket(i, timestamp, int(i == len(payloads) - 1), payload,
                                            False, None)
                        replies += worker.handle(link.VIDEO, link.encode_video(n, media)[5:])
                    image = link.decode_image(replies[0][5:])
                    cpu_ms.append(image.cpu_us / 1000)
                    sizes.append(len(image.jpeg) / 1024)
                    packets.append(len(payloads))
                cpu_ms.sort()
                rows.append(f"| {mime[6:]} | {width}x{height} | {'noisy' if noisy else 'pattern'} "
                            f"| {statistics.median(packets):.0f} "
                            f"| {statistics.median(cpu_ms):.2f} | {cpu_ms[int(0.9 * len(cpu_ms))]:.2f} "
                            f"| {statistics.median(sizes):.0f} |")
    return rows


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def service_run(seconds: float) -> list[str]:
    """Markdown lines: the real service with an aiortc publisher in another process."""
    os.environ["RELAYCAST_THUMBNAIL_INTERVAL_S"] = "1"
    import tempfile

    os.environ.setdefault("RELAYCAST_DATA_DIR", tempfile.mkdtemp(prefix="thumbnail-cost-"))
    from community.thumbnails import thumbnails_of
    from relaycast.service import Service
    from signaling.config import SignalingConfig

    from . import whip_client

    whip_client.pin_loopback()
    key = "sk_bench_" + "x" * 24
    config = SignalingConfig.from_env({}, host="127.0.0.1", port=0, demo_stream_key=key)
    async with Service(config) as svc:
        thumbnails = thumbnails_of(svc.app)
        assert thumbnails is not None
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest", "publish", f"{svc.url}/whip/demo", "--token", key,
            "--pattern", "--width", "1280", "--height", "720", "--bitrate", "2500000",
            "--seconds", str(seconds * 4 + 20), stdout=asyncio.subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not (svc.worker and "demo" in svc.worker.routers
                       and (info := thumbnails.direct.room("demo")) and info.live):
                if time.monotonic() > deadline:
                    raise SystemExit("the publisher did not go live")
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # the encoder ramps up
            on_cpu = off_cpu = on_s = off_s = 0.0
            worker_cpu = 0.0
            images = 0
            for _ in range(2):
                before_images, before_worker = thumbnails.process.images, thumbnails.process.cpu_seconds()
                cpu, wall = _process_cpu(), time.monotonic()
                thumbnails.track("demo", "bench")
                await asyncio.sleep(seconds)
                thumbnails.untrack("demo")
                on_cpu += _process_cpu() - cpu
                on_s += time.monotonic() - wall
                images += thumbnails.process.images - before_images
                worker_cpu += thumbnails.process.cpu_seconds() - before_worker
                cpu, wall = _process_cpu(), time.monotonic()
                await asyncio.sleep(seconds)
                off_cpu += _process_cpu() - cpu
                off_s += time.monotonic() - wall
            report = thumbnails.report()
            worker = report["worker"]
            per_capture_ms = ((on_cpu / on_s - off_cpu / off_s) * on_s / images * 1000) if images else 0
            return [
                f"- thumbnails made: {images} in {on_s:.0f} s (interval 1 s), worker pid "
                f"{worker['pid']} at nice {os.getpriority(os.PRIO_PROCESS, worker['pid'])}",
                f"- worker process CPU per thumbnail (psutil, whole process): "
                f"{worker_cpu / max(images, 1) * 1000:.1f} ms; as reported per image (thread "
                f"time of depacketize + decode + scale + encode): {worker['worker_cpu_ms_per_image']} ms",
                f"- packets written to the link per capture: "
                f"{worker['packets_sent'] / max(worker['images'], 1):.0f} "
                f"(dropped: {worker['packets_dropped']}); capture wall time "
                f"{report['capture_s_per_image']} s (PLI round trip + key frame)",
                f"- forwarding process CPU: {on_cpu / on_s * 100:.1f} % of a core with thumbnails "
                f"every second, {off_cpu / off_s * 100:.1f} % without → "
                f"{per_capture_ms:.1f} ms per capture "
                f"(= {per_capture_ms / 30 / 10:.3f} % of a core per stream at one per 30 s)",
            ]
        finally:
            publisher.terminate()
            await publisher.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.thumbnail_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20, help="key frames per case (default 20)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of each on/off phase of the service run, s (default 20)")
    parser.add_argument("--skip-service", action="store_true", help="only the worker step")
    args = parser.parse_args(argv)
    print("### Worker step: key frame → 640-px JPEG (one thread, quality 80)\n")
    print("| codec | source | content | RTP packets | CPU ms median | CPU ms p90 | JPEG KiB |")
    print("|---|---|---|---|---|---|---|")
    for row in worker_step(args.images):
        print(row, flush=True)
    if not args.skip_service:
        print("\n### The service: 720p VP8 publisher (aiortc, answers PLI), one thumbnail a second\n")
        for line in asyncio.run(service_run(args.seconds)):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
