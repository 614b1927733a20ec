"""CMAF packaging of real libx264/AAC output, checked by a box reader, ffprobe and PyAV."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.codec.context import Flags

from hls_bridge.fmp4 import (
    CmafError,
    FragmentPart,
    Sample,
    TrackPackager,
    aac_audio_specific_config,
    annexb_to_avcc,
    codecs_string_aac,
    codecs_string_avc,
    fragment,
    h264_parameter_sets,
    init_segment_audio,
    init_segment_video,
)

FFPROBE = "/usr/bin/ffprobe"
WIDTH, HEIGHT, FPS = 640, 360, 30
FRAMES = 60
GOP = 30
FRAMES_PER_PART = 6
SAMPLE_RATE = 48000
AUDIO_SECONDS = 2
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"mvex", b"moof", b"traf"}

needs_ffprobe = pytest.mark.skipif(shutil.which(FFPROBE) is None, reason="needs Debian ffprobe")


# --- a tiny ISO BMFF box reader ---------------------------------------------------------


def read_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in data[start:end]; asserts sizes tile exactly."""
    end = len(data) if end is None else end
    boxes, pos = [], start
    while pos < end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert size >= 8 and pos + size <= end, f"bad size {size} for {kind!r} at {pos}"
        boxes.append((kind, pos, size))
        pos += size
    assert pos == end
    return boxes


def find(data: bytes, path: str, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(offset, size) of the first box at a slash-separated path, e.g. ``moof/traf/trun``."""
    head, _, rest = path.partition("/")
    for kind, offset, size in read_boxes(data, start, end):
        if kind == head.encode():
            if not rest:
                return offset, size
            assert kind in CONTAINERS
            return find(data, rest, offset + 8, offset + size)
    raise AssertionError(f"no {path} box")


def parse_fragment(data: bytes) -> dict:
    top = read_boxes(data)
    assert [kind for kind, _, _ in top] == [b"moof", b"mdat"]
    moof_offset, _ = find(data, "moof")
    _, mdat_offset, mdat_size = top[1]
    offset, _ = find(data, "moof/mfhd")
    (sequence,) = struct.unpack_from(">I", data, offset + 12)
    offset, _ = find(data, "moof/traf/tfhd")
    (tfhd_flags, track_id) = struct.unpack_from(">II", data, offset + 8)
    offset, _ = find(data, "moof/traf/tfdt")
    version = data[offset + 8]
    assert version == 1
    (base,) = struct.unpack_from(">Q", data, offset + 12)
    offset, size = find(data, "moof/traf/trun")
    version_flags, count, data_offset = struct.unpack_from(">IIi", data, offset + 8)
    flags = version_flags & 0xFFFFFF
    assert flags & 0x701 == 0x701  # data offset, duration, size, flags
    entry = 16 if flags & 0x800 else 12
    assert size == 20 + entry * count
    samples = []
    for index in range(count):
        fields = struct.unpack_from(">IIIi" if entry == 16 else ">III", data, offset + 20 + entry * index)
        samples.append(fields)
    first_byte = moof_offset + data_offset
    assert first_byte == mdat_offset + 8, "data_offset must point at the mdat payload"
    assert sum(s[1] for s in samples) == mdat_size - 8
    return {
        "sequence": sequence, "track_id": track_id, "tfhd_flags": tfhd_flags & 0xFFFFFF,
        "base": base, "samples": samples,
    }


# --- encoders -------------------------------------------------------------------------


def encode_video(global_header: bool) -> tuple[av.VideoCodecContext, list[av.Packet]]:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.time_base = Fraction(1, FPS)
    ctx.framerate = Fraction(FPS)
    ctx.gop_size = GOP
    ctx.max_b_frames = 0
    if global_header:
        ctx.flags |= Flags.global_header
    ctx.options = {
        "preset": "veryfast", "tune": "zerolatency", "bf": "0",
        "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0",
    }
    packets = []
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    for index in range(FRAMES):
        image = np.stack([(xs + 4 * index) % 256, (ys + 2 * index) % 256,
                          ((xs + ys) // 2) % 256], axis=-1).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = ctx.time_base
        packets.extend(ctx.encode(frame))
    packets.extend(ctx.encode(None))
    for packet in packets:  # encoder packets carry the codec time base
        packet.time_base = packet.time_base or ctx.time_base
    return ctx, packets


def encode_audio() -> tuple[av.AudioCodecContext, list[av.Packet]]:
    ctx = av.CodecContext.create("aac", "w")
    ctx.sample_rate, ctx.layout, ctx.format = SAMPLE_RATE, "stereo", "fltp"
    ctx.time_base = Fraction(1, SAMPLE_RATE)
    ctx.bit_rate = 128000
    ctx.open()
    packets = []
    total = SAMPLE_RATE * AUDIO_SECONDS
    for start in range(0, total, ctx.frame_size):
        count = min(ctx.frame_size, total - start)
        t = (np.arange(start, start + count) / SAMPLE_RATE).astype(np.float32)
        tone = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = ctx.time_base
        packets.extend(ctx.encode(frame))
    packets.extend(ctx.encode(None))
    for packet in packets:
        packet.time_base = packet.time_base or ctx.time_base
    return ctx, packets


@pytest.fixture(scope="module")
def video_stream() -> tuple[av.VideoCodecContext, list[av.Packet]]:
    return encode_video(global_header=True)


@pytest.fixture(scope="module")
def audio_stream() -> tuple[av.AudioCodecContext, list[av.Packet]]:
    return encode_audio()


def package_video(packets: list[av.Packet], sps: bytes, pps: bytes) -> tuple[bytes, list[FragmentPart]]:
    packager = TrackPackager(1, 90000, h264=True)
    parts = []
    for index, packet in enumerate(packets):
        packager.add(packet)
        if (index + 1) % FRAMES_PER_PART == 0:
            parts.append(packager.flush_part())
    if (last := packager.flush_part()) is not None:
        parts.append(last)
    return init_segment_video(WIDTH, HEIGHT, sps, pps, timescale=90000), parts


def package_audio(ctx: av.AudioCodecContext, packets: list[av.Packet]) -> tuple[bytes, list[FragmentPart]]:
    asc = aac_audio_specific_config(ctx.extradata)
    packager = TrackPackager(1, SAMPLE_RATE, h264=False)
    parts = []
    for packet in packets:
        packager.add(packet)
        if packager.pending_duration >= Fraction(1, 5):
            parts.append(packager.flush_part())
    if (last := packager.flush_part()) is not None:
        parts.append(last)
    return init_segment_audio(SAMPLE_RATE, 2, asc), parts


def write(tmp_path: Path, name: str, init: bytes, parts: list[FragmentPart]) -> Path:
    path = tmp_path / name
    path.write_bytes(init + b"".join(part.data for part in parts))
    return path


def ffprobe(*args: str) -> dict:
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-of", "json", *args], capture_output=True, text=True,
        timeout=60, check=True,
    )
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)


# --- unit tests -----------------------------------------------------------------------


def test_annexb_to_avcc_drops_aud_and_parameter_sets() -> None:
    sps, pps, aud, idr = b"\x67\x64\x00\x1f\xac", b"\x68\xee\x3c\x80", b"\x09\xf0", b"\x65\x88\x00\x01"
    stream = b"\x00\x00\x00\x01" + aud + b"\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
    stream += b"\x00\x00\x01" + idr + b"\x00"
    assert annexb_to_avcc(stream) == struct.pack(">I", len(idr)) + idr
    kept = annexb_to_avcc(stream, keep_parameter_sets=True)
    assert kept == b"".join(struct.pack(">I", len(n)) + n for n in (sps, pps, idr))
    assert h264_parameter_sets(stream) == (sps, pps)
    with pytest.raises(CmafError):
        annexb_to_avcc(b"\x01\x02\x03\x04")
    with pytest.raises(CmafError):
        h264_parameter_sets(b"\x00\x00\x01" + idr)


@pytest.mark.parametrize(
    ("asc", "expected"),
    [(bytes.fromhex("1190"), "mp4a.40.2"), (bytes.fromhex("119056e500"), "mp4a.40.2"),
     (bytes.fromhex("2b92"), "mp4a.40.5"), (bytes.fromhex("f82640"), "mp4a.40.33")],
)
def test_codecs_string_aac(asc: bytes, expected: str) -> None:
    assert codecs_string_aac(asc) == expected


def test_aac_config_built_without_extradata() -> None:
    assert aac_audio_specific_config(None, sample_rate=48000, channels=2) == bytes.fromhex("1190")
    assert aac_audio_specific_config(b"", sample_rate=44100, channels=1) == bytes.fromhex("1208")


def test_fragment_layout_and_sample_flags() -> None:
    samples = [Sample(b"a" * 10, 3000, True), Sample(b"bb" * 7, 3000, False, 6000),
               Sample(b"c", 1500, False, -3000)]
    data = fragment(7, 2, 1 << 33, samples)
    parsed = parse_fragment(data)
    assert parsed["sequence"] == 7 and parsed["track_id"] == 2
    assert parsed["tfhd_flags"] == 0x020000 and parsed["base"] == 1 << 33
    assert parsed["samples"] == [(3000, 10, 0x02000000, 0), (3000, 14, 0x01010000, 6000),
                                 (1500, 1, 0x01010000, -3000)]
    trun, _ = find(data, "moof/traf/trun")
    assert data[trun + 8] == 1  # signed composition offsets need trun version 1
    with pytest.raises(CmafError):
        fragment(1, 1, 0, [])


def test_video_packaging_boxes(video_stream: tuple) -> None:
    ctx, packets = video_stream
    sps, pps = h264_parameter_sets(ctx.extradata)
    assert codecs_string_avc(sps) == f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"
    assert sps[1] == 100  # libx264 yuv420p: High profile, avcC has the high-profile tail
    init, parts = package_video(packets, sps, pps)
    assert [kind for kind, _, _ in read_boxes(init)] == [b"ftyp", b"moov"]
    avcc_offset, avcc_size = find(init, "moov/trak/mdia/minf/stbl")
    assert b"avcC" in init[avcc_offset:avcc_offset + avcc_size]
    trex, _ = find(init, "moov/mvex/trex")
    assert struct.unpack_from(">I", init, trex + 12)[0] == 1

    assert len(parts) == FRAMES // FRAMES_PER_PART
    expected_base = 0
    for number, part in enumerate(parts, start=1):
        parsed = parse_fragment(part.data)
        assert parsed["sequence"] == number == part.sequence_number
        assert parsed["base"] == expected_base == part.base_media_decode_time
        assert [s[0] for s in parsed["samples"]] == [3000] * FRAMES_PER_PART
        frame_index = (number - 1) * FRAMES_PER_PART
        flags = [s[2] for s in parsed["samples"]]
        expected_flags = [0x02000000 if (frame_index + i) % GOP == 0 else 0x01010000
                          for i in range(FRAMES_PER_PART)]
        assert flags == expected_flags
        assert part.independent == (frame_index % GOP == 0)
        assert part.duration == pytest.approx(FRAMES_PER_PART / FPS)
        expected_base += sum(s[0] for s in parsed["samples"])


@needs_ffprobe
@pytest.mark.parametrize("global_header", [True, False], ids=["extradata", "keyframe"])
def test_video_decodes_with_ffprobe_and_pyav(tmp_path: Path, global_header: bool) -> None:
    ctx, packets = encode_video(global_header)
    source = ctx.extradata if global_header else bytes(packets[0])
    sps, pps = h264_parameter_sets(source)
    init, parts = package_video(packets, sps, pps)
    path = write(tmp_path, "video.mp4", init, parts)

    stream = ffprobe("-count_frames", "-select_streams", "v:0", "-show_entries",
                     "stream=nb_read_frames,width,height,codec_name", str(path))["streams"][0]
    assert stream == {"codec_name": "h264", "width": WIDTH, "height": HEIGHT,
                      "nb_read_frames": str(FRAMES)}
    frames = ffprobe("-select_streams", "v:0", "-show_frames", "-show_entries",
                     "frame=key_frame,pts,pts_time", str(path))["frames"]
    assert [f["pts"] for f in frames] == [n * 3000 for n in range(FRAMES)]
    assert [float(f["pts_time"]) for f in frames] == pytest.approx(
        [n / FPS for n in range(FRAMES)], abs=1e-6)
    assert [n for n, f in enumerate(frames) if f["key_frame"] == 1] == [0, GOP]

    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == FRAMES
    assert [f.key_frame for f in decoded].count(True) == FRAMES // GOP
    assert (decoded[0].width, decoded[0].height) == (WIDTH, HEIGHT)


@needs_ffprobe
def test_audio_decodes_with_ffprobe_and_pyav(tmp_path: Path, audio_stream: tuple) -> None:
    ctx, packets = audio_stream
    init, parts = package_audio(ctx, packets)
    assert codecs_string_aac(aac_audio_specific_config(ctx.extradata)) == "mp4a.40.2"
    expected_base = 0
    for part in parts:
        parsed = parse_fragment(part.data)
        assert parsed["base"] == expected_base
        assert all(s[2] == 0x02000000 for s in parsed["samples"])
        assert part.independent
        assert 0.2 <= part.duration < 0.2 + 1024 / SAMPLE_RATE + 1e-9 or part is parts[-1]
        expected_base += sum(s[0] for s in parsed["samples"])
    assert expected_base == packets[-1].pts + packets[-1].duration - packets[0].pts  # exact
    path = write(tmp_path, "audio.mp4", init, parts)

    stream = ffprobe("-select_streams", "a:0", "-show_entries",
                     "stream=codec_name,sample_rate,channels", str(path))["streams"][0]
    assert stream == {"codec_name": "aac", "sample_rate": str(SAMPLE_RATE), "channels": 2}
    frames = ffprobe("-select_streams", "a:0", "-show_frames", "-show_entries",
                     "frame=nb_samples", str(path))["frames"]
    decoded_seconds = sum(f["nb_samples"] for f in frames) / SAMPLE_RATE
    assert decoded_seconds == pytest.approx(AUDIO_SECONDS, abs=0.05)

    with av.open(str(path)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples / SAMPLE_RATE == pytest.approx(AUDIO_SECONDS, abs=0.05)


def test_packager_converts_time_bases_exactly() -> None:
    """1/1000 s timestamps of a 30 fps stream (33/34/33 ms) map to exact 90 kHz ticks."""
    packager = TrackPackager(1, 90000, h264=False, start_time=Fraction(0))
    pts_ms = [round(n * 1000 / 30) for n in range(7)]
    for pts in pts_ms[:6]:
        packager.add_sample(b"x", pts=pts, dts=pts, duration=None, time_base=Fraction(1, 1000),
                            is_sync=False)
    part = packager.flush_part()
    assert part is not None
    durations = [s[0] for s in parse_fragment(part.data)["samples"]]
    assert durations[:5] == [(b - a) * 90 for a, b in zip(pts_ms[:5], pts_ms[1:6], strict=True)]
    assert packager.next_decode_time == part.base_media_decode_time + part.duration_ticks
    assert packager.flush_part() is None
    with pytest.raises(CmafError):
        packager.add_sample(b"x", pts=-5, dts=-5, duration=1, time_base=Fraction(1, 1000),
                            is_sync=True)


def test_packaging_cost_per_part(video_stream: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a threshold test: prints the µs per 6-frame part for the report."""
    import time

    ctx, packets = video_stream
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        _, parts = package_video(packets, *h264_parameter_sets(ctx.extradata))
    per_part = (time.perf_counter() - started) / (rounds * len(parts)) * 1e6
    with capsys.disabled():
        print(f"\nfmp4 packaging: {per_part:.1f} us per {FRAMES_PER_PART}-frame video part")
    assert len(parts) == FRAMES // FRAMES_PER_PART


def test_packager_rounds_absolute_times_without_drift() -> None:
    """1/30 s into a 1 kHz timescale: 33/34 ms durations, and 30 frames are exactly 1000 ticks."""
    packager = TrackPackager(1, 1000, h264=False)
    for n in range(30):
        packager.add_sample(b"x", pts=n + 90, dts=n + 90, duration=1, time_base=Fraction(1, 30),
                            is_sync=True)
    part = packager.flush_part()
    assert part is not None and part.duration_ticks == 1000 and part.duration == 1.0
    durations = [s[0] for s in parse_fragment(part.data)["samples"]]
    assert set(durations) == {33, 34} and sum(durations) == 1000
    with pytest.raises(CmafError):
        packager.add_sample(b"x", pts=119, dts=119, duration=1, time_base=Fraction(1, 30),
                            is_sync=True)  # decode order goes back into the emitted part
