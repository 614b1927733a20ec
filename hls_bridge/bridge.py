"""Room → LL-HLS: ProducerTaps → LadderTranscoder → RoomStore, started on demand.

`RoomBridge` runs one live room's bridge: a `ProducerTap` on the room's video and
audio tracks (tapped through the SFU's direct-consumer API, :mod:`sfu.direct`), their decoded frames merged into one `LadderTranscoder` (ladder
planned from the first video frame, never upscaling) that writes a `RoomStore`.
`BridgeManager` starts a bridge on a room's first HLS request (it is the origin's
`RoomProvider`), and stops it after `HlsConfig.idle_s` without requests or when the
room's publisher leaves (producers gone, closed or replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av

from common.config import ConfigError

from .encoders import EncoderChoice, choose_encoder
from .ingest import ProducerTap
from .ladder import parse_ladder
from .store import RoomStore
from .transcoder import LadderTranscoder

if TYPE_CHECKING:
    from hls_bridge.recording import Recorder
    from hls_bridge.vod import RecordingLibrary
    from sfu.direct import DirectTransport, RoomInfo, TrackTap

__all__ = ["BridgeManager", "HlsConfig", "RoomBridge"]

logger = logging.getLogger(__name__)

_END = object()
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
RETRY_AFTER_FAILURE_S = 10.0
"""The policy does not restart a room's bridge sooner than this after a failed start."""


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> HlsConfig:
        """``RELAYCAST_HLS_LADDER``, ``_PART_S``, ``_SEGMENT_S``, ``_IDLE_S``,
        ``_VIEWER_THRESHOLD``, ``_X264_PRESET``; then ``overrides``.  Raises ConfigError on bad values."""
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
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(f"RELAYCAST_HLS_*: {exc}") from exc


def with_x264_preset(choice: EncoderChoice, preset: str) -> EncoderChoice:
    """``choice`` with libx264's ``preset`` option replaced (other encoders unchanged)."""
    if choice.name != "libx264" or choice.options.get("preset") == preset:
        return choice
    return dataclasses.replace(choice, options={**choice.options, "preset": preset})


class RoomBridge:
    """One live room's bridge; `start` it, `stop` it (idempotent)."""

    def __init__(
        self, room: str, direct: DirectTransport, room_store: RoomStore, config: HlsConfig,
        started_by: str = "request",
    ) -> None:
        self.room = room
        self.started_by = started_by
        """Why it started: ``"request"`` (first HLS request), ``"viewers"`` (threshold) or
        ``"recording"`` (recording on: every live room)."""
        self.started_at = time.monotonic()
        self._cpu_mark = (self.started_at, 0.0)
        self.cpu = 0.0
        """Cores used by the transcoder thread since the previous `to_json` (0.0–1.0+)."""
        self.direct = direct
        self.store = room_store
        self.config = config
        self.encoder: EncoderChoice | None = None
        self.taps: dict[str, ProducerTap] = {}
        self.transcoder: LadderTranscoder | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self._pumps: list[asyncio.Task[None]] = []

    @property
    def encoder_name(self) -> str | None:
        return self.encoder.name if self.encoder is not None else None

    @property
    def done(self) -> bool:
        """True when the transcoding task ended (stream over or failed)."""
        return self.task is not None and self.task.done()

    def publisher_gone(self) -> bool:
        """The tracks we tap ended or are no longer the room's."""
        if not self.taps:
            return False
        return any(tap.closed or tap.producer.closed for tap in self.taps.values())

    def to_json(self) -> dict[str, Any]:
        """``{room, encoder, renditions, running, started_by, uptime_s, cpu, realtime_factor,
        media_s, dropped_frames}``; ``cpu`` is cores used by the transcoder thread since the
        previous call, ``realtime_factor`` media seconds per transcoder-thread second."""
        now = time.monotonic()
        transcoder = self.transcoder
        busy = transcoder.worker_seconds if transcoder is not None else 0.0
        mark_time, mark_busy = self._cpu_mark
        if now - mark_time >= 0.5:
            self.cpu = (busy - mark_busy) / (now - mark_time)
            self._cpu_mark = (now, busy)
        media_s = float(transcoder.stats.video_slots / transcoder.fps) if transcoder else 0.0
        return {
            "room": self.room,
            "encoder": self.encoder_name,
            "renditions": sorted(self.store.renditions),
            "running": not self.stopped and not self.done,
            "started_by": self.started_by,
            "uptime_s": round(now - self.started_at, 1),
            "cpu": round(self.cpu, 3),
            "realtime_factor": round(media_s / busy, 2) if busy > 0 else None,
            "media_s": round(media_s, 1),
            "dropped_frames": transcoder.stats.dropped_frames if transcoder else 0,
        }

    async def start(self) -> None:
        """Pick the encoder (cached after the first probe), attach taps, start transcoding."""
        self.encoder = with_x264_preset(await asyncio.to_thread(choose_encoder),
                                        self.config.x264_preset)
        if self.stopped:
            return
        info = self.direct.room(self.room)
        tracks: dict[str, TrackTap] = {
            kind: self.direct.tap(self.room, kind)
            for kind in (info.tracks if info is not None else ()) if kind in ("video", "audio")
        }
        if "video" not in tracks:
            raise RuntimeError(f"room {self.room!r} has no video producer")
        self.transcoder = LadderTranscoder(
            self.store,
            parse_ladder(self.config.ladder),
            fps=self.config.fps,
            segment_s=self.config.segment_s,
            part_s=self.config.part_s,
            encoder_choice=self.encoder,
            audio="audio" in tracks,
        )
        for kind, track in tracks.items():
            self.taps[kind] = ProducerTap(track, max_queue=16 if kind == "audio" else 8)
        self.task = asyncio.create_task(self._run(), name=f"hls-bridge-{self.room}")
        logger.info("HLS bridge for room %r started (encoder %s)", self.room, self.encoder.name)

    async def _run(self) -> None:
        assert self.transcoder is not None
        try:
            await self.transcoder.run(self._merged())
        except Exception:
            logger.exception("HLS bridge for room %r failed", self.room)
        finally:
            self.store.end()

    async def _merged(self) -> AsyncIterator[av.VideoFrame | av.AudioFrame]:
        """Frames of all taps in arrival order, until every tap has ended."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=32)

        async def pump(tap: ProducerTap) -> None:
            try:
                async for frame in tap.frames():
                    await queue.put(frame)
            finally:
                await queue.put(_END)

        self._pumps = [asyncio.create_task(pump(tap)) for tap in self.taps.values()]
        remaining = len(self._pumps)
        try:
            while remaining:
                item = await queue.get()
                if item is _END:
                    remaining -= 1
                else:
                    yield item
        finally:
            for task in self._pumps:
                task.cancel()

    async def stop(self, timeout: float = 10.0) -> None:
        """Close the taps, let the transcoder flush and end the store; bounded by ``timeout``."""
        self.stopped = True
        for tap in self.taps.values():
            tap.close()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
            except TimeoutError:
                logger.warning("HLS bridge for room %r did not end in %g s", self.room, timeout)
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
        for tap in self.taps.values():
            with contextlib.suppress(Exception):
                await tap.wait_closed()
        if self.transcoder is not None:
            await asyncio.to_thread(self.transcoder.close)
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

    def _popular(self, room: RoomInfo) -> bool:
        """Keep (or start) this room's bridge regardless of HLS requests?"""
        if self.recordings is not None:
            return True
        threshold = self.config.viewer_threshold
        return threshold > 0 and room.viewers >= threshold

    async def ensure(self, room: str, *, started_by: str = "request") -> RoomStore | None:
        """The room's store, starting its bridge if needed; None if the room is not live."""
        if self._closed:
            return None
        bridge = self.bridges.get(room)
        if bridge is not None and (bridge.stopped or bridge.done or bridge.publisher_gone()):
            await self._stop(room)
            bridge = None
        info = self._live(room)
        if info is None and started_by == "request" and self.pull is not None and await self.pull(room):
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
            recorder = self.recordings.recorder(room) if self.recordings is not None else None
            bridge = RoomBridge(room, self.direct, RoomStore(recorder=recorder), self.config,
                                started_by=started_by)
            self.bridges[room] = bridge
            self.direct.hold(room, "hls")
            self._starting[room] = asyncio.create_task(bridge.start())
            logger.info("starting HLS bridge for room %r (%s)", room,
                        "first HLS request" if started_by == "request" else "recording"
                        if self.recordings is not None
                        else f"{info.viewers} viewers >= {self.config.viewer_threshold}")
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
            await asyncio.sleep(0.05)
        return store

    def to_json(self) -> dict[str, Any]:
        return {room: bridge.to_json() for room, bridge in self.bridges.items()}

    def report(self) -> dict[str, Any]:
        """The node's HLS section: ``{"encoder": {"name", "probes": [{name, available,
        type}]} | None, "viewer_threshold", "recording", "bridges":
        [RoomBridge.to_json()...]}``.  A rejected probe's ``type`` is its problem type URI
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
        if self.direct is not None:
            for info in self.direct.rooms():
                room = info.name
                if (room in self.bridges or not info.live or not self._popular(info)
                        or now - self._failed.get(room, -RETRY_AFTER_FAILURE_S) < RETRY_AFTER_FAILURE_S):
                    continue
                # Started in the background: the policy loop must not wait for it.
                reason = "recording" if self.recordings is not None else "viewers"
                task = asyncio.create_task(self.ensure(room, started_by=reason))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        for room, bridge in list(self.bridges.items()):
            if room in self._starting:
                continue
            live = self._live(room)
            idle = now - self.last_request.get(room, now) > self.config.idle_s
            if live is not None and self._popular(live):
                idle = False
                self.last_request[room] = now  # the idle time counts from when it stops being popular
            if idle or bridge.done or bridge.publisher_gone() or live is None:
                reason = "idle" if idle else "publisher left"
                logger.info("stopping HLS bridge for room %r (%s)", room, reason)
                await self._stop(room)

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
        await bridge.stop()
        if bridge.store.renditions:
            self._ended[room] = (bridge.store, time.monotonic() + self.config.ended_grace_s)

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
