"""Ingest health: how a publisher's media reaches the SFU, from the forwarding path's own view.

Nothing is decoded.  Each :class:`~sfu.producer.Producer` keeps a :class:`TrackHealth` whose
:meth:`TrackHealth.on_packet` runs once per RTP packet and only counts (bytes, packets, the
extended highest sequence number, marker bits — a video frame ends on a marker, RFC 6184
§5.1, RFC 7741 §4.1); a key frame's first packet (rare) also gives its RTP timestamp and the
picture size in its header (:mod:`sfu.picture_size`).  Time enters twice a second, when the
room's tick calls :meth:`TrackHealth.sample`, never per packet.

:meth:`TrackHealth.snapshot` turns that into rates over the last :data:`WINDOW_S` s;
:func:`publisher_ingest` merges a publisher's tracks into one report, the ``Ingest`` object of
the API::

    {"bitrate_bps": int, "fps": float, "width": int, "height": int,
     "keyframe_interval_s": float, "loss": float, "rtt_ms": float, "jitter_ms": float,
     "advice": str, "dropped_frames": int, "tracks": {"video": {...}, "audio": {...}}}

each value ``None`` when the SFU cannot see it.  Units and sources:

* ``bitrate_bps``: RTP payload bits per second over the window, all tracks (retransmissions
  included, RTP headers not);
* ``fps``: video frames per second — marker bits over the window (a frame whose last packet
  was lost counts once its retransmission arrives);
* ``width``/``height``: from the last key frame that carried them (H.264 SPS, VP8 header);
* ``keyframe_interval_s``: the mean spacing of the last :data:`KEYFRAME_INTERVALS` key frames,
  from their RTP timestamps (the encoder's clock, free of network jitter);
* ``loss``: fraction 0–1 of the packets expected in the window that did not arrive, all
  tracks, before retransmission — aiortc's receiver-report counters (RFC 3550 §6.4.1, §A.3),
  else the sequence-number gaps seen here (then after retransmission);
* ``jitter_ms``: RFC 3550 §A.8 interarrival jitter of the audio track (evenly spaced
  packets), else the video track's, converted from codec clock ticks;
* ``rtt_ms``: the round trip of the last ICE consent check the publisher answered
  (:func:`sfu.aiortc_private.ice_round_trip_time`).  RTCP gives a receiver no RTT of its own
  (the sender computes it from our receiver reports, RFC 3550 §6.4.1; RFC 3611 XR is not
  negotiated), so a publisher that does not answer consent checks — FFmpeg's WHIP muxer —
  has ``None``;
* ``advice``: not measured here — what the publisher's encoder should change, in words, as
  the publisher session was told (``ingest_advice`` RPC, :class:`sfu.protocol.IngestAdvice`:
  the RTMP ingest process's B-frame advice); ``None`` without one;
* ``dropped_frames``: not measured here either — the running total of video frames that
  whoever republishes the encoder had to drop before the SFU could see them (the RTMP/SRT
  ingest: lost in transit, a full queue, an undecodable frame), as the publisher session was
  told (``ingest_advice`` RPC); ``None`` when never reported.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .aiortc_private import ReceiveStatistics
from .picture_size import keyframe_picture_size

WINDOW_S = 2.0
"""Rates are measured over about this many seconds, s."""
KEYFRAME_INTERVALS = 4
"""``keyframe_interval_s`` is the mean of this many key-frame spacings (at most)."""
_MIN_WINDOW_S = 0.25
_WINDOW_SLACK_S = 0.5  # a sample up to this much older than WINDOW_S still counts (tick delay)
_SAMPLES = 8  # twice a second: 4 s of history


@dataclass(frozen=True)
class _Sample:
    at_s: float  # clock() when taken
    bytes: int
    packets: int
    frames: int
    expected: int  # packets expected, aiortc's count (else from sequence numbers)
    received: int
    from_receiver: bool  # expected/received from aiortc's receive statistics


@dataclass(frozen=True)
class TrackSnapshot:
    """One track's health over the last window (``None``: not measurable yet).

    :ivar expected: packets expected in the window; :ivar lost: of those, not received.
    """

    kind: str
    codec: str
    bitrate_bps: int | None
    fps: float | None
    width: int | None
    height: int | None
    keyframe_interval_s: float | None
    expected: int
    lost: int
    jitter_ms: float | None
    rtt_ms: float | None
    packets: int
    keyframes: int
    paused: bool = False

    @property
    def loss(self) -> float | None:
        return round(self.lost / self.expected, 4) if self.expected > 0 else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"codec": self.codec, "bitrate_bps": self.bitrate_bps,
                               "loss": self.loss, "jitter_ms": self.jitter_ms,
                               "packets": self.packets}
        if self.paused:
            out["paused"] = True  # RFC 7728: no one takes it, so it is not sent
        if self.kind == "video":
            out.update(fps=self.fps, width=self.width, height=self.height,
                       keyframe_interval_s=self.keyframe_interval_s, keyframes=self.keyframes)
        return out


class TrackHealth:
    """Ingest counters of one published track.

    :param kind: ``"audio"`` or ``"video"``.
    :param mime_type: the negotiated codec (``"video/VP8"``, ``"video/H264"``, ``"audio/opus"``).
    :param clock_rate: RTP clock rate, Hz (90000 video, 48000 Opus).
    :param statistics: aiortc's receive statistics of the track's stream, when reachable.
    :param round_trip_time: the transport's round-trip time, s, when known.
    :param clock: monotonic seconds (tests pass a fake one).
    """

    __slots__ = (
        "kind", "codec", "clock_rate", "packets", "bytes", "frames", "keyframes",
        "highest_seq", "extended_seq", "first_extended_seq", "width", "height",
        "paused", "_keyframe_timestamps", "_keyframe_frames", "_samples", "_statistics", "_round_trip_time", "_clock",
    )

    def __init__(
        self,
        kind: str,
        mime_type: str,
        clock_rate: int,
        *,
        statistics: Callable[[], ReceiveStatistics | None] | None = None,
        round_trip_time: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.codec = mime_type
        self.clock_rate = clock_rate
        self.packets = 0
        """RTP packets received (retransmissions included)."""
        self.bytes = 0
        """RTP payload bytes received (retransmissions included)."""
        self.frames = 0
        """Marker bits: video frames completed (a frame whose last packet is lost counts
        when its retransmission arrives; a duplicate counts twice — rare)."""
        self.keyframes = 0
        self.highest_seq: int | None = None
        """Highest 16-bit sequence number seen (RFC 1982 order)."""
        self.extended_seq = 0
        """The same, extended with its wrap-arounds (RFC 3550 §A.1)."""
        self.first_extended_seq = 0
        self.width: int | None = None
        self.paused = False
        """The publisher was asked to pause this stream (RFC 7728): it has no consumer."""
        self.height: int | None = None
        self._keyframe_timestamps: deque[int] = deque(maxlen=KEYFRAME_INTERVALS + 1)
        self._keyframe_frames: deque[int] = deque(maxlen=KEYFRAME_INTERVALS + 1)
        """:attr:`frames` when each of those key frames began (the frames before it)."""
        self._samples: deque[_Sample] = deque(maxlen=_SAMPLES)
        self._statistics = statistics
        self._round_trip_time = round_trip_time
        self._clock = clock

    # --------------------------------------------------------- forwarding path
    def on_packet(self, seq: int, marker: int, size: int) -> None:
        """One RTP packet of ``size`` payload bytes arrived (O(1), no clock read)."""
        self.packets += 1
        self.bytes += size
        if marker:
            self.frames += 1
        highest = self.highest_seq
        if highest is None:
            self.highest_seq = seq
            self.extended_seq = self.first_extended_seq = seq
            return
        delta = (seq - highest) & 0xFFFF
        if 0 < delta < 0x8000:  # newer: not a retransmission, duplicate or late packet
            self.highest_seq = seq
            self.extended_seq += delta

    def on_keyframe(self, timestamp: int, payload: bytes) -> None:
        """The first packet of a key frame (RTP ``timestamp`` in clock ticks) arrived.  A key
        frame no newer than the last one (a retransmission) is not counted again."""
        stamps = self._keyframe_timestamps
        if stamps and not 0 < (timestamp - stamps[-1]) & 0xFFFFFFFF < 0x80000000:
            return
        stamps.append(timestamp)
        self._keyframe_frames.append(self.frames)
        self.keyframes += 1
        size = keyframe_picture_size(self.codec, payload)
        if size is not None:
            self.width, self.height = size

    # ------------------------------------------------------------------ time
    def sample(self) -> None:
        """Record the counters now (twice a second, from the room's tick)."""
        self._samples.append(self._take())

    def _take(self) -> _Sample:
        stats = self._statistics() if self._statistics is not None else None
        if stats is not None:
            expected, received, from_receiver = stats.packets_expected, stats.packets_received, True
        elif self.highest_seq is None:
            expected, received, from_receiver = 0, 0, False
        else:
            expected = self.extended_seq - self.first_extended_seq + 1
            received, from_receiver = self.packets, False
        return _Sample(self._clock(), self.bytes, self.packets, self.frames, expected, received,
                       from_receiver)

    def _base(self, now: _Sample) -> _Sample | None:
        """The oldest sample at most ``WINDOW_S`` (plus tick slack) old, at least
        ``_MIN_WINDOW_S`` old."""
        for sample in self._samples:
            age = now.at_s - sample.at_s
            if age <= WINDOW_S + _WINDOW_SLACK_S:
                return sample if age >= _MIN_WINDOW_S else None
        return None

    def keyframe_spacings_s(self) -> list[float]:
        """The spacings of the last key frames, s, oldest first (at most
        :data:`KEYFRAME_INTERVALS`; empty before the second key frame)."""
        stamps = list(self._keyframe_timestamps)
        return [((b - a) & 0xFFFFFFFF) / self.clock_rate for a, b in zip(stamps, stamps[1:], strict=False)]

    def source_fps(self) -> float | None:
        """The encoder's frame rate, frames/s: the frames completed between the oldest and the
        newest of the last key frames, over their RTP timestamp span (media time, so a burst
        of queued frames or a stall on the way does not move it, unlike ``snapshot().fps``).
        A frame whose last packet is lost and not repaired is missing from the count.
        ``None`` before the second key frame."""
        stamps, frames = self._keyframe_timestamps, self._keyframe_frames
        if len(stamps) < 2:
            return None
        span = (stamps[-1] - stamps[0]) & 0xFFFFFFFF
        return round((frames[-1] - frames[0]) * self.clock_rate / span, 2) if span else None

    def keyframe_interval_s(self) -> float | None:
        """Mean spacing of the last key frames, s (``None`` before the second one)."""
        stamps = self._keyframe_timestamps
        if len(stamps) < 2:
            return None
        span = (stamps[-1] - stamps[0]) & 0xFFFFFFFF
        return round(span / (len(stamps) - 1) / self.clock_rate, 3)

    def snapshot(self) -> TrackSnapshot:
        """The track's health over the last window (rates ``None`` until two samples apart
        by ``_MIN_WINDOW_S`` exist)."""
        now = self._take()
        base = self._base(now)
        bitrate = fps = None
        expected = lost = 0
        if base is not None:
            elapsed = now.at_s - base.at_s
            bitrate = round((now.bytes - base.bytes) * 8 / elapsed)
            if self.kind == "video":
                fps = round((now.frames - base.frames) / elapsed, 1)
            if base.from_receiver == now.from_receiver:
                expected = max(0, now.expected - base.expected)
                lost = min(expected, max(0, expected - (now.received - base.received)))
        stats = self._statistics() if self._statistics is not None else None
        jitter_ms = (round(stats.jitter_ticks * 1000 / self.clock_rate, 1)
                     if stats is not None and self.clock_rate else None)
        rtt_s = self._round_trip_time() if self._round_trip_time is not None else None
        return TrackSnapshot(
            kind=self.kind, codec=self.codec, bitrate_bps=bitrate, fps=fps,
            width=self.width, height=self.height, keyframe_interval_s=self.keyframe_interval_s(),
            expected=expected, lost=lost, jitter_ms=jitter_ms,
            rtt_ms=None if rtt_s is None else round(rtt_s * 1000, 1),
            packets=self.packets, keyframes=self.keyframes, paused=self.paused)


INGEST_FIELDS = ("bitrate_bps", "fps", "width", "height", "keyframe_interval_s", "loss",
                 "rtt_ms", "jitter_ms")
"""The members of a publisher's ingest report measured here (besides ``advice``,
``dropped_frames`` and ``tracks``)."""


def publisher_ingest(tracks: Iterable[TrackHealth], advice: str | None = None,
                     dropped_frames: int | None = None) -> dict[str, Any]:
    """One publisher's ingest report from its tracks' health (shape in the module notes):
    bitrates add up, loss is weighted by the packets each track expected, the picture
    values come from the video track, jitter from the audio track if any; ``advice`` and
    ``dropped_frames`` are the publisher session's, passed through."""
    snapshots = {track.kind: track.snapshot() for track in tracks}
    video, audio = snapshots.get("video"), snapshots.get("audio")
    rates = [s.bitrate_bps for s in snapshots.values() if s.bitrate_bps is not None]
    expected = sum(s.expected for s in snapshots.values())
    jitter_source = audio if audio is not None and audio.jitter_ms is not None else video
    rtt = next((s.rtt_ms for s in snapshots.values() if s.rtt_ms is not None), None)
    return {
        "bitrate_bps": sum(rates) if rates else None,
        "fps": video.fps if video else None,
        "width": video.width if video else None,
        "height": video.height if video else None,
        "keyframe_interval_s": video.keyframe_interval_s if video else None,
        "loss": round(sum(s.lost for s in snapshots.values()) / expected, 4) if expected else None,
        "rtt_ms": rtt,
        "jitter_ms": jitter_source.jitter_ms if jitter_source else None,
        "advice": advice,
        "dropped_frames": dropped_frames,
        "tracks": {kind: s.to_json() for kind, s in snapshots.items()},
    }
