"""Node-to-node pipes (cascading, SFU side): node A offers its room's producers
to node B (``Worker.pipe_offer``), B answers through its ordinary ``publish``, and B's
viewers are served from B — frames, PLIs and publisher return all cross the pipe."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from common import latm
from ingest.whip_relay import WhipRelay
from sfu.worker import Worker
from tests.polling import wait_for
from tests.services import STREAM_KEY
from tests.sfu.sfu_helpers import (
    OffsetPatternTrack,
    publish_pattern,
    read_frames,
    receiver_tracks,
)

PIPE_ID = "pipe-" + "0" * 27


async def open_pipe(origin: Worker, edge: Worker, room: str = "demo") -> None:
    """What signaling does to cascade a room from ``origin`` to ``edge``."""
    offer = await origin.pipe_offer({"room": room, "session_id": PIPE_ID})
    assert "sdp" in offer, offer
    answer = await edge.publish({"room": room, "session_id": PIPE_ID, "sdp": offer["sdp"],
                                 "identity": {"id": "node-a", "name": "node pipe", "role": "publisher"}})
    assert "sdp" in answer, answer
    done = await origin.pipe_answer({"session_id": PIPE_ID, "sdp": answer["sdp"]})
    assert done == {"ok": True}, done


async def view_on(worker: Worker, session_id: str, room: str = "demo") -> RTCPeerConnection:
    """A WHEP-like viewer talking to ``worker`` directly (no signaling in between)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    reply = await worker.subscribe({"room": room, "session_id": session_id,
                                    "sdp": pc.localDescription.sdp})
    assert "sdp" in reply, reply
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    return pc


async def test_room_piped_to_a_second_node_serves_its_viewers(service: Any) -> None:
    svc = service
    origin: Worker = svc.worker
    edge_config = dataclasses.replace(svc.config.sfu, node_id="sfu-edge")
    publisher = await publish_pattern(svc, OffsetPatternTrack(0))
    viewers: list[RTCPeerConnection] = []
    async with Worker(edge_config) as edge:
        try:
            await open_pipe(origin, edge)
            pipe = origin.routers["demo"].pipes[PIPE_ID]
            # On the origin the pipe is not a viewer; on the edge it is the room's publisher.
            assert origin.routers["demo"].state()["viewers"] == 0
            await wait_for(
                lambda: edge.routers["demo"].live, 10, "the edge room to go live", interval_s=0.02
            )
            assert set(edge.routers["demo"].producers) == {"video", "audio"}

            # A viewer on the edge decodes the origin publisher's frames in order.
            joined = time.monotonic()
            viewers.append(await view_on(edge, "viewer-" + "1" * 26))
            tracks = receiver_tracks(viewers[0])
            decoded = await read_frames(tracks["video"], 60, timeout=20)
            good = decoded.readable
            assert len(good) >= 50, decoded.codes
            assert good == sorted(good) and decoded.skipped() <= 3, decoded.codes
            audio = await asyncio.wait_for(tracks["audio"].recv(), 10)
            assert audio.sample_rate == 48000
            first = (decoded.first_frame_at or 0) - joined
            print(f"edge viewer: first frame {first * 1000:.0f} ms after joining")

            # A late joiner on the edge needs a key frame: its PLI crosses the pipe to the
            # origin's producer (the edge's producer asks the pipe, the pipe asks upstream).
            before = pipe.consumers["video"].plis_received
            late_joined = time.monotonic()
            viewers.append(await view_on(edge, "viewer-" + "2" * 26))
            late = await read_frames(receiver_tracks(viewers[1])["video"], 5, timeout=15)
            assert late.readable, late.codes
            late_first = (late.first_frame_at or 0) - late_joined
            print(f"late edge viewer: first frame {late_first * 1000:.0f} ms after joining")
            assert pipe.consumers["video"].plis_received > before

            # The edge serves both viewers from one pipe: the origin still sees one output.
            assert list(origin.routers["demo"].pipes) == [PIPE_ID]
            assert len(edge.routers["demo"].viewers) == 2

            # The publisher leaves and a new one comes to the origin: the pipe resumes, the
            # edge viewer continues with the new publisher's frames (continuous seq/ts).
            await publisher.close()
            await wait_for(
                lambda: not origin.routers["demo"].live, 10, "the origin room to end",
                interval_s=0.02,
            )
            publisher = await publish_pattern(svc, OffsetPatternTrack(100_000))
            resumed = await read_frames(tracks["video"], 200, timeout=30,
                                        until=lambda code: code >= 100_000)
            assert resumed.readable and resumed.readable[-1] >= 100_000, resumed.codes[-10:]
        finally:
            for pc in viewers:
                await pc.close()
            await publisher.close()
        # Closing the pipe on the origin frees it there.
        assert (await origin.close_session({"session_id": PIPE_ID})) == {"ok": True}
        assert "demo" not in origin.routers or PIPE_ID not in origin.routers["demo"].pipes


async def test_the_aac_section_of_an_rtmp_relay_crosses_the_pipe(service: Any, tmp_path: Path) -> None:
    """A relay's third section (the encoder's AAC as MP4A-LATM) reaches the edge as its own
    producer, frame for frame, beside the Opus a WebRTC viewer gets."""
    origin: Worker = service.worker
    path = tmp_path / "tone.aac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=48000", "-t", "2", "-ac", "2", "-c:a", "aac",
                    "-f", "adts", str(path)], check=True)
    data, frames = path.read_bytes(), []
    while data:
        length = ((data[3] & 0x03) << 11) | (data[4] << 3) | (data[5] >> 5)
        frames.append(data[:length])
        data = data[length:]
    edge_config = dataclasses.replace(service.config.sfu, node_id="sfu-edge")
    async with aiohttp.ClientSession() as http, Worker(edge_config) as edge:
        relay = await WhipRelay.open(f"{service.url}/whip", STREAM_KEY, http)
        try:
            await wait_for(lambda: relay.aac.started, 10, "the relay's connection")
            await open_pipe(origin, edge)
            await wait_for(lambda: edge.routers["demo"].live, 10, "the edge room to go live")
            producers = edge.routers["demo"].producers
            assert set(producers) == {"video", "audio", "aac"} and producers["aac"].codec.mimeType == latm.MIME_TYPE
            elements: list[bytes] = []
            pending: list[bytes] = []

            class Sink:
                def forward(self, media: Any) -> None:
                    pending.append(media.payload)
                    if media.marker:
                        elements.append(b"".join(pending))
                        pending.clear()

            producers["aac"].add_consumer(Sink())
            for index, frame in enumerate(frames):  # ~real time, 1,024 samples each
                relay.on_ts_audio("aac", frame, 1024)
                if index % 5 == 4:
                    await asyncio.sleep(0.1)
            await wait_for(lambda: len(elements) >= 12, 10, lambda: f"{len(elements)} AAC packets on the edge")
        finally:
            await relay.close("test over")
    raw = [latm.parse_adts(frame)[1] for frame in frames]
    got = [frame for payload in elements for _, frame in latm.parse_audio_mux_elements(payload)]
    start = raw.index(got[0])
    assert got == raw[start:start + len(got)]


async def test_pipe_offer_needs_a_live_room_and_answer_needs_an_offer(service: Any) -> None:
    origin: Worker = service.worker
    reply = await origin.pipe_offer({"room": "demo", "session_id": PIPE_ID})
    assert reply["error"]["status"] == 409, reply
    reply = await origin.pipe_answer({"session_id": PIPE_ID, "sdp": "v=0\r\n"})
    assert reply["error"]["status"] == 404, reply
    reply = await origin.pipe_offer({"room": 7})
    assert reply["error"]["status"] == 400, reply


async def _publish_offer() -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(OffsetPatternTrack(0), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def test_room_router_survives_while_a_session_is_being_opened(service: Any) -> None:
    """A session of a room ending while another one is still being opened there (its SDP
    not answered yet) must not drop the room's Router: the new session would end up on
    a Router no later viewer reaches (seen as a failover flake: the re-published room
    answered every viewer 409 "no publisher")."""
    config = dataclasses.replace(service.config.sfu, node_id="sfu-race")
    clients: list[RTCPeerConnection] = []
    async with Worker(config) as worker:
        try:
            clients.append(await _publish_offer())
            first = await worker.publish({"room": "demo", "session_id": "pub-" + "1" * 28,
                                          "sdp": clients[0].localDescription.sdp,
                                          "identity": {"role": "publisher"}})
            assert "sdp" in first, first
            clients.append(await _publish_offer())
            second = asyncio.ensure_future(worker.publish({
                "room": "demo", "session_id": "pub-" + "2" * 28, "sdp": clients[1].localDescription.sdp,
                "identity": {"role": "publisher"}}))
            await asyncio.sleep(0)  # the second session is registered, its answer not made yet
            assert not second.done()
            assert await worker.close_session({"session_id": "pub-" + "1" * 28}) == {"ok": True}
            assert "sdp" in await second
            router = worker.routers.get("demo")
            assert router is not None and router.live, "the room's Router was dropped under the new session"
            assert router.publisher is not None and router.publisher.session_id == "pub-" + "2" * 28
        finally:
            for pc in clients:
                await pc.close()
