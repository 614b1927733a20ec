"""Per-consumer sequence-number and timestamp munging (LiveKit ``RTPMunger``, mediasoup ``SeqManager``).

A Forwarder maps a producer's (seq, timestamp) space onto the consumer's
continuous output space.  It starts on a key frame, and when the producer is
replaced (publisher reconnects) it resynchronises on the new producer's next key
frame so the viewer sees one unbroken stream: sequence numbers continue at
``last + 1`` and the RTP timestamp advances by the wall-clock gap (90 kHz ticks
for video, 48 kHz for Opus), never backwards.  A switch of simulcast layer is the
same resynchronisation on the new layer's key frame.

Packets the consumer does not forward (a temporal layer above its target) are
:meth:`Forwarder.drop`-ped: the output sequence numbers close up behind them, so a
viewer sees no loss (LiveKit ``RTPMunger.PacketDropped``).  A packet that arrives
late (a retransmission from the publisher) is mapped with the offset that held
when its neighbours were forwarded.
"""

from __future__ import annotations

import random
import time


class Forwarder:
    """Seq/ts offset state for one consumer.

    :param clock_rate: RTP clock rate of the codec in Hz.
    :param frame_ticks: minimum timestamp advance across a source switch (one frame).
    """

    __slots__ = (
        "clock_rate",
        "frame_ticks",
        "seq_offset",
        "ts_offset",
        "started",
        "resync",
        "first_seq_in",
        "highest_seq_in",
        "last_seq_out",
        "last_ts_out",
        "last_wall",
        "epoch",
        "offset_from",
        "_offsets",
    )

    OFFSET_HISTORY = 64
    """Offset changes remembered for late packets (one per dropped run of packets)."""

    def __init__(self, clock_rate: int, frame_ticks: int = 3000) -> None:
        self.clock_rate = clock_rate
        self.frame_ticks = frame_ticks
        self.seq_offset = 0
        self.ts_offset = 0
        self.started = False
        self.resync = False
        self.first_seq_in = 0  # extended (unwrapped) input seq of the anchor key frame
        self.highest_seq_in = 0  # highest extended input seq seen since the anchor
        self.last_seq_out = random.randint(0, 0x7FFF)
        self.last_ts_out = random.randint(0, 0xFFFFFFFF)
        self.last_wall = 0.0
        self.epoch = 0
        """Counts starts (15 bits, wrapping): packets sent under another epoch belong to a
        source (layer, publisher) this consumer has left."""
        self.offset_from = 0  # extended input seq from which seq_offset holds
        self._offsets: list[tuple[int, int]] = []  # (extended input seq from, offset) before it

    def switch_source(self) -> None:
        """The producer changed: wait for a key frame, then continue the output space."""
        if self.started:
            self.resync = True
            self.started = False

    def start(self, seq: int, timestamp: int) -> None:
        """Anchor the mapping so that (seq, timestamp) is the next output packet."""
        now = time.monotonic()
        if self.resync:
            gap = int((now - self.last_wall) * self.clock_rate)
            ts_out = (self.last_ts_out + max(gap, self.frame_ticks)) & 0xFFFFFFFF
            seq_out = (self.last_seq_out + 1) & 0xFFFF
        else:
            ts_out = self.last_ts_out
            seq_out = self.last_seq_out
        self.seq_offset = (seq_out - seq) & 0xFFFF
        self.ts_offset = (ts_out - timestamp) & 0xFFFFFFFF
        self.first_seq_in = self.highest_seq_in = self.offset_from = seq
        self._offsets = []
        self.last_seq_out = (seq_out - 1) & 0xFFFF
        self.epoch = (self.epoch + 1) & 0x7FFF
        self.started = True
        self.resync = False

    def _extend(self, seq: int) -> int:
        """Unwrap a 16-bit input seq against the highest one seen (RFC 3550 A.1)."""
        delta = (seq - self.highest_seq_in) & 0xFFFF
        if delta < 0x8000:  # newer (or the same)
            self.highest_seq_in += delta
            return self.highest_seq_in
        return self.highest_seq_in - (0x10000 - delta)

    def drop(self, seq: int) -> None:
        """Input packet ``seq`` is not forwarded: later packets close up behind it.  A packet
        older than the newest one seen keeps its slot (a gap the viewer may NACK in vain)."""
        if not self.started:
            return
        previous = self.highest_seq_in
        extended = self._extend(seq)
        if extended <= previous:
            return
        if self.offset_from != extended:
            self._offsets.append((self.offset_from, self.seq_offset))
            if len(self._offsets) > self.OFFSET_HISTORY:
                del self._offsets[0]
        self.seq_offset = (self.seq_offset - 1) & 0xFFFF
        self.offset_from = extended + 1

    def _offset_at(self, extended: int) -> int | None:
        """The seq offset that held for extended input seq ``extended`` (older than
        :attr:`offset_from`), or ``None`` when forgotten or dropped."""
        for start, offset in reversed(self._offsets):
            if extended >= start:
                return offset
        return None

    def munge(self, seq: int, timestamp: int) -> tuple[int, int] | None:
        """Map an input packet; ``None`` for packets older than the anchor key frame.

        Input seqs are compared as extended (unwrapped) numbers, so a stream longer
        than 32768 packets keeps flowing (16-bit RFC 1982 comparison against the
        anchor alone would start dropping everything after half the seq space).
        """
        # _extend and seq_newer written out: this runs per packet per consumer
        highest = self.highest_seq_in
        delta = (seq - highest) & 0xFFFF
        if delta < 0x8000:  # newer than (or the same as) every input seen: the usual case
            extended = self.highest_seq_in = highest + delta
        else:
            extended = highest - (0x10000 - delta)
            if extended < self.first_seq_in:
                return None
        offset = self.seq_offset
        if extended < self.offset_from:
            earlier = self._offset_at(extended)
            if earlier is None:
                return None
            offset = earlier
        seq_out = (seq + offset) & 0xFFFF
        ts_out = (timestamp + self.ts_offset) & 0xFFFFFFFF
        if 0 < ((seq_out - self.last_seq_out) & 0xFFFF) < 0x8000:  # RFC 1982: newer
            self.last_seq_out = seq_out
            self.last_ts_out = ts_out
            self.last_wall = time.monotonic()
        return seq_out, ts_out
