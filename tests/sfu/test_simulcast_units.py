"""Simulcast and layer forwarding, unit level: the offer/answer lines (RFC 8851, RFC 8853),
the producer's per-stream layers, the forwarder closing up dropped packets, and an adaptive
consumer switching layers on key frames with continuous sequence numbers and timestamps."""

from __future__ import annotations

import struct
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from sfu import aiortc_private
from sfu import producer as producer_module
from sfu.consumer import Consumer
from sfu.errors import InvalidSdp
from sfu.forwarder import Forwarder
from sfu.producer import Producer
from sfu.simulcast_sdp import answer_simulcast, offered_simulcast

VIDEO = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=sendonly",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=mid:1", "a=sendonly",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "{rids}", "",
])


def _offer(rid_lines: list[str]) -> str:
    return VIDEO.replace("{rids}", "\r\n".join(rid_lines))


# ------------------------------------------------------------------ SDP (RFC 8851/8853)

def test_offered_simulcast_reads_rids_in_order_with_paused_and_alternatives() -> None:
    offer = offered_simulcast(_offer(["a=rid:q send", "a=rid:h send", "a=rid:f send", "a=rid:x send",
                                      "a=simulcast:send q;~h,x;f"]))
    assert offer is not None
    assert offer.rids == ("q", "h", "f")
    assert offer.paused == {"h"}
    assert (offer.rid_extension_id, offer.repaired_rid_extension_id) == (10, 11)


def test_more_than_three_streams_keep_the_first_three() -> None:
    offer = offered_simulcast(_offer([f"a=rid:{r} send" for r in "abcd"] + ["a=simulcast:send a;b;c;d"]))
    assert offer is not None and offer.rids == ("a", "b", "c")


@pytest.mark.parametrize("lines", [
    [],  # no simulcast at all
    ["a=rid:q send", "a=simulcast:send q"],  # one stream is no simulcast
    ["a=rid:q send", "a=rid:h send", "a=simulcast:recv q;h"],  # receive simulcast: not ours
])
def test_no_simulcast_offer(lines: list[str]) -> None:
    assert offered_simulcast(_offer(lines)) is None


def test_simulcast_without_the_rid_extension_is_answered_as_one_stream() -> None:
    sdp = _offer(["a=rid:q send", "a=rid:h send", "a=simulcast:send q;h"]).replace(
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n", "")
    assert offered_simulcast(sdp) is None


@pytest.mark.parametrize("lines", [
    ["a=rid:q send", "a=simulcast:send q;h"],  # h has no a=rid line
    ["a=rid:q send", "a=rid:h recv", "a=simulcast:send q;h"],  # h is not a send rid
    ["a=rid:q!x send", "a=simulcast:send q!x;h"],  # not rid syntax
])
def test_inconsistent_simulcast_is_a_bad_offer(lines: list[str]) -> None:
    with pytest.raises(InvalidSdp):
        offered_simulcast(_offer(lines))


def test_answer_gets_recv_rids_and_simulcast_in_the_video_section_only() -> None:
    offer = offered_simulcast(_offer(["a=rid:q send", "a=rid:h send", "a=simulcast:send q;~h"]))
    assert offer is not None
    answer = answer_simulcast(VIDEO.replace("{rids}", "a=extmap:4 x").replace("sendonly", "recvonly"), offer)
    audio, video = answer.split("m=video")
    assert "a=rid" not in audio and "a=simulcast" not in audio
    lines = video.split("\r\n")
    at = lines.index("a=rid:q recv")
    assert lines[at - 1] == "a=extmap:4 x", "after the last extmap"
    assert lines[at:at + 3] == ["a=rid:q recv", "a=rid:h recv", "a=simulcast:recv q;~h"]


# ------------------------------------------------------------------ forwarder drops

def test_forwarder_closes_up_dropped_packets_and_maps_late_ones_with_their_offset() -> None:
    fwd = Forwarder(90000)
    fwd.last_seq_out, fwd.last_ts_out = 500, 0
    fwd.start(100, 0)
    out = [fwd.munge(100, 0), fwd.munge(101, 0)]
    fwd.drop(102)
    fwd.drop(103)
    out.append(fwd.munge(104, 3000))
    fwd.drop(106)  # 105 was lost upstream: its slot stays
    out.append(fwd.munge(107, 6000))
    assert [o[0] for o in out if o] == [500, 501, 502, 504]
    assert fwd.munge(105, 3000) == (503, 3000), "a late packet gets the slot left for it"
    assert fwd.munge(101, 0) == (501, 0), "a retransmission keeps its first number"


def test_forwarder_drop_wraps_and_restarts_cleanly() -> None:
    fwd = Forwarder(90000)
    fwd.last_seq_out, fwd.last_ts_out = 65_534, 0
    fwd.start(65_535, 0)
    assert fwd.munge(65_535, 0) == (65_534, 0)
    fwd.drop(0)
    assert fwd.munge(1, 0) == (65_535, 0)
    assert fwd.munge(2, 0) == (0, 0)
    fwd.switch_source()
    fwd.start(9000, 777)
    assert fwd.munge(9000, 777)[0] == 1, "a new source continues after the last output"


# ------------------------------------------------------------------ producer layers

def _producer(monkeypatch: pytest.MonkeyPatch, rids: tuple[str, ...] | None) -> Producer:
    monkeypatch.setattr(aiortc_private, "install_forwarding_receiver", lambda *a: None)
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    receiver = SimpleNamespace(_RTCRtpReceiver__started=False)  # no PLI goes out
    return Producer("video", codec, receiver, "pub", rids=rids)  # type: ignore[arg-type]


def _vp8(width: int, height: int, key: bool = True) -> bytes:
    """A VP8 payload: descriptor (S=1, PID 0) + frame header with the key frame's size."""
    if not key:
        return b"\x10\x01\x00\x00"
    return b"\x10" + bytes([0x00, 0x00, 0x00]) + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)


def _rtp(ssrc: int, seq: int, ts: int, payload: bytes, rid: str | None = None) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload)
    packet.extensions.rtp_stream_id = rid
    return packet


class Sink:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def forward(self, media: Any) -> None:
        self.got.append(media)


def test_simulcast_streams_become_layers_ranked_by_key_frame_size(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = _producer(monkeypatch, ("f", "q", "h"))
    tap = Sink()
    producer.add_consumer(tap)
    sizes = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
    for n, rid in enumerate(("f", "q", "h")):
        producer.on_rtp(_rtp(1000 + n, 1, 0, _vp8(*sizes[rid]), rid=rid), 0)
    assert [layer.rid for layer in producer.layers] == ["q", "h", "f"]
    assert [layer.spatial for layer in producer.layers] == [0, 1, 2]
    assert producer.top.rid == "f" and producer.ssrc == 1000
    # Later packets name no rid: the SSRC now says which stream they belong to.
    producer.on_rtp(_rtp(1001, 2, 3000, _vp8(0, 0, key=False)), 0)
    producer.on_rtp(_rtp(1000, 2, 3000, _vp8(0, 0, key=False)), 0)
    producer.on_rtp(_rtp(4242, 1, 0, _vp8(0, 0, key=False)), 0)  # unknown stream: dropped
    assert [(m.layer.rid, m.spatial) for m in tap.got] == [("f", 2), ("f", 2)], "the tap gets the top layer"
    q = producer.layers[0]
    assert q.ssrc == 1001 and sum(q.octets) > 0


def test_a_publisher_without_simulcast_has_one_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = _producer(monkeypatch, None)
    sink = Sink()
    producer.add_consumer(sink)
    producer.on_rtp(_rtp(7, 1, 0, _vp8(640, 360)), 0)
    producer.on_rtp(_rtp(7, 2, 3000, _vp8(0, 0, key=False)), 0)
    assert len(producer.layers) == 1 and producer.ssrc == 7
    assert [m.keyframe for m in sink.got] == [True, False]
    assert [m.frame_start for m in sink.got] == [True, True]
    producer.remove_consumer(sink)
    assert producer.consumers == []


def test_a_key_frame_whose_first_packet_comes_late_is_still_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first packet of a key frame lost and retransmitted after the rest of its frame:
    the key frame is counted and measured (ingest health), once, but no consumer starts on
    it (the rest of the frame went by while it waited)."""
    producer = _producer(monkeypatch, None)
    sink = Sink()
    producer.add_consumer(sink)
    continuation = b"\x00" + bytes(20)  # S = 0: not the start of a partition
    producer.on_rtp(_rtp(7, 2, 0, continuation), 0)
    producer.on_rtp(_rtp(7, 3, 0, continuation), 0)
    assert producer.top.keyframes == 0
    producer.on_rtp(_rtp(7, 1, 0, _vp8(640, 360)), 0)  # the retransmitted first packet
    assert producer.top.keyframes == 1
    assert (producer.health.width, producer.health.height) == (640, 360)
    producer.on_rtp(_rtp(7, 1, 0, _vp8(640, 360)), 0)  # retransmitted twice
    assert producer.top.keyframes == 1
    assert [m.keyframe for m in sink.got] == [False, False, False, False]
    producer.on_rtp(_rtp(7, 4, 3000, _vp8(640, 360)), 0)  # the next key frame, in order
    assert producer.top.keyframes == 2 and sink.got[-1].keyframe


def test_a_stream_without_a_key_frame_the_sfu_saw_gets_a_pli(monkeypatch: pytest.MonkeyPatch) -> None:
    """A publisher's first key frame lost before anything could NACK it (NACKs start at the
    first packet received): the producer asks for another, once a second, until it sees one."""
    from sfu import producer as producer_module

    clock = [100.0]
    monkeypatch.setattr(producer_module.time, "monotonic", lambda: clock[0])
    producer = _producer(monkeypatch, None)
    asked: list[float] = []
    delta = _vp8(0, 0, key=False)
    producer.on_rtp(_rtp(7, 1, 0, delta), 0)
    producer.top.keyframe_requester = SimpleNamespace(  # type: ignore[assignment]
        request=lambda: asked.append(clock[0]), close=lambda: None)
    for tick in range(1, 7):  # the room's tick, twice a second, packets flowing
        clock[0] = 100.0 + tick * 0.5
        producer.on_rtp(_rtp(7, 1 + tick, tick * 3000, delta), 0)
        producer.sample()
    assert asked == [101.5, 102.5]
    producer.on_rtp(_rtp(7, 20, 30_000, _vp8(640, 360)), 0)
    for tick in range(7, 12):
        clock[0] = 100.0 + tick * 0.5
        producer.on_rtp(_rtp(7, 20 + tick, tick * 3000 + 30_000, delta), 0)
        producer.sample()
    assert asked == [101.5, 102.5], "no more once a key frame came"


# ------------------------------------------------------------------ adaptive consumer

class FakeRaw:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_rtp(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


class FakeLayer:
    def __init__(self, spatial: int) -> None:
        self.spatial = spatial
        self.rid = "qhf"[spatial]
        self.width = self.height = None
        self.bitrates_bps = (100_000 * (spatial + 1),)
        self.active = True
        self.sender_clock = None
        self.sinks: list[Any] = []
        self.keyframe_requests = 0

    def add_sink(self, sink: Any) -> None:
        if sink not in self.sinks:
            self.sinks.append(sink)

    def remove_sink(self, sink: Any) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1


class FakeProducer:
    closed = False
    simulcast = True

    def __init__(self) -> None:
        self.layers = [FakeLayer(i) for i in range(3)]

    def remove_consumer(self, sink: Any) -> None:
        for layer in self.layers:
            layer.remove_sink(sink)


class ScriptedSelector:
    """Returns whatever target the test sets (the real LayerSelector is tested on its own)."""

    def __init__(self) -> None:
        self.target: tuple[int, int] | None = (2, 2)
        self.probe_bps: int | None = None

    def select(self, *args: Any) -> tuple[int, int] | None:
        return self.target


def _adaptive() -> tuple[Consumer, FakeRaw, FakeProducer, ScriptedSelector]:
    consumer = Consumer("video", 90000, "viewer")
    consumer.adaptive = True
    selector = consumer.selector = ScriptedSelector()  # type: ignore[assignment]
    raw = FakeRaw()
    consumer.raw = raw  # type: ignore[assignment]
    consumer._pt, consumer._ssrc = 96, 0x1234
    consumer.params = SimpleNamespace(rtx_payload_type=None)  # type: ignore[assignment]
    consumer.forwarder.last_seq_out, consumer.forwarder.last_ts_out = 1000, 0
    producer = FakeProducer()
    consumer.attach(producer)  # type: ignore[arg-type]
    return consumer, raw, producer, selector  # type: ignore[return-value]


def _media(layer: FakeLayer, seq: int, ts: int, key: bool = False, tid: int = 0, sync: bool = False) -> Any:
    return producer_module.MediaPacket(seq, ts, 0, b"p", key, None, layer, tid, sync)  # type: ignore[arg-type]


def _headers(raw: FakeRaw) -> list[tuple[int, int]]:
    return [struct.unpack_from("!HI", d, 2) for d in raw.sent]


def test_adaptive_consumer_switches_layers_on_key_frames_with_continuous_numbers() -> None:
    consumer, raw, producer, selector = _adaptive()
    q, h, f = producer.layers
    assert f.sinks == [consumer] and f.keyframe_requests == 1, "the starting layer is asked for a key frame"
    consumer.forward(_media(f, 50, 9000))  # delta frame: gated
    consumer.forward(_media(f, 51, 12000, key=True))
    consumer.forward(_media(f, 52, 15000))
    selector.target = (0, 0)
    consumer.update_layers(0.0, 0)
    assert q.sinks == [consumer] and q.keyframe_requests == 1, "PLI upstream for the target layer"
    consumer.forward(_media(q, 900, 500))  # q's delta frame: still on f
    consumer.forward(_media(f, 53, 18000))
    consumer.forward(_media(q, 901, 3500, key=True))  # the switch
    consumer.forward(_media(f, 54, 21000))  # f is no longer forwarded
    consumer.forward(_media(q, 902, 6500))
    seqs = [s for s, _ in _headers(raw)]
    stamps = [t for _, t in _headers(raw)]
    assert seqs == [1000, 1001, 1002, 1003, 1004]
    assert all(0 < (b - a) & 0xFFFFFFFF < 0x8000_0000 for a, b in zip(stamps, stamps[1:], strict=False))
    assert f.sinks == [] and q.sinks == [consumer] and consumer.layer_switches == 1


def test_adaptive_consumer_drops_temporal_layers_without_gaps_and_climbs_on_layer_sync() -> None:
    consumer, raw, producer, selector = _adaptive()
    f = producer.layers[2]
    selector.target = (2, 0)
    consumer.update_layers(0.0, 0)
    tids = [0, 2, 1, 2, 0, 2, 1, 2]
    consumer.forward(_media(f, 10, 0, key=True))
    for i, tid in enumerate(tids[1:], start=1):
        consumer.forward(_media(f, 10 + i, i * 3000, tid=tid))
    assert len(raw.sent) == 2 and consumer.dropped_temporal == 6
    assert [s for s, _ in _headers(raw)] == [1000, 1001], "no gap where frames were dropped"
    selector.target = (2, 2)
    consumer.update_layers(0.0, 0)
    consumer.forward(_media(f, 18, 24000, tid=2, sync=False))  # not a sync frame: still dropped
    consumer.forward(_media(f, 19, 27000, tid=1, sync=True))  # climbs to 1
    consumer.forward(_media(f, 20, 30000, tid=2, sync=True))  # then 2
    assert [s for s, _ in _headers(raw)] == [1000, 1001, 1002, 1003]


def test_adaptive_consumer_pauses_video_when_nothing_fits_and_resumes_on_a_key_frame() -> None:
    consumer, raw, producer, selector = _adaptive()
    q, h, f = producer.layers
    consumer.forward(_media(f, 10, 0, key=True))
    selector.target = None
    consumer.update_layers(0.0, 0)
    assert consumer.paused and all(not layer.sinks for layer in producer.layers)
    assert consumer.stats()["paused"] is True
    selector.target = (1, 0)
    consumer.update_layers(1.0, 0)
    assert h.sinks == [consumer] and not consumer.paused
    consumer.forward(_media(h, 70, 100))
    consumer.forward(_media(h, 71, 3100, key=True))
    assert [s for s, _ in _headers(raw)] == [1000, 1001]


def test_a_non_adaptive_consumer_resynchronises_when_the_top_layer_changes() -> None:
    consumer = Consumer("video", 90000, "pipe")
    raw = FakeRaw()
    consumer.raw = raw  # type: ignore[assignment]
    consumer._pt, consumer._ssrc = 96, 0x1234
    consumer.forwarder.last_seq_out, consumer.forwarder.last_ts_out = 1000, 0
    old, new = FakeLayer(1), FakeLayer(2)
    consumer.forward(_media(old, 10, 0, key=True))
    consumer.forward(_media(old, 11, 3000))
    consumer.forward(_media(new, 5000, 777_000))  # the new top's delta frame: not decodable
    consumer.forward(_media(new, 5001, 780_000, key=True))
    consumer.forward(_media(new, 5002, 783_000))
    assert [s for s, _ in _headers(raw)] == [1000, 1001, 1002, 1003]
    assert consumer.dropped_waiting == 1


class FakeEstimator:
    def __init__(self, bps: int, source: str = "transport-cc") -> None:
        self.estimate_bps = bps
        self.source = source
        self.congestion_cuts = 0
        self.probes: list[int] = []

    def probe(self, target_bps: int) -> None:
        self.probes.append(target_bps)


class RecordingSelector(ScriptedSelector):
    def __init__(self) -> None:
        super().__init__()
        self.budgets: list[int] = []

    def select(self, layers: Any, budget: int, *args: Any) -> tuple[int, int] | None:
        self.budgets.append(budget)
        return self.target


def test_a_low_estimate_only_takes_a_viewer_down_once_it_has_fallen() -> None:
    """An estimate that is merely low (the estimator has not seen the stream's rate yet, a
    first REMB) never counts for less than what the consumer sends; one that fell does."""
    consumer, raw, producer, _ = _adaptive()
    selector = consumer.selector = RecordingSelector()  # type: ignore[assignment]
    f = producer.layers[2]
    f.bitrates_bps = (1_000_000, 500_000, 500_000)  # per temporal layer: 2 Mbps in all
    consumer.forward(_media(f, 10, 0, key=True))
    bwe = consumer.bwe = FakeEstimator(800_000)  # type: ignore[assignment]
    consumer.update_layers(0.0, 40_000)
    assert selector.budgets[-1] == int(2_000_000 * 1.05), "not below what it sends now"
    bwe.source = "remb"
    bwe.estimate_bps = 600_000  # another signal takes over: still no congestion evidence
    consumer.update_layers(0.5, 40_000)
    assert selector.budgets[-1] == int(2_000_000 * 1.05)
    bwe.estimate_bps = 500_000  # the same signal falls: congestion
    consumer.update_layers(1.0, 40_000)
    assert selector.budgets[-1] == 500_000 - 40_000
    consumer.update_layers(1.0 + 3.5, 40_000)  # no new fall for longer than the memory
    assert selector.budgets[-1] == int(2_000_000 * 1.05)
    selector.probe_bps = 2_400_000
    bwe.estimate_bps = 3_000_000
    consumer.update_layers(5.0, 40_000)
    assert bwe.probes == [], "the budget covers the next step: no probe"
    bwe.estimate_bps = 300_000
    consumer.update_layers(5.5, 40_000)
    assert bwe.probes == [2_400_000 + 40_000], "short of the next step: probe towards it"


def test_with_transport_cc_only_a_detector_cut_is_congestion() -> None:
    """A probe's verdict that the link is full (a step above it saturated it) lowers the
    estimate, but the media alone did not congest the link: the viewer keeps its layer.  A
    cut by the delay- or loss-based detector is congestion."""
    consumer, raw, producer, _ = _adaptive()
    selector = consumer.selector = RecordingSelector()  # type: ignore[assignment]
    f = producer.layers[2]
    f.bitrates_bps = (1_000_000, 500_000, 500_000)
    consumer.forward(_media(f, 10, 0, key=True))
    bwe = consumer.bwe = FakeEstimator(3_000_000)  # type: ignore[assignment]
    consumer.update_layers(0.0, 40_000)
    bwe.estimate_bps = 1_500_000  # the probe's verdict: no cut
    consumer.update_layers(0.5, 40_000)
    assert selector.budgets[-1] == int(2_000_000 * 1.05)
    bwe.estimate_bps, bwe.congestion_cuts = 1_400_000, 1  # over-use: a cut
    consumer.update_layers(1.0, 40_000)
    assert selector.budgets[-1] == 1_400_000 - 40_000


def test_retransmissions_are_bounded_by_the_round_trip_and_the_estimate() -> None:
    """A packet NACKed again within a round trip is not resent again, and retransmissions
    take at most half the viewer's estimate (a NACK storm after a link drop must not keep
    the link full)."""
    consumer, raw, producer, _ = _adaptive()
    consumer.params = SimpleNamespace(rtx_payload_type=97, rtx_ssrc=0x5678)  # type: ignore[assignment]
    f = producer.layers[2]
    consumer.forward(producer_module.MediaPacket(10, 0, 0, b"k" * 1000, True, None, f))  # type: ignore[arg-type]
    for i in range(1, 40):
        consumer.forward(producer_module.MediaPacket(10 + i, i * 3000, 0, b"p" * 1000, False, None, f))  # type: ignore[arg-type]
    raw.sent.clear()
    consumer.rtt_s = 0.05
    assert consumer.retransmit(1001)
    assert not consumer.retransmit(1001), "resent less than a round trip ago"
    assert consumer.retransmits == 1 and consumer.retransmits_skipped == 1
    consumer.bwe = FakeEstimator(160_000)  # type: ignore[assignment]  # RTX budget: 80 kbit/s
    consumer._rtx_refilled = time.monotonic() - 1.0  # a full bucket: 100 ms of 10 kB/s
    resent = sum(consumer.retransmit(seq) for seq in range(1002, 1030))
    assert resent == 1, "1 kB fits the 1 kB bucket, then nothing until it refills"
    assert len(raw.sent) == 2


def test_video_pauses_only_after_two_seconds_below_the_lowest_layer() -> None:
    consumer, raw, producer, _ = _adaptive()
    selector = consumer.selector = RecordingSelector()  # type: ignore[assignment]
    q = producer.layers[0]
    q.bitrates_bps = (100_000,)
    consumer.bwe = FakeEstimator(1_000_000)  # type: ignore[assignment]
    consumer.update_layers(0.0, 0)
    consumer.bwe.estimate_bps = 50_000  # type: ignore[union-attr]  # fell below q
    consumer.update_layers(0.5, 0)
    consumer.update_layers(2.0, 0)
    assert selector.budgets[-2:] == [100_000, 100_000], "the lowest layer is kept for now"
    consumer.update_layers(2.6, 0)
    assert selector.budgets[-1] == 50_000, "2 s of shortfall: the selector may pause"
