"""ABR ladder planning and the LadderTranscoder, checked with the LL-HLS checker and ffprobe."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import av
import m3u8
import pytest

from hls_bridge.encoders import choose_encoder
from hls_bridge.fmp4 import codecs_string_aac
from hls_bridge.ladder import DEFAULT_LADDER, Rung, parse_bitrate, parse_ladder, plan_ladder
from hls_bridge.store import PLAYLIST_NAME, RoomStore
from hls_bridge.transcoder import AUDIO_RENDITION, LadderTranscoder, TranscoderError
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.hls_bridge.llhls_checker import check_media, check_multivariant, check_renditions
from tests.polling import wait_for

FFPROBE = "/usr/bin/ffprobe"
needs_ffprobe = pytest.mark.skipif(shutil.which(FFPROBE) is None, reason="needs Debian ffprobe")

SECONDS = 3
FPS = 30
VIDEO_TB = Fraction(1, 90_000)


# --- ladder -----------------------------------------------------------------------------


def sizes(rungs: list[Rung]) -> list[tuple[str, int, int]]:
    return [(r.name, r.width, r.height) for r in rungs]


def test_plan_ladder_never_upscales_and_keeps_aspect() -> None:
    assert sizes(plan_ladder(1280, 720)) == [
        ("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360),
    ]
    assert sizes(plan_ladder(1920, 1080))[0] == ("1080p", 1920, 1080)
    assert len(plan_ladder(1920, 1080)) == 4
    # above 1080p: capped at 1080p
    assert sizes(plan_ladder(2560, 1440))[0] == ("1080p", 1920, 1080)
    # between rungs: the source size is the top rung, bitrate scaled from the rung above
    top, *rest = plan_ladder(1600, 900)
    assert (top.name, top.width, top.height) == ("900p", 1600, 900)
    assert 2_800_000 < top.video_bitrate < 5_000_000
    assert [r.height for r in rest] == [720, 480, 360]
    # odd source sizes give even sizes; portrait sources scale the short side
    assert sizes(plan_ladder(641, 361)) == [("360p", 640, 360)]
    assert sizes(plan_ladder(720, 1280)) == [
        ("720p", 720, 1280), ("480p", 480, 854), ("360p", 360, 640),
    ]
    # a small source is its own single rung
    assert sizes(plan_ladder(320, 180)) == [("180p", 320, 180)]
    for rung in plan_ladder(1366, 768):
        assert rung.width % 2 == 0 and rung.height % 2 == 0


def test_parse_ladder() -> None:
    assert parse_ladder("1080p,720p,480p,360p") == list(DEFAULT_LADDER)
    assert [(r.height, r.video_bitrate) for r in DEFAULT_LADDER] == [
        (1080, 5_000_000), (720, 2_800_000), (480, 1_400_000), (360, 800_000),
    ]
    assert [(r.name, r.height, r.video_bitrate) for r in parse_ladder(" 720:2800k, 360p:0.8M ")] == [
        ("720p", 720, 2_800_000), ("360p", 360, 800_000),
    ]
    assert parse_bitrate("500000") == 500_000


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty ladder"),
        ("720p,,360p", "empty entry"),
        ("720x", "bad ladder entry '720x'"),
        ("721p", "height must be even"),
        ("900p", "no default bitrate for 900p"),
        ("720:fast", "bad bitrate 'fast'"),
        ("720:500", "below 1 kbit/s"),
        ("720p,720:1M", "lists 720p twice"),
    ],
)
def test_parse_ladder_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ladder(spec)


# --- transcoding ------------------------------------------------------------------------


def video_frames(width: int, height: int, count: int) -> list[av.VideoFrame]:
    track = PatternVideoTrack(width, height, FPS, code="counter")
    frames = []
    for i in range(count):
        frame = track.make_frame(i, i)
        frame.pts = round(i * 90_000 / FPS)
        frame.time_base = VIDEO_TB
        frames.append(frame)
    return frames


def audio_frames(seconds: float) -> list[av.AudioFrame]:
    tone = ToneAudioTrack(channels=2)
    count = round(seconds * tone.sample_rate / tone.samples_per_frame)
    return [tone.make_frame(i * tone.samples_per_frame) for i in range(count)]


async def interleaved(
    video: list[av.VideoFrame], audio: list[av.AudioFrame]
) -> AsyncIterator[av.VideoFrame | av.AudioFrame]:
    """Both lists merged in media-time order, as a room subscriber would hand them over."""
    items = [(f.pts * f.time_base, 0, f) for f in video]
    items += [(f.pts * f.time_base, 1, f) for f in audio]
    for _, _, frame in sorted(items, key=lambda item: item[:2]):
        yield frame


def ffprobe_frames(path: Path, stream: str = "v:0") -> list[dict]:
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", stream, "-show_frames",
         "-show_entries", "frame=key_frame,pts_time,width,height,nb_samples",
         "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)["frames"]


def rendition_file(tmp_path: Path, room: RoomStore, name: str) -> Path:
    """init + every segment body of rendition ``name``, concatenated (a plain fMP4 file)."""
    store = room.renditions[name]
    assert store.init is not None
    path = tmp_path / f"{name}.mp4"
    bodies = [store.segment(s.msn) for s in store.playlist.segments]
    assert all(b is not None for b in bodies)
    path.write_bytes(store.init + b"".join(b for b in bodies if b is not None))
    return path


@pytest.fixture(scope="module")
def x264():
    return choose_encoder(["libx264"])


@needs_ffprobe
async def test_ladder_transcode_aligned_keyframes(tmp_path: Path, x264, capsys) -> None:
    video = video_frames(1280, 720, SECONDS * FPS)
    audio = audio_frames(SECONDS)
    room = RoomStore()
    transcoder = LadderTranscoder(room, parse_ladder("720p,480p,360p"), encoder_choice=x264)
    loop_thread = threading.get_ident()
    store_threads: set[int] = set()

    # Store changes must happen on the loop: record the thread of every publish_part.
    def record(store):
        publish = store.publish_part

        def recording_publish(*args, **kwargs):
            store_threads.add(threading.get_ident())
            return publish(*args, **kwargs)

        store.publish_part = recording_publish
        return store

    original_add = room.add_rendition
    room.add_rendition = lambda name, **kwargs: record(original_add(name, **kwargs))
    record(room.renditions[AUDIO_RENDITION])

    async def first_video_segment() -> bool:
        v2 = await wait_for(
            lambda: room.renditions.get("v2"), 120, "the v2 rendition", interval_s=0.01
        )
        return await v2.wait_until(lambda: bool(v2.playlist.segments), timeout=30)

    waiter = asyncio.create_task(first_video_segment())
    start = time.perf_counter()
    try:
        await asyncio.wait_for(transcoder.run(interleaved(video, audio)), timeout=120)
    finally:
        transcoder.close()
    wall = time.perf_counter() - start
    assert await asyncio.wait_for(waiter, 5), "a loop waiter was not woken by the worker's parts"
    assert store_threads == {loop_thread}

    rtf = SECONDS / wall
    with capsys.disabled():
        print(
            f"\n[benchmark] 3-rung ladder (720p/480p/360p) from 720p30 with {x264.name}: "
            f"{SECONDS} s media in {wall:.2f} s wall, real-time factor {rtf:.2f}x; "
            f"measured kbit/s {({k: round(v / 1000) for k, v in transcoder.measured_bitrates().items()})}"
        )

    # multivariant: 3 variants, resolutions, codecs, audio group
    assert room.multivariant is not None
    mv = check_multivariant(room.multivariant)
    stream = room.stream_id
    assert [p.uri for p in mv.playlists] == [f"{stream}/v{i}/{PLAYLIST_NAME}" for i in range(3)]
    assert [p.stream_info.resolution for p in mv.playlists] == [(1280, 720), (854, 480), (640, 360)]
    audio_codec = codecs_string_aac(bytes.fromhex("1190"))
    for p in mv.playlists:
        video_codec, acodec = p.stream_info.codecs.split(",")
        assert video_codec.startswith("avc1.") and len(video_codec) == len("avc1.64001f")
        assert acodec == audio_codec
        assert p.stream_info.audio == "audio"
        assert p.stream_info.frame_rate == pytest.approx(30.0)
    assert [(m.type, m.uri) for m in mv.media] == [
        ("AUDIO", f"{stream}/{AUDIO_RENDITION}/{PLAYLIST_NAME}")]

    # media playlists: LL-HLS rules, 0.2 s parts, 1 s segments
    names = ["v0", "v1", "v2", AUDIO_RENDITION]
    texts = {f"../{n}/{PLAYLIST_NAME}": room.render_media(n) for n in names}
    for text in texts.values():
        check_media(text)
    check_renditions(texts, exact_reports=False)
    for name in names[:3]:
        pl = m3u8.loads(room.render_media(name))
        assert pl.part_inf.part_target == pytest.approx(0.2)
        assert pl.is_endlist
        assert [float(s.duration) for s in pl.segments] == pytest.approx([1.0] * SECONDS)
        for segment in pl.segments:
            assert [float(p.duration) for p in segment.parts] == pytest.approx([0.2] * 5)
            assert segment.parts[0].independent == "YES"
    audio_pl = m3u8.loads(room.render_media(AUDIO_RENDITION))
    # 1 s segments (to one AAC frame); the encoder's priming frame adds a short tail
    audio_durations = [float(s.duration) for s in audio_pl.segments]
    assert audio_durations[:SECONDS] == pytest.approx([1.0] * SECONDS, abs=1024 / 48_000)
    assert sum(audio_durations[SECONDS:]) < 0.05
    assert sum(audio_durations) == pytest.approx(SECONDS, abs=0.05)

    # every rendition decodes at its size with keyframes exactly at 0, 1, 2 s
    expected = {"v0": (1280, 720), "v1": (854, 480), "v2": (640, 360)}
    for name, (width, height) in expected.items():
        frames = ffprobe_frames(rendition_file(tmp_path, room, name))
        assert len(frames) == SECONDS * FPS, name
        assert {(f["width"], f["height"]) for f in frames} == {(width, height)}
        keys = [float(f["pts_time"]) for f in frames if f["key_frame"] == 1]
        assert keys == pytest.approx([0.0, 1.0, 2.0], abs=1e-3), name
        times = [float(f["pts_time"]) for f in frames]
        assert times == pytest.approx([i / FPS for i in range(SECONDS * FPS)], abs=1e-3)

    audio_path = rendition_file(tmp_path, room, AUDIO_RENDITION)
    probe = subprocess.run(
        [FFPROBE, "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels",
         "-of", "json", str(audio_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(probe.stdout)["streams"][0] == {
        "codec_name": "aac", "sample_rate": "48000", "channels": 2,
    }
    audio_decoded = ffprobe_frames(audio_path, "a:0")
    decoded_seconds = sum(int(f["nb_samples"]) for f in audio_decoded) / 48_000
    assert decoded_seconds == pytest.approx(SECONDS, abs=0.05)


async def test_irregular_timestamps_stay_constant_frame_rate(x264) -> None:
    """Millisecond pts with jitter, a lost frame, a duplicate and a restart: still CFR output."""
    track = PatternVideoTrack(320, 180, FPS, code="counter")
    ms = Fraction(1, 1000)
    times = [round(i * 1000 / FPS) + (3 if i % 2 else -3) for i in range(40)]
    del times[12]  # a lost frame: slot 12 repeats slot 11
    times.insert(20, times[19] + 5)  # a second frame inside slot 19: dropped
    times += [100_000 + round(i * 1000 / FPS) for i in range(20)]  # timestamps jump ahead

    async def frames() -> AsyncIterator[av.VideoFrame]:
        for i, t in enumerate(times):
            frame = track.make_frame(i, i)
            frame.pts, frame.time_base = t, ms
            yield frame

    room = RoomStore()
    transcoder = LadderTranscoder(room, [Rung("180p", 180, 300_000)], encoder_choice=x264,
                                  audio=False)
    try:
        await asyncio.wait_for(transcoder.run(frames()), timeout=60)
    finally:
        transcoder.close()
    assert transcoder.stats.repeated_frames == 1
    assert transcoder.stats.dropped_frames == 1
    assert transcoder.stats.rebases == 1
    assert transcoder.stats.video_slots == 60  # 40 slots, then 20 continuing after the jump
    text = room.render_media("v0")
    check_media(text)
    pl = m3u8.loads(text)
    assert [float(s.duration) for s in pl.segments] == pytest.approx([1.0, 1.0])
    mv = m3u8.loads(room.multivariant or "")
    assert mv.playlists[0].stream_info.resolution == (320, 180)
    assert mv.media == []


def test_settings_are_checked() -> None:
    with pytest.raises(TranscoderError, match="frames per part"):
        LadderTranscoder(RoomStore(), DEFAULT_LADDER, part_s=0.01, audio=False)
    with pytest.raises(TranscoderError, match="not empty"):
        LadderTranscoder(RoomStore(), [], audio=False)


def test_part_target_is_a_whole_number_of_frames() -> None:
    transcoder = LadderTranscoder(RoomStore(), DEFAULT_LADDER, fps=24, part_s=0.2)
    assert transcoder.part_frames == 4
    assert transcoder.part_target == pytest.approx(4 / 24)
    assert transcoder.audio_part_frames == 7  # 7 x 1024 / 48000 = 0.149 s >= 85 % of 0.1667


def test_audio_keeps_to_its_input_timestamps() -> None:
    """Gaps in the audio timestamps are filled with silence, overlaps dropped, a jump
    over ``max_gap_s`` re-based: the audio timeline stays the input's."""
    room = RoomStore()
    transcoder = LadderTranscoder(room, DEFAULT_LADDER)  # no video: audio only
    tone = ToneAudioTrack(channels=2)  # 960-sample frames, pts in samples
    # 0, 960: contiguous; 2400: 480 missing before it; 2880: its first 480 samples
    # overlap; 3360: overlaps by 480 again; 3360 once more: a full duplicate; then a
    # 10 s jump: re-based, not filled.
    for start in (0, 960, 2400, 2880, 3360, 3360, 480_000):
        frame = tone.make_frame(start)
        transcoder.feed_audio(frame)
    transcoder.end()
    stats = transcoder.stats
    assert stats.audio_filled_samples == 480
    assert stats.audio_dropped_samples == 480 + 480 + 960
    assert stats.audio_rebases == 1
    assert stats.audio_samples == 960 * 7 + 480 - 1920  # what reached the encoder
    (segment,) = room.renditions[AUDIO_RENDITION].playlist.segments
    # 5280 samples in whole AAC frames, plus the encoder's flush
    assert 5280 / 48_000 <= segment.duration <= (5280 + 2 * 1024) / 48_000
