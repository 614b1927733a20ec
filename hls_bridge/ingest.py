"""Ingest for the LL-HLS bridge: RTP packets of a track → decoded frames, decoded off the loop.

:class:`ProducerTap` attaches to a track source as one more consumer (duck-typed: it only
needs ``forward(media)``).  In the transcoder process (:mod:`hls_bridge.transcoder_main`)
the source is a ``LinkedTrack`` fed by the media link; a :class:`sfu.direct.TrackTap` or
a :class:`sfu.producer.Producer` works the same way (tests use them in one process).

Path of a packet::

    Producer.on_rtp ─ forward(media) ─► FrameAssembler ─► FrameDecoder backlog
       (event loop, O(1) per packet)      (RTP → frames)    (bounded, lock-guarded)
                                                                   │ one worker thread:
                                                                   ▼ depayload + PyAV decode
                              ProducerTap.frames() ◄─ asyncio.Queue (drop oldest)

* Video waits for a key frame: one is requested (PLI via
  :meth:`Producer.request_keyframe`, throttled there) on attach and again every
  second until one arrives.  A frame with a packet still missing once the stream
  is ``max_delay`` seconds past it (the SFU's NACK/RTX path upstream has had its
  chance) is dropped, the frames after it are skipped until the next key frame,
  and a key frame is requested.
* Frames are delivered as ``av.VideoFrame`` / ``av.AudioFrame`` with ``pts`` in
  RTP clock ticks (``time_base`` 1/90000 for video, 1/48000 for Opus), counted
  from the tap's first frame (0) and continuous across RTP timestamp wrap.  An H.264
  frame's ``opaque`` is the access unit it was decoded from (Annex B bytes, as
  depacketized: RFC 6184), for the transcoder's passthrough rendition.
* Nothing on the forwarding path blocks: the decoder backlog and the output
  queue are bounded; when full, the oldest frames go (video backlog overflow
  restarts at the next key frame) and every drop is counted.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import av
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import depayload

from sfu.direct import MediaPacket, TrackSource
from sfu.rtp import is_keyframe_start

__all__ = ["DecodedFrame", "EncodedFrame", "FrameAssembler", "FrameDecoder", "ProducerTap", "merge_frames", "until_none"]

logger = logging.getLogger(__name__)

DecodedFrame = av.VideoFrame | av.AudioFrame

_DECODERS = {"video/vp8": "vp8", "video/h264": "h264", "audio/opus": "opus"}
KEYFRAME_RETRY_S = 1.0  # re-request a key frame this often while waiting for one
_MAX_BUFFERED_PACKETS = 4096  # assembler hard cap (a 4K key frame is ~1000 packets)


def _seq_delta(a: int, b: int) -> int:
    """Signed distance ``a - b`` of 16-bit sequence numbers."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def _ts_delta(a: int, b: int) -> int:
    """Signed distance ``a - b`` of 32-bit RTP timestamps."""
    return ((a - b + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000


class EncodedFrame:
    """One complete encoded frame: its RTP payloads (not yet depayloaded), in order.

    ``pts``: RTP clock ticks since the tap's first frame; ``keyframe``: starts a
    key frame (always ``True`` for audio).
    """

    __slots__ = ("payloads", "timestamp", "pts", "keyframe")

    def __init__(self, payloads: list[bytes], timestamp: int, pts: int, keyframe: bool) -> None:
        self.payloads = payloads
        self.timestamp = timestamp
        self.pts = pts
        self.keyframe = keyframe

    def __repr__(self) -> str:
        return (
            f"EncodedFrame(pts={self.pts}, packets={len(self.payloads)}, keyframe={self.keyframe})"
        )


class FrameAssembler:
    """Reorders RTP packets and groups them into frames (RFC 3550 §5.1 timestamp + marker).

    A video frame is the run of consecutive sequence numbers that share one RTP
    timestamp, ending at the packet with the marker bit (or just before the next
    timestamp, for senders that omit the marker).  Every audio packet is a frame.

    :param mime_type: the producer's codec (``video/VP8``, ``video/H264``, ``audio/opus``).
    :param clock_rate: RTP clock in Hz (90000 video, 48000 Opus).
    :param max_delay: seconds of newer media after which a frame that still misses
        packets is given up on (time for NACK/RTX upstream to repair it).
    :param on_loss: called (synchronously) whenever a video frame is dropped; the
        assembler then skips to the next key frame on its own.
    """

    def __init__(
        self,
        mime_type: str,
        clock_rate: int,
        *,
        max_delay: float = 0.25,
        on_loss: Callable[[], None] | None = None,
    ) -> None:
        self.mime_type = mime_type
        self.video = mime_type.lower().startswith("video/")
        self.max_delay_ticks = int(max_delay * clock_rate)
        self.on_loss = on_loss
        self.waiting_keyframe = self.video
        self.frames = 0  # frames emitted
        self.lost = 0  # incomplete (video) frames dropped
        self.late = 0  # packets that came after their frame was emitted or dropped
        self._packets: dict[int, MediaPacket] = {}  # extended seq -> packet
        self._highest: int | None = None  # extended seq of the newest packet
        self._highest_ts = 0
        self._next = 0  # extended seq that starts the next frame
        self._scan = 0  # first seq in [_next, ...) not yet checked present
        self._ref_ts = 0  # timestamp of the last emitted frame (or of the sync key frame)
        self._first_ts: int | None = None  # RTP timestamp of pts 0
        self._last_pts = 0
        self._last_ts = 0

    # ------------------------------------------------------------------ input
    def push(self, media: MediaPacket) -> list[EncodedFrame]:
        """Add one packet; return the frames it completed (usually 0 or 1), in order."""
        if self._highest is None:
            ext = media.seq
            self._highest = ext
            self._highest_ts = media.timestamp
            self._next = self._scan = ext
        else:
            ext = self._highest + _seq_delta(media.seq, self._highest & 0xFFFF)
            if ext > self._highest:
                self._highest = ext
            if _ts_delta(media.timestamp, self._highest_ts) > 0:
                self._highest_ts = media.timestamp
        if not self.video:
            return self._push_audio(ext, media)
        if self.waiting_keyframe:
            self._packets[ext] = media
            if media.keyframe or is_keyframe_start(self.mime_type, media.payload):
                self._sync(media.timestamp)
            else:
                self._prune()
                return []
        elif ext < self._next or ext in self._packets:
            self.late += 1
            return []
        else:
            self._packets[ext] = media
        return self._drain()

    def resync(self) -> None:
        """Skip everything up to the next key frame (e.g. after the decoder fell behind)."""
        if self.video:
            self.waiting_keyframe = True
            self._packets.clear()

    # --------------------------------------------------------------- internals
    def _push_audio(self, ext: int, media: MediaPacket) -> list[EncodedFrame]:
        if self.frames and ext < self._next:
            self.late += 1
            return []
        self._next = ext + 1
        return [self._frame([media.payload], media.timestamp, True)]

    def _sync(self, timestamp: int) -> None:
        """Start at the first buffered packet of the key frame with ``timestamp``."""
        start = min(s for s, p in self._packets.items() if p.timestamp == timestamp)
        for s in [s for s in self._packets if s < start]:
            del self._packets[s]
        self._next = self._scan = start
        self._ref_ts = timestamp
        self.waiting_keyframe = False

    def _prune(self) -> None:
        """While waiting for a key frame keep only the newest packets."""
        assert self._highest is not None
        if len(self._packets) > _MAX_BUFFERED_PACKETS:
            floor = self._highest - _MAX_BUFFERED_PACKETS // 2
            for s in [s for s in self._packets if s < floor]:
                del self._packets[s]

    def _drain(self) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        packets = self._packets
        while not self.waiting_keyframe:
            packet = packets.get(self._scan)
            if packet is None:
                if self._gap_expired():
                    self._drop_frame()
                    continue
                break
            first = packets[self._next]
            if packet.timestamp != first.timestamp:  # previous frame ended without a marker
                out.append(self._emit(self._scan))
            elif packet.marker:
                out.append(self._emit(self._scan + 1))
            else:
                self._scan += 1
        return out

    def _gap_expired(self) -> bool:
        return (
            _ts_delta(self._highest_ts, self._ref_ts) > self.max_delay_ticks
            or len(self._packets) > _MAX_BUFFERED_PACKETS
        )

    def _drop_frame(self) -> None:
        """Give up on the frame at ``_next``; resume at a buffered key frame if there is one."""
        self.lost += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("ingest: dropping incomplete frame at seq %d", self._next & 0xFFFF)
        self.waiting_keyframe = True
        keyframes = [
            (s, p.timestamp)
            for s, p in self._packets.items()
            if s > self._next and (p.keyframe or is_keyframe_start(self.mime_type, p.payload))
        ]
        if keyframes:
            self._sync(min(keyframes)[1])
        else:
            floor = self._scan
            for s in [s for s in self._packets if s < floor]:
                del self._packets[s]
        if self.on_loss is not None:
            self.on_loss()

    def _emit(self, end: int) -> EncodedFrame:
        """Pop packets ``[_next, end)`` as one frame."""
        packets = self._packets
        parts = [packets.pop(s) for s in range(self._next, end)]
        self._next = self._scan = end
        first = parts[0]
        self._ref_ts = first.timestamp
        keyframe = first.keyframe or is_keyframe_start(self.mime_type, first.payload)
        return self._frame([p.payload for p in parts], first.timestamp, keyframe)

    def _frame(self, payloads: list[bytes], timestamp: int, keyframe: bool) -> EncodedFrame:
        if self._first_ts is None:
            self._first_ts = self._last_ts = timestamp
        self._last_pts += _ts_delta(timestamp, self._last_ts)
        self._last_ts = timestamp
        self.frames += 1
        return EncodedFrame(payloads, timestamp, self._last_pts, keyframe)


class FrameDecoder:
    """PyAV decoding in one worker thread; results land in an asyncio.Queue.

    :meth:`submit` (event loop) appends to a backlog of at most ``max_backlog``
    encoded frames and never blocks.  The worker depayloads (aiortc's
    ``depayload``), decodes with ``av.CodecContext.create(name, "r")`` and hands
    each ``av.VideoFrame``/``av.AudioFrame`` (pts in RTP ticks, ``time_base``
    1/clock_rate) back to the loop, into ``queue`` (``max_queue`` frames; the
    oldest is dropped when full).

    :param on_error: called on the loop after a decode error (video: ask for a key frame).
    """

    def __init__(
        self,
        codec: RTCRtpCodecParameters,
        *,
        max_queue: int = 8,
        max_backlog: int = 30,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        mime = codec.mimeType.lower()
        if mime not in _DECODERS:
            raise ValueError(f"no decoder for {codec.mimeType}")
        self.codec = codec
        self.video = mime.startswith("video/")
        self.time_base = fractions.Fraction(1, codec.clockRate)
        self.queue: asyncio.Queue[DecodedFrame | None] = asyncio.Queue(max_queue)
        self.on_error = on_error
        self.max_backlog = max_backlog
        self.frames_decoded = 0
        self.queue_dropped = 0  # decoded frames dropped because the consumer was slow
        self.backlog_dropped = 0  # encoded frames dropped because decoding was slow
        self.decode_errors = 0
        self.decode_seconds = 0.0  # worker CPU time spent in depayload + decode
        self.thread_id: int | None = None  # threading.get_ident() of the worker
        self._loop = asyncio.get_running_loop()
        # Backlog for the worker.  Each counter has a single writer thread, so
        # submitted - taken - discarded is the backlog without a lock.
        self._inbox: queue.SimpleQueue[EncodedFrame | None] = queue.SimpleQueue()
        self._submitted = 0  # event loop
        self._discarded = 0  # event loop
        self._taken = 0  # worker
        self._closed = False
        self._context = cast(
            "av.VideoCodecContext | av.AudioCodecContext",
            av.CodecContext.create(_DECODERS[mime], "r"),
        )
        self._h264 = mime == "video/h264"
        if self._h264:  # each frame carries its access unit (frame.opaque), for passthrough
            self._context.copy_opaque = True
        self.thread = threading.Thread(
            target=self._run, name=f"ingest-decode-{_DECODERS[mime]}", daemon=True
        )
        self.thread.start()

    # ----------------------------------------------------------- event loop side
    def submit(self, frame: EncodedFrame) -> bool:
        """Queue ``frame`` for decoding.  ``False``: the video backlog overflowed and
        ``frame`` was discarded with it; the caller must resume at a key frame."""
        if self._closed:
            return True
        accepted = True
        if self._submitted - self._taken - self._discarded >= self.max_backlog:
            if not self.video:
                self._discard(1)
            else:
                # Video frames depend on their predecessors: drop the whole
                # backlog and restart at a key frame (this one, if it is one).
                self._discard(self.max_backlog)
                if not frame.keyframe:
                    self.backlog_dropped += 1
                    accepted = False
        if accepted:
            self._submitted += 1
            self._inbox.put(frame)
        return accepted

    def _discard(self, count: int) -> None:
        for _ in range(count):
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return
            self._discarded += 1
            self.backlog_dropped += 1

    def close(self) -> None:
        """Stop the worker (after the frame it is decoding) and end the queue.

        Frames not yet read are discarded: iterators of :attr:`queue` see the end next.
        """
        if self._closed:
            return
        self._closed = True
        self._discard(self._submitted)
        self._inbox.put(None)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the worker thread has exited."""
        deadline = time.monotonic() + timeout
        while self.thread.is_alive() and time.monotonic() < deadline:
            await asyncio.to_thread(self.thread.join, 0.1)

    def _put(self, item: DecodedFrame | None) -> None:
        while self.queue.full():
            self.queue.get_nowait()
            if item is not None:
                self.queue_dropped += 1
        self.queue.put_nowait(item)

    def _deliver(self, frames: list[DecodedFrame]) -> None:
        if self._closed:
            return
        for frame in frames:
            self._put(frame)

    def _report_error(self) -> None:
        if not self._closed and self.on_error is not None:
            self.on_error()

    # ---------------------------------------------------------------- worker side
    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        while True:
            encoded = self._inbox.get()
            if encoded is None or self._closed:
                return
            self._taken += 1
            started = time.thread_time()
            try:
                frames = self._decode(encoded)
            except Exception as exc:  # corrupt input must not kill the worker
                frames = []
                self.decode_errors += 1
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("ingest: decode error at pts %d: %r", encoded.pts, exc)
                self._call_soon(self._report_error)
            self.decode_seconds += time.thread_time() - started
            if frames:
                self.frames_decoded += len(frames)
                if not self._call_soon(self._deliver, frames):
                    return

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed: nobody left to deliver to
            return False
        return True

    def _decode(self, encoded: EncodedFrame) -> list[DecodedFrame]:
        data = b"".join(depayload(self.codec, payload) for payload in encoded.payloads)
        packet = av.Packet(data)
        packet.pts = encoded.pts
        packet.time_base = self.time_base
        if self._h264:
            packet.opaque = data
        frames: list[DecodedFrame] = []
        for frame in self._context.decode(packet):
            if frame.pts is None:
                frame.pts = encoded.pts
            frame.time_base = self.time_base
            frames.append(frame)
        return frames


class ProducerTap:
    """An internal consumer of a Producer that yields decoded frames.

    ``ProducerTap(producer)`` must be created on the producer's event loop; it
    attaches at once and asks for a key frame.  Iterate :meth:`frames`; call
    :meth:`close` (and optionally ``await wait_closed()``) to detach.  Also an
    async context manager.  The tap also closes itself (ending :meth:`frames`)
    when it notices, within a second, that the producer was closed.

    Counters: ``frames_in`` (complete encoded frames sent to the decoder),
    ``frames_decoded``, ``dropped`` (all frames lost on the way: incomplete,
    decoder backlog, output queue), ``keyframe_requests``.

    :param max_queue: decoded frames buffered for :meth:`frames` (oldest dropped).
    :param max_delay: seconds a frame may wait for a missing packet (see :class:`FrameAssembler`).
    :param max_backlog: encoded frames waiting for the decoder thread.
    """

    def __init__(
        self,
        producer: TrackSource,
        *,
        max_queue: int = 8,
        max_delay: float = 0.25,
        max_backlog: int = 30,
    ) -> None:
        codec = producer.codec
        self.producer = producer
        self.kind = producer.kind
        self.clock_rate = codec.clockRate
        self.time_base = fractions.Fraction(1, codec.clockRate)
        self.frames_in = 0
        self.keyframe_requests = 0
        self.closed = False
        self.assembler = FrameAssembler(
            codec.mimeType, codec.clockRate, max_delay=max_delay, on_loss=self._request_keyframe
        )
        self.decoder = FrameDecoder(
            codec, max_queue=max_queue, max_backlog=max_backlog, on_error=self._on_decode_error
        )
        self._loop = asyncio.get_running_loop()
        self._last_request = 0.0
        producer.add_consumer(self)
        self._request_keyframe()
        self._timer = self._loop.call_later(KEYFRAME_RETRY_S, self._tick)

    # --------------------------------------------------------------- counters
    @property
    def frames_decoded(self) -> int:
        return self.decoder.frames_decoded

    @property
    def dropped(self) -> int:
        return self.assembler.lost + self.decoder.backlog_dropped + self.decoder.queue_dropped

    # ------------------------------------------------------------ consumer API
    def forward(self, media: MediaPacket) -> None:
        """Called by the Producer for every packet (event loop; must not block)."""
        if self.closed:
            return
        for frame in self.assembler.push(media):
            self.frames_in += 1
            if not self.decoder.submit(frame):
                self.assembler.resync()
                self._request_keyframe()

    # ------------------------------------------------------------- output API
    async def frames(self) -> AsyncIterator[DecodedFrame]:
        """Decoded frames in order until :meth:`close` (``VideoFrame`` or ``AudioFrame``)."""
        async for frame in until_none(self.decoder.queue):
            yield frame

    def close(self) -> None:
        """Detach from the producer and stop the decode thread (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._timer.cancel()
        self.producer.remove_consumer(self)
        self.decoder.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait for the decode thread to exit (after :meth:`close`)."""
        await self.decoder.wait_closed(timeout)

    async def __aenter__(self) -> ProducerTap:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # ----------------------------------------------------------------- internals
    def _request_keyframe(self) -> None:
        if self.kind != "video" or self.closed:
            return
        self._last_request = time.monotonic()
        self.keyframe_requests += 1
        self.producer.request_keyframe()

    def _on_decode_error(self) -> None:
        if self.kind == "video":
            self.assembler.resync()
            self._request_keyframe()

    def _tick(self) -> None:
        if self.closed:
            return
        if self.producer.closed:
            self.close()
            return
        if (
            self.assembler.waiting_keyframe
            and time.monotonic() - self._last_request >= KEYFRAME_RETRY_S * 0.99
        ):
            self._request_keyframe()
        self._timer = self._loop.call_later(KEYFRAME_RETRY_S, self._tick)


_END = object()


async def until_none(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """The items of ``queue`` until a ``None`` (put back, so other iterators end too)."""
    while True:
        item = await queue.get()
        if item is None:
            queue.put_nowait(None)
            return
        yield item


async def merge_frames(taps: list[Any]) -> AsyncIterator[Any]:
    """The frames of all ``taps`` (:class:`ProducerTap`: decoded frames;
    :class:`~hls_bridge.aac_tap.AacTap`: AAC frames) in arrival order, until every tap has ended."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=32)

    async def pump(tap: ProducerTap) -> None:
        try:
            async for frame in tap.frames():
                await queue.put(frame)
        finally:
            await queue.put(_END)

    pumps = [asyncio.create_task(pump(tap)) for tap in taps]
    remaining = len(pumps)
    try:
        while remaining:
            item = await queue.get()
            if item is _END:
                remaining -= 1
            else:
                yield item
    finally:
        for task in pumps:
            task.cancel()
