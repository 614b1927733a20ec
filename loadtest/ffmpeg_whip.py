"""Publish with FFmpeg's own WHIP muxer (libavformat ``whip``, through PyAV).

FFmpeg's muxer is a real third-party WHIP client with its own ICE, DTLS and
RTP stacks (FFmpeg 8.x ``libavformat/whip.c``), so relaycast is exercised
against an implementation that shares nothing with aiortc:

* the offer carries H.264 (PT 106, packetization-mode=1, profile-level-id from
  the encoder's SPS) and Opus (PT 111, 48 kHz stereo) only, ``a=setup:passive``
  (FFmpeg is the DTLS server), no ICE candidates (FFmpeg is an ICE-lite-like
  client: it sends STUN binding requests with USE-CANDIDATE to the *first UDP
  host candidate* of the answer and answers the server's binding requests);
* the answer must carry ``a=ice-ufrag``, ``a=ice-pwd``, ``a=fingerprint`` and
  a ``typ host`` UDP candidate;
* H.264 must be Annex B without B-frames (constrained baseline here); the
  muxer needs the SPS/PPS as global extradata and re-inserts them before every
  IDR.  Opus must be 48 kHz stereo.

PyAV is blocking, so :func:`publish_with_ffmpeg` runs in the calling thread;
start it with ``threading.Thread`` (or ``asyncio.to_thread``) and stop it by
setting the ``stop`` event.  CLI::

    python -m loadtest.ffmpeg_whip http://127.0.0.1:8080/whip/demo --token KEY --seconds 10
"""

from __future__ import annotations

import argparse
import fractions
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np

from .pattern import MAX_VALUE, MovingBackground, capture_time_code, draw_code_yuv420

logger = logging.getLogger(__name__)

__all__ = ["FfmpegWhipStats", "publish_with_ffmpeg", "main"]

AUDIO_RATE = 48_000  # Hz; FFmpeg's WHIP muxer accepts Opus at 48 kHz stereo only
AUDIO_FRAME = 960  # samples per channel per Opus frame (20 ms)

CodeMode = Literal["counter", "capture_time"]


@dataclass
class FfmpegWhipStats:
    """What one :func:`publish_with_ffmpeg` run did.

    ``connect_s``: seconds from the start until FFmpeg's WHIP handshake (HTTP
    POST, ICE, DTLS, SRTP) finished, ``None`` if it never did.  ``video_frames`` /
    ``audio_frames``: frames handed to the encoders; ``video_packets`` /
    ``audio_packets`` / ``bytes``: encoded packets muxed (before RTP packetizing).
    ``last_code``: the code drawn into the last video frame.  ``error``: why the
    run ended early (``None`` when it ran its course or was stopped).
    """

    connect_s: float | None = None
    video_frames: int = 0
    audio_frames: int = 0
    video_packets: int = 0
    audio_packets: int = 0
    bytes: int = 0
    last_code: int | None = None
    duration_s: float = 0.0
    error: str | None = None


def _video_frame(background: MovingBackground, index: int, code: int) -> av.VideoFrame:
    frame = av.VideoFrame(background.width, background.height, "yuv420p")
    y, u, v = (
        np.frombuffer(memoryview(p), dtype=np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        for p in frame.planes
    )
    background.render_into(y, u, v, index)
    draw_code_yuv420(y, code)
    return frame


def _audio_frame(first_sample: int, frequency: float = 440.0, amplitude: float = 0.25) -> av.AudioFrame:
    t = (first_sample + np.arange(AUDIO_FRAME, dtype=np.float64)) * (frequency / AUDIO_RATE)
    pcm = (np.sin(2 * math.pi * np.mod(t, 1.0)) * (amplitude * 32767)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    frame.pts = first_sample
    frame.time_base = fractions.Fraction(1, AUDIO_RATE)
    return frame


def publish_with_ffmpeg(
    url: str,
    token: str | None,
    seconds: float,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    code: CodeMode = "counter",
    *,
    stop: threading.Event | None = None,
    connected: threading.Event | None = None,
    bitrate: int = 800_000,
    gop: int | None = None,
    audio: bool = True,
    handshake_timeout_ms: int = 10_000,
    pkt_size: int = 1200,
    on_progress: Callable[[FfmpegWhipStats], None] | None = None,
) -> FfmpegWhipStats:
    """WHIP-publish ``seconds`` of coded video (+ a 440 Hz tone) to ``url`` with FFmpeg.

    Blocks (run it in a thread).  Video: ``width x height`` yuv420p at ``fps``,
    libx264 veryfast/zerolatency, constrained baseline, no B-frames, a key frame
    every ``gop`` frames (default ``2 * fps``), ``bitrate`` bps; each frame
    carries a :mod:`loadtest.pattern` code (``"counter"``: frame index 0, 1, ...;
    ``"capture_time"``: wall-clock ms when the frame was built).  Audio: libopus
    48 kHz stereo in 20 ms frames.  Frames are paced in real time.

    ``token`` goes out as ``Authorization: Bearer <token>`` (the muxer's
    ``authorization`` option).  ``connected`` is set once the WHIP handshake is
    done; setting ``stop`` ends the run early (within one frame interval).
    ``on_progress`` is called about once a second.  Errors from FFmpeg (HTTP
    refusal, handshake timeout) end the run and are reported in
    :attr:`FfmpegWhipStats.error`; they are not raised.
    """
    if width % 2 or height % 2:
        raise ValueError("width and height must be even (yuv420p)")
    if fps <= 0 or seconds <= 0:
        raise ValueError("fps and seconds must be positive")
    stop = stop or threading.Event()
    stats = FfmpegWhipStats()
    started = time.monotonic()
    options = {
        "handshake_timeout": str(handshake_timeout_ms),
        "pkt_size": str(pkt_size),
    }
    if token:
        options["authorization"] = token
    import os
    if os.environ.get("FW_FLAGS"):
        options["whip_flags"] = os.environ["FW_FLAGS"]
    if os.environ.get("FW_CERT"):
        options["cert_file"], options["key_file"] = os.environ["FW_CERT"].split(",")
    try:
        container = av.open(url, "w", format="whip", container_options=options)
    except av.FFmpegError as exc:
        stats.error = f"open: {exc}"
        return stats
    try:
        _run(container, stats, started, seconds, width, height, fps, code, stop, connected,
             bitrate, gop or 2 * fps, audio, on_progress)
    except av.FFmpegError as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
        logger.warning("FFmpeg WHIP publisher stopped: %s", stats.error)
    finally:
        stats.duration_s = time.monotonic() - started
        try:
            container.close()  # writes the trailer: FFmpeg DELETEs the WHIP session
        except av.FFmpegError as exc:
            logger.debug("closing the WHIP muxer: %s", exc)
    return stats


def _run(
    container: av.container.OutputContainer,
    stats: FfmpegWhipStats,
    started: float,
    seconds: float,
    width: int,
    height: int,
    fps: int,
    code_mode: CodeMode,
    stop: threading.Event,
    connected: threading.Event | None,
    bitrate: int,
    gop: int,
    audio: bool,
    on_progress: Callable[[FfmpegWhipStats], None] | None,
) -> None:
    video = container.add_stream(
        "libx264",
        rate=fps,
        options={"preset": "veryfast", "tune": "zerolatency", "profile": "baseline"},
    )
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.bit_rate = bitrate
    frame_time_base = fractions.Fraction(1, fps)
    video.time_base = frame_time_base
    ctx = video.codec_context
    ctx.gop_size = gop
    ctx.max_b_frames = 0
    astream = None
    if audio:
        astream = container.add_stream("libopus", rate=AUDIO_RATE, layout="stereo")
        astream.bit_rate = 64_000
        astream.time_base = fractions.Fraction(1, AUDIO_RATE)

    # Writing the header runs FFmpeg's whole WHIP handshake: POST, ICE, DTLS, SRTP.
    container.start_encoding()
    stats.connect_s = time.monotonic() - started
    if connected is not None:
        connected.set()

    background = MovingBackground(width, height)
    clock0 = time.monotonic()
    next_progress = clock0 + 1.0
    v_index = a_sample = 0
    v_total = int(seconds * fps)
    a_total = int(seconds * AUDIO_RATE) if astream is not None else 0
    while not stop.is_set() and (v_index < v_total or a_sample < a_total):
        t_video = v_index / fps if v_index < v_total else math.inf
        t_audio = a_sample / AUDIO_RATE if a_sample < a_total else math.inf
        due = min(t_video, t_audio)
        delay = clock0 + due - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        if t_video <= t_audio:
            value = capture_time_code(time.time()) if code_mode == "capture_time" else v_index & MAX_VALUE
            frame = _video_frame(background, v_index, value)
            frame.pts = v_index
            frame.time_base = frame_time_base  # not video.time_base: the muxer sets it to 1/90000
            packets = video.encode(frame)
            stats.video_frames = v_index = v_index + 1
            stats.last_code = value
        else:
            assert astream is not None
            packets = astream.encode(_audio_frame(a_sample))
            a_sample += AUDIO_FRAME
            stats.audio_frames += 1
        for packet in packets:
            _count(stats, packet, video)
        container.mux(packets)
        if os.environ.get("FW_DEBUG") and v_index < 5:
            for p in packets:
                print("MUXED", p.stream.type, p.pts, p.dts, p.time_base, p.stream.time_base, flush=True)
        if on_progress is not None and time.monotonic() >= next_progress:
            next_progress += 1.0
            on_progress(stats)


def _count(stats: FfmpegWhipStats, packet: av.Packet, video: av.VideoStream) -> None:
    stats.bytes += packet.size
    if packet.stream is video:
        stats.video_packets += 1
    else:
        stats.audio_packets += 1


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest.ffmpeg_whip URL --token KEY --seconds N``."""
    parser = argparse.ArgumentParser(description="Publish a coded test pattern with FFmpeg's WHIP muxer.")
    parser.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    parser.add_argument("--token", help="stream key / bearer token")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=int, default=800_000, help="video bits per second")
    parser.add_argument("--code", choices=("counter", "capture_time"), default="counter")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="FFmpeg verbose log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.verbose:
        av.logging.set_level(av.logging.VERBOSE)
        av.logging.set_libav_level(av.logging.VERBOSE)

    def progress(s: FfmpegWhipStats) -> None:
        kbps = s.bytes * 8 / 1000 / max(1e-3, time.monotonic() - t0)
        print(f"video {s.video_frames} frames ({s.video_packets} pkts), audio {s.audio_frames} frames, "
              f"{kbps:.0f} kb/s, last code {s.last_code}", flush=True)

    t0 = time.monotonic()
    stop = threading.Event()
    try:
        stats = publish_with_ffmpeg(
            args.url, args.token, args.seconds, args.width, args.height, args.fps, args.code,
            stop=stop, bitrate=args.bitrate, audio=not args.no_audio, on_progress=progress,
        )
    except KeyboardInterrupt:
        stop.set()
        return 130
    connect = f"{stats.connect_s * 1000:.0f} ms" if stats.connect_s is not None else "never"
    print(f"done: handshake {connect}, {stats.video_frames} video / {stats.audio_frames} audio frames, "
          f"{stats.bytes} bytes in {stats.duration_s:.1f} s" + (f", error: {stats.error}" if stats.error else ""))
    return 1 if stats.error else 0


if __name__ == "__main__":
    sys.exit(main())
