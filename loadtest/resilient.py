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

No wait is unbounded: an attempt (POST, ICE/DTLS) gets ``attempt_s``, the DELETE and
the peer connection's close ``close_s`` each (a SIGKILLed node never answers), and
``stop()`` returns within about ``4 * close_s`` whatever happens, never raising.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    """What both clients share: connect (retrying), watch, drop, reconnect; `stop`.

    Every wait is bounded, so `stop` returns within about ``4 * close_s`` s whatever the
    network or the SFU do: one connection attempt (POST + ICE/DTLS) within ``attempt_s``,
    the DELETE and the peer connection's close within ``close_s`` each, and the loops end
    at the next check of the stop flag even if a cancellation is lost.
    """

    def __init__(self, url: str, *, stall_s: float = 1.0, retry_s: float = 0.2,
                 attempt_s: float = 10.0, close_s: float = 2.0) -> None:
        self.url = url
        self.stall_s = stall_s
        self.retry_s = retry_s
        self.attempt_s = attempt_s
        self.close_s = close_s
        self.session: whip_client.WhipSession | None = None
        self.log = Reconnects()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, timeout: float = 20.0) -> None:
        """Connect (retrying for up to ``timeout`` s: `TimeoutError`) and keep the session up
        in the background."""
        async with asyncio.timeout(timeout):
            await self._connect()
        self._task = asyncio.create_task(self._run(), name=f"{type(self).__name__}")

    async def stop(self) -> None:
        """Stop reconnecting and drop the session (DELETE, close).

        Bounded (about ``4 * close_s`` s) and never raises but for the caller's own
        cancellation: the background task is cancelled and awaited for ``2 * close_s`` at
        most (it may be closing a half-made session); it also ends on its own at its next
        check of the stop flag, should a cancellation be lost (Python 3.11's
        `asyncio.wait_for` drops one that arrives as the awaited call completes); a task
        that still runs then is left behind, logged.
        """
        self._stopping = True
        task, self._task = self._task, None
        try:
            if task is not None:
                await _end_task(task, 2 * self.close_s, f"{type(self).__name__}({self.url})")
        finally:
            await self._drop()

    async def _open(self) -> whip_client.WhipSession:
        raise NotImplementedError

    async def _connect(self) -> None:
        """POST until a session connects (``self.session``) or `stop` is called."""
        while not self._stopping:
            self.log.attempts += 1
            session: whip_client.WhipSession | None = None
            try:
                async with asyncio.timeout(self.attempt_s):
                    session = await self._open()
                    await whip_client.wait_connected(session.pc, timeout=self.attempt_s)
            except Exception as exc:  # WhipError, aiohttp/connection errors, TimeoutError, a bad answer
                logger.debug("%s: %r; retrying", self.url, exc)
                self.log.last_error = repr(exc)[:300]
                if session is not None:
                    await self._close(session)
                await asyncio.sleep(self.retry_s)
                continue
            except BaseException:  # cancelled (stop, or start's timeout): no half-open session left
                if session is not None:
                    await self._close(session)
                raise
            if self._stopping:  # stop() came while it connected
                await self._close(session)
                return
            self.session = session
            self.log.sessions.append(time.monotonic())
            self._connected()
            return

    def _connected(self) -> None:
        return None

    async def _drop(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await self._close(session)

    async def _close(self, session: whip_client.WhipSession) -> None:
        """DELETE (best effort: the node may be dead) and close the peer connection, each
        within ``close_s``; never raises but for the caller's own cancellation."""
        await session.close(timeout=self.close_s)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                reason = await self._watch()
            except Exception as exc:  # a defect, not a network event: reconnect all the same
                logger.warning("%s: watching the session failed", self.url, exc_info=True)
                reason = f"watch failed ({exc!r})"[:300]
            if self._stopping:
                return
            self.log.reasons.append(reason)
            await self._drop()
            await self._connect()

    async def _watch(self) -> str:
        """Return (with a reason) when the session must be replaced (or `stop` was called)."""
        raise NotImplementedError


async def _end_task(task: asyncio.Task[None], timeout: float, what: str) -> None:
    """Cancel ``task`` and wait for it to end (its cleanup included: closing a half-made
    session), ``timeout`` s at most, then cancel it once more (a cancellation can be lost)
    and wait 0.5 s; log how it ended, never raise its error."""
    for wait_s in (timeout, 0.5):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=wait_s)
    if not task.done():
        logger.warning("%s: its task did not end within %g s of stop(); left behind", what, timeout + 0.5)
    elif not task.cancelled() and task.exception() is not None:
        logger.warning("%s: its task had failed", what, exc_info=task.exception())


class ReconnectingViewer(_Client):
    """A WHEP viewer that decodes video and re-POSTs when frames stop for ``stall_s``.

    :ivar frames: ``(monotonic time, pattern code)`` of every decoded frame carrying a
        readable :mod:`loadtest.pattern` code.
    """

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.frames: list[tuple[float, int]] = []
        self.new_frame = asyncio.Event()
        """Set on every decoded frame with a code (for `tests.polling.wait_for`'s ``wake``)."""

    async def _open(self) -> whip_client.WhipSession:
        return await whip_client.view(self.url, kinds=("video",))

    def first_frame_after(self, t: float, min_code: int = 0) -> float | None:
        """Time of the first decoded frame after ``t`` with a code ``>= min_code``."""
        return next((at for at, code in self.frames if at > t and code >= min_code), None)

    async def _watch(self) -> str:
        assert self.session is not None
        track = next(t.receiver.track for t in self.session.pc.getTransceivers() if t.kind == "video")
        playing = False
        while not self._stopping:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the frame and
                # drops stop()'s cancellation when it arrives as recv() completes, which is
                # most of the time once decoded frames queue up (a loaded machine).
                async with asyncio.timeout(self.stall_s if playing else 10.0):
                    frame = await track.recv()
            except TimeoutError:
                return "media stalled" if playing else "no media"
            except Exception as exc:  # MediaStreamError: the track ended
                return f"track ended ({type(exc).__name__})"
            code = read_code(frame)
            if code is not None:
                playing = True
                self.frames.append((time.monotonic(), code))
                self.new_frame.set()
        return "stopped"


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
        tracks = self.make_tracks()
        try:
            return await whip_client.publish(self.url, self.token, tracks)
        except BaseException:
            for track in tracks:
                track.stop()
            raise

    async def _close(self, session: whip_client.WhipSession) -> None:
        try:
            await super()._close(session)
        finally:
            for track in session.tracks:
                track.stop()

    async def _watch(self) -> str:
        assert self.session is not None
        sender = next(s for s in self.session.pc.getSenders() if s.track and s.track.kind == "video")
        started = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(0.1)
            stats = await sender.getStats()
            reports = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
            if reports:
                age = time.time() - reports[0].timestamp.timestamp()
            else:
                age = time.monotonic() - started - 2.0  # the first report may take a while
            if age > self.stall_s:
                return "no receiver reports"
        return "stopped"
