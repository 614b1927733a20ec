"""The bridge ↔ transcoder media link's framing (unit)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hls_bridge import media_link as link
from sfu.direct import MediaPacket


@given(seq=st.integers(0, 0xFFFF), ts=st.integers(0, 0xFFFF_FFFF), marker=st.integers(0, 1),
       keyframe=st.booleans(), payload=st.binary(max_size=1500))
def test_media_round_trips(seq: int, ts: int, marker: int, keyframe: bool, payload: bytes) -> None:
    data = link.encode_media(link.VIDEO, MediaPacket(seq, ts, marker, payload, keyframe, None))

    async def read() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data + link.frame(link.END))
        reader.feed_eof()
        first = await link.read_frame(reader)
        assert await link.read_frame(reader) == (link.END, b"")
        with pytest.raises(link.LinkClosed):
            await link.read_frame(reader)
        return first

    kind, body = asyncio.run(read())
    media = link.decode_media(body)
    assert kind == link.VIDEO
    assert (media.seq, media.timestamp, media.marker, media.keyframe, media.payload) == (
        seq, ts, marker, keyframe, payload)


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00\x00v",  # a frame must hold at least its type byte
    (link.MAX_FRAME + 1).to_bytes(4, "big") + b"S",  # longer than any frame we send
    b"\x00\x00\x00\x09v\x00",  # cut short
])
def test_broken_framing_closes_the_link(data: bytes) -> None:
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        await link.read_frame(reader)

    with pytest.raises(link.LinkClosed):
        asyncio.run(read())
    with pytest.raises(link.LinkClosed):
        link.decode_media(b"\x00" * 7)
