"""LL-HLS from a simulcast publisher: the bridge transcodes the top layer only (issue 13).

A 3-layer simulcast publisher (640x360 / 320x180 / 160x90) goes live; the multivariant
playlist offers only the 360p rung of the default ladder (the top layer's size: never
upscaled), and the first segment decodes at 640x360 — the bridge never saw the smaller
layers."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import m3u8
import pytest

from loadtest.simulcast_publisher import SimulcastPublisher
from tests.hls_bridge.llhls_checker import check_media, entries
from tests.hls_bridge.test_bridge_live import FFPROBE, ffprobe_frames, get
from tests.services import STREAM_KEY


@pytest.mark.skipif(shutil.which(FFPROBE) is None, reason="needs Debian ffprobe")
async def test_the_bridge_transcodes_the_top_simulcast_layer(service, http, tmp_path: Path) -> None:
    base = f"{service.url}/hls/demo"
    async with SimulcastPublisher(f"{service.url}/whip/demo", STREAM_KEY, width=640, height=360, http=http):
        status, _, body = await get(http, f"{base}/index.m3u8")
        assert status == 200, body
        master = m3u8.loads(body.decode())
        assert [p.stream_info.resolution for p in master.playlists] == [(640, 360)]
        stream = service.hls.bridges["demo"].store.stream_id
        media_base = f"{base}/{stream}"
        status, _, body = await get(http, f"{media_base}/v0/index.m3u8")
        assert status == 200, body
        first = entries(check_media(body.decode()))[0].msn
        status, _, body = await get(http, f"{media_base}/v0/index.m3u8?_HLS_msn={first + 1}")
        assert status == 200, body
        segment = next(e for e in entries(check_media(body.decode())) if e.msn == first)
        _, _, init = await get(http, f"{media_base}/v0/init.mp4")
        _, _, media = await get(http, f"{media_base}/v0/{segment.uri}")
        path = tmp_path / "v0.mp4"
        path.write_bytes(init + media)
        frames = await asyncio.to_thread(ffprobe_frames, path)
        assert len(frames) >= 15
        assert {(f["width"], f["height"]) for f in frames} == {(640, 360)}
        producer = service.worker.routers["demo"].producers["video"]
        assert producer.simulcast and producer.top.rid == "f"
