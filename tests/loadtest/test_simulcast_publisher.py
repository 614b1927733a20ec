"""loadtest.simulcast_publisher sends VP8 simulcast like a browser (RFC 8853/8851/8852, RFC 7741).

The SFU does not receive simulcast yet, so the publisher is tested against a small WHIP
answerer in the test: an aiortc peer connection behind an aiohttp endpoint on 127.0.0.1 that
answers ``a=simulcast:recv`` and reads the plain RTP straight from its DTLS transport
(:func:`loadtest.aiortc_hooks.install_raw_rtp_receiver`), sending RTCP through
:class:`sfu.aiortc_private.RawRtpSender`.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import av
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtp import (
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from loadtest import aiortc_hooks
from loadtest.pattern import code_to_capture_time, read_code
from loadtest.simulcast_publisher import (
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
    SimulcastPublisher,
    Vp8LayerEncoder,
    munge_offer,
    parse_answer,
    vp8_key_frame_size,
)
from loadtest.sources import PatternVideoTrack
from sfu.aiortc_private import RawRtpSender
from tests.polling import wait_for

WIDTH, HEIGHT = 640, 360
EXPECTED_SIZES = {"q": (160, 90), "h": (320, 180), "f": (640, 360)}
TWCC_ID = 5


# ----------------------------------------------------------------------------- helpers


def _video_section(sdp: str) -> list[str]:
    lines = sdp.replace("\r\n", "\n").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return lines[start:end]


def _descriptor(payload: bytes) -> tuple[bool, int | None, int | None, int | None, bool, int]:
    """RFC 7741 §4.2: (S, picture id, tl0picidx, tid, y, descriptor length)."""
    start = bool(payload[0] & 0x10)
    picture_id = tl0 = tid = None
    y = False
    pos = 1
    if payload[0] & 0x80:
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            if payload[pos] & 0x80:
                picture_id = struct.unpack_from("!H", payload, pos)[0] & 0x7FFF
                pos += 2
            else:
                picture_id = payload[pos]
                pos += 1
        if ext & 0x40:
            tl0 = payload[pos]
            pos += 1
        if ext & 0x30:
            if ext & 0x20:
                tid, y = payload[pos] >> 6, bool(payload[pos] & 0x20)
            pos += 1
    return start, picture_id, tl0, tid, y, pos


@dataclass
class Rtp:
    ssrc: int
    pt: int
    seq: int
    timestamp: int
    marker: bool
    extensions: dict[int, bytes]
    payload: bytes


def _parse_rtp(data: bytes) -> Rtp:
    first, second, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    pos = 12 + 4 * (first & 0x0F)
    extensions: dict[int, bytes] = {}
    if first & 0x10:
        profile, words = struct.unpack_from("!HH", data, pos)
        assert profile == 0xBEDE, "one-byte header extensions (RFC 8285 §4.2)"
        pos += 4
        end = pos + 4 * words
        while pos < end:
            if data[pos] == 0:
                pos += 1
                continue
            ident, length = data[pos] >> 4, (data[pos] & 0x0F) + 1
            extensions[ident] = data[pos + 1:pos + 1 + length]
            pos += 1 + length
        pos = end
    return Rtp(ssrc, second & 0x7F, seq, timestamp, bool(second & 0x80), extensions, data[pos:])


@dataclass
class Stream:
    """Packets received on one SSRC, plus the frames assembled from them."""

    packets: list[Rtp] = field(default_factory=list)
    frames: list[tuple[int, list[Rtp]]] = field(default_factory=list)  # (timestamp, packets), complete
    key_frames: int = 0
    partial: dict[int, list[Rtp]] = field(default_factory=dict)

    def add(self, packet: Rtp) -> None:
        self.packets.append(packet)
        parts = self.partial.setdefault(packet.timestamp, [])
        parts.append(packet)
        if packet.marker:
            parts = sorted(self.partial.pop(packet.timestamp), key=lambda p: p.seq)
            if _descriptor(parts[0].payload)[0]:
                self.frames.append((packet.timestamp, parts))
                if vp8_key_frame_size(parts[0].payload) is not None:
                    self.key_frames += 1


def _frame_data(parts: list[Rtp]) -> bytes:
    return b"".join(p.payload[_descriptor(p.payload)[5]:] for p in parts)


class Answerer:
    """A minimal simulcast-receiving WHIP endpoint on 127.0.0.1."""

    def __init__(self, accept_simulcast: bool = True) -> None:
        self.accept_simulcast = accept_simulcast
        self.offer: str | None = None
        self.answer: str | None = None
        self.pc: RTCPeerConnection | None = None
        self.rtcp: RawRtpSender | None = None
        self.streams: dict[int, Stream] = {}
        self.arrivals: list[Rtp] = []  # every RTP packet, in arrival order
        self.changed = asyncio.Event()
        self.deleted = asyncio.Event()
        self.rid_id: int | None = None
        self.rrid_id: int | None = None
        self.tapped = False
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/whip", self._post)
        app.router.add_delete("/whip/session", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/whip"

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        self.offer = await request.text()
        offer = parse_answer(self.offer.replace("a=simulcast:send", "a=simulcast:recv"))
        self.rid_id, self.rrid_id = offer.rid_id, offer.repaired_rid_id
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=self.offer, type="offer"))
        dtls = pc.getTransceivers()[0].receiver.transport

        @dtls.on("statechange")  # type: ignore[misc]
        def tap() -> None:
            if dtls.state == "connected" and not self.tapped:
                self.tapped = aiortc_hooks.install_raw_rtp_receiver(dtls, self._on_rtp)
                self.rtcp = RawRtpSender(dtls)

        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        if self.accept_simulcast:
            rids = [line.split()[0][len("a=rid:"):] for line in _video_section(self.offer)
                    if line.startswith("a=rid:")]
            vp8 = next(line.split()[0][len("a=rtpmap:"):] for line in _video_section(answer)
                       if line.startswith("a=rtpmap:") and "VP8/" in line)
            extra = [f"a=extmap:{self.rid_id} {RID_URI}", f"a=extmap:{self.rrid_id} {REPAIRED_RID_URI}",
                     f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}", f"a=rtcp-fb:{vp8} transport-cc",
                     *(f"a=rid:{rid} recv" for rid in rids), "a=simulcast:recv " + ";".join(rids)]
            lines = answer.replace("\r\n", "\n").rstrip("\n").split("\n")
            start = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
            answer = "\r\n".join([*lines[:end], *extra, *lines[end:]]) + "\r\n"
        self.answer = answer
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": "/whip/session"})

    async def _delete(self, request: web.Request) -> web.Response:
        self.deleted.set()
        return web.Response(status=200)

    def _on_rtp(self, data: bytes, arrival_us: int = 0) -> None:
        packet = _parse_rtp(data)
        self.arrivals.append(packet)
        self.streams.setdefault(packet.ssrc, Stream()).add(packet)
        self.changed.set()

    def send_rtcp(self, packet: object) -> None:
        assert self.rtcp is not None
        assert self.rtcp.send_rtcp(bytes(packet))  # type: ignore[call-overload]

    def rid_of(self, ssrc: int) -> str | None:
        for packet in self.streams[ssrc].packets:
            if self.rid_id in packet.extensions:
                return packet.extensions[self.rid_id].decode()
        return None


@pytest.fixture
async def answerer() -> AsyncIterator[Answerer]:
    server = Answerer()
    await server.start()
    yield server
    await server.close()


# ----------------------------------------------------------------------------- unit tests


async def test_munged_offer_is_a_browser_simulcast_offer() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        video = pc.addTransceiver("video", direction="sendonly")
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType.lower() in ("video/vp8", "video/rtx")])
        pc.addTransceiver("audio", direction="sendonly")
        offer = (await pc.createOffer()).sdp
    finally:
        await pc.close()
    munged = munge_offer(offer, ["q", "h", "f"])
    section = _video_section(munged)
    assert f"a=extmap:10 {RID_URI}" in section and f"a=extmap:11 {REPAIRED_RID_URI}" in section
    assert f"a=extmap:5 {TRANSPORT_CC_URI}" in section and "a=rtcp-fb:97 transport-cc" in section
    assert "a=rtcp-fb:98 transport-cc" not in section  # not for rtx
    assert [line for line in section if line.startswith("a=rid:")] == ["a=rid:q send", "a=rid:h send", "a=rid:f send"]
    assert section[-1] == "a=simulcast:send q;h;f" or "a=simulcast:send q;h;f" in section
    assert not any(line.startswith(("a=ssrc:", "a=ssrc-group:")) for line in section)
    audio = munged[munged.index("m=audio"):]
    assert "a=ssrc:" in audio and "a=rid:" not in audio  # the audio section is unchanged
    answer = parse_answer(munged.replace("a=simulcast:send q;h;f", "a=simulcast:recv q;~h;f"))
    assert answer.rids == ("q", "f") and (answer.rid_id, answer.repaired_rid_id) == (10, 11)
    assert parse_answer(offer).rids == ()


@pytest.mark.parametrize("temporal", [3, 2])
def test_temporal_layers_decode_without_the_higher_layers(temporal: int) -> None:
    """Frames of TID <= t decode bit-exactly with a fresh decoder that never saw TID > t,
    before and after a forced key frame (which restarts the pattern)."""
    encoder = Vp8LayerEncoder(320, 180, 300_000, temporal=temporal)
    source = PatternVideoTrack(320, 180, 30, code="counter")
    frames = []
    for index in range(26):
        picture = source.make_frame(index, index)
        picture.pts = index * 3000
        encoded = encoder.encode(picture, keyframe=index == 11)
        assert encoded is not None
        frames.append(encoded)
    pattern = [0, 2, 1, 2] if temporal == 3 else [0, 1]
    assert [f.tid for f in frames[:11]] == [pattern[i % len(pattern)] for i in range(11)]
    assert frames[11].keyframe and frames[11].tid == 0 and not any(f.keyframe for f in frames[12:])
    assert [f.tid for f in frames[11:]] == [pattern[i % len(pattern)] for i in range(15)]
    if temporal == 3:
        assert [f.layer_sync for f in frames[12:16]] == [True, True, False, True]

    def decode(max_tid: int) -> dict[int, np.ndarray]:
        decoder = av.CodecContext.create("libvpx", "r")
        out = {}
        for index, frame in enumerate(frames):
            if frame.tid <= max_tid:
                for picture in decoder.decode(av.Packet(frame.data)):
                    out[index] = picture.to_ndarray()
        return out

    full = decode(temporal - 1)
    assert len(full) == len(frames)
    for max_tid in range(temporal - 1):
        part = decode(max_tid)
        assert sorted(part) == [i for i, f in enumerate(frames) if f.tid <= max_tid]
        assert all(np.array_equal(part[i], full[i]) for i in part), f"TID <= {max_tid} depends on higher TIDs"
    # A Y=1 frame decodes on top of the TID 0 frames alone (RFC 7741 §4.2 layer sync).
    sync = next(i for i, f in enumerate(frames) if i > 12 and f.tid == temporal - 1 and f.layer_sync)
    decoder = av.CodecContext.create("libvpx", "r")
    for index, frame in enumerate(frames[:sync + 1]):
        if frame.tid == 0 or index == sync:
            pictures = decoder.decode(av.Packet(frame.data))
    assert np.array_equal(pictures[-1].to_ndarray(), full[sync])


def test_sender_report_parses_as_rfc3550_sr_with_cname() -> None:
    publisher = SimulcastPublisher("http://127.0.0.1:9/whip", "k", width=WIDTH, height=HEIGHT)
    from loadtest.simulcast_publisher import LayerSpec, LayerStream

    layer = LayerStream(LayerSpec("h", 2, 500_000), 320, 180,
                         Vp8LayerEncoder(320, 180, 500_000, temporal=1), 0x11223344, None)
    layer.packets, layer.octets, layer.last_rtp, layer.last_wall = 10, 12_000, 90_000, 1000.0
    sr, sdes = RtcpPacket.parse(publisher.sender_report(layer, now=1000.5))
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == 0x11223344
    assert (sr.sender_info.packet_count, sr.sender_info.octet_count) == (10, 12_000)
    assert sr.sender_info.rtp_timestamp == 90_000 + 45_000
    assert sr.sender_info.ntp_timestamp >> 32 == 1000 + 2_208_988_800
    assert sdes.chunks[0].ssrc == 0x11223344 and sdes.chunks[0].items[0][0] == 1


# ----------------------------------------------------------------------------- on the wire


async def test_three_layers_arrive_with_rids_key_frames_temporal_ids_pli_nack(answerer: Answerer) -> None:
    publisher = SimulcastPublisher(answerer.url, "key", width=WIDTH, height=HEIGHT, layers=3,
                                   temporal=3, always_send_rid=False)
    await publisher.start()
    try:
        assert answerer.offer is not None and "a=simulcast:send q;h;f" in answerer.offer
        assert publisher.simulcast is not None and publisher.simulcast.rids == ("q", "h", "f")
        assert answerer.tapped

        def rids() -> dict[str, int] | None:
            found = {answerer.rid_of(ssrc): ssrc for ssrc in answerer.streams}
            found.pop(None, None)
            return found if set(found) >= {"q", "h", "f"} else None  # type: ignore[return-value]

        by_rid = await wait_for(rids, 10, "packets with rid q, h and f", wake=answerer.changed)
        assert {layer.rid: layer.ssrc for layer in publisher.layers} == by_rid
        mid_id = next(int(line.split()[0].split(":")[1]) for line in _video_section(answerer.offer)
                      if line.endswith("sdes:mid"))
        for rid, ssrc in by_rid.items():
            first = answerer.streams[ssrc].packets[0]
            assert first.extensions[answerer.rid_id] == rid.encode() and first.extensions[mid_id] == b"0"

        # A key frame on every layer (PLI, RFC 4585 §6.3.1), each of its layer's picture size.
        for ssrc in by_rid.values():
            answerer.send_rtcp(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=ssrc))
        keys_before = {rid: answerer.streams[ssrc].key_frames for rid, ssrc in by_rid.items()}
        await wait_for(lambda: all(answerer.streams[s].key_frames > keys_before[r] for r, s in by_rid.items()),
                       5, "a key frame per layer after PLI", wake=answerer.changed)
        for rid, ssrc in by_rid.items():
            key = [parts for _, parts in answerer.streams[ssrc].frames
                   if vp8_key_frame_size(parts[0].payload) is not None][-1]
            assert vp8_key_frame_size(key[0].payload) == EXPECTED_SIZES[rid]
            # the capture time is readable in every layer (glass-to-glass delay)
            pictures = av.CodecContext.create("libvpx", "r").decode(av.Packet(_frame_data(key)))
            code = read_code(pictures[0])
            assert code is not None and abs(code_to_capture_time(code) - time.time()) < 3.0

        # Temporal ids follow 0,2,1,2 from each key frame; TL0PICIDX counts TID 0 frames; picture ids +1.
        def since_key(ssrc: int) -> int:
            frames = answerer.streams[ssrc].frames
            last_key = max(i for i, (_, parts) in enumerate(frames) if vp8_key_frame_size(parts[0].payload))
            return len(frames) - last_key

        await wait_for(lambda: all(since_key(s) >= 9 for s in by_rid.values()), 5,
                       "9 frames per layer from its last key frame", wake=answerer.changed)
        for ssrc in by_rid.values():
            frames = answerer.streams[ssrc].frames
            last_key = max(i for i, (_, parts) in enumerate(frames) if vp8_key_frame_size(parts[0].payload))
            descriptors = [_descriptor(parts[0].payload) for _, parts in frames[last_key:]]
            for _, parts in frames[last_key:]:  # every packet of a frame has the same descriptor fields
                assert len({_descriptor(p.payload)[1:5] for p in parts}) == 1
            tids = [d[3] for d in descriptors]
            assert tids[:9] == [0, 2, 1, 2, 0, 2, 1, 2, 0], tids
            assert [d[4] for d in descriptors[1:4]] == [True, True, False]  # Y: pos 3 refs the TID 1 frame
            pics = [d[1] for d in descriptors]
            assert all((b - a) & 0x7FFF == 1 for a, b in zip(pics, pics[1:], strict=False))
            tl0 = [d[2] for d in descriptors]
            for (prev_tl0, cur_tl0, tid) in zip(tl0, tl0[1:], tids[1:], strict=False):
                assert (cur_tl0 - prev_tl0) & 0xFF == (1 if tid == 0 else 0)

        # PLI on "h" gives a key frame on "h" only.
        h, q, f = by_rid["h"], by_rid["q"], by_rid["f"]
        counts = {s: answerer.streams[s].key_frames for s in (q, h, f)}
        answerer.send_rtcp(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=h))
        await wait_for(lambda: answerer.streams[h].key_frames > counts[h], 5, "key frame on h",
                       wake=answerer.changed)
        frames_at = {s: len(answerer.streams[s].frames) for s in (q, f)}
        await wait_for(lambda: all(len(answerer.streams[s].frames) >= frames_at[s] + 3 for s in (q, f)),
                       5, "3 more frames on q and f", wake=answerer.changed)
        assert answerer.streams[q].key_frames == counts[q] and answerer.streams[f].key_frames == counts[f]

        # FIR (RFC 5104 §4.3.1: media ssrc 0, the target in the FCI) gives a key frame on "q".
        keys_q = answerer.streams[q].key_frames
        answerer.send_rtcp(RtcpPsfbPacket(fmt=4, ssrc=1, media_ssrc=0, fci=struct.pack("!IB3x", q, 7)))
        await wait_for(lambda: answerer.streams[q].key_frames > keys_q, 5, "key frame on q after FIR",
                       wake=answerer.changed)

        # NACK (RFC 4585 §6.2.1) on "f" is answered by RTX (RFC 4588) carrying the repaired-rid.
        original = answerer.streams[f].packets[-5]
        answerer.send_rtcp(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=f, lost=[original.seq]))

        def rtx() -> Rtp | None:
            for stream in answerer.streams.values():
                for packet in stream.packets:
                    if answerer.rrid_id in packet.extensions:
                        return packet
            return None

        repaired = await wait_for(rtx, 5, "an RTX packet", wake=answerer.changed)
        assert repaired.extensions[answerer.rrid_id] == b"f" and answerer.rid_id not in repaired.extensions
        assert repaired.ssrc not in by_rid.values() and repaired.ssrc == publisher.layers[2].rtx_ssrc
        assert struct.unpack_from("!H", repaired.payload)[0] == original.seq
        assert repaired.payload[2:] == original.payload and repaired.timestamp == original.timestamp

        # After a receiver report for "q", its packets leave mid and rid off (as Chrome does); "h" keeps them.
        seen = len(answerer.streams[q].packets)
        answerer.send_rtcp(RtcpRrPacket(ssrc=1, reports=[RtcpReceiverInfo(
            ssrc=q, fraction_lost=0, packets_lost=0, highest_sequence=0, jitter=0, lsr=0, dlsr=0)]))
        await wait_for(lambda: any(answerer.rid_id not in p.extensions for p in answerer.streams[q].packets[seen:]),
                       5, "a q packet without rid", wake=answerer.changed)
        assert answerer.rid_id in answerer.streams[h].packets[-1].extensions
        # Every video packet (media and RTX) carries the next transport-wide sequence number
        # (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2); audio (aiortc's sender) none.
        video_ssrcs = {*by_rid.values(), repaired.ssrc}
        twcc = [struct.unpack("!H", p.extensions[TWCC_ID])[0] for p in answerer.arrivals if p.ssrc in video_ssrcs]
        assert len(twcc) == sum(1 for p in answerer.arrivals if p.ssrc in video_ssrcs) > 40
        assert sorted((s - twcc[0]) & 0xFFFF for s in twcc) == list(range(len(twcc)))
        assert not any(TWCC_ID in p.extensions for p in answerer.arrivals if p.ssrc not in video_ssrcs)
        stats = publisher.stats()
        assert [layer["plis"] for layer in stats["layers"]] == [1, 2, 1]
        assert stats["layers"][2]["retransmits"] == 1 and stats["layers"][0]["firs"] == 1
    finally:
        await publisher.stop()
    assert answerer.deleted.is_set()


async def test_without_simulcast_in_the_answer_only_the_top_layer_is_sent() -> None:
    server = Answerer(accept_simulcast=False)
    await server.start()
    try:
        async with SimulcastPublisher(server.url, "key", width=WIDTH, height=HEIGHT, audio=False,
                                      temporal=1) as publisher:
            assert [layer.rid for layer in publisher.layers] == ["f"]
            await wait_for(lambda: any(s.frames for s in server.streams.values()), 5, "a frame",
                           wake=server.changed)
            assert len(server.streams) == 1
            stream = next(iter(server.streams.values()))
            assert all(server.rid_id not in p.extensions for p in stream.packets)
            _, parts = stream.frames[0]
            assert _descriptor(parts[0].payload)[2:4] == (None, None)  # no TL0PICIDX/TID with temporal=1
    finally:
        await server.close()
