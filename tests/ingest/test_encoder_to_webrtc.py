"""RTMP and SRT in, WebRTC out: Debian's ffmpeg publishes to the RTMP endpoint (FLV) or the SRT
listener (MPEG-TS, the SRT Access Control stream id), a WhipRelay republishes into a real
relaycast service over POST /whip, and an aiortc WHEP viewer decodes what the SFU forwards —
H.264 baseline passed through (nothing encoded), High with B-frames transcoded, a wrong key
refused with the service's reason at connect/publish, a reconnect continued."""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import pytest

from common import latm
from ingest import srt_lib, whip_relay
from ingest.rtmp_server import PublishRequest, RtmpServer
from ingest.srt_server import SrtPublish, SrtServer
from ingest.whip_relay import WhipRelay
from loadtest import whip_client
from relaycast.service import Service
from sfu import negotiation, pause_resume
from tests.ingest import srt_caller
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config
from tests.sfu.sfu_helpers import receiver_tracks

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


@dataclass
class Ingest:
    protocol: str
    service: Service
    server: RtmpServer | SrtServer
    relays: list[WhipRelay] = field(default_factory=list)

    def url(self, key: str = STREAM_KEY, channel: str = "demo") -> str:
        if self.protocol == "rtmp":
            return f"rtmp://127.0.0.1:{self.server.port}/live/{key}"
        return f"srt://127.0.0.1:{self.server.port}?streamid=#!::r={channel},m=publish,s={key}"

    def publishing(self) -> bool:
        router = self.service.worker.routers.get("demo") if self.service.worker else None
        return router is not None and router.producers.get("video") is not None


@pytest.fixture(params=["rtmp", "srt"])
async def ingest(request: pytest.FixtureRequest) -> AsyncIterator[Ingest]:
    async with Service(make_config()) as service, aiohttp.ClientSession() as http:
        relays: list[WhipRelay] = []

        async def on_publish(publish: PublishRequest) -> WhipRelay:
            relay = await WhipRelay.open(f"{service.url}/whip", publish.key, http, publish.peer)
            relays.append(relay)
            return relay

        async def on_srt_publish(publish: SrtPublish) -> WhipRelay:
            relay = await WhipRelay.open(f"{service.url}/whip/{publish.channel}", publish.key, http, publish.peer)
            relays.append(relay)
            return relay

        server = RtmpServer(on_publish, port=0) if request.param == "rtmp" else SrtServer(on_srt_publish, port=0)
        await server.start()
        try:
            yield Ingest(request.param, service, server, relays)
        finally:
            await server.close()


def _ffmpeg(ingest: Ingest, seconds: float, *video: str, key: str = STREAM_KEY) -> Any:
    return asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
        "-c:v", "libx264", "-g", "30", *video, "-c:a", "aac",
        "-f", "flv" if ingest.protocol == "rtmp" else "mpegts", ingest.url(key),
        stderr=asyncio.subprocess.PIPE)


async def _watch(ingest: Ingest, seconds: float) -> list[Any]:
    """A WHEP viewer's decoded video frames for ``seconds`` (or until the stream ends)."""
    session = await whip_client.view(f"{ingest.service.url}/whep/demo", kinds=("video",))
    frames: list[Any] = []
    try:
        track = await wait_for_track(session)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            try:
                frames.append(await asyncio.wait_for(track.recv(), max(0.1, end - loop.time())))
            except TimeoutError:
                break
            except Exception:  # noqa: BLE001 — the track ended with the stream
                break
    finally:
        await session.close()
    return frames


async def wait_for_track(session: whip_client.WhipSession, kind: str = "video") -> Any:
    await whip_client.wait_connected(session.pc)
    return receiver_tracks(session.pc)[kind]


async def test_baseline_h264_is_passed_through_and_decodes_in_order(ingest: Ingest) -> None:
    proc = await _ffmpeg(ingest, 8, "-preset", "ultrafast", "-profile:v", "baseline", "-bf", "0")
    await wait_for(ingest.publishing, 10, lambda: "the publisher in the room")
    frames = await _watch(ingest, 3.0)
    router = ingest.service.worker.routers["demo"]
    video, audio = router.producers["video"], router.producers["audio"]
    # An ordinary publisher for the SFU: H.264 video, Opus audio (AAC decoded, encoded again),
    # ingest health counted as for WHIP.
    assert (video.codec.mimeType, audio.codec.mimeType) == ("video/H264", "audio/opus")
    assert video.health.packets > 0 and audio.health.packets > 0
    # The relay reports the frames only it can see dropped (none here) with the ingest health.
    await wait_for(lambda: router.ingest().get("dropped_frames") == 0, 5, lambda: "the relay's dropped frames")
    listener = await whip_client.view(f"{ingest.service.url}/whep/demo", kinds=("audio",))
    try:  # the Opus the ingest process encoded decodes: 48 kHz, 20 ms frames
        track = await wait_for_track(listener, "audio")
        heard = [await asyncio.wait_for(track.recv(), 5) for _ in range(10)]
        assert {(f.sample_rate, f.samples) for f in heard} == {(48000, 960)}
    finally:
        await listener.close()
    await proc.wait()
    (relay,) = ingest.relays
    assert not relay.transcoding  # passed through: nothing decoded or encoded on the way
    assert len(frames) >= 60, len(frames)  # 3 s at 30 fps, from the first key frame on
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    # Every frame, 1/30 s apart: FLV's millisecond timestamps make it 33 or 34 ms (× 90),
    # MPEG-TS's 90 kHz ones exactly 3000 ticks.
    assert steps <= ({2970, 3060} if ingest.protocol == "rtmp" else {3000}), steps


async def test_b_frames_are_transcoded_and_play_in_presentation_order(ingest: Ingest) -> None:
    proc = await _ffmpeg(ingest, 8, "-preset", "veryfast", "-profile:v", "high", "-bf", "2")
    await wait_for(ingest.publishing, 10, lambda: "the publisher in the room")
    frames = await _watch(ingest, 3.0)
    # The broadcaster's studio shows the advice: the SFU reports it with the ingest health.
    router = ingest.service.worker.routers["demo"]
    await wait_for(lambda: router.ingest().get("advice") == whip_relay.BFRAMES_ADVICE,
                   5, lambda: "the advice in the room's ingest report")
    await proc.wait()
    (relay,) = ingest.relays
    assert relay.transcoding
    assert len(frames) >= 45, len(frames)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)


async def test_a_wrong_key_is_refused_with_the_services_reason(
        ingest: Ingest, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        proc = await _ffmpeg(ingest, 1, "-preset", "ultrafast", "-bf", "0", key="sk_wrong")
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode != 0 and not ingest.relays
    if ingest.protocol == "rtmp":
        assert "invalid stream key" in err.decode()  # the encoder shows the service's reason
    else:  # refused in SRT's handshake with 1000 + the service's 401 (the encoder logs a rejection)
        assert "rejection" in err.decode().lower()
        assert "refused (1401): invalid stream key" in caplog.text
    assert "sk_wrong" not in caplog.text


@pytest.mark.parametrize("ingest", ["srt"], indirect=True)
async def test_srt_callers_get_the_reason_in_the_handshake(ingest: Ingest) -> None:
    port = ingest.server.port
    cases = {
        "#!::r=demo,m=publish,s=sk_wrong": srt_lib.SRT_REJX_UNAUTHORIZED,  # the service's 401
        f"#!::r=elsewhere,m=publish,s={STREAM_KEY}": srt_lib.SRT_REJX_NOTFOUND,  # no such channel: 404
        f"#!::r=demo,s={STREAM_KEY}": srt_lib.SRT_REJX_BAD_MODE,  # m defaults to request: not a publisher
        f"#!::r=demo,m=publish,x={STREAM_KEY}": srt_lib.SRT_REJX_KEY_NOTSUP,
        STREAM_KEY: srt_lib.SRT_REJX_BAD_REQUEST,  # not the access control form
        "#!::r=demo,m=publish": srt_lib.SRT_REJX_UNAUTHORIZED,  # no key
    }
    for stream_id, reason in cases.items():
        assert await asyncio.to_thread(srt_caller.rejection, port, stream_id) == reason, stream_id
    assert not ingest.relays


class _Collect:
    """A packet sink on the SFU's AAC producer: whole LATM elements (RFC 6416 §6.1: the
    marker ends one) with their RTP timestamps."""

    def __init__(self) -> None:
        self.elements: list[tuple[int, bytes]] = []
        self._pending = b""

    def forward(self, media: Any) -> None:
        self._pending += media.payload
        if media.marker:
            self.elements.append((media.timestamp, self._pending))
            self._pending = b""


async def test_the_encoders_aac_reaches_the_sfu_as_it_is(ingest: Ingest, tmp_path: Any) -> None:
    """Next to the Opus for WebRTC, the relay sends the encoder's AAC frames unchanged (the
    LL-HLS tier's audio); WebRTC viewers never get that section."""
    clip = tmp_path / ("clip.flv" if ingest.protocol == "rtmp" else "clip.ts")
    encode = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "6", "-c:v", "libx264",
        "-preset", "ultrafast", "-bf", "0", "-g", "30", "-c:a", "aac", "-ac", "2", "-b:a", "96k", str(clip))
    assert await encode.wait() == 0
    with av.open(str(clip)) as container:
        source = [bytes(p) for p in container.demux(audio=0) if p.size]
    if ingest.protocol == "srt":  # MPEG-TS carries ADTS frames: compare the raw ones
        source = [latm.parse_adts(frame)[1] for frame in source]
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy",
        "-f", "flv" if ingest.protocol == "rtmp" else "mpegts", ingest.url())
    await wait_for(lambda: ingest.publishing() and "aac" in ingest.service.worker.routers["demo"].producers,
                   10, lambda: "the AAC section in the room")
    router = ingest.service.worker.routers["demo"]
    producer = router.producers["aac"]
    assert producer.codec.mimeType == latm.MIME_TYPE and router.track_kinds == {"audio", "video"}
    sink = _Collect()
    producer.add_consumer(sink)
    await wait_for(lambda: len(sink.elements) >= 15, 10, lambda: f"{len(sink.elements)} AAC packets")
    producer.remove_consumer(sink)
    session = await whip_client.view(f"{ingest.service.url}/whep/demo")
    try:  # a WebRTC viewer is answered Opus and video only
        await whip_client.wait_connected(session.pc)
        assert sorted(receiver_tracks(session.pc)) == ["audio", "video"]
        answer = session.pc.remoteDescription.sdp
        assert "opus/48000" in answer and "MP4A-LATM" not in answer
    finally:
        await session.close()
    proc.kill()
    await proc.wait()
    payloads = [(ts, latm.parse_audio_mux_elements(payload)) for ts, payload in sink.elements]
    frames = [element for _, elements in payloads for element in elements]
    assert {config for config, _ in frames} == {latm.AacConfig(3, 2)}  # 48 kHz stereo AAC-LC
    raw = [frame for _, frame in frames]
    start = source.index(raw[0])
    assert raw == source[start:start + len(raw)]  # every frame, in order, bit for bit
    # Several frames a packet (96 kbit/s: ~250 bytes each), stamped with the first's time.
    assert max(len(elements) for _, elements in payloads) == latm.FRAMES_PER_PACKET
    steps = {((b - a) & 0xFFFFFFFF) - 1920 * len(elements)
             for (a, elements), (b, _) in itertools.pairwise(payloads)}
    assert steps == {0}  # 1,024 samples at 48 kHz in 90 kHz ticks per frame


async def test_the_opus_is_not_encoded_while_no_one_takes_it(ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 7728: with no consumer of the room's Opus the SFU pauses it and the relay stops
    encoding it; a WebRTC viewer resumes it at once and hears it."""
    monkeypatch.setattr(pause_resume, "PAUSE_AFTER_S", 0.5)
    proc = await _ffmpeg(ingest, 30, "-preset", "ultrafast", "-bf", "0")
    try:
        await wait_for(lambda: bool(ingest.relays) and ingest.relays[-1].opus_paused, 15, lambda: "the PAUSE")
        relay = ingest.relays[-1]
        assert "ccm pause nowait" in relay.pc.remoteDescription.sdp  # the SFU answered it (§10)
        router = ingest.service.worker.routers["demo"]
        producer = router.producers["audio"]
        assert producer.pauser is not None and producer.pauser.paused
        assert router.producers["video"].pauser is None  # video is never paused
        sent, aac_sent = relay.audio.packets_sent, relay.aac.packets_sent if relay.aac else 0
        frames_in = relay.frames_in
        await wait_for(lambda: relay.frames_in >= frames_in + 30, 10, lambda: "a second more of the stream")
        assert relay.audio.packets_sent == sent  # nothing encoded, nothing sent ...
        assert relay.aac is None or relay.aac.packets_sent > aac_sent  # ... while the AAC section goes on
        assert router.ingest()["tracks"]["audio"]["paused"] is True
        session = await whip_client.view(f"{ingest.service.url}/whep/demo", kinds=("audio",))
        try:
            track = await wait_for_track(session, "audio")
            frame = await asyncio.wait_for(track.recv(), 10)  # RESUME: the viewer hears the stream
            assert frame.sample_rate == 48000 and not relay.opus_paused
            assert relay.audio.packets_sent > sent
        finally:
            await session.close()
        await wait_for(lambda: relay.opus_paused, 10, lambda: "the PAUSE after the viewer left")
        assert relay.opus_pauses == 2 and producer.pauser.pauses == 2
    finally:
        proc.kill()
        await proc.wait()


async def test_an_encoder_that_reconnects_replaces_its_session(ingest: Ingest) -> None:
    first = await _ffmpeg(ingest, 30, "-preset", "ultrafast", "-bf", "0")
    await wait_for(ingest.publishing, 10, lambda: "the first publisher")
    session = await whip_client.view(f"{ingest.service.url}/whep/demo", kinds=("video",))
    try:
        track = await wait_for_track(session)
        await asyncio.wait_for(track.recv(), 10)
        first.kill()  # the encoder dies mid-stream ...
        await first.wait()
        second = await _ffmpeg(ingest, 4, "-preset", "ultrafast", "-bf", "0")  # ... and comes back
        await wait_for(lambda: len(ingest.relays) == 2, 10, lambda: "the second publish")
        # the same viewer session goes on with the new publisher's frames
        count = 0
        while count < 30:
            await asyncio.wait_for(track.recv(), 10)
            count += 1
        await second.wait()
    finally:
        await session.close()
    assert ingest.relays[1].frames_in >= 30


async def test_an_sfu_from_before_the_aac_section_still_takes_the_stream(
        service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """During a rolling deploy an older SFU answers the three-section offer 422 ("two audio
    sections"): the relay publishes again without the AAC section."""
    monkeypatch.setattr(negotiation, "_aac_section", lambda media: False)  # as that SFU counts
    async with aiohttp.ClientSession() as http:
        relay = await WhipRelay.open(f"{service.url}/whip", STREAM_KEY, http, "encoder")
        try:
            assert relay.aac is None and "refused the AAC section" in caplog.text
            assert set(service.worker.routers["demo"].producers) == {"video", "audio"}
            relay.on_ts_audio("aac", bytes([0xFF, 0xF1, 0x4C, 0x80, 0x02, 0x1F, 0xFC]) + bytes(9), 1024)
        finally:
            await relay.close("test over")
