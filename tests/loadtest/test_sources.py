"""Synthetic aiortc tracks (timing, codes, cost) and Chromium fake-capture clips."""

from __future__ import annotations

import fractions
import json
import subprocess
import sys
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError

from loadtest.clips import make_counter_y4m, make_tone_wav, read_y4m
from loadtest.pattern import code_strip_height, code_to_capture_time, read_code
from loadtest.sources import PatternVideoTrack, ToneAudioTrack

REPO = Path(__file__).resolve().parents[2]


async def test_video_track_counter_timing_and_codes() -> None:
    track = PatternVideoTrack(640, 360, fps=30, code="counter")
    assert track.kind == "video"
    t0 = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - t0
    assert [f.pts for f in frames] == [3000 * i for i in range(10)]
    for i, f in enumerate(frames):
        assert f.time_base == fractions.Fraction(1, 90000)
        assert (f.width, f.height, f.format.name) == (640, 360, "yuv420p")
        assert read_code(f) == i
    assert 9 / 30 - 0.02 <= elapsed < 9 / 30 + 0.5  # paced in real time
    # Something moves outside the code strip (so encoders see motion).
    strip = code_strip_height(640, 360)
    a, b = (f.to_ndarray(format="gray")[strip:] for f in frames[:2])
    assert np.count_nonzero(a != b) > a.size // 10
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_video_track_pts_at_other_rates() -> None:
    track = PatternVideoTrack(320, 180, fps=25, code="counter")
    assert [(await track.recv()).pts for _ in range(3)] == [0, 3600, 7200]
    track = PatternVideoTrack(320, 180, fps=60, code="counter")
    assert [(await track.recv()).pts for _ in range(3)] == [0, 1500, 3000]


async def test_video_track_capture_time_code() -> None:
    track = PatternVideoTrack(1280, 720, fps=30)
    for _ in range(3):
        frame = await track.recv()
        now = time.time()
        code = read_code(frame)
        assert code == track.last_code
        captured = code_to_capture_time(code)
        assert -0.001 <= now - captured < 0.05  # codes are rounded to the nearest ms


def test_video_frame_generation_cost() -> None:
    results = {}
    for width, height in [(1280, 720), (640, 360), (1920, 1080)]:
        track = PatternVideoTrack(width, height, code="counter")
        track.make_frame(0, 0)  # warm-up
        samples = []
        for i in range(200):
            t0 = time.perf_counter()
            track.make_frame(i, i)
            samples.append((time.perf_counter() - t0) * 1e3)
        results[f"{width}x{height}"] = (float(np.median(samples)), float(np.mean(samples)))
    for size, (median, mean) in results.items():
        print(
            f"PatternVideoTrack frame generation {size}: median {median:.3f} ms, mean {mean:.3f} ms"
        )
    assert results["1280x720"][0] < 20


def test_video_frames_feed_aiortc_vp8_encoder() -> None:
    track = PatternVideoTrack(640, 360, code="counter")
    encoder = Vp8Encoder()
    for i in range(3):
        frame = track.make_frame(i, i)
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame)
        assert payloads and abs(timestamp - i * 3000) <= 1  # aiortc rounds via its own clock


@pytest.mark.parametrize("channels", [1, 2])
async def test_tone_track_timing_and_samples(channels: int) -> None:
    track = ToneAudioTrack(frequency=440, sample_rate=48000, channels=channels)
    assert track.kind == "audio"
    t0 = time.monotonic()
    frames = [await track.recv() for _ in range(6)]
    elapsed = time.monotonic() - t0
    assert 5 * 0.020 - 0.01 <= elapsed < 5 * 0.020 + 0.3
    assert [f.pts for f in frames] == [960 * i for i in range(6)]
    pcm = []
    for f in frames:
        assert f.samples == 960
        assert f.sample_rate == 48000
        assert f.time_base == fractions.Fraction(1, 48000)
        assert f.format.name == "s16"
        assert f.layout.name == ("mono" if channels == 1 else "stereo")
        data = f.to_ndarray()
        assert data.shape == (1, 960 * channels)
        pcm.append(data[0, ::channels])
    signal = np.concatenate(pcm).astype(np.float64)
    expected = np.sin(2 * np.pi * 440 * np.arange(signal.size) / 48000) * 0.25 * 32767
    assert np.max(np.abs(signal - expected)) <= 1.0  # continuous phase across frames
    encoder = OpusEncoder()
    packets = [encoder.encode(f)[0] for f in frames]
    assert any(packets)
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


def _ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return json.loads(out)


def test_counter_y4m(tmp_path: Path) -> None:
    path = make_counter_y4m(tmp_path / "counter.y4m", width=640, height=360, fps=30, frames=40)
    raw = path.read_bytes()
    header = b"YUV4MPEG2 W640 H360 F30:1 Ip A1:1 C420jpeg\n"
    frame_size = 640 * 360 * 3 // 2
    # Chromium: header < 200 bytes, every frame header exactly b"FRAME\n", no trailing bytes.
    assert raw.startswith(header + b"FRAME\n")
    assert len(raw) == len(header) + 40 * (6 + frame_size)
    for i in range(40):
        off = len(header) + i * (6 + frame_size)
        assert raw[off : off + 6] == b"FRAME\n"

    hdr, frames = read_y4m(path)
    assert (hdr.width, hdr.height, hdr.fps_num, hdr.fps_den, hdr.chroma) == (
        640,
        360,
        30,
        1,
        "420jpeg",
    )
    planes = list(frames)
    assert len(planes) == 40
    assert [read_code(y) for y, _, _ in planes] == list(range(40))
    assert planes[0][1].shape == (180, 320) and planes[0][2].shape == (180, 320)
    assert not np.array_equal(planes[0][0], planes[1][0])  # motion

    probe = _ffprobe(path, "-count_frames", "-show_entries", "stream=nb_read_frames,width,height")
    stream = probe["streams"][0]
    assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (40, 640, 360)

    with av.open(str(path)) as container:  # ffmpeg's own y4m demuxer agrees on the codes
        codes = [read_code(f) for f in container.decode(video=0)]
    assert codes == list(range(40))


def test_counter_y4m_codes_survive_vp8(tmp_path: Path) -> None:
    """The clip as Chromium would send it: re-encoded at ~500 kbps VP8."""
    _, frames = read_y4m(make_counter_y4m(tmp_path / "c.y4m", frames=30))
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt, enc.bit_rate = 640, 360, "yuv420p", 500_000
    enc.time_base, enc.framerate = fractions.Fraction(1, 30), fractions.Fraction(30, 1)
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    dec = av.CodecContext.create("libvpx", "r")
    decoded = []
    for i, (y, u, v) in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(
            np.concatenate([y, u.reshape(-1, 640), v.reshape(-1, 640)]), format="yuv420p"
        )
        frame.pts, frame.time_base = i, enc.time_base
        for packet in enc.encode(frame):
            decoded += dec.decode(packet)
    for packet in enc.encode(None):
        decoded += dec.decode(packet)
    assert [read_code(f) for f in decoded] == list(range(30))


def test_tone_wav(tmp_path: Path) -> None:
    path = make_tone_wav(tmp_path / "tone.wav", seconds=2, frequency=440, sample_rate=48000)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 48000)
        assert wav.getnframes() == 96000
        pcm = np.frombuffer(wav.readframes(96000), "<i2")
    assert 0.2 * 32767 < np.abs(pcm).max() <= 0.25 * 32767
    stream = _ffprobe(path, "-show_entries", "stream=codec_name,sample_rate,channels")["streams"][0]
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
        "pcm_s16le",
        "48000",
        1,
    )


def test_clips_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.clips",
            str(tmp_path / "out"),
            "--frames",
            "5",
            "--seconds",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    y4m, wav = tmp_path / "out" / "counter.y4m", tmp_path / "out" / "tone.wav"
    assert str(y4m) in result.stdout and str(wav) in result.stdout
    _, frames = read_y4m(y4m)
    assert [read_code(y) for y, _, _ in frames] == list(range(5))
    with wave.open(str(wav), "rb") as w:
        assert w.getnframes() == 48000
