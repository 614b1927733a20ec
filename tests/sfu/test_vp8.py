"""sfu.vp8: the VP8 payload descriptor (RFC 7741 §4.2) read per packet, and the per-consumer
munger that keeps PictureID / TL0PICIDX / KEYIDX continuous when a consumer drops temporal
layers or switches source.

Payloads are built here from the RFC's layout (not with sfu.vp8), streams follow libwebrtc's
L1T3 pattern (TID 0, 2, 1, 2, ...; TL0PICIDX counts TID 0 frames), and a small consumer
model drives the munger the way sfu.consumer does (docs/layers.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.rtp import vp8_is_keyframe_start
from sfu.vp8 import Vp8Munger, parse_descriptor, temporal_info

BODY = bytes(range(40, 90))


def vp8(
    pid: int | None = None,
    *,
    bits: int = 15,
    tl0: int | None = None,
    tid: int | None = None,
    y: bool = False,
    keyidx: int | None = None,
    start: bool = True,
    key: bool = False,
    n: bool = False,
    body: bytes = BODY,
) -> bytes:
    """A VP8 RTP payload laid out as RFC 7741 §4.2 draws it, then a 3-octet VP8 frame tag."""
    ext = (pid is not None) << 7 | (tl0 is not None) << 6 | (tid is not None) << 5 | (keyidx is not None) << 4
    out = bytearray([(0x80 if ext else 0) | (0x20 if n else 0) | (0x10 if start else 0)])
    if ext:
        out.append(ext)
    if pid is not None:
        if bits == 15:
            out += bytes((0x80 | pid >> 8, pid & 0xFF))
        else:
            assert pid < 128
            out.append(pid)
    if tl0 is not None:
        out.append(tl0)
    if tid is not None or keyidx is not None:
        out.append((tid or 0) << 6 | y << 5 | (keyidx or 0))
    tag = 0x00 if key else 0x01  # P bit of the VP8 frame tag: 0 = key frame (RFC 6386 §9.1)
    out += bytes((tag, 0x02, 0x00)) + body
    return bytes(out)


# ------------------------------------------------------------------- temporal_info
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (vp8(300, tl0=5, tid=2, y=True), (2, True)),
        (vp8(300, tl0=5, tid=1, y=False), (1, False)),
        (vp8(300, tl0=5, tid=0, y=False), (0, True)),  # a TID 0 frame only depends on TID 0
        (vp8(5, bits=7, tl0=5, tid=3, y=True), (3, True)),  # 7-bit PictureID: one octet
        (vp8(None, tl0=9, tid=2), (2, False)),  # no PictureID
        (vp8(None, tid=1, y=True), (1, True)),  # T alone
        (vp8(300, keyidx=7), (0, True)),  # K without T: TID/Y must be ignored
        (vp8(300), (0, True)),  # no T
        (vp8(None), (0, True)),  # no extension at all
        (bytes((0x90, 0x20)), (0, True)),  # truncated before the TID octet
        (b"", (0, True)),
    ],
)
def test_temporal_info(payload: bytes, expected: tuple[int, bool]) -> None:
    assert temporal_info(payload) == expected


@given(st.binary(max_size=12))
@settings(max_examples=500, deadline=None)
def test_temporal_info_agrees_with_the_full_parser_on_any_bytes(payload: bytes) -> None:
    d = parse_descriptor(payload)
    if d is None or d.tid is None:
        assert temporal_info(payload) == (0, True)
    else:
        assert temporal_info(payload) == (d.tid, d.layer_sync or d.tid == 0)


@given(st.binary(min_size=1, max_size=12))
@settings(max_examples=500, deadline=None)
def test_parser_finds_the_same_key_frames_as_the_producer(payload: bytes) -> None:
    d = parse_descriptor(payload)
    assert (d is not None and d.keyframe) == vp8_is_keyframe_start(payload)


def test_parse_descriptor_reads_every_field() -> None:
    d = parse_descriptor(vp8(0x1234, tl0=200, tid=2, y=True, keyidx=17, n=True, key=True))
    assert d is not None
    assert (d.picture_id, d.picture_id_bits, d.tl0picidx, d.tid, d.layer_sync, d.keyidx) == (
        0x1234, 15, 200, 2, True, 17)
    assert d.non_reference and d.start and d.partition == 0 and d.keyframe
    assert d.size == 6
    assert parse_descriptor(bytes((0x80, 0x80, 0x81))) is None  # 15-bit PictureID cut short


# ------------------------------------------------------------------- stream model
@dataclass
class Packet:
    picture: int  # index of the picture in the stream
    pid: int  # input PictureID (15-bit value)
    tl0: int
    tid: int
    keyidx: int
    first: bool
    keyframe: bool
    bits: int
    payload: bytes


def l1t3_stream(
    pictures: int, *, pid0: int, tl0_0: int = 0, kix0: int = 0, bits: int = 15, seed: int = 0,
    key_every: int = 0,
) -> list[Packet]:
    """Packets of an L1T3 stream (TID 0,2,1,2...): 1-3 packets per picture, key frame first."""
    rnd = random.Random(seed)
    out: list[Packet] = []
    tl0 = tl0_0
    kix = kix0
    for i in range(pictures):
        tid = (0, 2, 1, 2)[i % 4]
        keyframe = i == 0 or (key_every and i % key_every == 0)
        if keyframe:
            tid = 0
        if i and tid == 0:
            tl0 = (tl0 + 1) & 0xFF
        if i and keyframe:
            kix = (kix + 1) & 0x1F
        pid = (pid0 + i) & 0x7FFF
        if bits == 15:
            wire_bits, wire_pid = 15, pid
        elif bits == 7:  # a sender that wraps its 7-bit PictureID at 127
            wire_bits, wire_pid = 7, pid & 0x7F
        else:  # aiortc: the same 15-bit counter, written in one octet while below 128
            wire_bits, wire_pid = (7, pid) if pid < 128 else (15, pid)
        for j in range(rnd.randint(1, 3)):
            body = bytes([i & 0xFF, j]) + BODY
            payload = vp8(wire_pid, bits=wire_bits, tl0=tl0, tid=tid, y=tid > 0, keyidx=kix,
                          start=j == 0, key=keyframe and j == 0, body=body)
            out.append(Packet(i, pid, tl0, tid, kix, j == 0, bool(keyframe and j == 0), wire_bits, payload))
    return out


@dataclass
class Viewer:
    """What a Consumer does with a VP8 source, reduced to the munger calls (docs/layers.md)."""

    munger: Vp8Munger = field(default_factory=Vp8Munger)
    started: bool = False
    sent: list[tuple[Packet, bytes]] = field(default_factory=list)
    refused: int = 0

    def offer(self, p: Packet, max_tid: int, restart: bool = False) -> None:
        m = self.munger
        if restart:
            self.started = False
        if not self.started:
            if not p.keyframe:
                return
            m.start(p.payload)
            self.started = True
        elif p.tid > max_tid:
            if m.drop(p.payload):
                return
            self.refused += 1
        m.forwarded(p.payload)
        out = p.payload if m.key is None else m.rewrite(p.payload)
        self.sent.append((p, out))

    def output(self) -> list[tuple[int, int | None, int | None, int]]:
        """(picture, output PictureID, TL0PICIDX, KEYIDX) per sent packet."""
        res = []
        for p, out in self.sent:
            d = parse_descriptor(out)
            assert d is not None
            res.append((p.picture, d.picture_id, d.tl0picidx, d.keyidx))
        return res


def assert_body_kept(src: bytes, out: bytes) -> None:
    a, b = parse_descriptor(src), parse_descriptor(out)
    assert a is not None and b is not None
    assert out[:2] == src[:2]  # first octet and I|L|T|K flags
    assert out[b.size:] == src[a.size:]  # VP8 payload header and data
    assert (b.tid, b.layer_sync) == (a.tid, a.layer_sync)


def pictures_out(viewer: Viewer, mod: int = 1 << 15) -> dict[int, int]:
    """Output PictureID per forwarded picture; every packet of a picture must agree
    (modulo ``mod``)."""
    ids: dict[int, int] = {}
    for picture, pid, _tl0, _kix in viewer.output():
        assert pid is not None
        assert ids.setdefault(picture, pid) % mod == pid % mod, f"picture {picture} sent with two PictureIDs"
    return ids


def consecutive(ids: list[int], mod: int = 1 << 15) -> bool:
    return all((b - a) % mod == 1 for a, b in zip(ids, ids[1:], strict=False))


# ------------------------------------------------------------------- munger
def test_first_start_keeps_the_input_numbers_and_needs_no_rewrite() -> None:
    stream = l1t3_stream(12, pid0=1000, tl0_0=7)
    v = Viewer()
    for p in stream:
        v.offer(p, max_tid=2)
        assert v.munger.key is None
    assert [out for _, out in v.sent] == [p.payload for p in stream]


def test_dropping_temporal_layers_closes_picture_id_gaps() -> None:
    stream = l1t3_stream(40, pid0=5000, tl0_0=250)
    v = Viewer()
    for p in stream:
        v.offer(p, max_tid=2 if p.picture < 8 else 0 if p.picture < 24 else 1)
    ids = pictures_out(v)
    sent = sorted(ids)
    assert [ids[i] for i in sent] == [(5000 + k) % 32768 for k in range(len(sent))]
    # TL0PICIDX is untouched by TID > 0 drops; everything else is kept byte for byte.
    for p, out in v.sent:
        d = parse_descriptor(out)
        assert d is not None and d.tl0picidx == p.tl0
        assert_body_kept(p.payload, out)
    assert v.munger.pictures_dropped == 40 - len(sent)
    dropped = {p.picture for p in stream} - set(sent)
    assert all(stream_tid(stream, i) > 0 for i in dropped)


def stream_tid(stream: list[Packet], picture: int) -> int:
    return next(p.tid for p in stream if p.picture == picture)


def test_late_packets_get_the_picture_id_their_frame_got() -> None:
    stream = l1t3_stream(30, pid0=100, seed=3)
    v = Viewer()
    first: list[Packet] = []
    held: list[Packet] = []
    for p in stream:
        # Every packet but the first of pictures 10 and 12 (TID 1 and TID 0) arrives late,
        # after later pictures were forwarded and TID 2 pictures dropped.
        if p.picture in (10, 12) and not p.first:
            held.append(p)
            continue
        first.append(p)
        v.offer(p, max_tid=1)
        if p.picture == 20:
            for h in held:
                v.offer(h, max_tid=1)
            held = []
    ids = pictures_out(v)  # asserts that late packets matched their picture's first packet
    assert {p.picture for p, _ in v.sent if not p.first} >= {10, 12}
    assert consecutive([ids[i] for i in sorted(ids)])


def test_a_late_whole_picture_is_forwarded_into_its_slot() -> None:
    """A TID 2 picture lost upstream and retransmitted after the next picture went out:
    dropping it now could not close its gap, so drop() answers False and the munger gives
    it the PictureID between its neighbours."""
    stream = l1t3_stream(16, pid0=32760, seed=1)  # wraps 32767 -> 0
    late = [p for p in stream if p.picture == 5]  # TID 2
    v = Viewer()
    for p in stream:
        if p.picture == 5:
            continue
        v.offer(p, max_tid=1)
        if p.picture == 6 and p.first:
            for h in late:
                v.offer(h, max_tid=1)
    assert v.refused == len(late)
    ids = pictures_out(v)
    assert 5 in ids
    assert consecutive([ids[i] for i in sorted(ids)])
    assert ids[0] == 32760


def test_late_packets_of_a_dropped_picture_stay_dropped() -> None:
    stream = l1t3_stream(12, pid0=10, seed=2)
    v = Viewer()
    for p in stream:
        v.offer(p, max_tid=1)
    before = len(v.sent)
    for p in stream:
        if p.tid == 2:
            assert v.munger.drop(p.payload) is True
    assert len(v.sent) == before


def test_packets_too_old_to_place_are_dropped() -> None:
    """Late packets from before the key frame the output started on, or older than every
    remembered drop, cannot be given a sure PictureID: drop() keeps them dropped."""
    stream = l1t3_stream(300, pid0=4000, seed=4)
    m = Vp8Munger()
    m.start(stream[0].payload)  # picture 0: the key frame, PictureID 4000
    for p in stream[1:]:
        if p.first:
            if p.tid > 0:
                assert m.drop(p.payload)
            else:
                m.forwarded(p.payload)
    assert m.drop(vp8(3990, tl0=0, tid=1)) is True  # before the key frame
    picture1 = next(p for p in stream if p.picture == 1)  # TID 2, 200 drops ago
    assert m.drop(picture1.payload) is True
    assert m.late_forwards == 0
    recent = next(p for p in stream if p.picture == 292)  # TID 0: forwarded, now late
    assert m.drop(recent.payload) is False


def test_dropping_a_reference_picture_leaves_its_gap() -> None:
    """A TID 0 picture that is not forwarded is a real loss for the viewer: the pictures
    after it cannot be decoded, so its PictureID stays missing (like a lost packet)."""
    stream = l1t3_stream(9, pid0=700)
    v = Viewer()
    for p in stream:
        if p.picture == 4:  # TID 0
            assert v.munger.drop(p.payload)
            continue
        v.offer(p, max_tid=2)
    ids = pictures_out(v)
    assert ids[5] - ids[3] == 2


@pytest.mark.parametrize("dropped_before_switch", [False, True])
def test_source_switch_continues_picture_id_tl0picidx_and_keyidx(dropped_before_switch: bool) -> None:
    low = l1t3_stream(10, pid0=20000, tl0_0=40, kix0=3)
    high = l1t3_stream(10, pid0=9, tl0_0=200, kix0=30)
    v = Viewer()
    for p in low:
        v.offer(p, max_tid=1 if dropped_before_switch else 2)
    last_pid, last_tl0, last_kix = v.output()[-1][1:]
    for i, p in enumerate(high):
        v.offer(p, max_tid=2, restart=i == 0)
    switch = v.output()[len([1 for p, _ in v.sent if p in low]):]
    assert switch[0][1:] == ((last_pid + 1) % 32768, (last_tl0 + 1) % 256, (last_kix + 1) % 32)
    ids = [pid for _, pid, _, _ in v.output()]
    seen = list(dict.fromkeys(ids))
    assert consecutive(seen)
    for p, out in v.sent:
        assert_body_kept(p.payload, out)


def test_wraparound_of_all_three_counters_across_a_switch() -> None:
    a = l1t3_stream(8, pid0=32764, tl0_0=254, kix0=31)
    b = l1t3_stream(8, pid0=12345, tl0_0=3, kix0=4)
    v = Viewer()
    for p in a:
        v.offer(p, max_tid=0)
    for i, p in enumerate(b):
        v.offer(p, max_tid=0, restart=i == 0)
    seen = list(dict.fromkeys((pid, tl0, kix) for _, pid, tl0, kix in v.output()))
    assert consecutive([s[0] for s in seen])
    assert consecutive([s[1] for s in seen], 256)  # every forwarded picture is TID 0
    assert seen[len(seen) // 2][2] == 0  # KEYIDX 31 + 1 wraps to 0 at the switch


def test_seven_bit_picture_ids_wrap_and_expand_to_fifteen_bits() -> None:
    """A sender that wraps its 7-bit PictureID at 127: the munger counts on in 15 bits, and
    the descriptor grows by one octet once the mapped value needs it."""
    first = l1t3_stream(6, pid0=30000, tl0_0=1)
    seven = l1t3_stream(150, pid0=120, tl0_0=9, bits=7, seed=5)
    v = Viewer()
    for p in first:
        v.offer(p, max_tid=2)
    for i, p in enumerate(seven):
        v.offer(p, max_tid=1, restart=i == 0)
    ids = [pid for _, pid, _, _ in v.output()]
    assert consecutive(list(dict.fromkeys(ids)))
    grown = [(p, out) for p, out in v.sent if p in seven]
    assert all(len(out) == len(p.payload) + 1 for p, out in grown)  # 30005 + ... >= 128
    for p, out in grown:
        assert_body_kept(p.payload, out)


def test_aiortc_style_small_ids_in_seven_bits_after_the_wrap() -> None:
    """aiortc writes PictureIDs below 128 in one octet: 32767 -> 0 (7 bits) -> ... -> 128."""
    stream = l1t3_stream(200, pid0=32700, bits=8, seed=7)  # bits=8: 7 bits only below 128
    assert any(p.bits == 7 for p in stream) and stream[-1].bits == 15
    v = Viewer()
    for p in stream:
        v.offer(p, max_tid=1)
    ids = pictures_out(v)
    assert consecutive([ids[i] for i in sorted(ids)])


def test_payloads_without_the_extended_descriptor_pass_unchanged() -> None:
    m = Vp8Munger()
    plain = vp8(None, key=True)
    m.start(plain)
    assert m.key is None
    assert m.drop(vp8(None, start=False)) is True
    assert m.rewrite(plain) is plain
    # After a switch from a source with PictureIDs, such payloads are still passed as they are.
    m2 = Vp8Munger()
    m2.start(vp8(50, tl0=1, tid=0, key=True))
    m2.forwarded(vp8(60, tl0=3, tid=0))
    m2.start(vp8(9000, tl0=100, tid=0, key=True))
    assert m2.key is not None
    assert m2.rewrite(plain) is plain


# ------------------------------------------------------------------- property
@given(
    pictures=st.integers(20, 70),
    pid0=st.integers(0, 32767),
    seed=st.integers(0, 10_000),
    caps=st.lists(st.integers(0, 2), min_size=1, max_size=6),
    late=st.lists(st.integers(0, 300), max_size=8),
    delay=st.integers(1, 12),
    bits=st.sampled_from([15, 7, 8]),
)
@settings(max_examples=200, deadline=None)
def test_any_cap_schedule_and_reordering_keeps_ids_consistent_and_gapless(
    pictures: int, pid0: int, seed: int, caps: list[int], late: list[int], delay: int, bits: int
) -> None:
    """Two viewers with different cap schedules watch one stream in which some packets
    arrive ``delay`` packets late.  For each: every packet of a picture gets one output id,
    output ids keep the input order, and the forwarded pictures' ids have no gap.  Where the
    two viewers hold equal keys, their rewrites are equal (so they may share them).  PictureIDs
    in 15 bits, in 7 bits wrapping at 127, or in 7 bits below 128 only (aiortc)."""
    stream = l1t3_stream(pictures, pid0=pid0, seed=seed, bits=bits)
    order = list(range(len(stream)))
    for i in sorted({x % len(stream) for x in late if x % len(stream) > 0}, reverse=True):
        j = min(len(order) - 1, order.index(i) + delay)
        order.insert(j, order.pop(order.index(i)))

    def cap(p: Packet, schedule: list[int]) -> int:  # decided per picture, as the Consumer does
        return schedule[p.picture * len(schedule) // pictures]

    a, b = Viewer(), Viewer()
    other = list(reversed(caps))
    for i in order:
        p = stream[i]
        a.offer(p, cap(p, caps))
        b.offer(p, cap(p, other))
        if a.munger.key is not None and a.munger.key == b.munger.key:
            assert a.munger.rewrite(p.payload) == b.munger.rewrite(p.payload)
    # A sender wrapping at 127 is passed through in 7 bits until a rewrite is needed, then
    # counted on in 15 bits: what stays continuous is the value modulo 128.
    mod = 128 if bits == 7 else 1 << 15
    for v in (a, b):
        ids = pictures_out(v, mod)
        forwarded = sorted(ids)
        assert consecutive([ids[i] for i in forwarded], mod)
        for p, out in v.sent:
            assert_body_kept(p.payload, out)


@given(st.lists(st.binary(max_size=10), min_size=1, max_size=30))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise_and_keep_the_payload_after_the_descriptor(payloads: list[bytes]) -> None:
    m = Vp8Munger()
    m.start(vp8(20000, tl0=9, tid=0, keyidx=4, key=True))
    m.forwarded(vp8(20003, tl0=10, tid=0, keyidx=4))
    m.start(vp8(7, bits=7, tl0=200, tid=0, keyidx=30, key=True))  # offsets on every field
    m.drop(vp8(9, bits=7, tl0=200, tid=2, keyidx=30))
    assert m.key is not None
    for p in payloads:
        m.drop(p)
        m.forwarded(p)
        out = m.rewrite(p)
        a, b = parse_descriptor(p), parse_descriptor(out)
        if out is p:
            continue
        assert a is not None and b is not None
        assert out[b.size:] == p[a.size:]
        assert (b.tid, b.layer_sync, b.start, b.partition) == (a.tid, a.layer_sync, a.start, a.partition)
