"""sfu.twcc: transport feedback packets (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1)
built from recorded arrivals, checked byte for byte against the draft's layout and parsed
back for arbitrary arrival patterns."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sfu.twcc import (
    DELTA_UNIT_US,
    LARGE_DELTA,
    NOT_RECEIVED,
    REFERENCE_UNIT_US,
    SMALL_DELTA,
    TwccRecorder,
    decode_chunks,
    encode_chunks,
    parse_feedback,
)

T0 = 64_000_000  # µs: exactly reference time 1000 (64 ms units)


@pytest.mark.parametrize(
    ("symbols", "words"),
    [
        # Run-length chunks (§3.1.3): 0 | symbol (2 bits) | run length (13 bits).
        ([NOT_RECEIVED] * 0x1FFF, [0x1FFF]),
        ([SMALL_DELTA] * 14, [0x200E]),
        ([LARGE_DELTA] * 7, [0x4007]),
        ([SMALL_DELTA] * 200, [0x20C8]),
        # Status vector chunks (§3.1.4): 1 | S | symbols.
        ([SMALL_DELTA, NOT_RECEIVED] * 7, [0xAAAA]),  # S=0: fourteen 1-bit symbols
        ([SMALL_DELTA] * 4 + [LARGE_DELTA] * 3, [0xD56A]),  # S=1: seven 2-bit symbols
        ([SMALL_DELTA, NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA], [0xD180]),  # padded with 0s
        # A run that outgrows a vector is split: vector of 7, then a run.
        ([LARGE_DELTA] + [SMALL_DELTA] * 20, [0xE555, 0x200E]),
        ([NOT_RECEIVED] * 0x2000, [0x1FFF, 0x0001]),
    ],
)
def test_status_chunks(symbols: list[int], words: list[int]) -> None:
    assert encode_chunks(symbols) == words
    assert decode_chunks(words, len(symbols)) == symbols


def test_packet_bytes_follow_the_draft_layout() -> None:
    recorder = TwccRecorder(sender_ssrc=1)
    recorder.record(10, T0 + 1_000, media_ssrc=2)  # 4 units after the reference time
    recorder.record(12, T0 + 3_000, media_ssrc=2)  # 8 units later; 11 never arrives
    recorder.record(13, T0 + 103_000, media_ssrc=2)  # 400 units: a large (2-byte) delta
    (packet,) = recorder.build_feedback()
    assert packet == bytes.fromhex(
        "af cd 0006"  # V=2 P=1 FMT=15, PT=205 (RTPFB), 7 words
        "00000001 00000002"  # sender SSRC, media SSRC
        "000a 0004"  # base sequence number 10, 4 statuses
        "0003e8 00"  # reference time 1000 × 64 ms, feedback packet count 0
        "d180"  # 2-bit vector: small, not received, small, large
        "04 08 0190"  # receive deltas, 250 µs units
        "00 02"  # RFC 3550 padding, its length last
    )
    feedback = parse_feedback(packet)
    assert feedback.arrivals_us() == {10: T0 + 1_000, 12: T0 + 3_000, 13: T0 + 103_000}
    assert recorder.build_feedback() == []


def test_sequence_numbers_wrap() -> None:
    recorder = TwccRecorder(7)
    for i, seq in enumerate((65534, 65535, 0, 1)):
        recorder.record(seq, T0 + i * 1_000)
    (packet,) = recorder.build_feedback()
    feedback = parse_feedback(packet)
    assert feedback.base_seq == 65534
    assert sorted(feedback.arrivals_us()) == [0, 1, 65534, 65535]


def test_feedback_packet_count_increments_and_a_late_packet_is_reported_again() -> None:
    recorder = TwccRecorder(7)
    recorder.record(1, T0)
    recorder.record(3, T0 + 1_000)
    first = parse_feedback(recorder.build_feedback()[0])
    assert first.statuses == (SMALL_DELTA, NOT_RECEIVED, SMALL_DELTA)
    recorder.record(2, T0 + 2_000)  # reordered: arrives after its report
    second = parse_feedback(recorder.build_feedback()[0])
    assert (second.base_seq, second.fb_pkt_count) == (2, 1)
    assert second.arrivals_us() == {2: T0 + 2_000, 3: T0 + 1_000}  # negative delta
    assert second.statuses == (SMALL_DELTA, LARGE_DELTA)


def test_duplicates_count_once_and_old_packets_are_forgotten() -> None:
    recorder = TwccRecorder(7)
    recorder.record(5, T0)
    recorder.record(5, T0 + 5_000)
    assert parse_feedback(recorder.build_feedback()[0]).arrivals_us() == {5: T0}
    recorder.record(6, T0 + 600_000)
    recorder.build_feedback()  # 5 is reported and over 500 ms old: forgotten
    recorder.record(5, T0 + 700_000)  # a duplicate too late to be told apart
    assert recorder.build_feedback() == []


def test_many_arrivals_split_into_packets_of_at_most_1200_bytes() -> None:
    recorder = TwccRecorder(7)
    for seq in range(3000):
        # Alternate 0 and 70 ms gaps so every other delta needs two bytes.
        recorder.record(seq, T0 + (seq // 2) * 70_000 + (seq % 2) * 10)
    packets = recorder.build_feedback()
    assert len(packets) > 1
    seen: dict[int, int] = {}
    for packet in packets:
        assert len(packet) <= 1200 and len(packet) % 4 == 0
        seen.update(parse_feedback(packet).arrivals_us())
    assert sorted(seen) == list(range(3000))


def test_a_gap_beyond_a_16_bit_delta_starts_a_new_packet() -> None:
    recorder = TwccRecorder(7)
    recorder.record(1, T0)
    recorder.record(2, T0 + 9_000_000)  # 36000 units > 32767
    packets = [parse_feedback(p) for p in recorder.build_feedback()]
    assert [p.base_seq for p in packets] == [1, 2]
    assert packets[1].arrivals_us() == {2: T0 + 9_000_000}


def test_reference_time_wraps_at_24_bits() -> None:
    recorder = TwccRecorder(7)
    arrival = (1 << 24) * REFERENCE_UNIT_US + 5 * REFERENCE_UNIT_US + 1_000
    recorder.record(1, arrival)
    feedback = parse_feedback(recorder.build_feedback()[0])
    assert feedback.reference_time == 5
    assert feedback.arrivals_us() == {1: 5 * REFERENCE_UNIT_US + 1_000}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes.fromhex("8fcd0004000000010000000200010001000001"),  # shorter than announced
        bytes.fromhex("81cd0004000000010000000200010001000001002001"),  # FMT 1 (NACK)
        bytes.fromhex("8fcc0004000000010000000200010001000001002001"),  # PT 204
        bytes.fromhex("8fcd000400000001000000020001000500000100200100"),  # deltas missing
    ],
)
def test_parse_refuses_what_is_not_transport_feedback(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_feedback(data)


@given(st.binary(max_size=64))
def test_parse_raises_only_value_error(data: bytes) -> None:
    try:
        parse_feedback(b"\x8f\xcd" + struct.pack("!H", len(data) // 4 + 3) + data)
    except ValueError:
        pass


# One arrival: (sequence step, arrival step in µs, build feedback after it?).
_arrivals = st.lists(
    st.tuples(
        st.integers(min_value=-3, max_value=40),  # reordering, duplicates, losses
        st.integers(min_value=-20_000, max_value=300_000),  # jitter, pauses
        st.booleans(),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(_arrivals, st.integers(min_value=0, max_value=0xFFFF))
@example([(0, 0, False), (-1, 0, False)], 0)  # 65535 arriving after 0: unwraps to -1
def test_feedback_reports_what_was_recorded(arrivals: list[tuple[int, int, bool]], start: int) -> None:
    """Parse every packet built and compare with a model of what was recorded: each
    arrival is reported received (within half a delta unit), never a sequence number that
    had not arrived when the packet was built; packet counts run on; each packet fits
    1200 bytes.  The model forgets like the recorder: a sequence number at or below one
    reported over 500 ms before the newest arrival is too old to tell from a duplicate."""
    recorder = TwccRecorder(0x1234)
    first_arrival: dict[int, int] = {}  # unwrapped seq -> first arrival, µs
    floor = start - 0x10000  # the model's forgotten frontier (unwrapped)
    reported: set[int] = set()  # 16-bit sequence numbers reported received
    counts: list[int] = []
    wrap_us = (1 << 24) * REFERENCE_UNIT_US

    def check(packets: list[bytes]) -> None:
        nonlocal floor
        by_seq16 = {u & 0xFFFF: t for u, t in first_arrival.items()}
        for packet in packets:
            assert len(packet) <= 1200 and len(packet) % 4 == 0
            feedback = parse_feedback(packet)
            assert (feedback.sender_ssrc, feedback.media_ssrc) == (0x1234, 0xBEEF)
            counts.append(feedback.fb_pkt_count)
            for seq16, got_us in feedback.arrivals_us().items():
                assert seq16 in by_seq16, (seq16, feedback)
                assert abs(got_us - by_seq16[seq16] % wrap_us) <= DELTA_UNIT_US // 2
                reported.add(seq16)
        newest = max(first_arrival.values())
        old = [u for u, t in first_arrival.items() if t < newest - 500_000]
        floor = max([floor, *old])

    unwrapped, now = start, 10 * REFERENCE_UNIT_US
    for seq_step, time_step, build in arrivals:
        unwrapped, now = unwrapped + seq_step, max(0, now + time_step)
        recorder.record(unwrapped & 0xFFFF, now, media_ssrc=0xBEEF)
        if unwrapped > floor:
            first_arrival.setdefault(unwrapped, now)
        if build:
            check(recorder.build_feedback())
    check(recorder.build_feedback())
    assert counts == [i & 0xFF for i in range(len(counts))]
    assert {u & 0xFFFF for u in first_arrival} == reported
