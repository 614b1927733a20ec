"""The SRT listener against real encoders on 127.0.0.1: Debian's ffmpeg publishes MPEG-TS with
H.264 + AAC (baseline; High with B-frames) and H.264 + Opus; stream ids are parsed per the SRT
Access Control convention; a caller that sends garbage, stalls or sends other video ends its
own connection only; a listener passphrase is enforced."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.h264 import iter_nal_units
from ingest import srt_lib, srt_server
from ingest.rtmp_server import PublishRefused
from ingest.srt_server import SrtPublish, SrtServer, StreamIdRefused, parse_stream_id
from tests.ingest import srt_caller
from tests.polling import wait_for

KEY = "sk_" + "k3y" * 8
STREAM_ID = f"#!::r=demo,m=publish,s={KEY}"

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


# ------------------------------------------------------------------ stream ids and Annex B
def test_stream_ids_of_the_access_control_convention() -> None:
    assert parse_stream_id(STREAM_ID) == ("demo", KEY)
    assert parse_stream_id(f"#!::m=publish,u=obs,s={KEY},r=demo,t=stream,h=relaycast.test") == ("demo", KEY)
    assert parse_stream_id(f"%23!::r=demo,m=publish,s={KEY}") == ("demo", KEY)  # an undecoded URL
    refused = {
        KEY: srt_lib.SRT_REJX_BAD_REQUEST,
        "#!::r=demo,m=publish,s=": srt_lib.SRT_REJX_UNAUTHORIZED,
        f"#!::m=publish,s={KEY}": srt_lib.SRT_REJX_BAD_REQUEST,
        f"#!::r=demo,s={KEY}": srt_lib.SRT_REJX_BAD_MODE,
        f"#!::r=demo,m=request,s={KEY}": srt_lib.SRT_REJX_BAD_MODE,
        f"#!::r=demo,m=publish,t=file,s={KEY}": srt_lib.SRT_REJX_NOTSUP_MEDIA,
        f"#!::r=demo,m=publish,key={KEY}": srt_lib.SRT_REJX_KEY_NOTSUP,
        "#!::r=demo,m=publish,broken": srt_lib.SRT_REJX_BAD_REQUEST,
    }
    for text, reason in refused.items():
        with pytest.raises(StreamIdRefused) as caught:
            parse_stream_id(text)
        assert caught.value.reason == reason, text
        assert KEY not in str(caught.value)  # the message never repeats the key


@given(st.text(max_size=300))
def test_any_stream_id_parses_or_is_refused(text: str) -> None:
    try:
        channel, key = parse_stream_id(text)
    except StreamIdRefused as exc:
        assert 1000 <= exc.reason < 1600
    else:
        assert channel and key


def test_annex_b_is_split_into_nal_units() -> None:
    stream = b"\x00\x00\x00\x01\x09\xf0" + b"\x00\x00\x00\x01\x67\x42\x00" + b"\x00\x00\x01\x68\xce" \
        + b"\x00\x00\x01\x65\x88\x00\x01"
    assert list(iter_nal_units(stream)) == [b"\x09\xf0", b"\x67\x42", b"\x68\xce", b"\x65\x88\x00\x01"]
    assert list(iter_nal_units(b"junk")) == []
    assert list(iter_nal_units(b"xx\x00\x00\x01\x41\x9a")) == [b"\x41\x9a"]


# ------------------------------------------------------------------ against encoders
class RecordingSink:
    def __init__(self) -> None:
        self.video: list[tuple[bytes, int, int]] = []
        self.corrupt: list[int] = []
        self.audio: list[tuple[str, bytes, int]] = []
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_ts_video(self, data: bytes, pts: int, dts: int, corrupt: bool) -> None:
        if corrupt:
            self.corrupt.append(len(self.video))
        self.video.append((data, pts, dts))

    def on_ts_audio(self, codec: str, data: bytes, duration: int) -> None:
        self.audio.append((codec, data, duration))

    async def close(self, reason: str) -> None:
        self.closed.set_result(reason)


class Endpoint:
    def __init__(self, passphrase: str | None = None, latency_ms: int | None = None) -> None:
        self.sinks: list[RecordingSink] = []
        self.requests: list[SrtPublish] = []
        self.server = SrtServer(self.on_publish, port=0, passphrase=passphrase, latency_ms=latency_ms)

    async def on_publish(self, request: SrtPublish) -> RecordingSink:
        self.requests.append(request)
        if request.key != KEY:
            raise PublishRefused("invalid stream key", status=401)
        sink = RecordingSink()
        self.sinks.append(sink)
        return sink

    async def closed(self, index: int, timeout: float = 20.0) -> str:
        return await asyncio.wait_for(asyncio.shield(self.sinks[index].closed), timeout)


@pytest.fixture
async def endpoint() -> Any:
    e = Endpoint()
    await e.server.start()
    yield e
    await e.server.close()


async def _ffmpeg(port: int, *codecs: str, stream_id: str = STREAM_ID, seconds: float = 2.0,
                  passphrase: str | None = None) -> tuple[int, str]:
    url = f"srt://127.0.0.1:{port}?streamid={stream_id}" + (f"&passphrase={passphrase}" if passphrase else "")
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
        *codecs, "-f", "mpegts", url, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-g", "30")


def _types(access_unit: bytes) -> list[int]:
    return [n[0] & 0x1F for n in iter_nal_units(access_unit)]


@needs_ffmpeg
async def test_h264_baseline_and_aac_arrive_as_access_units(endpoint: Endpoint) -> None:
    code, err = await _ffmpeg(endpoint.server.port, *H264, "-profile:v", "baseline", "-bf", "0", "-c:a", "aac")
    assert code == 0, err
    (sink,) = endpoint.sinks
    assert await endpoint.closed(0) == "the encoder disconnected"
    (request,) = endpoint.requests
    assert (request.channel, request.key) == ("demo", KEY) and request.peer.startswith("127.0.0.1:")
    # 2 s at 30 fps, but for the end: libsrt drops what it held for its 120 ms latency window
    # when the caller closes.
    assert len(sink.video) >= 50
    pts = [p for _, p, _ in sink.video]
    assert all(p == d for _, p, d in sink.video)  # no reordering
    assert {b - a for a, b in zip(pts, pts[1:], strict=False)} == {3000}  # every frame, in order
    first = _types(sink.video[0][0])
    assert first[:3] == [9, 7, 8] and 5 in first  # AUD, SPS, PPS, …, IDR: starts on a key frame
    keyframes = [i for i, (au, _, _) in enumerate(sink.video) if 5 in _types(au)]
    assert keyframes[:2] == [0, 30]
    assert {codec for codec, _, _ in sink.audio} == {"aac"}
    assert all(data[:2] in (b"\xff\xf1", b"\xff\xf9") for _, data, _ in sink.audio)  # ADTS frames
    assert len(sink.audio) >= 70  # 2 s of 1024-sample frames at 48 kHz: 94, less the ends


@needs_ffmpeg
async def test_b_frames_show_as_reordered_timestamps(endpoint: Endpoint) -> None:
    code, err = await _ffmpeg(endpoint.server.port, "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
                              "-profile:v", "high", "-bf", "2", "-c:a", "aac")
    assert code == 0, err
    await endpoint.closed(0)
    video = endpoint.sinks[0].video
    assert any(p != d for _, p, d in video)
    dts = [d for _, _, d in video]
    assert dts == sorted(dts)


@needs_ffmpeg
async def test_opus_packets_arrive_with_their_duration(endpoint: Endpoint) -> None:
    code, err = await _ffmpeg(endpoint.server.port, *H264, "-bf", "0", "-c:a", "libopus", "-b:a", "64k")
    assert code == 0, err
    await endpoint.closed(0)
    audio = endpoint.sinks[0].audio
    assert len(audio) >= 80 and {(codec, duration) for codec, _, duration in audio} == {("opus", 960)}


@needs_ffmpeg
async def test_a_wrong_key_is_refused_in_the_handshake_and_not_logged(
        endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        code, err = await _ffmpeg(endpoint.server.port, *H264, "-c:a", "aac",
                                  stream_id="#!::r=demo,m=publish,s=sk_wrong_key")
        assert code != 0 and "rejection" in err.lower()
        assert await asyncio.to_thread(srt_caller.rejection, endpoint.server.port,
                                       "#!::r=demo,m=publish,s=sk_wrong_key") == srt_lib.SRT_REJX_UNAUTHORIZED
    assert not endpoint.sinks and len(endpoint.requests) == 2
    assert "refused (1401): invalid stream key" in caplog.text and "sk_wrong_key" not in caplog.text


@needs_ffmpeg
async def test_garbage_other_video_or_a_stall_end_only_that_connection(
        endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    port = endpoint.server.port
    # Garbage instead of MPEG-TS: no program in the first MiB, the connection ends.
    sock = await asyncio.to_thread(srt_caller.connect, port, STREAM_ID)
    await asyncio.to_thread(lambda: [srt_caller.send(sock, os.urandom(1316)) for _ in range(900)])
    assert await endpoint.closed(0, 10) == "no MPEG-TS program in the first 1 MiB: send MPEG-TS"
    srt_caller.close(sock)
    # Video that is not H.264: refused with what to send.
    code, _ = await _ffmpeg(port, "-c:v", "mpeg2video", "-c:a", "aac", seconds=1.5)
    assert "send H.264" in await endpoint.closed(1)
    # A caller that connects and sends nothing is timed out.
    monkeypatch.setattr(srt_server, "STALL_TIMEOUT_S", 1.0)
    sock = await asyncio.to_thread(srt_caller.connect, port, STREAM_ID)
    try:
        assert await endpoint.closed(2, 10) == "nothing received for 1 s"
    finally:
        srt_caller.close(sock)
    # The listener takes the next encoder as if nothing happened.
    code, err = await _ffmpeg(port, *H264, "-bf", "0", "-c:a", "aac", seconds=1.0)
    assert code == 0, err
    await endpoint.closed(3)
    assert len(endpoint.sinks[3].video) >= 20


@needs_ffmpeg
async def test_a_listener_passphrase_is_enforced() -> None:
    endpoint = Endpoint(passphrase="correct horse battery")
    await endpoint.server.start()
    try:
        port = endpoint.server.port
        code, err = await _ffmpeg(port, *H264, "-c:a", "aac", seconds=1.0, passphrase="correct horse battery")
        assert code == 0, err
        await endpoint.closed(0)
        assert len(endpoint.sinks[0].video) >= 20
        with pytest.raises(srt_caller.Rejected):  # no passphrase: refused after admission
            await asyncio.to_thread(srt_caller.connect, port, STREAM_ID)
        with pytest.raises(srt_caller.Rejected):
            await asyncio.to_thread(srt_caller.connect, port, STREAM_ID, "a wrong passphrase")
    finally:
        await endpoint.server.close()
    # A session admitted for a caller whose handshake then failed is not left open.
    assert all(sink.closed.done() for sink in endpoint.sinks)


async def test_the_receiver_latency_is_negotiated_with_callers(endpoint: Endpoint) -> None:
    async def latency_of(port: int) -> int:
        sock = await asyncio.to_thread(srt_caller.connect, port, STREAM_ID)
        try:
            return srt_caller.peer_latency_ms(sock)
        finally:
            srt_caller.close(sock)

    assert await latency_of(endpoint.server.port) == 120  # libsrt's default
    tuned = Endpoint(latency_ms=300)
    await tuned.server.start()
    try:
        assert await latency_of(tuned.server.port) == 300
    finally:
        await tuned.server.close()


@needs_ffmpeg
async def test_an_access_unit_with_a_lost_transport_packet_is_flagged(endpoint: Endpoint, tmp_path: Path) -> None:
    """A video transport packet missing mid-stream (lost beyond SRT's retransmission): the
    access unit it belonged to comes flagged ``corrupt`` (the relay counts it as dropped)."""
    ts = tmp_path / "clip.ts"
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-t", "2", *H264, "-bf", "0", "-f", "mpegts", str(ts))
    assert await proc.wait() == 0
    data = ts.read_bytes()
    packets = [data[i:i + 188] for i in range(0, len(data), 188)]
    video_pid = 0x100  # FFmpeg's first elementary stream
    middle = [i for i, p in enumerate(packets) if ((p[1] & 0x1F) << 8 | p[2]) == video_pid and not p[1] & 0x40]
    lost = middle[len(middle) // 2]
    stream = b"".join(p for i, p in enumerate(packets) if i != lost)
    sock = await asyncio.to_thread(srt_caller.connect, endpoint.server.port, STREAM_ID)
    try:
        await asyncio.to_thread(lambda: [srt_caller.send(sock, stream[i:i + 1316]) for i in range(0, len(stream), 1316)])
        await wait_for(lambda: endpoint.sinks and len(endpoint.sinks[0].video) >= 55, 10, lambda: "the clip's frames")
    finally:
        srt_caller.close(sock)
    sink = endpoint.sinks[0]
    assert len(sink.corrupt) == 1 and 0 < sink.corrupt[0] < len(sink.video) - 1, sink.corrupt


async def test_a_service_answering_too_late_leaves_no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admission waits OPEN_TIMEOUT_S for the service: a caller is then refused (1502),
    the opening is cancelled, and a session opened all the same (the race) is ended."""
    monkeypatch.setattr(srt_server, "OPEN_TIMEOUT_S", 0.3)
    cancelled: list[bool] = []
    late = RecordingSink()

    async def slow(_: SrtPublish) -> RecordingSink:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return late

    server = SrtServer(slow, port=0)
    await server.start()
    try:
        code = await asyncio.to_thread(srt_caller.rejection, server.port, STREAM_ID)
        assert code == srt_lib.SRT_REJX_GW
        await wait_for(lambda: cancelled, 5, "the opening cancelled")
        # An opening that completed just as the deadline passed: its session is ended.
        future: concurrent.futures.Future[RecordingSink] = concurrent.futures.Future()
        future.set_result(late)
        server._close_late_sink(future)
        assert "answered late" in await asyncio.wait_for(asyncio.shield(late.closed), 5)
    finally:
        await server.close()
