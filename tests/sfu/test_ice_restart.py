"""ICE restart (RFC 9725 §4.3.3, RFC 8445 §9) end to end on 127.0.0.1: an aiortc WHEP viewer
watching the pattern publisher changes its address (new ICE credentials and a new local
socket; the old one goes silent) and restarts ICE with a PATCH; media resumes on the new
path within 2 s, in the same session, with the same DTLS and SRTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from loadtest import whip_client
from loadtest.pattern import read_code
from relaycast.service import Service
from sfu import aiortc_private
from sfu.config import SfuConfig
from sfu.worker import Worker
from signaling.sessions import ice_credentials
from tests.polling import wait_for
from tests.sfu.sfu_helpers import publish_pattern, receiver_tracks
from tests.signaling.whip_helpers import FRAG

RESUME_S = 2.0
"""Issue 13: playback resumes within 2 s of the address change."""
LATER_FRAMES = 10
"""A frame this many codes after the last one decoded before the change was captured ≥ 1/3 s
after it: it cannot have been in flight on the old path."""


class FrameLog:
    """Decodes a video track in the background: ``(monotonic time, frame code)`` per frame."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.frames: list[tuple[float, int]] = []
        self.changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        while True:
            frame = await track.recv()
            code = read_code(frame)
            if code is not None:
                self.frames.append((time.monotonic(), code))
                self.changed.set()

    def last_code(self) -> int:
        return self.frames[-1][1] if self.frames else -1

    def first_at_least(self, code: int) -> float | None:
        return next((t for t, c in self.frames if c >= code), None)

    async def wait_code(self, code: int, timeout_s: float) -> float:
        """When the first frame with a code ≥ ``code`` was decoded."""
        return await wait_for(lambda: self.first_at_least(code), timeout_s,
                              lambda: f"frame code {code} (last {self.last_code()})", wake=self.changed)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def restart_fragment(pc: RTCPeerConnection, ufrag: str, pwd: str, candidates: list[Any]) -> str:
    """The client's PATCH body (RFC 9725 §4.3.3, RFC 8840 §4.4): new credentials and the
    candidates of the bundle tag's m= section."""
    sdp = pc.localDescription.sdp
    media = next(ln for ln in sdp.splitlines() if ln.startswith("m="))
    mid = next(ln for ln in sdp.splitlines() if ln.startswith("a=mid:"))
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", media, mid]
    lines += [f"a=candidate:{candidate_to_sdp(c)}" for c in candidates] + ["a=end-of-candidates"]
    return "\r\n".join(lines) + "\r\n"


def server_fragment(body: str) -> tuple[str, str, list[Any]]:
    ufrag, pwd = ice_credentials(body)
    assert ufrag and pwd, body
    candidates = [candidate_from_sdp(ln[len("a=candidate:"):]) for ln in body.splitlines()
                  if ln.startswith("a=candidate:")]
    return ufrag, pwd, candidates


async def restart(http: aiohttp.ClientSession, session: whip_client.WhipSession, *, rebind: bool,
                  if_match: str = "*") -> tuple[aiohttp.ClientResponse, str, float]:
    """Restart the viewer's ICE through PATCH; :returns: the response, its body and when the
    client's address changed (monotonic)."""
    ufrag, pwd, candidates = await aiortc_private.begin_ice_restart(session.pc, rebind=rebind)
    changed_at = time.monotonic()
    resp = await http.patch(session.location, data=restart_fragment(session.pc, ufrag, pwd, candidates),
                            headers={"Content-Type": FRAG, "If-Match": if_match})
    body = await resp.text()
    if resp.status == 200:
        await aiortc_private.complete_ice_restart(session.pc, *server_fragment(body))
    return resp, body, changed_at


async def test_viewer_changes_address_and_media_resumes_in_the_same_session(
        service: Service, http: aiohttp.ClientSession) -> None:
    publisher = await publish_pattern(service, audio=False)
    viewer = await whip_client.view(f"{service.url}/whep/demo", kinds=("video",), http=http)
    log = FrameLog(receiver_tracks(viewer.pc)["video"])
    try:
        await whip_client.wait_connected(viewer.pc)
        await log.wait_code(0, 15)
        await log.wait_code(log.frames[0][1] + 15, 10)  # media flows
        session_id = viewer.location.rsplit("/", 1)[1]
        router = service.worker.routers["demo"]
        participant = router.viewers[session_id]
        before = aiortc_private.selected_candidate_pair(viewer.pc)
        assert before is not None
        assert aiortc_private.selected_candidate_pair(participant.pc)[1] == before[0]

        # A restart with a stale ETag is refused (412) and changes nothing: media goes on.
        resp, _, _ = await restart(http, viewer, rebind=False, if_match='"stale"')
        assert resp.status == 412
        assert resp.content_type == "application/problem+json"
        await log.wait_code(log.last_code() + 5, 5)

        # The address changes: new credentials, a new socket; the old one goes silent.
        resp, body, changed_at = await restart(http, viewer, rebind=True)
        base = max(c for t, c in log.frames if t <= changed_at)
        assert resp.status == 200, body
        assert resp.content_type == FRAG
        assert resp.headers["ETag"] not in (viewer.etag, None)
        ufrag, pwd, candidates = server_fragment(body)
        assert "a=end-of-candidates" in body.splitlines()
        assert (ufrag, pwd) != ice_credentials(viewer.answer)
        resumed_at = await log.wait_code(base + LATER_FRAMES, 10)
        assert resumed_at - changed_at <= RESUME_S, f"resumed after {resumed_at - changed_at:.2f} s"

        # On the new path: the client's new port is what the SFU sends to.
        after = aiortc_private.selected_candidate_pair(viewer.pc)
        assert after is not None and after[0] != before[0]
        assert aiortc_private.selected_candidate_pair(participant.pc)[1] == after[0]
        await log.wait_code(log.last_code() + 30, 5)  # it keeps flowing (1 s of frames)

        # No new session: same session, same peer connection, still connected.
        assert router.viewers.get(session_id) is participant
        assert service.worker.load()["sessions"] == 2
        assert participant.pc.connectionState == "connected" and viewer.pc.connectionState == "connected"
        assert (await http.get(viewer.location)).status == 204

        # The old ETag is stale now; the new one (or *) works, and a second restart too.
        etag = resp.headers["ETag"]
        trickle = body  # any fragment with the current credentials is a trickle
        stale = await http.patch(viewer.location, data=trickle, headers={"Content-Type": FRAG,
                                                                          "If-Match": viewer.etag})
        assert stale.status == 412
        resp, body, _ = await restart(http, viewer, rebind=False, if_match=etag)
        assert resp.status == 200, body
        await log.wait_code(log.last_code() + 15, 5)
        assert router.viewers.get(session_id) is participant
    finally:
        await log.close()
        await viewer.close(http)
        await publisher.close(http)


async def test_restart_before_ice_connects_is_refused_and_changes_nothing(
        service: Service, http: aiohttp.ClientSession) -> None:
    """A restart of a session whose first checks have not selected a pair: 409, and the
    session is still there (RFC 9725 §4.3.3: a failed restart does not end it)."""
    publisher = await publish_pattern(service, audio=False)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        resp = await http.post(f"{service.url}/whep/demo", data=pc.localDescription.sdp,
                               headers={"Content-Type": "application/sdp"})
        assert resp.status == 201
        location = service.url + resp.headers["Location"]
        # The answer is never applied: the client sends no checks, ICE cannot connect.
        frag = ("a=ice-ufrag:abcdefgh\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
                "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n")
        refused = await http.patch(location, data=frag, headers={"Content-Type": FRAG, "If-Match": "*"})
        assert refused.status == 409, await refused.text()
        assert refused.content_type == "application/problem+json"
        assert (await http.get(location)).status == 204
        assert service.worker.load()["sessions"] == 2
    finally:
        await pc.close()
        await publisher.close(http)


async def test_rpc_validation_and_unknown_sessions() -> None:
    """The node's ``ice_restart`` / ``video_size`` RPCs: malformed payloads 400, unknown
    sessions 404 (sfu.protocol.IceRestart / VideoSize)."""
    good = {"session_id": "s" * 32, "ice_ufrag": "abcd", "ice_pwd": "p" * 22}
    async with Worker(SfuConfig(ice_gather=("127.0.0.1",))) as worker:
        assert (await worker.ice_restart(good))["error"]["status"] == 404
        for bad in ({**good, "ice_ufrag": "abc"}, {**good, "ice_pwd": "p" * 21},
                    {**good, "ice_ufrag": "ab-cd"}, {**good, "ice_pwd": None},
                    {**good, "candidates": "candidate:1"}, {"ice_ufrag": "abcd", "ice_pwd": "p" * 22}):
            assert (await worker.ice_restart(bad))["error"]["status"] == 400, bad
        size = {"session_id": "s" * 32, "width": 640, "height": 360}
        assert (await worker.video_size(size))["error"]["status"] == 404
        assert (await worker.video_size({**size, "width": None, "height": None}))["error"]["status"] == 404
        for bad in ({**size, "width": 0}, {**size, "height": 16385}, {**size, "width": True},
                    {**size, "height": None}, {**size, "width": "640"}):
            assert (await worker.video_size(bad))["error"]["status"] == 400, bad
