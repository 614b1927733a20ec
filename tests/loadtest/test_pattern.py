"""Frame-code round trips: raw, rescaled, and through real VP8 / H.264 encoders."""

from __future__ import annotations

import fractions
import itertools
import time

import av
import numpy as np
import pytest

from loadtest import pattern
from loadtest.pattern import (
    BITS,
    MAX_VALUE,
    MovingBackground,
    capture_time_code,
    code_to_capture_time,
    draw_code,
    draw_code_yuv420,
    read_code,
)

SIZES = [(320, 180), (426, 240), (640, 360), (854, 480), (1280, 720), (1920, 1080)]
VALUES = [0, 1, MAX_VALUE, 0xA5A5_5A5A_F00F, capture_time_code(1_760_000_000.123)]


def _yuv_frame(width: int, height: int, index: int, value: int) -> av.VideoFrame:
    """A yuv420p frame with the moving background and ``value`` drawn in luma."""
    frame = av.VideoFrame(width, height, "yuv420p")
    y, u, v = (
        np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        for p in frame.planes
    )
    MovingBackground(width, height).render_into(y, u, v, index)
    draw_code_yuv420(y, value)
    return frame


def _invert_blocks(luma: np.ndarray, blocks: list[int]) -> None:
    """Invert (255 - x) the given block indices (0..55, row-major) in place."""
    layout = pattern._layout(luma.shape[1], luma.shape[0])
    for k in blocks:
        r, c = divmod(k, pattern.COLS)
        sl = (slice(layout.ys[r], layout.ys[r + 1]), slice(layout.xs[c], layout.xs[c + 1]))
        luma[sl] = 255 - luma[sl]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_roundtrip_raw_all_input_kinds(width: int, height: int) -> None:
    for value in VALUES:
        bgr = np.full((height, width, 3), 90, np.uint8)
        draw_code(bgr, value)
        assert read_code(bgr) == value
        gray = np.full((height, width), 170, np.uint8)
        draw_code(gray, value)
        assert read_code(gray) == value
        frame = _yuv_frame(width, height, 3, value)
        assert read_code(frame) == value
        assert read_code(frame.to_ndarray(format="gray")) == value
        assert read_code(frame.to_ndarray(format="bgr24")) == value
        assert read_code(frame.reformat(format="rgba")) == value  # via to_ndarray(gray)


def test_block_size_and_strip_geometry() -> None:
    # Blocks are width/28 px: >= 11 px at 320 wide, ~23 px at 360p.
    assert pattern.code_strip_height(320, 180) == 23
    assert pattern.code_strip_height(640, 360) == 46
    assert pattern.code_strip_height(1920, 1080) == 137
    with pytest.raises(ValueError):
        draw_code(np.zeros((50, 100, 3), np.uint8), 1)
    assert read_code(np.zeros((50, 100), np.uint8)) is None
    assert read_code(np.zeros((50, 100, 3), np.uint8)) is None
    assert read_code(np.zeros((10, 640, 3), np.uint8)) is None
    with pytest.raises(ValueError):
        draw_code(np.zeros((360, 640, 3), np.uint8), MAX_VALUE + 1)
    with pytest.raises(ValueError):
        draw_code(np.zeros((360, 640, 3), np.uint8), -1)


@pytest.mark.parametrize(("width", "height"), [(640, 360), (320, 180), (1920, 1080), (960, 540)])
def test_survives_rescaling(width: int, height: int) -> None:
    value = 0x1234_5678_9ABC
    src = _yuv_frame(1280, 720, 0, value)
    scaled = src.reformat(width=width, height=height)
    assert read_code(scaled) == value


def _encode_decode(
    codec: str, width: int, height: int, bit_rate: int, options: dict[str, str], n: int = 30
) -> tuple[list[int], list[av.VideoFrame], int]:
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.bit_rate = bit_rate
    enc.time_base = fractions.Fraction(1, 30)
    enc.framerate = fractions.Fraction(30, 1)
    enc.options = options
    dec = av.CodecContext.create("h264" if codec == "libx264" else codec, "r")
    rng = np.random.default_rng(12345)
    values = [int(v) for v in rng.integers(0, MAX_VALUE + 1, size=n)]
    values[0] = capture_time_code(time.time())
    background = MovingBackground(width, height)
    decoded: list[av.VideoFrame] = []
    nbytes = 0
    for i, value in enumerate(values):
        frame = av.VideoFrame(width, height, "yuv420p")
        y, u, v = (
            np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
            for p in frame.planes
        )
        background.render_into(y, u, v, i)
        draw_code_yuv420(y, value)
        frame.pts = i
        frame.time_base = enc.time_base
        for packet in enc.encode(frame):
            nbytes += packet.size
            decoded.extend(dec.decode(packet))
    for packet in enc.encode(None):
        nbytes += packet.size
        decoded.extend(dec.decode(packet))
    return values, decoded, nbytes


VP8_RT = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
X264_RT = {"preset": "veryfast", "tune": "zerolatency"}


@pytest.mark.parametrize(
    ("codec", "width", "height", "bit_rate", "options"),
    [
        ("libvpx", 1280, 720, 1_500_000, VP8_RT),
        ("libvpx", 640, 360, 500_000, VP8_RT),
        ("libx264", 640, 360, 500_000, X264_RT),
        ("libvpx", 320, 180, 150_000, VP8_RT),
    ],
)
def test_roundtrip_through_encoder(
    codec: str, width: int, height: int, bit_rate: int, options: dict[str, str]
) -> None:
    values, decoded, nbytes = _encode_decode(codec, width, height, bit_rate, options)
    assert len(decoded) == len(values)
    kbps = nbytes * 8 / len(values) * 30 / 1000
    worst = min(float(np.abs(pattern.block_means(f) - 128).min()) for f in decoded)
    print(
        f"{codec} {width}x{height} @{bit_rate // 1000} kbps target: {kbps:.0f} kbps actual, "
        f"worst block margin {worst:.1f} luma levels"
    )
    for value, frame in zip(values, decoded, strict=True):
        assert read_code(frame) == value
        assert read_code(frame.to_ndarray(format="bgr24")) == value
    # A corrupted decoded frame must read as None, never as a wrong value.
    luma = decoded[5].to_ndarray(format="gray")
    for blocks in (list(range(0, BITS, 2)), list(range(pattern.COLS)), list(range(BITS))):
        bad = luma.copy()
        _invert_blocks(bad, blocks)
        assert read_code(bad) is None, blocks


def test_corruption_is_detected_not_misread() -> None:
    value = 0xDEAD_BEEF_0042
    clean = np.full((360, 640), 128, np.uint8)
    draw_code_yuv420(clean, value)
    assert read_code(clean) == value
    half_patterns = [
        list(range(0, BITS, 2)),  # every other block
        list(range(1, BITS, 2)),
        list(range(pattern.COLS)),  # the whole top row
        list(range(pattern.COLS, BITS)),  # the whole bottom row
        list(range(BITS // 4, 3 * BITS // 4)),  # the middle half
    ]
    singles = [[k] for k in range(BITS)]
    for blocks in half_patterns + singles:
        bad = clean.copy()
        _invert_blocks(bad, blocks)
        assert read_code(bad) is None, blocks
    # No code at all: flat black/white/grey frames and the bare background.
    assert read_code(np.zeros((360, 640), np.uint8)) is None
    assert read_code(np.full((360, 640), 255, np.uint8)) is None
    assert read_code(np.full((360, 640), 128, np.uint8)) is None
    y, _, _ = MovingBackground(640, 360).render(7)
    assert read_code(y) is None


def test_crc_catches_all_one_two_three_bit_errors() -> None:
    bits = pattern._encode_bits(0x0F0F_3C3C_A5A5).ravel()
    assert pattern._decode_bits(bits) == 0x0F0F_3C3C_A5A5
    for k in (1, 2, 3):
        for idx in itertools.combinations(range(BITS), k):
            bad = bits.copy()
            bad[list(idx)] ^= True
            assert pattern._decode_bits(bad) is None, idx


def test_min_contrast_rejects_ambiguous_blocks() -> None:
    frame = np.full((360, 640), 128, np.uint8)
    draw_code_yuv420(frame, 77)
    soft = (frame.astype(np.int16) - 128) // 8 + 128  # blocks only ~14 levels from 128
    soft = soft.astype(np.uint8)
    assert read_code(soft, min_contrast=0) == 77
    assert read_code(soft, min_contrast=10) == 77
    assert read_code(soft) is None  # default guard: 16 levels


def test_capture_time_helpers() -> None:
    now = 1_760_000_123.456
    code = capture_time_code(now)
    assert code == 1_760_000_123_456
    assert code_to_capture_time(code, now_s=now + 2.0) == pytest.approx(now, abs=1e-6)
    assert abs(code_to_capture_time(capture_time_code(time.time())) - time.time()) < 1.0
    # The 48-bit field wraps: the high bits come from "now".
    wrap_ms = 5 << 48
    before = (wrap_ms - 10) / 1000.0
    assert capture_time_code(before) == (1 << 48) - 10
    assert code_to_capture_time(capture_time_code(before), now_s=(wrap_ms + 100) / 1000.0) == (
        pytest.approx(before, abs=1e-6)
    )
    after = (wrap_ms + 10) / 1000.0
    assert code_to_capture_time(capture_time_code(after), now_s=(wrap_ms - 100) / 1000.0) == (
        pytest.approx(after, abs=1e-6)
    )


def test_read_speed() -> None:
    frame = _yuv_frame(1280, 720, 0, 42)
    bgr = frame.to_ndarray(format="bgr24")
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        assert read_code(frame) == 42
    t1 = time.perf_counter()
    for _ in range(n):
        assert read_code(bgr) == 42
    t2 = time.perf_counter()
    per_frame, per_bgr = (t1 - t0) / n * 1e3, (t2 - t1) / n * 1e3
    print(f"read_code 720p: av.VideoFrame {per_frame:.3f} ms, BGR ndarray {per_bgr:.3f} ms")
    assert per_frame < 20 and per_bgr < 20
