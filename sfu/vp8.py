"""VP8 payload descriptor (RFC 7741 §4.2): temporal layer info and per-consumer munging.

The descriptor opens every VP8 RTP payload::

         0 1 2 3 4 5 6 7
        +-+-+-+-+-+-+-+-+
        |X|R|N|S|R| PID | (REQUIRED)
        +-+-+-+-+-+-+-+-+
   X:   |I|L|T|K| RSV   | (OPTIONAL)
        +-+-+-+-+-+-+-+-+
   I:   |M| PictureID   | (OPTIONAL)   M = 1: 15-bit PictureID, one more octet follows
        +-+-+-+-+-+-+-+-+
   L:   |   TL0PICIDX   | (OPTIONAL)
        +-+-+-+-+-+-+-+-+
   T/K: |TID|Y| KEYIDX  | (OPTIONAL)   present when T or K is set
        +-+-+-+-+-+-+-+-+

* :func:`temporal_info` — ``(tid, layer_sync)`` of one packet; the Producer calls it once
  per publisher packet, so it is a few byte reads and returns a prebuilt tuple.
* :class:`Vp8Munger` — one per video Consumer: keeps PictureID (15 bit), TL0PICIDX (8 bit)
  and KEYIDX (5 bit) continuous in what the viewer receives while the Consumer drops
  temporal layers or switches source (simulcast layer, replaced publisher), like LiveKit's
  ``codecmunger/vp8.go`` and mediasoup's ``VP8::EncodingContext``.  docs/layers.md
  describes how the Consumer drives it.
* :func:`parse_descriptor` — every field as a :class:`Vp8Descriptor` (tests, tools; not
  for the per-packet path).
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from dataclasses import dataclass

# (tid, layer_sync) per value of the T/K octet's top three bits (TID:2, Y:1).  A TID 0
# frame depends only on TID 0 frames by definition, so its layer_sync is always True.
_TEMPORAL = tuple((v >> 1, bool(v & 1) or v >> 1 == 0) for v in range(8))
_NO_TEMPORAL = (0, True)

PICTURE_ID_MOD = 1 << 15
TL0PICIDX_MOD = 1 << 8
KEYIDX_MOD = 1 << 5
_PID_MASK = PICTURE_ID_MOD - 1
_PID_HALF = PICTURE_ID_MOD >> 1


def temporal_info(payload: bytes) -> tuple[int, bool]:
    """``(tid, layer_sync)`` of a VP8 RTP payload (RFC 7741 §4.2: TID and Y).

    ``tid`` is the temporal layer (0..3), ``layer_sync`` the Y bit: the frame depends only
    on temporal layer 0 frames (always ``True`` for ``tid`` 0).  ``(0, True)`` when the
    descriptor carries no T bit or the payload is truncated.  Never raises; allocates
    nothing (the result is one of nine prebuilt tuples).
    """
    try:
        if not payload[0] & 0x80:
            return _NO_TEMPORAL
        x = payload[1]
        if not x & 0x20:  # T clear: TID/Y absent (or to be ignored when only K is set)
            return _NO_TEMPORAL
        if x & 0x80:  # I: PictureID, 1 or 2 octets
            pos = 4 if payload[2] & 0x80 else 3
        else:
            pos = 2
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        return _TEMPORAL[payload[pos] >> 5]
    except IndexError:  # truncated (zero-cost when not raised, Python 3.11)
        return _NO_TEMPORAL


@dataclass(slots=True, frozen=True)
class Vp8Descriptor:
    """Every field of one VP8 payload descriptor (RFC 7741 §4.2).

    Optional fields are ``None`` when absent; ``picture_id_bits`` is 7 or 15 (0 when no
    PictureID); ``size`` is the descriptor's length in octets (the VP8 payload header
    follows it); ``keyframe`` is the P bit of that header read as "key frame" on the first
    packet of partition 0 (RFC 7741 §4.3).
    """

    non_reference: bool
    start: bool
    partition: int
    picture_id: int | None
    picture_id_bits: int
    tl0picidx: int | None
    tid: int | None
    layer_sync: bool | None
    keyidx: int | None
    size: int
    keyframe: bool


def parse_descriptor(payload: bytes) -> Vp8Descriptor | None:
    """The payload's descriptor, or ``None`` when it is truncated (RFC 7741 §4.2)."""
    n = len(payload)
    if n < 1:
        return None
    b0 = payload[0]
    pos = 1
    picture_id = tl0 = tid = keyidx = None
    layer_sync = None
    bits = 0
    if b0 & 0x80:
        if n < 2:
            return None
        x = payload[1]
        pos = 2
        if x & 0x80:
            if pos >= n:
                return None
            if payload[pos] & 0x80:
                if pos + 1 >= n:
                    return None
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                bits = 15
                pos += 2
            else:
                picture_id = payload[pos]
                bits = 7
                pos += 1
        if x & 0x40:
            if pos >= n:
                return None
            tl0 = payload[pos]
            pos += 1
        if x & 0x30:
            if pos >= n:
                return None
            tk = payload[pos]
            pos += 1
            if x & 0x20:
                tid = tk >> 6
                layer_sync = bool(tk & 0x20)
            if x & 0x10:
                keyidx = tk & 0x1F
    start = bool(b0 & 0x10)
    partition = b0 & 0x07
    keyframe = start and partition == 0 and pos < n and not payload[pos] & 0x01
    return Vp8Descriptor(
        non_reference=bool(b0 & 0x20), start=start, partition=partition,
        picture_id=picture_id, picture_id_bits=bits, tl0picidx=tl0, tid=tid,
        layer_sync=layer_sync, keyidx=keyidx, size=pos, keyframe=keyframe,
    )


def _newer(a: int, b: int) -> bool:
    """15-bit PictureID ``a`` is after ``b`` (serial number arithmetic, half the space)."""
    return 0 < ((a - b) & _PID_MASK) < _PID_HALF


class Vp8Munger:
    """Keeps one Consumer's VP8 PictureID, TL0PICIDX and KEYIDX continuous (RFC 7741 §4.2).

    A viewer's decoder (libwebrtc's ``RtpVp8RefFinder``) finds a frame's references from
    these fields: a PictureID gap means "a frame is missing" and stalls the frames after it,
    a TL0PICIDX gap means "a base-layer frame is missing".  So when the Consumer drops a
    temporal layer the output PictureIDs must close up, and when it switches source the
    new source's numbers must continue the old ones.  Output = input + offset:

    * ``start(payload)`` — on the key frame the output (re)starts on.  The first start
      keeps the input numbers (offsets 0, ``key`` ``None``); later starts continue from
      the last output PictureID + 1, TL0PICIDX + 1 and KEYIDX + 1.
    * ``drop(payload) -> bool`` — a packet the Consumer does not forward (a temporal layer
      above its target).  The first packet seen of a new droppable picture (TID > 0, or N
      set without TL0PICIDX) takes one from the PictureID offset, so the pictures after it
      close up; a dropped reference picture (TID 0) keeps its gap, as a loss would (the
      frames after it cannot be decoded without it).  Returns ``False`` — forward it
      instead — for a packet of a picture that is not newer than the newest one seen and
      was not dropped: a late packet of a forwarded picture, or a late whole picture whose
      output number sits between pictures already sent (LiveKit forwards those too) —
      unless it is older than the key frame started on, or than every remembered drop.
    * ``forwarded(payload)`` — a forwarded packet; only the first packet of each frame
      matters (``MediaPacket.frame_start``), so the Consumer may call it only for those.
      It tells the munger the newest picture, which ``drop`` and the next ``start`` need
      (the munger never sees forwarded packets otherwise: consumers share rewrites).
    * ``key`` — ``None`` while output == input; otherwise a ``bytes`` naming the offsets
      and the recent closed-up drops, i.e. everything ``rewrite`` depends on: consumers
      with equal keys share one rewritten payload per packet (bytes cache their hash).
    * ``rewrite(payload) -> bytes`` — the payload with the descriptor's PictureID,
      TL0PICIDX and KEYIDX mapped; every other byte is kept.  A packet of a picture older
      than recent drops gets the offset that was in force for it (the last ``WINDOW``
      closed-up drops are remembered), so late and retransmitted packets get the same
      output PictureID as the rest of their frame.

    PictureIDs are handled as 15-bit numbers.  A 7-bit PictureID (M = 0) is read as the
    15-bit value nearest the newest picture seen with those low 7 bits — right both for a
    sender that wraps at 127 and for one (aiortc) that writes values below 128 in 7 bits.
    Output width: 15 bits when the input had 15, or when the mapped value is >= 128 (the
    payload then grows by one octet: M = 1 plus a second octet, as LiveKit does); else 7.
    RFC 7741 §4.2 lets the width change within a stream.  A payload without the extended
    descriptor (X = 0) or without a field passes that field unchanged.
    """

    WINDOW = 64
    """Closed-up drops remembered for late packets (~3 s of an L1T3 stream kept at TID 0)."""

    __slots__ = (
        "key", "started", "pictures_dropped", "late_forwards",
        "_pid_off", "_tl0_off", "_kix_off", "_newest", "_newest_tl0", "_newest_kix",
        "_out_pid", "_out_tl0", "_out_kix", "_closed", "_closed_ids", "_dropped", "_last_drop",
        "_start_pid",
    )

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.started = False
        self.pictures_dropped = 0  # pictures drop() removed from the output (closed up)
        self.late_forwards = 0  # drop() calls answered False
        self._pid_off = 0
        self._tl0_off = 0
        self._kix_off = 0
        self._newest = -1  # newest input PictureID (15-bit) of the current source, -1 unknown
        self._start_pid = -1  # PictureID of the key frame the output started on
        self._newest_tl0 = -1
        self._newest_kix = -1
        self._out_pid = -1  # last output numbers carried over sources without the field
        self._out_tl0 = -1
        self._out_kix = -1
        self._closed: list[int] = []  # input PictureIDs of closed-up drops, unwrapped, ascending
        self._closed_ids = array("H")  # the same, as sent in the key
        self._dropped: list[int] = []  # input PictureIDs of every dropped picture, oldest first
        self._last_drop = -1

    # ------------------------------------------------------------ per frame / drop
    def _unwrap7(self, v: int) -> int:
        newest = self._newest
        if newest < 0:
            return v
        d = (v - newest) & 0x7F
        if d >= 64:
            d -= 128
        return (newest + d) & _PID_MASK

    def start(self, payload: bytes) -> None:
        """The output (re)starts on this packet's (key) frame (RFC 7741 §4.2 fields).

        Offsets are set so that the frame gets the last output PictureID + 1, TL0PICIDX + 1
        and KEYIDX + 1; the first start of the munger keeps the input numbers.
        """
        d = parse_descriptor(payload)
        pid = d.picture_id if d is not None else None
        tl0 = d.tl0picidx if d is not None else None
        kix = d.keyidx if d is not None else None
        if self.started:
            self._remember_output()
        last_pid, last_tl0, last_kix = self._out_pid, self._out_tl0, self._out_kix
        self._pid_off = (last_pid + 1 - pid) & _PID_MASK if pid is not None and last_pid >= 0 else 0
        self._tl0_off = (last_tl0 + 1 - tl0) & 0xFF if tl0 is not None and last_tl0 >= 0 else 0
        self._kix_off = (last_kix + 1 - kix) & 0x1F if kix is not None and last_kix >= 0 else 0
        self._newest = self._start_pid = pid if pid is not None else -1
        self._newest_tl0 = tl0 if tl0 is not None else -1
        self._newest_kix = kix if kix is not None else -1
        self._closed = []
        self._closed_ids = array("H")
        self._dropped = []
        self._last_drop = -1
        self.started = True
        self._rekey()

    def _remember_output(self) -> None:
        """Carry the current source's last output numbers into ``_out_*``."""
        if self._newest >= 0:
            self._out_pid = (self._newest + self._pid_off) & _PID_MASK
        if self._newest_tl0 >= 0:
            self._out_tl0 = (self._newest_tl0 + self._tl0_off) & 0xFF
        if self._newest_kix >= 0:
            self._out_kix = (self._newest_kix + self._kix_off) & 0x1F

    def forwarded(self, payload: bytes) -> None:
        """A packet the Consumer forwards: remembers the newest picture (and its TL0PICIDX
        and KEYIDX).  Only a frame's first packet can change anything."""
        if len(payload) < 3 or not payload[0] & 0x80:
            return
        x = payload[1]
        if not x & 0x80:
            return
        b = payload[2]
        if b & 0x80:
            if len(payload) < 4:
                return
            pid = ((b & 0x7F) << 8) | payload[3]
            pos = 4
        else:
            pid = self._unwrap7(b)
            pos = 3
        newest = self._newest
        if newest >= 0 and not _newer(pid, newest):
            return
        self._newest = pid
        self._read_tl0_kix(payload, x, pos)

    def _read_tl0_kix(self, payload: bytes, x: int, pos: int) -> None:
        n = len(payload)
        if x & 0x40:
            if pos < n:
                self._newest_tl0 = payload[pos]
            pos += 1
        if x & 0x10 and pos < n:
            self._newest_kix = payload[pos] & 0x1F

    def drop(self, payload: bytes) -> bool:
        """A packet the Consumer does not forward; ``False``: forward it after all.

        Call it for packets of the source being forwarded only (not for other simulcast
        layers: their PictureIDs are another numbering), and for all packets of a frame or
        none (decide per frame; a frame that was partly forwarded is answered ``False``).
        """
        if not self.started or len(payload) < 3 or not payload[0] & 0x80:
            return True
        x = payload[1]
        if not x & 0x80:
            return True  # no PictureID: nothing to keep continuous for a TID > 0 drop
        b = payload[2]
        if b & 0x80:
            if len(payload) < 4:
                return True
            pid = ((b & 0x7F) << 8) | payload[3]
            pos = 4
        else:
            pid = self._unwrap7(b)
            pos = 3
        if pid == self._last_drop:
            return True  # the rest of the picture being dropped
        newest = self._newest
        if newest >= 0 and not _newer(pid, newest):
            dropped = self._dropped
            if pid in dropped:
                return True  # a late packet of a picture dropped before
            start = self._start_pid
            if (start >= 0 and _newer(start, pid)) or (
                len(dropped) >= self.WINDOW and _newer(dropped[0], pid)
            ):
                return True  # before the key frame started on, or too old to place
            self.late_forwards += 1
            return False
        # A new picture: drop it.
        self._newest = pid
        self._last_drop = pid
        dropped = self._dropped
        dropped.append(pid)
        if len(dropped) > self.WINDOW:
            del dropped[0]
        self._read_tl0_kix(payload, x, pos)
        droppable = False
        n = len(payload)
        if x & 0x20:  # T: the TID octet follows PictureID and TL0PICIDX
            tpos = pos + 1 if x & 0x40 else pos
            droppable = tpos < n and payload[tpos] >> 6 > 0
        elif payload[0] & 0x20 and not x & 0x40:  # N without temporal structure
            droppable = True
        if droppable:
            closed = self._closed  # extended (unwrapped) numbers: bisect finds late ones
            closed.append(closed[-1] + ((pid - closed[-1]) & _PID_MASK) if closed else pid)
            ids = self._closed_ids
            ids.append(pid)
            if len(closed) > self.WINDOW:
                del closed[0]
                del ids[0]
            self._pid_off = (self._pid_off - 1) & _PID_MASK
            self.pictures_dropped += 1
            self._rekey()
        return True

    def _rekey(self) -> None:
        if not (self._pid_off or self._tl0_off or self._kix_off or self._closed):
            self.key = None
            return
        self.key = _KEY_HEAD(self._pid_off, self._tl0_off, self._kix_off) + self._closed_ids.tobytes()

    # ------------------------------------------------------------------ per packet
    def rewrite(self, payload: bytes) -> bytes:
        """``payload`` with PictureID, TL0PICIDX and KEYIDX mapped (RFC 7741 §4.2).

        A pure function of the payload and ``key`` (and, for a 7-bit PictureID, of the
        newest picture seen).  Returns ``payload`` itself when it has no extended
        descriptor or is truncated.  Never raises.  One new ``bytes`` (header + a copy of
        the rest of the payload).
        """
        n = len(payload)
        if n < 3 or not payload[0] & 0x80:
            return payload
        x = payload[1]
        if not x & 0x80:
            return self._rewrite_slow(payload, x, -1, 2)
        b = payload[2]
        if b & 0x80:
            if n < 4:
                return payload
            pid = ((b & 0x7F) << 8) | payload[3]
            wide = True
        else:
            pid = self._unwrap7(b)
            wide = False
        o = pid + self._pid_off
        closed = self._closed
        if closed:
            last = closed[-1]
            d = (pid - last) & _PID_MASK
            if d >= _PID_HALF:  # older than the last closed-up drop: add back those after it
                o += len(closed) - bisect_right(closed, last - ((last - pid) & _PID_MASK))
        o = (o & _PID_MASK) | 0x8000
        if wide:
            # The usual layouts (libwebrtc): I only, I+L+T, I+L+T+K; 15-bit PictureID.
            flags = x & 0x70
            if flags == 0:
                return _PACK_I(payload[0], x, o) + payload[4:]
            if flags == 0x60 and n > 5:
                return _PACK_IL(payload[0], x, o, (payload[4] + self._tl0_off) & 0xFF) + payload[5:]
            if flags == 0x70 and n > 6:
                tk = payload[5]
                return _PACK_ILK(
                    payload[0], x, o, (payload[4] + self._tl0_off) & 0xFF,
                    (tk & 0xE0) | (((tk & 0x1F) + self._kix_off) & 0x1F),
                ) + payload[6:]
            return self._rewrite_slow(payload, x, o, 4)
        return self._rewrite_slow(payload, x, o if o >= 0x8080 else o & 0x7F, 3)

    def _rewrite_slow(self, payload: bytes, x: int, o: int, pos: int) -> bytes:
        """Any other layout: ``o`` is the output PictureID octets' value (bit 15 set for
        the 15-bit form, -1 without PictureID), ``pos`` where the input's L field is."""
        n = len(payload)
        head = bytearray(payload[:2])
        if o >= 0x8000:
            head += bytes((o >> 8, o & 0xFF))
        elif o >= 0:
            head.append(o)
        if x & 0x40:  # L: TL0PICIDX
            if pos >= n:
                return payload
            head.append((payload[pos] + self._tl0_off) & 0xFF)
            pos += 1
        if x & 0x10:  # K: KEYIDX shares its octet with TID and Y
            if pos >= n:
                return payload
            tk = payload[pos]
            head.append((tk & 0xE0) | (((tk & 0x1F) + self._kix_off) & 0x1F))
            pos += 1
        if x & 0x20 and pos >= n:
            return payload  # truncated before the TID octet
        # With T alone the TID octet is unchanged: it starts the copied tail.
        return bytes(head) + payload[pos:]


_PACK_I = struct.Struct("!BBH").pack
_PACK_IL = struct.Struct("!BBHB").pack
_PACK_ILK = struct.Struct("!BBHBB").pack
_KEY_HEAD = struct.Struct("=HBB").pack
