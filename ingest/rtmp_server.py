"""An RTMP publishing endpoint (Adobe RTMP specification 1.0: §5.2 handshake, §7.2 NetConnection
and NetStream commands) for encoders: OBS ("Custom" service, ``rtmp://HOST/live`` + stream
key), FFmpeg (``-f flv rtmp://HOST/live/KEY``), hardware encoders.

One :class:`RtmpServer` listens; per connection it does the plain handshake (no digest:
FFmpeg and librtmp-based encoders accept it), answers ``connect`` / ``releaseStream`` /
``FCPublish`` / ``createStream``, and on ``publish`` asks its ``on_publish`` callback for a
:class:`MediaSink` — the callback checks the stream key and may refuse
(:class:`PublishRefused`: the encoder gets an ``onStatus`` error with the reason, the
connection closes).  Then every video and audio message goes to the sink as a parsed FLV tag
(:mod:`ingest.flv`), with the message timestamp (ms).

Failure is per connection: a malformed chunk stream or tag, an unsupported codec (Enhanced
RTMP HEVC/AV1), more than :data:`STALL_TIMEOUT_S` without a byte from the encoder — each ends
that connection alone, with one log line; the sink's ``close(reason)`` is always called once
a sink was made.  The stream key (the publishing name) is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import amf0, flv
from .rtmp_chunks import (
    ACKNOWLEDGEMENT,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkError,
    ChunkReader,
    ChunkWriter,
    Message,
    read_exactly,
)

logger = logging.getLogger(__name__)

HANDSHAKE_SIZE = 1536
STALL_TIMEOUT_S = 10.0
"""An encoder that sends nothing for this long is disconnected (a stalled encoder)."""
OUT_CHUNK_SIZE = 4096
WINDOW_BYTES = 2_500_000
_STREAM_ID = 1


class PublishRefused(Exception):
    """Raised by ``on_publish`` to refuse: ``code`` is the NetStream status code sent to the
    encoder (``NetStream.Publish.BadName`` for a wrong key), ``description`` the reason it
    shows (never the key), ``status`` the service's HTTP status when it answered (401, 403,
    404, 409, 503; None when it could not be reached) — SRT sends 1000 + it as the
    rejection reason."""

    def __init__(self, description: str, code: str = "NetStream.Publish.BadName",
                 status: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """What an encoder asked to publish: ``app`` (``live`` in ``rtmp://HOST/live``), ``key``
    (the publishing name: the stream key — never log it), ``tc_url`` (the URL it connected
    to), ``peer`` (``host:port``)."""

    app: str
    key: str
    tc_url: str
    peer: str


class MediaSink(Protocol):
    """Where a publishing connection's media goes (one per ``publish``)."""

    async def on_video(self, timestamp_ms: int, tag: flv.VideoTag) -> None: ...

    async def on_audio(self, timestamp_ms: int, tag: flv.AudioTag) -> None: ...

    async def on_metadata(self, metadata: dict[str, Any]) -> None: ...

    async def close(self, reason: str) -> None:
        """The connection ended (``reason``: ``"unpublished"``, ``"disconnected"``,
        ``"timed out"``, or what was wrong with the input)."""


OnPublish = Callable[[PublishRequest], Awaitable[MediaSink]]


class RtmpConnection:
    """One encoder's connection (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_publish: OnPublish) -> None:
        self._writer = writer
        self._on_publish = on_publish
        self._read = read_exactly(reader, STALL_TIMEOUT_S)
        self._chunks = ChunkReader(self._read)
        self._out = ChunkWriter(self._write)
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.app = ""
        self.tc_url = ""
        self.sink: MediaSink | None = None
        self._window = WINDOW_BYTES
        self._acked = 0

    async def run(self) -> None:
        """Serve the connection until it ends; never raises (but for cancellation)."""
        reason = "disconnected"
        try:
            await self._handshake()
            while True:
                message = await self._chunks.message()
                self._acknowledge()
                if not await self._handle(message):
                    reason = "unpublished"
                    break
                await self._flush()
        except PublishRefused as exc:
            reason = f"refused: {exc.description}"
        except flv.UnsupportedCodec as exc:
            reason = str(exc)
            self._status("error", "NetStream.Publish.Rejected", str(exc))
            logger.warning("RTMP %s: %s", self.peer, exc)
        except (ChunkError, flv.FlvError, amf0.AmfError) as exc:
            reason = f"malformed input: {exc}"
            logger.warning("RTMP %s: %s; connection closed", self.peer, exc)
        except TimeoutError:
            reason = "timed out"
            logger.warning("RTMP %s: nothing received for %.0f s; connection closed", self.peer, STALL_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            logger.debug("RTMP %s: connection ended (%r)", self.peer, exc)
        finally:
            if self.sink is not None:
                sink, self.sink = self.sink, None
                try:
                    await sink.close(reason)
                except Exception:  # noqa: BLE001 — one sink's failure ends only its session
                    logger.exception("RTMP %s: closing the media sink failed", self.peer)
            with contextlib.suppress(Exception):
                self._writer.close()
                await self._writer.wait_closed()

    async def _handshake(self) -> None:
        """§5.2: C0+C1 → S0+S1+S2 → C2 (plain handshake: S2 echoes C1)."""
        read = self._read
        c0c1 = await read(1 + HANDSHAKE_SIZE)
        if c0c1[0] != 3:
            raise ChunkError(f"RTMP version {c0c1[0]} (only 3 is RTMP)")
        s1 = bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)
        self._writer.write(b"\x03" + s1 + c0c1[1:])
        await self._writer.drain()
        await read(HANDSHAKE_SIZE)  # C2: echoes S1; not checked (encoders do not all match it)

    def _write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def _flush(self) -> None:
        """Wait until the transport took what we wrote.

        An encoder that closed its connection is not an error here: over TLS, asyncio loses
        the connection at the encoder's close (TLS has no half-close) while what it sent
        before is still in the reader's buffer. That is read to its end (the encoder's last
        frames and ``deleteStream``), and the end of it ends the session.
        """
        if self._writer.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def _acknowledge(self) -> None:
        """§5.4.3: an Acknowledgement each time the window's worth of bytes arrived."""
        total = self._chunks.bytes_read
        if total - self._acked >= self._window:
            self._acked = total
            self._out.control(ACKNOWLEDGEMENT, struct.pack("!I", total & 0xFFFFFFFF))

    async def _handle(self, message: Message) -> bool:
        """Act on one message; False when the encoder unpublished."""
        type_id = message.type_id
        if type_id == VIDEO:
            if self.sink is not None and message.payload:
                await self.sink.on_video(message.timestamp, flv.parse_video_tag(message.payload))
        elif type_id == AUDIO:
            if self.sink is not None and message.payload:
                await self.sink.on_audio(message.timestamp, flv.parse_audio_tag(message.payload))
        elif type_id in (COMMAND_AMF0, COMMAND_AMF3):
            payload = message.payload[1:] if type_id == COMMAND_AMF3 else message.payload
            return await self._command(amf0.decode_all(payload))
        elif type_id == DATA_AMF0:
            values = amf0.decode_all(message.payload)
            if values and values[0] == "@setDataFrame":
                values = values[1:]
            if (self.sink is not None and len(values) >= 2 and values[0] == "onMetaData"
                    and isinstance(values[1], dict)):
                await self.sink.on_metadata(values[1])
        elif type_id == WINDOW_ACK_SIZE and len(message.payload) >= 4:
            self._window = max(1, int.from_bytes(message.payload[:4], "big"))
        return True

    async def _command(self, values: list[Any]) -> bool:
        if len(values) < 2 or not isinstance(values[0], str):
            raise amf0.AmfError("a command without a name and transaction id")
        name, txn = values[0], values[1] if isinstance(values[1], float) else 0.0
        if name == "connect":
            options = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
            self.app = str(options.get("app", "")).strip("/")
            self.tc_url = str(options.get("tcUrl", ""))
            self._out.control(WINDOW_ACK_SIZE, struct.pack("!I", WINDOW_BYTES))
            self._out.control(SET_PEER_BANDWIDTH, struct.pack("!IB", WINDOW_BYTES, 2))
            self._out.set_chunk_size(OUT_CHUNK_SIZE)
            self._out.control(USER_CONTROL, struct.pack("!HI", 0, 0))  # Stream Begin 0
            self._result(txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                         {"level": "status", "code": "NetConnection.Connect.Success",
                          "description": "Connection succeeded.", "objectEncoding": 0})
        elif name == "createStream":
            self._result(txn, None, float(_STREAM_ID))
        elif name in ("releaseStream", "FCPublish"):
            self._result(txn, None, None)
        elif name == "publish":
            await self._publish(values)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            return self.sink is None
        return True

    async def _publish(self, values: list[Any]) -> None:
        key = values[3] if len(values) > 3 and isinstance(values[3], str) else ""
        if self.sink is not None:
            raise PublishRefused("this connection is already publishing", "NetStream.Publish.BadName")
        # OBS and FFmpeg put the key after the app (rtmp://HOST/live + key): a "?query" after
        # it is not part of the key.
        key = key.split("?", 1)[0]
        request = PublishRequest(self.app, key, self.tc_url, self.peer)
        try:
            self.sink = await self._on_publish(request)
        except PublishRefused as exc:
            self._status("error", exc.code, exc.description)
            await self._flush()
            logger.info("RTMP %s: publish to app %r refused: %s", self.peer, self.app, exc.description)
            raise
        self._out.control(USER_CONTROL, struct.pack("!HI", 0, _STREAM_ID))  # Stream Begin 1
        self._status("status", "NetStream.Publish.Start", "Publishing.")

    def _result(self, txn: float, *values: Any) -> None:
        self._out.send(COMMAND_AMF0, 0, amf0.encode_all("_result", txn, *values))

    def _status(self, level: str, code: str, description: str) -> None:
        self._out.send(COMMAND_AMF0, _STREAM_ID, amf0.encode_all(
            "onStatus", 0.0, None, {"level": level, "code": code, "description": description}))


class RtmpServer:
    """Listens for encoders on ``host:port`` (``port`` 0: any free one, see :attr:`port`);
    each connection is an :class:`RtmpConnection` calling ``on_publish``.  ``ssl``: an
    ``ssl.SSLContext`` for RTMPS."""

    def __init__(self, on_publish: OnPublish, host: str = "127.0.0.1", port: int = 1935,
                 ssl: Any = None) -> None:
        self._on_publish = on_publish
        self.host = host
        self.port = port
        self._ssl = ssl
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen.  :raises OSError: the address is in use or not ours."""
        self._server = await asyncio.start_server(self._client, self.host, self.port, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("RTMP ingest listening on %s:%d", self.host, self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await RtmpConnection(reader, writer, self._on_publish).run()
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and end every connection (their sinks are closed)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
