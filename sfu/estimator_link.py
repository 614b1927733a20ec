"""Viewers' bandwidth estimation in a process of its own, so that the forwarding process only
forwards (the forwarding side of :mod:`sfu.estimator_main`).

Why: a browser viewer sends a transport-cc feedback packet every 50–65 ms, and applying one in
Python (:meth:`sfu.bandwidth.BandwidthEstimator.on_transport_feedback`) costs ~24 µs — at 200
viewers ~10 % of a core, ~2.4 µs per forwarded packet of a 1.5 Mbit/s stream, more than the
whole 20 % budget adaptive delivery may add to forwarding (docs/benchmarks.md, "Where a
feedback packet's cost goes").  Here the forwarding process only receives and unprotects the
feedback (~4 µs) and hands it on; the estimator process applies it.

How:

* **Send histories in shared memory.**  Each viewer transport's
  :class:`~sfu.send_history.SharedSendHistory` lives in a block of
  :data:`BLOCK_SLOTS` slots (``multiprocessing.shared_memory``).  The forwarding process numbers
  every packet into it exactly as before (two array stores and a counter); the estimator
  process reads the send times and sizes the feedback reports on.
* **Messages** both ways over a Unix socket pair: frames of a 4-byte big-endian length and a
  pickled list of tuples; the forwarding side writes feedback at most every
  :data:`FLUSH_S` (10 ms) — a hundred writes a second, whatever the feedback rate (each
  feedback still carries the time it arrived) — and anything else (a probe request) at once.

  forwarding → estimator: ``("block", index, name)``, ``("open", eid, slot, initial_bps)``,
  ``("close", eid)``, ``("fb", eid, at, data)`` (``at``: when it arrived, monotonic s),
  ``("remb", eid, at, bps)``, ``("rr", eid, at, fraction_lost, rtt_s)``,
  ``("probe", eid, at, target_bps)``, ``("refused", eid)`` (padding could not be sent),
  ``("stats", eid)``.

  estimator → forwarding: ``("est", eid, bps, source, feedback_packets, reported_received,
  congestion_cuts)``
  (on a change of ≥ 1 % or of source, else every :data:`sfu.estimator_main.REFRESH_S`),
  ``("tag", eid, cluster_id)`` (tag what is numbered from now on with a probe cluster),
  ``("cluster", eid, cluster_id, target_bps, start_s, first_seq, long)`` (a probe cluster
  to send: the forwarding side paces its padding, :func:`sfu.bandwidth.send_due_padding`,
  counting what its own history holds), ``("stats", eid, stats)``.
* :class:`RemoteEstimator` has the face of :class:`~sfu.bandwidth.BandwidthEstimator` the SFU
  uses (``next_sequence``, ``estimate_bps``, ``source``, ``probe``, ``on_remb``, …); its
  estimate is the last one the estimator process sent (a few ms old; the layer choice reads it
  twice a second).
* **Failure.**  If the process cannot start or dies, every estimator goes on in the forwarding
  process from its last estimate over the same shared history
  (:meth:`RemoteEstimator.go_local`), and new ones are local: sessions never notice beyond a
  log line.

The process runs at the forwarding process's own priority: estimation serves the interactive
tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

from common.child_main import spawn_child

from .bandwidth import PACE_INTERVAL_S, BandwidthEstimator, send_due_padding
from .probe import ProbeCluster
from .send_history import SHARED_SIZE, SharedSendHistory

logger = logging.getLogger(__name__)

BLOCK_SLOTS = 64
"""Send histories per shared-memory block (64 × 64 KiB ≈ 4 MiB)."""
MAX_FRAME = 64 << 20
FLUSH_S = 0.01
"""Feedback goes to the estimator process at most this long after it arrived: one write per
10 ms, not one per event-loop iteration (each write is a system call).  Other messages (a
probe request, open, close, stats) go at the end of the event-loop iteration."""
MAX_BUFFERED = 4 << 20
"""Bytes queued towards a busy estimator process beyond which feedback is dropped (counted in
``EstimatorLink.dropped_feedback``; its packets stay unreported, not lost) rather than memory
growing without bound."""
_LENGTH = struct.Struct("!I")


def frame(messages: list[tuple[Any, ...]]) -> bytes:
    """One frame: the pickled ``messages`` behind their length."""
    body = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into the message lists of its frames.

    :raises ValueError: a frame longer than :data:`MAX_FRAME` (the peer is broken)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buffer = self._buffer
        buffer += data
        messages: list[tuple[Any, ...]] = []
        pos = 0
        while len(buffer) - pos >= 4:
            (length,) = _LENGTH.unpack_from(buffer, pos)
            if length > MAX_FRAME:
                raise ValueError(f"estimator link frame of {length} bytes")
            if len(buffer) - pos - 4 < length:
                break
            messages += pickle.loads(bytes(buffer[pos + 4:pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buffer[:pos]
        return messages


class RemoteEstimator:
    """One viewer transport's estimator, run by the estimator process (see the module
    docstring); the same face as :class:`~sfu.bandwidth.BandwidthEstimator` for the SFU."""

    def __init__(self, link: EstimatorLink, eid: int, slot: int, history: SharedSendHistory,
                 initial_bps: int) -> None:
        self.id = eid
        self.slot = slot
        self._link = link
        self._history = history
        self.next_sequence: Callable[[int], int] = history.next_sequence
        """Hot path: number one packet (see :meth:`BandwidthEstimator.next_sequence`)."""
        self._estimate = initial_bps
        self._source = "initial"
        self._feedback_packets = 0
        self._reported_received = 0
        self._congestion_cuts = 0
        self.padding_packets = 0
        self._padding: Callable[[int], bool] | None = None
        self._stats: dict[str, Any] = {}
        self._local: BandwidthEstimator | None = None
        self._pacer: asyncio.Task[None] | None = None
        self.closed = False

    # ------------------------------------------------------------- the SFU's face

    @property
    def estimate_bps(self) -> int:
        return self._local.estimate_bps if self._local is not None else self._estimate

    @property
    def source(self) -> str:
        return self._local.source if self._local is not None else self._source

    @property
    def feedback_packets(self) -> int:
        return self._local.feedback_packets if self._local is not None else self._feedback_packets

    @property
    def reported_received(self) -> int:
        return self._local.reported_received if self._local is not None else self._reported_received

    @property
    def congestion_cuts(self) -> int:
        return self._local.congestion_cuts if self._local is not None else self._congestion_cuts

    @property
    def remote(self) -> bool:
        """The estimator process runs this estimator (False: it went local)."""
        return self._local is None

    def next_probe_sequence(self, size: int) -> int:
        self.padding_packets += 1
        return self._history.next_sequence(size)

    def on_transport_feedback(self, data: bytes) -> None:
        if self._local is not None:
            self._local.on_transport_feedback(data)
        else:
            self._link.send(("fb", self.id, time.monotonic(), data))

    def on_remb(self, bps: int) -> None:
        if self._local is not None:
            self._local.on_remb(bps)
        else:
            self._link.send(("remb", self.id, time.monotonic(), bps))

    def on_receiver_report(self, fraction_lost: int, rtt_s: float | None) -> None:
        if self._local is not None:
            self._local.on_receiver_report(fraction_lost, rtt_s)
        else:
            self._link.send(("rr", self.id, time.monotonic(), fraction_lost, rtt_s))

    def probe(self, target_bps: int) -> None:
        if self._local is not None:
            self._local.probe(target_bps)
        elif self._padding is not None and not self.closed:
            self._link.send(("probe", self.id, time.monotonic(), target_bps))

    def set_padding_sender(self, send: Callable[[int], bool] | None) -> None:
        self._padding = send
        if self._local is not None:
            self._local.set_padding_sender(send)

    def stats(self) -> dict[str, Any]:
        """The estimator process's last :meth:`BandwidthEstimator.stats` for it (a fresh one
        is asked for; it arrives within a few ms), with the estimate as now known here."""
        if self._local is not None:
            return {**self._local.stats(), "process": "forwarding"}
        self._link.send(("stats", self.id))
        return {**self._stats, "estimate_bps": self._estimate, "source": self._source,
                "feedback_packets": self._feedback_packets,
                "reported_received": self._reported_received,
                "padding_packets": self.padding_packets, "process": "estimator"}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._padding = None
        if self._pacer is not None:
            self._pacer.cancel()
        if self._local is not None:
            self._local.close()
        self._link.release(self)

    # ------------------------------------------------------- from the estimator process

    def on_estimate(self, bps: int, source: str, feedback_packets: int, reported_received: int,
                    congestion_cuts: int) -> None:
        self._estimate = bps
        self._source = source
        self._feedback_packets = feedback_packets
        self._reported_received = reported_received
        self._congestion_cuts = congestion_cuts

    def on_cluster(self, cluster_id: int, target_bps: float, start_s: float, first_seq: int,
                   long: bool) -> None:
        """Send a probe cluster's padding, paced here every :data:`PACE_INTERVAL_S`."""
        if self._padding is None or self.closed or self._local is not None:
            self._link.send(("refused", self.id))
            return
        if self._pacer is not None:
            self._pacer.cancel()
        # Paced from now for the cluster's whole duration: the estimator decided it a moment
        # ago (its start_s), and catching up that moment would send it as a burst.
        cluster = ProbeCluster(cluster_id, target_bps, max(start_s, time.monotonic()), first_seq, long)
        self._pacer = asyncio.get_running_loop().create_task(self._pace(cluster),
                                                             name=f"bwe-probe-{self.id}")

    async def _pace(self, cluster: ProbeCluster) -> None:
        while not self.closed and self._local is None:
            now = time.monotonic()
            send = self._padding
            if send is None:
                _, refused = 0, True
            else:
                _, refused = send_due_padding(cluster, self._history, now, send)
            if refused:
                self._link.send(("refused", self.id))
                return
            if now - cluster.start_s >= cluster.duration_s:
                return
            await asyncio.sleep(PACE_INTERVAL_S)

    def on_stats(self, stats: dict[str, Any]) -> None:
        self._stats = stats

    def go_local(self) -> None:
        """Go on in this process (the estimator process is gone): a local estimator from the
        last estimate, over the same shared history."""
        if self._local is not None or self.closed:
            return
        if self._pacer is not None:
            self._pacer.cancel()
        self._history.set_tag(0)
        self._local = BandwidthEstimator(initial_bps=max(30_000, min(20_000_000, self._estimate)),
                                         history=self._history)
        self._local.set_padding_sender(self._padding)


Estimator = BandwidthEstimator | RemoteEstimator
"""A viewer transport's estimator, wherever it runs."""


class _Protocol(asyncio.Protocol):
    def __init__(self, link: EstimatorLink) -> None:
        self.link = link
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except Exception:  # noqa: BLE001 — a broken peer: estimation goes local
            logger.exception("bad data from the estimator process")
            self.link.lost("bad data")
            return
        self.link.dispatch(messages)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost("its link closed")


class EstimatorLink:
    """The forwarding process's side of the estimator process (one per
    :class:`~sfu.worker.Worker`).  The process is started with the first :meth:`open`.

    :param enabled: False: every estimator is local (``RELAYCAST_ESTIMATOR_PROCESS=0``).
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.failed = False
        self._blocks: list[shared_memory.SharedMemory] = []
        self._free: list[int] = []
        self._estimators: dict[int, RemoteEstimator] = {}
        self._next_id = 1
        self._outbox: list[tuple[Any, ...]] = []
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped_feedback = 0
        """Feedback packets not handed to a process that could not keep up (see MAX_BUFFERED)."""

    @property
    def pid(self) -> int | None:
        """The estimator process's id (None: not started)."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._transport is not None and not self.failed

    def open(self, initial_bps: int) -> RemoteEstimator | BandwidthEstimator:
        """A new viewer transport's estimator: remote, or local when the process is off,
        failed, or there is no running event loop."""
        if not self.enabled or self.failed or self._closing:
            return BandwidthEstimator(initial_bps=initial_bps)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return BandwidthEstimator(initial_bps=initial_bps)
        try:
            slot = self._take_slot()
        except OSError:
            logger.exception("no shared memory for a send history: estimating in this process")
            return BandwidthEstimator(initial_bps=initial_bps)
        block = self._blocks[slot // BLOCK_SLOTS]
        offset = (slot % BLOCK_SLOTS) * SHARED_SIZE
        history = SharedSendHistory(block.buf[offset:offset + SHARED_SIZE], reset=True)
        eid = self._next_id
        self._next_id += 1
        estimator = RemoteEstimator(self, eid, slot, history, initial_bps)
        self._estimators[eid] = estimator
        self.send(("open", eid, slot, initial_bps))
        if self._proc is None and self._start_task is None:
            self._start_task = loop.create_task(self._start(), name="bwe-estimator-start")
        return estimator

    def _take_slot(self) -> int:
        if not self._free:
            index = len(self._blocks)
            block = shared_memory.SharedMemory(create=True, size=BLOCK_SLOTS * SHARED_SIZE)
            try:
                # Reserve the pages now: a full /dev/shm (a container's 64 MiB default) then
                # fails here with ENOSPC instead of a SIGBUS at the first write.
                os.posix_fallocate(block._fd, 0, block.size)  # type: ignore[attr-defined]
            except OSError:
                block.close()
                block.unlink()
                raise
            self._blocks.append(block)
            self._free = list(range((index + 1) * BLOCK_SLOTS - 1, index * BLOCK_SLOTS - 1, -1))
            self.send(("block", index, block.name))
        return self._free.pop()

    def release(self, estimator: RemoteEstimator) -> None:
        if self._estimators.pop(estimator.id, None) is None:
            return
        estimator._history.detach()
        self._free.append(estimator.slot)
        self.send(("close", estimator.id))

    def send(self, message: tuple[Any, ...]) -> None:
        if self.failed:
            return  # everything is local now
        self._outbox.append(message)
        if self._transport is None:
            return
        urgent = message[0] != "fb"  # a probe request must not wait: its cluster is timed
        if self._flush_scheduled and not urgent:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (teardown): it goes with the next flush, if any
        if urgent:
            loop.call_soon(self._flush)
        else:
            loop.call_later(FLUSH_S, self._flush)
        self._flush_scheduled = True

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None or not self._outbox or self.failed:
            return
        messages, self._outbox = self._outbox, []
        if self._transport.get_write_buffer_size() > MAX_BUFFERED:
            kept = [m for m in messages if m[0] != "fb"]
            self.dropped_feedback += len(messages) - len(kept)
            messages = kept
        self._transport.write(frame(messages))

    def dispatch(self, messages: list[tuple[Any, ...]]) -> None:
        estimators = self._estimators
        for message in messages:
            estimator = estimators.get(message[1])
            if estimator is None:
                continue  # closed meanwhile
            kind = message[0]
            if kind == "est":
                estimator.on_estimate(*message[2:])
            elif kind == "cluster":
                estimator.on_cluster(*message[2:])
            elif kind == "tag":
                estimator._history.set_tag(message[2])
            elif kind == "stats":
                estimator.on_stats(message[2])

    async def _start(self) -> None:
        try:
            self._proc, ours = await spawn_child("sfu.estimator_main")
        except OSError as exc:
            self.lost(f"it could not start ({exc})")
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Protocol(self), sock=ours)
        if self.failed or self._closing:
            transport.close()
            return
        self._transport = transport  # type: ignore[assignment]
        self._watch_task = loop.create_task(self._watch(self._proc), name="bwe-estimator-watch")
        logger.info("bandwidth estimator process %d started", self._proc.pid)
        if self._outbox:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        status = await proc.wait()
        if not self._closing:
            self.lost(f"it exited with status {status}")

    def lost(self, why: str) -> None:
        """The estimator process is gone or unusable: every estimator goes on locally."""
        if self.failed or self._closing:
            return
        self.failed = True
        logger.error("bandwidth estimator process lost (%s): estimating in the forwarding "
                     "process from now on", why)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._outbox.clear()
        for estimator in list(self._estimators.values()):
            estimator.go_local()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def close(self) -> None:
        """Stop the process and free the shared memory (the remaining estimators go local)."""
        if self._closing:
            return
        if self._start_task is not None and not self._start_task.done():
            with contextlib.suppress(Exception):
                await self._start_task
        self._closing = True
        for estimator in list(self._estimators.values()):
            estimator.go_local()
        if self._transport is not None:
            self._transport.close()  # the process exits at the end of its link
            self._transport = None
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._watch_task is not None:
            self._watch_task.cancel()
        # The estimators still open go on in private copies of their histories, so that
        # the blocks can be unmapped and removed now.
        for estimator in self._estimators.values():
            estimator._history.detach()
        for block in self._blocks:
            block.close()
            with contextlib.suppress(FileNotFoundError):
                block.unlink()
        self._blocks.clear()
