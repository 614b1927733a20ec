"""The RTMP chunk stream (Adobe "Real-Time Messaging Protocol" specification 1.0, 2012:
§5.3 chunking, §5.4 protocol control messages): :class:`ChunkReader` assembles messages
from the chunks a peer sends, :class:`ChunkWriter` splits messages into chunks.

A *message* is ``(type id, message stream id, timestamp ms, payload)``; the chunk stream
ids only multiplex.  The reader honours the peer's Set Chunk Size and Abort, extended
timestamps (§5.3.1.3, also on type-3 chunks that continue or repeat a message whose header
had one), and is bounded: a message longer than :data:`MAX_MESSAGE_BYTES`, more than
:data:`MAX_PARTIAL_STREAMS` chunk streams with a message in progress, or a chunk size
outside 1..:data:`MAX_CHUNK_SIZE` raise :class:`ChunkError` (the connection ends; nothing
else is affected).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, USER_CONTROL = 1, 2, 3, 4
WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 5, 6
AUDIO, VIDEO = 8, 9
DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0, AGGREGATE = 15, 17, 18, 20, 22

MAX_MESSAGE_BYTES = 16 * 1024 * 1024 - 1
"""The 24-bit message length field's own limit: one 4K key frame fits."""
MAX_CHUNK_SIZE = 1 << 24
"""Chunk sizes a peer may set (the specification allows up to 2^31 − 1; encoders use 4,096
to 65,536)."""
MAX_PARTIAL_STREAMS = 16
"""Chunk streams with a message half received at once (encoders use 3–6)."""
_EXTENDED = 0xFFFFFF


class ChunkError(ValueError):
    """A chunk stream this reader will not follow (malformed, or past a limit)."""


@dataclass(slots=True)
class Message:
    """One RTMP message: ``type_id`` (§5.4, §7.1), ``stream_id`` (message stream),
    ``timestamp`` (ms, 32 bits, wrapping), ``payload``."""

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes


class _Stream:
    """One chunk stream's state: the last header's fields and the message in progress."""

    __slots__ = ("timestamp", "delta", "length", "type_id", "stream_id", "extended", "buffer", "started")

    def __init__(self) -> None:
        self.timestamp = self.delta = self.length = self.type_id = self.stream_id = 0
        self.extended = False
        self.buffer = bytearray()
        self.started = False  # a type-0 header was seen (types 1–3 need one before them)


class ChunkReader:
    """Messages from a peer's chunk stream (see the module docstring).

    :param read: ``read(n)`` → exactly ``n`` bytes (raises ``asyncio.IncompleteReadError``
        at the end of the stream, ``TimeoutError`` when the caller's deadline passes).
    """

    def __init__(self, read: Callable[[int], Awaitable[bytes]]) -> None:
        self._read = read
        self.chunk_size = 128  # §5.4.1: until the peer sets another
        self._streams: dict[int, _Stream] = {}
        self.bytes_read = 0

    async def _bytes(self, n: int) -> bytes:
        data = await self._read(n)
        self.bytes_read += n
        return data

    async def message(self) -> Message:
        """The next complete message (protocol control messages 1 and 2 are applied here
        and returned too).

        :raises ChunkError: see the module docstring.
        :raises asyncio.IncompleteReadError: the peer closed the connection."""
        while True:
            message = await self._chunk()
            if message is None:
                continue
            if message.type_id == SET_CHUNK_SIZE:
                if len(message.payload) < 4:
                    raise ChunkError("Set Chunk Size message shorter than 4 bytes")
                size = int.from_bytes(message.payload[:4], "big") & 0x7FFFFFFF
                if not 1 <= size <= MAX_CHUNK_SIZE:
                    raise ChunkError(f"chunk size {size} outside 1..{MAX_CHUNK_SIZE}")
                self.chunk_size = size
            elif message.type_id == ABORT and len(message.payload) >= 4:
                stream = self._streams.get(int.from_bytes(message.payload[:4], "big"))
                if stream is not None:
                    stream.buffer.clear()
            return message

    async def _chunk(self) -> Message | None:
        first = (await self._bytes(1))[0]
        fmt, csid = first >> 6, first & 0x3F
        if csid == 0:
            csid = (await self._bytes(1))[0] + 64
        elif csid == 1:
            low, high = await self._bytes(2)
            csid = high * 256 + low + 64
        stream = self._streams.get(csid)
        if stream is None:
            if len(self._streams) >= 4 * MAX_PARTIAL_STREAMS:
                raise ChunkError("too many chunk streams")
            stream = self._streams[csid] = _Stream()
        new_message = not stream.buffer
        if fmt == 0:
            header = await self._bytes(11)
            stamp = int.from_bytes(header[0:3], "big")
            stream.length = int.from_bytes(header[3:6], "big")
            stream.type_id = header[6]
            stream.stream_id = int.from_bytes(header[7:11], "little")
            stream.extended = stamp == _EXTENDED
            if stream.extended:
                stamp = int.from_bytes(await self._bytes(4), "big")
            # §5.3.1.2.4: a type-3 chunk starting a message after a type-0 one repeats its
            # timestamp field as the delta (as FFmpeg's rtmppkt.c reads it too).
            stream.timestamp, stream.delta = stamp, stamp
            stream.started = True
            if not new_message:
                raise ChunkError("type-0 chunk header inside a message")
        elif not stream.started:
            raise ChunkError(f"type-{fmt} chunk on chunk stream {csid} before any type-0 header")
        elif fmt in (1, 2):
            header = await self._bytes(7 if fmt == 1 else 3)
            delta = int.from_bytes(header[0:3], "big")
            if fmt == 1:
                stream.length = int.from_bytes(header[3:6], "big")
                stream.type_id = header[6]
            stream.extended = delta == _EXTENDED
            if stream.extended:
                delta = int.from_bytes(await self._bytes(4), "big")
            if not new_message:
                raise ChunkError(f"type-{fmt} chunk header inside a message")
            stream.delta = delta
            stream.timestamp = (stream.timestamp + delta) & 0xFFFFFFFF
        else:  # type 3: continues the message in progress, or repeats the last header
            if stream.extended:
                await self._bytes(4)  # §5.3.1.3: the same extended timestamp again
            if new_message:
                stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
        if stream.length > MAX_MESSAGE_BYTES:
            raise ChunkError(f"message of {stream.length} bytes is over the limit")
        if new_message and sum(1 for s in self._streams.values() if s.buffer) >= MAX_PARTIAL_STREAMS:
            raise ChunkError("too many messages in progress at once")
        take = min(self.chunk_size, stream.length - len(stream.buffer))
        if take:
            stream.buffer += await self._bytes(take)
        if len(stream.buffer) < stream.length:
            return None
        payload = bytes(stream.buffer)
        stream.buffer.clear()
        return Message(stream.type_id, stream.stream_id, stream.timestamp, payload)


class ChunkWriter:
    """Messages to the peer as chunks: a type-0 header, then type-3 continuations, on chunk
    stream 2 for protocol control (§5.4) and 3 for the rest."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self.chunk_size = 128

    def send(self, type_id: int, stream_id: int, payload: bytes, timestamp: int = 0) -> None:
        csid = 2 if type_id in (SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, USER_CONTROL,
                                 WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH) else 3
        extended = timestamp >= _EXTENDED
        header = bytes((csid,)) + (min(timestamp, _EXTENDED)).to_bytes(3, "big") \
            + len(payload).to_bytes(3, "big") + bytes((type_id,)) + stream_id.to_bytes(4, "little")
        stamp = timestamp.to_bytes(4, "big") if extended else b""
        out = bytearray(header + stamp)
        for pos in range(0, max(len(payload), 1), self.chunk_size):
            if pos:
                out += bytes((0xC0 | csid,)) + stamp
            out += payload[pos:pos + self.chunk_size]
        self._write(bytes(out))

    def set_chunk_size(self, size: int) -> None:
        """Tell the peer (§5.4.1) and use ``size`` from the next message on."""
        self.send(SET_CHUNK_SIZE, 0, struct.pack("!I", size))
        self.chunk_size = size

    def control(self, type_id: int, payload: bytes) -> None:
        self.send(type_id, 0, payload)


READ_SIZE = 65536
"""Bytes asked of the socket per read: a second of a 500 kbit/s stream, or a few chunks."""


class _BufferedRead:
    """``read(n)`` over a stream reader from a local buffer, refilled :data:`READ_SIZE`
    bytes at a time: one socket read and one deadline per refill instead of per header
    field (see :func:`read_exactly`)."""

    __slots__ = ("_reader", "_timeout_s", "_buffer", "_pos")

    def __init__(self, reader: asyncio.StreamReader, timeout_s: float) -> None:
        self._reader = reader
        self._timeout_s = timeout_s
        self._buffer = bytearray()
        self._pos = 0

    async def __call__(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end <= len(self._buffer):
            self._pos = end
            return bytes(self._buffer[pos:end])
        buffer = self._buffer
        del buffer[:pos]
        self._pos = 0
        while len(buffer) < n:
            async with asyncio.timeout(self._timeout_s):
                data = await self._reader.read(READ_SIZE)
            if not data:
                raise asyncio.IncompleteReadError(bytes(buffer), n)
            buffer += data
        self._pos = n
        return bytes(buffer[:n])


def read_exactly(reader: asyncio.StreamReader, timeout_s: float) -> Callable[[int], Awaitable[bytes]]:
    """``read(n)`` → exactly ``n`` bytes of ``reader``; ``TimeoutError`` when nothing at all
    arrived for ``timeout_s`` while bytes were still wanted (a stalled encoder is timed
    out), ``asyncio.IncompleteReadError`` at the end of the stream.  It reads ahead: use
    one for the whole connection (handshake included), never two on one reader."""
    return _BufferedRead(reader, timeout_s)
