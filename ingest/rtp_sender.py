"""RTP out of the ingest relay without aiortc's sender loop (RFC 3550, RFC 6184, RFC 4588).

aiortc's ``RTCRtpSender`` reads a track through a coroutine per frame, makes an
``RtpPacket`` object per packet and sends it through three more coroutines; for a relay
that already holds encoded access units that was most of the ingest process's CPU.  Here
the relay's two senders are made raw endpoints (:func:`sfu.aiortc_private.install_forwarding_sender`,
as the SFU's own consumers are) and each :class:`RtpStream` builds packets itself and hands
them, SRTP-protected, to the ICE socket (:class:`sfu.aiortc_private.RawRtpSender`):

* :func:`packetize_h264`: an access unit's NAL units as RFC 6184 packetization-mode 1
  payloads — single NAL unit packets (§5.6), small neighbours aggregated in STAP-A (§5.7.1),
  large ones fragmented in FU-A (§5.8); at most :data:`PAYLOAD_MAX` bytes each.
* :meth:`RtpStream.send`: one frame's payloads, the marker bit on the last (RFC 6184 §5.1,
  RFC 6416 §6.1; RFC 7587 §4.1 leaves it 0 for Opus), the negotiated ``mid`` (RFC 8843 §15) and
  ``abs-send-time`` header extensions (RFC 8285 one-byte form).
* NACK (RFC 4585 §6.2.1) is answered from a ring of the last :data:`HISTORY` packets, as RTX
  (RFC 4588 §4: the original sequence number before the payload) when negotiated; PLI and
  FIR (RFC 4585 §6.3.1, RFC 5104 §4.3.1) call ``on_keyframe_request``.
* :meth:`RtpStream.sender_report`: an SR (RFC 3550 §6.4.1) mapping now onto the RTP clock
  of the last frame sent, which is what a receiver lines audio and video up with.

Frames sent before the peer connection is up wait (at most :data:`MAX_PENDING`, oldest
dropped and counted) and go out as soon as it is: the first key frame is not lost to ICE.
"""

from __future__ import annotations

import os
import struct
import time
from collections import deque
from collections.abc import Callable

from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

from sfu.aiortc_private import RawRtpSender, SendParameters
from sfu.rtp import abs_send_time_now, sender_elements

PAYLOAD_MAX = 1200
"""Bytes of RTP payload at most: with the header, extensions and SRTP's tag a packet stays
well under a 1,280-byte IPv6 minimum MTU path (aiortc's own packetizer uses the same)."""
HISTORY = 1024
"""Packets kept for retransmission: ~3 s of a 2.5 Mbit/s stream."""
MAX_PENDING = 300
"""Frames kept while the peer connection is not up yet (10 s of 30 fps video)."""
_HEADER = struct.Struct("!BBHII")
_STAP_A, _FU_A = 24, 28
_NTP_EPOCH = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


def packetize_h264(nalus: list[bytes], limit: int = PAYLOAD_MAX) -> list[bytes]:
    """One access unit's NAL units (no start codes) → RTP payloads of at most ``limit``
    bytes (RFC 6184 packetization-mode 1; see the module docstring).  Empty NAL units are
    skipped."""
    payloads: list[bytes] = []
    group: list[bytes] = []
    group_size = 1  # the STAP-A NAL header

    def flush() -> None:
        nonlocal group_size
        if len(group) == 1:
            payloads.append(group[0])
        elif group:
            # §5.7.1: F is the OR of the units' F bits, NRI the largest of theirs.
            f = max(n[0] & 0x80 for n in group)
            nri = max(n[0] & 0x60 for n in group)
            payloads.append(bytes((f | nri | _STAP_A,))
                            + b"".join(struct.pack("!H", len(n)) + n for n in group))
        group.clear()
        group_size = 1

    for nal in nalus:
        if not nal:
            continue
        if len(nal) > limit:
            flush()
            indicator = (nal[0] & 0xE0) | _FU_A  # §5.8: F and NRI of the unit, type 28
            nal_type = nal[0] & 0x1F
            body = memoryview(nal)[1:]
            step = limit - 2
            count = -(-len(body) // step)
            step = -(-len(body) // count)  # equal fragments, as libwebrtc cuts them
            for index in range(count):
                header = nal_type | (0x80 if index == 0 else 0) | (0x40 if index == count - 1 else 0)
                payloads.append(bytes((indicator, header)) + body[index * step:(index + 1) * step])
            continue
        if group_size + 2 + len(nal) > limit:
            flush()
        group.append(nal)
        group_size += 2 + len(nal)
    flush()
    return payloads


def _ntp_now() -> int:
    """Now on the NTP clock (RFC 3550 §4): 32.32 fixed-point seconds since 1900."""
    return int((time.time() + _NTP_EPOCH) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


class RtpStream:
    """One outgoing RTP stream of the relay (see the module docstring).

    :param kind: ``"video"`` or ``"audio"``.
    :param clock_rate: the RTP clock, Hz (90000 for video, 48000 for Opus).
    :param on_keyframe_request: called when the receiver asks for a key frame (PLI/FIR).
    :param marker: set the marker bit on each frame's last packet (default: video only).
    """

    def __init__(self, kind: str, clock_rate: int, on_keyframe_request: Callable[[], None] | None = None,
                 *, marker: bool | None = None) -> None:
        self.kind = kind
        self.clock_rate = clock_rate
        self._marker = kind == "video" if marker is None else marker
        self.on_keyframe_request = on_keyframe_request
        self._raw: RawRtpSender | None = None
        self._cname: bytes | None = None
        self._pt = 0
        self._ssrc = 0
        self._rtx_pt: int | None = None
        self._rtx_ssrc = 0
        self._mid_element = b""
        self._ast_element = b""
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._rtx_seq = int.from_bytes(os.urandom(2), "big")
        self._ts_origin = int.from_bytes(os.urandom(4), "big")
        self._history: list[tuple[int, int, int, bytes] | None] = [None] * HISTORY
        """Per slot: (seq, marker, timestamp, payload) of a packet sent."""
        self._pending: deque[tuple[list[bytes], int]] = deque()
        self._last_ts: int | None = None
        self._last_sent = 0.0
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmits = 0
        self.dropped = 0
        """Frames dropped while waiting for the peer connection (:data:`MAX_PENDING`)."""

    @property
    def started(self) -> bool:
        return self._raw is not None

    @property
    def ssrc(self) -> int | None:
        """The negotiated SSRC (None before :meth:`start`)."""
        return self._ssrc if self._raw is not None else None

    @property
    def last_seq(self) -> int:
        """The sequence number of the last packet sent (16 bits)."""
        return (self._seq - 1) & 0xFFFF

    def send_rtcp(self, data: bytes) -> None:
        """An RTCP packet of this stream's sender, SRTCP-protected (dropped before :meth:`start`)."""
        if self._raw is not None:
            self._raw.send_rtcp(data)

    def start(self, params: SendParameters, raw: RawRtpSender) -> None:
        """The peer connection is up (aiortc started the sender): send what waited."""
        self._pt = params.codec.payloadType or 0
        self._ssrc = params.ssrc
        self._rtx_pt = params.rtx_payload_type
        self._rtx_ssrc = params.rtx_ssrc
        self._cname = params.cname.encode() if params.cname else None
        self._mid_element, self._ast_element = sender_elements(params.extensions, params.mid)
        self._raw = raw
        while self._pending:
            self.send(*self._pending.popleft())

    def send(self, payloads: list[bytes], timestamp: int) -> None:
        """One frame's payloads at ``timestamp`` (its RTP clock, from any origin; wraps)."""
        if self._raw is None:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((payloads, timestamp))
            return
        ts = (self._ts_origin + timestamp) & 0xFFFFFFFF
        last = len(payloads) - 1
        packets = []
        for index, payload in enumerate(payloads):
            seq = self._seq
            self._seq = (seq + 1) & 0xFFFF
            marker = 1 if index == last and self._marker else 0
            self._history[seq % HISTORY] = (seq, marker, ts, payload)
            packets.append(self._packet(seq, marker, ts, payload, self._pt, self._ssrc))
            self.octets_sent += len(payload)
        self.packets_sent += len(packets)
        if len(packets) == 1:
            self._raw.send_rtp(packets[0])
        else:
            self._raw.send_rtp_many(packets)  # a frame's fragments: one system call (UDP GSO)
        self._last_ts = ts
        self._last_sent = time.monotonic()

    def _packet(self, seq: int, marker: int, ts: int, payload: bytes, pt: int, ssrc: int) -> bytes:
        """The RTP packet: header, the one-byte header extensions, ``payload``."""
        elements = self._mid_element + (self._ast_element + abs_send_time_now() if self._ast_element else b"")
        if elements:
            size = len(elements)
            pad = -size % 4
            header = _HEADER.pack(0x90, (marker << 7) | pt, seq, ts, ssrc) \
                + struct.pack("!HH", 0xBEDE, (size + pad) // 4) + elements + bytes(pad)
        else:
            header = _HEADER.pack(0x80, (marker << 7) | pt, seq, ts, ssrc)
        return header + payload

    # ------------------------------------------------------------------ RTCP
    def on_rtcp(self, packet: AnyRtcpPacket) -> None:
        """RTCP from the service for this stream's SSRC: NACK, PLI/FIR (the rest is ignored)."""
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                self.retransmit(seq)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            if self.on_keyframe_request is not None:
                self.on_keyframe_request()

    def retransmit(self, seq: int) -> bool:
        """Send packet ``seq`` again (RTX when negotiated); ``False`` when it is no longer kept."""
        entry = self._history[seq % HISTORY]
        if entry is None or entry[0] != seq or self._raw is None:
            return False
        _, marker, ts, payload = entry
        self.retransmits += 1
        if self._rtx_pt is not None:
            rtx_seq = self._rtx_seq
            self._rtx_seq = (rtx_seq + 1) & 0xFFFF
            self._raw.send_rtp(self._packet(rtx_seq, marker, ts, struct.pack("!H", seq) + payload,
                                            self._rtx_pt, self._rtx_ssrc))
        else:
            self._raw.send_rtp(self._packet(seq, marker, ts, payload, self._pt, self._ssrc))
        return True

    def sender_report(self) -> bytes | None:
        """SR + SDES (CNAME) for this stream, or ``None`` before its first frame went out."""
        if self._raw is None or self._last_ts is None:
            return None
        elapsed = time.monotonic() - self._last_sent
        rtp = (self._last_ts + int(elapsed * self.clock_rate)) & 0xFFFFFFFF
        report = bytes(RtcpSrPacket(ssrc=self._ssrc, sender_info=RtcpSenderInfo(
            ntp_timestamp=_ntp_now(), rtp_timestamp=rtp,
            packet_count=self.packets_sent & 0xFFFFFFFF, octet_count=self.octets_sent & 0xFFFFFFFF)))
        if self._cname:
            report += bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, self._cname)])]))
        return report

    def send_sender_report(self) -> None:
        report = self.sender_report()
        if report is not None:
            self.send_rtcp(report)
