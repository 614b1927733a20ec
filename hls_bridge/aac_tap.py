"""The LL-HLS bridge's side of a publisher's AAC section: RTP packets of MP4A-LATM
(RFC 6416 §6.1, the configuration in band, one or more elements a packet:
:mod:`common.latm`) → whole AAC-LC frames.

Only the RTMP/SRT relay publishes such a section (the encoder's own AAC, next to the Opus
it encodes for WebRTC); the bridge publishes it as the ``a0`` rendition instead of encoding
AAC from the Opus (:class:`~hls_bridge.transcoder.LadderTranscoder`, ``aac_passthrough``).

* :class:`LatmProbe`: a packet sink that resolves with the configuration of the first whole
  element it sees (the bridge decides with it whether ``a0`` can be the source's AAC).
* :class:`AacTap`: the same face as :class:`~hls_bridge.ingest.ProducerTap` for
  :func:`~hls_bridge.ingest.merge_frames`: it yields :class:`AacFrame` objects, ``pts`` in
  90 kHz ticks from the tap's first frame (continuous across RTP timestamp wrap).  Nothing
  is decoded.  An element with a packet missing (a sequence gap, or a new timestamp before
  the marker) or that does not parse is dropped and counted; so is the oldest frame when
  :data:`MAX_QUEUED` wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from common import latm
from sfu.direct import MediaPacket, TrackSource

from .ingest import until_none

MAX_QUEUED = 64
"""AAC frames waiting for the transcoder at most (1.4 s at 48 kHz)."""


@dataclass(frozen=True, slots=True)
class AacFrame:
    """One raw AAC-LC frame (1,024 samples): ``pts`` in 90 kHz ticks from the tap's first."""

    data: bytes
    pts: int
    config: latm.AacConfig


class _Elements:
    """Reassembles LATM elements from RTP packets (the marker ends one)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._timestamp: int | None = None
        self._next_seq: int | None = None
        self.broken = 0

    def push(self, media: MediaPacket) -> tuple[int, bytes] | None:
        """``(RTP timestamp, element)`` when ``media`` completes one, else None."""
        if self._parts and (media.seq != self._next_seq or media.timestamp != self._timestamp):
            self._parts.clear()
            self.broken += 1
        if not self._parts:
            self._timestamp = media.timestamp
        self._parts.append(media.payload)
        self._next_seq = (media.seq + 1) & 0xFFFF
        if not media.marker:
            return None
        element = b"".join(self._parts)
        self._parts.clear()
        return media.timestamp, element


class LatmProbe:
    """A packet sink whose :attr:`found` resolves with the first whole element's
    configuration (add it to a tap, await, remove it)."""

    def __init__(self) -> None:
        self.found: asyncio.Future[latm.AacConfig] = asyncio.get_running_loop().create_future()
        self._elements = _Elements()

    def forward(self, media: MediaPacket) -> None:
        whole = self._elements.push(media)
        if whole is None or self.found.done():
            return
        try:
            config, _ = latm.parse_audio_mux_element(whole[1])  # the first of the payload's
        except latm.LatmError as exc:
            self.found.set_exception(exc)
        else:
            self.found.set_result(config)


class AacTap:
    """AAC frames of a track source carrying MP4A-LATM (see the module docstring).  Create it
    on the source's event loop; it attaches at once.  Counters: ``frames_decoded`` (frames
    parsed: nothing is decoded), ``dropped``."""

    kind = "aac"

    def __init__(self, source: TrackSource, *, max_queue: int = MAX_QUEUED) -> None:
        self.source = source
        self.closed = False
        self.frames_decoded = 0
        self._unparsed = 0
        self._queue_dropped = 0
        self._max_queue = max_queue
        self._queue: asyncio.Queue[AacFrame | None] = asyncio.Queue()
        self._elements = _Elements()
        self._last_ts: int | None = None
        self._pts = 0
        source.add_consumer(self)

    @property
    def dropped(self) -> int:
        return self._elements.broken + self._unparsed + self._queue_dropped

    def forward(self, media: MediaPacket) -> None:
        """Called by the source for every packet (event loop; never blocks)."""
        if self.closed:
            return
        whole = self._elements.push(media)
        if whole is None:
            return
        timestamp, payload = whole
        try:
            elements = latm.parse_audio_mux_elements(payload)
        except latm.LatmError:
            self._unparsed += 1
            return
        if self._last_ts is not None:
            delta = (timestamp - self._last_ts) & 0xFFFFFFFF
            self._pts += delta - (1 << 32) if delta >= 1 << 31 else delta
        self._last_ts = timestamp
        for index, (config, data) in enumerate(elements):  # the timestamp is the first's
            if self._queue.qsize() >= self._max_queue:
                self._queue.get_nowait()
                self._queue_dropped += 1
            self.frames_decoded += 1
            pts = self._pts + index * latm.FRAME_SAMPLES * latm.CLOCK_RATE // config.sample_rate
            self._queue.put_nowait(AacFrame(data, pts, config))

    async def frames(self) -> AsyncIterator[AacFrame]:
        """AAC frames in order until :meth:`close`."""
        async for frame in until_none(self._queue):
            yield frame

    def close(self) -> None:
        """Detach from the source and end :meth:`frames` (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.source.remove_consumer(self)
        self._queue.put_nowait(None)
