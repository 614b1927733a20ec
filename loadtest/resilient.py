"""WHIP/WHEP clients that reconnect on their own, like the watch and broadcast pages.

Used by the failover test and ``python -m loadtest failover``.  A client notices that
its SFU node is gone without waiting for ICE consent to fail (aioice: ~30 s):

* `ReconnectingViewer`: no decoded video frame for ``stall_s`` while it was playing;
* `ReconnectingPublisher`: no RTCP receiver report from the SFU for ``stall_s``
  (default 2 s; ``remote-inbound-rtp`` stats of its video sender; the SFU's aiortc
  receivers send one every 0.5–1.5 s).

Then it drops the session (best-effort DELETE, bounded) and POSTs a new offer, retrying
409/503/network errors every ``retry_s`` until ``stop()``.  Every attempt and every
first frame is time-stamped (``time.monotonic()``) for the failover measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack

from . import whip_client
from .pattern import read_code

logger = logging.getLogger(__name__)


@dataclass
class Reconnects:
    """What happened to one client: session start times and reconnect reasons."""

    sessions: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    attempts: int = 0
    last_error: str = ""


class _Client:
    def __init__(self, url: str, *, stall_s: float = 1.0, retry_s: float = 0.2) -> None:
        self.url = url
        self.stall_s = stall_s
        self.retry_s = retry_s
        self.session: whip_client.WhipSession | None = None
        self.log = Reconnects()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, timeout: float = 20.0) -> None:
        """Connect (retrying) and keep the session up in the background."""
        await asyncio.wait_for(self._connect(), timeout)
        self._task = asyncio.create_task(self._run(), name=f"{type(self).__name__}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    async def _open(self) -> whip_client.WhipSession:
        raise NotImplementedError

    async def _connect(self) -> None:
        while True:
            self.log.attempts += 1
            try:
                session = await self._open()
                await whip_client.wait_connected(session.pc, timeout=10)
            except (whip_client.WhipError, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                logger.debug("%s: %r; retrying", self.url, exc)
                self.log.last_error = repr(exc)[:300]
                await asyncio.sleep(self.retry_s)
                continue
            self.session = session
            self.log.sessions.append(time.monotonic())
            self._connected()
            return

    def _connected(self) -> None:
        return None

    async def _drop(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        with contextlib.suppress(Exception):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
                await session.close(http)
        with contextlib.suppress(Exception):
            await session.pc.close()

    async def _run(self) -> None:
        while not self._stopping:
            reason = await self._watch()
            self.log.reasons.append(reason)
            await self._drop()
            await self._connect()

    async def _watch(self) -> str:
        """Return (with a reason) when the session must be replaced."""
        raise NotImplementedError


class ReconnectingViewer(_Client):
    """A WHEP viewer that decodes video and re-POSTs when frames stop for ``stall_s``.

    :ivar frames: ``(monotonic time, pattern code)`` of every decoded frame carrying a
        readable :mod:`loadtest.pattern` code.
    """

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.frames: list[tuple[float, int]] = []
        self._frame = asyncio.Event()

    async def _open(self) -> whip_client.WhipSession:
        return await whip_client.view(self.url, kinds=("video",))

    def first_frame_after(self, t: float, min_code: int = 0) -> float | None:
        """Time of the first decoded frame after ``t`` with a code ``>= min_code``."""
        return next((at for at, code in self.frames if at > t and code >= min_code), None)

    async def _watch(self) -> str:
        assert self.session is not None
        track = next(t.receiver.track for t in self.session.pc.getTransceivers() if t.kind == "video")
        playing = False
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), self.stall_s if playing else 10.0)
            except TimeoutError:
                return "media stalled" if playing else "no media"
            except Exception as exc:  # MediaStreamError: the track ended
                return f"track ended ({type(exc).__name__})"
            code = read_code(frame)
            if code is not None:
                playing = True
                self.frames.append((time.monotonic(), code))


class ReconnectingPublisher(_Client):
    """A WHIP publisher that re-publishes when the SFU's receiver reports stop.

    :param make_tracks: builds fresh tracks for each session (``[video, ...]``).
    """

    def __init__(self, url: str, token: str, make_tracks: Callable[[], list[MediaStreamTrack]],
                 *, stall_s: float = 2.0, **kw: Any) -> None:
        super().__init__(url, stall_s=stall_s, **kw)
        self.token = token
        self.make_tracks = make_tracks

    async def _open(self) -> whip_client.WhipSession:
        return await whip_client.publish(self.url, self.token, self.make_tracks())

    async def _drop(self) -> None:
        session = self.session
        await super()._drop()
        for track in session.tracks if session is not None else []:
            track.stop()

    async def _watch(self) -> str:
        assert self.session is not None
        sender = next(s for s in self.session.pc.getSenders() if s.track and s.track.kind == "video")
        started = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            stats = await sender.getStats()
            reports = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
            if reports:
                age = time.time() - reports[0].timestamp.timestamp()
            else:
                age = time.monotonic() - started - 2.0  # the first report may take a while
            if age > self.stall_s:
                return "no receiver reports"
