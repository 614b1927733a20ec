"""FFmpeg's own WHIP muxer (libavformat ``whip`` through PyAV) publishes to relaycast.

A third-party WHIP client with its own ICE, DTLS and RTP code sends H.264 +
Opus; an aiortc WHEP viewer decodes what the SFU forwards.  FFmpeg runs in a
child process (loadtest.ffmpeg_whip.FfmpegWhipProcess): PyAV keeps the GIL
during the muxer's blocking handshake, which would starve this process's event
loop, i.e. the very server FFmpeg is talking to.

Everything is on 127.0.0.1: the HTTP endpoint, the SFU's only ICE candidate
(FFmpeg dials the first host candidate of the answer; its offer has none), and
the viewer (pinned to loopback by the autouse fixture).
"""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest

from loadtest import whip_client
from loadtest.ffmpeg_whip import FfmpegWhipProcess
from loadtest.pattern import read_code
from tests.services import STREAM_KEY

pytestmark = pytest.mark.timeout(120)

FRAMES_TO_CHECK = 45  # 1.5 s of video at 30 fps
AUDIO_FRAMES_TO_CHECK = 25  # 0.5 s of 20 ms Opus frames
MIN_TONE_RMS = 0.02  # of full scale; the published tone has RMS 0.177 (amplitude 0.25)
_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ (\S+) \d+ (\S+) (\d+) typ (\S+)", re.MULTILINE)


def media_sections(sdp: str) -> dict[str, str]:
    """``{"audio": "m=audio ...", "video": "m=video ..."}`` (text of each m-section)."""
    sections = {}
    for part in re.split(r"\r?\n(?=m=)", sdp)[1:]:
        sections[part.split(" ", 1)[0][2:]] = part
    return sections


def answered_codec(section: str) -> str:
    """Encoding name of the first (chosen) payload type of an answer's m-section."""
    first_pt = section.splitlines()[0].split()[3]
    m = re.search(rf"^a=rtpmap:{first_pt} ([^/\s]+)/", section, re.MULTILINE)
    assert m, section
    return m.group(1)


@pytest.fixture
def sfu_answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SDP answer the SFU produces during the test, in order."""
    from sfu import router

    answers: list[str] = []
    original = router._answer

    async def answer(pc, config):  # type: ignore[no-untyped-def]
        sdp = await original(pc, config)
        answers.append(sdp)
        return sdp

    monkeypatch.setattr(router, "_answer", answer)
    return answers


async def test_ffmpeg_whip_muxer_publishes_h264_and_opus(service, sfu_answers) -> None:
    svc = service
    publisher = await FfmpegWhipProcess.start(
        f"{svc.url}/whip/demo", STREAM_KEY, seconds=90, width=640, height=360, fps=30, code="counter"
    )
    try:
        connect_s = await publisher.wait_connected(timeout=30)

        # The SFU answered FFmpeg's offer with one codec per track, on loopback only.
        router = svc.worker.routers["demo"]
        assert router.producers["video"].codec.mimeType.lower() == "video/h264"
        assert router.producers["video"].codec.parameters.get("packetization-mode") == "1"
        assert router.producers["audio"].codec.mimeType.lower() == "audio/opus"
        whip_answer = sfu_answers[0]
        candidates = _CANDIDATE.findall(whip_answer)
        assert candidates and {(proto.lower(), ip, kind) for proto, ip, _, kind in candidates} == {
            ("udp", "127.0.0.1", "host")
        }, candidates
        assert {k: answered_codec(s) for k, s in media_sections(whip_answer).items()} == {
            "audio": "opus",
            "video": "H264",
        }
        assert "a=setup:active" in whip_answer  # FFmpeg offers a=setup:passive

        t0 = time.monotonic()
        viewer = await whip_client.view(f"{svc.url}/whep/demo")
        try:
            assert answered_codec(media_sections(viewer.answer)["video"]).upper() == "H264"
            assert {ip for _, ip, _, _ in _CANDIDATE.findall(viewer.answer)} == {"127.0.0.1"}
            tracks = {t.kind: t.receiver.track for t in viewer.pc.getTransceivers()}

            # Video: decoded H.264 frames carry FFmpeg's frame counter, increasing.
            # FFmpeg ignores PLI, so the first frame comes with its next periodic
            # key frame (every 2 s).
            first = await _recv(tracks["video"], 15)
            first_frame_s = time.monotonic() - t0
            codes = [read_code(first)]
            for _ in range(FRAMES_TO_CHECK - 1):
                codes.append(read_code(await _recv(tracks["video"], 10)))
            assert (first.width, first.height) == (640, 360)
            readable = [c for c in codes if c is not None]
            assert len(readable) >= 0.9 * len(codes), codes
            assert all(b > a for a, b in zip(readable, readable[1:], strict=False)), codes
            assert readable[-1] - readable[0] >= FRAMES_TO_CHECK - 1, codes

            # Audio: decoded Opus frames of the 440 Hz tone (not silence).
            samples = []
            for _ in range(AUDIO_FRAMES_TO_CHECK):
                frame = await _recv(tracks["audio"], 10)
                assert frame.sample_rate == 48_000
                samples.append(frame.to_ndarray().astype(np.float64).ravel() / 32768.0)
            rms = float(np.sqrt(np.mean(np.concatenate(samples[5:]) ** 2)))
            assert rms > MIN_TONE_RMS, rms

            print(
                f"\nFFmpeg WHIP: handshake {connect_s * 1000:.0f} ms; WHEP viewer: first decoded "
                f"frame {first_frame_s * 1000:.0f} ms after its POST (code {readable[0]}), "
                f"{len(readable)}/{len(codes)} codes read, tone RMS {rms:.3f}"
            )
        finally:
            await viewer.close()
    finally:
        stats = await publisher.stop()

    # SIGTERM made FFmpeg close the muxer (which DELETEs its WHIP session) and exit.
    assert stats.error is None, (stats, list(publisher.stderr_tail))
    assert stats.video_frames > FRAMES_TO_CHECK and stats.audio_frames > AUDIO_FRAMES_TO_CHECK
    router = svc.worker.routers.get("demo")
    assert router is None or (router.publisher is None and not router.live)


class LossyUdpProxy:
    """FFmpeg <-> SFU UDP relay on 127.0.0.1 that drops some of FFmpeg's video RTP.

    Sits where the SFU's answer candidate points FFmpeg (see the test).  Every
    ``drop_every``-th new media packet of ``media_pt`` is dropped once; the
    headers that stay in clear under SRTP/SRTCP (RFC 3711 §3.1) are enough to
    count FFmpeg's RTX packets and the SFU's RTCP NACKs (RTPFB, FMT 1).
    """

    def __init__(self, media_pt: int, rtx_pt: int, drop_every: int) -> None:
        self.media_pt, self.rtx_pt, self.drop_every = media_pt, rtx_pt, drop_every
        self.upstream: tuple[str, int] | None = None  # the SFU's candidate
        self.client: tuple[str, int] | None = None  # FFmpeg's socket
        self.media = self.dropped = self.rtx = self.nacks = 0
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_client), local_addr=("127.0.0.1", 0))
        self._back, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_server), local_addr=("127.0.0.1", 0))
        return self._front.get_extra_info("sockname")[1]

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        if len(data) >= 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
            pt = data[1] & 0x7F
            if pt == self.media_pt:
                self.media += 1
                if self.media > 60 and self.media % self.drop_every == 0:
                    self.dropped += 1
                    return
            elif pt == self.rtx_pt:
                self.rtx += 1
        if self.upstream is not None and self._back is not None:
            self._back.sendto(data, self.upstream)

    def _from_server(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 8 and 128 <= data[0] < 192 and data[1] == 205 and data[0] & 0x1F == 1:
            self.nacks += 1
        if self.client is not None and self._front is not None:
            self._front.sendto(data, self.client)

    def close(self) -> None:
        for transport in (self._front, self._back):
            if transport is not None:
                transport.close()


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram) -> None:  # type: ignore[no-untyped-def]
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)


async def test_ffmpeg_retransmits_what_the_sfu_nacks(service, monkeypatch) -> None:
    """Loss between FFmpeg and the SFU: the SFU NACKs, FFmpeg resends as RTX (PT 105),
    the SFU unwraps it, and the viewer decodes an unbroken frame sequence."""
    from sfu import router as router_module

    proxy = LossyUdpProxy(media_pt=106, rtx_pt=105, drop_every=25)  # FFmpeg's fixed PTs
    proxy_port = await proxy.start()
    original = router_module._answer

    async def answer_via_proxy(pc, config):  # type: ignore[no-untyped-def]
        sdp = await original(pc, config)
        if proxy.upstream is not None:  # only the first answer (FFmpeg's WHIP session)
            return sdp
        m = _CANDIDATE.search(sdp)
        assert m is not None
        proxy.upstream = (m.group(2), int(m.group(3)))
        return re.sub(rf"^(a=candidate:\S+ \d+ \S+ \d+ \S+ ){m.group(3)}( typ host)",
                      rf"\g<1>{proxy_port}\2", sdp, flags=re.MULTILINE)

    monkeypatch.setattr(router_module, "_answer", answer_via_proxy)
    publisher = await FfmpegWhipProcess.start(
        f"{service.url}/whip/demo", STREAM_KEY, seconds=60, width=640, height=360, fps=30,
        args=["--gop", "30"],
    )
    try:
        await publisher.wait_connected(timeout=30)
        viewer = await whip_client.view(f"{service.url}/whep/demo", kinds=("video",))
        try:
            track = viewer.pc.getTransceivers()[0].receiver.track
            codes = [read_code(await _recv(track, 15))]
            dropped_before = proxy.dropped
            for _ in range(FRAMES_TO_CHECK * 2 - 1):
                codes.append(read_code(await _recv(track, 10)))
        finally:
            await viewer.close()
    finally:
        stats = await publisher.stop()
        proxy.close()
    assert stats.error is None, (stats, list(publisher.stderr_tail))
    assert proxy.dropped - dropped_before >= 3, vars(proxy)
    assert proxy.nacks > 0 and proxy.rtx > 0, vars(proxy)
    readable = [c for c in codes if c is not None]
    assert len(readable) >= 0.9 * len(codes), codes
    # Every frame arrived: consecutive counter codes despite the dropped packets.
    assert readable == list(range(readable[0], readable[0] + len(readable))), codes
    print(f"\nloss: dropped {proxy.dropped} of {proxy.media} video packets, "
          f"{proxy.nacks} NACKs, {proxy.rtx} RTX packets back")


async def test_ffmpeg_publisher_outlives_the_ice_consent_window(service, monkeypatch) -> None:
    """FFmpeg stops answering STUN after its handshake but sends consent checks every 5 s.

    aioice's consent freshness (RFC 7675) used to drop such a publisher once
    CONSENT_FAILURES checks in a row went unanswered (~30 s by default).  The
    window is shrunk to ~8 s here so that the regression shows in a short run.
    """
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 1)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 8)
    seconds = 16  # two consent windows
    publisher = await FfmpegWhipProcess.start(
        f"{service.url}/whip/demo", STREAM_KEY, seconds=seconds, width=320, height=180, fps=15
    )
    try:
        await publisher.wait_connected(timeout=30)
        session = service.worker.routers["demo"].publisher
        assert session is not None
        states: list[str] = []
        session.pc.on("connectionstatechange", lambda: states.append(session.pc.connectionState))
        stats = await publisher.wait(timeout=seconds + 30)  # ends on its own, then DELETEs
    finally:
        await publisher.stop()
    # Had the SFU closed the ICE connection, FFmpeg's sends would have failed
    # (ECONNREFUSED) and the SFU would have reported the pc failed.
    assert stats.error is None, (stats, list(publisher.stderr_tail))
    assert stats.video_frames >= seconds * 15 - 1, stats
    assert "failed" not in states, states


async def test_ffmpeg_whip_wrong_stream_key_is_refused(service) -> None:
    publisher = await FfmpegWhipProcess.start(f"{service.url}/whip/demo", "wrong-key", seconds=5)
    with pytest.raises(ConnectionError, match="401"):
        await publisher.wait_connected(timeout=30)
    stats = await publisher.wait(timeout=30)
    assert stats.connect_s is None and stats.video_frames == 0
    router = service.worker.routers.get("demo")
    assert router is None or router.publisher is None


async def _recv(track, timeout: float):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(track.recv(), timeout)
