"""Simulcast through the real service (RFC 8853 over WHIP, adaptive WHEP viewers): a 3-layer
VP8 publisher with temporal layers (loadtest.simulcast_publisher, an aiortc client sending
what a browser sends) is answered with simulcast, its streams become ranked layers, a viewer
decodes the top layer, moves to the layer that covers its reported size and back (each
switch on a key frame of the target layer, decoding without a break), and the in-process
tap (the LL-HLS bridge's way in) gets only the top layer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiortc.mediastreams import MediaStreamTrack

from loadtest import whip_client
from loadtest.simulcast_publisher import SimulcastPublisher
from relaycast.service import Service
from sfu.direct import DirectTransport
from tests.sfu.sfu_helpers import receiver_tracks, stream_key

SIZES = [(160, 90), (320, 180), (640, 360)]


async def _frame_sizes(track: MediaStreamTrack, until: Any, timeout: float) -> list[tuple[int, int]]:
    """Decode frames until ``until(sizes)`` holds; the sizes seen, in order."""
    sizes: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while not until(sizes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"frame sizes so far: {_runs(sizes)}")
        frame = await asyncio.wait_for(track.recv(), left)
        sizes.append((frame.width, frame.height))
    return sizes


def _runs(sizes: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    """Run-length form of a size sequence, for messages."""
    out: list[tuple[tuple[int, int], int]] = []
    for size in sizes:
        if out and out[-1][0] == size:
            out[-1] = (size, out[-1][1] + 1)
        else:
            out.append((size, 1))
    return out


def _tail(size: tuple[int, int], count: int) -> Any:
    return lambda sizes: len(sizes) >= count and all(s == size for s in sizes[-count:])


async def test_simulcast_viewer_follows_its_size_hint_between_layers(
    service: Service, http: aiohttp.ClientSession
) -> None:
    async with SimulcastPublisher(f"{service.url}/whip/demo", stream_key(service), width=640, height=360,
                                  http=http) as publisher:
        assert "a=simulcast:recv q;h;f" in publisher.answer
        assert [layer.rid for layer in publisher.layers] == ["q", "h", "f"]
        viewer = await whip_client.view(f"{service.url}/whep/demo", http=http, transport_cc=True)
        try:
            video = receiver_tracks(viewer.pc)["video"]
            sizes = await _frame_sizes(video, _tail((640, 360), 10), timeout=20)
            router = service.worker.routers["demo"]
            delivery = router.delivery()
            assert delivery is not None and delivery["simulcast"] is True
            assert [(layer["rid"], layer["width"], layer["height"]) for layer in delivery["layers"]] == [
                ("q", 160, 90), ("h", 320, 180), ("f", 640, 360)]
            assert delivery["viewers"] == {"2": 1}

            consumer = next(iter(router.viewers.values())).consumers["video"]
            switches = consumer.layer_switches
            async with http.post(f"{viewer.location}/video-size", json={"width": 300, "height": 170}) as resp:
                assert resp.status == 204, await resp.text()
            t0 = time.monotonic()
            sizes = await _frame_sizes(video, _tail((320, 180), 10), timeout=10)
            assert time.monotonic() - t0 < 5, _runs(sizes)
            assert consumer.layer_switches == switches + 1, "one switch, on h's key frame"
            assert set(sizes) <= {(640, 360), (320, 180)}, _runs(sizes)

            async with http.post(f"{viewer.location}/video-size", json={"width": None, "height": None}) as resp:
                assert resp.status == 204, await resp.text()
            sizes = await _frame_sizes(video, _tail((640, 360), 10), timeout=10)
            assert consumer.forwarder.started and consumer.dropped_waiting < 200
            layer_plis = {layer.rid: layer.plis for layer in publisher.layers}
            assert layer_plis["h"] >= 1, f"the switch asked h for a key frame: {layer_plis}"
        finally:
            await viewer.close(http)


async def test_in_process_taps_get_only_the_top_layer(service: Service, http: aiohttp.ClientSession) -> None:
    async with SimulcastPublisher(f"{service.url}/whip/demo", stream_key(service), width=640, height=360,
                                  http=http):
        direct = DirectTransport(service.worker)
        tap = direct.tap("demo", "video")
        got: list[Any] = []

        class Sink:
            def forward(self, media: Any) -> None:
                got.append(media)

        sink = Sink()
        tap.add_consumer(sink)
        producer = service.worker.routers["demo"].producers["video"]
        deadline = time.monotonic() + 10
        while not (got and producer.top.width == 640) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        got.clear()
        await asyncio.sleep(1.0)
        tap.remove_consumer(sink)
        assert producer.top.rid == "f" and producer.top.width == 640
        assert got and {m.layer.rid for m in got} == {"f"}, "the bridge decodes the top layer only"
        assert {m.tid for m in got} == {0, 1, 2}, "every temporal layer"


async def test_a_simulcast_answer_raises_the_publishers_max_bitrate(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """libwebrtc caps all simulcast streams together with x-google-max-bitrate: a simulcast
    answer raises it above the one-stream value (sfu.negotiation)."""
    from sfu.negotiation import PUBLISHER_START_BITRATE_KBPS, SIMULCAST_MAX_BITRATE_KBPS

    async with SimulcastPublisher(f"{service.url}/whip/demo", stream_key(service), width=640, height=360,
                                  http=http) as publisher:
        assert f"x-google-max-bitrate={SIMULCAST_MAX_BITRATE_KBPS}" in publisher.answer
        assert f"x-google-start-bitrate={PUBLISHER_START_BITRATE_KBPS}" in publisher.answer
    assert SIMULCAST_MAX_BITRATE_KBPS > PUBLISHER_START_BITRATE_KBPS


async def test_a_viewers_transport_feedback_reaches_its_estimator_outside_aiortcs_loop(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A viewer that offers transport-cc (as browsers do) and sends feedback every 50 ms:
    its packets are numbered, the feedback reaches the viewer's BandwidthEstimator through
    the ICE socket's direct SRTCP path, and NACKs beside it still reach the consumer."""
    from loadtest.subscriber import LightSubscriber

    async with SimulcastPublisher(f"{service.url}/whip/demo", stream_key(service), width=640, height=360,
                                  http=http):
        viewer = LightSubscriber(0, decode=False)
        await viewer.join(f"{service.url}/whep/demo", http)
        try:
            participant = next(iter(service.worker.routers["demo"].viewers.values()))
            bwe = participant.bwe
            assert bwe is not None
            deadline = time.monotonic() + 10
            while (bwe.feedback_packets < 20 or viewer.frames_complete < 10) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert viewer.feedback_sent >= 20 and bwe.feedback_packets >= 20, (viewer.feedback_sent, bwe.stats())
            assert bwe.source == "transport-cc" and bwe.reported_received > 0, bwe.stats()
            protocols = participant.pc.getTransceivers()[0].sender.transport.transport._connection._protocols
            assert any(getattr(p, "_relaycast_rtcp_direct", False) for p in protocols)
            consumer = participant.consumers["video"]
            before = consumer.nacks_received
            viewer._nack(viewer.video.highest - 3, viewer.video.highest)
            deadline = time.monotonic() + 5
            while consumer.nacks_received == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert consumer.nacks_received == before + 1, "RTCP other than feedback still reaches aiortc"
        finally:
            await viewer.close(http)
