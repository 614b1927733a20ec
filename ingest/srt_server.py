"""An SRT publishing endpoint (SRT listener, live mode) for encoders: OBS (``srt://HOST:PORT``
with a stream id), FFmpeg, vMix, hardware encoders — MPEG-TS carrying H.264 and AAC or Opus.

**The stream id** follows the SRT Access Control convention (Haivision's
``docs/features/access-control.md``): ``#!::r=CHANNEL,m=publish,s=KEY`` — ``r`` the channel
(the room), ``m`` the mode (only ``publish`` here), ``s`` the channel's stream key (the
convention's "session id", as MediaMTX uses it for credentials), ``u`` and ``h`` accepted and
ignored, ``t`` if given ``stream``.  The key goes in the stream id, not the SRT passphrase:
the service keeps keys hashed (it could not derive a per-channel passphrase), and the
passphrase is the transport's, set for the whole listener (``RELAYCAST_SRT_PASSPHRASE``).

**Admission happens in libsrt's handshake** (``srt_listen_callback``): before a caller is
connected, :meth:`SrtServer._on_caller` parses its stream id and asks ``on_publish`` (the
WHIP relay's ``POST /whip/{channel}`` with the key) — so a malformed stream id, an unknown
or revoked key, or a key of another channel is refused at connect with the SRT rejection
reason ``1000 + the service's HTTP status`` (1401, 1403, 1404…; 1400 a malformed stream id,
1405 another mode, 1001 an unknown key), which the encoder reports.  The callback runs on
libsrt's receiving thread and waits for the service at most :data:`OPEN_TIMEOUT_S`.

Per connection a thread demultiplexes the MPEG-TS with FFmpeg's demuxer (PyAV) and hands
each H.264 access unit (Annex B, 90 kHz pts/dts) and each AAC (ADTS) or Opus packet to the
connection's :class:`TsSink` on the event loop.  Failure is per connection: 10 s without
data (:data:`STALL_TIMEOUT_S`; libsrt itself breaks a connection after 5 s of silence), a
stream without H.264 video, unreadable MPEG-TS — each ends that connection alone with one
log line; the sink's ``close(reason)`` is always called.  The stream id is never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

import av

from . import srt_lib
from .rtmp_server import PublishRefused

logger = logging.getLogger(__name__)

STALL_TIMEOUT_S = 10.0
"""A caller that sends no data for this long is disconnected (a stalled encoder)."""
OPEN_TIMEOUT_S = 4.0
"""How long admission may wait for the service, s (a caller's own connect timeout is 3 s by
default; it retries)."""
ACCEPT_TIMEOUT_S = 10.0
"""An admitted caller whose handshake never completes (a wrong passphrase, say) has its
session ended after this long, s."""
MAX_CONNECTIONS = 64
"""Callers connected or being admitted at once, at most (beyond: rejected, 1402)."""
DEMUX_OPTIONS = {"probesize": "65536", "analyzeduration": "100000", "fpsprobesize": "0"}
"""FFmpeg's MPEG-TS demuxer: find the streams from the first 0.1 s of media and a key frame's
SPS, without counting frames for a frame rate.  (Not ``fflags nobuffer``: it drops what
the stream analysis read, the first key frame with it.)"""
OPEN_LIMIT_BYTES = 1 << 20
"""A caller whose first MiB holds no MPEG-TS program (garbage) is disconnected.  Encoders
send the PAT and PMT every 100 ms or so: 0.4 s of a 20 Mbit/s stream."""
SRT_REJX_DOWN = 1503


class TsSink(Protocol):
    """Where one SRT caller's media goes (the WHIP relay); called on the event loop."""

    def on_ts_video(self, data: bytes, pts: int, dts: int, corrupt: bool) -> None:
        """One H.264 access unit, Annex B, with its pts and dts (90 kHz ticks); ``corrupt``
        when the demuxer saw transport packets of it missing (lost beyond SRT's retransmission)."""

    def on_ts_audio(self, codec: str, data: bytes, duration: int) -> None:
        """One ``"aac"`` (ADTS) or ``"opus"`` packet; ``duration`` in 48 kHz samples."""

    async def close(self, reason: str) -> None:
        """The connection ended (``reason`` for the log)."""


@dataclass(frozen=True, slots=True)
class SrtPublish:
    """An admitted SRT caller's request: ``channel`` (the stream id's ``r``), ``key`` (its
    ``s``: the stream key — never log it), ``peer`` (``host:port``)."""

    channel: str
    key: str
    peer: str


class StreamIdRefused(ValueError):
    """A stream id this endpoint does not take: ``reason`` the SRT rejection code, the
    message what to send instead (never the stream id itself: it holds the key)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


STREAM_ID_FORMAT = "#!::r=CHANNEL,m=publish,s=STREAM_KEY"


def parse_stream_id(text: str) -> tuple[str, str]:
    """``(channel, key)`` of a publishing stream id (SRT Access Control convention).

    A stream id that arrives URL-encoded (``%23!::…``: some encoders do not decode their
    URL's query) is decoded first.

    :raises StreamIdRefused: not the ``#!::`` form (1400), a key other than u/r/h/s/t/m
        (1001), a mode other than publish (1405), a type other than stream (1415), no
        channel or no key (1400 / 1401)."""
    if text.startswith("%23"):
        text = unquote(text)
    if not text.startswith("#!::"):
        raise StreamIdRefused(srt_lib.SRT_REJX_BAD_REQUEST,
                              f"the stream id must have the form {STREAM_ID_FORMAT}")
    fields: dict[str, str] = {}
    for item in text[4:].split(","):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StreamIdRefused(srt_lib.SRT_REJX_BAD_REQUEST,
                                  f"the stream id must have the form {STREAM_ID_FORMAT}")
        if name not in ("u", "r", "h", "s", "t", "m"):
            raise StreamIdRefused(srt_lib.SRT_REJX_KEY_NOTSUP,
                                  f"the stream id key {name[:16]!r} is not supported: use {STREAM_ID_FORMAT}")
        fields[name] = value
    mode = fields.get("m", "request")
    if mode != "publish":
        raise StreamIdRefused(srt_lib.SRT_REJX_BAD_MODE,
                              f"mode {mode[:16]!r} is not supported: this endpoint takes publishers (m=publish)")
    if fields.get("t", "stream") != "stream":
        raise StreamIdRefused(srt_lib.SRT_REJX_NOTSUP_MEDIA, "only live streams are taken (t=stream)")
    if not fields.get("r"):
        raise StreamIdRefused(srt_lib.SRT_REJX_BAD_REQUEST, f"no channel (r=) in the stream id: {STREAM_ID_FORMAT}")
    if not fields.get("s"):
        raise StreamIdRefused(srt_lib.SRT_REJX_UNAUTHORIZED,
                              f"no stream key (s=) in the stream id: {STREAM_ID_FORMAT}")
    return fields["r"], fields["s"]


class _SrtInput:
    """A file-like ``read`` over one SRT connection, for FFmpeg's demuxer (runs in the
    connection's thread)."""

    def __init__(self, listener: srt_lib.Listener, sock: int) -> None:
        self._listener = listener
        self._sock = sock
        self._buffer = ctypes.create_string_buffer(srt_lib.MAX_PAYLOAD)
        self.error: srt_lib.SrtError | None = None
        self.opening = True
        """Until the demuxer found the streams: reading stops after :data:`OPEN_LIMIT_BYTES`."""
        self.received = 0

    def read(self, _size: int) -> bytes:
        if self.error is not None or (self.opening and self.received > OPEN_LIMIT_BYTES):
            return b""
        try:
            data = self._listener.receive(self._sock, self._buffer)
        except srt_lib.SrtError as exc:
            self.error = exc
            return b""
        self.received += len(data)
        return data


class SrtServer:
    """The SRT listener (see the module docstring).  ``on_publish`` admits a caller and
    returns its :class:`TsSink`, or raises :class:`PublishRefused`; ``passphrase`` (10–79
    characters) makes every caller encrypt (AES, SRT's KMREQ) with it; ``latency_ms`` is the
    receiver's latency (TSBPD; libsrt's 120 ms by default; a caller asking for more gets
    more)."""

    def __init__(self, on_publish: Callable[[SrtPublish], Awaitable[TsSink]], host: str = "127.0.0.1",
                 port: int = 9000, passphrase: str | None = None, latency_ms: int | None = None) -> None:
        self._on_publish = on_publish
        self._host = host
        self._port = port
        self._passphrase = passphrase
        self._latency_ms = latency_ms
        self._listener: srt_lib.Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admitted: dict[int, TsSink] = {}
        self._connected: dict[int, TsSink] = {}
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closing = False

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.port

    async def start(self) -> None:
        """Listen.

        :raises srt_lib.SrtError: the port cannot be bound.
        :raises srt_lib.SrtUnavailable: libsrt is not installed."""
        self._loop = asyncio.get_running_loop()
        self._listener = await asyncio.to_thread(srt_lib.Listener, self._host, self._port, self._on_caller,
                                                 self._passphrase, self._latency_ms)
        self._start_thread(self._accept_loop, "srt-accept")

    async def close(self) -> None:
        """Stop listening and end every connection (each sink is closed)."""
        self._closing = True
        listener = self._listener
        if listener is None:
            return
        with self._lock:
            socks = list(self._connected)
            admitted = list(self._admitted.items())
            self._admitted.clear()
        await asyncio.to_thread(listener.close)
        for sock in socks:
            await asyncio.to_thread(listener.close_socket, sock)
        for _sock, sink in admitted:
            await sink.close("the ingest is stopping")
        for thread in list(self._threads):
            await asyncio.to_thread(thread.join, STALL_TIMEOUT_S)

    # ------------------------------------------------------------ admission (libsrt's thread)
    def _on_caller(self, sock: int, peer: str, stream_id: str) -> int:
        """0 to admit the caller, else an SRT rejection reason."""
        if self._closing or self._loop is None:
            return SRT_REJX_DOWN
        try:
            channel, key = parse_stream_id(stream_id)
        except StreamIdRefused as exc:
            logger.warning("SRT %s: refused (%d): %s", peer, exc.reason, exc)
            return exc.reason
        with self._lock:
            if len(self._admitted) + len(self._connected) >= MAX_CONNECTIONS:
                logger.warning("SRT %s: refused: %d connections already", peer, MAX_CONNECTIONS)
                return srt_lib.SRT_REJX_OVERLOAD
        future = asyncio.run_coroutine_threadsafe(self._on_publish(SrtPublish(channel, key, peer)), self._loop)
        try:
            sink = future.result(OPEN_TIMEOUT_S)
        except PublishRefused as exc:
            reason = 1000 + exc.status if exc.status and 400 <= exc.status < 600 else srt_lib.SRT_REJX_GW
            logger.warning("SRT %s: refused (%d): %s", peer, reason, exc.description)
            return reason
        except concurrent.futures.TimeoutError:
            future.cancel()  # WhipRelay.open ends what it opened; one that finished meanwhile:
            future.add_done_callback(self._close_late_sink)
            logger.warning("SRT %s: refused: the service did not answer in %.0f s", peer, OPEN_TIMEOUT_S)
            return srt_lib.SRT_REJX_GW
        with self._lock:
            self._admitted[sock] = sink
        self._loop.call_soon_threadsafe(self._loop.call_later, ACCEPT_TIMEOUT_S, self._expire, sock)
        return 0

    def _close_late_sink(self, future: concurrent.futures.Future[TsSink]) -> None:
        """The session of a caller refused for a late answer, if it was opened after all: end
        it (any thread), so it does not stand as the room's publisher with no media."""
        if future.cancelled() or future.exception() is not None or self._loop is None:
            return
        sink = future.result()
        self._loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(sink.close("the SRT caller was refused: the service answered late")))

    def _expire(self, sock: int) -> None:
        with self._lock:
            sink = self._admitted.pop(sock, None)
        if sink is not None:
            logger.warning("SRT: an admitted caller never completed its handshake")
            asyncio.ensure_future(sink.close("the SRT handshake did not complete"))

    # ------------------------------------------------------------ connections (threads)
    def _start_thread(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=self._run_thread, args=(target, *args), name=name, daemon=True)
        self._threads.add(thread)
        thread.start()

    def _run_thread(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        finally:
            self._threads.discard(threading.current_thread())

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._closing:
            try:
                sock, peer = listener.accept()
            except srt_lib.SrtError:
                return  # the listener was closed
            with self._lock:
                sink = self._admitted.pop(sock, None)
                if sink is not None:
                    self._connected[sock] = sink
            if sink is None:
                listener.close_socket(sock)
                continue
            self._start_thread(self._serve, f"srt-{peer}", sock, peer, sink)

    def _serve(self, sock: int, peer: str, sink: TsSink) -> None:
        listener = self._listener
        loop = self._loop
        assert listener is not None and loop is not None
        logger.info("SRT %s: publishing", peer)
        source = _SrtInput(listener, sock)
        reason = "the encoder disconnected"
        try:
            listener.set_receive_timeout(sock, int(STALL_TIMEOUT_S * 1000))
            reason = self._demux(source, sink, loop, peer) or reason
        except srt_lib.SrtError as exc:
            reason = str(exc)
        except av.error.FFmpegError as exc:
            reason = f"unreadable MPEG-TS ({exc.strerror})"
        except Exception:  # noqa: BLE001 - a bug must still end the session below, not leak it
            logger.exception("SRT %s: the connection failed", peer)
            reason = "an internal error"
        if source.error is not None and source.error.code == srt_lib.SRT_ETIMEOUT:
            reason = f"nothing received for {STALL_TIMEOUT_S:.0f} s"
        with self._lock:
            self._connected.pop(sock, None)
        listener.close_socket(sock)
        logger.info("SRT %s: connection closed (%s)", peer, reason)
        try:
            asyncio.run_coroutine_threadsafe(sink.close(reason), loop).result(STALL_TIMEOUT_S)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("SRT %s: closing the media sink did not finish", peer)

    @staticmethod
    def _demux(source: _SrtInput, sink: TsSink, loop: asyncio.AbstractEventLoop, peer: str) -> str | None:
        """Hand the connection's media to ``sink`` until it ends; why it ended, when it is
        the stream's fault."""
        try:
            container = av.open(source, format="mpegts", options=DEMUX_OPTIONS)
        except av.error.FFmpegError:
            if source.opening and source.received > OPEN_LIMIT_BYTES:
                return f"no MPEG-TS program in the first {OPEN_LIMIT_BYTES >> 20} MiB: send MPEG-TS"
            raise
        source.opening = False
        with container:
            video = next((s for s in container.streams.video if s.codec_context.name == "h264"), None)
            if video is None:
                names = ", ".join(s.codec_context.name for s in container.streams.video) or "none"
                return f"the stream has no H.264 video (video: {names}): send H.264 (AVC)"
            audio = next((s for s in container.streams.audio if s.codec_context.name in ("aac", "opus")), None)
            if audio is None and container.streams.audio:
                logger.warning("SRT %s: audio %s is not supported (send AAC or Opus): video only", peer,
                               container.streams.audio[0].codec_context.name)
            streams = [video] if audio is None else [video, audio]
            for packet in container.demux(streams):
                if packet.size == 0:
                    continue
                if packet.stream is video:
                    pts = packet.pts if packet.pts is not None else packet.dts
                    dts = packet.dts if packet.dts is not None else pts
                    if pts is None or dts is None:
                        continue
                    loop.call_soon_threadsafe(sink.on_ts_video, bytes(packet), pts, dts, packet.is_corrupt)
                else:
                    assert audio is not None
                    duration = int(packet.duration * packet.time_base * 48000) if packet.duration else 960
                    loop.call_soon_threadsafe(sink.on_ts_audio, audio.codec_context.name, bytes(packet), duration)
        return None
