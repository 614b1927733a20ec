"""Direct consumers: the SFU's public API for in-process consumers that are not peers.

mediasoup gives such consumers a DirectTransport; this is the same idea for relaycast's
Worker.  A direct consumer (the LL-HLS bridge) can

* list the node's rooms (:meth:`DirectTransport.rooms`, :class:`RoomInfo`: data only),
* tap one track of a live room (:meth:`DirectTransport.tap` → :class:`TrackTap`): every
  RTP packet of the publisher's track is handed to a :class:`~sfu.producer.PacketSink`
  (``sink.forward(media)``, on the forwarding path: it must not block), and key frames can
  be asked for (throttled PLI upstream, RFC 4585 §6.3.1),
* hold a room open (:meth:`DirectTransport.hold`): an edge node keeps the node-to-node pipe
  that feeds the room while a holder needs it, as it does while viewers are connected,
* add a section to the node's load reports (:meth:`DirectTransport.add_load_section`).

Nothing here exposes a Router, a Producer or a peer connection, and what crosses the API is
data (:class:`RoomInfo`, :class:`TrackInfo`, :class:`~sfu.producer.MediaPacket`) or a
callback, so the same calls can be served across a process boundary by a media link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiortc import RTCRtpCodecParameters

from .errors import RoomNotLive
from .producer import MediaPacket, PacketSink, Producer

if TYPE_CHECKING:
    from .ingest_health import TrackHealth
    from .worker import Worker

__all__ = ["DirectTransport", "MediaPacket", "PacketSink", "RoomInfo", "TrackInfo", "TrackSource", "TrackTap"]


class TrackSource(Protocol):
    """What a direct consumer attaches to: a :class:`TrackTap` (or, inside the SFU, a
    :class:`~sfu.producer.Producer`, which has the same face)."""

    @property
    def kind(self) -> str: ...
    @property
    def codec(self) -> RTCRtpCodecParameters: ...
    @property
    def closed(self) -> bool: ...
    def add_consumer(self, sink: PacketSink) -> None: ...
    def remove_consumer(self, sink: PacketSink) -> None: ...
    def request_keyframe(self) -> None: ...


@dataclass(frozen=True)
class TrackInfo:
    """One published track.

    :ivar kind: ``"audio"`` or ``"video"``.
    :ivar mime_type: e.g. ``"video/VP8"``, ``"video/H264"``, ``"audio/opus"``.
    :ivar clock_rate: RTP clock rate, Hz (90000 for video, 48000 for Opus).
    :ivar channels: audio channels (``None`` for video).
    :ivar parameters: the codec's SDP format parameters (RFC 8866 ``a=fmtp``).
    """

    kind: str
    mime_type: str
    clock_rate: int
    channels: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def codec(self) -> RTCRtpCodecParameters:
        """The same codec as aiortc parameters (for depacketizers and decoders)."""
        return RTCRtpCodecParameters(
            mimeType=self.mime_type, clockRate=self.clock_rate, channels=self.channels,
            parameters=dict(self.parameters),
        )


@dataclass(frozen=True)
class RoomInfo:
    """A room on this node as a direct consumer sees it.

    :ivar name: the room name.
    :ivar live: a publisher (or a pipe from the origin node) is sending media.
    :ivar viewers: WebRTC viewers of the room on this node.
    :ivar tracks: the published tracks by name: "video", "audio", and "aac" (an RTMP/SRT
        relay's copy of the encoder's AAC); empty when not live.
    """

    name: str
    live: bool
    viewers: int
    tracks: dict[str, TrackInfo]


def _track_info(producer: Producer) -> TrackInfo:
    codec = producer.codec
    return TrackInfo(producer.kind, codec.mimeType, codec.clockRate, codec.channels,
                     dict(codec.parameters))


class TrackTap:
    """A direct consumer's subscription to one published track.

    Created by :meth:`DirectTransport.tap`.  Packets flow to the sinks added with
    :meth:`add_consumer` until :meth:`remove_consumer` or until the track ends
    (:attr:`closed`; a publisher that reconnects publishes a *new* track: tap again).
    """

    def __init__(self, transport: DirectTransport, room: str, producer: Producer, track: str | None = None) -> None:
        self._transport = transport
        self._producer = producer
        self.room = room
        self.track = track or producer.kind
        """The room's track it follows: ``"video"``, ``"audio"`` or ``"aac"`` (an RTMP/SRT
        relay's copy of the encoder's AAC, :data:`sfu.negotiation.FORWARDABLE`)."""
        self.info = _track_info(producer)

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def codec(self) -> RTCRtpCodecParameters:
        return self._producer.codec

    @property
    def closed(self) -> bool:
        """True once the track ended, or the room now publishes another track of this kind."""
        return self._producer.closed or self._transport._producer(self.room, self.track) is not self._producer

    def add_consumer(self, sink: PacketSink) -> None:
        """Start handing every packet of the track to ``sink.forward`` (idempotent)."""
        self._producer.add_consumer(sink)

    def remove_consumer(self, sink: PacketSink) -> None:
        """Stop handing packets to ``sink`` (idempotent)."""
        self._producer.remove_consumer(sink)

    def request_keyframe(self) -> None:
        """Ask the publisher for a key frame (video only; throttled PLI, RFC 4585 §6.3.1)."""
        self._producer.request_keyframe()

    @property
    def simulcast(self) -> bool:
        """The publisher sends simulcast streams (the tap follows one of them)."""
        return self._producer.simulcast

    @property
    def health(self) -> TrackHealth:
        """The track's ingest health as the SFU measures it (read it, do not feed it):
        e.g. ``keyframe_spacings_s()``, ``snapshot().fps`` / ``.bitrate_bps``."""
        return self._producer.health


class DirectTransport:
    """The in-process consumer API of one :class:`~sfu.worker.Worker` (see module docstring)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def rooms(self) -> list[RoomInfo]:
        """Every room this node holds, live or not."""
        return [self._info(name) for name in list(self._worker.routers)]

    def room(self, name: str) -> RoomInfo | None:
        """The room, or ``None`` when this node does not hold it."""
        return self._info(name) if name in self._worker.routers else None

    def tap(self, room: str, kind: str) -> TrackTap:
        """The room's current ``kind`` track (``"video"``, ``"audio"``, or ``"aac"``).

        :raises RoomNotLive: the room is not on this node or publishes no such track.
        """
        producer = self._producer(room, kind)
        if producer is None or producer.closed:
            raise RoomNotLive(f"room {room!r} publishes no {kind} track on this node")
        return TrackTap(self, room, producer, kind)

    def hold(self, room: str, holder: str) -> bool:
        """Keep the room's media flowing into this node for ``holder`` (an edge keeps its pipe
        from the origin open while any holder remains).  ``False`` when the node does not
        hold the room."""
        router = self._worker.routers.get(room)
        if router is None:
            return False
        router.holders.add(holder)
        return True

    def release(self, room: str, holder: str) -> None:
        """Undo :meth:`hold` (idempotent)."""
        router = self._worker.routers.get(room)
        if router is not None:
            router.holders.discard(holder)

    def add_load_section(self, name: str, report: Callable[[], Any]) -> None:
        """Add ``{name: report()}`` to every load report of the node (JSON values)."""
        self._worker.load_reporters[name] = report

    # ------------------------------------------------------------------ internals
    def _producer(self, room: str, kind: str) -> Producer | None:
        router = self._worker.routers.get(room)
        return router.producers.get(kind) if router is not None else None

    def _info(self, name: str) -> RoomInfo:
        router = self._worker.routers[name]
        tracks = {kind: _track_info(p) for kind, p in router.producers.items()}
        return RoomInfo(name, router.live, int(router.state()["viewers"]), tracks)
