"""Synthetic aiortc media sources for publishing load: coded video and a sine tone.

Both tracks pace themselves in real time like aiortc's ``VideoStreamTrack``:
the first ``recv()`` returns at once with pts 0 and every later call sleeps
until ``start + pts / clock_rate`` (wall clock, ``time.time()``).
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from typing import Literal

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .pattern import MAX_VALUE, MovingBackground, capture_time_code, draw_code_yuv420

__all__ = ["AUDIO_PTIME", "VIDEO_CLOCK_RATE", "PatternVideoTrack", "ToneAudioTrack"]

VIDEO_CLOCK_RATE = 90_000  # RTP video clock, ticks per second
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_PTIME = 0.020  # seconds of audio per frame

CodeMode = Literal["capture_time", "counter"]


class _Pacer:
    """Real-time pacing: ``await wait(t)`` returns when ``t`` seconds (media time) elapsed."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def wait(self, media_time_s: float) -> None:
        if self.start is None:
            self.start = time.time() - media_time_s
            return
        delay = self.start + media_time_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)


class PatternVideoTrack(MediaStreamTrack):
    """Video track of moving yuv420p frames carrying a :mod:`loadtest.pattern` code.

    Frames are ``width x height`` (even), ``fps`` per second, pts in 90 kHz ticks
    (``time_base = 1/90000``; frame ``n`` has pts ``round(n * 90000 / fps)``, i.e.
    steps of 3000 at 30 fps).  ``code="capture_time"`` draws
    :func:`~loadtest.pattern.capture_time_code` of ``time.time()`` taken right
    when the frame is produced (ms since the epoch, 48 bits); ``code="counter"``
    draws the frame index plus ``first_code`` (0, 1, 2, ... by default).  ``last_code`` / ``frames_produced``
    expose what was sent; ``last_gen_ms`` is the CPU time of the last frame build.
    """

    kind = "video"

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: float = 30,
        code: CodeMode = "capture_time",
        first_code: int = 0,
    ) -> None:
        super().__init__()
        self.first_code = first_code
        if code not in ("capture_time", "counter"):
            raise ValueError(f"code must be 'capture_time' or 'counter', not {code!r}")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.width, self.height, self.fps, self.code_mode = width, height, fps, code
        self._background = MovingBackground(width, height)
        self._pacer = _Pacer()
        self.frames_produced = 0
        self.last_code: int | None = None
        self.last_gen_ms = 0.0

    def make_frame(self, index: int, code: int) -> av.VideoFrame:
        """Build (without pacing) frame ``index`` with ``code`` drawn; pts left unset."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        y, u, v = (
            np.frombuffer(memoryview(p), dtype=np.uint8).reshape(p.height, p.line_size)[
                :, : p.width
            ]
            for p in frame.planes
        )
        self._background.render_into(y, u, v, index)
        draw_code_yuv420(y, code)
        return frame

    async def recv(self) -> av.VideoFrame:
        """Return the next frame, sleeping until its real-time slot."""
        if self.readyState != "live":
            raise MediaStreamError
        index = self.frames_produced
        pts = round(index * VIDEO_CLOCK_RATE / self.fps)
        await self._pacer.wait(pts / VIDEO_CLOCK_RATE)
        t0 = time.perf_counter()
        if self.code_mode == "capture_time":
            code = capture_time_code(time.time())
        else:
            code = (self.first_code + index) & MAX_VALUE
        frame = self.make_frame(index, code)
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self.last_gen_ms = (time.perf_counter() - t0) * 1000.0
        self.last_code = code
        self.frames_produced = index + 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """Audio track of a continuous sine tone in 20 ms s16 frames.

    Each frame holds ``sample_rate // 50`` samples per channel (960 at 48 kHz),
    packed s16 with layout mono (``channels=1``) or stereo (``channels=2``) --
    what aiortc's Opus encoder accepts (it resamples to 48 kHz stereo itself).
    pts counts samples (``time_base = 1/sample_rate``); ``amplitude`` is a
    fraction of full scale.
    """

    kind = "audio"

    def __init__(
        self,
        frequency: float = 440.0,
        sample_rate: int = 48_000,
        channels: int = 1,
        amplitude: float = 0.25,
    ) -> None:
        super().__init__()
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if sample_rate % 50:
            raise ValueError("sample_rate must be a multiple of 50 (20 ms frames)")
        self.frequency, self.sample_rate, self.channels = frequency, sample_rate, channels
        self.amplitude = amplitude
        self.samples_per_frame = int(sample_rate * AUDIO_PTIME)
        self.time_base = fractions.Fraction(1, sample_rate)
        self._pacer = _Pacer()
        self._pts = 0

    def make_frame(self, first_sample: int) -> av.AudioFrame:
        """Build (without pacing) the frame starting at sample ``first_sample``."""
        n = self.samples_per_frame
        cycles_per_sample = self.frequency / self.sample_rate
        phase0 = math.fmod(first_sample * cycles_per_sample, 1.0)
        t = phase0 + np.arange(n, dtype=np.float64) * cycles_per_sample
        pcm = (np.sin(2 * np.pi * t) * (self.amplitude * 32767)).astype(np.int16)
        if self.channels == 2:
            pcm = np.repeat(pcm, 2)  # interleave L/R for packed s16
        layout = "mono" if self.channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = self.sample_rate
        frame.pts = first_sample
        frame.time_base = self.time_base
        return frame

    async def recv(self) -> av.AudioFrame:
        """Return the next 20 ms frame, sleeping until its real-time slot."""
        if self.readyState != "live":
            raise MediaStreamError
        pts = self._pts
        await self._pacer.wait(pts / self.sample_rate)
        frame = self.make_frame(pts)
        self._pts = pts + self.samples_per_frame
        return frame
