"""Machine-readable frame codes that survive lossy video coding.

A code is a 48-bit integer plus an 8-bit CRC (56 bits), drawn as a strip of
``ROWS x COLS`` = 2 x 28 black/white blocks along the top edge of the frame.
Block geometry is relative to the frame *width*: every block is ``W / 28``
pixels wide and ``W / 28`` pixels tall (fractional edges are rounded), so the
strip is ``2 * W / 28`` pixels tall (e.g. 91 px at 1280x720, 46 px at 640x360,
23 px at 320x180).  Because the layout is a pure function of the width, a frame
that was rescaled with its aspect ratio preserved still reads back.

Reading averages the luma in the central half (each axis) of every block and
thresholds it at 128; a CRC mismatch returns ``None``, so a misread is reported
as "no code" rather than a wrong value.  Bit order: MSB of the 48-bit value
first, row-major (row 0 left to right, then row 1), followed by the CRC.  A set
bit is white (luma 235 / BGR 255), a clear bit black (luma 16 / BGR 0).

The module also provides :class:`MovingBackground`, a cheap pre-rendered
scrolling yuv420p background used by the synthetic sources and clips.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "BITS",
    "COLS",
    "MAX_VALUE",
    "ROWS",
    "VALUE_BITS",
    "MovingBackground",
    "block_means",
    "capture_time_code",
    "code_strip_height",
    "code_to_capture_time",
    "crc8",
    "draw_code",
    "draw_code_yuv420",
    "read_code",
]

ROWS = 2
COLS = 28
VALUE_BITS = 48
CRC_BITS = 8
BITS = VALUE_BITS + CRC_BITS
MAX_VALUE = (1 << VALUE_BITS) - 1

LUMA_BLACK = 16
LUMA_WHITE = 235
THRESHOLD = 128.0
DEFAULT_MIN_CONTRAST = 16.0  # luma levels; see read_code
MIN_WIDTH = 4 * COLS  # 112 px: blocks of 4 px are the bare geometric minimum

_CRC_POLY = 0x2F  # CRC-8/AUTOSAR: init 0xFF, xorout 0xFF (HD=4 for <=119 data bits)


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ _CRC_POLY) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_crc_table()
_SHIFTS = np.arange(BITS - 1, -1, -1, dtype=np.uint64)


def crc8(data: bytes) -> int:
    """CRC-8/AUTOSAR (poly 0x2F, init 0xFF, xorout 0xFF) of ``data``; returns 0..255."""
    crc = 0xFF
    for b in data:
        crc = _CRC_TABLE[crc ^ b]
    return crc ^ 0xFF


def _encode_bits(value: int) -> np.ndarray:
    """Return the 56 code bits (bool array, shape (ROWS, COLS)) for ``value``."""
    if not 0 <= value <= MAX_VALUE:
        raise ValueError(f"code value must be in [0, 2**48): {value}")
    word = (value << CRC_BITS) | crc8(value.to_bytes(6, "big"))
    bits = (np.uint64(word) >> _SHIFTS) & np.uint64(1)
    return bits.astype(bool).reshape(ROWS, COLS)


def _decode_bits(bits: np.ndarray) -> int | None:
    """Inverse of :func:`_encode_bits`: 56 bools (any shape) -> value, or None on CRC error."""
    word = 0
    for b in bits.ravel().tolist():
        word = (word << 1) | int(b)
    value = word >> CRC_BITS
    if crc8(value.to_bytes(6, "big")) != word & 0xFF:
        return None
    return value


@dataclass(frozen=True)
class _Layout:
    """Pixel geometry of the code strip for one frame size (all in pixels)."""

    xs: tuple[int, ...]  # COLS + 1 block column edges
    ys: tuple[int, ...]  # ROWS + 1 block row edges
    sx0: np.ndarray  # (COLS,) sampling window start columns
    sx1: np.ndarray  # (COLS,) sampling window end columns (exclusive)
    sy: tuple[tuple[int, int], ...]  # ROWS sampling (start, end) rows


@functools.lru_cache(maxsize=64)
def _layout(width: int, height: int) -> _Layout:
    if width < MIN_WIDTH:
        raise ValueError(f"frame width {width} < {MIN_WIDTH} px is too small for a code")
    block = width / COLS
    if height < round(ROWS * block):
        raise ValueError(f"frame {width}x{height} is too short for a {ROWS}-row code strip")
    xs = tuple(round(i * block) for i in range(COLS + 1))
    ys = tuple(round(r * block) for r in range(ROWS + 1))
    inset = block / 4
    sx0 = np.array([round(i * block + inset) for i in range(COLS)], dtype=np.intp)
    sx1 = np.array([round((i + 1) * block - inset) for i in range(COLS)], dtype=np.intp)
    sx1 = np.maximum(sx1, sx0 + 1)
    sy = tuple(
        (
            round(r * block + inset),
            max(round((r + 1) * block - inset), round(r * block + inset) + 1),
        )
        for r in range(ROWS)
    )
    return _Layout(xs=xs, ys=ys, sx0=sx0, sx1=sx1, sy=sy)


def code_strip_height(width: int, height: int | None = None) -> int:
    """Height in pixels of the code strip drawn into a frame ``width`` pixels wide."""
    return _layout(width, height if height is not None else width).ys[-1]


def _fill(plane: np.ndarray, value: int, lo: int, hi: int) -> None:
    layout = _layout(plane.shape[1], plane.shape[0])
    bits = _encode_bits(value)
    for r in range(ROWS):
        y0, y1 = layout.ys[r], layout.ys[r + 1]
        for c in range(COLS):
            plane[y0:y1, layout.xs[c] : layout.xs[c + 1]] = hi if bits[r, c] else lo


def draw_code(frame: np.ndarray, value: int) -> None:
    """Draw ``value`` (0 <= value < 2**48) in place into a BGR frame.

    ``frame``: uint8 array of shape (H, W, 3) (or (H, W) gray); blocks are 0 / 255.
    """
    if frame.ndim not in (2, 3) or frame.dtype != np.uint8:
        raise ValueError("draw_code expects an HxWx3 (or HxW) uint8 array")
    _fill(frame, value, 0, 255)


def draw_code_yuv420(y_plane: np.ndarray, value: int) -> None:
    """Draw ``value`` in place into a luma plane (uint8, shape (H, W)); blocks are 16 / 235.

    Only luma is touched; callers should keep the chroma under the strip neutral
    (128) so that RGB conversions of the frame stay black/white.
    """
    if y_plane.ndim != 2 or y_plane.dtype != np.uint8:
        raise ValueError("draw_code_yuv420 expects an HxW uint8 luma plane")
    _fill(y_plane, value, LUMA_BLACK, LUMA_WHITE)


_LUMA_PLANE_FORMATS = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)


def _luma_of(frame: Any) -> np.ndarray:
    """Return a 2-D uint8 luma/gray view (H, W) of ``frame`` (ndarray or av.VideoFrame)."""
    if isinstance(frame, np.ndarray):
        if frame.ndim == 2:
            return frame
        if frame.ndim == 3 and frame.shape[2] == 1:
            return frame[:, :, 0]
        if frame.ndim == 3 and frame.shape[2] in (3, 4):
            # Convert only the strip: that is all the reader looks at.
            try:
                strip = frame[: code_strip_height(frame.shape[1], frame.shape[0])]
            except ValueError:  # too small for a code; read_code will return None
                strip = frame
            code = cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
            gray = cv2.cvtColor(np.ascontiguousarray(strip), code)
            out = np.zeros(frame.shape[:2], dtype=np.uint8)
            out[: gray.shape[0]] = gray
            return out
        raise ValueError(f"unsupported array shape {frame.shape}")
    # av.VideoFrame (duck-typed so this module does not need to import av).
    fmt = frame.format.name
    if fmt in _LUMA_PLANE_FORMATS:
        plane = frame.planes[0]
        rows, stride = plane.height, plane.line_size
        if stride >= frame.width and plane.buffer_size >= rows * stride:
            buf = np.frombuffer(plane, dtype=np.uint8, count=rows * stride)
            return buf.reshape(rows, stride)[:, : frame.width]
    return frame.to_ndarray(format="gray")


def read_code(frame: Any, *, min_contrast: float = DEFAULT_MIN_CONTRAST) -> int | None:
    """Recover the integer drawn by :func:`draw_code` / :func:`draw_code_yuv420`.

    ``frame``: a BGR(A) array (H, W, 3|4), a gray/luma array (H, W), or an
    ``av.VideoFrame`` (yuv planar/NV12 frames are read straight from the luma
    plane, other formats via ``to_ndarray(format="gray")``).  Returns the value,
    or ``None`` when the frame is too small, the CRC fails, or any block mean lies
    within ``min_contrast`` luma levels of 128 (an ambiguous read; pass 0 to
    rely on the CRC alone).  Coded blocks measured >= 64 levels from 128 even at
    100 kbps 360p, so the default guard costs nothing on genuine codes.
    """
    luma = _luma_of(frame)
    height, width = luma.shape
    try:
        layout = _layout(width, height)
    except ValueError:
        return None
    means = np.empty((ROWS, COLS), dtype=np.float64)
    for r, (y0, y1) in enumerate(layout.sy):
        profile = luma[y0:y1].mean(axis=0)
        cs = np.concatenate(([0.0], np.cumsum(profile)))
        means[r] = (cs[layout.sx1] - cs[layout.sx0]) / (layout.sx1 - layout.sx0)
    if min_contrast > 0 and np.any(np.abs(means - THRESHOLD) < min_contrast):
        return None
    return _decode_bits(means > THRESHOLD)


def block_means(frame: Any) -> np.ndarray:
    """Debug helper: the (ROWS, COLS) float array of per-block centre luma means."""
    luma = _luma_of(frame)
    layout = _layout(luma.shape[1], luma.shape[0])
    out = np.empty((ROWS, COLS), dtype=np.float64)
    for r, (y0, y1) in enumerate(layout.sy):
        for c in range(COLS):
            out[r, c] = luma[y0:y1, layout.sx0[c] : layout.sx1[c]].mean()
    return out


def capture_time_code(now_s: float) -> int:
    """Code for a capture instant: ``now_s`` (Unix seconds) as integer ms, masked to 48 bits."""
    return int(round(now_s * 1000.0)) & MAX_VALUE


def code_to_capture_time(code: int, now_s: float | None = None) -> float:
    """Unix time in seconds of a :func:`capture_time_code` value.

    The bits above 48 are taken from ``now_s`` (default ``time.time()``), choosing
    the candidate within +-2**47 ms (~4460 years) of now.
    """
    now_ms = int(round((time.time() if now_s is None else now_s) * 1000.0))
    ms = (now_ms & ~MAX_VALUE) | (code & MAX_VALUE)
    half = 1 << (VALUE_BITS - 1)
    if ms - now_ms > half:
        ms -= 1 << VALUE_BITS
    elif now_ms - ms > half:
        ms += 1 << VALUE_BITS
    return ms / 1000.0


class MovingBackground:
    """A cheap animated yuv420p background: a scrolling smooth pattern plus a moving bar.

    The pattern is pre-rendered once into planes one period wider than the frame
    (luma (H, W + P), chroma (H/2, (W + P)/2)); per frame only a shifted window is
    copied (``P`` = half the width, rounded to even; scroll speed in luma px/frame).
    The top :func:`code_strip_height` rows have neutral chroma (128) so a code
    drawn there with :func:`draw_code_yuv420` stays black/white.
    """

    def __init__(self, width: int, height: int, speed_px: int = 4) -> None:
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"yuv420p needs positive even dimensions, got {width}x{height}")
        self.width, self.height = width, height
        self.period = max(2, (width // 2) & ~1)
        self.speed = max(2, speed_px + (speed_px & 1))
        total = width + self.period
        x = np.arange(total, dtype=np.float32)
        yy = np.arange(height, dtype=np.float32)[:, None]
        phase = 2 * np.pi * x[None, :] / self.period
        luma = 120 + 55 * np.sin(phase) + 35 * np.sin(3 * phase + 2 * np.pi * yy / height * 2)
        self.y_src = np.clip(luma, 24, 224).astype(np.uint8)
        cx = np.arange(total // 2, dtype=np.float32)
        cphase = 2 * np.pi * cx[None, :] / (self.period // 2)
        cy = np.arange(height // 2, dtype=np.float32)[:, None]
        self.u_src = (128 + 40 * np.sin(cphase + cy / 40)).astype(np.uint8)
        self.v_src = (128 + 40 * np.cos(cphase - cy / 50)).astype(np.uint8)
        strip = code_strip_height(width, height)
        self.u_src[: (strip + 1) // 2] = 128
        self.v_src[: (strip + 1) // 2] = 128
        self.bar_width = max(2, (width // 24) & ~1)
        self.bar_top = strip + (strip & 1)

    def render_into(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, index: int) -> None:
        """Write frame ``index`` into planes y (H, W), u and v (H/2, W/2) (uint8 views)."""
        w = self.width
        off = (index * self.speed) % self.period
        y[:, :] = self.y_src[:, off : off + w]
        u[:, :] = self.u_src[:, off // 2 : off // 2 + w // 2]
        v[:, :] = self.v_src[:, off // 2 : off // 2 + w // 2]
        bar_x = (w - self.bar_width - (index * 2 * self.speed) % (w - self.bar_width)) & ~1
        top = self.bar_top
        y[top:, bar_x : bar_x + self.bar_width] = 200
        u[top // 2 :, bar_x // 2 : (bar_x + self.bar_width) // 2] = 90

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return new (y, u, v) uint8 planes of shapes (H, W), (H/2, W/2), (H/2, W/2)."""
        y = np.empty((self.height, self.width), dtype=np.uint8)
        u = np.empty((self.height // 2, self.width // 2), dtype=np.uint8)
        v = np.empty_like(u)
        self.render_into(y, u, v, index)
        return y, u, v
