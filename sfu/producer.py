"""Producer: one published track, fanned out packet by packet to its Consumers.

The producer sees each RTP packet once (already SRTP-unprotected and parsed by
aiortc), wraps it in a :class:`MediaPacket` that every consumer shares, and
calls :meth:`Consumer.forward` for each.  No media is decoded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Protocol

from aiortc import RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.rtp import AnyRtcpPacket, RtcpByePacket, RtcpSrPacket, RtpPacket

from . import aiortc_private
from .ingest_health import TrackHealth
from .keyframe import KeyFrameRequester
from .rtp import abs_send_time_now, is_keyframe_start

logger = logging.getLogger(__name__)
_ids = itertools.count(1)


class MediaPacket:
    """One publisher RTP packet as shared by all consumers.

    ``timestamp`` is in codec clock ticks (90 kHz video, 48 kHz Opus);
    ``audio_level`` is the RFC 6464 level byte (V bit + -dBov) or ``None``.
    """

    __slots__ = (
        "seq", "timestamp", "marker", "payload", "keyframe", "audio_level", "abs_send_time", "extensions"
    )

    def __init__(
        self,
        seq: int,
        timestamp: int,
        marker: int,
        payload: bytes,
        keyframe: bool,
        audio_level: int | None,
    ) -> None:
        self.seq = seq
        self.timestamp = timestamp
        self.marker = marker
        self.payload = payload
        self.keyframe = keyframe
        self.audio_level = audio_level
        # abs-send-time (6.18 fixed-point NTP seconds, 3 bytes), stamped once for
        # all consumers: they send within microseconds of each other.
        self.abs_send_time = abs_send_time_now()
        # RFC 8285 blocks already built for this packet, by consumer extension layout:
        # consumers that negotiated the same ids share one block.
        self.extensions: dict[tuple[bytes, bytes, int], bytes] = {}


class PacketSink(Protocol):
    """Anything a Producer fans out to: a :class:`~sfu.consumer.Consumer`, or an
    in-process tap such as the HLS bridge's ``ProducerTap``.  ``forward`` runs on
    the forwarding path and must not block."""

    def forward(self, media: MediaPacket) -> None: ...


class SenderClock:
    """The publisher's last sender report: NTP ↔ RTP mapping (RFC 3550 §6.4.1)."""

    __slots__ = ("ntp", "rtp", "received")

    def __init__(self, ntp: int, rtp: int, received: float) -> None:
        self.ntp = ntp  # 64-bit NTP timestamp
        self.rtp = rtp  # RTP timestamp, codec ticks
        self.received = received  # time.monotonic() when it arrived


class Producer:
    """A published audio or video track.

    :param kind: ``"audio"`` or ``"video"``.
    :param codec: the single codec negotiated with the publisher (publisher's PT).
    """

    def __init__(
        self, kind: str, codec: RTCRtpCodecParameters, receiver: RTCRtpReceiver, publisher_id: str
    ) -> None:
        self.id = f"p{next(_ids)}"
        self.kind = kind
        self.codec = codec
        self.publisher_id = publisher_id
        self.consumers: list[PacketSink] = []
        self.ssrc: int | None = None
        self.sender_clock: SenderClock | None = None
        self.keyframes = 0
        self.closed = False
        self._receiver = receiver
        self._last_timestamp: int | None = None
        self._mime = codec.mimeType
        self.keyframe_requester = KeyFrameRequester(self._send_pli)
        self.health = TrackHealth(
            kind, codec.mimeType, codec.clockRate,
            statistics=lambda: None if self.ssrc is None else aiortc_private.receive_statistics(
                receiver, self.ssrc),
            round_trip_time=lambda: aiortc_private.ice_round_trip_time(receiver))
        """Ingest counters (:mod:`sfu.ingest_health`)."""
        aiortc_private.install_forwarding_receiver(receiver, self.on_rtp, self.on_rtcp)

    @property
    def packets(self) -> int:
        """RTP packets received from the publisher (retransmissions included)."""
        return self.health.packets

    @property
    def bytes(self) -> int:
        """RTP payload bytes received from the publisher."""
        return self.health.bytes

    # ------------------------------------------------------------- media in
    def on_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if self.closed or packet.payload_type != self.codec.payloadType:
            return
        self.ssrc = packet.ssrc
        frame_start = packet.timestamp != self._last_timestamp
        self._last_timestamp = packet.timestamp
        payload = packet.payload
        keyframe = frame_start and is_keyframe_start(self._mime, payload)
        if keyframe and self.kind == "video":
            self.keyframes += 1
            self.health.on_keyframe(packet.timestamp, payload)
        level = packet.extensions.audio_level
        media = MediaPacket(
            packet.sequence_number,
            packet.timestamp,
            packet.marker,
            payload,
            keyframe,
            None if level is None else ((0x80 if level[0] else 0) | (level[1] & 0x7F)),
        )
        self.health.on_packet(packet.sequence_number, packet.marker, len(payload))
        for consumer in self.consumers:
            consumer.forward(media)

    def on_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            self.sender_clock = SenderClock(info.ntp_timestamp, info.rtp_timestamp, time.monotonic())
        elif isinstance(packet, RtcpByePacket):
            logger.debug("producer %s: RTCP BYE", self.id)

    # ------------------------------------------------------------ consumers
    def add_consumer(self, consumer: PacketSink) -> None:
        if consumer not in self.consumers:
            # Copy-on-write so fan-out iteration never sees a mutation.
            self.consumers = [*self.consumers, consumer]

    def remove_consumer(self, consumer: PacketSink) -> None:
        if consumer in self.consumers:
            self.consumers = [c for c in self.consumers if c is not consumer]

    def request_keyframe(self) -> None:
        """Throttled PLI upstream (video only)."""
        if self.kind == "video" and not self.closed:
            self.keyframe_requester.request()

    def _send_pli(self) -> None:
        if self.ssrc is None or self.closed:
            return
        if not aiortc_private.receiver_has_started(self._receiver):
            return
        task = asyncio.ensure_future(aiortc_private.send_pli(self._receiver, self.ssrc))
        task.add_done_callback(_log_task_error)

    def close(self) -> None:
        self.closed = True
        self.keyframe_requester.close()
        self.consumers = []


def _log_task_error(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, ConnectionError):
            logger.warning("RTCP send failed: %r", exc)
