"""The capturer's side of the shared thumbnail worker process: spawn it, supervise it,
capture one key frame of a tapped video track through it.

:class:`ThumbnailProcess` starts ``python -m community.thumbnail_worker`` with one end of
a socket pair (:mod:`community.thumbnail_link`) at a lower CPU priority (``nice``), and
restarts it with backoff whenever it exits.  :meth:`ThumbnailProcess.capture` adds a
:class:`hls_bridge.transcoder_process.LinkSink` to a :class:`sfu.direct.TrackTap`, asks the publisher for a key frame
(PLI, RFC 4585 §6.3.1; again every second) and waits for the worker's JPEG; the sink is
removed as soon as the answer (or the timeout) comes, so a capture costs the forwarding
process one non-blocking ``write`` per video packet for about one key-frame round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any

import psutil

from common.child_main import spawn_child
from hls_bridge.transcoder_process import LinkSink

from . import thumbnail_link as link
from .thumbnail_link import ThumbnailError

if TYPE_CHECKING:
    from sfu.direct import TrackTap

__all__ = ["CaptureTimeout", "ThumbnailProcess", "WorkerUnavailable"]

logger = logging.getLogger(__name__)

KEYFRAME_RETRY_S = 1.0
"""A capture asks for a key frame again this often while it waits (throttled upstream)."""
STABLE_S = 60.0
"""A worker that ran this long before exiting is restarted after the initial backoff."""
MAX_BACKOFF_S = 10.0


class WorkerUnavailable(ThumbnailError):
    """The worker process is not running (starting, or waiting to be restarted)."""


class CaptureTimeout(ThumbnailError):
    """No decodable key frame arrived in time (e.g. an encoder that ignores PLI and has a
    long key-frame interval)."""


class ThumbnailProcess:
    """The one thumbnail worker process of this service process (see module docstring).

    :param nice: CPU priority increment of the worker over this process
        (``setpriority``; 19 = the lowest).
    :param restart_backoff_s: wait before restarting a worker that exited (doubles, up to
        10 s; back to this after a worker that ran for a minute).
    """

    def __init__(self, *, nice: int = 19, restart_backoff_s: float = 0.5) -> None:
        self.nice = nice
        self.restart_backoff_s = restart_backoff_s
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        """Worker processes started so far (``starts - 1`` restarts)."""
        self.images = 0
        self.failures = 0
        self.worker_cpu_us = 0
        """CPU time the worker reported for the images so far, µs."""
        self.packets_sent = 0
        self.packets_dropped = 0
        self._writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()
        self._pending: dict[int, asyncio.Future[link.Image]] = {}
        self._ids = itertools.count(1)
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        """The running worker's process id, or None."""
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the running worker so far, s (0 when none runs)."""
        pid = self.pid
        if pid is None:
            return 0.0
        try:
            return float(sum(psutil.Process(pid).cpu_times()[:2]))
        except psutil.Error:
            return 0.0

    def to_json(self) -> dict[str, Any]:
        """``{pid, starts, images, failures, open_captures, worker_cpu_ms_per_image,
        packets_sent, packets_dropped}``."""
        return {
            "pid": self.pid, "starts": self.starts, "images": self.images,
            "failures": self.failures, "open_captures": len(self._pending),
            "worker_cpu_ms_per_image": round(self.worker_cpu_us / self.images / 1000, 2)
            if self.images else None,
            "packets_sent": self.packets_sent, "packets_dropped": self.packets_dropped,
        }

    def start(self) -> None:
        """Start the worker and its supervision (idempotent; `capture` calls it)."""
        if not self._closing and (self._supervisor is None or self._supervisor.done()):
            self._supervisor = asyncio.create_task(self._supervise(), name="thumbnail-worker")

    async def capture(self, tap: TrackTap, *, width: int, quality: int,
                      timeout_s: float) -> link.Image:
        """The JPEG of the next key frame of ``tap`` (a video track).

        :param width: JPEG width, px (the frame's own width when narrower).
        :param quality: JPEG quality, 1..100.
        :param timeout_s: overall bound, s (worker start included).
        :raises WorkerUnavailable: no worker ran within ``timeout_s``, or it exited meanwhile.
        :raises CaptureTimeout: no key frame was turned into a JPEG within ``timeout_s``.
        :raises ThumbnailError: the worker could not decode it, or the track ended.
        """
        self.start()
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            raise WorkerUnavailable("the thumbnail worker is not running") from None
        writer = self._writer
        if writer is None or writer.is_closing():
            raise WorkerUnavailable("the thumbnail worker is not running")
        capture_id = next(self._ids)
        answer: asyncio.Future[link.Image] = asyncio.get_running_loop().create_future()
        self._pending[capture_id] = answer
        writer.write(link.capture(link.CaptureRequest(capture_id, asdict(tap.info), width, quality)))
        transport = writer.transport
        assert isinstance(transport, asyncio.WriteTransport)
        sink = LinkSink(transport, partial(link.encode_video, capture_id))
        tap.add_consumer(sink)
        try:
            while True:
                tap.request_keyframe()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CaptureTimeout(f"no key frame of room {tap.room!r} within {timeout_s:g} s")
                await asyncio.wait({answer}, timeout=min(KEYFRAME_RETRY_S, left))
                if answer.done():
                    image = answer.result()
                    self.images += 1
                    self.worker_cpu_us += image.cpu_us
                    return image
                if tap.closed:
                    raise ThumbnailError(f"the video track of room {tap.room!r} ended")
        except ThumbnailError:
            self.failures += 1
            raise
        finally:
            tap.remove_consumer(sink)
            self.packets_sent += sink.sent
            self.packets_dropped += sink.dropped
            self._pending.pop(capture_id, None)
            if not answer.done():
                answer.cancel()
                if self._writer is writer and not writer.is_closing():
                    writer.write(link.cancel(capture_id))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop supervising, close the link (the worker exits), SIGKILL it after
        ``timeout_s``."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                self.kill()
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._fail_pending(WorkerUnavailable("the thumbnail service is closing"))

    def kill(self) -> None:
        """SIGKILL the worker (idempotent); the supervisor restarts it."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)

    # ------------------------------------------------------------------ internals
    async def _supervise(self) -> None:
        backoff = self.restart_backoff_s
        while not self._closing:
            started = time.monotonic()
            try:
                reader = await self._spawn()
            except OSError:
                logger.exception("thumbnail worker could not be started")
            else:
                proc = self.proc
                assert proc is not None
                reading = asyncio.create_task(self._read(reader), name="thumbnail-worker-link")
                self._ready.set()
                status = await proc.wait()
                self._ready.clear()
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(reading, 2.0)  # the last answers
                self._fail_pending(WorkerUnavailable(f"the thumbnail worker exited ({status})"))
                if self._closing:
                    return
                if time.monotonic() - started >= STABLE_S:
                    backoff = self.restart_backoff_s
                logger.warning("thumbnail worker pid %d exited (status %s); restarting in %.1f s",
                               proc.pid, status, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _spawn(self) -> asyncio.StreamReader:
        self.proc, ours = await spawn_child("community.thumbnail_worker", self.nice)
        self.starts += 1
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=link.MAX_FRAME)
        self._writer = writer
        logger.info("thumbnail worker started (pid %d)", self.proc.pid)
        return reader

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, body = await link.read_frame(reader)
                if kind == link.IMAGE:
                    image = link.decode_image(body)
                    future = self._pending.get(image.capture)
                    if future is not None and not future.done():
                        future.set_result(image)
                elif kind == link.FAILED:
                    capture_id, reason = link.decode_failed(body)
                    future = self._pending.get(capture_id)
                    if future is not None and not future.done():
                        future.set_exception(ThumbnailError(reason))
        except link.LinkClosed:
            return

    def _fail_pending(self, error: ThumbnailError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
