"""Media files for Chromium's fake capture devices (and a reader for checking them).

* ``make_counter_y4m`` writes a YUV4MPEG2 (4:2:0) clip for
  ``--use-file-for-fake-video-capture=FILE.y4m``; frame ``i`` carries code ``i``
  (:func:`loadtest.pattern.draw_code_yuv420`) over a moving background.  Chromium
  loops the file, so received codes repeat modulo ``frames``.
* ``make_tone_wav`` writes a 16-bit PCM WAV for
  ``--use-file-for-fake-audio-capture=FILE.wav``.

Chromium's y4m reader (media/capture/video/file_video_capture_device.cc) reads
at most 200 header bytes, accepts ``C420``/``C420jpeg``/``C420mpeg2``/``C420paldv``,
and steps over frames assuming every frame header is exactly ``FRAME\\n``
(no frame parameters), so that is what is written here.

CLI: ``python -m loadtest.clips OUTDIR`` writes ``OUTDIR/counter.y4m`` and
``OUTDIR/tone.wav``.
"""

from __future__ import annotations

import argparse
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pattern import MovingBackground, draw_code_yuv420

__all__ = ["Y4mHeader", "make_counter_y4m", "make_tone_wav", "read_y4m", "main"]

Y4M_MAGIC = b"YUV4MPEG2"
FRAME_HEADER = b"FRAME\n"


@dataclass(frozen=True)
class Y4mHeader:
    """Parsed stream header: size in pixels, frame rate as a fraction, chroma tag."""

    width: int
    height: int
    fps_num: int
    fps_den: int
    chroma: str


def make_counter_y4m(
    path: str | Path,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    frames: int = 150,
) -> Path:
    """Write a yuv420p y4m clip of ``frames`` frames whose frame ``i`` carries code ``i``.

    ``width``/``height`` must be even (I420); file size is ``frames * (6 + 1.5*W*H)``
    bytes plus the header (150 frames of 640x360 = ~52 MB).
    """
    if width % 2 or height % 2:
        raise ValueError("y4m I420 clips need even width and height")
    if frames < 1 or fps < 1:
        raise ValueError("frames and fps must be positive")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    background = MovingBackground(width, height)
    header = f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii")
    y = np.empty((height, width), dtype=np.uint8)
    u = np.empty((height // 2, width // 2), dtype=np.uint8)
    v = np.empty_like(u)
    with path.open("wb") as fh:
        fh.write(header)
        for i in range(frames):
            background.render_into(y, u, v, i)
            draw_code_yuv420(y, i)
            fh.write(FRAME_HEADER)
            fh.write(y.tobytes())
            fh.write(u.tobytes())
            fh.write(v.tobytes())
    return path


def _parse_header(line: bytes) -> Y4mHeader:
    tokens = line.decode("ascii").split()
    if not tokens or tokens[0] != Y4M_MAGIC.decode():
        raise ValueError("not a YUV4MPEG2 stream")
    width = height = 0
    fps_num, fps_den, chroma = 0, 1, "420jpeg"
    for tok in tokens[1:]:
        tag, val = tok[0], tok[1:]
        if tag == "W":
            width = int(val)
        elif tag == "H":
            height = int(val)
        elif tag == "F":
            num, den = val.split(":")
            fps_num, fps_den = int(num), int(den)
        elif tag == "C":
            chroma = val
    if width <= 0 or height <= 0:
        raise ValueError(f"bad y4m header {line!r}")
    if chroma not in ("420", "420jpeg", "420mpeg2", "420paldv"):
        raise ValueError(f"only 8-bit 4:2:0 y4m is supported, got C{chroma}")
    return Y4mHeader(width, height, fps_num, fps_den, chroma)


def read_y4m(
    path: str | Path,
) -> tuple[Y4mHeader, Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Parse a 4:2:0 y4m file: returns the header and an iterator of (y, u, v) planes.

    Planes are uint8 arrays of shapes (H, W), (H/2, W/2), (H/2, W/2) (rounded up).
    Frame headers may carry parameters (``FRAME ...\\n``) as the format allows.
    """
    data = Path(path).read_bytes()
    end = data.index(b"\n")
    header = _parse_header(data[:end])
    w, h = header.width, header.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    frame_bytes = w * h + 2 * cw * ch

    def frames() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        pos = end + 1
        while pos < len(data):
            nl = data.index(b"\n", pos)
            if not data.startswith(b"FRAME", pos):
                raise ValueError(f"missing FRAME marker at byte {pos}")
            start = nl + 1
            if start + frame_bytes > len(data):
                raise ValueError("truncated y4m frame")
            buf = np.frombuffer(data, dtype=np.uint8, count=frame_bytes, offset=start)
            y = buf[: w * h].reshape(h, w)
            u = buf[w * h : w * h + cw * ch].reshape(ch, cw)
            v = buf[w * h + cw * ch :].reshape(ch, cw)
            yield y, u, v
            pos = start + frame_bytes

    return header, frames()


def make_tone_wav(
    path: str | Path,
    seconds: float = 5,
    frequency: float = 440,
    sample_rate: int = 48_000,
    channels: int = 1,
    amplitude: float = 0.25,
) -> Path:
    """Write a 16-bit PCM WAV sine tone (``amplitude`` as a fraction of full scale).

    For gap-free looping, ``seconds * frequency`` should be a whole number of cycles.
    """
    if seconds <= 0 or sample_rate <= 0 or channels not in (1, 2):
        raise ValueError("need seconds > 0, sample_rate > 0, channels 1 or 2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    pcm = (np.sin(2 * math.pi * frequency * t) * (amplitude * 32767)).astype("<i2")
    if channels == 2:
        pcm = np.repeat(pcm, 2)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m loadtest.clips OUTDIR [--width W --height H --fps F --frames N --seconds S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.clips", description=__doc__.split("\n")[0]
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frequency", type=float, default=440.0)
    args = parser.parse_args(argv)
    y4m = make_counter_y4m(
        args.outdir / "counter.y4m", args.width, args.height, args.fps, args.frames
    )
    wav = make_tone_wav(args.outdir / "tone.wav", args.seconds, args.frequency)
    print(y4m)
    print(wav)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
