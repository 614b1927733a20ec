"""Live thumbnails (:mod:`community.thumbnails`): a real publisher into the real service,
JPEGs made by the shared worker process at a low priority, served with caching headers;
the worker's key-frame → JPEG step on its own; bad names and settings."""

from __future__ import annotations

import asyncio
import fractions
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import av
import cv2
import numpy as np
import psutil
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_encoder
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from common.config import ConfigError
from community import thumbnail_link as link
from community.app import COMMUNITY
from community.models import Channel, Stream, utcnow
from community.thumbnail_worker import Worker
from community.thumbnails import CACHE_CONTROL, ThumbnailConfig, ThumbnailService, thumbnails_of
from loadtest import whip_client
from loadtest.ffmpeg_whip import FfmpegWhipProcess
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from sfu.direct import MediaPacket
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_channel, make_config

H264_PARAMETERS = {"packetization-mode": "1", "level-asymmetry-allowed": "1",
                   "profile-level-id": "42e01f"}


# ------------------------------------------------------------ the worker's step
def key_frame_packets(mime: str, width: int, height: int) -> tuple[dict, list[MediaPacket]]:
    """A key frame (left half red, right half black) encoded by aiortc's own VP8/H.264
    encoder and packetized: ``(track info, RTP packets)``."""
    codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000,
                                  parameters=dict(H264_PARAMETERS) if "264" in mime else {})
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, : width // 2] = (0, 0, 255)
    frame = av.VideoFrame.from_ndarray(picture, format="bgr24").reformat(format="yuv420p")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    payloads, timestamp = get_encoder(codec).encode(frame, force_keyframe=True)
    packets = [MediaPacket(1000 + i, timestamp, int(i == len(payloads) - 1), payload, False, None)
               for i, payload in enumerate(payloads)]
    track = {"mime_type": mime, "clock_rate": 90000, "channels": None,
             "parameters": dict(codec.parameters)}
    return track, packets


def body(message: bytes) -> bytes:
    """The body of a framed message (after length and type)."""
    return message[5:]


@pytest.mark.parametrize("mime", ["video/VP8", "video/H264"])
@pytest.mark.parametrize(("size", "width", "expected"), [
    ((1280, 720), 640, (640, 360)),  # scaled, aspect kept
    ((320, 240), 640, (320, 240)),  # never enlarged
])
def test_worker_turns_a_key_frame_into_a_scaled_jpeg(
        mime: str, size: tuple[int, int], width: int, expected: tuple[int, int]) -> None:
    track, packets = key_frame_packets(mime, *size)
    worker = Worker()
    assert worker.handle(link.CAPTURE, body(link.capture(link.CaptureRequest(7, track, width, 80)))) == []
    replies = []
    for packet in packets:
        replies += worker.handle(link.VIDEO, body(link.encode_video(7, packet)))
    assert len(replies) == 1 and replies[0][4:5] == link.IMAGE
    image = link.decode_image(body(replies[0]))
    assert (image.capture, image.width, image.height) == (7, *expected)
    assert image.cpu_us > 0
    picture = cv2.imdecode(np.frombuffer(image.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (expected[1], expected[0], 3)
    w, h = expected
    assert picture[h // 2, w // 4, 2] > 200 and picture[h // 2, w // 4, :2].max() < 60  # red
    assert picture[h // 2, 3 * w // 4].max() < 40  # black
    assert worker.captures == {}  # done: later packets of the capture are ignored
    assert worker.handle(link.VIDEO, body(link.encode_video(7, packets[0]))) == []


def test_worker_refuses_what_it_cannot_decode() -> None:
    worker = Worker()
    audio = {"mime_type": "audio/opus", "clock_rate": 48000, "channels": 2, "parameters": {}}
    [reply] = worker.handle(link.CAPTURE, body(link.capture(link.CaptureRequest(1, audio, 640, 80))))
    assert reply[4:5] == link.FAILED
    assert link.decode_failed(body(reply)) == (1, "no decoder for audio/opus")
    vp8 = {"mime_type": "video/VP8", "clock_rate": 90000, "channels": None, "parameters": {}}
    [reply] = worker.handle(link.CAPTURE, body(link.capture(link.CaptureRequest(2, vp8, 0, 80))))
    assert link.decode_failed(body(reply))[0] == 2
    # Key frames that do not decode: the worker tries three, then gives up on the capture.
    assert worker.handle(link.CAPTURE, body(link.capture(link.CaptureRequest(3, vp8, 640, 80)))) == []
    replies = []
    for n in range(3):
        garbage = MediaPacket(n, n * 3000, 1, b"\x10\x00" + bytes(range(7)) * 3, True, None)
        replies += worker.handle(link.VIDEO, body(link.encode_video(3, garbage)))
    assert [r[4:5] for r in replies] == [link.FAILED] and 3 not in worker.captures
    with pytest.raises(link.LinkClosed):
        worker.handle(link.VIDEO, b"\x00\x01")  # shorter than its header
    with pytest.raises(link.LinkClosed):
        worker.handle(link.CAPTURE, b"{not json")


@pytest.mark.parametrize(("env", "message"), [
    ({"RELAYCAST_THUMBNAIL_INTERVAL_S": "0.1"}, "below 0.5"),
    ({"RELAYCAST_THUMBNAIL_INTERVAL_S": "soon"}, "not a number"),
    ({"RELAYCAST_THUMBNAIL_WIDTH": "9000"}, "outside"),
    ({"RELAYCAST_THUMBNAIL_QUALITY": "0"}, "outside"),
    ({"RELAYCAST_THUMBNAIL_NICE": "-5"}, "outside"),
])
def test_bad_settings_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        ThumbnailConfig.from_env(env)
    assert next(iter(env)) in str(caught.value)


def test_settings_defaults() -> None:
    config = ThumbnailConfig.from_env({})
    assert (config.interval_s, config.width, config.quality, config.nice) == (30.0, 640, 80, 19)


# ------------------------------------------------------------ the real service
@pytest.fixture
async def fast_service(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    """The service with a thumbnail every second, 320 px wide."""
    monkeypatch.setenv("RELAYCAST_THUMBNAIL_INTERVAL_S", "1")
    monkeypatch.setenv("RELAYCAST_THUMBNAIL_WIDTH", "320")
    async with Service(make_config()) as svc:
        yield svc


def service_of(svc: Service) -> ThumbnailService:
    service = thumbnails_of(svc.app)
    assert service is not None and service.direct is not None  # attached to the worker
    return service


async def go_live(svc: Service, channel: str) -> str:
    """The channel's open stream (made live here when no lifecycle made one), announced
    with ``stream.started`` as the lifecycle does.  :returns: the stream id."""
    community = svc.app[COMMUNITY]
    for _ in range(3):
        try:
            async with community.db.transaction() as session:
                channel_id = await session.scalar(select(Channel.id).where(Channel.name == channel))
                stream = await session.scalar(select(Stream).where(
                    Stream.channel_id == channel_id, Stream.status != "ended"))
                if stream is None:
                    stream = Stream(channel_id=channel_id, title="thumbnail test", status="live",
                                    started_at=utcnow())
                    session.add(stream)
                    await session.flush()
                stream_id = stream.id
            break
        except IntegrityError:  # the lifecycle opened it meanwhile
            continue
    await community.events.emit("stream.started", {"id": stream_id, "channel": channel})
    return stream_id


async def thumbnail_at(svc: Service, stream_id: str) -> object:
    async with svc.app[COMMUNITY].db.session() as session:
        return await session.scalar(select(Stream.thumbnail_at).where(Stream.id == stream_id))


@pytest.mark.timeout(120)
async def test_live_stream_gets_fresh_cached_thumbnails_from_a_low_priority_worker(
        fast_service: Service, http: aiohttp.ClientSession) -> None:
    svc = fast_service
    thumbnails = service_of(svc)
    pub = await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY,
                                    [PatternVideoTrack(640, 360, 30)])
    try:
        await whip_client.wait_connected(pub.pc)
        stream_id = await go_live(svc, "demo")
        path = thumbnails.directory / "demo.jpg"
        await wait_for(path.is_file, 30, "the first thumbnail file")

        # Served with caching headers; a 16:9 VP8 stream gives a 320x180 JPEG.
        async with http.get(f"{svc.url}/thumbnails/demo.jpg") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "image/jpeg"
            assert resp.headers["Cache-Control"] == CACHE_CONTROL
            etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
            first = await resp.read()
        picture = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape == (180, 320, 3)
        assert await thumbnail_at(svc, stream_id) is not None

        async with http.head(f"{svc.url}/thumbnails/demo.jpg") as resp:
            assert resp.status == 200 and resp.headers["Cache-Control"] == CACHE_CONTROL

        # The picture changes with the video: a later thumbnail has other bytes and ETag.
        async def changed() -> bytes | None:
            async with http.get(f"{svc.url}/thumbnails/demo.jpg") as resp:
                data = await resp.read()
                return data if data != first and resp.headers["ETag"] != etag else None

        later = await wait_for(changed, 30, "a newer thumbnail", interval_s=0.25)
        assert cv2.imdecode(np.frombuffer(later, np.uint8), cv2.IMREAD_COLOR).shape == (180, 320, 3)
        async with http.get(f"{svc.url}/thumbnails/demo.jpg",
                            headers={"If-Modified-Since": modified, "If-None-Match": etag}) as resp:
            assert resp.status == 200  # the old validator no longer matches

        # Decoding ran in the worker: another process, at a lower priority, our child.
        pid = thumbnails.process.pid
        assert pid is not None and pid != os.getpid()
        worker = psutil.Process(pid)
        assert worker.ppid() == os.getpid()
        assert "community.thumbnail_worker" in " ".join(worker.cmdline())
        assert worker.nice() >= 10 and worker.nice() > psutil.Process().nice()
        assert thumbnails.process.images >= 2 and thumbnails.process.to_json()["worker_cpu_ms_per_image"] > 0

        # SIGKILL the worker: a new one is started and thumbnails go on.
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: thumbnails.process.pid not in (None, pid), 30, "a new worker")
        assert thumbnails.process.starts == 2
        written = thumbnails.written
        await wait_for(lambda: thumbnails.written >= written + 2, 30, "thumbnails after the restart")
        assert pub.pc.connectionState == "connected"

        # The stream ends: captures stop, the last thumbnail stays served.
        await svc.app[COMMUNITY].events.emit("stream.ended", {"id": stream_id, "channel": "demo"})
        assert "demo" not in thumbnails.live
        async with http.get(f"{svc.url}/thumbnails/demo.jpg") as resp:
            assert resp.status == 200
            etag = resp.headers["ETag"]

        # A revalidation of the unchanged file is a 304 with the same caching headers
        # (a capture cancelled by the end may still land once: then revalidate again).
        async def not_modified() -> bool:
            nonlocal etag
            async with http.get(f"{svc.url}/thumbnails/demo.jpg",
                                headers={"If-None-Match": etag}) as resp:
                if resp.status == 304:
                    assert resp.headers["Cache-Control"] == CACHE_CONTROL
                    assert resp.headers["ETag"] == etag
                    return True
                assert resp.status == 200
                etag = resp.headers["ETag"]
                return False

        await wait_for(not_modified, 10, "a 304 for the unchanged thumbnail")
    finally:
        await pub.close()


@pytest.mark.timeout(120)
async def test_h264_publisher_gets_a_thumbnail(fast_service: Service,
                                               http: aiohttp.ClientSession) -> None:
    svc = fast_service
    thumbnails = service_of(svc)
    key = await make_channel(svc.app, "h264cam")
    # FFmpeg's WHIP muxer ignores PLI: its key frames come every `gop` frames.
    publisher = await FfmpegWhipProcess.start(f"{svc.url}/whip/h264cam", key, seconds=60,
                                              width=640, height=480, fps=30, args=["--gop", "15"])
    try:
        await publisher.wait_connected(timeout=30)
        stream_id = await go_live(svc, "h264cam")
        info = thumbnails.direct.room("h264cam") if thumbnails.direct else None
        assert info is not None and info.tracks["video"].mime_type.lower() == "video/h264"
        await wait_for(lambda: thumbnail_at(svc, stream_id), 30, "an H.264 thumbnail")
        async with http.get(f"{svc.url}/thumbnails/h264cam.jpg") as resp:
            assert resp.status == 200
            picture = cv2.imdecode(np.frombuffer(await resp.read(), np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (240, 320, 3)  # 4:3 kept
    finally:
        thumbnails.untrack("h264cam")
        await publisher.stop()


@pytest.mark.timeout(60)
async def test_private_channel_gets_no_thumbnail(fast_service: Service,
                                                 http: aiohttp.ClientSession) -> None:
    svc = fast_service
    thumbnails = service_of(svc)
    key = await make_channel(svc.app, "secretcam", private=True)
    (thumbnails.directory).mkdir(parents=True, exist_ok=True)
    (thumbnails.directory / "secretcam.jpg").write_bytes(b"\xff\xd8 an old one")
    pub = await whip_client.publish(f"{svc.url}/whip/secretcam", key, [PatternVideoTrack(320, 180, 30)])
    try:
        await whip_client.wait_connected(pub.pc)
        assert await thumbnails.capture("secretcam") is None
        assert not (thumbnails.directory / "secretcam.jpg").exists()  # removed
        async with http.get(f"{svc.url}/thumbnails/secretcam.jpg") as resp:
            assert resp.status == 404
            assert resp.content_type == "application/problem+json"
    finally:
        await pub.close()


BAD_PATHS = [
    "nosuch.jpg",  # a valid name without a thumbnail
    "demo",  # no .jpg
    "demo.png",
    ".jpg",
    "-demo.jpg",
    "..%2Fdemo.jpg",
    "%2E%2E.jpg",
    "de%00mo.jpg",
    "a" * 65 + ".jpg",
    "d%C3%A9mo.jpg",
    "demo.jpg%20",
]


async def test_bad_or_unknown_names_are_404_problems(service: Service,
                                                     http: aiohttp.ClientSession) -> None:
    for path in BAD_PATHS:
        async with http.get(f"{service.url}/thumbnails/{path}") as resp:
            assert resp.status == 404, path
            assert resp.content_type == "application/problem+json", path
            problem = await resp.json(content_type=None)
            assert problem["status"] == 404


PARENT = """
import asyncio
from community.thumbnail_process import ThumbnailProcess

async def main():
    process = ThumbnailProcess(nice=19)
    process.start()
    while process.pid is None:
        await asyncio.sleep(0.01)
    print(process.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.timeout(60)
async def test_worker_dies_with_its_parent() -> None:
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", PARENT,
                                                  stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), 30)  # type: ignore[union-attr]
        worker = psutil.Process(int(line))
        assert worker.ppid() == parent.pid and worker.nice() == 19
    finally:
        parent.kill()
        await parent.wait()

    def gone() -> bool:
        try:
            return worker.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    await wait_for(gone, 10, "the worker to end with its parent")


@pytest.mark.timeout(120)
async def test_room_on_a_worker_process_is_piped_in_for_its_thumbnails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # --workers 2: the room's publisher is on an SFU worker child; this process's node (role
    # hls) pulls the room in through a pipe for each capture.
    monkeypatch.setenv("RELAYCAST_THUMBNAIL_INTERVAL_S", "1")
    async with Service(make_config(), workers=2) as svc:
        thumbnails = service_of(svc)
        pub = await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY,
                                        [PatternVideoTrack(320, 180, 30)])
        try:
            await whip_client.wait_connected(pub.pc)
            assert svc.worker is not None and "demo" not in svc.worker.routers
            stream_id = await go_live(svc, "demo")
            await wait_for(lambda: thumbnail_at(svc, stream_id), 40, "a thumbnail through the pipe")
            picture = cv2.imread(str(thumbnails.directory / "demo.jpg"))
            assert picture is not None and picture.shape == (180, 320, 3)
        finally:
            thumbnails.untrack("demo")
            await pub.close()
