"""Popular-room policy, per-node bridge reports, and the origin's blocking-reload rules
through the real service (WHIP publisher → SFU → bridge → /hls)."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
from pathlib import Path

import aiohttp
import av
import m3u8
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hls_bridge.bridge import HlsConfig
from hls_bridge.problems import ENCODER_NOT_BUILT, ENCODER_UNAVAILABLE, PROBLEM_TYPES
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from signaling.hls_api import public_hls_node
from tests.hls_bridge.llhls_checker import check_media, entries, last_msn_part
from tests.polling import wait_for
from tests.services import STREAM_KEY

FFPROBE = "/usr/bin/ffprobe"
TIMEOUT = aiohttp.ClientTimeout(total=30)


class GatedVideoTrack(PatternVideoTrack):
    """A pattern track whose frames stop while ``gate`` is clear (the stream stalls);
    ``parked`` is set once the sender waits at the closed gate (no frame is being made)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.gate.set()
        self.parked = asyncio.Event()

    async def recv(self):  # type: ignore[no-untyped-def]
        if not self.gate.is_set():
            self.parked.set()
            await self.gate.wait()
            self.parked.clear()
        return await super().recv()


async def get_json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url, timeout=TIMEOUT) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def policy_rounds(svc, count: int) -> None:  # type: ignore[no-untyped-def]
    """Wait until the bridge manager's policy loop has checked ``count`` more times."""
    manager = svc.hls
    target = manager.policy_rounds + count
    timeout = 10 + 3 * count * manager.config.check_interval_s
    await wait_for(lambda: manager.policy_rounds >= target, timeout,
                   f"{count} HLS policy rounds", wake=manager.policy_checked)


async def test_viewer_threshold_starts_bridge_reported_per_node_and_idle_stops_it(
    service, http
) -> None:
    svc = service
    assert svc.hls is not None
    svc.hls.config = HlsConfig(viewer_threshold=2, idle_s=1.0, check_interval_s=0.2)
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(320, 180, 15, code="counter")]
    )
    viewers: list[whip_client.WhipSession] = []
    try:
        await whip_client.wait_connected(pub.pc)
        viewers.append(await whip_client.view(f"{svc.url}/whep/demo", kinds=("video",)))
        await whip_client.wait_connected(viewers[0].pc)
        # One viewer, below the threshold: no bridge, even after a few policy rounds.
        await policy_rounds(svc, 3)
        assert svc.hls.bridges == {}

        viewers.append(await whip_client.view(f"{svc.url}/whep/demo", kinds=("video",)))
        await whip_client.wait_connected(viewers[1].pc)

        # The second viewer crosses the threshold: the bridge starts with no HLS request,
        # and the node's load report (≤ 1 s old) shows it with its encoder at /api/hls.
        async def reported() -> bool:
            body = await get_json(http, f"{svc.url}/api/hls")
            return any(b["room"] == "demo" and b["renditions"] for b in body["bridges"])

        await wait_for(reported, 20, "the bridge in /api/hls")
        body = await get_json(http, f"{svc.url}/api/hls")
        bridge = next(b for b in body["bridges"] if b["room"] == "demo")
        assert bridge["started_by"] == "viewers"
        assert bridge["node"] == svc.config.sfu.node_id
        assert bridge["url"] == "/hls/demo/index.m3u8"
        assert bridge["renditions"] == ["v0"]
        (node,) = body["nodes"]
        assert node["viewer_threshold"] == 2
        # No hardware encoder on a CI machine: libx264.  Each rejected probe shows a
        # stable problem type with its title and short detail; FFmpeg's error text,
        # library versions and device paths stay in the log.
        assert bridge["encoder"] == node["encoder"]["name"] == "libx264"
        probes = {p["name"]: p for p in node["encoder"]["probes"]}
        assert probes["libx264"] == {"name": "libx264", "available": True}
        rejected = [p for p in probes.values() if not p["available"]]
        assert rejected
        for probe in rejected:
            kind = PROBLEM_TYPES[probe["type"]]
            assert probe == {"name": probe["name"], "available": False, "type": kind.uri,
                             "title": kind.title, "detail": kind.detail}
        shown = json.dumps(body)
        assert svc.hls.encoder is not None
        for result in svc.hls.encoder.results:
            if not result.available:
                assert result.reason not in shown
        for secret in ("[ffmpeg:", "libcuda", "/dev/dri", str(av.ffmpeg_version_info)):
            assert secret not in shown

        # The same facts as Prometheus metrics.
        async with http.get(f"{svc.url}/metrics", timeout=TIMEOUT) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
        }
        node_id = svc.config.sfu.node_id
        assert samples[("relaycast_hls_bridges", (("encoder", "libx264"), ("node", node_id)))] == 1
        assert samples[("relaycast_hls_encoder_info", (("name", "libx264"), ("node", node_id)))] == 1
        assert samples[("relaycast_room_viewers", (("room", "demo"),))] == 2

        # While the room stays popular, no HLS request is needed to keep the bridge:
        # policy rounds spanning twice the idle time (each round starts at least
        # check_interval_s after the previous one) leave it running.
        started = svc.hls.bridges["demo"]
        config = svc.hls.config
        await policy_rounds(svc, math.ceil(2 * config.idle_s / config.check_interval_s) + 1)
        assert svc.hls.bridges.get("demo") is started

        # Below the threshold and no HLS viewers for idle_s: the bridge stops.
        await viewers.pop().close()
        await wait_for(lambda: _no_bridge(svc), 15, "the idle bridge to stop")
        assert started.stopped

        async def unreported() -> bool:
            return (await get_json(http, f"{svc.url}/api/hls"))["bridges"] == []

        await wait_for(unreported, 5, "no bridge in /api/hls")
    finally:
        for viewer in viewers:
            await viewer.close()
        await pub.close()


def _no_bridge(svc) -> bool:  # type: ignore[no-untyped-def]
    return "demo" not in svc.hls.bridges


def test_api_shows_probe_problem_types_never_node_text() -> None:
    """A node's report (even one with a free-text ``reason``, as older nodes sent) is
    shown with only the problem type's own title and detail."""
    node = {
        "node": "n1",
        "encoder": {"name": "libx264", "probes": [
            {"name": "h264_nvenc", "available": False, "reason": "Cannot load libcuda.so.1"},
            {"name": "h264_qsv", "available": False, "type": ENCODER_NOT_BUILT.uri,
             "reason": "not in this FFmpeg build (8.1)"},
            {"name": "libx264", "available": True, "reason": "encoded 3 frames"},
        ]},
        "viewer_threshold": 50, "recording": False, "bridges": [], "extra": "dropped",
    }
    shown = public_hls_node(node)
    assert shown["encoder"]["probes"] == [
        {"name": "h264_nvenc", "available": False, "type": ENCODER_UNAVAILABLE.uri,
         "title": ENCODER_UNAVAILABLE.title, "detail": ENCODER_UNAVAILABLE.detail},
        {"name": "h264_qsv", "available": False, "type": ENCODER_NOT_BUILT.uri,
         "title": ENCODER_NOT_BUILT.title, "detail": ENCODER_NOT_BUILT.detail},
        {"name": "libx264", "available": True},
    ]
    assert "extra" not in shown


def test_viewer_threshold_config() -> None:
    assert HlsConfig().viewer_threshold == 50
    assert HlsConfig.from_env({"RELAYCAST_HLS_VIEWER_THRESHOLD": "0"}).viewer_threshold == 0
    with pytest.raises(ValueError, match="RELAYCAST_HLS_VIEWER_THRESHOLD"):
        HlsConfig.from_env({"RELAYCAST_HLS_VIEWER_THRESHOLD": "many"})
    with pytest.raises(ValueError, match="threshold"):
        HlsConfig.from_env({"RELAYCAST_HLS_VIEWER_THRESHOLD": "-1"})
    assert HlsConfig.from_env({"RELAYCAST_HLS_X264_PRESET": "superfast"}).x264_preset == "superfast"
    with pytest.raises(ValueError, match="preset"):
        HlsConfig.from_env({"RELAYCAST_HLS_X264_PRESET": "placebo-ish"})


def test_x264_preset_replaces_only_libx264_options() -> None:
    from hls_bridge.bridge import with_x264_preset
    from hls_bridge.encoders import EncoderChoice

    x264 = EncoderChoice("libx264", {"preset": "veryfast", "tune": "zerolatency"})
    faster = with_x264_preset(x264, "superfast")
    assert faster.options == {"preset": "superfast", "tune": "zerolatency"}
    assert x264.options["preset"] == "veryfast"  # the probed choice is not changed
    nvenc = EncoderChoice("h264_nvenc", {"preset": "p1"})
    assert with_x264_preset(nvenc, "superfast") is nvenc


async def test_blocking_reload_rules_through_the_service(service, http) -> None:
    """§6.2.5.2 at the real origin: held until the part exists, 400s, 503 after 3 × target."""
    svc = service
    track = GatedVideoTrack(320, 180, 15, code="counter")
    pub = await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY, [track])
    try:
        await whip_client.wait_connected(pub.pc)
        async with http.get(f"{svc.url}/hls/demo/index.m3u8", timeout=TIMEOUT) as resp:
            assert resp.status == 200
            master = m3u8.loads(await resp.text())
        base = f"{svc.url}/hls/demo/{master.playlists[0].uri}"

        async def current() -> m3u8.M3U8:
            async with http.get(base, timeout=TIMEOUT) as resp:
                assert resp.status == 200
                return m3u8.loads(await resp.text())

        async def has_parts() -> bool:
            return last_msn_part(await current()) is not None

        await wait_for(has_parts, 20, "a part in the media playlist")
        playlist = await current()
        msn, part = last_msn_part(playlist)  # type: ignore[misc]
        target = playlist.target_duration

        # _HLS_part without _HLS_msn, and an MSN more than two past the last: 400.
        for query in ("_HLS_part=1", f"_HLS_msn={msn + 3}", "_HLS_msn=-1"):
            async with http.get(f"{base}?{query}", timeout=TIMEOUT) as resp:
                assert resp.status == 400, query
                assert resp.headers["Content-Type"].startswith("application/problem+json")
                assert resp.headers["Cache-Control"] == "no-store"

        # A request for the next part returns only once that part exists.
        nxt = (msn, (part if part is not None else -1) + 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with http.get(f"{base}?_HLS_msn={nxt[0]}&_HLS_part={nxt[1]}", timeout=TIMEOUT) as resp:
            assert resp.status == 200
            listed = {(e.msn, i) for e in entries(check_media(await resp.text()))
                      for i in range(len(e.parts))}
        assert nxt in listed or (nxt[0] + 1, 0) in listed

        # Stall the publisher: a request for a part two segments ahead is held for
        # 3 × the target duration, then answered 503.  (What is still in flight once
        # the track waits at the gate is under a segment: it cannot reach last + 2.)
        track.gate.clear()
        await asyncio.wait_for(track.parked.wait(), 10)
        last = last_msn_part(await current())
        assert last is not None
        started = loop.time()
        async with http.get(f"{base}?_HLS_msn={last[0] + 2}", timeout=TIMEOUT) as resp:
            held = loop.time() - started
            assert resp.status == 503, await resp.text()
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert 3 * target - 0.5 <= held <= 3 * target + 3, held
        track.gate.set()
    finally:
        await pub.close()


def _keyframe_times(path: Path) -> tuple[set[tuple[int, int]], list[float]]:
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_frames",
         "-show_entries", "frame=key_frame,width,height,pts_time", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stderr == "", result.stderr
    frames = json.loads(result.stdout)["frames"]
    sizes = {(f["width"], f["height"]) for f in frames}
    return sizes, [round(float(f["pts_time"]), 3) for f in frames if f["key_frame"] == 1]


@pytest.mark.skipif(shutil.which(FFPROBE) is None, reason="needs Debian ffprobe")
async def test_each_rendition_decodes_with_aligned_keyframes(service, http, tmp_path: Path) -> None:
    """The real bridge's ladder: every rendition's init + segments decode with ffprobe, at
    the planned resolution, keyframes at the same times in every rendition."""
    svc = service
    assert svc.hls is not None
    svc.hls.config = HlsConfig(ladder="360p,240p,180:250k")
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(640, 360, 15, code="counter")]
    )
    try:
        await whip_client.wait_connected(pub.pc)
        async with http.get(f"{svc.url}/hls/demo/index.m3u8", timeout=TIMEOUT) as resp:
            assert resp.status == 200
            master = m3u8.loads(await resp.text())
        stream = svc.hls.bridges["demo"].store.stream_id
        sizes = {p.uri: p.stream_info.resolution for p in master.playlists}
        assert sizes == {f"{stream}/v0/index.m3u8": (640, 360), f"{stream}/v1/index.m3u8": (426, 240),
                         f"{stream}/v2/index.m3u8": (320, 180)}
        keyframes = {}
        for uri, size in sizes.items():
            name = uri.split("/")[1]
            url = f"{svc.url}/hls/demo/{stream}/{name}"
            # Wait for three whole segments (blocking reloads, one MSN at a time: an MSN
            # more than two past the last one would be a 400).
            for msn in range(3):
                async with http.get(f"{url}/index.m3u8?_HLS_msn={msn}", timeout=TIMEOUT) as resp:
                    assert resp.status == 200
                    playlist = check_media(await resp.text())
            segments = [e for e in entries(playlist) if e.uri][:3]
            assert len(segments) == 3
            data = bytearray()
            for uri in ["init.mp4"] + [s.uri for s in segments]:
                async with http.get(f"{url}/{uri}", timeout=TIMEOUT) as resp:
                    assert resp.status == 200, uri
                    data += await resp.read()
            path = tmp_path / f"{name}.mp4"
            path.write_bytes(bytes(data))
            seen, keyframes[name] = await asyncio.to_thread(_keyframe_times, path)
            assert seen == {size}
            assert len(keyframes[name]) >= 3
        assert keyframes["v0"] == keyframes["v1"] == keyframes["v2"], keyframes
    finally:
        await pub.close()
