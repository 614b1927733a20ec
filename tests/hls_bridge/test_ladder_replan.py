"""The ABR ladder follows the source: a real LadderTranscoder (libx264, AAC) fed PyAV
frames whose size changes mid-stream re-plans its ladder at a segment boundary, with
EXT-X-DISCONTINUITY, a new EXT-X-MAP and a rewritten multivariant playlist."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import av
import m3u8
import numpy as np
import pytest
from aiohttp import web

from hls_bridge.encoders import choose_encoder
from hls_bridge.ladder import Rung, parse_ladder, plan_ladder
from hls_bridge.model import Segment
from hls_bridge.origin import create_origin_app
from hls_bridge.playlist import AudioRendition, VariantStream, skipped_segment_count
from hls_bridge.store import RoomStore
from hls_bridge.transcoder import AUDIO_RENDITION, LadderTranscoder
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.hls_bridge.llhls_checker import (
    check_delta,
    check_media,
    check_multivariant,
    check_renditions,
    check_sequence,
)
from tests.hls_bridge.test_llhls_strict import Revision, strict_problems

FPS = 30
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
Size = tuple[int, int]


@pytest.fixture(scope="module")
def x264():
    return choose_encoder(["libx264"])


class Log:
    """A `StoreRecorder` keeping every multivariant playlist and closed segment."""

    def __init__(self) -> None:
        self.multivariants: list[str] = []
        self.segments: dict[str, list[Segment]] = {}
        self.inits: dict[str, list[bytes]] = {}

    def on_init(self, rendition: str, data: bytes) -> None:
        self.inits.setdefault(rendition, []).append(data)

    def on_segment(self, rendition: str, segment: Segment, data: bytes) -> None:
        self.segments.setdefault(rendition, []).append(segment)

    def on_variants(self, text: str, variants: Sequence[VariantStream],
                    audio: Sequence[AudioRendition]) -> None:
        self.multivariants.append(text)

    def on_end(self) -> None:
        pass


def source(sizes: Sequence[tuple[Size, int]], *, audio: bool = True) -> list[av.Frame]:
    """Video frames of the given sizes (``((w, h), frames)`` runs, 30 fps, continuous
    pts) and, with ``audio``, 20 ms stereo frames, merged in media-time order."""
    items: list[tuple[Fraction, int, av.Frame]] = []
    tracks: dict[Size, PatternVideoTrack] = {}
    index = 0
    for size, count in sizes:
        for _ in range(count):
            if size[0] < 160:  # too narrow for the pattern's frame code: plain grey
                frame = av.VideoFrame.from_ndarray(
                    np.full((size[1], size[0], 3), 128, np.uint8), format="rgb24")
            else:
                track = tracks.setdefault(size, PatternVideoTrack(*size, FPS, code="counter"))
                frame = track.make_frame(index, index)
            frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)
            items.append((Fraction(index, FPS), 0, frame))
            index += 1
    if audio:
        tone = ToneAudioTrack(channels=2)
        per_frame = tone.samples_per_frame
        for i in range(index * tone.sample_rate // FPS // per_frame):
            items.append(
                (Fraction(i * per_frame, tone.sample_rate), 1, tone.make_frame(i * per_frame))
            )
    items.sort(key=lambda item: item[:2])
    return [frame for _, _, frame in items]


def resolutions(multivariant: str) -> list[tuple[str, tuple[int, int]]]:
    return [(p.uri, p.stream_info.resolution) for p in m3u8.loads(multivariant).playlists]


def decoded_sizes(init: bytes, body: bytes) -> tuple[set[Size], float]:
    """Sizes of every picture an fMP4 init + segment decode to, and the first one's time."""
    with av.open(io.BytesIO(init + body)) as container:
        frames = list(container.decode(video=0))
    assert frames
    return {(f.width, f.height) for f in frames}, float(frames[0].time)


def test_plan_ladder_min_rungs_keeps_the_rung_count() -> None:
    ladder = parse_ladder("720p,480p,360p")
    assert [(r.width, r.height) for r in plan_ladder(640, 360, ladder)] == [(640, 360)]
    assert [(r.name, r.width, r.height, r.video_bitrate)
            for r in plan_ladder(640, 360, ladder, min_rungs=3)] == [
        ("360p", 640, 360, 800_000), ("240p", 426, 240, 400_000), ("160p", 284, 160, 177_778),
    ]
    assert plan_ladder(1280, 720, ladder, min_rungs=3) == plan_ladder(1280, 720, ladder)
    # portrait keeps the short side; a tiny source cannot fill below 64 px
    assert [(r.width, r.height) for r in plan_ladder(360, 640, ladder, min_rungs=2)] == [
        (360, 640), (240, 426),
    ]
    assert [r.height for r in plan_ladder(64, 64, ladder, min_rungs=3)] == [64]


def test_a_source_ramping_to_720p_gets_a_720p_rendition(x264) -> None:
    """640x360 for 1.5 s, then 1280x720: one rung at first, then the full 720p ladder
    from the first segment boundary half a segment after the size held for a second
    (segment 3): v0 gets a new init (1280x720) behind EXT-X-DISCONTINUITY + EXT-X-MAP,
    v1/v2 start at the same MSN and Discontinuity Sequence Number, and the audio
    rendition takes its discontinuity at the same segment (same init)."""
    log = Log()
    room = RoomStore(recorder=log, stream_id="s1")
    transcoder = LadderTranscoder(room, parse_ladder("720p,480p,360p"), fps=FPS,
                                  encoder_choice=x264, parallel_rungs=False)
    try:
        for frame in source([((640, 360), 45), ((1280, 720), 75)]):
            transcoder.feed(frame)
        transcoder.end()
    finally:
        transcoder.close()

    assert transcoder.stats.replans == 1
    assert [resolutions(text) for text in log.multivariants] == [
        [("s1/v0/index.m3u8", (640, 360))],
        [("s1/v0/index.m3u8", (1280, 720)), ("s1/v1/index.m3u8", (854, 480)),
         ("s1/v2/index.m3u8", (640, 360))],
    ]
    assert room.multivariant == log.multivariants[-1]
    check_multivariant(room.multivariant)

    v0 = room.renditions["v0"]
    assert [(s.msn, s.discontinuity, s.init_uri) for s in log.segments["v0"]] == [
        (0, False, "init.mp4"), (1, False, "init.mp4"), (2, False, "init.mp4"),
        (3, True, "init.mp4?v=1"),
    ]
    text = room.render_media("v0")
    assert '#EXT-X-MAP:URI="init.mp4"\n' in text
    assert 'seg2.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="init.mp4?v=1"\n' in text
    # the new init decodes the new segments at 1280x720, on the same timeline
    assert v0.init == v0.init_segment(1) == log.inits["v0"][1]
    assert decoded_sizes(v0.init_segment(0), v0.segment(2)) == ({(640, 360)}, 2.0)
    assert decoded_sizes(v0.init_segment(1), v0.segment(3)) == ({(1280, 720)}, 3.0)
    for name, size in (("v1", (854, 480)), ("v2", (640, 360))):
        store = room.renditions[name]
        assert [(s.msn, s.discontinuity) for s in log.segments[name]] == [(3, False)]
        assert store.playlist.discontinuity_sequence == 1
        assert decoded_sizes(store.init, store.segment(3)) == ({size}, 3.0)
        assert "#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in (
            room.render_media(name)
        )
    audio = log.segments[AUDIO_RENDITION]
    assert [s.msn for s in audio] == list(range(len(audio)))
    assert [s.msn for s in audio if s.discontinuity] == [3]
    assert len(log.inits[AUDIO_RENDITION]) == 1
    assert 'seg2.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM' in room.render_media(AUDIO_RENDITION)
    texts = {f"../{n}/index.m3u8": room.render_media(n) for n in room.renditions}
    for playlist in texts.values():
        check_media(playlist)
    check_renditions(texts)


def test_a_smaller_source_keeps_every_rendition_name(x264) -> None:
    """640x360 -> 320x180 with a 360p/240p ladder: still v0 and v1, now 320x180 and
    214x120 (a filled rung), each with a new init (segment 3); then a source too small
    for two rungs (64x64) ends v1 and the multivariant playlist names v0 alone
    (segment 5)."""
    log = Log()
    room = RoomStore(recorder=log, stream_id="s1")
    transcoder = LadderTranscoder(room, parse_ladder("360p,240p"), fps=FPS, audio=False,
                                  encoder_choice=x264, parallel_rungs=False)
    try:
        for frame in source([((640, 360), 30), ((320, 180), 60), ((64, 64), 90)],
                            audio=False):
            transcoder.feed(frame)
        transcoder.end()
    finally:
        transcoder.close()
    assert transcoder.stats.replans == 2
    assert [resolutions(text) for text in log.multivariants] == [
        [("s1/v0/index.m3u8", (640, 360)), ("s1/v1/index.m3u8", (426, 240))],
        [("s1/v0/index.m3u8", (320, 180)), ("s1/v1/index.m3u8", (214, 120))],
        [("s1/v0/index.m3u8", (64, 64))],
    ]
    v1 = room.renditions["v1"]
    assert [(s.msn, s.discontinuity) for s in log.segments["v1"]] == [
        (0, False), (1, False), (2, False), (3, True), (4, False),
    ]
    assert decoded_sizes(v1.init, v1.segment(3)) == ({(214, 120)}, 3.0)
    assert [(s.msn, s.discontinuity) for s in log.segments["v0"]][-2:] == [(4, False), (5, True)]
    assert v1.playlist.ended and "#EXT-X-ENDLIST" in room.render_media("v1")
    assert decoded_sizes(room.renditions["v0"].init, room.renditions["v0"].segment(5)) == (
        {(64, 64)}, 5.0,
    )


def test_a_flapping_source_does_not_re_plan(x264) -> None:
    """A size that changes every frame never holds for a segment: no re-plan; a size
    held for less than ``replan_after_s`` neither."""
    room = RoomStore(stream_id="s1")
    transcoder = LadderTranscoder(room, parse_ladder("360p,240p"), fps=FPS, audio=False,
                                  encoder_choice=x264, parallel_rungs=False)
    runs = [((320, 180) if i % 2 else (640, 360), 1) for i in range(60)]
    runs += [((320, 180), 20), ((640, 360), 40)]
    try:
        for frame in source(runs, audio=False):
            transcoder.feed(frame)
        transcoder.end()
    finally:
        transcoder.close()
    assert transcoder.stats.replans == 0
    assert "DISCONTINUITY" not in room.render_media("v0")
    assert resolutions(room.multivariant)[0] == ("s1/v0/index.m3u8", (640, 360))


def test_every_revision_of_a_stream_with_a_resolution_change_passes_strict_checks(
    x264,
) -> None:
    """14 s: 320x180 for 2 s, then 640x360 with a 360p/240p ladder and an 8-segment
    window: every revision of every playlist (full, delta update, multivariant) passes
    npm hls-parser (strict) and the in-house checker, through the re-plan and the
    discontinuity sliding out of the window (EXT-X-DISCONTINUITY-SEQUENCE)."""
    room = RoomStore(stream_id="s1")
    transcoder = LadderTranscoder(
        room, [Rung("360p", 360, 600_000), Rung("240p", 240, 300_000)], fps=FPS,
        encoder_choice=x264, parallel_rungs=False, window_segments=8,
    )
    revisions: list[Revision] = []
    full: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    multivariant = None

    def snapshot(label: str) -> None:
        nonlocal multivariant
        for name, store in room.renditions.items():
            if seen.get(name) == store.version or not store.has_media:
                continue
            seen[name] = store.version
            text = room.render_media(name)
            full.setdefault(name, []).append(text)
            revisions.append(Revision(f"{label} {name}", "media", text))
            check_media(text)
            if skipped_segment_count(store.playlist):
                delta = room.render_media(name, skip=True)
                revisions.append(Revision(f"{label} {name} _HLS_skip", "media", delta))
                check_delta(text, delta)
        if room.multivariant is not None and room.multivariant != multivariant:
            multivariant = room.multivariant
            revisions.append(Revision(f"{label} multivariant", "multivariant", multivariant))
            check_multivariant(multivariant)

    try:
        for index, frame in enumerate(source([((320, 180), 60), ((640, 360), 360)])):
            transcoder.feed(frame)
            snapshot(f"frame {index}")
        transcoder.end()
        snapshot("end")
    finally:
        transcoder.close()

    assert transcoder.stats.replans == 1
    assert resolutions(multivariant) == [
        ("s1/v0/index.m3u8", (640, 360)), ("s1/v1/index.m3u8", (426, 240)),
    ]
    v0 = full["v0"]
    assert any("#EXT-X-DISCONTINUITY\n" in t and "#EXT-X-PART" in t.split(
        "#EXT-X-DISCONTINUITY\n")[1].split("#EXTINF")[0] for t in v0), (
        "the discontinuity was listed while its segment was in progress")
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in v0[-1]
    assert any(r.name.endswith("_HLS_skip") for r in revisions)
    for texts in full.values():
        check_sequence(texts)
    problems = strict_problems(revisions)
    assert not problems, f"{len(problems)} of {len(revisions)} revisions rejected:\n" + "\n".join(
        problems[:10]
    )


def test_a_restarted_transcoder_continues_the_renditions_after_a_discontinuity(x264) -> None:
    """The restart flow: `RenditionStore.discontinuity` on every rendition, then a new
    transcoder with ``reuse_renditions`` (and ``min_rungs``: its first frame is smaller)
    on the same store: every playlist goes on with the next MSN behind
    EXT-X-DISCONTINUITY, the same init (identical encoder settings) keeps its URI."""
    log = Log()
    room = RoomStore(recorder=log, stream_id="s1")
    ladder = parse_ladder("360p,240p")
    first = LadderTranscoder(room, ladder, fps=FPS, encoder_choice=x264, parallel_rungs=False,
                             clock=lambda: T0)
    try:
        for frame in source([((640, 360), 60)]):
            first.feed(frame)
    finally:
        first.close()  # a crash: no end(), segment 1 of the audio may be in progress
    for store in room.renditions.values():
        store.discontinuity()
    second = LadderTranscoder(room, ladder, fps=FPS, encoder_choice=x264, parallel_rungs=False,
                              reuse_renditions=True, min_rungs=2,
                              clock=lambda: T0 + timedelta(seconds=2))
    try:
        for frame in source([((320, 180), 60)]):  # timestamps start again at 0
            second.feed(frame)
        second.end()
    finally:
        second.close()
    assert set(room.renditions) == {"v0", "v1", AUDIO_RENDITION}
    assert resolutions(room.multivariant) == [
        ("s1/v0/index.m3u8", (320, 180)), ("s1/v1/index.m3u8", (214, 120)),
    ]
    for name in ("v0", "v1"):
        assert [(s.msn, s.discontinuity) for s in log.segments[name]] == [
            (0, False), (1, False), (2, True), (3, False),
        ]
        assert room.renditions[name].init_version == 1  # a new size: a new init
    audio = log.segments[AUDIO_RENDITION]
    assert [s.msn for s in audio if s.discontinuity] == [2]
    assert room.renditions[AUDIO_RENDITION].init_version == 0  # the same AAC settings
    texts = {f"../{n}/index.m3u8": room.render_media(n) for n in room.renditions}
    for text in texts.values():
        check_media(text)


async def test_the_origin_serves_the_init_segment_each_map_names(aiohttp_client, x264) -> None:
    """Through the real origin: the multivariant playlist names the re-planned ladder,
    v0's second EXT-X-MAP (``init.mp4?v=1``) answers the new init segment, which decodes
    the segments after the discontinuity at the new size."""
    room = RoomStore(stream_id="s1")
    transcoder = LadderTranscoder(room, parse_ladder("360p,240p"), fps=FPS, audio=False,
                                  encoder_choice=x264, parallel_rungs=False)
    try:
        for frame in source([((320, 180), 60), ((640, 360), 90)], audio=False):
            transcoder.feed(frame)
        transcoder.end()
    finally:
        transcoder.close()
    app = web.Application()
    app.add_subapp("/hls", create_origin_app({"demo": room}))
    client = await aiohttp_client(app)
    resp = await client.get("/hls/demo/index.m3u8")
    assert resp.status == 200
    assert resolutions(await resp.text()) == [
        ("s1/v0/index.m3u8", (640, 360)), ("s1/v1/index.m3u8", (426, 240)),
    ]
    resp = await client.get("/hls/demo/s1/v0/index.m3u8")
    playlist = m3u8.loads(await resp.text())
    maps = [(s.uri, s.init_section.uri) for s in playlist.segments]
    assert maps[3:] == [("seg3.m4s", "init.mp4"), ("seg4.m4s", "init.mp4?v=1")]
    resp = await client.get("/hls/demo/s1/v0/init.mp4?v=1")
    assert resp.status == 200
    init = await resp.read()
    assert init == room.renditions["v0"].init_segment(1)
    segment = await (await client.get("/hls/demo/s1/v0/seg4.m4s")).read()
    assert decoded_sizes(init, segment) == ({(640, 360)}, 4.0)
