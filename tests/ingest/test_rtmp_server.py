"""The RTMP endpoint against real encoders on 127.0.0.1: Debian's ffmpeg publishes H.264 +
AAC (baseline, and High with B-frames); a wrong key is refused at publish; and a peer that
sends garbage, stalls, or sends Enhanced RTMP HEVC ends its own connection only."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import Any

import pytest

from ingest import amf0, flv, rtmp_server
from ingest import rtmp_chunks as rc
from ingest.rtmp_server import PublishRefused, PublishRequest, RtmpServer

KEY = "sk_" + "k3y" * 8

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


class RecordingSink:
    def __init__(self) -> None:
        self.video: list[tuple[int, flv.VideoTag]] = []
        self.audio: list[tuple[int, flv.AudioTag]] = []
        self.metadata: dict[str, Any] | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_video(self, timestamp_ms: int, tag: flv.VideoTag) -> None:
        self.video.append((timestamp_ms, tag))

    async def on_audio(self, timestamp_ms: int, tag: flv.AudioTag) -> None:
        self.audio.append((timestamp_ms, tag))

    async def on_metadata(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    async def close(self, reason: str) -> None:
        self.closed.set_result(reason)


class Endpoint:
    def __init__(self) -> None:
        self.sinks: list[RecordingSink] = []
        self.requests: list[PublishRequest] = []
        self.sink_type = RecordingSink
        self.server = RtmpServer(self.on_publish, port=0)

    async def on_publish(self, request: PublishRequest) -> RecordingSink:
        self.requests.append(request)
        if request.key != KEY:
            raise PublishRefused("invalid stream key")
        sink = self.sink_type()
        self.sinks.append(sink)
        return sink


@pytest.fixture
async def endpoint() -> Any:
    e = Endpoint()
    await e.server.start()
    yield e
    await e.server.close()


async def _ffmpeg(port: int, key: str, *video: str, seconds: float = 2.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", *video, "-c:a", "aac",
        "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{key}",
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


async def test_ffmpeg_h264_baseline_and_aac_arrive_as_tags(endpoint: Endpoint) -> None:
    rc_, err = await _ffmpeg(endpoint.server.port, KEY, "-profile:v", "baseline", "-bf", "0")
    assert rc_ == 0, err
    (sink,) = endpoint.sinks
    assert await asyncio.wait_for(sink.closed, 5) == "unpublished"
    assert endpoint.requests[0].app == "live"
    kinds = [tag.kind for _, tag in sink.video]
    assert kinds[0] == "config" and kinds.count("frame") >= 55  # 2 s at 30 fps
    config = flv.parse_avc_config(sink.video[0][1].data)
    assert config.profile == 66 and config.sps and config.pps
    frames = [(ts, tag) for ts, tag in sink.video if tag.kind == "frame"]
    assert all(tag.composition_ms == 0 for _, tag in frames)  # no B-frames: no reordering
    stamps = [ts for ts, _ in frames]
    assert stamps == sorted(stamps) and 1800 <= stamps[-1] - stamps[0] <= 2100
    assert frames[0][1].keyframe and sum(tag.keyframe for _, tag in frames) >= 2  # -g 30
    for _, tag in frames:
        nalus = flv.split_nalus(tag.data, config.length_size)
        assert any(n[0] & 0x1F in (1, 5) for n in nalus)  # a coded slice in every access unit
    assert flv.parse_aac_config(sink.audio[0][1].data) == flv.AacConfig(2, 48000, 1)
    assert len(sink.audio) >= 80  # 2 s of 1024-sample frames at 48 kHz: ~94
    assert sink.metadata is not None and sink.metadata["width"] == 320


async def test_b_frames_show_as_composition_offsets(endpoint: Endpoint) -> None:
    # OBS's x264 default: High profile, 2 B-frames (ultrafast would fall back to Main, no CABAC)
    rc_, err = await _ffmpeg(endpoint.server.port, KEY, "-preset", "veryfast", "-profile:v", "high", "-bf", "2")
    assert rc_ == 0, err
    (sink,) = endpoint.sinks
    await asyncio.wait_for(sink.closed, 5)
    assert flv.parse_avc_config(sink.video[0][1].data).profile == 100
    assert sum(1 for _, tag in sink.video if tag.kind == "frame" and tag.composition_ms) >= 30


async def test_a_wrong_key_is_refused_at_publish_and_never_logged(endpoint: Endpoint,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk_wrong_" + os.urandom(6).hex()
    rc_, err = await _ffmpeg(endpoint.server.port, wrong, "-bf", "0", seconds=1)
    assert rc_ != 0
    assert "invalid stream key" in err  # ffmpeg prints the server's onStatus description
    assert not endpoint.sinks and endpoint.requests[0].key == wrong
    assert wrong not in caplog.text and "refused" in caplog.text


# ----------------------------------------------------------- a hand-made publisher


async def _publisher(port: int) -> tuple[asyncio.StreamWriter, rc.ChunkReader, rc.ChunkWriter]:
    """Handshake, connect, createStream and publish with the right key, as ffmpeg does."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x03" + bytes(1536))
    await reader.readexactly(1 + 1536 * 2)
    writer.write(bytes(1536))
    chunks = rc.ChunkReader(rc.read_exactly(reader, 5))
    out = rc.ChunkWriter(writer.write)
    out.send(rc.COMMAND_AMF0, 0, amf0.encode_all("connect", 1.0, {"app": "live", "tcUrl": "rtmp://x/live"}))
    out.send(rc.COMMAND_AMF0, 0, amf0.encode_all("createStream", 2.0, None))
    out.send(rc.COMMAND_AMF0, 1, amf0.encode_all("publish", 3.0, None, KEY, "live"))
    while True:
        message = await chunks.message()
        if message.type_id == rc.COMMAND_AMF0 and amf0.decode_all(message.payload)[0] == "onStatus":
            assert amf0.decode_all(message.payload)[3]["code"] == "NetStream.Publish.Start"
            return writer, chunks, out


async def test_garbage_ends_that_connection_only(endpoint: Endpoint) -> None:
    writer, _, _ = await _publisher(endpoint.server.port)
    writer.write(b"\x46" + bytes(64))  # a type-1 header on a chunk stream never opened
    assert (await asyncio.wait_for(endpoint.sinks[0].closed, 5)).startswith("malformed input")
    writer.close()
    rc_, err = await _ffmpeg(endpoint.server.port, KEY, "-bf", "0", seconds=1)
    assert rc_ == 0, err
    assert len(endpoint.sinks) == 2 and endpoint.sinks[1].video


async def test_a_stalled_encoder_is_timed_out(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtmp_server, "STALL_TIMEOUT_S", 0.5)
    writer, _, _ = await _publisher(endpoint.server.port)
    assert await asyncio.wait_for(endpoint.sinks[0].closed, 5) == "timed out"
    writer.close()


async def test_enhanced_rtmp_hevc_is_refused_with_a_message(endpoint: Endpoint) -> None:
    writer, chunks, out = await _publisher(endpoint.server.port)
    out.send(rc.VIDEO, 1, bytes((0x90,)) + b"hvc1" + bytes(40))  # IsExHeader, sequence start, FourCC
    reason = await asyncio.wait_for(endpoint.sinks[0].closed, 5)
    assert "HEVC" in reason and "H.264" in reason
    status = None
    while status is None:
        message = await chunks.message()
        if message.type_id == rc.COMMAND_AMF0:
            status = amf0.decode_all(message.payload)[3]
    assert status["level"] == "error" and "HEVC" in status["description"]
    writer.close()


class SlowSink(RecordingSink):
    """A sink slower than the encoder: the encoder has sent everything and closed before
    the endpoint has read its first frames."""

    async def on_video(self, timestamp_ms: int, tag: flv.VideoTag) -> None:
        await asyncio.sleep(0.02)
        await super().on_video(timestamp_ms, tag)


async def test_rtmps_with_a_certificate(tmp_path: Any) -> None:
    """RTMP over TLS (``rtmps://``): the same endpoint given an ``ssl.SSLContext``. The
    encoder sends 1 s of video faster than real time to a slow sink and closes; TLS has no
    half-close, so asyncio has lost the connection while most of it is still buffered:
    every frame and the ``deleteStream`` after them are still read."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    endpoint = Endpoint()
    endpoint.server = RtmpServer(endpoint.on_publish, port=0, ssl=context)
    endpoint.sink_type = SlowSink
    await endpoint.server.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
            "-i", "testsrc2=size=160x120:rate=30", "-t", "1", "-c:v", "libx264", "-preset", "ultrafast",
            "-bf", "0", "-f", "flv", f"rtmps://127.0.0.1:{endpoint.server.port}/live/{KEY}",
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        (sink,) = endpoint.sinks
        assert await asyncio.wait_for(sink.closed, 10) == "unpublished"
        assert sum(1 for _, tag in sink.video if tag.kind == "frame") == 30
    finally:
        await endpoint.server.close()
