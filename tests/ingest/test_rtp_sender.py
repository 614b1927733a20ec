"""The relay's RTP sender (unit tests; the end-to-end path is tests/ingest/test_encoder_to_*):
RFC 6184 packetization read back by aiortc's depacketizer, the RTP header and extensions,
frames that wait for the connection, NACK answered with RTX, PLI, and sender reports."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.codecs.h264 import h264_depayload
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRtpfbPacket, RtcpSrPacket

from ingest import rtp_sender
from ingest.rtp_sender import PAYLOAD_MAX, RtpStream, packetize_h264
from sfu.rtp import URI_ABS_SEND_TIME, URI_MID

SPS = bytes([0x67, 0x42, 0xC0, 0x1F]) + bytes(range(20))
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
SEI = bytes([0x06]) + bytes(30)


def _nal(nal_type: int, size: int, nri: int = 0x60) -> bytes:
    return bytes([nri | nal_type]) + bytes((i * 7) & 0xFF for i in range(size - 1))


def _annex_b(nalus: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nalus)


@pytest.mark.parametrize("nalus", [
    [SPS, PPS, _nal(5, 3000)],                  # parameter sets aggregated, the IDR fragmented
    [_nal(1, PAYLOAD_MAX)],                     # exactly the limit: one single NAL unit packet
    [_nal(1, PAYLOAD_MAX + 1)],                 # one byte over: two FU-A fragments
    [SEI, *[_nal(1, 300) for _ in range(9)]],   # many small units: several STAP-As
    [_nal(5, 50_000)],
])
def test_packetized_access_units_depacketize_to_the_same_nal_units(nalus: list[bytes]) -> None:
    payloads = packetize_h264(nalus)
    assert all(len(p) <= PAYLOAD_MAX for p in payloads)
    assert b"".join(h264_depayload(p) for p in payloads) == _annex_b(nalus)


def test_packetization_uses_each_form_of_rfc_6184() -> None:
    payloads = packetize_h264([SPS, PPS, _nal(5, 3000)])
    assert payloads[0][0] & 0x1F == 24  # STAP-A with SPS and PPS (§5.7.1)
    assert payloads[0][0] & 0x60 == 0x60  # NRI: the largest of the aggregated units'
    fragments = payloads[1:]
    assert len(fragments) == 3 and {p[0] & 0x1F for p in fragments} == {28}  # FU-A (§5.8)
    assert [p[1] & 0xC0 for p in fragments] == [0x80, 0x00, 0x40]  # start, middle, end bits
    assert {p[1] & 0x1F for p in fragments} == {5}
    assert max(len(p) for p in fragments) - min(len(p) for p in fragments) <= 1  # equal cuts
    assert packetize_h264([_nal(1, 500)]) == [_nal(1, 500)]  # a lone small unit as it is
    assert packetize_h264([b"", SPS]) == [SPS]


class FakeRaw:
    """Stands in for RawRtpSender: keeps what would be protected and sent."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, data: bytes) -> bool:
        self.rtp.append(data)
        return True

    def send_rtp_many(self, packets: list[bytes]) -> int:
        self.rtp.extend(packets)
        return len(packets)

    def send_rtcp(self, data: bytes) -> bool:
        self.rtcp.append(data)
        return True


def _params(rtx: bool = True) -> Any:
    return SimpleNamespace(
        codec=SimpleNamespace(payloadType=102), ssrc=0x11223344, rtx_payload_type=103 if rtx else None,
        rtx_ssrc=0x55667788, cname="relay-cname", mid="0", extensions={URI_MID: 1, URI_ABS_SEND_TIME: 3})


def _parse(packet: bytes) -> dict[str, Any]:
    first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    assert first >> 6 == 2  # RTP version 2
    pos = 12
    extensions: dict[int, bytes] = {}
    if first & 0x10:
        profile, words = struct.unpack_from("!HH", packet, pos)
        assert profile == 0xBEDE  # RFC 8285 §4.2 one-byte form
        block = packet[pos + 4:pos + 4 + 4 * words]
        i = 0
        while i < len(block) and block[i]:
            ident, length = block[i] >> 4, (block[i] & 0x0F) + 1
            extensions[ident] = block[i + 1:i + 1 + length]
            i += 1 + length
        pos += 4 + 4 * words
    return {"marker": second >> 7, "pt": second & 0x7F, "seq": seq, "ts": ts, "ssrc": ssrc,
            "ext": extensions, "payload": packet[pos:]}


def test_frames_wait_for_the_connection_then_go_out_with_header_and_extensions() -> None:
    stream = RtpStream("video", 90000)
    frames = [(packetize_h264([SPS, PPS, _nal(5, 3000)]), 0), (packetize_h264([_nal(1, 400)]), 3000)]
    for payloads, pts in frames:
        stream.send(payloads, pts)
    assert not stream.started and stream.sender_report() is None
    raw = FakeRaw()
    stream.start(_params(), raw)  # type: ignore[arg-type]
    packets = [_parse(p) for p in raw.rtp]
    assert [p["payload"] for p in packets] == frames[0][0] + frames[1][0]
    assert [p["marker"] for p in packets] == [0, 0, 0, 1, 1]  # the last packet of each frame
    assert all(p["pt"] == 102 and p["ssrc"] == 0x11223344 for p in packets)
    assert [(p["seq"] - packets[0]["seq"]) & 0xFFFF for p in packets] == [0, 1, 2, 3, 4]
    assert (packets[4]["ts"] - packets[0]["ts"]) & 0xFFFFFFFF == 3000
    assert all(p["ext"][1] == b"0" and len(p["ext"][3]) == 3 for p in packets)  # mid, abs-send-time


def test_frames_beyond_the_wait_limit_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtp_sender, "MAX_PENDING", 3)
    stream = RtpStream("audio", 48000)
    for n in range(5):
        stream.send([bytes([n]) * 10], n * 960)
    raw = FakeRaw()
    stream.start(_params(), raw)  # type: ignore[arg-type]
    assert stream.dropped == 2
    assert [_parse(p)["payload"][0] for p in raw.rtp] == [2, 3, 4]  # the oldest went
    assert all(_parse(p)["marker"] == 0 for p in raw.rtp)  # RFC 7587 §4.1: audio never marks


@pytest.mark.parametrize("rtx", [True, False])
def test_nack_is_answered_from_the_history(rtx: bool) -> None:
    stream = RtpStream("video", 90000)
    raw = FakeRaw()
    stream.start(_params(rtx), raw)  # type: ignore[arg-type]
    for n in range(5):
        stream.send([bytes([n]) * 100], n * 3000)
    lost = _parse(raw.rtp[2])
    stream.on_rtcp(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=0x11223344, lost=[lost["seq"]]))
    resent = _parse(raw.rtp[-1])
    assert len(raw.rtp) == 6 and stream.retransmits == 1
    if rtx:  # RFC 4588 §4: RTX payload type and SSRC, the original sequence number first
        assert (resent["pt"], resent["ssrc"], resent["ts"]) == (103, 0x55667788, lost["ts"])
        assert resent["payload"] == struct.pack("!H", lost["seq"]) + lost["payload"]
    else:
        assert {k: resent[k] for k in ("pt", "ssrc", "seq", "ts", "payload")} == \
            {k: lost[k] for k in ("pt", "ssrc", "seq", "ts", "payload")}
    assert not stream.retransmit((lost["seq"] + 100) & 0xFFFF)  # never sent: nothing to resend


def test_pli_asks_for_a_key_frame() -> None:
    asked: list[bool] = []
    stream = RtpStream("video", 90000, lambda: asked.append(True))
    stream.start(_params(), FakeRaw())  # type: ignore[arg-type]
    stream.on_rtcp(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=0x11223344))
    assert asked == [True]


def test_sender_report_maps_now_onto_the_last_frames_rtp_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(rtp_sender.time, "monotonic", lambda: clock[0])
    stream = RtpStream("audio", 48000)
    raw = FakeRaw()
    stream.start(_params(), raw)  # type: ignore[arg-type]
    stream.send([b"x" * 50], 960)
    sent_ts = _parse(raw.rtp[0])["ts"]
    clock[0] += 0.5  # half a second after that frame went out
    stream.send_sender_report()
    report, sdes = RtcpPacket.parse(raw.rtcp[0])
    assert isinstance(report, RtcpSrPacket) and report.ssrc == 0x11223344
    assert report.sender_info.rtp_timestamp == (sent_ts + 24000) & 0xFFFFFFFF
    assert (report.sender_info.packet_count, report.sender_info.octet_count) == (1, 50)
    assert sdes.chunks[0].items == [(1, b"relay-cname")]
