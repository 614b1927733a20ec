"""The bandwidth estimator process: ``python -m sfu.estimator_main --fd N --parent PID``.

Started by :class:`sfu.estimator_link.EstimatorLink` (one per forwarding process) with one end
of a socket pair, it runs every viewer transport's
:class:`~sfu.bandwidth.BandwidthEstimator` over the :class:`~sfu.send_history.SharedSendHistory`
the forwarding process numbers packets into, and sends back estimates, probe clusters to send
and stats (the messages are listed in :mod:`sfu.estimator_link`).  The forwarding process
paces a cluster's padding over the same shared history (what it sent is what it counts);
this loop wakes every :data:`sfu.bandwidth.PACE_INTERVAL_S` while one runs, to end it on
time and apply its feedback.  It applies each message
at the time the forwarding process received it (``at``), dies with its parent, and exits when
its link closes.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from typing import Any

from common.child_main import start_child

from .bandwidth import PACE_INTERVAL_S, BandwidthEstimator
from .estimator_link import BLOCK_SLOTS, FrameReader, frame
from .probe import CLUSTER_DURATION_S, ProbeCluster
from .send_history import SHARED_SIZE, SharedSendHistory

logger = logging.getLogger("sfu.estimator_main")

PUSH_S = 0.1
"""Every estimate is looked at this often (it changes with time too: stale feedback)."""
REFRESH_S = 0.5
"""An estimate unchanged (< 1 %, same source) is sent back this often (its counters)."""
_CHANGE = 0.01


class _Clock:
    """An estimator's clock: the time a message arrived in the forwarding process while it is
    applied, else now; never going back."""

    __slots__ = ("stamp", "last")

    def __init__(self) -> None:
        self.stamp: float | None = None
        self.last = 0.0

    def __call__(self) -> float:
        t = time.monotonic() if self.stamp is None else self.stamp
        if t < self.last:
            t = self.last
        self.last = t
        return t


class _Entry:
    __slots__ = ("eid", "estimator", "history", "clock", "pushed_bps", "pushed_source", "pushed_at")

    def __init__(self, eid: int, estimator: BandwidthEstimator, history: SharedSendHistory,
                 clock: _Clock) -> None:
        self.eid = eid
        self.estimator = estimator
        self.history = history
        self.clock = clock
        self.pushed_bps = -1
        self.pushed_source = ""
        self.pushed_at = 0.0


class EstimatorServer:
    """The estimator process's state and loop (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.blocks: dict[int, shared_memory.SharedMemory] = {}
        self.entries: dict[int, _Entry] = {}
        self.outbox: list[tuple[Any, ...]] = []
        self.touched: set[int] = set()

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        reader = FrameReader()
        next_push = time.monotonic() + PUSH_S
        try:
            while True:
                pacing = [e for e in self.entries.values() if e.estimator.probing]
                if selector.select(PACE_INTERVAL_S if pacing else PUSH_S):
                    data = self.sock.recv(1 << 20)
                    if not data:
                        return  # the forwarding process closed the link
                    for message in reader.feed(data):
                        self.handle(message)
                for entry in pacing:
                    entry.estimator.pace()  # ends a cluster once its time is up
                now = time.monotonic()
                if now >= next_push:
                    next_push = now + PUSH_S
                    self.touched.update(self.entries)
                for eid in self.touched:
                    entry = self.entries.get(eid)
                    if entry is not None:
                        self._push_estimate(entry, now)
                self.touched.clear()
                if self.outbox:
                    messages, self.outbox = self.outbox, []
                    self.sock.sendall(frame(messages))
        finally:
            selector.close()
            self.close()

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "block":
            self._attach(message[1], message[2])
            return
        if kind == "open":
            self._open(message[1], message[2], message[3])
            return
        entry = self.entries.get(message[1])
        if entry is None:
            return
        estimator = entry.estimator
        if kind == "fb":
            entry.clock.stamp = message[2]
            estimator.on_transport_feedback(message[3])
        elif kind == "remb":
            entry.clock.stamp = message[2]
            estimator.on_remb(message[3])
        elif kind == "rr":
            entry.clock.stamp = message[2]
            estimator.on_receiver_report(message[3], message[4])
        elif kind == "probe":
            entry.clock.stamp = message[2]
            estimator.probe(message[3])
        elif kind == "refused":
            estimator.padding_refused()
        elif kind == "stats":
            self.outbox.append(("stats", entry.eid, estimator.stats()))
        elif kind == "close":
            self._close(entry)
            return
        entry.clock.stamp = None
        self.touched.add(entry.eid)

    def _attach(self, index: int, name: str) -> None:
        block = shared_memory.SharedMemory(name=name)
        # Python < 3.13 registers an attached block with this process's resource tracker,
        # which would unlink it when this process exits: the forwarding process owns it.
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
        self.blocks[index] = block

    def _open(self, eid: int, slot: int, initial_bps: int) -> None:
        block = self.blocks[slot // BLOCK_SLOTS]
        offset = (slot % BLOCK_SLOTS) * SHARED_SIZE
        clock = _Clock()

        def tag(cluster_id: int) -> None:
            self.outbox.append(("tag", eid, cluster_id))

        history = SharedSendHistory(block.buf[offset:offset + SHARED_SIZE], clock, on_cluster=tag)
        estimator = BandwidthEstimator(initial_bps=initial_bps, clock=clock, history=history)

        def pace(cluster: ProbeCluster) -> None:
            self.outbox.append(("cluster", eid, cluster.id, cluster.target_bps, cluster.start_s,
                           cluster.first_seq, cluster.duration_s > CLUSTER_DURATION_S))

        estimator.set_remote_pacer(pace)
        self.entries[eid] = _Entry(eid, estimator, history, clock)
        self.touched.add(eid)

    def _push_estimate(self, entry: _Entry, now: float) -> None:
        estimator = entry.estimator
        bps, source = estimator.estimate_bps, estimator.source
        if (source != entry.pushed_source or abs(bps - entry.pushed_bps) >= _CHANGE * entry.pushed_bps
                or now - entry.pushed_at >= REFRESH_S):
            entry.pushed_bps, entry.pushed_source, entry.pushed_at = bps, source, now
            self.outbox.append(("est", entry.eid, bps, source, estimator.feedback_packets,
                                estimator.reported_received, estimator.congestion_cuts))

    def _close(self, entry: _Entry) -> None:
        entry.estimator.close()
        entry.history.release()
        del self.entries[entry.eid]

    def close(self) -> None:
        for entry in list(self.entries.values()):
            self._close(entry)
        for block in self.blocks.values():
            block.close()
        self.blocks.clear()


def main(argv: list[str] | None = None, serve: Callable[[socket.socket], None] | None = None) -> None:
    args = start_child("python -m sfu.estimator_main", "the forwarding process's id", argv)
    sock = socket.socket(fileno=args.fd)
    try:
        (serve or (lambda s: EstimatorServer(s).run()))(sock)
    except (ConnectionError, OSError) as exc:
        logger.info("estimator link ended: %s", exc)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
