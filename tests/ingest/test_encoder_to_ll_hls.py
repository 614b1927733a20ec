"""RTMP (and SRT) in, LL-HLS out: Debian's ffmpeg publishes H.264 baseline + AAC with a key frame every
second into a real service (RTMP endpoint or SRT listener → WhipRelay → SFU), and the LL-HLS bridge
publishes that H.264 as the top rendition without encoding it — its samples are the
source's access units — while the lower rung is encoded with its key frames on the
source's, and the audio rendition is the encoder's own AAC frames.  A source whose key frames leave the grid ends the passthrough: the transcoder is
restarted without it and the renditions go on after a discontinuity."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import m3u8
import pytest

from hls_bridge.bridge import HlsConfig
from ingest.rtmp_server import PublishRequest, RtmpServer
from ingest.srt_server import SrtPublish, SrtServer
from ingest.whip_relay import WhipRelay
from relaycast.service import Service
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")

_SKIPPED = (7, 8, 9)  # SPS, PPS (the init segment's avcC has them), access unit delimiters


@pytest.fixture
async def live(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Service, RtmpServer | SrtServer]]:
    """A service and an RTMP endpoint (or, with the parameter ``"srt"``, an SRT listener)."""
    protocol = getattr(request, "param", "rtmp")
    async with Service(make_config()) as service, aiohttp.ClientSession() as http:
        assert service.hls is not None
        service.hls.config = HlsConfig(ladder="360p,240p")

        async def on_publish(request: PublishRequest) -> WhipRelay:
            return await WhipRelay.open(f"{service.url}/whip", request.key, http, request.peer)

        async def on_srt_publish(publish: SrtPublish) -> WhipRelay:
            return await WhipRelay.open(f"{service.url}/whip/{publish.channel}", publish.key, http, publish.peer)

        server = RtmpServer(on_publish, port=0) if protocol == "rtmp" else SrtServer(on_srt_publish, port=0)
        await server.start()
        try:
            yield service, server
        finally:
            await server.close()


def _encode(path: Path, seconds: int, *keyframes: str) -> None:
    """640x360 30 fps H.264 baseline + AAC as FLV: a key frame every second, or at the
    ``keyframes`` times (ffmpeg's -force_key_frames)."""
    forced = ["-force_key_frames", ",".join(keyframes)] if keyframes else ["-g", "30"]
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "baseline", "-bf", "0", "-sc_threshold", "0",
         "-pix_fmt", "yuv420p", *forced, "-keyint_min", "1", "-c:a", "aac", "-f", "flv", str(path)],
        check=True, timeout=120)


def _samples(flv: Path) -> list[bytes]:
    """The source's access units as the packager writes them: 4-byte length-prefixed NAL
    units, without SPS/PPS/AUD."""
    out = []
    with av.open(str(flv)) as container:
        for packet in container.demux(video=0):
            data, nalus, i = bytes(packet), [], 0
            if not data:
                continue
            while i + 4 <= len(data):
                size = int.from_bytes(data[i:i + 4], "big")
                nalu = data[i + 4:i + 4 + size]
                if nalu and nalu[0] & 0x1F not in _SKIPPED:
                    nalus.append(len(nalu).to_bytes(4, "big") + nalu)
                i += 4 + size
            out.append(b"".join(nalus))
    return out


async def _publish(server: RtmpServer | SrtServer, flv: Path) -> Any:
    """The FLV as it is, over RTMP; or remuxed to MPEG-TS (Annex B, ADTS) over SRT."""
    output = ["-f", "flv", f"rtmp://127.0.0.1:{server.port}/live/{STREAM_KEY}"] if isinstance(server, RtmpServer) \
        else ["-f", "mpegts", f"srt://127.0.0.1:{server.port}?streamid=#!::r=demo,m=publish,s={STREAM_KEY}"]
    return await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-i", str(flv), "-c", "copy",
        *output, stderr=asyncio.subprocess.PIPE)


def _video(service: Service) -> Any:
    router = service.worker.routers.get("demo") if service.worker else None
    return None if router is None else router.producers.get("video")


async def _start_bridge(service: Service, http: aiohttp.ClientSession) -> Any:
    """Once the SFU saw three key frames, ask for the stream as a player does."""
    await wait_for(lambda: _video(service) is not None and len(_video(service).health.keyframe_spacings_s()) >= 2,
                   20, lambda: "three key frames at the SFU")
    async with http.get(f"{service.url}/hls/demo/index.m3u8", timeout=aiohttp.ClientTimeout(total=30)) as resp:
        assert resp.status == 200, await resp.text()
        master = m3u8.loads(await resp.text())
    assert [p.stream_info.resolution for p in master.playlists] == [(640, 360), (426, 240)]
    return service.hls.bridges["demo"]


async def _segments(http: aiohttp.ClientSession, base: str, count: int) -> tuple[bytes, list[bytes]]:
    """The init segment and the first ``count`` complete segments of a rendition."""
    async def text(url: str) -> str:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as resp:
            assert resp.status == 200, url
            return await resp.text()

    playlist = m3u8.loads(await text(f"{base}/index.m3u8"))
    first = playlist.media_sequence
    for msn in range(first + 1, first + count + 1):  # blocking reloads: segment msn - 1 complete
        await text(f"{base}/index.m3u8?_HLS_msn={msn}")
    bodies = []
    for msn in range(first, first + count):
        async with http.get(f"{base}/seg{msn}.m4s") as resp:
            assert resp.status == 200
            bodies.append(await resp.read())
    async with http.get(f"{base}/init.mp4") as resp:
        return await resp.read(), bodies


def _demux(path: Path) -> list[tuple[bytes, bool]]:
    with av.open(str(path)) as container:
        return [(bytes(p), p.is_keyframe) for p in container.demux(video=0) if p.size]


def _audio_frames(path: Path) -> list[bytes]:
    """The raw AAC frames of a file's audio (FLV's as the encoder made them; fMP4 samples)."""
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


@pytest.mark.parametrize("live", ["rtmp", "srt"], indirect=True)
async def test_the_top_rendition_is_the_rtmp_source_bitstream(
        live: tuple[Service, RtmpServer | SrtServer], tmp_path: Path) -> None:
    service, server = live
    flv = tmp_path / "source.flv"
    await asyncio.to_thread(_encode, flv, 14)
    source = _samples(flv)
    encoder = await _publish(server, flv)
    try:
        async with aiohttp.ClientSession() as http:
            bridge = await _start_bridge(service, http)
            assert bridge.passthrough
            stream = f"{service.url}/hls/demo/{bridge.store.stream_id}"
            init, bodies = await _segments(http, f"{stream}/v0", 3)
            (tmp_path / "v0.mp4").write_bytes(init + b"".join(bodies))
            samples = _demux(tmp_path / "v0.mp4")
            lower_init, lower = await _segments(http, f"{stream}/v1", 2)
            (tmp_path / "v1.mp4").write_bytes(lower_init + b"".join(lower))
            encoded = _demux(tmp_path / "v1.mp4")
            audio_init, audio = await _segments(http, f"{stream}/a0", 3)
            (tmp_path / "a0.mp4").write_bytes(audio_init + b"".join(audio))
            aac = _audio_frames(tmp_path / "a0.mp4")
    finally:
        encoder.kill()
        await encoder.wait()
    # Three 1 s segments of the source's own access units, in its order, each starting on a
    # key frame: nothing decoded or encoded on the way (the relay, the SFU, the bridge).
    assert len(samples) == 90
    start = source.index(samples[0][0])
    assert [data for data, _ in samples] == source[start:start + 90]
    assert [i for i, (_, key) in enumerate(samples) if key][:3] == [0, 30, 60]
    assert bridge.to_json()["restarts"] == 0
    # The 240p rung is encoded, with its key frames where the source has them.
    assert len(encoded) == 60 and [i for i, (_, key) in enumerate(encoded) if key][:2] == [0, 30]
    # The audio rendition is the encoder's AAC: three segments of its frames, in order.
    assert bridge.audio_passthrough and bridge.to_json()["audio_passthrough"]
    source_aac = _audio_frames(flv)
    assert len(aac) >= 3 * 46
    start = source_aac.index(aac[0])
    assert aac == source_aac[start:start + len(aac)]


async def test_key_frames_off_the_grid_end_the_passthrough(
        live: tuple[Service, RtmpServer], tmp_path: Path) -> None:
    service, server = live
    flv = tmp_path / "source.flv"
    # A key frame every second for 6 s, then at 6.5 s, 7.5 s, …: off the 1 s segment grid.
    await asyncio.to_thread(_encode, flv, 16, *[str(t) for t in range(7)],
                            *[f"{t}.5" for t in range(6, 16)])
    encoder = await _publish(server, flv)
    try:
        async with aiohttp.ClientSession() as http:
            bridge = await _start_bridge(service, http)
            assert bridge.passthrough
            # Passthrough ends; a transcoder without it continues the renditions.
            await wait_for(lambda: bridge.restarts == 1 and not bridge.passthrough, 20,
                           lambda: "the transcoder restarted without passthrough")
            v0 = bridge.store.renditions["v0"]
            before = len(v0.playlist.segments)
            await wait_for(lambda: len(v0.playlist.segments) >= before + 2, 20, lambda: "v0 going on, encoded")
            assert "#EXT-X-DISCONTINUITY" in bridge.store.render_media("v0")
    finally:
        encoder.kill()
        await encoder.wait()
