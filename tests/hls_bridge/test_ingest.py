"""hls_bridge.ingest: a ProducerTap on a real in-process SFU, and the frame assembler alone."""

from __future__ import annotations

import asyncio
import fractions
import statistics
import threading
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters

from hls_bridge.ingest import EncodedFrame, FrameAssembler, FrameDecoder, ProducerTap
from loadtest import whip_client
from loadtest.ffmpeg_whip import FfmpegWhipProcess
from loadtest.pattern import read_code
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from sfu.producer import MediaPacket
from tests.polling import wait_for
from tests.services import STREAM_KEY

VIDEO_FRAMES = 60
AUDIO_FRAMES = 25


# ------------------------------------------------------------ assembler unit tests
def vp8(start: bool, key: bool, body: bytes) -> bytes:
    """A VP8 RTP payload (RFC 7741): 1-byte descriptor (S bit, partition 0) + data.

    The first data byte of a partition start carries the P bit (0 = key frame).
    """
    if not start:
        return b"\x00" + body
    return b"\x10" + bytes([0x00 if key else 0x01]) + body


def packet(seq: int, ts: int, marker: bool, payload: bytes) -> MediaPacket:
    return MediaPacket(seq & 0xFFFF, ts & 0xFFFFFFFF, int(marker), payload, False, None)


def frame_packets(first_seq: int, ts: int, n: int, key: bool, tag: str) -> list[MediaPacket]:
    """``n`` packets of one VP8 frame; payload bodies are ``tag0``, ``tag1``, ..."""
    return [
        packet(first_seq + i, ts, i == n - 1, vp8(i == 0, key, f"{tag}{i}".encode()))
        for i in range(n)
    ]


def bodies(frame: EncodedFrame) -> list[str]:
    """The test bodies of a frame's payloads (descriptor/P byte stripped)."""
    out = []
    for i, payload in enumerate(frame.payloads):
        out.append(payload[2:].decode() if i == 0 else payload[1:].decode())
    return out


def assembler(max_delay: float = 0.1) -> tuple[FrameAssembler, list[int]]:
    losses: list[int] = []
    asm = FrameAssembler("video/VP8", 90_000, max_delay=max_delay, on_loss=lambda: losses.append(1))
    return asm, losses


def push_all(asm: FrameAssembler, packets: list[MediaPacket]) -> list[EncodedFrame]:
    out: list[EncodedFrame] = []
    for p in packets:
        out.extend(asm.push(p))
    return out


@pytest.mark.parametrize(
    ("order", "seq0"),
    [
        ([0, 1, 2, 3], 100),
        ([2, 0, 3, 1], 100),
        ([3, 2, 1, 0], 100),
        ([1, 3, 0, 2], 65534),  # sequence numbers wrap inside the frame
    ],
)
def test_out_of_order_packets_within_a_frame_reassemble(order: list[int], seq0: int) -> None:
    asm, losses = assembler()
    key = frame_packets(seq0, 1000, 4, True, "k")
    delta = frame_packets(seq0 + 4, 4000, 3, False, "d")
    frames = push_all(asm, [key[i] for i in order] + [delta[2], delta[0], delta[1]])
    assert [bodies(f) for f in frames] == [["k0", "k1", "k2", "k3"], ["d0", "d1", "d2"]]
    assert [f.pts for f in frames] == [0, 3000]
    assert [f.keyframe for f in frames] == [True, False]
    assert losses == [] and asm.lost == 0


def test_frames_before_the_first_key_frame_are_skipped() -> None:
    asm, losses = assembler()
    early = frame_packets(10, 0, 2, False, "x")
    key = frame_packets(12, 3000, 2, True, "k")
    delta = frame_packets(14, 6000, 1, False, "d")
    frames = push_all(asm, early + key + delta)
    assert [bodies(f) for f in frames] == [["k0", "k1"], ["d0"]]
    assert frames[0].pts == 0  # pts counts from the tap's first frame
    assert losses == []


def test_missing_packet_drops_the_frame_and_asks_for_a_key_frame() -> None:
    asm, losses = assembler(max_delay=0.1)  # 9000 ticks = 3 frames at 30 fps
    key = frame_packets(0, 0, 2, True, "k")
    broken = frame_packets(2, 3000, 3, False, "b")
    del broken[1]  # seq 3 never arrives
    after = [frame_packets(5 + i, 6000 + 3000 * i, 1, False, f"a{i}") for i in range(5)]
    frames = push_all(asm, key + broken + [p for f in after for p in f])
    assert [bodies(f) for f in frames] == [["k0", "k1"]]
    assert asm.lost == 1 and losses == [1]
    assert asm.waiting_keyframe
    # Deltas after the loss are useless; decoding resumes at the next key frame.
    key2 = frame_packets(10, 21000, 2, True, "K")
    frames = push_all(asm, key2 + frame_packets(12, 24000, 1, False, "z"))
    assert [bodies(f) for f in frames] == [["K0", "K1"], ["z0"]]
    assert [f.pts for f in frames] == [21000, 24000]
    assert losses == [1]


def test_late_retransmission_within_max_delay_repairs_the_frame() -> None:
    asm, losses = assembler(max_delay=0.1)
    key = frame_packets(0, 0, 2, True, "k")
    frame = frame_packets(2, 3000, 3, False, "f")
    nxt = frame_packets(5, 6000, 1, False, "n")
    frames = push_all(asm, key + [frame[0], frame[2]] + nxt)
    assert [bodies(f) for f in frames] == [["k0", "k1"]]  # f waits for seq 3
    frames = asm.push(frame[1])  # the RTX copy arrives
    assert [bodies(f) for f in frames] == [["f0", "f1", "f2"], ["n0"]]
    assert losses == [] and asm.lost == 0
    assert asm.push(frame[1]) == [] and asm.late == 1  # duplicate is ignored


def test_buffered_key_frame_after_a_loss_is_used_at_once() -> None:
    asm, losses = assembler(max_delay=0.1)
    key = frame_packets(0, 0, 1, True, "k")
    broken = frame_packets(1, 3000, 2, False, "b")[:1]  # seq 2 lost
    key2 = frame_packets(3, 6000, 2, True, "K")
    later = frame_packets(5, 15000, 1, False, "l")  # pushes the stream past max_delay
    frames = push_all(asm, key + broken + key2 + later)
    assert [bodies(f) for f in frames] == [["k0"], ["K0", "K1"], ["l0"]]
    assert losses == [1]


def test_pts_is_continuous_across_rtp_timestamp_wrap() -> None:
    asm, _ = assembler()
    ts0 = 0xFFFFFFFF - 4000
    packets = [p for i in range(4) for p in frame_packets(i, ts0 + 3000 * i, 1, i == 0, "f")]
    assert [f.pts for f in push_all(asm, packets)] == [0, 3000, 6000, 9000]


def test_audio_packets_are_frames_and_late_ones_are_dropped() -> None:
    asm = FrameAssembler("audio/opus", 48_000)
    packets = [packet(s, 960 * s, False, bytes([s])) for s in (1, 2, 4, 3, 5)]
    frames = push_all(asm, packets)
    assert [f.payloads for f in frames] == [[b"\x01"], [b"\x02"], [b"\x04"], [b"\x05"]]
    assert [f.pts for f in frames] == [0, 960, 2880, 3840]
    assert asm.late == 1 and not asm.waiting_keyframe


# -------------------------------------------------------------- through the SFU
async def take(frames: AsyncIterator, count: int, timeout: float) -> list:  # type: ignore[type-arg]
    out: list = []  # type: ignore[type-arg]

    async def collect() -> None:
        async for frame in frames:
            out.append(frame)
            if len(out) >= count:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


def check_video(frames: list, width: int, height: int) -> list[int]:  # type: ignore[type-arg]
    """Codes strictly increase and pts follow them at 3000 ticks (30 fps) per code."""
    assert all((f.width, f.height) == (width, height) for f in frames)
    assert all(f.time_base == fractions.Fraction(1, 90_000) for f in frames)
    codes = [read_code(f) for f in frames]
    readable = [(c, f.pts) for c, f in zip(codes, frames, strict=True) if c is not None]
    assert len(readable) >= 0.9 * len(frames), codes
    assert all(b[0] > a[0] for a, b in zip(readable, readable[1:], strict=False)), codes
    for (c0, p0), (c1, p1) in zip(readable, readable[1:], strict=False):
        assert abs((p1 - p0) - 3000 * (c1 - c0)) <= 2, (c0, p0, c1, p1)
    steps = [b.pts - a.pts for a, b in zip(frames, frames[1:], strict=False)]
    assert statistics.median(steps) == pytest.approx(3000, abs=2), steps
    return [c for c, _ in readable]


async def test_tap_decodes_published_video_and_audio_off_the_loop(service) -> None:
    svc = service
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo",
        STREAM_KEY,
        [PatternVideoTrack(640, 360, 30, code="counter"), ToneAudioTrack()],
    )
    try:
        await whip_client.wait_connected(pub.pc)
        producers = svc.worker.routers["demo"].producers
        video, audio = producers["video"], producers["audio"]
        assert video.codec.mimeType.lower() == "video/vp8"
        vtap, atap = ProducerTap(video), ProducerTap(audio, max_queue=16)
        try:
            assert vtap in video.consumers and atap in audio.consumers
            assert vtap.keyframe_requests >= 1  # asked on attach
            vframes, aframes = await asyncio.gather(
                take(vtap.frames(), VIDEO_FRAMES, 60), take(atap.frames(), AUDIO_FRAMES, 60)
            )
        finally:
            vtap.close()
            atap.close()

        check_video(vframes, 640, 360)
        assert vframes[0].pts == 0 and vframes[0].key_frame

        assert all(f.sample_rate == 48_000 for f in aframes)
        assert all(f.time_base == fractions.Fraction(1, 48_000) for f in aframes)
        assert aframes[0].pts == 0
        steps = [b.pts - a.pts for a, b in zip(aframes, aframes[1:], strict=False)]
        assert statistics.median(steps) == 960 and min(steps) > 0, steps
        samples = np.concatenate([f.to_ndarray().astype(np.float64).ravel() for f in aframes[5:]])
        assert np.sqrt(np.mean(samples**2)) > 0.01  # the tone, not silence

        # Decoding ran in the taps' own worker threads, not on the event loop.
        loop_thread = threading.get_ident()
        for tap in (vtap, atap):
            assert tap.decoder.thread_id is not None and tap.decoder.thread_id != loop_thread
            assert tap.frames_in >= tap.frames_decoded > 0

        # Closing detaches and stops the worker; frames() ends.
        assert vtap not in video.consumers and atap not in audio.consumers
        for tap in (vtap, atap):
            await tap.wait_closed()
            assert not tap.decoder.thread.is_alive()
            assert [f async for f in tap.frames()] == []
    finally:
        await pub.close()


async def test_tap_closes_itself_when_the_producer_closes(service) -> None:
    svc = service
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(320, 180, 30)]
    )
    try:
        await whip_client.wait_connected(pub.pc)
        video = svc.worker.routers["demo"].producers["video"]
        async with ProducerTap(video) as tap:
            await take(tap.frames(), 1, 30)
            video.close()

            async def drain() -> None:
                async for _ in tap.frames():
                    pass

            await asyncio.wait_for(drain(), 10)  # ends within the 1 s watchdog tick
            assert tap.closed
            await tap.wait_closed()
            assert not tap.decoder.thread.is_alive()
    finally:
        await pub.close()


async def test_tap_decodes_h264_from_ffmpeg_whip(service) -> None:
    svc = service
    publisher = await FfmpegWhipProcess.start(
        f"{svc.url}/whip/demo",
        STREAM_KEY,
        seconds=60,
        width=640,
        height=360,
        fps=30,
        code="counter",
        args=["--gop", "15"],
    )
    try:
        await publisher.wait_connected(timeout=30)
        video = svc.worker.routers["demo"].producers["video"]
        assert video.codec.mimeType.lower() == "video/h264"
        async with ProducerTap(video) as tap:
            frames = await take(tap.frames(), 30, 30)  # FFmpeg ignores PLI: waits for its GOP
        check_video(frames, 640, 360)
        assert tap.decoder.decode_errors == 0
    finally:
        await publisher.stop()


class DropOnePacket:
    """A consumer in front of a tap that loses one mid-frame packet after ``after`` frames."""

    def __init__(self, tap: ProducerTap, after: int) -> None:
        self.tap = tap
        self.after = after
        self.frames = 0
        self.dropped: MediaPacket | None = None

    def forward(self, media: MediaPacket) -> None:
        if self.dropped is None and self.frames >= self.after and not media.marker:
            self.dropped = media
            return
        self.frames += media.marker
        self.tap.forward(media)


async def test_publisher_loss_drops_the_frame_and_recovers_at_a_key_frame(service) -> None:
    svc = service
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(640, 360, 30, code="counter")]
    )
    try:
        await whip_client.wait_connected(pub.pc)
        video = svc.worker.routers["demo"].producers["video"]
        async with ProducerTap(video, max_queue=64) as tap:
            video.remove_consumer(tap)  # type: ignore[arg-type]
            lossy = DropOnePacket(tap, after=20)
            video.add_consumer(lossy)  # type: ignore[arg-type]
            requests_before = tap.keyframe_requests
            try:
                frames = await take(tap.frames(), 50, 60)
            finally:
                video.remove_consumer(lossy)  # type: ignore[arg-type]
        assert lossy.dropped is not None
        assert tap.assembler.lost == 1 and tap.dropped >= 1
        assert tap.keyframe_requests > requests_before  # the loss asked for a key frame
        assert tap.decoder.decode_errors == 0
        codes = check_video(frames, 640, 360)
        gaps = [b - a for a, b in zip(codes, codes[1:], strict=False)]
        assert max(gaps) > 1, gaps  # frames skipped from the loss to the next key frame
        assert sum(f.key_frame for f in frames) >= 2  # resumed at a fresh key frame
    finally:
        await pub.close()


def opus_packets(count: int) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48_000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.time_base = fractions.Fraction(1, 48_000)
    out: list[bytes] = []
    for i in range(count):
        t = (np.arange(960) + 960 * i) / 48_000
        tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2)[None, :], format="s16", layout="stereo"
        )
        frame.sample_rate = 48_000
        frame.pts = 960 * i
        out.extend(bytes(p) for p in encoder.encode(frame))
    return out[:count]


async def test_output_queue_drops_oldest_when_nobody_reads() -> None:
    codec = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48_000, channels=2, payloadType=111
    )
    decoder = FrameDecoder(codec, max_queue=4)
    try:
        payloads = opus_packets(20)
        for i, payload in enumerate(payloads):
            assert decoder.submit(EncodedFrame([payload], 960 * i, 960 * i, True))
        await wait_for(
            lambda: decoder.queue_dropped + decoder.queue.qsize() >= len(payloads),
            10,
            lambda: f"all 20 frames decoded (decoded: {decoder.frames_decoded})",
            interval_s=0.01,
        )
        kept = [decoder.queue.get_nowait() for _ in range(decoder.queue.qsize())]
        assert [f.pts for f in kept if f is not None] == [960 * i for i in range(16, 20)]
        assert decoder.queue_dropped == 16
    finally:
        decoder.close()
        await decoder.wait_closed()
    assert not decoder.thread.is_alive()
