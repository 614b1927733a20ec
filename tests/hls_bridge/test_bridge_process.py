"""The LL-HLS bridge of a popular room transcodes in a process of its own, and a killed
transcoder is restarted without touching WebRTC viewers (real ``relaycast serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

import aiohttp
import psutil
import pytest

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.polling import wait_for
from tests.serve_process import ServeProcess
from tests.services import STREAM_KEY

pytestmark = pytest.mark.timeout(120)


class FrameCounter:
    """Counts the video frames a WHEP viewer receives."""

    def __init__(self, session: whip_client.WhipSession) -> None:
        self.session = session
        self.frames = 0
        track = next(t.receiver.track for t in session.pc.getTransceivers() if t.kind == "video")
        self.task = asyncio.create_task(self._count(track))

    async def _count(self, track: object) -> None:
        with contextlib.suppress(Exception):
            while True:
                await track.recv()  # type: ignore[attr-defined]
                self.frames += 1

    async def receives(self, frames: int, timeout: float) -> None:
        start = self.frames
        await wait_for(lambda: self.frames - start >= frames, timeout,
                       f"{frames} more frames at the viewer (connection "
                       f"{self.session.pc.connectionState})", interval_s=0.05)


async def hls_bridge(http: aiohttp.ClientSession, url: str, room: str,
                     accept: Callable[[dict], bool] = lambda b: True) -> dict | None:
    async with http.get(f"{url}/api/hls") as resp:
        body = await resp.json()
    return next((b for b in body["bridges"] if b["room"] == room and accept(b)), None)


def sfu_workers(serve: ServeProcess) -> set[int]:
    """The pids of the service's SFU worker processes (``relaycast sfu`` children)."""
    return {child.pid for child in psutil.Process(serve.pid).children()
            if "sfu" in child.cmdline() and "relaycast.cli" in child.cmdline()}


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_popular_room_transcodes_in_another_process_and_survives_a_kill(workers: str) -> None:
    # The default service but for a threshold of 2 viewers instead of 50 (and bridges
    # admitted whatever the machine's idle CPU, as in every test).
    serve = await ServeProcess("--workers", workers, RELAYCAST_HLS_VIEWER_THRESHOLD="2").start()
    pub = viewers = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            pub = await whip_client.publish(f"{serve.url}/whip/demo", STREAM_KEY,
                                            [PatternVideoTrack(640, 360, 30), ToneAudioTrack()])
            await whip_client.wait_connected(pub.pc)
            sessions = [await whip_client.view(f"{serve.url}/whep/demo") for _ in range(2)]
            for session in sessions:
                await whip_client.wait_connected(session.pc)
            viewers = [FrameCounter(s) for s in sessions]
            for viewer in viewers:
                await viewer.receives(15, 15)

            # Two viewers reach the threshold: the policy starts the bridge, in a child process
            # of the service at a lower CPU priority, never in the forwarding process.
            bridge = await wait_for(
                lambda: hls_bridge(http, serve.url, "demo", lambda b: b["pid"] and b["running"]),
                20, "a running bridge with a transcoder pid in /api/hls", interval_s=0.2)
            assert bridge["started_by"] == "viewers"
            pid = bridge["pid"]
            assert pid != serve.pid and pid not in sfu_workers(serve)
            assert len(sfu_workers(serve)) == (0 if workers == "1" else 2)
            transcoder = psutil.Process(pid)
            assert transcoder.ppid() == serve.pid
            assert "hls_bridge.transcoder_main" in " ".join(transcoder.cmdline())
            assert transcoder.nice() > psutil.Process(serve.pid).nice()
            # It transcodes: its CPU and memory are reported, and renditions appear.
            bridge = await wait_for(
                lambda: hls_bridge(http, serve.url, "demo",
                                   lambda b: b["media_s"] >= 2 and b["rss_bytes"] > 0),
                20, "two media seconds transcoded", interval_s=0.2)
            assert bridge["renditions"] == ["a0", "v0"]
            assert bridge["cpu"] > 0
            async with http.get(f"{serve.url}/metrics") as resp:
                metrics = await resp.text()
            assert 'relaycast_hls_bridge_rss_bytes{' in metrics
            for viewer in viewers:
                await viewer.receives(30, 10)

            # SIGKILL the transcoder: viewers keep receiving, it is restarted, and the
            # playlists go on after a discontinuity.
            os.kill(pid, signal.SIGKILL)
            for viewer in viewers:
                await viewer.receives(30, 10)
            restarted = await wait_for(
                lambda: hls_bridge(http, serve.url, "demo",
                                   lambda b: b["restarts"] == 1 and b["pid"] not in (None, pid)),
                20, "the transcoder restarted with a new pid", interval_s=0.2)
            assert restarted["running"]
            assert all(s.pc.connectionState == "connected" for s in sessions)

            async def discontinuity() -> bool:
                async with http.get(f"{serve.url}/hls/demo/index.m3u8") as resp:
                    stream = next(line for line in (await resp.text()).splitlines()
                                  if line.endswith("/v0/index.m3u8"))
                async with http.get(f"{serve.url}/hls/demo/{stream}") as resp:
                    return resp.status == 200 and "#EXT-X-DISCONTINUITY\n" in await resp.text()

            await wait_for(discontinuity, 20, "EXT-X-DISCONTINUITY in v0's playlist", interval_s=0.2)
            for viewer in viewers:
                await viewer.receives(30, 10)
        assert await serve.stop() == 0
        assert not psutil.pid_exists(restarted["pid"]) or \
            psutil.Process(restarted["pid"]).status() == psutil.STATUS_ZOMBIE
    finally:
        for viewer in viewers or ():
            viewer.task.cancel()
        for session in [pub, *(s.session for s in viewers or ())]:
            if session is not None:
                await session.pc.close()
        await serve.close()
