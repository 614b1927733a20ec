"""Live thumbnails: a JPEG of a recent key frame of every live stream, every ~30 s.

:class:`ThumbnailService` listens for ``stream.started`` / ``stream.ended`` on the
platform's :class:`~community.events.EventBus`.  While a channel is live it captures,
every ``interval_s`` (± 10 %, so streams spread out), one key frame of the room's video:

1. the room is found on this process's SFU Worker through its public direct-consumer API
   (:mod:`sfu.direct`); when it is live on another node (``--workers N``, a cluster) it
   is piped in first (``pull``, the LL-HLS bridge's cascade pull) and held for the capture;
2. :class:`~community.thumbnail_process.ThumbnailProcess` taps the video track, asks for
   a key frame and hands the RTP payloads to the shared worker process
   (:mod:`community.thumbnail_worker`, nice 19: PyAV decode, OpenCV scale + JPEG), then
   unsubscribes — the forwarding process never decodes;
3. the JPEG is written atomically to ``<data_dir>/thumbnails/<channel>.jpg`` and
   ``streams.thumbnail_at`` is set.

``GET /thumbnails/{channel}.jpg`` serves it with ``Cache-Control: public, max-age=30``,
a strong ``ETag`` and ``Last-Modified`` (RFC 9111 §5.2.2.1, RFC 9110 §8.8), answering
conditional requests with ``304`` (RFC 9110 §13.1); ``404`` problem+json (RFC 9457) when
there is none.  Private channels get no thumbnail.  At most ``max_concurrent`` captures
run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import select, update

from common.config import ConfigError, env_number
from common.names import is_room_name
from common.problems import HttpProblem
from sfu.errors import RoomNotLive

from .app import COMMUNITY, Community
from .models import Channel, Stream, utcnow
from .thumbnail_link import ThumbnailError
from .thumbnail_process import ThumbnailProcess

if TYPE_CHECKING:
    from sfu.direct import DirectTransport

__all__ = ["CACHE_CONTROL", "ThumbnailConfig", "ThumbnailService", "setup", "thumbnails_of"]

logger = logging.getLogger(__name__)

CACHE_CONTROL = "public, max-age=30"
HOLDER = "thumbnails"
"""The :meth:`sfu.direct.DirectTransport.hold` holder name of a capture."""
FIRST_CAPTURE_S = 2.0
"""The first capture of a stream comes this long after it went live (or after
``interval_s`` when that is shorter): soon, once the encoder has ramped up."""
MAX_MISSES = 10
"""A channel whose room is found live nowhere this many captures in a row is dropped
(a missed ``stream.ended``)."""


@dataclass(frozen=True)
class ThumbnailConfig:
    """Thumbnail settings (``RELAYCAST_THUMBNAIL_*``).

    :ivar interval_s: seconds between two thumbnails of a live stream (``_INTERVAL_S``,
        30; 0 = no thumbnails).
    :ivar width: JPEG width, px (``_WIDTH``, 640; a narrower video keeps its width).
    :ivar quality: JPEG quality 1..100 (``_QUALITY``, 80).
    :ivar max_concurrent: captures at once over all streams (``_CONCURRENCY``, 4).
    :ivar timeout_s: how long a capture waits for a key frame, s (``_TIMEOUT_S``, 10).
    :ivar nice: CPU priority increment of the worker process (``_NICE``, 19).
    """

    interval_s: float = 30.0
    width: int = 640
    quality: int = 80
    max_concurrent: int = 4
    timeout_s: float = 10.0
    nice: int = 19

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ThumbnailConfig:
        """Read ``RELAYCAST_THUMBNAIL_*``; ``overrides`` win.  :raises ConfigError:"""
        env = os.environ if env is None else env
        prefix = "RELAYCAST_THUMBNAIL_"
        interval = env_number(env, prefix + "INTERVAL_S", 30.0, 0.0, 3600.0)
        if 0 < interval < 0.5:
            raise ConfigError(f"{prefix}INTERVAL_S: {interval} is below 0.5 (0 turns thumbnails off)")
        values: dict[str, Any] = {
            "interval_s": interval,
            "width": int(env_number(env, prefix + "WIDTH", 640, 16, 3840, integer=True)),
            "quality": int(env_number(env, prefix + "QUALITY", 80, 1, 100, integer=True)),
            "max_concurrent": int(env_number(env, prefix + "CONCURRENCY", 4, 1, 64, integer=True)),
            "timeout_s": env_number(env, prefix + "TIMEOUT_S", 10.0, 1.0, 120.0),
            "nice": int(env_number(env, prefix + "NICE", 19, 0, 19, integer=True)),
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class _LiveChannel:
    stream_id: str
    task: asyncio.Task[None] | None = None


class ThumbnailService:
    """Captures and stores the live channels' thumbnails (see the module docstring).

    Captures need :meth:`attach` (the SFU Worker of this process); before that, and in a
    signaling-only process, live channels are tracked but nothing is captured.

    :ivar directory: where ``<channel>.jpg`` files live.
    :ivar process: the shared worker process.
    """

    def __init__(self, community: Community, config: ThumbnailConfig) -> None:
        self.community = community
        self.config = config
        self.directory = community.config.data_dir / "thumbnails"
        self.process = ThumbnailProcess(nice=config.nice)
        self.direct: DirectTransport | None = None
        self.pull: Callable[[str], Awaitable[bool]] | None = None
        self.live: dict[str, _LiveChannel] = {}
        """Live channel name → its stream and capture loop."""
        self.written = 0
        """Thumbnails written so far."""
        self.capture_seconds = 0.0
        """Wall-clock time captures took in this process (tap to JPEG), s."""
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._closed = False

    def attach(self, direct: DirectTransport,
               pull: Callable[[str], Awaitable[bool]] | None = None) -> None:
        """Capture from ``direct``'s Worker; ``pull(room)`` pipes a room live on another
        node into it (``True`` when it did)."""
        self.direct = direct
        self.pull = pull
        direct.add_load_section("thumbnails", self.report)

    def path(self, channel: str) -> Path:
        """The channel's thumbnail file (``channel`` must satisfy ``is_room_name``)."""
        if not is_room_name(channel):
            raise ValueError(f"not a channel name: {channel!r}")
        return self.directory / f"{channel}.jpg"

    def report(self) -> dict[str, Any]:
        """``{"live_channels", "written", "capture_s_per_image", "worker": {...}}`` (see
        :meth:`ThumbnailProcess.to_json`; no channel names: load reports are not private)."""
        return {
            "live_channels": len(self.live), "written": self.written,
            "capture_s_per_image": round(self.capture_seconds / self.written, 3)
            if self.written else None,
            "worker": self.process.to_json(),
        }

    # --------------------------------------------------------------- events
    async def on_event(self, event: str, payload: dict[str, Any]) -> None:
        """``stream.started``: start the channel's capture loop; ``stream.ended``: stop it."""
        channel, stream_id = payload.get("channel"), payload.get("id")
        if not is_room_name(channel) or not isinstance(stream_id, str):
            return
        if event == "stream.started":
            self.track(channel, stream_id)
        elif event == "stream.ended":
            entry = self.live.get(channel)
            if entry is not None and entry.stream_id == stream_id:
                self.untrack(channel)

    def track(self, channel: str, stream_id: str) -> None:
        """Capture ``channel`` (live as ``stream_id``) from now on (idempotent)."""
        if self._closed or self.config.interval_s <= 0:
            return
        entry = self.live.get(channel)
        if entry is not None:
            entry.stream_id = stream_id
            return
        entry = self.live[channel] = _LiveChannel(stream_id)
        entry.task = asyncio.create_task(self._run(channel), name=f"thumbnails-{channel}")

    def untrack(self, channel: str) -> None:
        """Stop capturing ``channel`` (idempotent); its last thumbnail stays."""
        entry = self.live.pop(channel, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()

    # -------------------------------------------------------------- capture
    async def capture(self, channel: str, stream_id: str | None = None) -> Path | None:
        """Capture and store one thumbnail of ``channel`` now.

        :returns: the file written, or None for a private channel (its thumbnail is removed).
        :raises RoomNotLive: the room publishes no video on this node nor, after ``pull``,
            through a pipe.
        :raises ThumbnailError: no JPEG (worker down, no key frame in time, undecodable).
        """
        direct = self.direct
        if direct is None:
            raise RoomNotLive("no SFU worker in this process")
        if await self.is_private(channel):
            await asyncio.to_thread(self._remove, channel)
            return None
        info = direct.room(channel)
        if (info is None or not info.live or "video" not in info.tracks) and self.pull is not None:
            await self.pull(channel)
            info = direct.room(channel)
        if info is None or not info.live or "video" not in info.tracks:
            raise RoomNotLive(f"room {channel!r} publishes no video here")
        held = direct.hold(channel, HOLDER)
        started = time.monotonic()
        try:
            async with self._slots:
                tap = direct.tap(channel, "video")
                image = await self.process.capture(tap, width=self.config.width,
                                                   quality=self.config.quality,
                                                   timeout_s=self.config.timeout_s)
        finally:
            if held:
                direct.release(channel, HOLDER)
        self.capture_seconds += time.monotonic() - started
        path = await asyncio.to_thread(self._write, channel, image.jpeg)
        self.written += 1
        if stream_id is not None:
            async with self.community.db.transaction() as session:
                await session.execute(update(Stream).where(Stream.id == stream_id)
                                      .values(thumbnail_at=utcnow()))
        return path

    async def _run(self, channel: str) -> None:
        interval = self.config.interval_s
        await asyncio.sleep(min(FIRST_CAPTURE_S, interval))
        misses = 0
        while True:
            entry = self.live.get(channel)
            if entry is None:
                return
            try:
                await self.capture(channel, entry.stream_id)
                misses = 0
            except RoomNotLive as exc:
                misses += 1
                if misses >= MAX_MISSES:
                    logger.info("thumbnails of %r stop: %s (%d tries)", channel, exc, misses)
                    if self.live.get(channel) is entry:
                        del self.live[channel]
                    return
            except ThumbnailError as exc:
                logger.info("no thumbnail of %r this time: %s", channel, exc)
            except Exception:
                logger.exception("thumbnail of %r failed", channel)
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))

    async def is_private(self, channel: str) -> bool:
        """Whether ``channel`` is a private channel (unknown channels are not)."""
        async with self.community.db.session() as session:
            private = await session.scalar(select(Channel.private).where(Channel.name == channel))
        return bool(private)

    def _write(self, channel: str, jpeg: bytes) -> Path:
        """Write atomically: a temporary file in the same directory, then ``rename(2)``."""
        path = self.path(channel)
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{channel}.{secrets.token_hex(4)}.tmp"
        try:
            temporary.write_bytes(jpeg)
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        return path

    def _remove(self, channel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(channel).unlink()

    async def close(self) -> None:
        """Stop every capture loop and the worker process."""
        self._closed = True
        for channel in list(self.live):
            self.untrack(channel)
        await self.process.close()


# ------------------------------------------------------------------- HTTP
async def serve_thumbnail(request: web.Request) -> web.StreamResponse:
    """``GET /thumbnails/{channel}.jpg``: ``image/jpeg`` with caching headers, or ``404``
    problem+json (unknown or private channel, no thumbnail yet, not a channel name)."""
    name = request.match_info["file"]
    channel = name[:-4] if name.endswith(".jpg") else ""
    if not is_room_name(channel):
        raise HttpProblem(404, None, "no such thumbnail: expected /thumbnails/<channel>.jpg")
    service = thumbnails_of(request.app)
    if service is None or await service.is_private(channel):
        raise HttpProblem(404, None, f"no thumbnail for channel {channel!r}")
    path = service.path(channel)
    if not await asyncio.to_thread(path.is_file):
        raise HttpProblem(404, None, f"no thumbnail for channel {channel!r} (not live yet)")
    return web.FileResponse(path, headers={"Cache-Control": CACHE_CONTROL,
                                           "Content-Type": "image/jpeg",
                                           "X-Content-Type-Options": "nosniff"})


def thumbnails_of(app: web.Application) -> ThumbnailService | None:
    """The app's :class:`ThumbnailService`, or None when the platform is not installed."""
    community = app.get(COMMUNITY)
    if community is None:
        return None
    service = community.services.get("thumbnails")
    return service if isinstance(service, ThumbnailService) else None


def setup(app: web.Application) -> None:
    """Create the :class:`ThumbnailService` (``Community.services["thumbnails"]``),
    subscribe it to stream events, add ``GET /thumbnails/{channel}.jpg``, stop it on
    clean-up.  :raises ConfigError: a ``RELAYCAST_THUMBNAIL_*`` setting is invalid."""
    community = app[COMMUNITY]
    service = ThumbnailService(community, ThumbnailConfig.from_env())
    community.services["thumbnails"] = service
    community.events.subscribe(service.on_event, "stream.started", "stream.ended")
    app.router.add_get("/thumbnails/{file}", serve_thumbnail)

    async def close(app: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(close)
