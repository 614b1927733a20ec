"""The top rendition passed through: an H.264 source with regular key frames becomes ``v0``
sample for sample, the lower rungs are encoded with key frames on the source's, and a
source that leaves the grid raises PassthroughLost (the bridge then restarts the transcoder
without passthrough) — LadderTranscoder fed frames as the tap decodes them (each with its
access unit as ``frame.opaque``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import pytest

from hls_bridge.bridge import HlsConfig, passthrough_plan
from hls_bridge.encoders import choose_encoder
from hls_bridge.fmp4 import annexb_to_avcc
from hls_bridge.ladder import parse_ladder
from hls_bridge.store import RoomStore
from hls_bridge.transcoder import LadderTranscoder, PassthroughLost
from loadtest.sources import PatternVideoTrack
from tests.hls_bridge.test_transcoder import (
    FPS,
    VIDEO_TB,
    ffprobe_frames,
    needs_ffprobe,
    rendition_file,
)

SOURCE_BITRATE = 900_000


def source(width: int, height: int, count: int, gop: int) -> list[tuple[bytes, av.VideoFrame]]:
    """``count`` frames encoded with libx264 (baseline, no B-frames, a key frame every
    ``gop``), each decoded again as the bridge's tap does: ``(access unit, frame)``."""
    track = PatternVideoTrack(width, height, FPS, code="counter")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.options = {"profile": "baseline", "bf": "0", "g": str(gop), "keyint_min": str(gop),
                       "sc_threshold": "0", "tune": "zerolatency", "preset": "ultrafast"}
    decoder = av.CodecContext.create("h264", "r")
    decoder.copy_opaque = True
    out = []

    def take(packets: list[av.Packet]) -> None:
        for packet in packets:
            data = bytes(packet)
            again = av.Packet(data)
            again.pts = round(packet.pts * 90_000 / FPS)
            again.time_base = VIDEO_TB
            again.opaque = data
            for frame in decoder.decode(again):
                frame.time_base = VIDEO_TB
                out.append((data, frame))

    for i in range(count):
        picture = track.make_frame(i, i).reformat(format="yuv420p")
        picture.pts = i
        take(encoder.encode(picture))
    take(encoder.encode(None))
    return out


async def frames_of(pairs: list[tuple[bytes, av.VideoFrame]], skip: set[int] = frozenset()) -> AsyncIterator[av.VideoFrame]:
    for index, (_, frame) in enumerate(pairs):
        if index not in skip:
            yield frame


async def transcode(pairs: list[tuple[bytes, av.VideoFrame]], ladder: str, gop: int = 30,
                    skip: set[int] = frozenset()) -> tuple[RoomStore, LadderTranscoder]:
    """The frames of ``pairs`` (but those at the ``skip`` indexes) through a passthrough
    LadderTranscoder with segments of ``gop`` frames; its store and itself."""
    room = RoomStore()
    transcoder = LadderTranscoder(room, parse_ladder(ladder), encoder_choice=choose_encoder(["libx264"]),
                                  audio=False, segment_frames=gop, passthrough=True,
                                  passthrough_bitrate=SOURCE_BITRATE)
    try:
        await asyncio.wait_for(transcoder.run(frames_of(pairs, skip)), 60)
    finally:
        transcoder.close()
    return room, transcoder


@needs_ffprobe
async def test_the_top_rendition_is_the_source_bitstream(tmp_path: Path) -> None:
    pairs = source(640, 360, 90, gop=30)
    room, ladder = await transcode(pairs, "360p,240p")
    assert ladder.stats.passthrough_frames == 90
    # v0's samples are the source's access units (as AVCC; SPS/PPS live in avcC), in order
    with av.open(str(rendition_file(tmp_path, room, "v0"))) as container:
        samples = [bytes(p) for p in container.demux(video=0) if p.size]
    assert samples == [annexb_to_avcc(unit) for unit, _ in pairs]
    # segments follow the source's key frames; the lower rung has its key frames there too
    for name in ("v0", "v1"):
        frames = ffprobe_frames(rendition_file(tmp_path, room, name))
        assert len(frames) == 90
        keys = [float(f["pts_time"]) for f in frames if f["key_frame"] == 1]
        assert keys == pytest.approx([0.0, 1.0, 2.0], abs=1e-3), name
    assert room.renditions["v1"].playlist.segments[0].duration == pytest.approx(1.0)
    # the multivariant playlist names the source's size and bitrate for v0
    assert "RESOLUTION=640x360" in (room.multivariant or "")
    assert f"AVERAGE-BANDWIDTH={SOURCE_BITRATE}" in (room.multivariant or "")


async def test_two_second_key_frames_make_two_second_segments() -> None:
    pairs = source(320, 180, 120, gop=60)
    room, ladder = await transcode(pairs, "180:400k", gop=60)
    segments = room.renditions["v0"].playlist.segments
    assert [s.duration for s in segments] == pytest.approx([2.0, 2.0])
    assert ladder.target_duration == 2


@pytest.mark.parametrize(("gop", "skip", "message"), [
    (45, set(), "no key frame at the segment boundary"),  # key frames off the grid
    (30, {30}, "no source frame at the segment boundary"),  # the boundary frame lost
])
async def test_a_source_off_the_grid_ends_passthrough(gop: int, skip: set[int], message: str) -> None:
    pairs = source(320, 180, 60, gop=gop)
    with pytest.raises(PassthroughLost, match=message):
        await transcode(pairs, "180:400k", skip=skip)


async def test_a_frame_lost_inside_a_segment_lengthens_the_previous_sample() -> None:
    pairs = source(320, 180, 60, gop=30)
    room, ladder = await transcode(pairs, "180:400k", skip={10})
    assert ladder.stats.passthrough_frames == 59
    assert [s.duration for s in room.renditions["v0"].playlist.segments] == pytest.approx([1.0, 1.0])


async def test_a_source_larger_than_the_top_rung_is_encoded() -> None:
    pairs = source(640, 360, 30, gop=30)
    room, ladder = await transcode(pairs, "180:400k")
    assert ladder.stats.passthrough_frames == 0 and room.renditions["v0"].playlist.segments


def _tap(mime: str = "video/H264", spacings: tuple[float, ...] = (1.0, 1.0, 1.0), fps: float | None = 30.0,
         simulcast: bool = False) -> SimpleNamespace:
    """What passthrough_plan reads of a TrackTap (a stand-in: the SFU's measurements)."""
    snapshot = SimpleNamespace(bitrate_bps=SOURCE_BITRATE)
    health = SimpleNamespace(keyframe_spacings_s=lambda: list(spacings), source_fps=lambda: fps,
                             snapshot=lambda: snapshot)
    return SimpleNamespace(info=SimpleNamespace(mime_type=mime), simulcast=simulcast, health=health)


def test_the_plan_takes_regular_h264_only() -> None:
    config = HlsConfig()
    assert passthrough_plan(_tap(), config) == (30, SOURCE_BITRATE)
    # FLV's millisecond timestamps: 0.99–1.01 s is still 30 frames
    assert passthrough_plan(_tap(spacings=(0.99, 1.01, 1.0)), config) == (30, SOURCE_BITRATE)
    assert passthrough_plan(_tap(spacings=(2.0, 2.0)), config) == (60, SOURCE_BITRATE)
    refused = {
        "not H.264": _tap(mime="video/VP8"),
        "simulcast": _tap(simulcast=True),
        "fewer than three": _tap(spacings=(1.0,)),
        "frame rate": _tap(fps=60.0),
        "irregular": _tap(spacings=(1.0, 0.5, 1.0)),
        "outside one part": _tap(spacings=(8.0, 8.0)),
    }
    for reason, tap in refused.items():
        plan = passthrough_plan(tap, config)
        assert isinstance(plan, str) and reason in plan, (reason, plan)


def test_passthrough_setting() -> None:
    assert HlsConfig.from_env({}).passthrough
    assert not HlsConfig.from_env({"RELAYCAST_HLS_PASSTHROUGH": "0"}).passthrough
    with pytest.raises(ValueError, match="RELAYCAST_HLS_PASSTHROUGH"):
        HlsConfig.from_env({"RELAYCAST_HLS_PASSTHROUGH": "maybe"})
