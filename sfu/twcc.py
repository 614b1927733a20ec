"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

A publisher that negotiated ``a=rtcp-fb:<pt> transport-cc`` and the transport-wide
sequence number header extension (§2) numbers every RTP packet it sends on the
transport.  The receiver reports when each numbered packet arrived, in RTCP transport
feedback packets (RTPFB, FMT 15, §3.1), every 50–100 ms; the sender's own estimator
(libwebrtc's goog_cc) turns those reports into its bandwidth estimate.  Without them a
browser publisher only has receiver reports (loss) and ramps up by ~8 % a second.

:class:`TwccRecorder` is the receiver side, pure and synchronous: ``record()`` each
(transport sequence number, arrival time in µs) and ``build_feedback()`` the packets
to send.  It follows libwebrtc's ``RemoteEstimatorProxy`` (and Pion's
``interceptor/pkg/twcc``): only the first arrival of a sequence number counts, a
packet arriving after its sequence number was reported makes the next feedback
start from it again, arrivals are kept for 500 ms after they are reported.
:func:`parse_feedback` reads a packet back (tests, tools).

Packet layout (§3.1), all big-endian::

    |V=2|P|FMT=15 | PT=205        | length (32-bit words - 1)     |
    | SSRC of packet sender                                         |
    | SSRC of media source                                          |
    | base sequence number          | packet status count           |
    | reference time (24 bits, 64 ms)               | fb pkt. count |
    | packet status chunks (16 bits each) ...                       |
    | receive deltas (1 byte: 0..255, 2 bytes: signed; 250 µs) ...  |
    | zero padding, last byte = padding length (RFC 3550 §6.4.1)    |

Status chunks (§3.1.3, §3.1.4): a run-length chunk ``0 | symbol (2) | run length (13)``
or a status vector chunk ``1 | S | symbols``: fourteen 1-bit symbols (S = 0:
not received / received with a small delta) or seven 2-bit symbols (S = 1).
Symbols: 0 not received, 1 received with a small delta, 2 received with a large or
negative delta.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
"""The transport-wide sequence number header extension (§2), as in ``a=extmap``."""
TRANSPORT_CC = "transport-cc"
"""The ``a=rtcp-fb`` feedback type that asks for transport feedback."""

RTCP_RTPFB = 205
FMT_TRANSPORT_FEEDBACK = 15
DELTA_UNIT_US = 250
"""Receive deltas count 250 µs units (§3.1.5)."""
REFERENCE_UNIT_US = 64_000
"""The reference time counts 64 ms units (§3.1)."""
FEEDBACK_INTERVAL_S = 0.05
"""How often the SFU sends feedback: libwebrtc's receivers send every 50–250 ms, 50 ms at
any bitrate above ~200 kbps."""

NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2

_HISTORY_US = 500_000  # arrivals kept this long after being reported (re-reports, §3.1)
_MAX_MISSING = 0x7FFE  # at most this many not-received statuses before the first arrival
_MAX_PACKET_BYTES = 1200  # one feedback packet fits a datagram after SRTCP
_RUN_LENGTH_MAX = 0x1FFF
_ONE_BIT_CAPACITY = 14
_TWO_BIT_CAPACITY = 7
_HEADER = struct.Struct("!BBHIIHHI")  # common header, SSRCs, base seq, count, ref time + count


def encode_chunks(symbols: Sequence[int]) -> list[int]:
    """Packet status chunks (16-bit words) for ``symbols`` (§3.1.3, §3.1.4), the way
    libwebrtc packs them: a run-length chunk for a run of one symbol, a 1-bit vector for
    14 symbols without a large delta, else 2-bit vectors of 7.

    :raises ValueError: a symbol other than 0, 1 or 2.
    """
    chunks: list[int] = []
    pending: list[int] = []  # symbols not yet in a chunk; libwebrtc's "LastChunk"
    for symbol in symbols:
        if symbol not in (NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA):
            raise ValueError(f"packet status symbol {symbol!r} is not 0, 1 or 2")
        if not _can_add(pending, symbol):
            chunks.append(_emit(pending))
        pending.append(symbol)
    while pending:
        chunks.append(_emit(pending))
    return chunks


def _can_add(pending: list[int], symbol: int) -> bool:
    n = len(pending)
    if n < _TWO_BIT_CAPACITY:
        return True
    if n < _ONE_BIT_CAPACITY and symbol != LARGE_DELTA and LARGE_DELTA not in pending:
        return True
    return n < _RUN_LENGTH_MAX and all(s == symbol for s in pending)


def _emit(pending: list[int]) -> int:
    """One chunk from the front of ``pending`` (removed from it)."""
    first = pending[0]
    if all(s == first for s in pending):
        chunk = (first << 13) | len(pending)
        pending.clear()
        return chunk
    if len(pending) == _ONE_BIT_CAPACITY:
        chunk = 0x8000
        for i, s in enumerate(pending):
            chunk |= s << (13 - i)
        pending.clear()
        return chunk
    chunk = 0xC000
    taken = pending[:_TWO_BIT_CAPACITY]
    for i, s in enumerate(taken):
        chunk |= s << (12 - 2 * i)
    del pending[:_TWO_BIT_CAPACITY]
    return chunk


def decode_chunks(words: Sequence[int], count: int) -> list[int]:
    """The first ``count`` status symbols of the chunks ``words`` (16-bit each).

    :raises ValueError: the chunks hold fewer than ``count`` symbols.
    """
    symbols: list[int] = []
    for word in words:
        if len(symbols) >= count:
            break
        if not word & 0x8000:
            symbols.extend([(word >> 13) & 0x3] * (word & _RUN_LENGTH_MAX))
        elif not word & 0x4000:
            symbols.extend((word >> (13 - i)) & 0x1 for i in range(_ONE_BIT_CAPACITY))
        else:
            symbols.extend((word >> (12 - 2 * i)) & 0x3 for i in range(_TWO_BIT_CAPACITY))
    if len(symbols) < count:
        raise ValueError(f"status chunks hold {len(symbols)} statuses, {count} announced")
    return symbols[:count]


@dataclass(frozen=True)
class TransportFeedback:
    """One parsed transport feedback packet (§3.1).

    :ivar reference_time: 64 ms units, 24 bits.
    :ivar statuses: one symbol per sequence number from ``base_seq`` (0, 1, 2).
    :ivar deltas: receive deltas of the received packets, in 250 µs units.
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int
    fb_pkt_count: int
    statuses: tuple[int, ...]
    deltas: tuple[int, ...]

    def arrivals_us(self) -> dict[int, int]:
        """Sequence number (16 bits) → arrival time in µs on the sender of the feedback's
        clock, modulo 2^24 × 64 ms, for the received packets."""
        now = self.reference_time * REFERENCE_UNIT_US
        deltas = iter(self.deltas)
        out: dict[int, int] = {}
        for i, status in enumerate(self.statuses):
            if status != NOT_RECEIVED:
                now += next(deltas) * DELTA_UNIT_US
                out[(self.base_seq + i) & 0xFFFF] = now
        return out


def parse_feedback(data: bytes) -> TransportFeedback:
    """Parse one RTCP transport feedback packet (RTPFB, FMT 15; §3.1).

    :raises ValueError: not such a packet, or truncated/inconsistent.
    """
    if len(data) < _HEADER.size:
        raise ValueError("transport feedback shorter than its 20-byte header")
    first, pt, length, sender, media, base, count, ref_and_count = _HEADER.unpack_from(data)
    if first >> 6 != 2 or first & 0x1F != FMT_TRANSPORT_FEEDBACK or pt != RTCP_RTPFB:
        raise ValueError("not an RTCP transport feedback packet (RTPFB, FMT 15)")
    end = (length + 1) * 4
    if end > len(data):
        raise ValueError("transport feedback length exceeds the data")
    if first & 0x20:
        padding = data[end - 1]
        if padding == 0 or padding > end - _HEADER.size:
            raise ValueError("bad RTCP padding length")
        end -= padding
    pos = _HEADER.size
    words: list[int] = []
    seen = 0
    while seen < count:
        if pos + 2 > end:
            raise ValueError("transport feedback truncated in its status chunks")
        (word,) = struct.unpack_from("!H", data, pos)
        pos += 2
        words.append(word)
        if not word & 0x8000:
            seen += word & _RUN_LENGTH_MAX
        else:
            seen += _TWO_BIT_CAPACITY if word & 0x4000 else _ONE_BIT_CAPACITY
    statuses = decode_chunks(words, count)
    deltas: list[int] = []
    for status in statuses:
        if status == SMALL_DELTA:
            if pos + 1 > end:
                raise ValueError("transport feedback truncated in its receive deltas")
            deltas.append(data[pos])
            pos += 1
        elif status == LARGE_DELTA:
            if pos + 2 > end:
                raise ValueError("transport feedback truncated in its receive deltas")
            deltas.append(struct.unpack_from("!h", data, pos)[0])
            pos += 2
    return TransportFeedback(sender, media, base, ref_and_count >> 8, ref_and_count & 0xFF,
                             tuple(statuses), tuple(deltas))


def _round_delta(delta_us: int) -> int:
    """µs → 250 µs units, rounded half away from zero."""
    half = DELTA_UNIT_US // 2
    return (delta_us + half) // DELTA_UNIT_US if delta_us >= 0 else -((-delta_us + half) // DELTA_UNIT_US)


class TwccRecorder:
    """Arrival times of transport-wide sequence numbers → RTCP transport feedback (§3.1).

    :param sender_ssrc: the SSRC the feedback is sent from (the receiver's RTCP SSRC).
    """

    def __init__(self, sender_ssrc: int) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = 0
        """SSRC of the last recorded packet (the feedback's "media source"; §3.1)."""
        self.fb_pkt_count = 0
        """Feedback packets built so far, modulo 256."""
        self._arrivals: dict[int, int] = {}  # unwrapped sequence number -> arrival, µs
        self._last_seq: int | None = None  # last unwrapped sequence number recorded
        self._next_seq: int | None = None  # first sequence number of the next feedback
        self._max_seq = -1
        # Sequence numbers at or below this were forgotten; none yet.  (Unwrapped numbers
        # may be negative: a packet sent just before the first one recorded, across the
        # 16-bit wrap — e.g. 65535 arriving after 0 — unwraps to -1.)
        self._floor = -(1 << 62)
        self._newest_us = 0

    def _unwrap(self, seq: int) -> int:
        last = self._last_seq
        if last is None:
            return seq
        step = (seq - last) & 0xFFFF
        return last + (step - 0x10000 if step >= 0x8000 else step)

    def record(self, seq: int, arrival_us: int, media_ssrc: int = 0) -> None:
        """A packet with transport-wide sequence number ``seq`` (16 bits, §2) arrived at
        ``arrival_us`` (µs, a monotonic clock).  Repeats of a sequence number and
        sequence numbers older than the kept history are ignored."""
        unwrapped = self._unwrap(seq & 0xFFFF)
        self._last_seq = unwrapped
        if media_ssrc:
            self.media_ssrc = media_ssrc
        if unwrapped <= self._floor or unwrapped in self._arrivals:
            return
        self._arrivals[unwrapped] = arrival_us
        self._newest_us = max(self._newest_us, arrival_us)
        self._max_seq = max(self._max_seq, unwrapped)
        if self._next_seq is None or unwrapped < self._next_seq:
            self._next_seq = unwrapped  # a late packet: report from it again

    @property
    def pending(self) -> bool:
        """Arrivals not yet reported."""
        return self._next_seq is not None and self._next_seq <= self._max_seq

    def build_feedback(self) -> list[bytes]:
        """RTCP transport feedback packets (§3.1) for the arrivals not yet reported, each
        at most 1200 bytes; ``[]`` when there are none.  Then forgets arrivals reported
        and older than 500 ms."""
        packets: list[bytes] = []
        while self.pending:
            packets.append(self._build_one())
        self._forget()
        return packets

    def _build_one(self) -> bytes:
        assert self._next_seq is not None
        arrivals = self._arrivals
        start = self._next_seq
        first = start
        while first not in arrivals:
            first += 1
        base = max(start, first - _MAX_MISSING)
        reference = arrivals[first] // REFERENCE_UNIT_US
        now_us = reference * REFERENCE_UNIT_US
        symbols: list[int] = [NOT_RECEIVED] * (first - base)
        deltas: list[int] = []
        seq = first
        while seq <= self._max_seq and len(symbols) < 0xFFFF:
            arrival = arrivals.get(seq)
            if arrival is None:
                symbols.append(NOT_RECEIVED)
            else:
                delta = _round_delta(arrival - now_us)
                if not -0x8000 <= delta <= 0x7FFF:
                    break  # too far from the previous arrival: the next packet starts here
                now_us += delta * DELTA_UNIT_US
                deltas.append(delta)
                symbols.append(SMALL_DELTA if 0 <= delta <= 0xFF else LARGE_DELTA)
            seq += 1
        while True:  # halve until it fits (the first arrival alone always does)
            chunks = encode_chunks(symbols)
            size = _HEADER.size + 2 * len(chunks) + sum(symbols)  # a symbol = its delta bytes
            if size <= _MAX_PACKET_BYTES:
                break
            del symbols[max(first - base + 1, len(symbols) // 2):]
            while symbols[-1] == NOT_RECEIVED:
                symbols.pop()
            del deltas[sum(1 for s in symbols if s != NOT_RECEIVED):]
        self._next_seq = base + len(symbols)
        body = bytearray()
        for symbol, delta in zip((s for s in symbols if s != NOT_RECEIVED), deltas, strict=True):
            body += struct.pack("!B" if symbol == SMALL_DELTA else "!h", delta)
        padding = -(size) % 4
        packet = bytearray(_HEADER.pack(
            0x80 | (0x20 if padding else 0) | FMT_TRANSPORT_FEEDBACK, RTCP_RTPFB,
            (size + padding) // 4 - 1, self.sender_ssrc, self.media_ssrc, base & 0xFFFF,
            len(symbols), ((reference & 0xFFFFFF) << 8) | self.fb_pkt_count))
        self.fb_pkt_count = (self.fb_pkt_count + 1) & 0xFF
        packet += struct.pack(f"!{len(chunks)}H", *chunks)
        packet += body
        if padding:
            packet += bytes(padding - 1) + bytes([padding])
        return bytes(packet)

    def _forget(self) -> None:
        cutoff = self._newest_us - _HISTORY_US
        next_seq = self._next_seq if self._next_seq is not None else 0
        old = [s for s, t in self._arrivals.items() if t < cutoff and s < next_seq]
        for seq in old:
            del self._arrivals[seq]
        if old:
            self._floor = max(self._floor, max(old))
