"""Recording and VOD: a real transcoded stream kept on disk, replayed over HTTP by ffprobe."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import m3u8
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from common.config import ConfigError
from hls_bridge.encoders import choose_encoder
from hls_bridge.ladder import Rung
from hls_bridge.model import PlaylistStateError
from hls_bridge.playlist import AudioRendition, VariantStream
from hls_bridge.recording import (
    MANIFEST_NAME,
    RECORDING_ID_RE,
    Recorder,
    RecordingError,
    new_recording_id,
)
from hls_bridge.store import RoomStore
from hls_bridge.transcoder import AUDIO_RENDITION, LadderTranscoder
from hls_bridge.vod import RecordingConfig, RecordingLibrary, create_vod_app
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.hls_bridge.test_llhls_strict import Revision, strict_problems

FFPROBE = "/usr/bin/ffprobe"
needs_ffprobe = pytest.mark.skipif(shutil.which(FFPROBE) is None, reason="needs Debian ffprobe")

SECONDS = 3
FPS = 30
RETENTION_S = 3600.0
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A UTC wall clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# --- helpers ------------------------------------------------------------------------------


async def frames(seconds: int) -> AsyncIterator[av.VideoFrame | av.AudioFrame]:
    """320x180 counter video and a stereo tone, merged in media-time order."""
    track = PatternVideoTrack(320, 180, FPS, code="counter")
    tone = ToneAudioTrack(channels=2)
    items: list[tuple[Fraction, int, Any]] = []
    for i in range(seconds * FPS):
        frame = track.make_frame(i, i)
        frame.pts, frame.time_base = round(i * 90_000 / FPS), Fraction(1, 90_000)
        items.append((frame.pts * frame.time_base, 0, frame))
    for i in range(round(seconds * tone.sample_rate / tone.samples_per_frame)):
        frame = tone.make_frame(i * tone.samples_per_frame)
        items.append((frame.pts * frame.time_base, 1, frame))
    for _, _, frame in sorted(items, key=lambda item: item[:2]):
        yield frame


def synthetic(room: RoomStore, names: tuple[str, ...], segments: int, *, variants: bool = True,
              audio_segments: bool = True) -> None:
    """Feed ``room`` by hand: 1 s segments of five 0.2 s parts (bytes, not media)."""
    for name in names:
        room.add_rendition(name, target_duration=1, part_target=0.2)
        room.renditions[name].set_init(f"<init {name}>".encode())
    if variants:
        audio = [AudioRendition("audio", "audio", "a0/index.m3u8")] if "a0" in names else []
        room.set_variants(
            [VariantStream(f"{n}/index.m3u8", 500_000, "avc1.64000d,mp4a.40.2",
                           resolution=(320, 180), audio="audio" if audio else None)
             for n in names if n != "a0"],
            audio,
        )
    for msn in range(segments):
        for name in names:
            if name == "a0" and not audio_segments:
                continue
            store = room.renditions[name]
            for index in range(5):
                store.publish_part(f"<{name} {msn}.{index}>".encode() * 50, 0.2, index == 0)
            store.close_segment(T0 + timedelta(seconds=msn))


async def ffprobe(*args: str) -> dict:
    """Run ffprobe without blocking the loop (it fetches from our own server)."""
    proc = await asyncio.create_subprocess_exec(
        FFPROBE, "-v", "error", *args, "-of", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    assert err == b"", err.decode()
    return json.loads(out)


@pytest.fixture
async def vod_server(tmp_path: Path) -> AsyncIterator[tuple[RecordingLibrary, Clock, URL]]:
    """A library under tmp_path served at http://127.0.0.1:{port}/vod/."""
    clock = Clock(datetime.now(UTC))
    library = RecordingLibrary(tmp_path / "rec", RETENTION_S, clock=clock)
    app = web.Application()
    app.add_subapp("/vod", create_vod_app(library))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield library, clock, server.make_url("/vod")
    finally:
        await server.close()


async def fetch(http: aiohttp.ClientSession, url: URL | str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# --- the real thing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x264():
    return choose_encoder(["libx264"])


@needs_ffprobe
async def test_recorded_stream_plays_as_vod_from_the_start(vod_server, x264) -> None:
    library, clock, base = vod_server
    recorder = library.recorder("demo")
    assert RECORDING_ID_RE.match(recorder.id)
    room = RoomStore(recorder=recorder)
    transcoder = LadderTranscoder(room, [Rung("180p", 180, 300_000, 320)], encoder_choice=x264)
    try:
        await asyncio.wait_for(transcoder.run(frames(SECONDS)), timeout=120)
    finally:
        transcoder.close()
    manifest = await asyncio.wait_for(recorder.finish(), 30)
    assert manifest is not None and not manifest["truncated"]
    directory = recorder.directory
    assert (directory / MANIFEST_NAME).is_file()
    assert not list(directory.rglob("*.tmp")), "temporary files left behind"

    # the VOD playlists list exactly what the live store published
    live = {name: store.playlist.segments for name, store in room.renditions.items()}
    assert set(live) == {"v0", AUDIO_RENDITION}
    for name, segments in live.items():
        pl = m3u8.loads((directory / name / "index.m3u8").read_text())
        assert pl.playlist_type == "vod" and pl.is_endlist
        assert pl.media_sequence == 0 and pl.version == 7
        assert pl.is_independent_segments
        assert pl.segment_map[0].uri == "init.mp4"
        assert [s.uri for s in pl.segments] == [s.uri for s in segments]
        live_pl = m3u8.loads(room.render_media(name))  # as the live origin published them
        assert [s.duration for s in pl.segments] == [s.duration for s in live_pl.segments]
        assert all(round(s.duration) <= pl.target_duration for s in pl.segments)
        pdt = pl.segments[0].current_program_date_time
        assert abs(pdt - segments[0].program_date_time) < timedelta(milliseconds=1)
        store = room.renditions[name]
        assert (directory / name / "init.mp4").read_bytes() == store.init
        for s in segments:
            assert (directory / name / s.uri).read_bytes() == store.segment(s.msn)
    assert [s.duration for s in live["v0"]] == pytest.approx([1.0] * SECONDS)
    # the live multivariant text, minus the live stream-id folder: rendition folders keep
    # their names
    assert (directory / "index.m3u8").read_text() == room.multivariant.replace(
        f"{room.stream_id}/", "")

    # listed, with the VOD URL
    (entry,) = library.list()
    assert entry == library.list("demo")[0]
    assert library.list("other") == []
    assert {k: entry[k] for k in ("room", "id", "url")} == {
        "room": "demo", "id": recorder.id, "url": f"/vod/demo/{recorder.id}/index.m3u8",
    }
    assert entry["duration_s"] == pytest.approx(SECONDS, abs=0.05)
    assert [r["name"] for r in entry["renditions"]] == [AUDIO_RENDITION, "v0"]
    assert entry["bytes"] == sum(r["bytes"] for r in entry["renditions"]) > 0
    started, ended = (datetime.fromisoformat(entry[k]) for k in ("started", "ended"))
    assert abs(started - live["v0"][0].program_date_time) < timedelta(milliseconds=1)
    assert started <= ended
    clock.now = datetime.now(UTC)

    async with aiohttp.ClientSession() as http:
        rec = base / "demo" / recorder.id
        for path, ctype in (("index.m3u8", "application/vnd.apple.mpegurl"),
                            ("v0/index.m3u8", "application/vnd.apple.mpegurl"),
                            ("v0/init.mp4", "video/mp4"),
                            ("v0/seg1.m4s", "video/iso.segment"),
                            ("a0/seg0.m4s", "video/iso.segment")):
            status, headers, body = await fetch(http, rec / path)
            assert status == 200, path
            assert headers["Content-Type"] == ctype
            assert headers["Access-Control-Allow-Origin"] == "*"
            cache = headers["Cache-Control"]
            assert "immutable" in cache and "public" in cache
            max_age = int(cache.split("max-age=")[1].split(",")[0])
            assert RETENTION_S - 120 < max_age <= RETENTION_S  # never beyond the retention
            assert body == (directory / path).read_bytes()

    # ffprobe plays it over HTTP from the first frame: every frame, keyframe at t = 0
    decoded = (await ffprobe("-select_streams", "v:0", "-show_frames", "-show_entries",
                             "frame=key_frame,pts_time,width,height", str(rec / "v0/index.m3u8")))
    video = decoded["frames"]
    assert len(video) == SECONDS * FPS
    assert video[0]["key_frame"] == 1
    assert float(video[0]["pts_time"]) == pytest.approx(0.0, abs=0.05)
    keys = [float(f["pts_time"]) for f in video if f["key_frame"] == 1]
    assert keys == pytest.approx([0.0, 1.0, 2.0], abs=0.05)
    streams = (await ffprobe("-show_entries", "stream=codec_type,codec_name",
                             str(rec / "index.m3u8")))["streams"]
    assert {(s["codec_type"], s["codec_name"]) for s in streams} == {
        ("video", "h264"), ("audio", "aac"),
    }

    # retention: kept until it expires, then gone (listing, HTTP, disk)
    end = datetime.fromisoformat(entry["ended"])
    assert library.sweep(now=end + timedelta(seconds=RETENTION_S - 1)) == 0
    assert directory.is_dir()
    clock.now = end + timedelta(seconds=RETENTION_S + 1)
    assert library.list() == []
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await fetch(http, base / "demo" / recorder.id / "index.m3u8")
        assert status == 404 and headers["Content-Type"].startswith("application/problem+json")
    assert library.sweep() == 1
    assert not directory.exists() and not directory.parent.exists()


async def video_frames(runs: list[tuple[tuple[int, int], int]]) -> AsyncIterator[av.VideoFrame]:
    """Counter video, ``((width, height), frames)`` runs at 30 fps with continuous pts."""
    index = 0
    for size, count in runs:
        track = PatternVideoTrack(*size, FPS, code="counter")
        for _ in range(count):
            frame = track.make_frame(index, index)
            frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)
            index += 1
            yield frame


async def test_vod_of_a_stream_whose_resolution_changed(vod_server, x264) -> None:
    """640x360 then 320x180: the ladder re-plans at segment 4 with new init segments; the
    VOD keeps EXT-X-DISCONTINUITY, dates the new sequence, names ``init1.mp4`` in a
    second EXT-X-MAP and serves it; every segment, fetched with the init its EXT-X-MAP
    names, decodes to every frame at its own size.  (ffmpeg's HLS demuxer keeps the
    first init's parameter sets across an EXT-X-MAP change, so it is no judge here.)"""
    library, clock, base = vod_server
    recorder = library.recorder("demo")
    room = RoomStore(recorder=recorder)
    transcoder = LadderTranscoder(room, [Rung("360p", 360, 600_000), Rung("240p", 240, 300_000)],
                                  encoder_choice=x264, audio=False, parallel_rungs=False)
    try:
        await asyncio.wait_for(
            transcoder.run(video_frames([((640, 360), 60), ((320, 180), 90)])), timeout=120)
    finally:
        transcoder.close()
    assert transcoder.stats.replans == 1
    manifest = await asyncio.wait_for(recorder.finish(), 30)
    assert manifest is not None
    assert [(r["name"], r["segments"]) for r in manifest["renditions"]] == [("v0", 5), ("v1", 5)]
    directory = recorder.directory
    v0 = room.renditions["v0"]
    pdt = v0.playlist.segments[4].program_date_time.isoformat(timespec="milliseconds")
    text = (directory / "v0" / "index.m3u8").read_text()
    assert text.split("#EXT-X-MAP", 1)[1].split("#EXTINF", 1)[0].startswith(':URI="init.mp4"\n')
    assert (
        'seg3.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="init1.mp4"\n'
        f"#EXT-X-PROGRAM-DATE-TIME:{pdt.replace('+00:00', 'Z')}\n#EXTINF:1.0,\nseg4.m4s\n"
    ) in text
    assert strict_problems([Revision("VOD v0", "media", text)]) == []
    assert (directory / "v0" / "init.mp4").read_bytes() == v0.init_segment(0)
    assert (directory / "v0" / "init1.mp4").read_bytes() == v0.init == v0.init_segment(1)
    clock.now = datetime.now(UTC)
    rec = base / "demo" / recorder.id
    async with aiohttp.ClientSession() as http:
        status, headers, body = await fetch(http, rec / "v1/init1.mp4")
        assert status == 200 and headers["Content-Type"] == "video/mp4"
        assert body == room.renditions["v1"].init
        status, _, _ = await fetch(http, rec / "v1/init2.mp4")
        assert status == 404
        status, _, body = await fetch(http, rec / "v0/index.m3u8")
        assert status == 200
        groups: dict[str, bytes] = {}
        for segment in m3u8.loads(body.decode()).segments:
            init = segment.init_section.uri
            if init not in groups:
                groups[init] = (await fetch(http, rec / "v0" / init))[2]
            groups[init] += (await fetch(http, rec / "v0" / segment.uri))[2]
    sizes = []
    for data in groups.values():
        with av.open(io.BytesIO(data)) as container:
            sizes += [(f.width, f.height, round(f.time, 3)) for f in container.decode(video=0)]
    assert sizes == [(640, 360, round(i / FPS, 3)) for i in range(120)] + [
        (320, 180, round((120 + i) / FPS, 3)) for i in range(30)
    ]


async def test_vod_variants_start_together(tmp_path: Path) -> None:
    """A rendition added mid-stream (numbered from the others' MSN) trims the VOD's
    other renditions to its first segment; one added more than MAX_LATE_START_S later is
    left out (§6.2.4: every variant presents the same content)."""
    library = RecordingLibrary(tmp_path, RETENTION_S)
    recorder = library.recorder("demo")
    room = RoomStore(recorder=recorder)
    synthetic(room, ("v0", "a0"), 2)
    room.renditions["v0"].discontinuity()
    room.add_rendition("v1", target_duration=1, part_target=0.2, align_with="v0")
    room.renditions["v1"].set_init(b"<init v1>")
    room.set_variants([VariantStream(f"{n}/index.m3u8", 500_000, "avc1.64000d")
                       for n in ("v0", "v1")])
    for msn in range(2, 40):
        for name in ("v0", "v1") if msn < 35 else ("v0",):
            store = room.renditions[name]
            for index in range(5):
                store.publish_part(b"x" * 100, 0.2, index == 0)
            store.close_segment(T0 + timedelta(seconds=msn))
        if msn == 34:
            room.add_rendition("v2", target_duration=1, part_target=0.2, align_with="v0")
            room.renditions["v2"].set_init(b"<init v2>")
            room.end_rendition("v1")
    for msn in range(35, 40):
        store = room.renditions["v2"]
        for index in range(5):
            store.publish_part(b"x" * 100, 0.2, index == 0)
        store.close_segment(T0 + timedelta(seconds=msn))
    room.set_variants([VariantStream(f"{n}/index.m3u8", 500_000, "avc1.64000d")
                       for n in ("v0", "v1", "v2")])
    room.end()
    manifest = await recorder.finish()
    assert manifest is not None
    assert {r["name"]: r["segments"] for r in manifest["renditions"]} == {"v0": 38, "v1": 33}
    for name in ("v0", "v1"):
        pl = m3u8.loads((recorder.directory / name / "index.m3u8").read_text())
        assert pl.media_sequence == 2 and "DISCONTINUITY" not in pl.dumps()
    assert "v2/index.m3u8" not in (recorder.directory / "index.m3u8").read_text()


# --- HTTP edge: 404s and traversal --------------------------------------------------------


async def test_unknown_and_traversal_requests_are_404_problems(vod_server, tmp_path) -> None:
    library, _, base = vod_server
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    recorder = library.recorder("demo")
    room = RoomStore(recorder=recorder)
    synthetic(room, ("v0", "a0"), 2)
    room.end()
    assert await recorder.finish() is not None
    (library.root / "demo" / "secret.m4s").write_text("TOPSECRET")
    rec = f"/vod/demo/{recorder.id}"
    other_id = new_recording_id(T0)
    paths = [
        f"{rec}/v0/seg7.m4s",  # unknown segment
        f"{rec}/v9/index.m3u8",  # unknown rendition
        f"/vod/demo/{other_id}/index.m3u8",  # unknown recording
        f"/vod/other/{recorder.id}/index.m3u8",  # wrong room
        f"/vod/demo/{recorder.id[:-1]}/index.m3u8",  # not an id
        f"{rec}/{MANIFEST_NAME}",  # not served
        f"{rec}/v0/part0.0.m4s",  # not recorded
        f"{rec}/v0/..%2F..%2F..%2F..%2Fsecret.txt",
        f"{rec}/..%2F..%2F..%2Fsecret.txt",
        f"{rec}/%2e%2e/secret.m4s",
        "/vod/demo/..%2Fdemo/v0/index.m3u8",
        f"/vod/%2e%2e/{recorder.id}/index.m3u8",
        "/vod/..%2F..%2F/x/secret.txt",
        f"{rec}/v0/%2e%2e%2F%2e%2e%2F{MANIFEST_NAME}",
        f"{rec}/..%5C..%5Csecret.txt",
        f"{rec}/v0/seg0.m4s%00",
        f"{rec}/v0/seg0.m4s%0A",
        f"/vod/demo%0A/{recorder.id}/index.m3u8",
    ]
    async with aiohttp.ClientSession() as http:
        origin = str(base.origin())
        status, _, body = await fetch(http, URL(f"{origin}{rec}/v0/seg1.m4s", encoded=True))
        assert status == 200 and body == room.renditions["v0"].segment(1)
        for path in paths:
            url = URL(origin + path, encoded=True)
            status, headers, body = await fetch(http, url)
            assert status == 404, path
            assert headers["Content-Type"].startswith("application/problem+json"), path
            assert headers["Access-Control-Allow-Origin"] == "*"
            assert headers["Cache-Control"] == "no-store"
            problem = json.loads(body)
            assert problem["status"] == 404 and problem["title"] == "Not Found"
            assert b"TOPSECRET" not in body
    # the library's own lookup refuses anything but its names
    assert library.path("demo", recorder.id, "v0", "seg1.m4s") is not None
    for parts in (("..", recorder.id), ("demo", ".."), ("demo", recorder.id, "..", "x"),
                  ("demo", recorder.id, "v0", "../../secret.txt"), ("/etc", recorder.id),
                  ("demo", recorder.id, "v0", "a", "b")):
        assert library.path(*parts) is None, parts
    with pytest.raises(RecordingError):
        Recorder(library.root, "../escape")


# --- what gets published ------------------------------------------------------------------


async def test_empty_recording_is_removed_not_listed(tmp_path: Path) -> None:
    library = RecordingLibrary(tmp_path, RETENTION_S)
    recorder = library.recorder("demo")
    room = RoomStore(recorder=recorder)
    synthetic(room, ("v0",), 0)  # init and multivariant, no segment
    room.end()
    assert await recorder.finish() is None
    assert not recorder.directory.exists()
    assert library.list() == []
    # a recorder whose stream never produced anything at all
    idle = library.recorder("demo")
    assert await idle.finish() is None and library.list() == []


async def test_multivariant_keeps_only_recorded_renditions(tmp_path: Path) -> None:
    library = RecordingLibrary(tmp_path, RETENTION_S)
    recorder = library.recorder("demo")
    room = RoomStore(recorder=recorder)
    synthetic(room, ("v0", "v1", "a0"), 2, audio_segments=False)  # audio never got a segment
    room.end()
    room.end()  # the recorder is told once
    manifest = await recorder.finish()
    assert manifest is not None
    assert [r["name"] for r in manifest["renditions"]] == ["v0", "v1"]
    master = m3u8.loads((recorder.directory / "index.m3u8").read_text())
    assert [p.uri for p in master.playlists] == ["v0/index.m3u8", "v1/index.m3u8"]
    assert master.media == []
    assert all(p.stream_info.audio is None for p in master.playlists)
    assert all(p.stream_info.codecs == "avc1.64000d" for p in master.playlists)
    assert not (recorder.directory / "a0" / "index.m3u8").exists()


async def test_unwritable_directory_does_not_break_the_live_store(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    recorder = Recorder(blocker / "rec", "demo")
    room = RoomStore(recorder=recorder)
    with caplog.at_level(logging.ERROR, logger="hls_bridge.recording"):
        synthetic(room, ("v0", "a0"), 3)
        room.end()
        assert await recorder.finish() is None
    # the live side saw nothing of it
    store = room.renditions["v0"]
    assert [s.msn for s in store.playlist.segments] == [0, 1, 2]
    assert store.segment(2) == b"".join(f"<v0 2.{i}>".encode() * 50 for i in range(5))
    assert store.playlist.ended
    assert isinstance(recorder.error, OSError)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


async def test_disk_error_mid_stream_publishes_what_was_written(tmp_path: Path) -> None:
    library = RecordingLibrary(tmp_path, RETENTION_S)
    recorder = library.recorder("demo")
    (recorder.directory / "v0" / "seg2.m4s").mkdir(parents=True)  # writing it will fail
    room = RoomStore(recorder=recorder)
    synthetic(room, ("v0",), 4)
    room.end()
    manifest = await recorder.finish()
    assert isinstance(recorder.error, IsADirectoryError)
    assert manifest is not None and manifest["truncated"]
    assert manifest["renditions"] == [
        {"name": "v0", "segments": 2, "duration_s": 2.0, "bytes": 2 * 5 * 50 * 8},
    ]
    pl = m3u8.loads((recorder.directory / "v0" / "index.m3u8").read_text())
    assert [s.uri for s in pl.segments] == ["seg0.m4s", "seg1.m4s"] and pl.is_endlist
    assert not (recorder.directory / "v0" / "seg3.m4s").exists()  # stopped after the error
    assert len(room.renditions["v0"].playlist.segments) == 4  # live stream unaffected
    assert [e["id"] for e in library.list()] == [recorder.id]


async def test_slow_disk_backlog_stops_the_recording(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "demo", max_pending_bytes=1000)
    room = RoomStore(recorder=recorder)
    synthetic(room, ("v0",), 4)  # 2000 bytes per segment: more than the disk may owe
    room.end()
    assert await recorder.finish() is None
    assert recorder.error is not None and "waiting for the disk" in str(recorder.error)
    assert len(room.renditions["v0"].playlist.segments) == 4


# --- retention of unfinished directories --------------------------------------------------


async def test_sweep_removes_abandoned_but_not_active_recordings(tmp_path: Path) -> None:
    library = RecordingLibrary(tmp_path, RETENTION_S)
    abandoned = tmp_path / "demo" / new_recording_id(T0)
    (abandoned / "v0").mkdir(parents=True)
    (abandoned / "v0" / "seg0.m4s").write_bytes(b"x")
    old = (T0 - timedelta(days=1)).timestamp()
    for path in (abandoned / "v0" / "seg0.m4s", abandoned / "v0", abandoned):
        os.utime(path, (old, old))
    foreign = tmp_path / "lost+found"
    foreign.mkdir()
    active = library.recorder("live")
    room = RoomStore(recorder=active)
    synthetic(room, ("v0",), 1)
    await asyncio.wait_for(active.flush(), 10)
    assert (active.directory / "v0" / "seg0.m4s").is_file()
    assert library.list() == []  # unfinished recordings are never listed

    later = datetime.now(UTC) + timedelta(seconds=2 * RETENTION_S)
    soon = T0 - timedelta(days=1) + timedelta(seconds=RETENTION_S / 2)
    assert library.sweep(now=soon) == 0  # still within retention of its last write
    assert library.sweep(now=later) == 1
    assert not abandoned.exists() and not (tmp_path / "demo").exists()
    assert active.directory.is_dir() and foreign.is_dir()
    room.end()
    assert await active.finish() is not None
    assert [e["room"] for e in library.list()] == ["live"]


# --- store hooks --------------------------------------------------------------------------


class Events:
    """A StoreRecorder that writes down what it is told."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[tuple] = []
        self.fail = fail

    def on_init(self, rendition: str, data: bytes) -> None:
        self.events.append(("init", rendition, len(data)))

    def on_segment(self, rendition, segment, data) -> None:
        self.events.append(("segment", rendition, segment.msn, segment.duration, len(data)))
        if self.fail:
            raise RuntimeError("recorder bug")

    def on_variants(self, text, variants, audio) -> None:
        self.events.append(("variants", [v.uri for v in variants], [a.uri for a in audio]))

    def on_end(self) -> None:
        self.events.append(("end",))


def test_store_hooks_and_late_attach(caplog) -> None:
    room = RoomStore()
    synthetic(room, ("v0", "a0"), 1)
    late = Events()
    room.recorder = late  # replays init segments and the multivariant playlist
    assert late.events == [("init", "v0", 9), ("init", "a0", 9),
                           ("variants", ["v0/index.m3u8"], ["a0/index.m3u8"])]
    late.events.clear()
    store = room.renditions["v0"]
    for index in range(5):
        store.publish_part(b"x" * 10, 0.2, index == 0)
    store.close_segment(T0)
    room.end()
    room.end()
    assert late.events == [("segment", "v0", 1, pytest.approx(1.0), 50), ("end",)]

    # a segment in progress when the stream ends (the transcoder stopped mid-segment) is
    # closed as the last, shorter segment: players may already have its parts
    told = Events()
    room = RoomStore(recorder=told)
    synthetic(room, ("v0",), 1)
    room.renditions["v0"].publish_part(b"x", 0.2, True)
    room.end()
    playlist = room.renditions["v0"].playlist
    assert playlist.ended and not playlist.pending_parts
    assert [s.duration for s in playlist.segments][-1] == pytest.approx(0.2)
    assert told.events[-2:] == [("segment", "v0", 1, pytest.approx(0.2), 1), ("end",)]

    # a rendition that fails to end still ends the recording
    told = Events()
    room = RoomStore(recorder=told)
    synthetic(room, ("v0",), 1)
    rendition = room.renditions["v0"]
    rendition.publish_part(b"x", 0.2, True)

    def refuse(*args: object) -> None:
        raise PlaylistStateError("refused")

    rendition.close_segment = refuse  # type: ignore[method-assign]
    with pytest.raises(PlaylistStateError):
        room.end()
    assert told.events[-1] == ("end",)

    failing = Events(fail=True)
    room = RoomStore(recorder=failing)
    with caplog.at_level(logging.ERROR, logger="hls_bridge.store"):
        synthetic(room, ("v0",), 2)  # the recorder raises on every segment
    assert [s.msn for s in room.renditions["v0"].playlist.segments] == [0, 1]
    assert sum("on_segment" in r.getMessage() for r in caplog.records) == 2


def test_config_from_env(tmp_path: Path) -> None:
    off = RecordingConfig.from_env({})
    assert not off.enabled and off.retention_s == 168 * 3600 and off.library() is None
    on = RecordingConfig.from_env({"RELAYCAST_HLS_RECORD_DIR": str(tmp_path),
                                   "RELAYCAST_HLS_RECORD_RETENTION_H": "1.5"})
    library = on.library()
    assert library is not None and library.root == tmp_path
    assert library.retention == timedelta(hours=1.5)
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ConfigError, match="RETENTION_H|positive"):
            RecordingConfig.from_env({"RELAYCAST_HLS_RECORD_RETENTION_H": bad})
