"""H.264 encoder selection for the LL-HLS bridge.

The bridge re-encodes the published WebRTC video into H.264 segments. Hardware
encoders are preferred when the machine really has them, so each candidate is
*probed*: the codec must exist in the FFmpeg build PyAV ships, an encoder
context must open with the low-latency options we use, and a few tiny frames
must encode into at least one packet. Probe order (`ENCODER_ORDER`)::

    h264_nvenc -> h264_qsv -> h264_vaapi -> libx264

`choose_encoder()` returns the first candidate that works, logs why each earlier
one was rejected and caches the probe results (an nvenc probe loads the CUDA
driver and can take a second or more). Setting ``RELAYCAST_HLS_ENCODER`` to one
of `ENCODER_ORDER` forces that encoder (an unknown name raises
`EncoderConfigError`, an unusable one `NoEncoderError`).

`open_video_encoder()` opens a configured `av.VideoCodecContext`: constant
frame rate, closed GOP, no B-frames, keyframes only where the caller forces
them (segment and part boundaries) or every ``gop_frames`` frames.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType

import av
import av.logging
from av.codec.hwaccel import HWAccel
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame

from .errors import HlsBridgeError
from .problems import (
    ENCODER_NO_DEVICE,
    ENCODER_NO_OUTPUT,
    ENCODER_NOT_BUILT,
    ENCODER_OPEN_FAILED,
    ProblemType,
)

logger = logging.getLogger(__name__)

ENV_VAR = "RELAYCAST_HLS_ENCODER"
"""Environment variable naming an encoder to force (one of `ENCODER_ORDER`)."""

ENCODER_ORDER: tuple[str, ...] = ("h264_nvenc", "h264_qsv", "h264_vaapi", "libx264")
"""Probe order: hardware encoders first, the libx264 software encoder last."""

DEFAULT_RENDER_NODE = "/dev/dri/renderD128"
"""DRI render node used by VAAPI (and by QSV on Linux)."""

PROBE_WIDTH = 256
PROBE_HEIGHT = 144
PROBE_FRAMES = 3

__all__ = [
    "DEFAULT_RENDER_NODE",
    "ENCODER_ORDER",
    "ENV_VAR",
    "EncoderChoice",
    "EncoderConfigError",
    "EncoderError",
    "EncoderSpec",
    "NoEncoderError",
    "PictureType",
    "ProbeResult",
    "choose_encoder",
    "clear_probe_cache",
    "open_video_encoder",
    "probe_encoder",
]



class EncoderError(HlsBridgeError):
    """Base error of the encoder selection."""


class EncoderConfigError(EncoderError, ValueError):
    """An encoder name (argument or ``RELAYCAST_HLS_ENCODER``) is not one we support."""


class NoEncoderError(EncoderError, RuntimeError):
    """None of the requested encoders works on this machine."""


@dataclass(frozen=True)
class EncoderSpec:
    """How to drive one FFmpeg H.264 encoder for low latency.

    ``options`` are AVOptions passed to ``avcodec_open2`` (strings, FFmpeg
    names). ``pix_fmt`` is the software pixel format frames are given in;
    ``hw_device_type`` names the FFmpeg hardware device the encoder needs
    (frames are then uploaded by PyAV), ``None`` for system-memory input.
    """

    name: str
    pix_fmt: str
    options: Mapping[str, str]
    hw_device_type: str | None = None
    needs_render_node: bool = False


SPECS: Mapping[str, EncoderSpec] = MappingProxyType(
    {
        "h264_nvenc": EncoderSpec(
            name="h264_nvenc",
            pix_fmt="yuv420p",
            options=MappingProxyType(
                {
                    "preset": "p1",
                    "tune": "ll",
                    "zerolatency": "1",
                    "bf": "0",
                    "delay": "0",
                    "rc-lookahead": "0",
                    "no-scenecut": "1",
                    "forced-idr": "1",
                }
            ),
        ),
        "h264_qsv": EncoderSpec(
            name="h264_qsv",
            pix_fmt="nv12",
            options=MappingProxyType(
                {
                    "low_power": "1",
                    "bf": "0",
                    "async_depth": "1",
                    "look_ahead": "0",
                    "forced_idr": "1",
                }
            ),
            needs_render_node=sys.platform.startswith("linux"),
        ),
        "h264_vaapi": EncoderSpec(
            name="h264_vaapi",
            pix_fmt="nv12",
            options=MappingProxyType({"bf": "0"}),
            hw_device_type="vaapi",
            needs_render_node=True,
        ),
        "libx264": EncoderSpec(
            name="libx264",
            pix_fmt="yuv420p",
            options=MappingProxyType(
                {
                    "preset": "veryfast",
                    "tune": "zerolatency",
                    "bf": "0",
                    # Keyframes only where forced (or every gop_size frames).
                    "sc_threshold": "0",
                    "forced-idr": "1",
                }
            ),
        ),
    }
)


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of probing one encoder.

    ``reason`` says why it was rejected (exception type, message and the FFmpeg
    error log) or what the successful test encode produced — for the log only, it may
    name library versions and device paths; ``problem`` is the stable problem type
    URI of a rejection (:mod:`hls_bridge.problems`, None when available), what reports
    show; ``seconds`` is the wall time of the probe.
    """

    name: str
    available: bool
    reason: str
    seconds: float
    problem: str | None = None


@dataclass(frozen=True)
class EncoderChoice:
    """The encoder to use, its low-latency AVOptions and every probe made to pick it."""

    name: str
    options: Mapping[str, str]
    results: tuple[ProbeResult, ...] = field(default=())

    @property
    def spec(self) -> EncoderSpec:
        return SPECS[self.name]


_cache: dict[str, ProbeResult] = {}
_cache_lock = threading.Lock()


def clear_probe_cache() -> None:
    """Forget cached probe results (the next `choose_encoder()` probes again)."""
    with _cache_lock:
        _cache.clear()


def _check_name(name: str, source: str) -> str:
    if name not in SPECS:
        raise EncoderConfigError(
            f"{source}: unknown H.264 encoder {name!r}; expected one of {', '.join(ENCODER_ORDER)}"
        )
    return name


def _render_node() -> str:
    return os.environ.get("RELAYCAST_HLS_RENDER_NODE", DEFAULT_RENDER_NODE)


def _create_context(spec: EncoderSpec) -> VideoCodecContext:
    hwaccel = None
    if spec.hw_device_type is not None:
        hwaccel = HWAccel(spec.hw_device_type, device=_render_node())
    ctx = av.CodecContext.create(spec.name, "w", hwaccel=hwaccel)
    assert isinstance(ctx, VideoCodecContext)
    return ctx


def _check_options_consumed(ctx: VideoCodecContext) -> None:
    # avcodec_open2 hands back the options it did not recognise; PyAV keeps
    # them in ctx.options instead of failing.
    if ctx.options:
        raise ValueError(f"{ctx.name} does not accept options {sorted(ctx.options)}")


def _test_encode(spec: EncoderSpec) -> int:
    """Open ``spec`` at the probe size and encode a few frames; return the packet count."""
    ctx = _create_context(spec)
    ctx.width = PROBE_WIDTH
    ctx.height = PROBE_HEIGHT
    ctx.pix_fmt = spec.pix_fmt
    ctx.time_base = Fraction(1, 30)
    ctx.framerate = Fraction(30)
    ctx.max_b_frames = 0
    ctx.options = dict(spec.options)
    ctx.open()
    _check_options_consumed(ctx)
    packets = 0
    for i in range(PROBE_FRAMES):
        frame = VideoFrame(PROBE_WIDTH, PROBE_HEIGHT, spec.pix_fmt)
        for plane in frame.planes:
            plane.update(bytes([16 + 40 * i]) * plane.buffer_size)
        frame.pts = i
        packets += len(ctx.encode(frame))
    packets += len(ctx.encode(None))
    return packets


def probe_encoder(name: str) -> ProbeResult:
    """Probe one encoder now (uncached): exists, opens, encodes `PROBE_FRAMES` frames.

    Never raises for an unusable encoder; the failure is in the result's
    ``reason``. Raises `EncoderConfigError` for a name not in `ENCODER_ORDER`.
    """
    spec = SPECS[_check_name(name, "probe_encoder")]
    start = time.perf_counter()

    def result(available: bool, reason: str, problem: ProblemType | None = None) -> ProbeResult:
        return ProbeResult(name, available, reason, time.perf_counter() - start,
                           None if problem is None else problem.uri)

    if name not in av.codecs_available:
        return result(False, f"not in this FFmpeg build ({av.ffmpeg_version_info})",
                      ENCODER_NOT_BUILT)
    try:
        av.Codec(name, "w")
    except av.codec.codec.UnknownCodecError as exc:
        return result(False, f"no encoder: {exc}", ENCODER_NOT_BUILT)
    if spec.needs_render_node:
        node = _render_node()
        if not os.path.exists(node):
            return result(False, f"no DRI render node {node}", ENCODER_NO_DEVICE)
        if not os.access(node, os.R_OK | os.W_OK):
            return result(False, f"DRI render node {node} not accessible (rw)",
                          ENCODER_NO_DEVICE)

    # FFmpeg logging is off in PyAV by default; turn it on for this thread only,
    # so the real cause ("Cannot load libcuda.so.1") lands in the reason.
    old_level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=True) as logs:
            try:
                packets = _test_encode(spec)
            except (av.FFmpegError, OSError, ValueError, NotImplementedError) as exc:
                detail = "; ".join(
                    msg.strip() for level, _, msg in logs if level <= av.logging.ERROR
                )
                message = exc.strerror if isinstance(exc, av.FFmpegError) else exc
                reason = f"{type(exc).__name__}: {message}"
                if detail:
                    reason += f" [ffmpeg: {detail}]"
                return result(False, reason, ENCODER_OPEN_FAILED)
    finally:
        av.logging.set_level(old_level)
    if packets == 0:
        return result(False, f"encoded {PROBE_FRAMES} frames but produced no packet",
                      ENCODER_NO_OUTPUT)
    return result(
        True,
        f"encoded {PROBE_FRAMES} {PROBE_WIDTH}x{PROBE_HEIGHT} frames into {packets} packets",
    )


def _probe_cached(name: str) -> ProbeResult:
    with _cache_lock:
        cached = _cache.get(name)
        if cached is None:
            cached = _cache[name] = probe_encoder(name)
        return cached


def choose_encoder(preferred: Sequence[str] | None = None) -> EncoderChoice:
    """Pick the first working H.264 encoder.

    Candidates: ``preferred`` if given, else the one named by ``RELAYCAST_HLS_ENCODER``
    if set, else `ENCODER_ORDER`. Probe results are cached per process (see
    `clear_probe_cache`). Logs the choice and each rejection at INFO.

    Raises `EncoderConfigError` for an unknown name (argument or environment),
    `NoEncoderError` when no candidate works (its message lists every reason).
    """
    if preferred is not None:
        candidates = [_check_name(n, "preferred") for n in preferred]
    elif forced := os.environ.get(ENV_VAR, "").strip():
        candidates = [_check_name(forced, ENV_VAR)]
    else:
        candidates = list(ENCODER_ORDER)
    if not candidates:
        raise EncoderConfigError("preferred: no encoder named")

    results: list[ProbeResult] = []
    for name in candidates:
        probe = _probe_cached(name)
        results.append(probe)
        if probe.available:
            logger.info(
                "H.264 encoder %s chosen (%s, probe %.3f s)",
                name,
                probe.reason,
                probe.seconds,
            )
            return EncoderChoice(name, SPECS[name].options, tuple(results))
        logger.info(
            "H.264 encoder %s rejected: %s (probe %.3f s)",
            name,
            probe.reason,
            probe.seconds,
        )
    raise NoEncoderError(
        "no usable H.264 encoder: " + "; ".join(f"{r.name}: {r.reason}" for r in results)
    )


def open_video_encoder(
    choice: EncoderChoice,
    width: int,
    height: int,
    fps: int | Fraction,
    bitrate: int,
    gop_frames: int,
    *,
    time_base: Fraction | None = None,
) -> VideoCodecContext:
    """Open a low-latency H.264 encoder context.

    ``width``/``height`` in pixels (even), ``fps`` frames per second,
    ``bitrate`` in bits per second (also the VBV max rate, 1 s buffer),
    ``gop_frames`` the longest distance between keyframes in frames.
    ``time_base`` defaults to ``1/fps``; pass ``Fraction(1, 90000)`` to give
    frames 90 kHz RTP-clock pts. Closed GOP, no B-frames, so packets come out
    in presentation order (pts == dts) one per input frame.

    Keyframes (IDR) are forced by the caller at segment/part boundaries::

        frame.pict_type = PictureType.I   # av.video.frame.PictureType
        packets = ctx.encode(frame)       # packets[0].is_keyframe is True

    and a frame that is not forced should keep ``PictureType.NONE`` (a
    decoded frame carries its own type: reset it before re-encoding).

    Raises ``ValueError`` for bad dimensions/rates and ``av.FFmpegError`` if
    the encoder fails to open.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"frame size must be positive and even, got {width}x{height}")
    rate = Fraction(fps)
    if rate <= 0 or bitrate <= 0 or gop_frames <= 0:
        raise ValueError(
            f"fps, bitrate and gop_frames must be positive (got {fps}, {bitrate}, {gop_frames})"
        )
    spec = choice.spec
    ctx = _create_context(spec)
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = spec.pix_fmt
    ctx.time_base = time_base if time_base is not None else 1 / rate
    ctx.framerate = rate
    ctx.bit_rate = bitrate
    ctx.gop_size = gop_frames
    ctx.max_b_frames = 0
    ctx.flags |= av.codec.context.Flags.closed_gop
    options = dict(choice.options)
    options.setdefault("maxrate", str(bitrate))
    options.setdefault("bufsize", str(bitrate))
    ctx.options = options
    ctx.open()
    _check_options_consumed(ctx)
    return ctx
