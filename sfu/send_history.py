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
        return (self._seq - 1) & 0xFFFF

    @property
    def cluster(self) -> int:
        """The probe cluster id packets are tagged with now (0: none)."""
        return self._tag >> CLUSTER_SHIFT

    @cluster.setter
    def cluster(self, cluster_id: int) -> None:
        self._tag = (cluster_id & CLUSTER_MASK) << CLUSTER_SHIFT

    def slot(self, seq: int) -> int:
        """The ring slot of ``seq`` (16 bits) when it is known, else -1."""
        distance = (self._seq - seq) & 0xFFFF  # 1 = the last one handed out
        if distance == 0 or distance > RING_SIZE:
            return -1
        slot = seq & RING_MASK
        # Before the ring is first filled, the slots of numbers never handed out are NEVER.
        return -1 if self.times[slot] == NEVER else slot

    def bytes_since(self, first_seq: int, cluster_id: int = 0) -> tuple[int, int]:
        """(bytes, packets) handed out from sequence number ``first_seq`` to the last one,
        counting only packets of probe cluster ``cluster_id`` when it is not 0; (0, 0) when
        ``first_seq`` is not known (not yet used or overwritten)."""
        span = (self._seq - first_seq) & 0xFFFF
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
        seq = self._seq
        for _ in range(RING_SIZE):
            seq = (seq - 1) & 0xFFFF
            slot = seq & RING_MASK
            if not now - times[slot] <= window_s:  # NEVER: -inf, older than any window
                break
            total += meta[slot] & SIZE_MASK
        return total * 8 / window_s if window_s > 0 else 0.0
