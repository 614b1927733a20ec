"""Forwarding path: end-to-end frames through the SFU, plus wire-level units.

* end to end: an aiortc publisher (counter pattern + tone) → SFU → an aiortc WHEP
  viewer that decodes; every frame's code reads back and the codes increase;
  the audio carries the 440 Hz tone;
* :mod:`sfu.rtp` key-frame detection (RFC 7741 VP8 descriptor, RFC 6184 H.264);
* :class:`sfu.forwarder.Forwarder` / :class:`sfu.consumer.Consumer` munging:
  key-frame gating, 16/32-bit wraparound, old packets, source switches, NACK;
* :class:`sfu.keyframe.KeyFrameRequester` throttling with a fake clock.
"""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket

from loadtest import whip_client
from sfu import forwarder as forwarder_module
from sfu import keyframe as keyframe_module
from sfu.consumer import Consumer
from sfu.forwarder import Forwarder
from sfu.keyframe import KeyFrameRequester
from sfu.producer import MediaPacket
from sfu.rtp import h264_is_keyframe_start, is_keyframe_start, seq_newer, vp8_is_keyframe_start
from tests.sfu.sfu_helpers import FRAME_TICKS, publish_pattern, read_frames, receiver_tracks

# --------------------------------------------------------------------------- end to end


async def test_viewer_decodes_counter_frames_and_tone(service: Any) -> None:
    pub = await publish_pattern(service)
    viewer = await whip_client.view(f"{service.url}/whep/demo")
    try:
        await whip_client.wait_connected(viewer.pc)
        tracks = receiver_tracks(viewer.pc)
        video = await read_frames(tracks["video"], 90, timeout=30)
        audio = [await asyncio.wait_for(tracks["audio"].recv(), 10) for _ in range(40)]
    finally:
        await viewer.close()
        await pub.close()

    codes = video.codes
    print(f"decoded {len(codes)} frames, codes {codes[0]}..{codes[-1]}, skipped {video.skipped()}")
    assert None not in codes, f"unreadable frames: {codes}"
    good = video.readable
    assert all(b > a for a, b in zip(good, good[1:], strict=False)), f"codes not increasing: {good}"
    # A gap in the codes must be a dropped frame, never a relabelled one: the decoded
    # frame's RTP-derived pts advances by one frame interval per code (aiortc's
    # decoder rounds pts to +-1 tick).
    pts = [p for c, p in zip(codes, video.pts, strict=True) if c is not None]
    for code, p in zip(good, pts, strict=True):
        assert abs((p - pts[0]) - (code - good[0]) * FRAME_TICKS) <= 2, (code, p - pts[0])
    # Loopback, no loss: at most a few frames may go missing on a loaded machine.
    assert video.skipped() <= 5, f"{video.skipped()} frames skipped: {good}"

    pcm = np.concatenate([f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in audio[15:]])
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak_hz = np.argmax(spectrum) * audio[0].sample_rate / len(pcm)
    print(f"audio: rms {rms:.0f}, peak {peak_hz:.1f} Hz")
    assert rms > 1000, "audio is silent"
    assert abs(peak_hz - 440) < 10, f"tone at {peak_hz} Hz, sent 440 Hz"


# --------------------------------------------------------------------------- sfu.rtp


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        pytest.param(bytes([0x10, 0x00, 0x9D]), True, id="S-PID0-key"),
        pytest.param(bytes([0x10, 0x01, 0x9D]), False, id="S-PID0-interframe"),
        pytest.param(bytes([0x00, 0x00, 0x9D]), False, id="not-start"),
        pytest.param(bytes([0x11, 0x00, 0x9D]), False, id="partition1"),
        pytest.param(bytes([0x90, 0x00, 0x00]), True, id="X-no-fields"),
        pytest.param(bytes([0x90, 0x80, 0x05, 0x00]), True, id="X-I-7bit"),
        pytest.param(bytes([0x90, 0x80, 0x05, 0x01]), False, id="X-I-7bit-inter"),
        # M=1: 15-bit picture id in two bytes; the low byte has P-like bit set/clear
        # so that a parser ignoring M reads the wrong byte and gets it wrong.
        pytest.param(bytes([0x90, 0x80, 0x81, 0x35, 0x00]), True, id="X-I-M-16bit-key"),
        pytest.param(bytes([0x90, 0x80, 0x81, 0x34, 0x01]), False, id="X-I-M-16bit-inter"),
        pytest.param(bytes([0x90, 0x40, 0x01, 0x00]), True, id="X-L"),
        pytest.param(bytes([0x90, 0x40, 0x00, 0x01]), False, id="X-L-inter"),
        pytest.param(bytes([0x90, 0x20, 0x41, 0x00]), True, id="X-T"),
        pytest.param(bytes([0x90, 0x10, 0x01, 0x00]), True, id="X-K"),
        pytest.param(bytes([0x90, 0x30, 0x41, 0x00]), True, id="X-T-K-one-byte"),
        pytest.param(bytes([0x90, 0xF0, 0x81, 0x23, 0x01, 0x41, 0x00]), True, id="X-I-M-L-T-K"),
        pytest.param(bytes([0x90, 0xF0, 0x81, 0x23, 0x01, 0x41, 0x01]), False, id="X-I-M-L-T-K-inter"),
        pytest.param(bytes([0x90, 0xE0, 0x7F, 0x00, 0x40, 0x00]), True, id="X-I-L-T-7bit"),
        pytest.param(bytes([0x90, 0x80]), False, id="truncated-before-picture-id"),
        pytest.param(bytes([0x90, 0x80, 0x81, 0x23]), False, id="truncated-after-picture-id"),
        pytest.param(bytes([0x10]), False, id="one-byte"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_vp8_keyframe_detection(payload: bytes, key: bool) -> None:
    assert vp8_is_keyframe_start(payload) is key
    assert is_keyframe_start("video/VP8", payload) is key


def _stap_a(*nals: bytes) -> bytes:
    return bytes([0x78]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        pytest.param(bytes([0x65, 0x88, 0x84]), True, id="single-IDR"),
        pytest.param(bytes([0x67, 0x42, 0xC0, 0x1F]), True, id="single-SPS"),
        pytest.param(bytes([0x68, 0xCE, 0x3C]), False, id="single-PPS"),
        pytest.param(bytes([0x41, 0x9A, 0x00]), False, id="single-non-IDR"),
        pytest.param(bytes([0x06, 0x05, 0x00]), False, id="single-SEI"),
        pytest.param(_stap_a(bytes([0x67, 0x42, 0xC0]), bytes([0x68, 0xCE])), True, id="STAP-A-SPS-PPS"),
        pytest.param(_stap_a(bytes([0x06, 0xFF]), bytes([0x65, 0x88])), True, id="STAP-A-IDR-second"),
        pytest.param(_stap_a(bytes([0x06, 0xFF]), bytes([0x41, 0x9A])), False, id="STAP-A-no-key"),
        pytest.param(bytes([0x78, 0x00]), False, id="STAP-A-truncated"),
        pytest.param(bytes([0x7C, 0x85, 0x88]), True, id="FU-A-IDR-start"),
        pytest.param(bytes([0x7C, 0x05, 0x88]), False, id="FU-A-IDR-middle"),
        pytest.param(bytes([0x7C, 0x45, 0x88]), False, id="FU-A-IDR-end"),
        pytest.param(bytes([0x7C, 0x81, 0x9A]), False, id="FU-A-non-IDR-start"),
        pytest.param(bytes([0x7C]), False, id="FU-A-truncated"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_h264_keyframe_detection(payload: bytes, key: bool) -> None:
    assert h264_is_keyframe_start(payload) is key
    assert is_keyframe_start("video/H264", payload) is key


@pytest.mark.parametrize(
    ("mime", "payload", "key"),
    [
        ("audio/opus", b"\x00", True),  # audio packets never gate
        ("video/VP9", bytes([0x10, 0x00]), False),  # unknown video codec: never key
        ("VIDEO/VP8", bytes([0x10, 0x00]), True),
    ],
)
def test_is_keyframe_start_by_codec(mime: str, payload: bytes, key: bool) -> None:
    assert is_keyframe_start(mime, payload) is key


@pytest.mark.parametrize(
    ("a", "b", "newer"),
    [(1, 0, True), (0, 1, False), (0, 0xFFFF, True), (0xFFFF, 0, False), (5, 5, False),
     (0x7FFF, 0, True), (0x8000, 0, False)],
)
def test_seq_newer(a: int, b: int, newer: bool) -> None:
    assert seq_newer(a, b) is newer


# ----------------------------------------------------------------------- sfu.forwarder


def _forwarder(seq_out: int, ts_out: int, clock_rate: int = 90000, frame_ticks: int = 3000) -> Forwarder:
    """A forwarder whose first output packet will be (seq_out, ts_out)."""
    fwd = Forwarder(clock_rate, frame_ticks)
    fwd.last_seq_out, fwd.last_ts_out = seq_out, ts_out
    return fwd


@pytest.mark.parametrize(
    ("seq_in", "ts_in", "seq_out", "ts_out"),
    [
        pytest.param(1000, 50_000, 20_000, 7_000_000, id="no-wrap"),
        pytest.param(65_530, 0xFFFF_FFFF - 6_000, 100, 5_000, id="input-wraps"),
        pytest.param(100, 5_000, 65_532, 0xFFFF_FFFF - 4_000, id="output-wraps"),
        pytest.param(65_535, 0xFFFF_F000, 65_533, 0xFFFF_FFFF, id="both-wrap"),
    ],
)
def test_forwarder_maps_and_wraps(seq_in: int, ts_in: int, seq_out: int, ts_out: int) -> None:
    fwd = _forwarder(seq_out, ts_out)
    fwd.start(seq_in, ts_in)
    for i in range(20):
        frame = i // 2  # two packets per frame
        got = fwd.munge((seq_in + i) & 0xFFFF, (ts_in + frame * 3000) & 0xFFFFFFFF)
        assert got == ((seq_out + i) & 0xFFFF, (ts_out + frame * 3000) & 0xFFFFFFFF)
    assert fwd.last_seq_out == (seq_out + 19) & 0xFFFF


@pytest.mark.parametrize(
    ("after_start", "expected"),
    [
        pytest.param([999], [None], id="one-before-anchor"),
        pytest.param([1001, 900, 1002], [1, None, 2], id="old-between-new"),
        pytest.param([1000 - 30_000 & 0xFFFF], [None], id="far-before-anchor"),
        pytest.param([1005, 1003, 1004, 1006], [5, 3, 4, 6], id="reordered-after-anchor"),
        pytest.param([1001, 1001], [1, 1], id="duplicate"),
    ],
)
def test_forwarder_drops_packets_older_than_anchor(after_start: list[int], expected: list[int | None]) -> None:
    fwd = _forwarder(500, 0)
    fwd.start(1000, 90_000)
    assert fwd.munge(1000, 90_000) == (500, 0)
    for seq, want in zip(after_start, expected, strict=True):
        got = fwd.munge(seq, 90_000)
        assert (None if got is None else got[0] - 500) == want, seq
    # A late (reordered) packet never moves the output high-water mark backwards.
    assert fwd.last_seq_out == 500 + max(e for e in [0, *expected] if e is not None)


def test_forwarder_keeps_forwarding_a_long_stream_across_seq_wraps() -> None:
    """Hours of media: the input seq space wraps many times; nothing may be dropped."""
    fwd = _forwarder(7, 0)
    fwd.start(40_000, 0)
    for i in range(200_000):  # ~3 wraps of the 16-bit space
        got = fwd.munge((40_000 + i) & 0xFFFF, (i // 3) * 3000 & 0xFFFFFFFF)
        assert got is not None, f"packet {i} (seq {(40_000 + i) & 0xFFFF}) dropped"
        assert got[0] == (7 + i) & 0xFFFF


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("clock_rate", "frame_ticks", "gap_s", "new_seq", "new_ts"),
    [
        pytest.param(90000, 3000, 0.0, 5000, 123_456, id="video-immediate"),
        pytest.param(90000, 3000, 2.0, 10, 0xFFFF_FF00, id="video-2s-gap-ts-wraps"),
        pytest.param(48000, 960, 0.5, 65_535, 7, id="audio-500ms"),
        pytest.param(90000, 3000, 0.01, 1, 1, id="video-gap-below-one-frame"),
    ],
)
def test_forwarder_switch_source_is_continuous(
    monkeypatch: pytest.MonkeyPatch, clock_rate: int, frame_ticks: int, gap_s: float, new_seq: int, new_ts: int
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(forwarder_module, "time", clock)
    fwd = _forwarder(65_530, 0xFFFF_FFFF - 1000, clock_rate, frame_ticks)
    fwd.start(300, 1_000)
    out = [fwd.munge(300 + i, 1_000 + i * frame_ticks) for i in range(10)]
    last_seq, last_ts = out[-1]  # type: ignore[misc]
    fwd.switch_source()
    assert not fwd.started
    clock.now += gap_s
    fwd.start(new_seq, new_ts)
    first = fwd.munge(new_seq, new_ts)
    assert first is not None
    assert first[0] == (last_seq + 1) & 0xFFFF, "seq must continue at last + 1"
    advance = (first[1] - last_ts) & 0xFFFFFFFF
    assert advance >= frame_ticks, "ts must advance at least one frame"
    assert advance == max(frame_ticks, int(gap_s * clock_rate)), "ts advances by the wall-clock gap"
    second = fwd.munge((new_seq + 1) & 0xFFFF, (new_ts + frame_ticks) & 0xFFFFFFFF)
    assert second == ((first[0] + 1) & 0xFFFF, (first[1] + frame_ticks) & 0xFFFFFFFF)


def test_forwarder_switch_before_start_is_a_plain_start() -> None:
    fwd = _forwarder(42, 4200)
    fwd.switch_source()
    fwd.start(9, 900)
    assert fwd.munge(9, 900) == (42, 4200)


# ------------------------------------------------------------------------ sfu.consumer


class FakeRaw:
    """Stands in for RawRtpSender: keeps the datagrams."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_rtp(self, data: bytes) -> bool:
        self.sent.append(data)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        return True

    def headers(self) -> list[tuple[int, int, int, int, int]]:
        """(marker, pt, seq, ts, ssrc) of every sent packet."""
        out = []
        for d in self.sent:
            _, mpt, seq, ts, ssrc = struct.unpack_from("!BBHII", d)
            out.append((mpt >> 7, mpt & 0x7F, seq, ts, ssrc))
        return out


class FakeProducer:
    def __init__(self) -> None:
        self.consumers: list[Consumer] = []
        self.keyframe_requests = 0

    def add_consumer(self, c: Consumer) -> None:
        self.consumers.append(c)

    def remove_consumer(self, c: Consumer) -> None:
        self.consumers.remove(c)

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1


def _consumer(seq_out: int = 1000, ts_out: int = 0) -> tuple[Consumer, FakeRaw]:
    consumer = Consumer("video", 90000, "viewer")
    raw = FakeRaw()
    consumer.raw = raw  # type: ignore[assignment]
    consumer._pt, consumer._ssrc = 96, 0x1234  # what on_sender_started would set
    consumer.params = SimpleNamespace(rtx_payload_type=97, rtx_ssrc=0x5678)  # type: ignore[assignment]
    consumer.forwarder.last_seq_out, consumer.forwarder.last_ts_out = seq_out, ts_out
    return consumer, raw


def _media(seq: int, ts: int, key: bool = False, payload: bytes = b"x") -> MediaPacket:
    return MediaPacket(seq, ts, 0, payload, key, None)


def test_consumer_starts_on_keyframe_and_rewrites_headers() -> None:
    consumer, raw = _consumer(1000, 0)
    producer = FakeProducer()
    consumer.attach(producer)  # type: ignore[arg-type]
    assert producer.keyframe_requests == 1, "attaching asks for a key frame"
    for i in range(3):  # joined mid-GOP: delta frames are dropped
        consumer.forward(_media(50 + i, 9000 + i * 3000))
    assert raw.sent == [] and consumer.dropped_waiting == 3
    consumer.forward(_media(53, 18_000, key=True, payload=b"KEY"))
    consumer.forward(_media(54, 18_000))
    consumer.forward(_media(55, 21_000))
    assert raw.headers() == [(0, 96, 1000, 0, 0x1234), (0, 96, 1001, 0, 0x1234), (0, 96, 1002, 3000, 0x1234)]
    assert raw.sent[0].endswith(b"KEY")


def test_forwarding_leaves_no_collector_tracked_object_per_packet() -> None:
    """The forwarding process holds ~1,000 packets per viewer for NACKs: an object the cycle
    collector tracks per packet per viewer (a tuple in the sequencer ring) made its full
    passes take ~130 ms every few seconds at 200 viewers.  What a forwarded packet leaves
    behind must be plain data (ints in arrays, shared packets, bytes)."""
    import gc

    packets = [_media(100 + i, 3000 * (i // 5), key=i == 0) for i in range(3 * Consumer.HISTORY)]
    first, raw = _consumer(1000, 0)
    first.attach(FakeProducer())  # type: ignore[arg-type]
    for media in packets:  # what a packet keeps for all its viewers (header blocks) is made here
        first.forward(media)
        raw.sent.clear()
    consumer, raw = _consumer(1000, 0)
    consumer.attach(FakeProducer())  # type: ignore[arg-type]
    consumer.forward(packets[0])
    gc.collect()
    before = len(gc.get_objects())
    for media in packets[1:]:
        consumer.forward(media)
        raw.sent.clear()
    gc.collect()
    assert consumer.packets_sent == len(packets)
    assert len(gc.get_objects()) - before < 20
    assert consumer.retransmit((1000 + len(packets) - 1) & 0xFFFF), "the ring still answers NACKs"


def test_consumer_switch_source_waits_for_new_keyframe_and_continues() -> None:
    consumer, raw = _consumer(65_534, 0xFFFF_FFFF - 3000)
    first, second = FakeProducer(), FakeProducer()
    consumer.attach(first)  # type: ignore[arg-type]
    consumer.forward(_media(10, 100, key=True))
    consumer.forward(_media(11, 3100))
    consumer.detach()  # publisher left
    assert first.consumers == []
    consumer.attach(second)  # type: ignore[arg-type]
    consumer.forward(_media(7000, 555))  # the new publisher's delta frame: gated
    consumer.forward(_media(7001, 3555, key=True))
    consumer.forward(_media(7002, 6555))
    seqs = [h[2] for h in raw.headers()]
    tss = [h[3] for h in raw.headers()]
    assert seqs == [65_534, 65_535, 0, 1]
    assert all((b - a) & 0xFFFFFFFF < 0x8000_0000 for a, b in zip(tss, tss[1:], strict=False))
    assert (tss[2] - tss[1]) & 0xFFFFFFFF >= 3000


def test_nacks_for_the_source_a_viewer_left_are_not_answered() -> None:
    """After a switch (another layer, a new publisher) the viewer's decoder starts over on
    the new source's key frame: the old source's packets would only take the retransmission
    budget that the key frame's own losses need."""
    consumer, raw = _consumer(1000, 0)
    first, second = FakeProducer(), FakeProducer()
    consumer.attach(first)  # type: ignore[arg-type]
    for i in range(4):
        consumer.forward(_media(10 + i, 3000 * i, key=i == 0))
    assert consumer.retransmit(1002), "the current source's packets are resent"
    consumer.detach()
    consumer.attach(second)  # type: ignore[arg-type]
    consumer.forward(_media(500, 90_000, key=True))
    consumer.forward(_media(501, 93_000))
    assert raw.headers()[-2][2] == 1004, "the new source continues the output numbers"
    sent = len(raw.sent)
    assert not consumer.retransmit(1003) and not consumer.retransmit(1000)
    assert consumer.retransmits_stale == 2 and len(raw.sent) == sent
    assert consumer.retransmit(1005), "the new source's packets are resent"
    for i in range(40_000):  # more than half the sequence space on the same source
        consumer.forward(_media(502 + i, 96_000 + 3000 * (i // 5)))
    raw.sent.clear()
    assert consumer.retransmit((1005 + 40_000) & 0xFFFF), "still the current source"
    assert consumer.retransmits_stale == 2


def test_consumer_answers_nack_from_history_as_rtx() -> None:
    consumer, raw = _consumer(200, 0)
    consumer.attach(FakeProducer())  # type: ignore[arg-type]
    for i in range(5):
        consumer.forward(_media(10 + i, i * 3000, key=i == 0, payload=bytes([i]) * 3))
    raw.sent.clear()
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=0x1234, lost=[202, 204, 999])
    consumer.on_rtcp(nack)
    assert consumer.nacks_received == 1
    assert consumer.retransmits == 2, "999 was never sent: nothing to resend"
    headers = raw.headers()
    assert [(h[1], h[4]) for h in headers] == [(97, 0x5678)] * 2  # RTX PT and SSRC (RFC 4588)
    # RTX payload = original seq (OSN) + original payload; ts is the original one.
    assert [struct.unpack_from("!H", d, 12)[0] for d in raw.sent] == [202, 204]
    assert [d[14:] for d in raw.sent] == [b"\x02" * 3, b"\x04" * 3]
    assert [h[3] for h in headers] == [6000, 12000]
    assert headers[1][2] == (headers[0][2] + 1) & 0xFFFF, "RTX has its own seq space"


# ------------------------------------------------------------------------ sfu.keyframe


@pytest.mark.parametrize(
    ("requests", "expected_plis", "coalesced"),
    [
        pytest.param([0.0], [0.0], 0, id="single"),
        pytest.param([0.0, 0.1, 0.2], [0.0, 0.3], 1, id="burst-coalesced-into-one-deferred"),
        pytest.param([0.0, 0.4], [0.0, 0.4], 0, id="spaced-out"),
        pytest.param([0.0, 0.1, 0.35, 0.5], [0.0, 0.3, 0.6], 1, id="deferred-then-throttled-again"),
        pytest.param([0.0] + [0.01 * i for i in range(1, 11)], [0.0, 0.3], 9, id="ten-joiners"),
        pytest.param([0.05, 0.06, 1.0], [0.05, 0.35, 1.0], 0, id="deferred-then-idle"),
    ],
)
async def test_keyframe_requester_throttles(
    monkeypatch: pytest.MonkeyPatch, requests: list[float], expected_plis: list[float], coalesced: int
) -> None:
    clock = FakeClock(0.0)
    monkeypatch.setattr(keyframe_module, "time", clock)
    timers: list[tuple[float, Any]] = []

    class Handle:
        def __init__(self, entry: tuple[float, Any]) -> None:
            self.entry = entry

        def cancel(self) -> None:
            timers.remove(self.entry)

    def call_later(delay: float, callback: Any) -> Handle:
        entry = (clock.now + delay, callback)
        timers.append(entry)
        return Handle(entry)

    monkeypatch.setattr(asyncio.get_running_loop(), "call_later", call_later)
    plis: list[float] = []
    requester = KeyFrameRequester(lambda: plis.append(round(clock.now, 6)), min_interval_s=0.3)

    def run_timers(until: float) -> None:
        while timers and min(timers, key=lambda t: t[0])[0] <= until:
            due, callback = min(timers, key=lambda t: t[0])
            timers.remove((due, callback))
            clock.now = due
            callback()

    for t in requests:
        run_timers(t)
        clock.now = t
        requester.request()
    run_timers(float("inf"))
    assert plis == expected_plis
    assert requester.sent == len(expected_plis)
    assert requester.coalesced == coalesced


async def test_keyframe_requester_deferred_pli_fires_on_real_loop() -> None:
    fired = asyncio.Event()
    requester = KeyFrameRequester(fired.set, min_interval_s=0.05)
    requester.request()
    assert fired.is_set() and requester.sent == 1
    fired.clear()
    requester.request()
    requester.request()
    assert not fired.is_set(), "second request inside the interval is deferred"
    await asyncio.wait_for(fired.wait(), 5)
    assert requester.sent == 2 and requester.coalesced == 1


async def test_keyframe_requester_close_cancels_pending() -> None:
    plis: list[int] = []
    requester = KeyFrameRequester(lambda: plis.append(1), min_interval_s=10)
    requester.request()
    requester.request()
    pending = requester._pending
    assert pending is not None
    requester.close()
    assert pending.cancelled() and requester._pending is None
    assert plis == [1]


def test_consumer_asks_for_a_keyframe_once_it_can_send() -> None:
    """A PLI at attach time, before the viewer is connected, would be wasted."""
    consumer = Consumer("video", 90000, "viewer")
    producer = FakeProducer()
    consumer.attach(producer)  # type: ignore[arg-type]
    assert producer.keyframe_requests == 0 and consumer.waiting_for_keyframe
    params = SimpleNamespace(
        codec=SimpleNamespace(payloadType=96, mimeType="video/VP8"), ssrc=0x1234, extensions={}, mid="0", rtx_ssrc=0x5678,
        rtx_payload_type=97,
    )
    consumer.on_sender_started(params, FakeRaw())  # type: ignore[arg-type]
    assert producer.keyframe_requests == 1
    consumer.detach()
    consumer.attach(FakeProducer())  # type: ignore[arg-type]
    assert consumer.producer.keyframe_requests == 1, "a connected consumer asks at once"  # type: ignore[union-attr]
