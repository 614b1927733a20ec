"""transport-cc negotiation on the real service: a WHIP offer that asks for transport-wide
congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01) gets it
in the answer, with the transport's feedback running on the SFU; an offer without it, and
every WHEP answer, stay without it.  (Chromium's ramp-up with it is in
tests/e2e/test_publisher_ramp.py.)"""

from __future__ import annotations

import re

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from sfu import aiortc_private
from sfu.twcc import TRANSPORT_CC_URI
from tests.polling import wait_for
from tests.sfu.sfu_helpers import stream_key

TWCC_ID = 5


def _ask_for_transport_cc(sdp: str) -> str:
    """Add what Chrome's offers carry: the extmap and ``transport-cc`` feedback on every
    media (not RTX) payload type of each audio/video section."""
    out: list[str] = []
    kind = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        out.append(line)
        if kind in ("audio", "video") and line.startswith("a=mid:"):
            out.append(f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}")
        match = re.match(r"a=rtpmap:(\d+) (?!rtx/)", line)
        if kind in ("audio", "video") and match:
            out.append(f"a=rtcp-fb:{match.group(1)} transport-cc")
    return "\r\n".join(out) + "\r\n"


def _sections(sdp: str) -> dict[str, str]:
    return {part.split(" ", 1)[0]: part for part in sdp.split("\nm=")[1:]}


async def _publish(svc: Service, pcs: list[RTCPeerConnection], http: aiohttp.ClientSession,
                   transport_cc: bool) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.append(pc)
    for track in (PatternVideoTrack(320, 180, 30, code="counter"), ToneAudioTrack()):
        pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    if transport_cc:
        offer = _ask_for_transport_cc(offer)
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {stream_key(svc)}"}
    async with http.post(f"{svc.url}/whip/demo", data=offer, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await whip_client.wait_connected(pc, timeout=15)
    return pc, answer


async def test_whip_answer_carries_transport_cc_when_offered(
    service: Service, pcs: list[RTCPeerConnection], http: aiohttp.ClientSession
) -> None:
    pc, answer = await _publish(service, pcs, http, transport_cc=True)
    sections = _sections(answer)
    for kind in ("video", "audio"):
        section = sections[kind]
        payload_type = section.split("\r\n", 1)[0].split()[3]  # the one codec answered
        assert f"a=rtcp-fb:{payload_type} transport-cc" in section, section
        assert f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}" in section, section
    assert re.search(r"a=fmtp:\d+ .*x-google-start-bitrate=2500", sections["video"])
    assert "goog-remb" in sections["video"]  # still offered by aiortc, still answered

    # The SFU runs one feedback loop for the bundled transport, and ends it with the session.
    router = service.worker.routers["demo"]
    assert router.publisher is not None
    receivers = [t.receiver for t in router.publisher.pc.getTransceivers()]
    feedback = await wait_for(lambda: aiortc_private.transport_feedback(receivers[0]), 10,
                              "the publisher's receivers to start")
    assert all(aiortc_private.transport_feedback(r) is feedback for r in receivers)
    assert feedback.running
    await pc.close()
    await wait_for(lambda: router.publisher is None, 15, "the SFU to drop the publisher")
    await wait_for(lambda: not feedback.running, 5, "the transport feedback loop to end")
    assert aiortc_private.transport_feedback(receivers[0]) is None  # nothing kept


async def test_offer_without_transport_cc_stays_without_and_whep_gets_it(
    service: Service, pcs: list[RTCPeerConnection], http: aiohttp.ClientSession
) -> None:
    _, answer = await _publish(service, pcs, http, transport_cc=False)
    assert "transport-cc" not in answer and TRANSPORT_CC_URI not in answer
    assert "x-google" not in answer
    router = service.worker.routers["demo"]
    assert router.publisher is not None
    assert all(aiortc_private.transport_feedback(t.receiver) is None
               for t in router.publisher.pc.getTransceivers())

    # A viewer asking for it gets it (the SFU numbers what it sends and estimates the
    # viewer's bandwidth from the feedback), without the publisher's x-google bitrates.
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.append(viewer)
    for kind in ("video", "audio"):
        viewer.addTransceiver(kind, direction="recvonly")
    await viewer.setLocalDescription(await viewer.createOffer())
    async with http.post(f"{service.url}/whep/demo",
                         data=_ask_for_transport_cc(viewer.localDescription.sdp),
                         headers={"Content-Type": "application/sdp"}) as resp:
        assert resp.status == 201, await resp.text()
        whep_answer = await resp.text()
    assert "a=rtcp-fb:" in whep_answer and " transport-cc" in whep_answer
    assert TRANSPORT_CC_URI in whep_answer
    assert "x-google" not in whep_answer
