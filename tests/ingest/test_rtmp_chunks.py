"""The RTMP chunk stream: what ChunkWriter splits, ChunkReader assembles again — at any chunk
size, interleaved, with extended timestamps and the header types encoders use — and a peer
past a limit is refused with a ChunkError."""

from __future__ import annotations

import asyncio
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import rtmp_chunks as rc


def _reader(data: bytes) -> rc.ChunkReader:
    stream = io.BytesIO(data)

    async def read(n: int) -> bytes:
        out = stream.read(n)
        if len(out) < n:
            raise asyncio.IncompleteReadError(out, n)
        return out

    return rc.ChunkReader(read)


async def _messages(data: bytes, count: int, chunk_size: int = 128) -> list[rc.Message]:
    reader = _reader(data)
    reader.chunk_size = chunk_size
    return [await reader.message() for _ in range(count)]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=600), st.lists(
    st.tuples(st.sampled_from([rc.VIDEO, rc.AUDIO, rc.DATA_AMF0]), st.binary(max_size=1500),
              st.integers(min_value=0, max_value=0xFFFFFFFF)), min_size=1, max_size=6))
def test_what_the_writer_splits_the_reader_assembles(chunk_size: int, messages: list[tuple[int, bytes, int]]) -> None:
    out = bytearray()
    writer = rc.ChunkWriter(out.extend)
    writer.chunk_size = chunk_size
    for type_id, payload, timestamp in messages:
        writer.send(type_id, 1, payload, timestamp)
    got = asyncio.run(_messages(bytes(out), len(messages), chunk_size))
    assert [(m.type_id, m.stream_id, m.payload, m.timestamp) for m in got] == \
        [(t, 1, p, ts) for t, p, ts in messages]


def test_interleaved_chunk_streams_and_header_types() -> None:
    """Audio on chunk stream 4 interleaved into a video message on 6; type-1/2/3 headers
    carry timestamp deltas (a type 3 starting a message repeats the last delta)."""
    video = bytes(range(200))
    data = (
        b"\x06" + (1000).to_bytes(3, "big") + (200).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little")
        + video[:128]
        + b"\x04" + (1000).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x08" + (1).to_bytes(4, "little") + b"aac"
        + b"\xc6" + video[128:]
        + b"\x46" + (33).to_bytes(3, "big") + (2).to_bytes(3, "big") + b"\x09" + b"v2"  # type 1: delta 33
        + b"\x86" + (34).to_bytes(3, "big") + b"v3"  # type 2: delta 34, same length
        + b"\xc6" + b"v4"  # type 3 starting a message: delta 34 again
    )
    got = asyncio.run(_messages(data, 5))
    assert [(m.type_id, m.timestamp, m.payload) for m in got] == [
        (rc.AUDIO, 1000, b"aac"), (rc.VIDEO, 1000, video), (rc.VIDEO, 1033, b"v2"), (rc.VIDEO, 1067, b"v3"),
        (rc.VIDEO, 1101, b"v4")]


def test_extended_timestamps_also_on_type_3_continuations() -> None:
    out = bytearray()
    writer = rc.ChunkWriter(out.extend)
    writer.send(rc.VIDEO, 1, bytes(300), 0x01000000)  # 4.66 h into a stream
    stamp = (0x01000000).to_bytes(4, "big")
    assert out[1:4] == b"\xff\xff\xff" and out[12:16] == stamp  # the type-0 header's
    assert out.count(b"\xc3" + stamp) == 2  # and both type-3 continuations carry it
    (message,) = asyncio.run(_messages(bytes(out), 1))
    assert message.timestamp == 0x01000000 and message.payload == bytes(300)


def test_set_chunk_size_is_applied() -> None:
    out = bytearray()
    writer = rc.ChunkWriter(out.extend)
    writer.set_chunk_size(4096)
    writer.send(rc.VIDEO, 1, bytes(5000))
    got = asyncio.run(_messages(bytes(out), 2))
    assert got[0].type_id == rc.SET_CHUNK_SIZE and got[1].payload == bytes(5000)


@pytest.mark.parametrize(("data", "match"), [
    (b"\x46" + bytes(7), "before any type-0"),
    (b"\x02" + bytes(3) + (4).to_bytes(3, "big") + b"\x01" + bytes(4) + (0).to_bytes(4, "big"), "chunk size 0"),
    (b"\x02" + bytes(3) + (4).to_bytes(3, "big") + b"\x01" + bytes(4) + (1 << 30).to_bytes(4, "big"), "chunk size"),
])
def test_a_peer_past_a_limit_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(rc.ChunkError, match=match):
        asyncio.run(_messages(data, 1))


def test_too_many_messages_in_progress_is_refused() -> None:
    data = b"".join(bytes((csid,)) + bytes(3) + (1000).to_bytes(3, "big") + b"\x09" + bytes(4) + bytes(128)
                    for csid in range(3, 3 + rc.MAX_PARTIAL_STREAMS + 1))
    with pytest.raises(rc.ChunkError, match="in progress"):
        asyncio.run(_messages(data, 1))
