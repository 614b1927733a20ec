"""The LL-HLS bridge wired into the real service: a WHIP publisher becomes /hls/{room}/."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import m3u8
import pytest

from hls_bridge.bridge import HlsConfig
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.hls_bridge.llhls_checker import check_media, entries, last_msn_part
from tests.polling import wait_for
from tests.services import STREAM_KEY

FFPROBE = "/usr/bin/ffprobe"
PARTS_PER_SEGMENT = 5  # 0.2 s parts, 1 s segments (the defaults)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def get_as_a_player(http: aiohttp.ClientSession, url: str, timeout_s: float = 30.0) -> tuple[int, str, bytes]:
    """GET ``url`` again after a 503 (``Retry-After``) as a player does, until it answers
    otherwise or ``timeout_s`` passes: a starved transcoder's first playlist may take longer
    than the origin holds a request (it then answers 503 + Retry-After)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as resp:
            result = resp.status, resp.headers.get("Content-Type", ""), await resp.read()
            retry = float(resp.headers.get("Retry-After", "1") or 1)
        if result[0] != 503 or asyncio.get_running_loop().time() + 0.5 > deadline:
            return result
        await asyncio.sleep(min(retry, 1.0))


def ffprobe_frames(path: Path) -> list[dict]:
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_frames",
         "-show_entries", "frame=key_frame,width,height", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)["frames"]


def test_hls_config_from_env() -> None:
    assert HlsConfig.from_env({}) == HlsConfig()
    config = HlsConfig.from_env({
        "RELAYCAST_HLS_LADDER": "480p,240p", "RELAYCAST_HLS_PART_S": "0.25",
        "RELAYCAST_HLS_SEGMENT_S": "2", "RELAYCAST_HLS_IDLE_S": "5",
    })
    assert (config.ladder, config.part_s, config.segment_s, config.idle_s) == ("480p,240p", 0.25, 2.0, 5.0)
    with pytest.raises(ValueError, match="RELAYCAST_HLS_IDLE_S"):
        HlsConfig.from_env({"RELAYCAST_HLS_IDLE_S": "soon"})
    with pytest.raises(ValueError):
        HlsConfig.from_env({"RELAYCAST_HLS_LADDER": "720q"})


@pytest.mark.skipif(shutil.which(FFPROBE) is None, reason="needs Debian ffprobe")
async def test_live_room_is_served_as_ll_hls(service, http, tmp_path: Path) -> None:
    svc = service
    base = f"{svc.url}/hls/demo"
    assert svc.hls is not None

    # Not live yet: problem+json 404, and no bridge is started.
    status, ctype, _ = await get(http, f"{base}/index.m3u8")
    assert status == 404 and ctype.startswith("application/problem+json")
    assert svc.hls.bridges == {}

    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY,
        [PatternVideoTrack(640, 360, 30, code="counter"), ToneAudioTrack()],
    )
    try:
        await whip_client.wait_connected(pub.pc)

        # The first request starts the bridge and waits for the multivariant playlist.
        status, ctype, body = await get(http, f"{base}/index.m3u8")
        assert status == 200, body
        assert ctype.startswith("application/vnd.apple.mpegurl")
        master = m3u8.loads(body.decode())
        # A 360p source gets only the 360p rung of 720p,480p,360p: never upscaled.
        assert [p.stream_info.resolution for p in master.playlists] == [(640, 360)]
        bridge = svc.hls.bridges["demo"]
        stream = bridge.store.stream_id  # media URLs are per stream: /hls/demo/{stream}/v0/…
        assert [p.uri for p in master.playlists] == [f"{stream}/v0/index.m3u8"]
        assert [m.uri for m in master.media if m.type == "AUDIO"] == [f"{stream}/a0/index.m3u8"]
        media_base = f"{base}/{stream}"
        assert bridge.encoder_name  # the probed H.264 encoder, for the API
        assert svc.hls.to_json()["demo"]["encoder"] == bridge.encoder_name

        # Blocking playlist reload two parts past the last one returns once it exists.
        status, _, body = await get(http, f"{media_base}/v0/index.m3u8")
        assert status == 200
        msn, part = last_msn_part(m3u8.loads(body.decode())) or (0, None)
        want = msn * PARTS_PER_SEGMENT + (-1 if part is None else part) + 2
        want_msn, want_part = divmod(want, PARTS_PER_SEGMENT)
        status, _, body = await get(
            http, f"{media_base}/v0/index.m3u8?_HLS_msn={want_msn}&_HLS_part={want_part}"
        )
        assert status == 200, body
        playlist = check_media(body.decode())
        listed = {(e.msn, i) for e in entries(playlist) for i in range(len(e.parts))}
        assert (want_msn, want_part) in listed

        # The first listed segment, once complete, decodes with ffprobe.
        first = entries(playlist)[0].msn
        status, _, body = await get(http, f"{media_base}/v0/index.m3u8?_HLS_msn={first}")
        assert status == 200, body
        playlist = check_media(body.decode())
        segment = next(e for e in entries(playlist) if e.msn == first)
        assert segment.uri == f"seg{first}.m4s"
        status, ctype, init = await get(http, f"{media_base}/v0/init.mp4")
        assert status == 200 and ctype == "video/mp4"
        status, ctype, media = await get(http, f"{media_base}/v0/{segment.uri}")
        assert status == 200 and ctype == "video/iso.segment"
        path = tmp_path / "v0.mp4"
        path.write_bytes(init + media)
        frames = await asyncio.to_thread(ffprobe_frames, path)
        assert len(frames) >= 15
        assert {(f["width"], f["height"]) for f in frames} == {(640, 360)}
        assert frames[0]["key_frame"] == 1
        svc.hls.config = HlsConfig(ended_grace_s=3.0)
    finally:
        await pub.close()

    # The publisher left: the bridge stops and its playlists end. (The manager forgets the
    # bridge and marks it stopped first; the store ends once the transcoder flushed.)
    store = bridge.store
    await wait_for(
        lambda: "demo" not in svc.hls.bridges and bridge.stopped and store.ended,
        10,
        "the bridge to stop",
        interval_s=0.1,
    )
    assert all(r.playlist.ended for r in store.renditions.values())
    # For a grace period the ended stream stays served: ENDLIST and its last parts, so
    # players reach the end instead of 404s; then the room answers 404.
    status, _, body = await get(http, f"{media_base}/v0/index.m3u8")
    assert status == 200, body
    ended = m3u8.loads(body.decode())
    assert ended.is_endlist
    last_part = ended.segments[-1].parts[-1] if ended.segments[-1].parts else None
    if last_part is not None:
        status, _, _ = await get(http, f"{media_base}/v0/{last_part.uri}")
        assert status == 200

    async def room_gone() -> bool:
        return (await get(http, f"{base}/index.m3u8"))[0] == 404

    await wait_for(room_gone, 10, "404 for the ended room after its grace", interval_s=0.2)


async def test_bridge_stops_after_idle_seconds_without_requests(service, http) -> None:
    svc = service
    assert svc.hls is not None
    # A long idle time while the bridge starts (under CPU pressure its first playlist may take
    # longer than 1 s), then 1 s: no request comes any more, so it must stop.
    svc.hls.config = HlsConfig(idle_s=30.0, check_interval_s=0.2)
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(320, 180, 15, code="counter")]
    )
    try:
        await whip_client.wait_connected(pub.pc)
        status, _, body = await get_as_a_player(http, f"{svc.url}/hls/demo/index.m3u8")
        assert status == 200, body
        bridge = svc.hls.bridges["demo"]
        # Video only: no audio rendition.
        assert [m.uri for m in m3u8.loads(body.decode()).media if m.type == "AUDIO"] == []
        svc.hls.config = HlsConfig(idle_s=1.0, check_interval_s=0.2)
        # The manager forgets the bridge first, then stops it: wait for the stop to end
        # (the transcoder ends the store, then exits).
        await wait_for(
            lambda: "demo" not in svc.hls.bridges and bridge.store.ended and bridge.pid is None,
            10,
            "the idle bridge to stop",
            interval_s=0.1,
        )
        assert bridge.stopped and all(r.playlist.ended for r in bridge.store.renditions.values())
        # The transcoder process flushed, exited, and no longer gets the room's packets.
        process = bridge.process
        assert process is not None and not process.attached
        assert process.done and process.proc is not None and process.proc.returncode == 0
        # The room is still live: the next request starts a fresh bridge (a long idle time
        # again, for the same reason as above).
        svc.hls.config = HlsConfig(idle_s=30.0, check_interval_s=0.2)
        status, _, body = await get_as_a_player(http, f"{svc.url}/hls/demo/index.m3u8")
        assert status == 200, body
        assert svc.hls.bridges["demo"] is not bridge
    finally:
        await pub.close()
