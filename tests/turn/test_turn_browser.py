"""Chromium through a real coturn: the broadcast and watch pages with ``?relay=1``.

``iceTransportPolicy: "relay"`` makes Chromium use only TURN relay candidates,
so every media packet crosses coturn (development config on 127.0.0.1, loopback
peers allowed: the SFU gathers on 127.0.0.1 only, pinned by the fixtures).  The
pages get their TURN credentials from GET /api/ice-servers, minted per request
by turn.credentials from the secret the coturn child process was started with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.clips import make_counter_y4m, make_tone_wav
from relaycast.service import Service
from tests.e2e.browser import (
    BROWSER_MARKS,
    chromium,
    chromium_args,
    enter_stream_key,
    open_page,
    screenshot,
    tid,
    wait_for_js,
)
from tests.services import STREAM_KEY, make_config
from turn.server import DEV_MAX_PORT, DEV_MIN_PORT, TurnServer, find_turnserver

pytest.importorskip("playwright.async_api")
from playwright.async_api import expect  # noqa: E402

pytestmark = [
    *BROWSER_MARKS,
    pytest.mark.skipif(find_turnserver() is None, reason="coturn's turnserver is not installed"),
    pytest.mark.timeout(150),
]

SECRET = "browser-turn-secret-" + "z" * 12

# The page's selected ICE candidate pair, with candidate types (W3C webrtc-stats §7.13).
SELECTED_PAIR_JS = """
async () => {
  const pc = window.__relaycast?.pc;
  if (!pc || pc.connectionState !== 'connected') return null;
  const report = await pc.getStats();
  let pair = null;
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
  }
  if (!pair) return null;
  const local = report.get(pair.localCandidateId), remote = report.get(pair.remoteCandidateId);
  const localTypes = [...report.values()].filter(s => s.type === 'local-candidate').map(s => s.candidateType);
  return { localType: local.candidateType, localAddress: local.address, localPort: local.port, relayProtocol: local.relayProtocol ?? null,
           url: local.url ?? null, remoteType: remote.candidateType, remoteAddress: remote.address,
           remotePort: remote.port, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived, localTypes };
}
"""


async def _selected_pair(page) -> dict:
    await wait_for_js(page, "window.__relaycast?.pc?.connectionState === 'connected'", timeout=30_000)
    pair = await page.evaluate(SELECTED_PAIR_JS)
    assert pair is not None
    return pair


def _assert_relayed(pair: dict, turn: TurnServer) -> None:
    """Chromium's side: only relay candidates, and the selected one is coturn's UDP relay."""
    assert pair["localTypes"] and set(pair["localTypes"]) == {"relay"}, pair
    assert pair["localType"] == "relay" and pair["relayProtocol"] == "udp", pair
    assert pair["localAddress"] == "127.0.0.1" and DEV_MIN_PORT <= pair["localPort"] <= DEV_MAX_PORT, pair
    assert pair["url"] == turn.url, pair
    assert pair["remoteAddress"] == "127.0.0.1", pair  # the SFU, on loopback only


def _sfu_remote_candidates(participant) -> list:
    """The SFU's view (aiortc public API): every remote candidate of the participant's ICE transports."""
    out = []
    for transceiver in participant.pc.getTransceivers():
        out += transceiver.receiver.transport.transport.getRemoteCandidates()
    return out


def _assert_sfu_sees_only_coturn(participant) -> None:
    candidates = _sfu_remote_candidates(participant)
    assert candidates, "no remote candidates"
    for c in candidates:
        assert c.type == "relay" and c.ip == "127.0.0.1" and DEV_MIN_PORT <= c.port <= DEV_MAX_PORT, c


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path]:
    video = make_counter_y4m(tmp_path / "counter.y4m", 640, 360, fps=30, frames=60)
    audio = make_tone_wav(tmp_path / "tone.wav", seconds=2, frequency=440)
    return video, audio


async def test_pages_publish_and_watch_through_coturn_relay_only(clip) -> None:
    video_clip, audio_clip = clip
    async with TurnServer(SECRET) as turn, \
            Service(make_config(turn_urls=(turn.url,), turn_secret=SECRET)) as svc, \
            chromium(chromium_args(video_clip, audio_clip)) as browser:
        broadcast, b_errors = await open_page(browser, f"{svc.url}/broadcast/demo?relay=1")
        await enter_stream_key(broadcast, STREAM_KEY)
        await wait_for_js(broadcast, "document.querySelector('[data-testid=preview]').videoWidth > 0")
        await tid(broadcast, "go-live").click()
        await expect(tid(broadcast, "state")).to_have_text("live", timeout=30_000)
        pub_pair = await _selected_pair(broadcast)
        _assert_relayed(pub_pair, turn)
        router = svc.worker.routers["demo"]
        assert router.publisher is not None
        _assert_sfu_sees_only_coturn(router.publisher)

        watch, w_errors = await open_page(browser, f"{svc.url}/watch/demo?relay=1")
        await expect(tid(watch, "state")).to_have_text("playing", timeout=30_000)
        view_pair = await _selected_pair(watch)
        _assert_relayed(view_pair, turn)
        assert view_pair["localPort"] != pub_pair["localPort"]  # two allocations
        [viewer] = router.viewers.values()
        _assert_sfu_sees_only_coturn(viewer)

        # Media plays through the relay: currentTime advances and frames are decoded.
        t0 = await tid(watch, "video").evaluate("v => v.currentTime")
        await wait_for_js(watch,
            "t0 => document.querySelector('[data-testid=video]').currentTime > t0 + 2", arg=t0, timeout=30_000
        )
        decoded = await watch.evaluate(
            "async () => { for (const s of (await window.__relaycast.pc.getStats()).values())"
            " if (s.type === 'inbound-rtp' && s.kind === 'video') return s.framesDecoded; return 0; }"
        )
        assert decoded > 30, decoded
        after = await watch.evaluate(SELECTED_PAIR_JS)
        assert after["bytesReceived"] > view_pair["bytesReceived"] > 0, (view_pair, after)
        print(f"relay: publisher {pub_pair['localAddress']}:{pub_pair['localPort']} -> SFU "
              f"{pub_pair['remoteAddress']}:{pub_pair['remotePort']}; viewer relay port {view_pair['localPort']}, "
              f"{decoded} frames decoded, {after['bytesReceived']} bytes received through coturn")
        await screenshot(watch, "turn-relay-watch")
        assert b_errors.errors == [] and w_errors.errors == [], (b_errors.errors, w_errors.errors)
