"""Headless Chromium against the real relaycast service (signaling + embedded SFU).

1. The broadcast page goes live with Chromium's fake camera/microphone playing a
   counter clip (frame i carries code i) and a tone; an aiortc WHEP viewer
   decodes the forwarded video and audio and checks they are the clip's frames
   and a non-silent tone.  Everything stays on 127.0.0.1: the SFU gathers on
   loopback and drops the browser's non-loopback candidates
   (sfu.negotiation.drop_unreachable_candidates), so both sides only ever
   address 127.0.0.1.
2. FFmpeg's own WHIP muxer (through PyAV, in a child process) publishes H.264 +
   Opus; the watch page plays it (currentTime advances, framesDecoded grows,
   the tone is audible), and chat typed in the page reaches an aiortc
   participant whose reply shows up in the page.

Screenshots land in /tmp/relaycast-shots/.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from pathlib import Path

import numpy as np
import pytest

from loadtest import whip_client
from loadtest.clips import make_counter_y4m, make_tone_wav
from loadtest.pattern import read_code
from tests.e2e.browser import (
    BROWSER_MARKS,
    chromium,
    chromium_args,
    enter_stream_key,
    open_page,
    page_stats,
    screenshot,
    tid,
    wait_for_js,
    wait_for_page_stats,
)
from tests.polling import wait_for
from tests.services import STREAM_KEY

pytest.importorskip("playwright.async_api")
from playwright.async_api import expect  # noqa: E402

pytestmark = [*BROWSER_MARKS, pytest.mark.timeout(120)]

CLIP_FRAMES = 60  # 2 s at 30 fps; Chromium loops it
CLIP_SIZE = (640, 360)  # the broadcast page's "360p"
VIDEO_FRAMES_TO_CHECK = 90
TONE_HZ = 440
AUDIO_FRAMES_TO_CHECK = 60  # 20 ms each
MIN_TONE_RMS = 0.005  # of full scale (-46 dBFS); see the audio check for why so low


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _sfu_ice_addresses(participant) -> tuple[set[str], set[str]]:
    """(local, remote) candidate addresses of a participant's ICE transports (aiortc public API).

    Remote candidates include the peer-reflexive ones aioice learned from
    incoming checks, so this is every address the SFU could have sent to.
    """
    local: set[str] = set()
    remote: set[str] = set()
    transports = [t.receiver.transport for t in participant.pc.getTransceivers()]
    if participant.pc.sctp is not None:
        transports.append(participant.pc.sctp.transport)
    for dtls in transports:
        ice = dtls.transport
        local.update(c.ip for c in ice.iceGatherer.getLocalCandidates())
        remote.update(c.ip for c in ice.getRemoteCandidates())
    return local, remote


async def _recv(track, timeout: float = 10.0):
    return await asyncio.wait_for(track.recv(), timeout)


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path]:
    video = make_counter_y4m(tmp_path / "counter.y4m", *CLIP_SIZE, fps=30, frames=CLIP_FRAMES)
    audio = make_tone_wav(tmp_path / "tone.wav", seconds=2, frequency=TONE_HZ)
    return video, audio


async def test_broadcast_page_live_to_aiortc_viewer(service, clip) -> None:
    svc = service
    video_clip, audio_clip = clip
    async with chromium(chromium_args(video_clip, audio_clip)) as browser:
        page, errors = await open_page(browser, f"{svc.url}/broadcast/demo")
        await enter_stream_key(page, STREAM_KEY)
        await wait_for_js(page, "document.querySelector('[data-testid=preview]').videoWidth > 0")
        await tid(page, "resolution").select_option("360p")
        await wait_for_js(page,
            "document.querySelector('[data-testid=preview]').videoHeight === 360"
        )
        await tid(page, "go-live").click()
        await expect(tid(page, "state")).to_have_text("live")
        await expect(tid(page, "stop")).to_be_enabled()

        # Loopback only, seen from both ends.
        router = svc.worker.routers["demo"]
        publisher = router.publisher
        assert publisher is not None
        local, remote = _sfu_ice_addresses(publisher)
        assert local == {"127.0.0.1"}, local
        assert remote and all(_is_loopback(a) for a in remote), remote
        stats = await page_stats(page)
        assert stats is not None
        assert stats["remoteAddresses"] and set(stats["remoteAddresses"]) == {"127.0.0.1"}, stats
        assert stats["selectedRemote"] == "127.0.0.1", stats
        print(f"ICE: SFU remote {sorted(remote)}, Chromium selected pair "
              f"{stats['selectedLocal']} -> {stats['selectedRemote']}")

        viewer = await whip_client.view(f"{svc.url}/whep/demo")
        try:
            await whip_client.wait_connected(viewer.pc, timeout=15)
            tracks = {t.kind: t.receiver.track for t in viewer.pc.getTransceivers()}
            _, viewer_remote = _sfu_ice_addresses(router.viewers[next(iter(router.viewers))])
            assert viewer_remote == {"127.0.0.1"}, viewer_remote

            # Video: the clip's frames, in order (codes advance modulo the clip length).
            codes: list[int | None] = []
            sizes = set()
            for _ in range(VIDEO_FRAMES_TO_CHECK):
                frame = await _recv(tracks["video"])
                sizes.add((frame.width, frame.height))
                codes.append(read_code(frame))
            read = [c for c in codes if c is not None]
            assert len(read) >= VIDEO_FRAMES_TO_CHECK // 2, codes
            assert all(0 <= c < CLIP_FRAMES for c in read), codes
            steps = [
                (b - a) % CLIP_FRAMES
                for a, b in zip(codes, codes[1:], strict=False)
                if a is not None and b is not None
            ]
            advancing = sum(1 for s in steps if 1 <= s <= 5)
            assert advancing >= 0.8 * len(steps), (steps, codes)
            assert len(set(read)) >= CLIP_FRAMES // 3, sorted(set(read))
            print(f"video {sizes}: {len(read)}/{len(codes)} codes read, "
                  f"{advancing}/{len(steps)} steps advance, {len(set(read))} distinct")

            # Audio: the clip's 440 Hz tone, not silence.  The page captures with
            # noiseSuppression on, which learns a steady tone as noise: measured here,
            # its RMS falls from ~0.07 to a floor of ~0.019 within ~2 s (the file's is
            # 0.177), so the level threshold sits well below that floor and the
            # spectral peak says it is the tone rather than noise.
            chunks = []
            for _ in range(AUDIO_FRAMES_TO_CHECK):
                frame = await _recv(tracks["audio"])
                assert frame.sample_rate == 48_000
                pcm = frame.to_ndarray().astype(np.float64).reshape(-1, len(frame.layout.channels))
                chunks.append(pcm.mean(axis=1) / 32768.0)
            mono = np.concatenate(chunks[10:])  # skip the first 200 ms (encoder start-up)
            rms = float(np.sqrt(np.mean(np.square(mono))))
            spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
            peak_hz = float(np.fft.rfftfreq(len(mono), 1 / 48_000)[int(np.argmax(spectrum))])
            print(f"audio rms {rms:.3f}, peak {peak_hz:.0f} Hz")
            assert rms > MIN_TONE_RMS, rms
            assert abs(peak_hz - TONE_HZ) < 10, peak_hz

            await expect(tid(page, "viewers")).to_have_text("1")
            await expect(tid(page, "stats")).to_have_text(
                re.compile(r"video [1-9]\d* kbps")
            )
            await screenshot(page, "live-broadcast")

            # Stop: the page DELETEs its WHIP session and the SFU lets it go.
            session_id = publisher.session_id
            async with page.expect_response(
                lambda r: r.request.method == "DELETE" and "/whip/demo/" in r.url
            ) as deleted:
                await tid(page, "stop").click()
            response = await deleted.value
            assert response.status == 200
            assert response.url.endswith(session_id)
            await expect(tid(page, "state")).to_have_text("stopped")
            await wait_for(
                lambda: router.publisher is None and not router.producers,
                10,
                "the SFU to drop the publisher",
            )
            assert router.find(session_id) is None
            assert errors.errors == []
        finally:
            await viewer.close()


async def test_ffmpeg_publisher_watch_page_and_chat(service) -> None:
    # FFmpeg's muxer runs in a child process: PyAV keeps the GIL during the WHIP
    # handshake, which would starve this process's event loop (the server).
    from loadtest.ffmpeg_whip import FfmpegWhipProcess

    svc = service
    publisher = await FfmpegWhipProcess.start(f"{svc.url}/whip/demo", STREAM_KEY, 50, 640, 360, 30)
    participant = None
    try:
        await publisher.wait_connected(30)
        router = svc.worker.routers["demo"]
        assert {k: p.codec.mimeType for k, p in router.producers.items()} == {
            "video": "video/H264",
            "audio": "audio/opus",
        }

        async with chromium(chromium_args()) as browser:
            page, errors = await open_page(browser, f"{svc.url}/watch/demo")
            await expect(tid(page, "state")).to_have_text("playing")
            await wait_for_js(page,
                "document.querySelector('[data-testid=video]').videoWidth === 640"
            )
            t0 = await tid(page, "video").evaluate("v => v.currentTime")
            await wait_for_js(page,
                "t0 => document.querySelector('[data-testid=video]').currentTime > t0 + 1",
                arg=t0,
            )
            first = await page_stats(page)
            decoded0 = first["inbound"]["video"]["framesDecoded"]
            stats = await wait_for_page_stats(
                page,
                lambda st: st["inbound"]["video"]["framesDecoded"] >= decoded0 + 30,
                timeout=15,
                what="30 more decoded frames",
            )
            video_in, audio_in = stats["inbound"]["video"], stats["inbound"]["audio"]
            assert stats["codecs"][video_in["codecId"]] == "video/H264"
            assert stats["codecs"][audio_in["codecId"]] == "audio/opus"
            assert stats["selectedRemote"] == "127.0.0.1"
            # Audio: the tone is heard (audioLevel is measured on playout, so unmute).
            await tid(page, "unmute").click()
            await expect(tid(page, "unmute")).to_be_hidden()
            stats = await wait_for_page_stats(
                page,
                lambda st: st["inbound"]["audio"].get("audioLevel", 0) > 0.05,
                timeout=15,
                what="an audible tone",
            )
            audio_in = stats["inbound"]["audio"]
            print(f"watch: {video_in['framesDecoded']} frames decoded "
                  f"({video_in['frameWidth']}x{video_in['frameHeight']}), "
                  f"audio level {audio_in.get('audioLevel')}")

            # Chat: the page and an aiortc participant talk through the SFU's chat room.
            participant = await whip_client.view(
                f"{svc.url}/whep/demo", kinds=("audio",), chat=True
            )
            channel = participant.channel
            inbox: asyncio.Queue[dict] = asyncio.Queue()
            channel.on("message", lambda raw: inbox.put_nowait(json.loads(raw)))
            await whip_client.wait_connected(participant.pc, timeout=15)
            await expect(tid(page, "viewers")).to_have_text("2")
            await expect(tid(page, "chat-input")).to_be_enabled()
            await tid(page, "chat-input").fill("hello from chromium")
            await tid(page, "chat-send").click()

            async def next_chat(text: str) -> dict:
                while True:
                    msg = await asyncio.wait_for(inbox.get(), 10)
                    if msg.get("type") == "chat" and msg.get("text") == text:
                        return msg

            got = await next_chat("hello from chromium")
            assert got["from"]["role"] == "viewer"
            channel.send(json.dumps({"type": "chat", "text": "hi back from aiortc"}))
            reply = await next_chat("hi back from aiortc")  # echoed to everyone, sender included
            assert reply["from"]["id"] != got["from"]["id"]
            log = tid(page, "chat-log")
            await expect(log.locator("[data-seq]")).to_have_count(2)
            await expect(log.locator("[data-seq]").nth(0)).to_contain_text("hello from chromium")
            await expect(log.locator("[data-seq]").nth(1)).to_contain_text("hi back from aiortc")
            assert not await log.locator("[data-seq]").nth(1).evaluate(
                "e => e.classList.contains('from-me')"
            )
            await screenshot(page, "live-watch")
            assert errors.errors == []
    finally:
        if participant is not None:
            await participant.close()
        final = await publisher.stop()
    assert final.error is None, (final, list(publisher.stderr_tail))
    assert publisher.proc.returncode == 0, list(publisher.stderr_tail)
