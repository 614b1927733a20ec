"""Recording through the real service: a published stream becomes a VOD that plays from
the start, listed by /api/recordings and served under /vod/."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import m3u8
import pytest

from hls_bridge.bridge import RoomBridge
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config

FFPROBE = "/usr/bin/ffprobe"
TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest.fixture
async def recording_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    monkeypatch.setenv("RELAYCAST_HLS_RECORD_DIR", str(tmp_path / "recordings"))
    monkeypatch.setenv("RELAYCAST_HLS_RECORD_RETENTION_H", "2")
    monkeypatch.setenv("RELAYCAST_HLS_LADDER", "180:300k")
    async with Service(make_config()) as svc:
        yield svc


async def test_recordings_api_is_empty_and_disabled_by_default(service, http) -> None:
    async with http.get(f"{service.url}/api/recordings", timeout=TIMEOUT) as resp:
        assert resp.status == 200
        assert await resp.json() == {"enabled": False, "recordings": []}
    async with http.get(f"{service.url}/api/recordings?room=../x", timeout=TIMEOUT) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.skipif(shutil.which(FFPROBE) is None, reason="needs Debian ffprobe")
async def test_stream_is_recorded_and_published_as_vod(recording_service, http) -> None:
    svc = recording_service
    assert svc.hls is not None and svc.hls.recordings is not None
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY,
        [PatternVideoTrack(320, 180, 15, code="counter"), ToneAudioTrack()],
    )
    try:
        await whip_client.wait_connected(pub.pc)
        # Recording on: the bridge starts when the room goes live, with no HLS request.
        def recording_bridge() -> RoomBridge | None:
            bridge = svc.hls.bridges.get("demo")
            v0 = bridge.store.renditions.get("v0") if bridge is not None else None
            return bridge if v0 is not None and len(v0.playlist.segments) >= 3 else None

        bridge = await wait_for(
            recording_bridge, 20, "a bridge with 3 segments of v0", interval_s=0.1
        )
        store = bridge.store
        assert bridge is not None and bridge.started_by == "recording"
        # Still recording: nothing is listed yet.
        async with http.get(f"{svc.url}/api/recordings", timeout=TIMEOUT) as resp:
            assert (await resp.json())["recordings"] == []
        live_segments = len(store.renditions["v0"].playlist.segments)
    finally:
        await pub.close()

    # The publisher left: the bridge stops, the recording is finished and listed.
    async def listed() -> dict | None:
        async with http.get(f"{svc.url}/api/recordings?room=demo", timeout=TIMEOUT) as resp:
            body = await resp.json()
        return body if body["recordings"] else None

    body = await wait_for(listed, 20, "the finished recording to be listed", interval_s=0.2)
    assert body["enabled"] is True
    (recording,) = body["recordings"]
    assert recording["room"] == "demo"
    assert recording["url"] == f"/vod/demo/{recording['id']}/index.m3u8"
    assert recording["duration_s"] >= live_segments * 0.9
    assert {r["name"] for r in recording["renditions"]} == {"v0", "a0"}

    url = f"{svc.url}{recording['url']}"
    async with http.get(url, timeout=TIMEOUT) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
        master = m3u8.loads(await resp.text())
    (variant,) = master.playlists
    assert variant.stream_info.resolution == (320, 180)
    media_url = url.rsplit("/", 1)[0] + "/" + variant.uri
    async with http.get(media_url, timeout=TIMEOUT) as resp:
        media = m3u8.loads(await resp.text())
    assert media.playlist_type == "vod" and media.is_endlist
    assert len(media.segments) >= live_segments

    # It plays from the start: ffprobe reads the VOD over HTTP, first frame a keyframe at 0.
    result = await asyncio.to_thread(
        subprocess.run,
        [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_frames",
         "-show_entries", "frame=key_frame,pts_time,width", "-of", "json", media_url],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    frames = json.loads(result.stdout)["frames"]
    assert frames[0]["key_frame"] == 1
    assert float(frames[0]["pts_time"]) < 0.1
    assert len(frames) >= 15 * recording["duration_s"] * 0.8
    assert {f["width"] for f in frames} == {320}
