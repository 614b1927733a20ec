"""The consume side's RTCP tap (sfu.aiortc_private.install_rtcp_tap): a viewer's compound
RTCP packet carrying transport-cc feedback (RTPFB FMT 15) next to a receiver report and a
NACK, sent over a real DTLS-SRTP connection on 127.0.0.1, reaches the SFU side's callback as
the raw feedback bytes, and aiortc still routes the NACK to the forwarding sender."""

from __future__ import annotations

import asyncio

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import (
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
)

from loadtest import whip_client
from sfu import aiortc_private
from sfu.bandwidth import BandwidthEstimator
from sfu.twcc import TwccRecorder, parse_feedback


def _feedback(base: int, count: int) -> bytes:
    """A real transport feedback packet (with RTCP padding: 20 + 2 + count bytes)."""
    recorder = TwccRecorder(sender_ssrc=0xAAAA)
    for k in range(count):
        recorder.record(base + k, 1_000_000 + 1000 * k, 0xBBBB)
    (packet,) = recorder.build_feedback()
    return packet


def test_split_takes_out_every_feedback_packet_and_keeps_the_rest_in_order() -> None:
    rr = bytes(RtcpRrPacket(ssrc=1, reports=[RtcpReceiverInfo(
        ssrc=2, fraction_lost=3, packets_lost=4, highest_sequence=5, jitter=6, lsr=7, dlsr=8)]))
    nack = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=2, lost=[10, 12]))
    fb1, fb2 = _feedback(100, 3), _feedback(200, 5)
    got: list[bytes] = []
    rest = aiortc_private.split_transport_feedback(rr + fb1 + nack + fb2, got.append)
    assert got == [fb1, fb2]
    assert rest == rr + nack
    assert aiortc_private.split_transport_feedback(rr + nack, got.append) == rr + nack
    assert aiortc_private.split_transport_feedback(fb1, got.append) == b""
    assert got == [fb1, fb2, fb1]
    # A truncated tail is left for aiortc to reject.
    assert aiortc_private.split_transport_feedback(fb1 + nack[:6], got.append) == nack[:6]


def test_aiortc_alone_drops_the_compound_a_padded_feedback_is_in() -> None:
    """Why the tap takes feedback out before aiortc parses: aiortc reads FMT 15 as a NACK
    and rejects a padded one, losing the NACK beside it."""
    nack = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=2, lost=[10]))
    feedback = _feedback(100, 3)
    assert feedback[0] & 0x20  # padded
    try:
        RtcpPacket.parse(feedback + nack)
    except ValueError:
        pass
    else:  # pragma: no cover - an aiortc that parses it would make this test moot
        raise AssertionError("aiortc accepted a padded transport feedback packet")
    got: list[bytes] = []
    rest = aiortc_private.split_transport_feedback(feedback + nack, got.append)
    (parsed,) = RtcpPacket.parse(rest)
    assert isinstance(parsed, RtcpRtpfbPacket) and parsed.lost == [10]


async def test_tap_delivers_feedback_and_aiortc_still_routes_the_nack() -> None:
    aiortc_private.set_host_addresses(["127.0.0.1"])
    sfu = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = sfu.addTransceiver("video", direction="sendonly")
        started: asyncio.Future[aiortc_private.SendParameters] = asyncio.get_running_loop().create_future()
        nacks: asyncio.Queue[RtcpRtpfbPacket] = asyncio.Queue()
        feedback: asyncio.Queue[bytes] = asyncio.Queue()

        def on_start(params: aiortc_private.SendParameters) -> None:
            if not started.done():
                started.set_result(params)

        def on_rtcp(packet: object) -> None:
            if isinstance(packet, RtcpRtpfbPacket):
                nacks.put_nowait(packet)

        aiortc_private.install_forwarding_sender(transceiver.sender, on_start, on_rtcp)
        await sfu.setLocalDescription(await sfu.createOffer())
        await viewer.setRemoteDescription(sfu.localDescription)
        await viewer.setLocalDescription(await viewer.createAnswer())
        await sfu.setRemoteDescription(viewer.localDescription)
        await whip_client.wait_connected(sfu, timeout=15)
        await whip_client.wait_connected(viewer, timeout=15)
        params = await asyncio.wait_for(started, 10)

        bwe = BandwidthEstimator()
        seqs = [bwe.next_sequence(1000) for _ in range(4)]

        def on_feedback(packet: bytes) -> None:
            feedback.put_nowait(packet)
            bwe.on_transport_feedback(packet)

        aiortc_private.install_rtcp_tap(transceiver.sender.transport, on_feedback)

        rr = bytes(RtcpRrPacket(ssrc=0x1111, reports=[RtcpReceiverInfo(
            ssrc=params.ssrc, fraction_lost=0, packets_lost=0, highest_sequence=1, jitter=0,
            lsr=0, dlsr=0)]))
        nack = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=0x1111, media_ssrc=params.ssrc,
                                     lost=[7, 9]))
        fb = _feedback(seqs[0], 4)
        viewer_side = aiortc_private.RawRtpSender(viewer.getTransceivers()[0].receiver.transport)
        assert viewer_side.send_rtcp(rr + fb + nack)

        assert await asyncio.wait_for(feedback.get(), 10) == fb
        got = await asyncio.wait_for(nacks.get(), 10)
        assert got.fmt == RTCP_RTPFB_NACK and got.lost == [7, 9]
        assert parse_feedback(fb).base_seq == seqs[0]
        assert bwe.stats()["reported_received"] == 4
        assert nacks.empty()  # the FMT 15 packet did not reach the sender as a bogus NACK

        # Feedback alone (nothing left for aiortc) still reaches the tap.
        fb2 = _feedback(seqs[0], 2)
        assert viewer_side.send_rtcp(fb2)
        assert await asyncio.wait_for(feedback.get(), 10) == fb2
    finally:
        await viewer.close()
        await sfu.close()
