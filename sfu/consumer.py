"""Consumer: one subscriber's copy of a Producer (LiveKit ``DownTrack``).

Per forwarded packet a consumer rewrites the RTP header — SSRC, sequence
number, timestamp (via its :class:`Forwarder`), payload type, header-extension
ids — and sends it with one SRTP protect and one ``sendto``.  It also:

* gates on a key frame when it starts or its producer changes;
* keeps a sequencer ring (output seq → shared packet) to answer NACKs
  (RFC 4585 §6.2.1), as RTX (RFC 4588) when negotiated;
* turns PLI/FIR from the viewer into a throttled key-frame request upstream;
* emits an RTCP sender report (RFC 3550 §6.4.1) per second mapped from the
  publisher's own reports, so players can lip-sync audio and video.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from typing import TYPE_CHECKING

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from . import aiortc_private
from .forwarder import Forwarder
from .rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID

if TYPE_CHECKING:
    from .producer import MediaPacket, Producer

logger = logging.getLogger(__name__)
_ids = itertools.count(1)
_HEADER = struct.Struct("!BBHII")


class Consumer:
    """Forwards one producer's packets to one subscriber transport.

    :param kind: ``"audio"`` or ``"video"``.
    :param clock_rate: codec clock rate in Hz.
    """

    HISTORY = 1024  # packets kept per consumer for NACK (~3 s of 1.5 Mbps video)

    def __init__(self, kind: str, clock_rate: int, subscriber_id: str) -> None:
        self.id = f"c{next(_ids)}"
        self.kind = kind
        self.subscriber_id = subscriber_id
        self.producer: Producer | None = None
        self.forwarder = Forwarder(clock_rate, frame_ticks=3000 if kind == "video" else 960)
        self.clock_rate = clock_rate
        self.codec: RTCRtpCodecParameters | None = None  # negotiated with the viewer
        self.params: aiortc_private.SendParameters | None = None
        self.raw: aiortc_private.RawRtpSender | None = None
        self.closed = False
        # counters
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmits = 0
        self.nacks_received = 0
        self.plis_received = 0
        self.dropped_waiting = 0
        self.remb_bps: int | None = None
        self.fraction_lost = 0
        self.rtt_s: float | None = None
        self._history: list[tuple[int, int, MediaPacket] | None] = [None] * self.HISTORY
        self._rtx_seq = 0
        self._waiting_since = time.monotonic()
        self._last_sr_mid = 0
        self._last_sr_time = 0.0
        # header template
        self._pt = 0
        self._ssrc = 0
        self._ext_static = b""
        self._ast_element = b""  # one-byte-header element prefix for abs-send-time
        self._level_id = 0

    # ------------------------------------------------------------ lifecycle
    def on_sender_started(self, params: aiortc_private.SendParameters, raw: aiortc_private.RawRtpSender) -> None:
        self.params = params
        self.raw = raw
        self._pt = params.codec.payloadType or 0  # always set once negotiated
        self._ssrc = params.ssrc
        ext = params.extensions
        mid_id = ext.get(URI_MID, 0)
        if mid_id and params.mid and 1 <= mid_id <= 14:
            mid = params.mid.encode()
            self._ext_static = bytes([(mid_id << 4) | (len(mid) - 1)]) + mid
        ast_id = ext.get(URI_ABS_SEND_TIME, 0)
        self._ast_element = bytes([(ast_id << 4) | 2]) if 1 <= ast_id <= 14 else b""
        self._level_id = ext.get(URI_AUDIO_LEVEL, 0) if 1 <= ext.get(URI_AUDIO_LEVEL, 0) <= 14 else 0
        self._rtx_seq = self.forwarder.last_seq_out ^ 0x5A5A
        if self.producer is not None:
            self.producer.request_keyframe()

    def attach(self, producer: Producer) -> None:
        """Start (or resume) forwarding ``producer``; gates on its next key frame."""
        if self.producer is producer:
            return
        if self.producer is not None:
            self.producer.remove_consumer(self)
        self.forwarder.switch_source()
        self.producer = producer
        self._waiting_since = time.monotonic()
        producer.add_consumer(self)
        if self.raw is not None:
            # Not yet connected: on_sender_started asks once packets can flow;
            # a key frame now would arrive before it and be wasted.
            producer.request_keyframe()

    def detach(self) -> None:
        """Producer gone (publisher left): keep the output space, wait for the next one."""
        if self.producer is not None:
            self.producer.remove_consumer(self)
            self.producer = None
        self.forwarder.switch_source()

    def close(self) -> None:
        self.detach()
        self.closed = True
        self.raw = None
        self._history = []

    @property
    def waiting_for_keyframe(self) -> bool:
        return self.producer is not None and not self.forwarder.started

    def needs_keyframe_retry(self, now: float, after_s: float = 1.0) -> bool:
        """True when still gated on a key frame ``after_s`` seconds after asking."""
        if self.kind != "video" or not self.waiting_for_keyframe or self.raw is None:
            return False
        if now - self._waiting_since >= after_s:
            self._waiting_since = now
            return True
        return False

    # ------------------------------------------------------------ fast path
    def _extension(self, media: MediaPacket) -> bytes:
        """The whole RFC 8285 one-byte-header block (0xBEDE, length, elements, padding)."""
        layout = (self._ext_static, self._ast_element, self._level_id)
        block = media.extensions.get(layout)
        if block is None:
            body = self._ext_static
            if self._ast_element:
                body += self._ast_element + media.abs_send_time
            if self._level_id and media.audio_level is not None:
                body += bytes((self._level_id << 4, media.audio_level))
            if body:
                body += b"\x00" * (-len(body) % 4)
                block = struct.pack("!HH", 0xBEDE, len(body) >> 2) + body
            else:
                block = b""
            media.extensions[layout] = block
        return block

    def forward(self, media: MediaPacket) -> None:
        """Rewrite and send one packet (the hot path; no allocation beyond the datagram)."""
        raw = self.raw
        if raw is None:
            return
        fwd = self.forwarder
        if not fwd.started:
            if not media.keyframe:
                self.dropped_waiting += 1
                return
            fwd.start(media.seq, media.timestamp)
        mapped = fwd.munge(media.seq, media.timestamp)
        if mapped is None:
            return
        seq, ts = mapped
        self._history[seq % self.HISTORY] = (seq, ts, media)
        self._send(seq, ts, media, self._pt, self._ssrc, b"")

    def _send(self, seq: int, ts: int, media: MediaPacket, pt: int, ssrc: int, prefix: bytes) -> None:
        raw = self.raw
        if raw is None:
            return
        block = self._extension(media)
        header = _HEADER.pack(0x90 if block else 0x80, (media.marker << 7) | pt, seq, ts, ssrc)
        if raw.send_rtp(b"".join((header, block, prefix, media.payload))):
            self.packets_sent += 1
            self.octets_sent += len(media.payload)

    # ----------------------------------------------------------------- RTCP
    def on_rtcp(self, packet: AnyRtcpPacket) -> None:
        """RTCP from the viewer for this consumer's SSRC."""
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.nacks_received += 1
            for seq in packet.lost:
                self.retransmit(seq)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.plis_received += 1
            if self.producer is not None:
                self.producer.request_keyframe()
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                self.remb_bps, _ = unpack_remb_fci(packet.fci)
            except ValueError:
                pass
        elif isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            for report in packet.reports:
                if report.ssrc != self._ssrc:
                    continue
                self.fraction_lost = report.fraction_lost
                if report.lsr and report.lsr == self._last_sr_mid:
                    rtt = time.time() - self._last_sr_time - report.dlsr / 65536
                    if rtt >= 0:
                        self.rtt_s = rtt

    def retransmit(self, seq: int) -> bool:
        """Resend output packet ``seq`` from the sequencer ring; RTX when negotiated."""
        if not self._history:
            return False
        entry = self._history[seq % self.HISTORY]
        if entry is None or entry[0] != seq or self.params is None:
            return False
        _, ts, media = entry
        self.retransmits += 1
        rtx_pt = self.params.rtx_payload_type
        if rtx_pt is not None:
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            self._send(self._rtx_seq, ts, media, rtx_pt, self.params.rtx_ssrc, struct.pack("!H", seq))
        else:
            self._send(seq, ts, media, self._pt, self._ssrc, b"")
        return True

    def sender_report(self) -> bytes | None:
        """SR + SDES for this consumer, mapped from the publisher's clock, or ``None``."""
        producer = self.producer
        if producer is None or self.params is None or not self.forwarder.started:
            return None
        clock = producer.sender_clock
        if clock is None:
            return None
        elapsed = time.monotonic() - clock.received
        ntp = (clock.ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF
        rtp = (clock.rtp + int(elapsed * self.clock_rate) + self.forwarder.ts_offset) & 0xFFFFFFFF
        self._last_sr_mid = (ntp >> 16) & 0xFFFFFFFF
        self._last_sr_time = time.time()
        sr = RtcpSrPacket(
            ssrc=self._ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp,
                packet_count=self.packets_sent & 0xFFFFFFFF,
                octet_count=self.octets_sent & 0xFFFFFFFF,
            ),
        )
        data = bytes(sr)
        if self.params.cname:
            sdes = RtcpSdesPacket(
                chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, self.params.cname.encode())])]
            )
            data += bytes(sdes)
        return data

    def send_sender_report(self) -> None:
        data = self.sender_report()
        if data is not None and self.raw is not None:
            self.raw.send_rtcp(data)

    def stats(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "packets_sent": self.packets_sent,
            "retransmits": self.retransmits,
            "nacks_received": self.nacks_received,
            "plis_received": self.plis_received,
            "fraction_lost": self.fraction_lost,
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 1),
            "remb_bps": self.remb_bps,
        }
