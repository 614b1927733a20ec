"""Send-side history of transport-wide sequence numbers (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2).

A send-side bandwidth estimator must know, for every transport-wide sequence number a
transport-cc feedback packet reports (§3.1), when the packet was sent and how big it was
(libwebrtc ``TransportFeedbackAdapter``'s send history, Pion ``gcc.FeedbackAdapter``).
:class:`SendHistory` keeps both in a fixed ring of :data:`RING_SIZE` slots indexed by the
16-bit sequence number itself — no per-packet allocation, no dict: the per-packet cost is
one clock read and two array stores (~0.2 µs, see ``loadtest/bwe_micro.py``).

A slot's ``meta`` word packs the packet's size (bits 0–15, bytes), its probe cluster id
(bits 16–31, 0 = not part of a probe) and its report state (bit 32: reported received,
bit 33: reported lost).  A sequence number is *known* while it is among the last
``min(RING_SIZE, packets sent)`` numbers handed out; older ones have been overwritten
(slots never written hold a send time of ``-inf``).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable

RING_SIZE = 4096
"""Slots kept: ~2 s of packets at 20 Mbit/s with 1,200-byte packets (feedback arrives within
an RTT + 50–100 ms).  A power of two dividing 65,536, so ``seq & (RING_SIZE - 1)`` is the slot."""
RING_MASK = RING_SIZE - 1
SIZE_MASK = 0xFFFF
CLUSTER_SHIFT = 16
CLUSTER_MASK = 0xFFFF
RECEIVED = 1 << 32
"""``meta`` bit: the packet was reported received."""
LOST = 1 << 33
"""``meta`` bit: the packet was reported not received (a later report may still say received)."""
NEVER = float("-inf")


class SendHistory:
    """Ring of (send time, size, probe cluster, report state) per transport-wide sequence number.

    :param clock: monotonic clock in seconds (``time.monotonic``; tests inject a virtual one).
    """

    __slots__ = ("_seq", "times", "metas", "_clock", "_tag")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._seq = 0  # the next sequence number to hand out (16 bits)
        self.times = array("d", [NEVER]) * RING_SIZE
        """Send time (s) per slot; NEVER: the slot was never used."""
        self.metas = array("q", bytes(8 * RING_SIZE))
        """Size, probe cluster and report state per slot (see the module docstring)."""
        self._clock = clock
        self._tag = 0  # probe cluster id << CLUSTER_SHIFT while a probe cluster is sent

    def next_sequence(self, size: int) -> int:
        """Hot path, one call per RTP packet sent on the transport: the 16-bit transport-wide
        sequence number (§2) for the packet and record its send time (now) and ``size``
        (bytes, 0..65535: the RTP packet before SRTP — header, extensions and payload)."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        slot = seq & RING_MASK
        self.times[slot] = self._clock()
        self.metas[slot] = (size & SIZE_MASK) | self._tag
        return seq

    @property
    def next_seq(self) -> int:
        """The sequence number the next packet gets."""
        return self._seq

    @property
    def last_sequence(self) -> int:
        """The last sequence number handed out (65535 before the first)."""
        return (self.next_seq - 1) & 0xFFFF

    @property
    def cluster(self) -> int:
        """The probe cluster id packets are tagged with now (0: none)."""
        return self._tag >> CLUSTER_SHIFT

    @cluster.setter
    def cluster(self, cluster_id: int) -> None:
        self._tag = (cluster_id & CLUSTER_MASK) << CLUSTER_SHIFT
        self._cluster_changed(cluster_id)

    def _cluster_changed(self, cluster_id: int) -> None:
        pass

    def slot(self, seq: int) -> int:
        """The ring slot of ``seq`` (16 bits) when it is known, else -1."""
        distance = (self.next_seq - seq) & 0xFFFF  # 1 = the last one handed out
        if distance == 0 or distance > RING_SIZE:
            return -1
        slot = seq & RING_MASK
        # Before the ring is first filled, the slots of numbers never handed out are NEVER.
        return -1 if self.times[slot] == NEVER else slot

    def bytes_since(self, first_seq: int, cluster_id: int = 0) -> tuple[int, int]:
        """(bytes, packets) handed out from sequence number ``first_seq`` to the last one,
        counting only packets of probe cluster ``cluster_id`` when it is not 0; (0, 0) when
        ``first_seq`` is not known (not yet used or overwritten)."""
        span = (self.next_seq - first_seq) & 0xFFFF
        if span == 0 or span > RING_SIZE or self.slot(first_seq) < 0:
            return 0, 0
        total = packets = 0
        meta = self.metas
        for k in range(span):
            word = meta[(first_seq + k) & RING_MASK]
            if cluster_id and (word >> CLUSTER_SHIFT) & CLUSTER_MASK != cluster_id:
                continue
            total += word & SIZE_MASK
            packets += 1
        return total, packets

    def rate_bps(self, window_s: float, now: float) -> float:
        """Bits per second handed out in the last ``window_s`` s before ``now`` (walks back
        the ring; off the hot path)."""
        times, meta = self.times, self.metas
        total = 0
        seq = self.next_seq
        for _ in range(RING_SIZE):
            seq = (seq - 1) & 0xFFFF
            slot = seq & RING_MASK
            if not now - times[slot] <= window_s:  # NEVER: -inf, older than any window
                break
            total += meta[slot] & SIZE_MASK
        return total * 8 / window_s if window_s > 0 else 0.0


SHARED_SIZE = 8 + 16 * RING_SIZE
"""Bytes one :class:`SharedSendHistory` takes in a shared buffer: the next sequence number
(int64), then ``times`` (RING_SIZE float64) and ``metas`` (RING_SIZE int64)."""
_NEVER_RING = array("d", [NEVER]) * RING_SIZE
_ZERO_RING = array("q", bytes(8 * RING_SIZE))


class SharedSendHistory(SendHistory):
    """A :class:`SendHistory` kept in a shared buffer (``multiprocessing.shared_memory``) of
    :data:`SHARED_SIZE` bytes, so that the forwarding process numbers packets into it
    (:meth:`next_sequence`, the same two array stores plus the counter) and the estimator
    process (:mod:`sfu.estimator_main`) reads the send times and sizes its feedback reports
    on, and marks report states, without copying anything.

    :param buffer: this history's bytes (a memoryview slice of the shared block).
    :param reset: start empty (the forwarding side, when it takes the slot for a new transport).
    :param on_cluster: called with the probe cluster id when :attr:`cluster` is set (the
        estimator side: the forwarding side must tag what it sends, see :meth:`set_tag`).
    """

    __slots__ = ("_counter", "_on_cluster", "_buffer")

    def __init__(self, buffer: memoryview, clock: Callable[[], float] = time.monotonic, *,
                 reset: bool = False, on_cluster: Callable[[int], None] | None = None) -> None:
        self._clock = clock
        self._tag = 0
        self._buffer = buffer
        self._counter = buffer[0:8].cast("q")
        self.times = buffer[8:8 + 8 * RING_SIZE].cast("d")  # type: ignore[assignment]
        self.metas = buffer[8 + 8 * RING_SIZE:SHARED_SIZE].cast("q")  # type: ignore[assignment]
        self._on_cluster = on_cluster
        if reset:
            self.times[:] = _NEVER_RING
            self.metas[:] = _ZERO_RING
            self._counter[0] = 0
        self._seq = self._counter[0]

    def next_sequence(self, size: int) -> int:
        # The base class's, with the shared counter stored too (written out, not a call to
        # super(): this is the hot path).
        seq = self._seq
        self._counter[0] = self._seq = (seq + 1) & 0xFFFF
        slot = seq & RING_MASK
        self.times[slot] = self._clock()
        self.metas[slot] = (size & SIZE_MASK) | self._tag
        return seq

    @property
    def next_seq(self) -> int:
        return self._counter[0]

    def set_tag(self, cluster_id: int) -> None:
        """The forwarding side: tag the packets numbered from now on with probe cluster
        ``cluster_id`` (0: none), as the estimator asked."""
        self._tag = (cluster_id & CLUSTER_MASK) << CLUSTER_SHIFT

    def _cluster_changed(self, cluster_id: int) -> None:
        if self._on_cluster is not None:
            self._on_cluster(cluster_id)

    def release(self) -> None:
        """Let go of the shared buffer (its views), so that the block can be closed; the
        history must not be used afterwards."""
        for view in (self._counter, self.times, self.metas, self._buffer):
            view.release()  # type: ignore[union-attr]

    def detach(self) -> None:
        """Go on in private memory (a copy) and let go of the shared buffer, whose slot may
        then serve another transport: a late :meth:`next_sequence` (a packet sent while its
        session closes) lands in the copy, never in the next owner's slot."""
        if not isinstance(self.times, memoryview):
            return  # already private
        times, metas, counter = array("d", self.times), array("q", self.metas), array("q", self._counter)
        self.release()
        self.times, self.metas, self._counter = times, metas, counter  # type: ignore[assignment]
