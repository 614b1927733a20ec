"""The bridge's side of one transcoder process: spawn it, feed it, apply what it writes.

:class:`TranscoderProcess` starts ``python -m hls_bridge.transcoder_main`` with one end of
a socket pair (:mod:`hls_bridge.media_link`), sends it the room's configuration, and adds a
:class:`LinkSink` to each tapped track, so every RTP packet of the publisher costs the
forwarding process one ``write`` on the link — and nothing at all once the link's buffer
is full (the packet is dropped and counted; the transcoder's reassembly sees the gap and
asks for a key frame).  Store calls coming back are applied, in order, to the bridge's
:class:`~hls_bridge.store.RoomStore` on this event loop, which the origin serves.

The process's CPU (cores, from its ``/proc`` times) and RSS are sampled with psutil.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any

import psutil

from common.child_main import spawn_child

from . import media_link as link

if TYPE_CHECKING:
    from sfu.direct import MediaPacket, TrackInfo, TrackTap

    from .store import RoomStore

__all__ = ["LinkSink", "TranscoderProcess"]

logger = logging.getLogger(__name__)

LINK_BUFFER_LIMIT = 4 * 1024 * 1024
"""Bytes queued on the link (the transcoder is not reading) beyond which packets are dropped."""


class LinkSink:
    """A ``PacketSink`` on a tapped track: writes each packet to a child process's link
    (the transcoder's; the thumbnail worker's too).

    Called on the forwarding path: one ``bytes`` build and one non-blocking write.
    """

    __slots__ = ("_encode", "_transport", "dropped", "sent")

    def __init__(self, transport: asyncio.WriteTransport, encode: Callable[[MediaPacket], bytes]) -> None:
        """:param encode: one packet as the link's frame (e.g. ``partial(encode_media, kind)``)."""
        self._encode = encode
        self._transport = transport
        self.sent = 0
        self.dropped = 0

    def forward(self, media: MediaPacket) -> None:
        transport = self._transport
        if transport.is_closing() or transport.get_write_buffer_size() > LINK_BUFFER_LIMIT:
            self.dropped += 1
            return
        transport.write(self._encode(media))
        self.sent += 1


class TranscoderProcess:
    """One transcoder process for one room (see the module docstring).

    ``await start(config, tracks, store)``; then ``await wait()`` returns when the process
    has exited (``done`` tells whether it ended the stream normally).  ``await stop()``
    asks it to flush and end (END), bounded by ``timeout``, then kills it.

    :param nice: CPU priority increment of the process over this one (``setpriority``; 0 =
        the same priority, 19 = the lowest).
    """

    def __init__(self, room: str, *, nice: int = 19) -> None:
        self.room = room
        self.nice = nice
        self.proc: asyncio.subprocess.Process | None = None
        self.done = False
        """The process sent DONE: it flushed and ended the renditions."""
        self.report: dict[str, Any] = {}
        """Its last REPORT (see :mod:`hls_bridge.transcoder_main`)."""
        self.store_errors = 0
        self.last_heard = time.monotonic()
        """When the process last sent anything (it reports every second)."""
        self._sinks: dict[str, tuple[TrackTap, LinkSink]] = {}
        self.attached = False
        """Its sinks are on the tracks (from `start` until `detach`)."""
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._store: RoomStore | None = None
        self._ps: psutil.Process | None = None
        self._cpu_mark: tuple[float, float] = (0.0, 0.0)
        self.cpu = 0.0
        """Cores the process used between the two latest `sample` calls."""
        self.rss = 0
        """Its resident set size at the latest `sample`, bytes."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def dropped_packets(self) -> int:
        """Packets not written to the link because the transcoder was not reading."""
        return sum(sink.dropped for _, sink in self._sinks.values())

    async def start(self, config: Mapping[str, Any], tracks: Mapping[str, TrackTap],
                    store: RoomStore) -> None:
        """Spawn the process, send CONFIG (``config`` plus the tracks' codecs), attach a
        :class:`LinkSink` to each of ``tracks``.

        :raises OSError: the process could not be started.
        """
        self._store = store
        self.proc, ours = await spawn_child("hls_bridge.transcoder_main", self.nice)
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=link.MAX_FRAME)
        self._writer = writer
        with contextlib.suppress(psutil.Error):
            self._ps = psutil.Process(self.proc.pid)
            self._cpu_mark = (time.monotonic(), sum(self._ps.cpu_times()[:2]))
        body = {**config, "room": self.room,
                "tracks": {kind: _track_json(tap.info) for kind, tap in tracks.items()}}
        writer.write(link.frame(link.CONFIG, json.dumps(body).encode()))
        transport = writer.transport
        assert isinstance(transport, asyncio.WriteTransport)
        for kind, tap in tracks.items():
            sink = LinkSink(transport, partial(link.encode_media, link.MEDIA_TYPES[kind]))
            self._sinks[kind] = (tap, sink)
            tap.add_consumer(sink)
        self.attached = True
        self._reader_task = asyncio.create_task(self._read(reader),
                                                name=f"hls-transcoder-link-{self.room}")

    def detach(self) -> None:
        """Stop feeding the process (idempotent)."""
        for tap, sink in self._sinks.values():
            tap.remove_consumer(sink)
        self.attached = False

    async def wait(self) -> int:
        """Wait for the process to exit; its exit status (negative: killed by a signal)."""
        assert self.proc is not None
        status = await self.proc.wait()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader_task, 2.0)  # the last STORE frames
        self.detach()
        if self._writer is not None:
            self._writer.close()
        return status

    async def stop(self, timeout: float = 10.0) -> None:
        """END, then wait up to ``timeout`` s for the process to flush and exit; SIGKILL after."""
        self.detach()
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(link.frame(link.END))
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.wait()), timeout)
        except TimeoutError:
            logger.warning("transcoder of room %r (pid %d) did not end in %g s; killing it",
                           self.room, self.proc.pid, timeout)
            self.kill()
            await self.wait()

    def kill(self) -> None:
        """SIGKILL the process (idempotent)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    def sample(self) -> None:
        """Update :attr:`cpu` (cores since the previous call) and :attr:`rss` (bytes)."""
        if self._ps is None or not self.running:
            self.cpu = 0.0
            return
        try:
            busy = sum(self._ps.cpu_times()[:2])
            self.rss = int(self._ps.memory_info().rss)
        except psutil.Error:
            return
        now = time.monotonic()
        then, busy_then = self._cpu_mark
        if now - then >= 0.2:
            self.cpu = max(0.0, (busy - busy_then) / (now - then))
            self._cpu_mark = (now, busy)

    # ------------------------------------------------------------------ internals
    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, body = await link.read_frame(reader)
                self.last_heard = time.monotonic()
                if kind == link.STORE:
                    self._apply(body)
                elif kind == link.KEYFRAME:
                    entry = self._sinks.get(body.decode(errors="replace"))
                    if entry is not None:
                        entry[0].request_keyframe()
                elif kind == link.REPORT:
                    with contextlib.suppress(ValueError):
                        self.report = json.loads(body)
                elif kind == link.DONE:
                    self.done = True
        except link.LinkClosed:
            return

    def _apply(self, body: bytes) -> None:
        """Apply one STORE frame's calls, all of them before anything else runs."""
        store = self._store
        assert store is not None
        try:
            for target, method, args, kwargs in pickle.loads(body):  # noqa: S301 - our child
                if method.startswith("_"):
                    raise ValueError(f"store method {method!r}")
                if target is None:
                    if method == "add_rendition" and args[0] in store.renditions:
                        continue  # a restarted transcoder re-adds the renditions it continues
                    getattr(store, method)(*args, **kwargs)
                else:
                    getattr(store.renditions[target], method)(*args, **kwargs)
        except Exception:
            self.store_errors += 1
            logger.exception("transcoder of room %r: a store update failed; restarting it",
                             self.room)
            self.kill()


def _track_json(info: TrackInfo) -> dict[str, Any]:
    return asdict(info)
