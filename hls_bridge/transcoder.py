"""Decoded frames -> an ABR ladder of LL-HLS renditions in a `RoomStore`.

`LadderTranscoder` takes the room's decoded video (`av.VideoFrame`, any size, pts in
any time base) and audio (`av.AudioFrame`, e.g. 48 kHz stereo s16 from Opus) and
publishes one H.264 rendition per ladder rung (``v0`` = largest, ``v1``, ...) and one
AAC audio-only rendition ``a0`` that every variant names as its ``AUDIO`` group.

Video timing: every frame is put on a constant-frame-rate grid of ``fps`` slots from
its own media time relative to its first frame (slot ``n = round((t - t0) * fps)``). A frame landing on a slot
already used is dropped (a faster source), a missing slot is filled by repeating the
previous picture (a slower source or a lost frame), and a jump of more than
``max_gap_s`` (a publisher restart) re-bases the grid so output stays continuous. Slot
``n`` is a keyframe exactly when ``n`` is a multiple of the segment length in frames,
i.e. at media time ``k * segment_s``; the same decision feeds every rung, so keyframes,
parts and segments are aligned across renditions. A part holds
``floor(part_s * fps)`` frames; the advertised PART-TARGET (`part_target`) is exactly
that duration, so every part is <= PART-TARGET and every non-final part equals it.

Ladder re-planning: a configured ladder (rungs without a width) is planned with
`plan_ladder` from the first video frame, and planned again when the decoded source
size changes (a browser ramping its resolution up, an OBS scene or canvas change, a
phone rotating): once every source frame for at least ``replan_after_s`` of slots has
had the same new size, the ladder is re-planned at the next keyframe slot, i.e. a
segment boundary of every rendition.  Every rendition, audio included, then
starts a new Discontinuity Sequence at that same segment (`RenditionStore.discontinuity`,
RFC 8216bis §4.4.4.3): matching content keeps matching Discontinuity Sequence Numbers
across renditions (§6.2.4), which hls.js relies on (its audio waits for the video
timestamps of the audio segment's own Discontinuity Sequence, so an audio rendition
left behind on a sequence the video no longer lists never plays).  The segment is
chosen as soon as the new size has held: the first keyframe slot at least half a
segment later, so the audio, fed alongside with some skew, has not started that
segment yet.  A rendition whose size or bitrate changed gets a new encoder and a new
init segment (a new EXT-X-MAP, §4.4.4.5), the others keep theirs; timestamps stay
continuous.  The rung count never shrinks while `fill_rung` can add smaller rungs: a
smaller source keeps every rendition name (hls.js and most players never reload the
multivariant playlist, so a rendition that vanished would stall them); a larger one
that needs more rungs adds renditions (``v3`` …, numbered like the others from the
same MSN and Discontinuity Sequence Number) and rewrites the multivariant playlist,
which new players see.  A source flapping between sizes never re-plans (the new size
must hold on every frame).

Audio timing: the audio track keeps to its input timestamps, as the video keeps to its
grid: a decoded frame's media time (its pts relative to the first audio frame) says
where its samples belong, so a gap (an Opus frame lost on the network or dropped by a
full tap queue) is filled with silence, samples that overlap what was already taken are
dropped, and a jump of more than ``max_gap_s`` re-bases the timeline.  The samples are
resampled to fltp 48 kHz stereo and cut into 1024-sample AAC frames.  Segment ``k`` of the audio
rendition ends with the first AAC frame boundary at or after media time
``(k + 1) * segment`` — the video's segment boundary — so every audio segment boundary
lies within one AAC frame (21.3 ms) after the video one however long the stream runs:
audio segments are 46 or 47 AAC frames (0.981 or 1.003 s) for 1 s video segments, and
the difference never accumulates.  A segment's frames are split into as few parts of at
most ``floor(part_target / (1024/48000))`` frames as fit, all but the last of equal length
(47 frames at a 0.2 s part target: 8,8,8,8,8,7, never a 2-frame tail).  Its parts are all
independent.

Passthrough (``passthrough=True``, with ``segment_frames`` the source's regular key-frame
interval): when the source is H.264 and its size is the top rung's, rendition ``v0`` is
the source bitstream itself — each decoded frame carries its access unit (Annex B, the
tap's ``frame.opaque``), which is packaged on the frame's slot without scaling or
encoding; the lower rungs are encoded as usual, with the same forced key frames, which
fall on the source's own key frames.  Its ``BANDWIDTH`` comes from ``passthrough_bitrate``
(the source's measured bitrate).  The source must keep to the grid: a source frame at every
segment boundary slot and an IDR picture there, at most one frame per slot, the same size.
When it does not, :class:`PassthroughLost` is raised out of `feed_video` (nothing of that
frame published): the bridge restarts the transcoder without passthrough, which continues
every rendition after a discontinuity.  A slot without a source frame between boundaries
only lengthens the previous sample.

AAC passthrough (``aac_passthrough``: the source's AudioSpecificConfig, AAC-LC at 48 kHz,
one or two channels): ``a0`` is the broadcaster's own AAC — the RTMP/SRT relay's AAC section
(:mod:`hls_bridge.aac_tap`) gives `feed_aac` the encoder's raw frames, which are packaged as
they are, on the same segment and part plan as encoded audio (1,024-sample frames at 48 kHz).
The timing rules are the same, a frame at a time: a gap of whole frames is filled with
encoded silence, a frame that overlaps what was taken is dropped, a jump of more than
``max_gap_s`` re-bases.  A frame whose configuration is not the planned one raises
:class:`PassthroughLost` (as video passthrough does); decoded audio is ignored then.

Threading: `feed_video`, `feed_audio`, `feed_aac` (or `feed`) and `end` are synchronous and do the
scaling and encoding; call them from one worker thread. Store changes (RoomStore
waiters are asyncio based) are handed to the event loop with
``loop.call_soon_threadsafe``, one batch per call, so a segment's last part and its
``close_segment`` are applied together. `run` drives all of it from an async iterator
of frames through a single-thread executor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from functools import partial
from typing import Any

import av
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from common import latm

from .aac_tap import AacFrame
from .encoders import EncoderChoice, choose_encoder, open_video_encoder
from .errors import HlsBridgeError
from .fmp4 import (
    TrackPackager,
    aac_audio_specific_config,
    codecs_string_aac,
    codecs_string_avc,
    h264_parameter_sets,
    init_segment_audio,
    init_segment_video,
    iter_nal_units,
)
from .ladder import Rung, plan_ladder
from .playlist import AudioRendition, VariantStream
from .store import PLAYLIST_NAME, RoomStore

__all__ = [
    "AUDIO_CHANNELS",
    "AUDIO_GROUP",
    "AUDIO_RATE",
    "AUDIO_RENDITION",
    "LadderTranscoder",
    "PassthroughLost",
    "TranscoderError",
]

logger = logging.getLogger(__name__)

AUDIO_RATE = 48_000
AUDIO_CHANNELS = 2
AAC_FRAME = 1024
AUDIO_RENDITION = "a0"
AUDIO_GROUP = "audio"
VIDEO_TIMESCALE = 90_000
PEAK_FACTOR = 1.25
"""BANDWIDTH = PEAK_FACTOR x nominal video bitrate + audio (VBV allows short peaks)."""


class TranscoderError(HlsBridgeError):
    """Bad transcoder settings, or a store update that failed on the event loop."""


class PassthroughLost(TranscoderError):
    """The source no longer keeps to the grid that passthrough needs (see the module
    docstring); the message says how.  The transcoder process exits with
    :data:`hls_bridge.errors.PASSTHROUGH_LOST_STATUS` and is restarted without passthrough."""


_NAL_IDR = 5


def _has_idr(access_unit: bytes) -> bool:
    return any(nal[0] & 0x1F == _NAL_IDR for nal in iter_nal_units(access_unit) if nal)


def _drop_leading_samples(frame: av.AudioFrame, count: int) -> av.AudioFrame:
    """``frame`` without its first ``count`` samples (same format, layout and rate)."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved channels
        count *= len(frame.layout.channels)
    trimmed = av.AudioFrame.from_ndarray(
        array[:, count:].copy(), format=frame.format.name, layout=frame.layout.name
    )
    trimmed.sample_rate = frame.sample_rate
    return trimmed


def _describe(outputs: Sequence[_VideoOutput]) -> str:
    return ", ".join(
        f"{o.name}={o.rung.width}x{o.rung.height}@{o.rung.video_bitrate}" for o in outputs
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass
class _VideoOutput:
    """One rung's encoder, packager and progress (worker-thread state)."""

    name: str
    rung: Rung
    ctx: VideoCodecContext | None
    """The rung's encoder; None when the rendition is the source passed through."""
    packager: TrackPackager
    last_picture: av.VideoFrame | None = None
    codecs: str | None = None
    segment_start: int = 0
    parts_open: int = 0
    bytes_out: int = 0
    reformatter: VideoReformatter = field(default_factory=VideoReformatter)


@dataclass
class _Stats:
    video_slots: int = 0
    dropped_frames: int = 0
    repeated_frames: int = 0
    rebases: int = 0
    audio_samples: int = 0
    audio_filled_samples: int = 0
    """Input samples of silence inserted for gaps in the audio timestamps."""
    audio_dropped_samples: int = 0
    """Input samples dropped because their timestamps overlapped earlier audio."""
    audio_rebases: int = 0
    replans: int = 0
    """Ladder re-plans for a new source size (each one a discontinuity)."""
    passthrough_frames: int = 0
    """Source access units packaged as they came (rendition ``v0`` in passthrough)."""
    bytes_out: dict[str, int] = field(default_factory=dict)


class LadderTranscoder:
    """Scale, encode and package a room's media into a `RoomStore`.

    - ``rungs``: the ladder; rungs without a width (``Rung.width == 0``, as parsed from
      config) are fitted to the first video frame with `plan_ladder` and re-planned
      when the source size changes (see the module docstring); planned rungs are used
      as given.
    - ``replan_after_s``: seconds (of output slots) a new source size must hold on
      every frame before the ladder is re-planned at the next segment boundary.
    - ``reuse_renditions``: add renditions with ``reuse=True`` (a transcoder restarted
      on a store whose renditions had `RenditionStore.discontinuity` called).
    - ``min_rungs``: plan at least this many rungs from the first frame too (smaller
      ones filled in, see `plan_ladder`), e.g. a restarted transcoder keeping every
      rendition its predecessor published.
    - ``fps``: output frame rate (constant); ``segment_s``/``part_s``: target segment
      and part durations in seconds; ``segment_frames`` (frames) replaces ``segment_s``
      when given (the source's key-frame interval, for passthrough).
    - ``passthrough``: package an H.264 source as rendition ``v0`` without encoding it
      when it fits (see the module docstring); ``passthrough_bitrate`` (bits/s, the
      source's) is then ``v0``'s nominal bitrate.
    - ``encoder_choice``: H.264 encoder, default `choose_encoder()` (probed lazily in
      the worker thread).
    - ``audio``: publish the ``a0`` AAC rendition and name it in the variants.
    - ``aac_passthrough``: the source's AudioSpecificConfig (AAC-LC, 48 kHz, 1–2 channels):
      ``a0`` is made of the frames `feed_aac` gets, not encoded (see the module docstring).
    - ``loop``: the event loop owning ``room_store`` (default: the running loop at
      construction, else the one `run` runs on; with none, store updates are applied
      at once in the calling thread).
    """

    def __init__(
        self,
        room_store: RoomStore,
        rungs: Sequence[Rung],
        *,
        fps: int | Fraction = 30,
        segment_s: float = 1.0,
        part_s: float = 0.2,
        encoder_choice: EncoderChoice | None = None,
        audio: bool = True,
        audio_bitrate: int = 128_000,
        window_segments: int = 12,
        max_gap_s: float = 2.0,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        parallel_rungs: bool = True,
        replan_after_s: float = 1.0,
        reuse_renditions: bool = False,
        min_rungs: int = 0,
        segment_frames: int | None = None,
        passthrough: bool = False,
        passthrough_bitrate: int | None = None,
        aac_passthrough: bytes | None = None,
    ) -> None:
        self.fps = Fraction(fps)
        if self.fps <= 0 or not rungs:
            raise TranscoderError("fps must be positive and the ladder not empty")
        self.segment_frames = segment_frames or round(segment_s * self.fps)
        self.part_frames = math.floor(part_s * self.fps + Fraction(1, 1000))
        if self.part_frames < 1 or self.segment_frames < self.part_frames:
            raise TranscoderError(
                f"need 1 <= frames per part ({part_s} s) <= frames per segment ({segment_s} s)"
                f" at {float(self.fps):g} fps"
            )
        self.segment_duration = Fraction(self.segment_frames) / self.fps
        self.part_target = float(Fraction(self.part_frames) / self.fps)
        """PART-TARGET in seconds: exactly ``part_frames`` frames."""
        self.audio_part_frames = math.floor(self.part_target * AUDIO_RATE / AAC_FRAME)
        if audio and self.audio_part_frames < 1:
            raise TranscoderError(f"part target {self.part_target} s is shorter than an AAC frame")
        self.target_duration = max(
            1, round(float(self.segment_duration) + AAC_FRAME / AUDIO_RATE + 1e-6)
        )
        if replan_after_s < 0:
            raise TranscoderError("replan_after_s must be >= 0")
        self.rungs = list(rungs)
        self._configured: list[Rung] | None = (
            list(rungs) if any(r.width == 0 for r in rungs) else None
        )
        """The configured ladder, re-planned for each source size; None = fixed sizes."""
        self._replan_slots = max(1, round(replan_after_s * self.fps))
        self._reuse = reuse_renditions
        self._min_rungs = min_rungs
        self._passthrough = passthrough
        self._passthrough_bitrate = passthrough_bitrate
        self._room = room_store
        self._encoder_choice = encoder_choice
        self._audio_enabled = audio
        self.audio_bitrate = audio_bitrate
        self._window_segments = window_segments
        self._max_gap_slots = max(1, round(max_gap_s * self.fps))
        self._max_gap_s = Fraction(max_gap_s)
        self._loop = loop if loop is not None else _running_loop()
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._parallel_rungs = parallel_rungs
        self._rung_pool: ThreadPoolExecutor | None = None
        """Threads scaling + encoding rungs 1.. while the worker does rung 0 (PyAV releases
        the GIL in sws_scale and the encoder): a frame's wall time is its slowest rung."""
        self._variants_lock = threading.Lock()
        self._anchor: datetime | None = None
        """Wall clock at the first frame of either kind: the PDT of media time 0."""
        self._store_error: BaseException | None = None
        self._ended = False
        self.stats = _Stats()
        self.worker_seconds = 0.0
        """Wall seconds spent awaiting the worker thread in `run`/`aend`."""

        # video state (worker thread)
        self._outputs: list[_VideoOutput] | None = None
        self._video_origin: Fraction | None = None
        self._slot_offset = 0
        self._last_slot = -1
        self._variants_set = False
        self._planned_for: tuple[int, int] | None = None
        """Source (width, height) the current ladder was planned for."""
        self._new_size: tuple[int, int] | None = None
        """A source size other than ``_planned_for`` on every frame since ``_new_size_slot``."""
        self._new_size_slot = 0
        self._replan_slot: int | None = None
        """The keyframe slot the next re-plan happens at, once decided."""
        self._replan_size = (0, 0)
        """The source size that re-plan is for (the size that held)."""
        self._audio_discontinuity: int | None = None
        """Audio segment index that starts with a discontinuity (the re-plan's)."""

        # audio state (worker thread)
        self._resampler: av.AudioResampler | None = None
        self._audio_ctx: AudioCodecContext | None = None
        self._audio_packager: TrackPackager | None = None
        self._audio_codecs = ""
        self._audio_packets = 0
        self._audio_parts_open = 0
        self._audio_segment_start = 0
        self._audio_origin: Fraction | None = None
        """Input media time (s) that maps to audio time 0 (moved by a re-base)."""
        self._audio_taken = Fraction(0)
        """Seconds of input audio handed to the resampler so far (fills included)."""
        self._aac_config: latm.AacConfig | None = None
        """The source's AAC configuration when ``a0`` passes it through."""
        if aac_passthrough is not None:
            config = latm.AacConfig.from_asc(aac_passthrough)
            if config.sample_rate != AUDIO_RATE or config.channels > AUDIO_CHANNELS:
                raise TranscoderError(f"AAC passthrough needs {AUDIO_RATE} Hz, at most {AUDIO_CHANNELS} channels")
            self._aac_config = config
        self._audio_channels = self._aac_config.channels if self._aac_config else AUDIO_CHANNELS
        self._silence: bytes | None = None
        if audio:
            self._open_audio()

    # -- public API ----------------------------------------------------------------

    def measured_bitrates(self) -> dict[str, float]:
        """Bits per second of packaged media per rendition so far (fMP4 overhead included)."""
        video_s = self.stats.video_slots / self.fps
        audio_s = Fraction(self.stats.audio_samples, AUDIO_RATE)
        out = {}
        for name, size in self.stats.bytes_out.items():
            seconds = audio_s if name == AUDIO_RENDITION else video_s
            out[name] = float(size * 8 / seconds) if seconds else 0.0
        return out

    def feed(self, frame: av.VideoFrame | av.AudioFrame | AacFrame) -> None:
        """`feed_video`, `feed_audio` or `feed_aac`, by frame type (worker thread)."""
        if isinstance(frame, av.VideoFrame):
            self.feed_video(frame)
        elif isinstance(frame, av.AudioFrame):
            self.feed_audio(frame)
        elif isinstance(frame, AacFrame):
            self.feed_aac(frame)
        else:
            raise TypeError(f"expected an av.VideoFrame, av.AudioFrame or AacFrame, got {type(frame)!r}")

    def feed_video(self, frame: av.VideoFrame) -> None:
        """Scale and encode one decoded video frame for every rung (worker thread)."""
        self._check_running()
        ops: list[Callable[[], Any]] = []
        if self._outputs is None:
            self._outputs = self._open_video(frame, ops)
        if self._anchor is None:
            self._anchor = self._clock()
        self._watch_size(frame)
        slot = self._slot_for(frame)
        if slot is None and self._outputs[0].ctx is None:
            raise PassthroughLost("two source frames for one output slot (a frame rate above "
                                  f"{float(self.fps):g} fps)")
        if slot is not None:
            for missing in range(self._last_slot + 1, slot):
                self._encode_rungs(None, missing, ops)
                self.stats.repeated_frames += 1
            if (
                self._replan_slot is None
                and self._new_size is not None
                and slot - self._new_size_slot >= self._replan_slots
            ):
                self._schedule_replan(slot)
            if (
                self._replan_slot is not None
                and slot >= self._replan_slot
                and slot % self.segment_frames == 0
            ):
                self._replan(frame, slot, ops)
            self._encode_rungs(frame, slot, ops)
            self._last_slot = slot
            self.stats.video_slots = slot + 1
        self._post(ops)

    def feed_audio(self, frame: av.AudioFrame) -> None:
        """Resample and AAC-encode one decoded audio frame (worker thread)."""
        self._check_running()
        if not self._audio_enabled or self._aac_config is not None:
            return
        assert self._resampler is not None
        if self._anchor is None:
            self._anchor = self._clock()
        ops: list[Callable[[], Any]] = []
        for piece in self._place_audio(frame):
            for chunk in self._resampler.resample(piece):
                self._encode_audio(chunk, ops)
        self._post(ops)

    def feed_aac(self, frame: AacFrame) -> None:
        """Package one of the source's AAC frames in ``a0`` (worker thread; AAC passthrough
        only, see the module docstring).

        :raises PassthroughLost: the frame's configuration is not the planned one."""
        self._check_running()
        if not self._audio_enabled or self._aac_config is None:
            return
        if frame.config != self._aac_config:
            raise PassthroughLost(f"the source's AAC changed to {frame.config.sample_rate} Hz, "
                                  f"{frame.config.channels} channels")
        if self._anchor is None:
            self._anchor = self._clock()
        duration = Fraction(AAC_FRAME, AUDIO_RATE)
        missing = round(self._audio_gap(Fraction(frame.pts, 90000)) / duration)
        if missing < 0:  # overlaps audio already taken
            self.stats.audio_dropped_samples += AAC_FRAME
            return
        ops: list[Callable[[], Any]] = []
        for _ in range(missing):
            self._package_audio(self._silent_aac(), ops)
            self.stats.audio_filled_samples += AAC_FRAME
        self._package_audio(frame.data, ops)
        self._audio_taken += duration * (missing + 1)
        self.stats.audio_samples += AAC_FRAME * (missing + 1)
        self._post(ops)

    def _silent_aac(self) -> bytes:
        """One AAC-LC frame of silence in the source's configuration (encoded once)."""
        if self._silence is None:
            ctx = av.CodecContext.create("aac", "w")
            assert isinstance(ctx, AudioCodecContext)
            layout = "mono" if self._audio_channels == 1 else "stereo"
            ctx.sample_rate, ctx.layout, ctx.format = AUDIO_RATE, layout, "fltp"
            ctx.time_base = Fraction(1, AUDIO_RATE)
            ctx.bit_rate = self.audio_bitrate
            packets: list[bytes] = []
            for index in range(4):  # past the encoder's priming: a steady-state silent frame
                silence = av.AudioFrame(format="fltp", layout=layout, samples=AAC_FRAME)
                silence.sample_rate, silence.pts = AUDIO_RATE, index * AAC_FRAME
                for plane in silence.planes:
                    plane.update(bytes(plane.buffer_size))
                packets += [bytes(p) for p in ctx.encode(silence)]
            self._silence = packets[-1]
        return self._silence

    def end(self) -> None:
        """Flush the encoders, publish the last parts, close the segments, end all renditions."""
        if self._ended:
            return
        self._check_running()
        self._ended = True
        ops: list[Callable[[], Any]] = []
        for output in self._outputs or ():
            for packet in output.ctx.encode(None) if output.ctx is not None else ():
                self._package_video(output, packet, ops)
            self._flush_video(output, ops, close=True)
        if self._audio_enabled and self._resampler is not None:
            for chunk in self._resampler.resample(None):
                self._encode_audio(chunk, ops)
            self._encode_audio(None, ops)
            self._flush_audio(ops, close=True)
        elif self._audio_enabled:  # AAC passthrough: nothing buffered
            self._flush_audio(ops, close=True)
        ops.append(self._room.end)
        self._post(ops)

    async def run(
        self, frames: AsyncIterable[av.VideoFrame | av.AudioFrame], *, end: bool = True
    ) -> None:
        """Feed every frame of ``frames`` through one worker thread; then `end` if asked.

        Each frame is awaited before the next is read (back-pressure on the source).
        Store updates are applied on this loop before each await returns.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise TranscoderError("run() on a different event loop than the store's")
        async for frame in frames:
            await self._in_worker(self.feed, frame)
        if end:
            await self.aend()

    async def aend(self) -> None:
        """`end` in the worker thread; returns once the store has ended."""
        await self._in_worker(self.end)
        self._check_running()

    def close(self) -> None:
        """Release the worker threads (does not end the renditions)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._rung_pool is not None:
            self._rung_pool.shutdown(wait=True)
            self._rung_pool = None

    # -- video ---------------------------------------------------------------------

    def _open_video(self, frame: av.VideoFrame, ops: list[Callable[[], Any]]) -> list[_VideoOutput]:
        if self._configured is not None:
            self.rungs = plan_ladder(frame.width, frame.height, self._configured,
                                     min_rungs=self._min_rungs)
        self._planned_for = (frame.width, frame.height)
        self._encoder_choice = self._encoder_choice or choose_encoder()
        if self._passthrough:
            top = self.rungs[0]
            if not isinstance(frame.opaque, bytes):
                self._passthrough = False
                logger.info("passthrough off: the source is not H.264")
            elif (top.width, top.height) != (frame.width, frame.height):
                self._passthrough = False
                logger.info("passthrough off: the source (%dx%d) is larger than the top rung (%dx%d)",
                            frame.width, frame.height, top.width, top.height)
        outputs = []
        for index, rung in enumerate(self.rungs):
            outputs.append(self._new_output(f"v{index}", rung, passthrough=self._passthrough and index == 0))
            ops.append(partial(self._add_rendition, f"v{index}"))
        self._size_rung_pool(len(outputs))
        logger.info(
            "transcoding %dx%d to %s with %s",
            frame.width, frame.height, _describe(outputs), self._encoder_choice.name,
        )
        return outputs

    def _new_output(self, name: str, rung: Rung, sequence_number: int = 1, *,
                    passthrough: bool = False) -> _VideoOutput:
        """A rung's encoder (none for the source passed through) and packager; decode
        times are slot times (continuous across re-plans)."""
        packager = TrackPackager(1, VIDEO_TIMESCALE, h264=True, start_time=Fraction(0),
                                 sequence_number=sequence_number)
        if passthrough:
            return _VideoOutput(name, replace(rung, video_bitrate=self._passthrough_bitrate or rung.video_bitrate),
                                None, packager)
        choice = self._encoder_choice
        assert choice is not None
        ctx = open_video_encoder(
            choice, rung.width, rung.height, self.fps, rung.video_bitrate,
            4 * self.segment_frames, time_base=1 / self.fps,
        )
        return _VideoOutput(name, rung, ctx, packager)

    def _size_rung_pool(self, rungs: int) -> None:
        if self._rung_pool is not None:
            self._rung_pool.shutdown(wait=True)
            self._rung_pool = None
        if self._parallel_rungs and rungs > 1:
            self._rung_pool = ThreadPoolExecutor(rungs - 1, thread_name_prefix="hls-rung")

    def _watch_size(self, frame: av.VideoFrame) -> None:
        """Track a source size change that may re-plan the ladder (a configured ladder only)."""
        size = (frame.width, frame.height)
        if self._outputs and self._outputs[0].ctx is None and size != self._planned_for:
            raise PassthroughLost(f"the source's size changed to {size[0]}x{size[1]}")
        if self._configured is None:
            return
        if size == self._planned_for:
            self._new_size = None
        elif size != self._new_size:
            self._new_size = size
            self._new_size_slot = self._last_slot + 1

    def _schedule_replan(self, slot: int) -> None:
        """Decide the re-plan for ``_new_size`` (held since ``_new_size_slot``) at the
        first keyframe slot at least half a segment after ``slot``, and the audio
        discontinuity at the same segment: the audio, fed alongside, must not have
        started that segment yet (see the module docstring)."""
        assert self._outputs is not None and self._configured is not None
        size = self._new_size
        assert size is not None
        rungs = plan_ladder(*size, self._configured, min_rungs=len(self._outputs))
        if rungs == [o.rung for o in self._outputs]:
            self._planned_for, self._new_size = size, None  # e.g. 1 pixel more: just scale
            return
        segment = -(-(slot + self.segment_frames // 2) // self.segment_frames)
        self._replan_slot = segment * self.segment_frames
        self._replan_size = size
        if self._audio_enabled:
            self._audio_discontinuity = segment

    def _replan(self, frame: av.VideoFrame, slot: int, ops: list[Callable[[], Any]]) -> None:
        """Fit the ladder to the size that held before slot ``slot`` (a keyframe slot;
        ``frame`` is that slot's picture, which may have changed size again).

        Every video rendition takes a discontinuity here; changed rungs get a new
        encoder (whose first packet sets the new init segment), new rungs a new
        rendition, rungs the plan no longer has are ended.  Store ops are appended in
        that order (a new rendition aligns with ``v0`` after its discontinuity).
        """
        assert self._configured is not None and self._outputs is not None
        old = self._outputs
        size = self._replan_size
        self._planned_for = size
        current = (frame.width, frame.height)
        if current == size:
            self._new_size = None
        elif current != self._new_size:  # changed again (or back): watch that size now
            self._new_size, self._new_size_slot = current, slot
        due, self._replan_slot = self._replan_slot, None
        if slot != due:  # a gap in the source skipped the planned keyframe slot
            logger.warning("ladder re-plan at frame %d instead of %s", slot, due)
        rungs = plan_ladder(*size, self._configured, min_rungs=len(old))
        self.stats.replans += 1
        outputs: list[_VideoOutput] = []
        for index, output in enumerate(old):
            changed = index >= len(rungs) or output.rung != rungs[index]
            if changed and output.ctx is not None:
                for packet in output.ctx.encode(None):
                    self._package_video(output, packet, ops)
            self._flush_video(output, ops, close=True)
            if index >= len(rungs):
                ops.append(partial(self._room.end_rendition, output.name))
                continue
            ops.append(partial(self._call, output.name, "discontinuity"))
            if changed:
                output = self._new_output(output.name, rungs[index],
                                          output.packager.sequence_number)
            outputs.append(output)
        for index in range(len(old), len(rungs)):
            name = f"v{index}"
            outputs.append(self._new_output(name, rungs[index]))
            ops.append(partial(self._add_rendition, name, align_with=old[0].name))
        self._outputs = outputs
        with self._variants_lock:
            self._variants_set = False
        self._maybe_set_variants(ops)  # at once if no rung needs a new init segment
        if len(outputs) != len(old):
            self._size_rung_pool(len(outputs))
        logger.info(
            "source is now %dx%d: re-planned the ladder at frame %d to %s",
            *size, slot, _describe(outputs),
        )

    def _slot_for(self, frame: av.VideoFrame) -> int | None:
        """The output slot of ``frame``, or None to drop it (see the module docstring)."""
        if frame.pts is None or frame.time_base is None:
            return self._last_slot + 1
        t = frame.pts * frame.time_base
        if self._video_origin is None:
            self._video_origin = t
        slot = math.floor((t - self._video_origin) * self.fps + Fraction(1, 2)) + self._slot_offset
        if slot > self._last_slot + self._max_gap_slots or slot < self._last_slot - self._max_gap_slots:
            self._slot_offset += self._last_slot + 1 - slot
            self.stats.rebases += 1
            logger.info("video timestamps jumped by %d frames; re-based", slot - self._last_slot - 1)
            return self._last_slot + 1
        if slot <= self._last_slot:
            self.stats.dropped_frames += 1
            return None
        return slot

    def _encode_rungs(
        self, frame: av.VideoFrame | None, slot: int, ops: list[Callable[[], Any]]
    ) -> None:
        """`_encode` ``frame`` for every rung, rungs 1.. in the rung pool; store ops are
        appended in rung order (each rung's own ops keep their order)."""
        outputs = self._outputs
        assert outputs is not None
        if self._rung_pool is None:
            for output in outputs:
                self._encode(output, frame, slot, ops)
            return
        per_rung: list[list[Callable[[], Any]]] = [[] for _ in outputs]
        futures = [
            self._rung_pool.submit(self._encode, output, frame, slot, per_rung[index])
            for index, output in enumerate(outputs) if index > 0
        ]
        try:
            self._encode(outputs[0], frame, slot, per_rung[0])
        finally:
            for future in futures:
                future.result()  # re-raises a rung's TranscoderError
        for rung_ops in per_rung:
            ops.extend(rung_ops)

    def _encode(
        self, output: _VideoOutput, frame: av.VideoFrame | None, slot: int,
        ops: list[Callable[[], Any]],
    ) -> None:
        if output.ctx is None:
            self._pass_through(output, frame, slot, ops)
            return
        rung = output.rung
        if frame is None:  # repeat the previous picture
            picture = output.last_picture
            assert picture is not None
        else:
            # One reformatter per rung: a frame's own (frame.reformat) must not be shared
            # by the rung threads.
            picture = output.reformatter.reformat(
                frame, width=rung.width, height=rung.height, format="yuv420p")
            output.last_picture = picture
        picture.pts = slot
        picture.time_base = output.ctx.time_base
        keyframe = slot % self.segment_frames == 0
        picture.pict_type = PictureType.I if keyframe else PictureType.NONE
        for packet in output.ctx.encode(picture):
            self._package_video(output, packet, ops)

    def _pass_through(self, output: _VideoOutput, frame: av.VideoFrame | None, slot: int,
                      ops: list[Callable[[], Any]]) -> None:
        """Package the source's access unit of ``frame`` on ``slot`` (see the module docstring).

        :raises PassthroughLost: no source frame, or no IDR picture, at a segment boundary."""
        boundary = slot % self.segment_frames == 0
        if frame is None:  # no source frame for this slot: the previous sample lasts longer
            if boundary:
                raise PassthroughLost(f"no source frame at the segment boundary (frame {slot})")
            self._advance(output, slot, ops)
            return
        access_unit = frame.opaque
        if not isinstance(access_unit, bytes):
            raise PassthroughLost("a source frame without its access unit")
        keyframe = _has_idr(access_unit)
        if boundary and not keyframe:
            raise PassthroughLost(f"the source has no key frame at the segment boundary (frame {slot})")
        packet = av.Packet(access_unit)
        packet.pts = packet.dts = slot
        packet.time_base = 1 / self.fps
        packet.is_keyframe = keyframe
        self.stats.passthrough_frames += 1
        self._package_video(output, packet, ops)

    def _package_video(
        self, output: _VideoOutput, packet: av.Packet, ops: list[Callable[[], Any]]
    ) -> None:
        packet.time_base = packet.time_base or 1 / self.fps
        packet.duration = 1
        slot = packet.pts
        assert slot is not None
        if slot % self.segment_frames == 0 and not packet.is_keyframe:
            raise TranscoderError(f"the encoder of {output.name} ignored the forced keyframe at frame {slot}")
        if output.codecs is None:
            extradata = output.ctx.extradata if output.ctx is not None else None
            sps, pps = h264_parameter_sets(extradata or bytes(packet))
            output.codecs = codecs_string_avc(sps)
            init = init_segment_video(
                output.rung.width, output.rung.height, sps, pps, timescale=VIDEO_TIMESCALE
            )
            ops.append(partial(self._call, output.name, "set_init", init))
            self._maybe_set_variants(ops)
        output.packager.add(packet)
        self._advance(output, slot, ops)

    def _advance(self, output: _VideoOutput, slot: int, ops: list[Callable[[], Any]]) -> None:
        """After ``slot``: start, cut a part of, or close the rendition's segment."""
        position = slot % self.segment_frames
        if position == 0:
            output.segment_start = slot
        if position == self.segment_frames - 1:
            self._flush_video(output, ops, close=True)
        elif position % self.part_frames == self.part_frames - 1:
            self._flush_video(output, ops, close=False)

    def _flush_video(self, output: _VideoOutput, ops: list[Callable[[], Any]], *, close: bool) -> None:
        part = output.packager.flush_part()
        if part is None and not (close and output.parts_open):
            return
        assert self._anchor is not None
        pdt = self._anchor + timedelta(seconds=float(output.segment_start / self.fps))
        if part is not None:
            ops.append(partial(self._call, output.name, "publish_part",
                               part.data, part.duration, part.independent,
                               program_date_time=pdt if output.parts_open == 0 else None))
            output.parts_open += 1
            self._count(output.name, len(part.data))
        if close and output.parts_open:
            ops.append(partial(self._call, output.name, "close_segment", pdt))
            output.parts_open = 0

    def _maybe_set_variants(self, ops: list[Callable[[], Any]]) -> None:
        with self._variants_lock:  # rungs finish their first packet in different threads
            if self._variants_set or any(o.codecs is None for o in self._outputs or ()):
                return
            self._variants_set = True
        audio = []
        if self._audio_enabled:
            audio.append(AudioRendition(
                AUDIO_GROUP, "audio", f"{AUDIO_RENDITION}/{PLAYLIST_NAME}",
                channels=str(self._audio_channels),
            ))
        variants = []
        for output in self._outputs or ():
            audio_bits = self.audio_bitrate if self._audio_enabled else 0
            codecs = output.codecs or ""
            if self._audio_enabled:
                codecs += f",{self._audio_codecs}"
            variants.append(VariantStream(
                uri=f"{output.name}/{PLAYLIST_NAME}",
                bandwidth=round(output.rung.video_bitrate * PEAK_FACTOR) + audio_bits,
                average_bandwidth=output.rung.video_bitrate + audio_bits,
                codecs=codecs,
                resolution=(output.rung.width, output.rung.height),
                frame_rate=float(self.fps),
                audio=AUDIO_GROUP if self._audio_enabled else None,
            ))
        ops.append(partial(self._room.set_variants, variants, audio))

    # -- audio ---------------------------------------------------------------------

    def _open_audio(self) -> None:
        if self._aac_config is not None:  # the source's AAC: no encoder
            asc = self._aac_config.asc
            self._audio_codecs = codecs_string_aac(asc)
            self._open_audio_rendition(asc)
            return
        ctx = av.CodecContext.create("aac", "w")
        assert isinstance(ctx, AudioCodecContext)
        ctx.sample_rate = AUDIO_RATE
        ctx.layout = "stereo"
        ctx.format = "fltp"
        ctx.time_base = Fraction(1, AUDIO_RATE)
        ctx.bit_rate = self.audio_bitrate
        ctx.open()
        asc = aac_audio_specific_config(ctx.extradata, sample_rate=AUDIO_RATE,
                                        channels=AUDIO_CHANNELS)
        self._audio_ctx = ctx
        self._audio_codecs = codecs_string_aac(asc)
        self._resampler = av.AudioResampler(
            format="fltp", layout="stereo", rate=AUDIO_RATE, frame_size=AAC_FRAME
        )
        self._open_audio_rendition(asc)

    def _open_audio_rendition(self, asc: bytes) -> None:
        self._audio_packager = TrackPackager(1, AUDIO_RATE, h264=False, start_time=Fraction(0))
        store = self._room.add_rendition(
            AUDIO_RENDITION, target_duration=self.target_duration,
            part_target=self.part_target, window_segments=self._window_segments,
            reuse=self._reuse,
        )
        store.set_init(init_segment_audio(AUDIO_RATE, self._audio_channels, asc,
                                          bitrate=self.audio_bitrate))

    def _place_audio(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        """What to resample for ``frame`` so the audio keeps to its input timestamps:
        silence for a gap before it, then the frame without any samples that overlap
        audio already taken (see the module docstring)."""
        rate = frame.sample_rate
        if frame.pts is None or frame.time_base is None or not rate:
            if rate:
                self._audio_taken += Fraction(frame.samples, rate)
            return [frame]
        duration = Fraction(frame.samples, rate)
        gap_samples = round(self._audio_gap(frame.pts * frame.time_base) * rate)
        if gap_samples > 0:
            silence = av.AudioFrame(format=frame.format.name, layout=frame.layout.name,
                                    samples=gap_samples)
            silence.sample_rate = rate
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            self.stats.audio_filled_samples += gap_samples
            self._audio_taken += Fraction(gap_samples, rate) + duration
            return [silence, frame]
        overlap = -gap_samples
        if overlap >= frame.samples:
            self.stats.audio_dropped_samples += frame.samples
            return []
        if overlap > 0:
            self.stats.audio_dropped_samples += overlap
            frame = _drop_leading_samples(frame, overlap)
        self._audio_taken += Fraction(frame.samples, rate)
        return [frame]

    def _audio_gap(self, t: Fraction) -> Fraction:
        """Seconds between where audio at input media time ``t`` belongs and the end of what
        was taken (positive: a gap, negative: an overlap); a jump of more than ``max_gap_s``
        re-bases the timeline (gap 0)."""
        if self._audio_origin is None:
            self._audio_origin = t - self._audio_taken
        gap = t - self._audio_origin - self._audio_taken
        if abs(gap) > self._max_gap_s:
            self._audio_origin += gap
            self.stats.audio_rebases += 1
            logger.info("audio timestamps jumped by %.3f s; re-based", float(gap))
            gap = Fraction(0)
        return gap

    def _encode_audio(self, chunk: av.AudioFrame | None, ops: list[Callable[[], Any]]) -> None:
        ctx = self._audio_ctx
        assert ctx is not None
        if chunk is not None:
            chunk.pts = self.stats.audio_samples
            chunk.time_base = ctx.time_base
            self.stats.audio_samples += chunk.samples
        for packet in ctx.encode(chunk):
            self._package_audio(bytes(packet), ops)

    def _package_audio(self, data: bytes, ops: list[Callable[[], Any]]) -> None:
        """One AAC frame into ``a0``'s current part, closing parts and segments on the plan."""
        # Contiguous timestamps from the packet count (the encoder's priming delay
        # would otherwise start the track at -1024).
        index = self._audio_packets
        self._audio_packets += 1
        assert self._audio_packager is not None
        self._audio_packager.add_sample(data, pts=index * AAC_FRAME, dts=index * AAC_FRAME,
                                        duration=AAC_FRAME, time_base=Fraction(1, AUDIO_RATE),
                                        is_sync=True)
        segment_samples = self.segment_duration * AUDIO_RATE
        this_segment = (index * AAC_FRAME) // segment_samples
        if ((index + 1) * AAC_FRAME) // segment_samples > this_segment:
            self._flush_audio(ops, close=True)
            self._audio_segment_start = (index + 1) * AAC_FRAME
        elif self._ends_audio_part(index, this_segment, segment_samples):
            self._flush_audio(ops, close=False)

    def _ends_audio_part(self, index: int, segment: int, segment_samples: Fraction) -> bool:
        """Whether AAC frame ``index`` (in ``segment``) ends a part: the segment's frames
        (46 or 47 for 1 s) go into as few parts of at most ``audio_part_frames`` as fit,
        every part but the last of ``ceil(frames / parts)`` frames (47 → 8,8,8,8,8,7;
        46 → 8,8,8,8,8,6), so no segment ends with a part of one or two frames (which
        hls.js re-requests at segment boundaries) and every non-final part stays close to
        PART-TARGET (RFC 8216bis §4.4.4.9)."""
        first = math.ceil(segment * segment_samples / AAC_FRAME)
        count = math.ceil((segment + 1) * segment_samples / AAC_FRAME) - first
        parts = -(-count // self.audio_part_frames)
        size = -(-count // parts)
        return (index - first + 1) % size == 0

    def _flush_audio(self, ops: list[Callable[[], Any]], *, close: bool) -> None:
        assert self._audio_packager is not None
        part = self._audio_packager.flush_part()
        if part is None and not (close and self._audio_parts_open):
            return
        assert self._anchor is not None
        pdt = self._anchor + timedelta(seconds=self._audio_segment_start / AUDIO_RATE)
        if part is not None:
            first = self._audio_parts_open == 0
            if first and self._audio_discontinuity is not None:
                segment = self._audio_segment_start // (self.segment_duration * AUDIO_RATE)
                if segment >= self._audio_discontinuity:
                    if segment > self._audio_discontinuity:
                        logger.warning("audio discontinuity at segment %d, planned for %d",
                                       segment, self._audio_discontinuity)
                    ops.append(partial(self._call, AUDIO_RENDITION, "discontinuity"))
                    self._audio_discontinuity = None
            ops.append(partial(self._call, AUDIO_RENDITION, "publish_part",
                               part.data, part.duration, part.independent,
                               program_date_time=pdt if first else None))
            self._audio_parts_open += 1
            self._count(AUDIO_RENDITION, len(part.data))
        if close and self._audio_parts_open:
            ops.append(partial(self._call, AUDIO_RENDITION, "close_segment", pdt))
            self._audio_parts_open = 0

    # -- store updates (event loop) ------------------------------------------------

    def _count(self, name: str, size: int) -> None:
        self.stats.bytes_out[name] = self.stats.bytes_out.get(name, 0) + size

    def _add_rendition(self, name: str, align_with: str | None = None) -> None:
        self._room.add_rendition(
            name, target_duration=self.target_duration, part_target=self.part_target,
            window_segments=self._window_segments, reuse=self._reuse, align_with=align_with,
        )

    def _call(self, name: str, method: str, *args: Any, **kwargs: Any) -> None:
        getattr(self._room.renditions[name], method)(*args, **kwargs)

    def _post(self, ops: list[Callable[[], Any]]) -> None:
        """Apply ``ops`` in order on the store's loop (at once if already on it)."""
        if not ops:
            return
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._apply(ops)
        else:
            loop.call_soon_threadsafe(self._apply, ops)

    def _apply(self, ops: list[Callable[[], Any]]) -> None:
        if self._store_error is not None:
            return
        for op in ops:
            try:
                op()
            except Exception as exc:  # surfaced by the next feed_*/end call
                logger.exception("LL-HLS store update failed")
                self._store_error = exc
                return

    def _check_running(self) -> None:
        if self._store_error is not None:
            raise TranscoderError(f"store update failed: {self._store_error!r}") from (
                self._store_error
            )

    async def _in_worker(self, fn: Callable[..., None], *args: Any) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="hls-transcode")
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        await loop.run_in_executor(self._executor, fn, *args)
        self.worker_seconds += time.perf_counter() - start
