"""Ingest health: picture sizes from real encoder headers, rates with a fake clock, and the
whole path through a real service.

* Unit: H.264 SPS bytes from libx264 (recorded from Debian ffmpeg, and encoded now through
  PyAV at odd sizes, interlaced, 4:2:2 and 4:4:4), wrapped the three ways RFC 6184 carries
  them; VP8 key-frame headers from libvpx behind each payload descriptor form; fps, bitrate,
  key-frame interval, loss (aiortc's counters and sequence gaps) and jitter with a fake clock.
* Integration: an aiortc publisher (VP8 640x360, 30 fps) whose own transport drops every 10th
  video packet before SRTP; the SFU's report, read through the real ``stats`` RPC over the
  node's Socket.IO link, gives its size, ~30 fps, a positive bitrate, ~10 % video loss and an
  ICE consent round trip.  FFmpeg's WHIP muxer (H.264, 2 s GOP) gives its SPS size and
  key-frame interval.
"""

from __future__ import annotations

import fractions
import re
import time
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest

from community.api.ingest import ingest_of_room
from loadtest import whip_client
from loadtest.ffmpeg_whip import FfmpegWhipProcess
from loadtest.sources import PatternVideoTrack
from sfu.aiortc_private import ReceiveStatistics
from sfu.ingest_health import TrackHealth, publisher_ingest
from sfu.picture_size import (
    h264_payload_sps,
    h264_sps_size,
    keyframe_picture_size,
    vp8_keyframe_size,
)
from tests.polling import wait_for
from tests.services import STREAM_KEY
from tests.sfu.lossy import payload_types
from tests.sfu.sfu_helpers import stream_key

# ---------------------------------------------------------------------------- picture size

# SPS NAL units written by Debian ffmpeg 5.1 / libx264 (`ffmpeg -f lavfi -i testsrc2=size=WxH
# -frames:v 1 -c:v libx264 -profile:v P -f h264`), emulation prevention bytes included.
RECORDED_SPS = [
    ("6764001facd9405005bb0110000003001000000303c0f1831960", (1280, 720)),  # High
    ("6742c01ed900a02ff970110000030001000003003c0f162e48", (640, 360)),  # Baseline, cropped
    ("674d4028eca03c0113f2e022000003000200000300781e30632c", (1920, 1080)),  # Main, cropped
    ("6764001facd940d83de6f0110000030001000003003c0f183196", (854, 480)),  # High, cropped
]
# The first 10 bytes of libvpx key frames (`-c:v libvpx -f ivf`, after the IVF headers).
RECORDED_VP8 = [
    ("1001029d012a0005d002", (1280, 720)),
    ("f0c6009d012a80026801", (640, 360)),
]


def encode_one_frame(codec: str, width: int, height: int, pix_fmt: str = "yuv420p",
                     options: dict[str, str] | None = None) -> bytes:
    """One key frame from a real encoder (PyAV's FFmpeg): Annex B for H.264, raw VP8."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = fractions.Fraction(1, 30)
    if options:
        ctx.options = options
    gray = np.full((height * 3 // 2, width), 128, np.uint8)
    frame = av.VideoFrame.from_ndarray(gray, format="yuv420p").reformat(format=pix_fmt)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def annex_b_nal_units(stream: bytes) -> list[bytes]:
    return [nal for nal in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", stream) if nal]


@pytest.mark.parametrize(("sps_hex", "size"), RECORDED_SPS)
def test_recorded_libx264_sps_sizes(sps_hex: str, size: tuple[int, int]) -> None:
    assert h264_sps_size(bytes.fromhex(sps_hex)) == size


@pytest.mark.parametrize(("width", "height", "pix_fmt", "options"), [
    (1280, 720, "yuv420p", None),
    (640, 360, "yuv420p", None),  # 23 macroblock rows cropped to 360
    (1366, 768, "yuv420p", None),
    (718, 476, "yuv420p", {"x264-params": "interlaced=1"}),  # field coding: map units of 32 rows
    (202, 100, "yuv422p", None),  # High 4:2:2: chroma_format_idc 2
    (178, 146, "yuv444p", None),  # High 4:4:4: chroma_format_idc 3
])
def test_sps_from_a_live_libx264_encode(width: int, height: int, pix_fmt: str,
                                        options: dict[str, str] | None) -> None:
    nals = annex_b_nal_units(encode_one_frame("libx264", width, height, pix_fmt, options))
    sps = next(nal for nal in nals if nal[0] & 0x1F == 7)
    assert h264_sps_size(sps) == (width, height)


def _stap_a(*nals: bytes) -> bytes:
    return bytes([0x78]) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def _fu_a_start(nal: bytes, chunk: int) -> bytes:
    return bytes([(nal[0] & 0xE0) | 28, 0x80 | (nal[0] & 0x1F)]) + nal[1:chunk]


SPS_720P = bytes.fromhex(RECORDED_SPS[0][0])
PPS = bytes.fromhex("68ebe3cb22c0")


@pytest.mark.parametrize(("payload", "size"), [
    (SPS_720P, (1280, 720)),  # single NAL unit packet (RFC 6184 §5.6)
    (_stap_a(SPS_720P, PPS), (1280, 720)),  # STAP-A (§5.7.1)
    (_stap_a(bytes.fromhex("0605ff"), SPS_720P, PPS), (1280, 720)),  # SPS after an SEI
    (_fu_a_start(SPS_720P, 64), (1280, 720)),  # first FU-A fragment (§5.8)
    (_stap_a(PPS), None),  # no SPS in it
    (bytes([0x65, 0x88, 0x84]), None),  # an IDR slice alone
    (_fu_a_start(bytes([0x65]) + bytes(40), 20), None),  # an IDR FU-A
    (SPS_720P[:6], None),  # truncated SPS
    (bytes([0x67]) + bytes(12), None),  # zeros: an exp-Golomb code that never ends
    (_stap_a(SPS_720P)[:-4], None),  # STAP-A whose size runs past the packet
    (b"", None),
])
def test_h264_payloads(payload: bytes, size: tuple[int, int] | None) -> None:
    assert keyframe_picture_size("video/H264", payload) == size


def test_fu_a_sps_keeps_the_original_nal_header() -> None:
    sps = h264_payload_sps(_fu_a_start(SPS_720P, len(SPS_720P)))
    assert sps == SPS_720P


@pytest.mark.parametrize(("header_hex", "size"), RECORDED_VP8)
@pytest.mark.parametrize("descriptor", [
    "10",  # S=1, PID 0, no extension (RFC 7741 §4.2)
    "90807f",  # X, I: a 7-bit picture id
    "9080ff01",  # X, I: a 15-bit picture id
    "90c0ff0105",  # ... + L: TL0PICIDX
    "90f0ff010520",  # ... + T/K: TID/Y/KEYIDX
    "901020",  # X, K only
])
def test_recorded_libvpx_keyframe_headers(header_hex: str, size: tuple[int, int],
                                          descriptor: str) -> None:
    payload = bytes.fromhex(descriptor) + bytes.fromhex(header_hex) + bytes(20)
    assert vp8_keyframe_size(payload) == size


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (320, 240), (1918, 1078)])
def test_vp8_from_a_live_libvpx_encode(width: int, height: int) -> None:
    frame = encode_one_frame("libvpx", width, height)
    assert keyframe_picture_size("video/VP8", b"\x10" + frame) == (width, height)


@pytest.mark.parametrize("payload_hex", [
    "10" + "f1c6009d012a80026801",  # P bit set: an interframe
    "10" + "f0c6009d012b80026801",  # wrong start code
    "11" + RECORDED_VP8[1][0],  # partition 1, not the frame's start
    "00" + RECORDED_VP8[1][0],  # S bit clear
    "10" + "f0c6009d012a8002",  # truncated
    "90",  # X without its byte
])
def test_vp8_non_keyframe_headers(payload_hex: str) -> None:
    assert vp8_keyframe_size(bytes.fromhex(payload_hex)) is None


# ---------------------------------------------------------------------------- rates


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


VP8_640 = b"\x10" + bytes.fromhex(RECORDED_VP8[1][0]) + bytes(100)


def run_video(health: TrackHealth, clock: FakeClock, seconds: float, *, fps: int = 30,
              packets_per_frame: int = 5, size: int = 1000, gop: int = 60, first_seq: int = 0,
              lose: Any = None, frame0: int = 0) -> int:
    """Feed ``seconds`` of paced video (a key frame every ``gop`` frames), sampling every
    0.5 s as the room's tick does; ``lose(seq)`` drops a packet.  :returns: the next seq."""
    seq = first_seq
    next_sample = clock.now_s
    for frame in range(frame0, frame0 + round(seconds * fps)):
        timestamp = frame * 90000 // fps
        for index in range(packets_per_frame):
            if index == 0 and frame % gop == 0:
                health.on_keyframe(timestamp, VP8_640)
            if lose is None or not lose(seq):
                health.on_packet(seq & 0xFFFF, int(index == packets_per_frame - 1), size)
            seq += 1
        clock.now_s += 1 / fps
        if clock.now_s >= next_sample:
            health.sample()
            next_sample += 0.5
    return seq


def video_health(clock: FakeClock, **kwargs: Any) -> TrackHealth:
    return TrackHealth("video", "video/VP8", 90000, clock=clock, **kwargs)


def test_fps_bitrate_size_and_keyframe_interval() -> None:
    clock = FakeClock()
    health = video_health(clock)
    run_video(health, clock, 6.1)
    snap = health.snapshot()
    assert snap.fps == pytest.approx(30, abs=0.6)
    assert snap.bitrate_bps == pytest.approx(30 * 5 * 1000 * 8, rel=0.02)
    assert (snap.width, snap.height) == (640, 360)
    assert snap.keyframe_interval_s == pytest.approx(2.0)
    assert snap.keyframes == 4  # frames 0, 60, 120, 180
    assert snap.loss == 0.0 and snap.jitter_ms is None and snap.rtt_ms is None


def test_rates_follow_the_last_window_only() -> None:
    clock = FakeClock()
    health = video_health(clock)
    seq = run_video(health, clock, 4, fps=30)
    run_video(health, clock, 3, fps=15, first_seq=seq, frame0=10_000)
    assert health.snapshot().fps == pytest.approx(15, abs=0.5)


def test_nothing_measured_before_two_samples() -> None:
    clock = FakeClock()
    health = video_health(clock)
    health.on_packet(1, 1, 500)
    snap = health.snapshot()
    assert (snap.bitrate_bps, snap.fps, snap.loss, snap.keyframe_interval_s) == (None, None, None, None)
    assert snap.width is None


def test_a_stalled_publisher_reads_zero() -> None:
    clock = FakeClock()
    health = video_health(clock)
    run_video(health, clock, 3)
    for _ in range(5):  # 2.5 s without a packet
        clock.now_s += 0.5
        health.sample()
    snap = health.snapshot()
    assert snap.bitrate_bps == 0 and snap.fps == 0.0
    assert snap.loss is None  # nothing expected, nothing to lose


def test_loss_from_sequence_gaps_across_the_wrap() -> None:
    clock = FakeClock()
    health = video_health(clock)
    run_video(health, clock, 4, first_seq=65_000, lose=lambda seq: seq % 10 == 0)
    snap = health.snapshot()
    assert snap.loss == pytest.approx(0.1, abs=0.01)
    assert snap.fps == pytest.approx(30, abs=0.6)  # the lost ones were never the marker packets


def test_a_repair_completes_its_frame_and_its_gap() -> None:
    clock = FakeClock()
    health = video_health(clock)
    run_video(health, clock, 3, lose=lambda seq: seq == 299)  # frame 59's marker packet
    assert health.snapshot().loss == pytest.approx(1 / 300, abs=0.001)
    frames = health.frames
    health.on_packet(299, 1, 1000)  # its retransmission, late and out of order
    assert health.frames == frames + 1
    assert health.highest_seq == 30 * 3 * 5 - 1  # an old packet moves nothing
    assert health.snapshot().loss == 0.0


def test_a_retransmitted_keyframe_is_not_counted_twice() -> None:
    health = video_health(FakeClock())
    health.on_keyframe(90_000, VP8_640)
    health.on_keyframe(90_000, VP8_640)
    health.on_keyframe(0, VP8_640)  # older
    health.on_keyframe(270_000, VP8_640)
    assert health.keyframes == 2
    assert health.keyframe_interval_s() == pytest.approx(2.0)


def test_keyframe_interval_is_the_mean_of_the_last_four() -> None:
    health = video_health(FakeClock())
    for seconds in (0, 10, 11, 12, 13, 14):
        health.on_keyframe(seconds * 90000, VP8_640)
    assert health.keyframe_interval_s() == pytest.approx(1.0)


def test_source_fps_is_media_time_not_arrival() -> None:
    clock = FakeClock()
    health = video_health(clock)
    assert health.source_fps() is None
    # 1.5 s of frames queued on the way (a relay waiting for its connection) arrive at
    # once, then the stream goes on at its pace: the arrival rate over the window is well
    # above 30 fps, the encoder's rate is not.
    seq = run_video(health, FakeClock(), 1.5, gop=30)  # health's clock stands still
    run_video(health, clock, 1.6, gop=30, first_seq=seq, frame0=45)
    assert health.snapshot().fps > 33
    assert health.source_fps() == pytest.approx(30.0)
    # A frame whose marker packet never arrives is missing from the count.
    lossy = video_health(FakeClock())
    run_video(lossy, FakeClock(), 4.1, gop=60, lose=lambda seq: seq == 5 * 70 + 4)
    assert lossy.source_fps() == pytest.approx(119 / 4)


class FakeReceiver:
    """aiortc's receive statistics as seen through sfu.aiortc_private (expected, received, jitter)."""

    def __init__(self) -> None:
        self.expected = self.received = self.jitter_ticks = 0

    def __call__(self) -> ReceiveStatistics | None:
        if not self.expected:
            return None
        return ReceiveStatistics(self.expected, self.received, self.jitter_ticks)


def test_loss_and_jitter_from_receiver_statistics() -> None:
    clock, receiver = FakeClock(), FakeReceiver()
    health = TrackHealth("audio", "audio/opus", 48000, statistics=receiver, clock=clock,
                         round_trip_time=lambda: 0.0234)
    for _ in range(6):  # 50 packets/s, 4 % lost
        receiver.expected += 25
        receiver.received += 24
        clock.now_s += 0.5
        health.sample()
    receiver.jitter_ticks = 480  # 10 ms at 48 kHz
    snap = health.snapshot()
    assert snap.loss == pytest.approx(0.04)
    assert snap.jitter_ms == 10.0
    assert snap.rtt_ms == 23.4
    assert snap.fps is None and "fps" not in snap.to_json()


def test_duplicates_never_make_loss_negative() -> None:
    clock, receiver = FakeClock(), FakeReceiver()
    health = TrackHealth("audio", "audio/opus", 48000, statistics=receiver, clock=clock)
    for _ in range(5):
        receiver.expected += 25
        receiver.received += 30
        clock.now_s += 0.5
        health.sample()
    assert health.snapshot().loss == 0.0


def test_publisher_ingest_merges_tracks() -> None:
    clock, video_rx, audio_rx = FakeClock(), FakeReceiver(), FakeReceiver()
    video = video_health(clock, statistics=video_rx, round_trip_time=lambda: None)
    audio = TrackHealth("audio", "audio/opus", 48000, statistics=audio_rx, clock=clock,
                        round_trip_time=lambda: 0.012)
    seq = 0
    for _ in range(6):
        for _ in range(15):  # 0.5 s of video; 10 % lost by aiortc's counters
            for index in range(5):
                video.on_packet(seq, int(index == 4), 1000)
                seq += 1
        video_rx.expected += 80
        video_rx.received += 72
        audio_rx.expected += 25  # 0.5 s of Opus, none lost
        audio_rx.received += 25
        for _ in range(25):
            audio.on_packet(seq, 0, 100)
        clock.now_s += 0.5
        video.sample()
        audio.sample()
    video_rx.jitter_ticks, audio_rx.jitter_ticks = 9000, 96
    video.on_keyframe(0, VP8_640)
    report = publisher_ingest([video, audio])
    assert report["bitrate_bps"] == pytest.approx(150 * 1000 * 8 + 50 * 100 * 8, rel=0.02)
    assert report["fps"] == pytest.approx(30, abs=0.6)
    assert (report["width"], report["height"]) == (640, 360)
    assert report["loss"] == pytest.approx(8 / (80 + 25), abs=0.002)  # weighted by packets
    assert report["jitter_ms"] == 2.0  # the audio track's (96 ticks at 48 kHz)
    assert report["rtt_ms"] == 12.0
    assert report["keyframe_interval_s"] is None
    assert report["tracks"]["video"]["loss"] == pytest.approx(0.1)
    assert report["tracks"]["video"]["jitter_ms"] == 100.0


def test_publisher_ingest_without_video() -> None:
    audio = TrackHealth("audio", "audio/opus", 48000, clock=FakeClock())
    report = publisher_ingest([audio])
    assert {k: report[k] for k in ("fps", "width", "height", "keyframe_interval_s")} == dict.fromkeys(
        ("fps", "width", "height", "keyframe_interval_s"))


# ---------------------------------------------------------------------------- integration


def drop_every_nth_video_packet(session: whip_client.WhipSession, nth: int) -> set[int]:
    """Make the test publisher's own transport drop every ``nth`` new video packet before
    SRTP (RTX repairs and RTCP pass), and the first one: the start of the publisher's only
    key frame, lost before the SFU could NACK it (the SFU must ask for another).
    :returns: the dropped sequence numbers (growing)."""
    media_pt, _ = payload_types(session.answer, "video")
    dtls = session.pc.getTransceivers()[0].sender.transport
    original = dtls._send_rtp
    dropped: set[int] = set()
    first = [True]

    async def send_rtp(data: bytes) -> None:
        is_rtcp = 192 <= data[1] <= 223  # RFC 5761 §4
        if not is_rtcp and data[1] & 0x7F == media_pt:
            seq = int.from_bytes(data[2:4], "big")
            drop, first[0] = seq % nth == 0 or first[0], False
            if drop:
                dropped.add(seq)
                return
        await original(data)

    dtls._send_rtp = send_rtp
    return dropped


@pytest.mark.timeout(90)
async def test_aiortc_publisher_through_the_stats_rpc(service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.5)  # an RTT within a second
    svc = service
    video = PatternVideoTrack(640, 360, 30, code="counter")
    # What the publisher really sends: on a busy machine its encoder may fall below 30 fps,
    # and the SFU must report what arrives, not the nominal rate.
    frame_times: list[float] = []
    recv = video.recv

    async def counted_recv() -> Any:
        frame = await recv()
        frame_times.append(time.monotonic())
        return frame

    video.recv = counted_recv  # type: ignore[method-assign]

    def sent_fps() -> float:
        now = time.monotonic()
        return sum(1 for t in frame_times if now - 2.5 <= t < now - 0.5) / 2.0

    publisher = await whip_client.publish(f"{svc.url}/whip/demo", stream_key(svc), [video])
    dropped = drop_every_nth_video_packet(publisher, 10)
    try:
        await whip_client.wait_connected(publisher.pc)

        last: list[Any] = []

        async def report() -> dict[str, Any] | None:
            ingest = await ingest_of_room(svc.app, "demo")  # stats RPC over the node's link
            tracks = svc.worker.routers["demo"].ingest()["tracks"]
            last[:] = [ingest, tracks, sent_fps()]
            ok = (ingest is not None and tracks["video"]["packets"] >= 120  # a full window
                  and ingest["width"] == 640 and ingest["fps"] and sent_fps() > 0
                  and abs(ingest["fps"] - sent_fps()) <= 0.25 * sent_fps() + 2
                  and ingest["rtt_ms"] is not None
                  and tracks["video"]["loss"] is not None and tracks["video"]["loss"] >= 0.05)
            return {**ingest, "tracks": tracks} if ok else None

        seen = await wait_for(report, 30, lambda: f"a full ingest report of the aiortc publisher "
                              f"(last: ingest, tracks, fps sent = {last})", interval_s=0.25)
    finally:
        await publisher.close()
    print(f"\ningest of the aiortc publisher: {seen}; dropped {len(dropped)} video packets")
    assert (seen["width"], seen["height"]) == (640, 360)
    assert seen["bitrate_bps"] > 100_000
    assert seen["tracks"]["video"]["loss"] == pytest.approx(0.1, abs=0.05)
    assert 0 < seen["loss"] <= 0.15
    assert 0 <= seen["rtt_ms"] < 1000 and seen["jitter_ms"] is not None
    assert seen["at"].tzinfo is not None


@pytest.mark.timeout(120)
async def test_ffmpeg_whip_h264_sps_and_keyframe_interval(service: Any) -> None:
    svc = service
    publisher = await FfmpegWhipProcess.start(
        f"{svc.url}/whip/demo", STREAM_KEY, seconds=60, width=854, height=480, fps=30,
        args=["--gop", "30"])
    try:
        await publisher.wait_connected(timeout=30)

        async def report() -> dict[str, Any] | None:
            ingest = await ingest_of_room(svc.app, "demo")
            full = ingest and ingest["keyframe_interval_s"] and ingest["loss"] is not None
            return ingest if full and 22 <= ingest["fps"] <= 38 else None

        seen = await wait_for(report, 30, "FFmpeg's ingest report, ~30 fps over a full window",
                              interval_s=0.25)
    finally:
        await publisher.stop()
    print(f"\ningest of FFmpeg's WHIP muxer: {seen}")
    assert (seen["width"], seen["height"]) == (854, 480)  # from the in-band SPS
    assert seen["keyframe_interval_s"] == pytest.approx(1.0, abs=0.05)  # --gop 30 at 30 fps
    assert seen["bitrate_bps"] > 100_000 and 0 <= seen["loss"] <= 1
