"""Room → LL-HLS: a room's tracks → a transcoder process → RoomStore, started on demand.

`RoomBridge` runs one live room's bridge: it taps the room's video and audio tracks
through the SFU's direct-consumer API (:mod:`sfu.direct`) and feeds their RTP packets
over a local media link (:mod:`hls_bridge.media_link`) to a transcoder in its own
process (:mod:`hls_bridge.transcoder_main`: reassembly, decode, ladder, H.264/AAC, CMAF),
at a lower CPU priority than forwarding; the process's store updates come back to this
process's `RoomStore`, which the origin serves.  No decoding or encoding runs in the
forwarding process.

`BridgeManager` starts a bridge on a room's first HLS request (it is the origin's
`RoomProvider`) or when the room becomes popular, if the machine has the CPU for it
(`Admission`), and stops it after `HlsConfig.idle_s` without requests or when the
room's publisher leaves (producers gone, closed or replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.config import ConfigError, env_number
from common.latm import LatmError
from sfu.errors import RoomNotLive

from .aac_tap import LatmProbe
from .admission import Admission
from .encoders import EncoderChoice, choose_encoder
from .errors import PASSTHROUGH_LOST_STATUS, BridgeRefused
from .ladder import parse_ladder
from .store import RoomStore
from .transcoder import AUDIO_CHANNELS, AUDIO_RATE
from .transcoder_process import TranscoderProcess

if TYPE_CHECKING:
    from hls_bridge.recording import Recorder
    from hls_bridge.vod import RecordingLibrary
    from sfu.direct import DirectTransport, RoomInfo, TrackTap

__all__ = ["BridgeManager", "BridgeRefused", "HlsConfig", "RoomBridge"]

logger = logging.getLogger(__name__)

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
RETRY_AFTER_FAILURE_S = 10.0
"""The policy does not restart a room's bridge sooner than this after a failed start."""
STALLED_S = 15.0
"""A transcoder process that sent nothing for this long (it reports every second) is
killed and restarted."""
AAC_PROBE_S = 1.0
"""How long the bridge waits for an element of the AAC section to read its configuration, s."""
MAX_RESTARTS_PER_MIN = 5
"""A transcoder that exits more often than this within a minute is not restarted again."""


@dataclass(frozen=True)
class HlsConfig:
    """LL-HLS bridge settings (``RELAYCAST_HLS_*``)."""

    ladder: str = "720p,480p,360p"
    part_s: float = 0.2
    segment_s: float = 1.0
    idle_s: float = 30.0
    """Stop a bridge after this long without HLS requests (and below the threshold)."""
    viewer_threshold: int = 50
    """Start a room's bridge when its WebRTC viewers reach this count; 0 = only on request."""
    fps: int = 30
    x264_preset: str = "veryfast"
    """libx264 preset when no hardware encoder is present: ``veryfast`` (default) or a
    faster one (``superfast``, ``ultrafast``) for more rooms per core at lower quality."""
    ready_timeout_s: float = 10.0
    """How long a first request waits for the multivariant playlist."""
    ended_grace_s: float = 30.0
    """How long a stopped bridge's store stays served (ENDLIST, its last parts) while the
    room has no live bridge, so players fetch the end of the stream instead of 404s."""
    check_interval_s: float = 0.5
    """How often the manager looks for idle bridges and departed publishers."""
    nice: int = 19
    """CPU priority increment of transcoder processes (``setpriority``): forwarding wins.
    Per thread, so the default is the lowest priority: a transcoder runs a dozen threads
    (decoder, ladder worker, rung pool, x264's slice threads) against one forwarding
    thread, and at nice 10 their weights together outweigh it (CFS weight 110 each
    against 1024)."""
    restart_backoff_s: float = 0.5
    """Wait before restarting a transcoder that exited early (doubles, up to 10 s)."""
    min_idle_cores: float = 0.5
    """A bridge starts only while the machine has at least this many idle cores
    (averaged over the last few seconds); 0 = always start."""
    passthrough: bool = True
    """Publish an H.264 source with regular key frames as the top rendition without
    encoding it (:func:`passthrough_plan`); ``RELAYCAST_HLS_PASSTHROUGH=0`` encodes it."""

    def __post_init__(self) -> None:
        parse_ladder(self.ladder)  # raises ValueError naming the bad entry
        if not 0 < self.part_s <= self.segment_s:
            raise ValueError(f"need 0 < part ({self.part_s} s) <= segment ({self.segment_s} s)")
        if self.idle_s <= 0 or self.ready_timeout_s <= 0 or self.check_interval_s <= 0:
            raise ValueError("idle, ready and check intervals must be positive")
        if self.x264_preset not in X264_PRESETS:
            raise ValueError(f"x264 preset {self.x264_preset!r}: expected one of {', '.join(X264_PRESETS)}")
        if self.viewer_threshold < 0:
            raise ValueError(f"viewer threshold {self.viewer_threshold} must be >= 0")
        if not 0 <= self.nice <= 19 or self.restart_backoff_s <= 0 or self.min_idle_cores < 0:
            raise ValueError("need 0 <= nice <= 19, restart backoff > 0, min idle cores >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> HlsConfig:
        """``RELAYCAST_HLS_LADDER``, ``_PART_S``, ``_SEGMENT_S``, ``_IDLE_S``,
        ``_VIEWER_THRESHOLD``, ``_X264_PRESET``, ``_NICE``, ``_MIN_IDLE_CORES``,
        ``_PASSTHROUGH``; then
        ``overrides``.  Raises ConfigError on bad values."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if ladder := env.get("RELAYCAST_HLS_LADDER", "").strip():
            values["ladder"] = ladder
        for key, name in (("PART_S", "part_s"), ("SEGMENT_S", "segment_s"), ("IDLE_S", "idle_s")):
            text = env.get(f"RELAYCAST_HLS_{key}", "").strip()
            if text:
                try:
                    values[name] = float(text)
                except ValueError:
                    raise ConfigError(f"RELAYCAST_HLS_{key}={text!r} is not a number") from None
        if preset := env.get("RELAYCAST_HLS_X264_PRESET", "").strip():
            values["x264_preset"] = preset
        if text := env.get("RELAYCAST_HLS_VIEWER_THRESHOLD", "").strip():
            try:
                values["viewer_threshold"] = int(text)
            except ValueError:
                raise ConfigError(
                    f"RELAYCAST_HLS_VIEWER_THRESHOLD={text!r} is not a whole number") from None
        if "RELAYCAST_HLS_NICE" in env:
            values["nice"] = int(env_number(env, "RELAYCAST_HLS_NICE", 19, 0, 19, integer=True))
        if text := env.get("RELAYCAST_HLS_PASSTHROUGH", "").strip().lower():
            if text not in ("0", "1", "on", "off", "true", "false", "yes", "no"):
                raise ConfigError(f"RELAYCAST_HLS_PASSTHROUGH={text!r}: expected 1/on or 0/off")
            values["passthrough"] = text in ("1", "on", "true", "yes")
        if "RELAYCAST_HLS_MIN_IDLE_CORES" in env:
            values["min_idle_cores"] = env_number(env, "RELAYCAST_HLS_MIN_IDLE_CORES", 0.5, 0, 1024)
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(f"RELAYCAST_HLS_*: {exc}") from exc


MAX_PASSTHROUGH_SEGMENT_S = 4.0
"""The longest source key-frame interval passthrough takes, s (it becomes the segment length)."""


def passthrough_plan(video: TrackTap, config: HlsConfig) -> tuple[int, int | None] | str:
    """``(segment_frames, bitrate_bps)`` to publish the tapped H.264 track as the top
    rendition without encoding it — segments as long as its key-frame interval — or why not.

    It must be H.264 without simulcast, at the bridge's frame rate (within 10 %, in media
    time: :meth:`~sfu.ingest_health.TrackHealth.source_fps`), with its
    last key-frame spacings (at least two, as the SFU measured them) the same number of
    frames within half a frame, at most :data:`MAX_PASSTHROUGH_SEGMENT_S` and at least a
    part long."""
    if video.info.mime_type.lower() != "video/h264":
        return f"the source is {video.info.mime_type}, not H.264"
    if video.simulcast:
        return "the source sends simulcast"
    spacings = video.health.keyframe_spacings_s()
    if len(spacings) < 2:
        return "fewer than three of the source's key frames seen yet"
    fps = video.health.source_fps()
    if fps is None or abs(fps - config.fps) > 0.1 * config.fps:
        return f"the source's frame rate ({fps}) is not {config.fps} fps"
    frames = [spacing * config.fps for spacing in spacings]
    gop = round(frames[-1])
    if any(abs(f - gop) > 0.5 for f in frames):
        return "the source's key frames are irregular (" + ", ".join(f"{s:.3f}" for s in spacings) + " s apart)"
    if not config.part_s * config.fps <= gop <= MAX_PASSTHROUGH_SEGMENT_S * config.fps:
        return f"the source's key-frame interval ({gop} frames) is outside one part to {MAX_PASSTHROUGH_SEGMENT_S:g} s"
    return gop, video.health.snapshot().bitrate_bps


def with_x264_preset(choice: EncoderChoice, preset: str) -> EncoderChoice:
    """``choice`` with libx264's ``preset`` option replaced (other encoders unchanged)."""
    if choice.name != "libx264" or choice.options.get("preset") == preset:
        return choice
    return dataclasses.replace(choice, options={**choice.options, "preset": preset})


class RoomBridge:
    """One live room's bridge; `start` it, `stop` it (idempotent).

    The room's tracks are tapped here (:mod:`sfu.direct`) and fed to a transcoder in a
    process of its own (:class:`~hls_bridge.transcoder_process.TranscoderProcess`, at a
    lower CPU priority), whose store updates land in :attr:`store`.  A transcoder that
    exits before the stream ends (crashed, killed, out of memory) is restarted after
    ``restart_backoff_s`` (doubling, at most ``MAX_RESTARTS_PER_MIN`` a minute): each
    rendition continues in the same playlists after an EXT-X-DISCONTINUITY
    (RFC 8216bis §4.4.4.3), WebRTC viewers see nothing of it.
    """

    def __init__(
        self, room: str, direct: DirectTransport, room_store: RoomStore, config: HlsConfig,
        started_by: str = "request",
    ) -> None:
        self.room = room
        self.started_by = started_by
        """Why it started: ``"request"`` (first HLS request), ``"viewers"`` (threshold) or
        ``"recording"`` (recording on: every live room)."""
        self.started_at = time.monotonic()
        self.direct = direct
        self.store = room_store
        self.config = config
        self.encoder: EncoderChoice | None = None
        self.taps: dict[str, TrackTap] = {}
        self.process: TranscoderProcess | None = None
        """The current transcoder process (None before `start`)."""
        self.restarts = 0
        """Transcoder processes started after the first one."""
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self.passthrough = False
        """The current transcoder publishes the source as the top rendition."""
        self.audio_passthrough = False
        """The current transcoder publishes the encoder's own AAC as ``a0``."""
        self._passthrough_lost = False
        self._segment_frames: int | None = None
        """Segment length in frames once the first transcoder took the source's key-frame
        interval (kept by its successors: TARGETDURATION must not change)."""
        self._restart_times: list[float] = []

    @property
    def encoder_name(self) -> str | None:
        return self.encoder.name if self.encoder is not None else None

    @property
    def done(self) -> bool:
        """True when the bridge's supervision ended (stream over, or restarts exhausted)."""
        return self.task is not None and self.task.done()

    @property
    def pid(self) -> int | None:
        """The running transcoder process's id, or None."""
        process = self.process
        return process.pid if process is not None and process.running else None

    def publisher_gone(self) -> bool:
        """The tracks we tap ended or are no longer the room's."""
        if not self.taps:
            return False
        return any(tap.closed for tap in self.taps.values())

    def to_json(self) -> dict[str, Any]:
        """``{room, encoder, renditions, running, started_by, uptime_s, pid, cpu, rss_bytes,
        restarts, passthrough, audio_passthrough, realtime_factor, media_s, dropped_frames,
        dropped_packets}`` (``passthrough``: the top rendition is the source, not encoded;
        ``audio_passthrough``: the audio rendition is the encoder's AAC): ``cpu`` is
        the cores the transcoder process used since the previous call, ``rss_bytes`` its
        resident memory, ``realtime_factor`` media seconds per transcoder-thread second,
        ``dropped_packets`` RTP packets not handed to it because it was not reading."""
        process = self.process
        report: dict[str, Any] = {}
        if process is not None:
            process.sample()
            report = process.report
        busy = float(report.get("worker_s") or 0.0)
        media_s = float(report.get("media_s") or 0.0)
        return {
            "room": self.room,
            "encoder": self.encoder_name,
            "renditions": sorted(self.store.renditions),
            "running": not self.stopped and not self.done,
            "started_by": self.started_by,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "pid": self.pid,
            "cpu": round(process.cpu, 3) if process is not None else 0.0,
            "rss_bytes": process.rss if process is not None else 0,
            "restarts": self.restarts,
            "passthrough": self.passthrough,
            "audio_passthrough": self.audio_passthrough,
            "realtime_factor": round(media_s / busy, 2) if busy > 0 else None,
            "media_s": round(media_s, 1),
            "dropped_frames": int(report.get("dropped_frames") or 0),
            "dropped_packets": process.dropped_packets if process is not None else 0,
        }

    async def start(self) -> None:
        """Pick the encoder (cached after the first probe), tap the tracks, start the
        transcoder process.

        :raises RoomNotLive: the room publishes no video on this node.
        :raises OSError: the transcoder process could not be started.
        """
        self.encoder = with_x264_preset(await asyncio.to_thread(choose_encoder),
                                        self.config.x264_preset)
        if self.stopped:
            return
        info = self.direct.room(self.room)
        kinds = [k for k in (info.tracks if info is not None else ()) if k in ("video", "audio", "aac")]
        if "video" not in kinds:
            raise RoomNotLive(f"room {self.room!r} has no video producer")
        self.taps = {kind: self.direct.tap(self.room, kind) for kind in kinds}
        self.process = await self._spawn()
        self.task = asyncio.create_task(self._supervise(), name=f"hls-bridge-{self.room}")
        logger.info("HLS bridge for room %r started (encoder %s, transcoder pid %s)",
                    self.room, self.encoder.name, self.process.pid)

    async def _spawn(self) -> TranscoderProcess:
        assert self.encoder is not None
        process = TranscoderProcess(self.room, nice=self.config.nice)
        passthrough = None
        if self.config.passthrough and not self._passthrough_lost:
            plan = passthrough_plan(self.taps["video"], self.config)
            # A successor keeps its predecessor's segment length (TARGETDURATION stays).
            kept = (self._segment_frames or round(self.config.segment_s * self.config.fps)
                    if self.store.renditions else None)
            if isinstance(plan, str):
                logger.info("HLS bridge for room %r: top rendition encoded: %s", self.room, plan)
            elif kept is not None and plan[0] != kept:
                logger.info("HLS bridge for room %r: top rendition encoded: the source's key-frame "
                            "interval (%d frames) is not the segment length (%d)", self.room, plan[0], kept)
            else:
                self._segment_frames, bitrate = plan
                passthrough = {"bitrate": bitrate}
                logger.info("HLS bridge for room %r: the source passes through as the top rendition "
                            "(segments of %d frames, its key-frame interval)", self.room, self._segment_frames)
        self.passthrough = passthrough is not None
        asc = await self._aac_plan()
        self.audio_passthrough = asc is not None
        # The encoder's AAC replaces the Opus (not decoded then); else the Opus is encoded.
        tracks = {kind: tap for kind, tap in self.taps.items() if kind != ("audio" if asc else "aac")}
        config = {
            "ladder": self.config.ladder, "fps": self.config.fps,
            "segment_s": self.config.segment_s, "part_s": self.config.part_s,
            "segment_frames": self._segment_frames, "passthrough": passthrough,
            "aac_passthrough": {"asc": asc} if asc else None,
            "encoder": {"name": self.encoder.name, "options": dict(self.encoder.options)},
            # A restarted transcoder continues every video rendition its predecessor had,
            # even if its first frame is smaller (a publisher ramping up again).
            "min_rungs": sum(1 for name in self.store.renditions if name.startswith("v")),
        }
        await process.start(config, tracks, self.store)
        return process

    async def _aac_plan(self) -> str | None:
        """The source's AudioSpecificConfig (hex) when ``a0`` can be the encoder's own AAC: the
        room publishes an AAC section (an RTMP/SRT relay's, :mod:`hls_bridge.aac_tap`) of
        AAC-LC at 48 kHz with one or two channels, and passthrough is on and was not lost.
        The configuration is read from the section's next element (at most
        :data:`AAC_PROBE_S` s)."""
        tap = self.taps.get("aac")
        if tap is None or not self.config.passthrough or self._passthrough_lost or tap.closed:
            return None
        probe = LatmProbe()
        tap.add_consumer(probe)
        try:
            config = await asyncio.wait_for(asyncio.shield(probe.found), AAC_PROBE_S)
        except (TimeoutError, LatmError) as exc:
            logger.info("HLS bridge for room %r: AAC encoded from the Opus: the AAC section %s", self.room,
                        "sent nothing" if isinstance(exc, TimeoutError) else f"is not AAC-LC ({exc})")
            return None
        finally:
            tap.remove_consumer(probe)
        if config.sample_rate != AUDIO_RATE or config.channels > AUDIO_CHANNELS:
            logger.info("HLS bridge for room %r: AAC encoded from the Opus: the encoder's AAC is %d Hz, "
                        "%d channels (passed through: %d Hz, 1-2)", self.room, config.sample_rate,
                        config.channels, AUDIO_RATE)
            return None
        logger.info("HLS bridge for room %r: the encoder's AAC passes through as the audio rendition", self.room)
        return config.asc.hex()

    async def _supervise(self) -> None:
        """Wait for the transcoder; restart it while the stream goes on."""
        backoff = self.config.restart_backoff_s
        try:
            while True:
                process = self.process
                assert process is not None
                status = await self._wait_or_kill_stalled(process)
                if self.stopped or process.done or self.publisher_gone():
                    return
                if status == PASSTHROUGH_LOST_STATUS and (self.passthrough or self.audio_passthrough):
                    self._passthrough_lost = True  # the successor encodes v0 and a0
                now = time.monotonic()
                self._restart_times = [t for t in self._restart_times if now - t < 60.0]
                if len(self._restart_times) >= MAX_RESTARTS_PER_MIN:
                    logger.error("HLS bridge for room %r: transcoder exited (status %s) %d times "
                                 "within a minute; giving up", self.room, status,
                                 len(self._restart_times) + 1)
                    return
                logger.warning("HLS bridge for room %r: transcoder pid %s exited (status %s); "
                               "restarting in %.1f s", self.room, process.pid, status, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                if self.stopped or self.publisher_gone():
                    return
                for rendition in self.store.renditions.values():
                    rendition.discontinuity()
                self._restart_times.append(time.monotonic())
                self.restarts += 1
                self.process = await self._spawn()
                logger.info("HLS bridge for room %r: transcoder restarted (pid %s)",
                            self.room, self.process.pid)
        except Exception:
            logger.exception("HLS bridge for room %r failed", self.room)
        finally:
            if self.process is not None:
                self.process.detach()
                self.process.kill()
            try:
                self.store.end()
            except Exception:  # players keep what was published; the task must not fail
                logger.exception("HLS bridge for room %r: ending the playlists failed", self.room)

    async def _wait_or_kill_stalled(self, process: TranscoderProcess) -> int:
        """The process's exit status; a process silent for ``STALLED_S`` (it reports every
        second) is killed first, so that it is restarted."""
        waiting = asyncio.ensure_future(process.wait())
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=1.0)
                if done:
                    return waiting.result()
                if not self.stopped and time.monotonic() - process.last_heard > STALLED_S:
                    logger.warning("HLS bridge for room %r: transcoder pid %s silent for %g s; "
                                   "killing it", self.room, process.pid, STALLED_S)
                    process.kill()
        finally:
            if not waiting.done():
                waiting.cancel()

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the transcoder flush and end the renditions; bounded by ``timeout``."""
        self.stopped = True
        if self.process is not None:
            await self.process.stop(timeout)
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
        self.store.end()
        recorder: Recorder | None = self.store.recorder  # type: ignore[assignment]
        if recorder is not None:
            try:
                manifest = await asyncio.wait_for(recorder.finish(), timeout)
            except Exception:
                logger.exception("recording of room %r did not finish", self.room)
            else:
                if manifest is not None:
                    logger.info("recording %s of room %r published (%.1f s)", manifest["id"],
                                self.room, manifest["duration_s"])
        logger.info("HLS bridge for room %r stopped", self.room)


class BridgeManager:
    """A node's bridges: the popular-room policy and the origin's `RoomProvider`.

    A room's bridge starts on its first HLS request (`get`) or when its WebRTC viewer
    count reaches ``config.viewer_threshold``; it stops when the publisher leaves, or
    once the room has had no HLS request for ``config.idle_s`` while below the threshold.
    With ``recordings`` (recording on), every live room is bridged from when it goes
    live until its publisher leaves, so the recording holds the whole stream.
    ``direct`` (the SFU worker's :class:`sfu.direct.DirectTransport`) may be None at
    construction and set later with `attach`.
    """

    def __init__(
        self, direct: DirectTransport | None, config: HlsConfig | None = None,
        recordings: RecordingLibrary | None = None,
    ) -> None:
        self.direct: DirectTransport | None = None
        self.config = config or HlsConfig.from_env()
        self.recordings = recordings
        """When set, every live room is bridged for as long as it is published and its
        segments are recorded (a VOD is published when the stream ends)."""
        self.bridges: dict[str, RoomBridge] = {}
        self.last_request: dict[str, float] = {}
        self.encoder: EncoderChoice | None = None
        """The encoder the last bridge chose (with every probe's reason), for reports."""
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._ended: dict[str, tuple[RoomStore, float]] = {}
        """Room → (store of its last, stopped bridge, monotonic time it stops being served)."""
        self._failed: dict[str, float] = {}
        """Room → when its bridge last failed to start (the policy waits before retrying)."""
        self._watcher: asyncio.Task[None] | None = None
        self.policy_rounds = 0
        """Policy checks completed so far (every ``config.check_interval_s``)."""
        self.policy_checked = asyncio.Event()
        """Set after every completed policy check (clear it to wait for the next one)."""
        self._closed = False
        self.pull: Callable[[str], Awaitable[bool]] | None = None
        """``pull(room)``: ask signaling to pipe a room live on another SFU node into this
        node (cascading), so an HLS request here can bridge it; ``True`` when it did."""
        self.popularity: Callable[[], Mapping[str, int]] | None = None
        """``popularity()``: live room → WebRTC viewers on every node, when this node's
        bridges serve rooms published elsewhere (a dedicated LL-HLS node; rooms are
        pulled in with `pull`).  None: the rooms of this node, with its own viewers."""
        self.admission = Admission(self.config.min_idle_cores)
        """Whether the machine has CPU for one more bridge (see :mod:`hls_bridge.admission`)."""
        if direct is not None:
            self.attach(direct)

    def attach(self, direct: DirectTransport) -> None:
        """Serve the rooms of ``direct``'s worker and add an ``"hls"`` section to its load
        reports."""
        self.direct = direct
        direct.add_load_section("hls", self.report)

    def _live(self, room: str) -> RoomInfo | None:
        info = self.direct.room(room) if self.direct is not None else None
        return info if info is not None and info.live else None

    def _audiences(self) -> dict[str, int]:
        """Live room → WebRTC viewers, from `popularity` or this node's rooms."""
        if self.popularity is not None:
            return dict(self.popularity())
        rooms = self.direct.rooms() if self.direct is not None else []
        return {info.name: info.viewers for info in rooms if info.live}

    def _popular(self, viewers: int) -> bool:
        """Keep (or start) a bridge for a live room with ``viewers`` regardless of HLS requests?"""
        if self.recordings is not None:
            return True
        threshold = self.config.viewer_threshold
        return threshold > 0 and viewers >= threshold

    async def ensure(self, room: str, *, started_by: str = "request") -> RoomStore | None:
        """The room's store, starting its bridge if needed; None if the room is not live."""
        if self._closed:
            return None
        bridge = self.bridges.get(room)
        if bridge is not None and (bridge.stopped or bridge.done or bridge.publisher_gone()):
            await self._stop(room)
            bridge = None
        info = self._live(room)
        if info is None and self.pull is not None and await self.pull(room):
            info = self._live(room)
        if info is None or self.direct is None:
            ended = self._ended.get(room)
            if started_by == "request" and ended is not None and ended[1] > time.monotonic():
                return ended[0]
            return None
        if started_by == "request":
            self.last_request[room] = time.monotonic()
        else:
            self.last_request.setdefault(room, time.monotonic())
        if bridge is None:
            refusal = self.admission.refusal(room)
            if refusal is not None:
                if started_by != "request":
                    self._failed[room] = time.monotonic()
                logger.warning("HLS bridge for room %r not started: %s", room, refusal)
                raise BridgeRefused(refusal)
            recorder = self.recordings.recorder(room) if self.recordings is not None else None
            bridge = RoomBridge(room, self.direct, RoomStore(recorder=recorder), self.config,
                                started_by=started_by)
            self.bridges[room] = bridge
            self.direct.hold(room, "hls")
            self._starting[room] = asyncio.create_task(bridge.start())
            logger.info("starting HLS bridge for room %r (%s)", room,
                        "first HLS request" if started_by == "request" else "recording"
                        if self.recordings is not None
                        else f"{self._audiences().get(room, info.viewers)} viewers >= "
                             f"{self.config.viewer_threshold}")
        self.start()
        starting = self._starting.get(room)
        if starting is not None:
            try:
                await asyncio.shield(starting)
            except Exception:
                logger.exception("HLS bridge for room %r could not start", room)
                self._failed[room] = time.monotonic()
                await self._stop(room)
                return None
            finally:
                if starting.done():
                    self._starting.pop(room, None)
            if bridge.encoder is not None:
                self.encoder = bridge.encoder
        return bridge.store

    async def get(self, room: str) -> RoomStore | None:
        """`RoomProvider`: `ensure`, then wait (bounded) for the multivariant playlist."""
        store = await self.ensure(room)
        if store is None or store.multivariant is not None:
            return store
        bridge = self.bridges.get(room)
        deadline = time.monotonic() + self.config.ready_timeout_s
        # The store has no event for its multivariant playlist: poll, bounded.
        while store.multivariant is None and time.monotonic() < deadline:
            if bridge is None or bridge.done or bridge.stopped:
                break
            self.last_request[room] = time.monotonic()  # a waiting request keeps it busy
            await asyncio.sleep(0.05)
        return store

    def to_json(self) -> dict[str, Any]:
        return {room: bridge.to_json() for room, bridge in self.bridges.items()}

    def report(self) -> dict[str, Any]:
        """The node's HLS section: ``{"encoder": {"name", "probes": [{name, available,
        type}]} | None, "viewer_threshold", "recording", "admission":
        Admission.to_json(), "bridges": [RoomBridge.to_json()...]}``.  A rejected probe's ``type`` is its problem type URI
        (:mod:`hls_bridge.problems`); the full reason (FFmpeg's error text) is only logged
        (`choose_encoder`)."""
        encoder = None
        if self.encoder is not None:
            encoder = {
                "name": self.encoder.name,
                "probes": [
                    {"name": r.name, "available": r.available, "type": r.problem}
                    for r in self.encoder.results
                ],
            }
        return {
            "encoder": encoder,
            "viewer_threshold": self.config.viewer_threshold,
            "recording": self.recordings is not None,
            "admission": self.admission.to_json(),
            "bridges": [bridge.to_json() for bridge in self.bridges.values()],
        }

    def start(self) -> None:
        """Start the policy loop (idempotent; `ensure` calls it too)."""
        if self._closed:
            return
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="hls-bridge-policy")

    async def _watch(self) -> None:
        """Every ``check_interval_s``: start popular rooms' bridges, stop idle or orphaned ones."""
        while not self._closed:
            try:
                await self._check()
            except Exception:
                logger.exception("HLS bridge policy check failed")
            self.policy_rounds += 1
            self.policy_checked.set()
            await asyncio.sleep(self.config.check_interval_s)

    async def _check(self) -> None:
        now = time.monotonic()
        for room, (_, until) in list(self._ended.items()):
            if until <= now:
                del self._ended[room]
        self.admission.sample()
        audiences = self._audiences()
        if self.direct is not None:
            for room, viewers in audiences.items():
                if (room in self.bridges or not self._popular(viewers)
                        or now - self._failed.get(room, -RETRY_AFTER_FAILURE_S) < RETRY_AFTER_FAILURE_S):
                    continue
                # Started in the background: the policy loop must not wait for it.
                reason = "recording" if self.recordings is not None else "viewers"
                task = asyncio.create_task(self._ensure_quietly(room, reason))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        for room, bridge in list(self.bridges.items()):
            if room in self._starting:
                continue
            live = self._live(room)
            idle = now - self.last_request.get(room, now) > self.config.idle_s
            if live is not None and self._popular(audiences.get(room, live.viewers)):
                idle = False
                self.last_request[room] = now  # the idle time counts from when it stops being popular
            if idle or bridge.done or bridge.publisher_gone() or live is None:
                reason = "idle" if idle else "publisher left"
                logger.info("stopping HLS bridge for room %r (%s)", room, reason)
                await self._stop(room)

    async def _ensure_quietly(self, room: str, started_by: str) -> None:
        with contextlib.suppress(BridgeRefused):
            await self.ensure(room, started_by=started_by)

    async def _stop(self, room: str) -> None:
        bridge = self.bridges.pop(room, None)
        if self.direct is not None:
            self.direct.release(room, "hls")
        self.last_request.pop(room, None)
        starting = self._starting.pop(room, None)
        if bridge is None:
            return
        if starting is not None and not starting.done():
            bridge.stopped = True
            with contextlib.suppress(Exception):
                await starting
        # Served while it ends (its last parts, then ENDLIST) and for the grace period after.
        grace = self.config.ended_grace_s
        if bridge.store.renditions:
            self._ended[room] = (bridge.store, time.monotonic() + grace + 10.0)
        await bridge.stop()
        if bridge.store.renditions:
            self._ended[room] = (bridge.store, time.monotonic() + grace)

    async def close(self) -> None:
        """Stop every bridge and the policy loop."""
        self._closed = True
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for room in list(self.bridges):
            await self._stop(room)
