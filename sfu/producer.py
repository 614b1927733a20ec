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
from collections.abc import Callable
from typing import Protocol

from aiortc import RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.rtp import AnyRtcpPacket, RtcpByePacket, RtcpSrPacket, RtpPacket

from . import aiortc_private, pause_resume
from .ingest_health import TrackHealth
from .keyframe import KeyFrameRequester
from .pause_resume import PauseMessage, StreamPauser
from .picture_size import keyframe_picture_size
from .rtp import abs_send_time_now, is_keyframe_start
from .vp8 import temporal_info

logger = logging.getLogger(__name__)
_ids = itertools.count(1)


class MediaPacket:
    """One publisher RTP packet as shared by all consumers.

    ``timestamp`` is in codec clock ticks (90 kHz video, 48 kHz Opus);
    ``audio_level`` is the RFC 6464 level byte (V bit + -dBov) or ``None``.
    ``layer`` is the :class:`Layer` (simulcast stream) it arrived on and ``spatial`` that
    layer's index then (0 = lowest resolution; 0 without simulcast); ``tid`` its temporal
    layer (VP8 TID, RFC 7741 §4.2; H.264: 1 for a non-reference picture, ``nal_ref_idc`` 0,
    RFC 6184 §5.3; else 0) and ``layer_sync`` the VP8 Y bit (the frame references only
    temporal layer 0; ``True`` when unknown); ``frame_start`` the first packet of a frame.
    """

    __slots__ = (
        "seq", "timestamp", "marker", "payload", "keyframe", "audio_level", "abs_send_time", "extensions",
        "layer", "spatial", "tid", "layer_sync", "frame_start", "rewrites",
    )

    def __init__(
        self,
        seq: int,
        timestamp: int,
        marker: int,
        payload: bytes,
        keyframe: bool,
        audio_level: int | None,
        layer: Layer | None = None,
        tid: int = 0,
        layer_sync: bool = True,
        frame_start: bool = True,
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
        self.extensions: dict[tuple[bytes, bytes, int, int], tuple[bytes, bytes, int]] = {}
        self.layer = layer
        self.spatial = 0 if layer is None else layer.spatial
        self.tid = tid
        self.layer_sync = layer_sync
        self.frame_start = frame_start
        # payloads rewritten for consumers (VP8 picture id munging), by munger key
        self.rewrites: dict[object, bytes] | None = None


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


MAX_TEMPORAL_LAYERS = 4
ACTIVE_WITHIN_S = 1.0
"""A layer that sent nothing for this long is inactive (the publisher paused it: libwebrtc
stops its top simulcast streams when its own uplink estimate is low)."""
NO_KEYFRAME_PLI_S = 1.0
"""A video stream that has sent this long (s) without a key frame the SFU saw gets a PLI
(and again every as long), whether or not anyone watches: ingest health, the LL-HLS bridge
and the first viewer all need one."""


class Layer:
    """One RTP stream of a producer: the only one without simulcast, else one simulcast
    stream (RFC 8853) named by its RtpStreamId (``rid``).

    :ivar spatial: rank among the producer's layers by picture size (0 = smallest), from its
        key frames' headers; by bitrate until a key frame told its size.
    :ivar sinks: who gets its packets (consumers on this layer, taps on the top layer).
    :ivar bitrates_bps: measured bps per temporal layer (index = tid), over ~1 s.
    """

    __slots__ = (
        "rid", "ssrc", "spatial", "sinks", "keyframe_requester", "width", "height", "octets",
        "bitrates_bps", "last_timestamp", "last_packet_s", "sender_clock", "keyframes",
        "keyframe_timestamp", "keyless_since", "on_sink", "_sampled_octets", "_sampled_at",
    )

    def __init__(self, rid: str | None, send_pli: Callable[[Layer], None]) -> None:
        self.rid = rid
        self.ssrc: int | None = None
        self.spatial = 0
        self.sinks: list[PacketSink] = []
        self.keyframe_requester = KeyFrameRequester(lambda: send_pli(self))
        self.width: int | None = None
        self.height: int | None = None
        self.octets = [0] * MAX_TEMPORAL_LAYERS  # payload bytes per temporal layer (tid)
        self.bitrates_bps: tuple[int, ...] = (0,)
        self.last_timestamp: int | None = None
        self.last_packet_s = 0.0
        self.sender_clock: SenderClock | None = None
        self.keyframes = 0
        self.keyframe_timestamp: int | None = None  # RTP timestamp of the last key frame counted
        self.keyless_since: float | None = None  # packets flowing, no key frame ever seen, since
        self.on_sink: Callable[[], None] | None = None  # called when a sink is added
        self._sampled_octets = [0] * MAX_TEMPORAL_LAYERS
        self._sampled_at = time.monotonic()

    @property
    def active(self) -> bool:
        return time.monotonic() - self.last_packet_s < ACTIVE_WITHIN_S

    def request_keyframe(self) -> None:
        """Throttled PLI upstream for this stream's SSRC (RFC 4585 §6.3.1)."""
        self.keyframe_requester.request()

    def add_sink(self, sink: PacketSink) -> None:
        if sink not in self.sinks:
            self.sinks = [*self.sinks, sink]  # copy-on-write: fan-out never sees a mutation
            if self.on_sink is not None:
                self.on_sink()

    def remove_sink(self, sink: PacketSink) -> None:
        if sink in self.sinks:
            self.sinks = [s for s in self.sinks if s is not sink]

    def sample(self, now: float) -> None:
        """Turn the byte counters into :attr:`bitrates_bps` (EWMA over ~1 s; the tick's job)."""
        elapsed = now - self._sampled_at
        if elapsed < 0.2:
            return
        top = max((t for t in range(MAX_TEMPORAL_LAYERS) if self.octets[t]), default=0)
        rates = []
        old = self.bitrates_bps
        for tid in range(top + 1):
            bps = (self.octets[tid] - self._sampled_octets[tid]) * 8 / elapsed
            previous = old[tid] if tid < len(old) else bps
            rates.append(0.5 * previous + 0.5 * bps)
        self._sampled_octets = list(self.octets)
        self._sampled_at = now
        self.bitrates_bps = tuple(int(r) for r in rates)

    def close(self) -> None:
        self.keyframe_requester.close()
        self.sinks = []


class Producer:
    """A published audio or video track, with one :class:`Layer` per simulcast stream.

    Packets fan out to the sinks of the layer they arrived on.  A sink added with
    :meth:`add_consumer` (the LL-HLS bridge's tap, a node pipe, a non-adaptive consumer)
    gets the top layer — the largest active one — and follows it when it changes; adaptive
    consumers pick their layer themselves (:meth:`Layer.add_sink`).

    :param kind: ``"audio"`` or ``"video"``.
    :param codec: the single codec negotiated with the publisher (publisher's PT).
    :param rids: the simulcast streams' RtpStreamIds (RFC 8851) when the publisher sends
        simulcast, else ``None``.
    :param pausable: the publisher negotiated RTP stream pause (RFC 7728): the stream is
        paused while it has no consumer (:class:`~sfu.pause_resume.StreamPauser`).
    """

    def __init__(
        self, kind: str, codec: RTCRtpCodecParameters, receiver: RTCRtpReceiver, publisher_id: str,
        rids: tuple[str, ...] | None = None, *, pausable: bool = False,
    ) -> None:
        self.id = f"p{next(_ids)}"
        self.kind = kind
        self.codec = codec
        self.publisher_id = publisher_id
        self.closed = False
        self._receiver = receiver
        self._mime = codec.mimeType.lower()
        self._vp8 = self._mime == "video/vp8"
        self._h264 = self._mime == "video/h264"
        self.simulcast = bool(rids)
        self.layers: list[Layer] = [Layer(rid, self._send_pli) for rid in (rids or (None,))]
        """The layers by spatial index (0 = smallest)."""
        self._by_rid = {layer.rid: layer for layer in self.layers if layer.rid is not None}
        self._by_ssrc: dict[int, Layer] = {}
        self._single = None if rids else self.layers[0]
        self.top = self.layers[-1]
        """The layer taps get: the largest active one."""
        self._taps: list[PacketSink] = []
        self.health = TrackHealth(
            kind, codec.mimeType, codec.clockRate,
            statistics=lambda: None if self.ssrc is None else aiortc_private.receive_statistics(
                receiver, self.ssrc),
            round_trip_time=lambda: aiortc_private.ice_round_trip_time(receiver))
        """Ingest counters of the top layer (:mod:`sfu.ingest_health`)."""
        self.pauser = StreamPauser(self._send_pause_resume) if pausable and not rids else None
        """Pauses the stream while no one consumes it (RFC 7728); None: never paused."""
        if self.pauser is not None:
            self.top.on_sink = lambda: self.pauser.wanted(self.ssrc) if self.pauser is not None else None
        aiortc_private.install_forwarding_receiver(receiver, self.on_rtp, self.on_rtcp)

    # ------------------------------------------------------------ properties
    @property
    def ssrc(self) -> int | None:
        """The top layer's SSRC (``None`` before its first packet)."""
        return self.top.ssrc

    @property
    def sender_clock(self) -> SenderClock | None:
        return self.top.sender_clock

    @property
    def keyframes(self) -> int:
        return sum(layer.keyframes for layer in self.layers)

    @property
    def keyframe_requester(self) -> KeyFrameRequester:
        """The top layer's PLI throttle."""
        return self.top.keyframe_requester

    @property
    def consumers(self) -> list[PacketSink]:
        """Every sink of every layer."""
        return [sink for layer in self.layers for sink in layer.sinks]

    @property
    def packets(self) -> int:
        """RTP packets received from the publisher on the top layer (retransmissions included)."""
        return self.health.packets

    @property
    def bytes(self) -> int:
        """RTP payload bytes received from the publisher on the top layer."""
        return self.health.bytes

    # ------------------------------------------------------------- media in
    def _layer_of(self, packet: RtpPacket) -> Layer | None:
        layer = self._by_ssrc.get(packet.ssrc)
        if layer is None:
            rid = packet.extensions.rtp_stream_id
            layer = self._by_rid.get(rid) if rid is not None else None
            if layer is None:
                return None
            if layer.ssrc is not None:
                self._by_ssrc.pop(layer.ssrc, None)  # the stream restarted on a new SSRC
            layer.ssrc = packet.ssrc
            self._by_ssrc[packet.ssrc] = layer
        return layer

    def on_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if self.closed or packet.payload_type != self.codec.payloadType:
            return
        layer = self._single
        if layer is None:
            layer = self._layer_of(packet)
            if layer is None:
                return
        elif layer.ssrc != packet.ssrc:
            layer.ssrc = packet.ssrc
        layer.last_packet_s = time.monotonic()
        frame_start = packet.timestamp != layer.last_timestamp
        layer.last_timestamp = packet.timestamp
        payload = packet.payload
        tid = 0
        sync = True
        if self._vp8:
            tid, sync = temporal_info(payload)
        elif self._h264 and payload and not payload[0] & 0x60:
            tid = 1  # nal_ref_idc 0: no other picture references this one
        keyframe = frame_start and is_keyframe_start(self._mime, payload)
        if self.kind == "video":
            if keyframe:
                self._on_keyframe(layer, packet.timestamp, payload)
            elif (not frame_start and packet.timestamp != layer.keyframe_timestamp
                  and is_keyframe_start(self._mime, payload)):
                # A key frame's first packet that came after others of its frame (lost, then
                # retransmitted): the key frame is counted and measured, but consumers do not
                # start on it — they have dropped the rest of that frame while they waited.
                self._on_keyframe(layer, packet.timestamp, payload)
        level = packet.extensions.audio_level
        media = MediaPacket(
            packet.sequence_number,
            packet.timestamp,
            packet.marker,
            payload,
            keyframe,
            None if level is None else ((0x80 if level[0] else 0) | (level[1] & 0x7F)),
            layer,
            tid,
            sync,
            frame_start,
        )
        layer.octets[tid & 3] += len(payload)
        if layer is self.top:
            self.health.on_packet(packet.sequence_number, packet.marker, len(payload))
        for consumer in layer.sinks:
            consumer.forward(media)

    def _on_keyframe(self, layer: Layer, timestamp: int, payload: bytes) -> None:
        layer.keyframes += 1
        layer.keyframe_timestamp = timestamp
        if layer is self.top:
            self.health.on_keyframe(timestamp, payload)
        if self.simulcast:
            size = keyframe_picture_size(self.codec.mimeType, payload)
            if size is not None and (size[0], size[1]) != (layer.width, layer.height):
                layer.width, layer.height = size[0], size[1]
                self._rank()

    def _rank(self) -> None:
        """Order the layers by picture size (then bitrate) and move taps to the new top."""
        self.layers.sort(key=lambda layer: ((layer.width or 0) * (layer.height or 0),
                                            sum(layer.bitrates_bps)))
        for index, layer in enumerate(self.layers):
            layer.spatial = index
        self._retop()

    def _retop(self) -> None:
        active = [layer for layer in self.layers if layer.active]
        top = active[-1] if active else self.layers[-1]
        if top is self.top:
            return
        old, self.top = self.top, top
        for tap in self._taps:
            old.remove_sink(tap)
            top.add_sink(tap)
        if self._taps:
            top.request_keyframe()

    def on_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            layer = self._single or self._by_ssrc.get(packet.ssrc)
            if layer is not None:
                layer.sender_clock = SenderClock(info.ntp_timestamp, info.rtp_timestamp, time.monotonic())
        elif isinstance(packet, RtcpByePacket):
            logger.debug("producer %s: RTCP BYE", self.id)

    def sample(self) -> None:
        """Twice a second (the room's tick): layer bitrates, the top layer, ingest counters;
        a PLI for a video stream that has sent for :data:`NO_KEYFRAME_PLI_S` without a key
        frame the SFU saw (its first one lost before anything could NACK it: a receiver's
        NACKs start at the first packet it got)."""
        now = time.monotonic()
        for layer in self.layers:
            layer.sample(now)
            if self.kind == "video" and not layer.keyframes and layer.active:
                if layer.keyless_since is None:
                    layer.keyless_since = now
                elif now - layer.keyless_since >= NO_KEYFRAME_PLI_S:
                    layer.keyless_since = now
                    layer.request_keyframe()
        if self.pauser is not None:
            self.pauser.tick(self.ssrc, bool(self.top.sinks), self.top.last_packet_s)
            self.health.paused = self.pauser.paused
        if self.simulcast:
            if any(layer.width is None for layer in self.layers):
                self._rank()  # no size yet for some: bitrate decides meanwhile
            else:
                self._retop()
        self.health.sample()

    # ------------------------------------------------------------ consumers
    def add_consumer(self, consumer: PacketSink) -> None:
        """Give ``consumer`` the top layer (and the next top layer when it changes)."""
        if consumer not in self._taps:
            self._taps = [*self._taps, consumer]
            self.top.add_sink(consumer)

    def remove_consumer(self, consumer: PacketSink) -> None:
        """Remove ``consumer`` from every layer."""
        self._taps = [c for c in self._taps if c is not consumer]
        for layer in self.layers:
            layer.remove_sink(consumer)

    def request_keyframe(self) -> None:
        """Throttled PLI upstream for the top layer (video only)."""
        if self.kind == "video" and not self.closed:
            self.top.request_keyframe()

    def _send_pli(self, layer: Layer) -> None:
        if layer.ssrc is None or self.closed:
            return
        if not aiortc_private.receiver_has_started(self._receiver):
            return
        task = asyncio.ensure_future(aiortc_private.send_pli(self._receiver, layer.ssrc))
        task.add_done_callback(_log_task_error)

    def _send_pause_resume(self, message: PauseMessage) -> None:
        """One PAUSE or RESUME (RFC 7728 §8) upstream to the publisher."""
        if self.closed:
            return
        sending = aiortc_private.send_receiver_rtcp(
            self._receiver, lambda sender_ssrc: pause_resume.build(sender_ssrc, [message]))
        if sending is not None:
            task = asyncio.ensure_future(sending)
            task.add_done_callback(_log_task_error)
        logger.info("producer %s: %s sent for its %s stream", self.id,
                    "PAUSE" if message.type == pause_resume.PAUSE else "RESUME", self.kind)

    def close(self) -> None:
        self.closed = True
        for layer in self.layers:
            layer.close()
        self._taps = []


def _log_task_error(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, ConnectionError):
            logger.warning("RTCP send failed: %r", exc)
