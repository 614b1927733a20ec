"""The local media link between a bridge (in the SFU's process) and its transcoder process.

One connected ``AF_UNIX`` stream socket pair per transcoder process carries length-framed
messages both ways::

    frame   = length (u32, big-endian, counts type + body) | type (1 byte) | body

    bridge → transcoder
      CONFIG  b"C"  JSON: {"room", "ladder", "fps", "segment_s", "part_s", "min_rungs",
                    "encoder": {"name", "options"}, "tracks": {kind: TrackInfo fields}}
      VIDEO   b"v"  one RTP packet of the video track: seq (u16) | timestamp (u32, 90 kHz
      AUDIO   b"a"  ticks / 48 kHz for Opus) | marker (u8) | keyframe (u8) | payload
      AAC     b"A"  the same for the publisher's AAC section (MP4A-LATM, 90 kHz ticks)
      END     b"E"  (empty) no more media: flush, end the renditions, exit

    transcoder → bridge
      KEYFRAME b"K" kind (ASCII): ask the publisher for a key frame (RFC 4585 §6.3.1 PLI)
      STORE    b"S" pickle of a list of ``(rendition | None, method, args, kwargs)``:
                    calls on the bridge's :class:`~hls_bridge.store.RoomStore` (``None``)
                    or on one of its renditions, in the order the transcoder made them,
                    applied together (no playlist is served between them)
      REPORT   b"R" JSON: the transcoder's counters (see ``transcoder_main``)
      DONE     b"D" (empty) the renditions ended after END or the end of the input

Media goes as RTP payloads, not decoded frames: the forwarding side does one ``write``
per packet, no more than for one WebRTC viewer, and the transcoder process reassembles,
decodes and encodes.  Both ends are relaycast's own processes (the socket pair is
created by the parent and inherited), so the STORE bodies may be pickles.
"""

from __future__ import annotations

import asyncio
import struct

from sfu.direct import MediaPacket

__all__ = [
    "AAC", "AUDIO", "CONFIG", "DONE", "END", "KEYFRAME", "MAX_FRAME", "REPORT", "STORE", "VIDEO",
    "LinkClosed", "decode_media", "encode_media", "frame", "read_frame",
]

CONFIG, VIDEO, AUDIO, AAC, END = b"C", b"v", b"a", b"A", b"E"
KEYFRAME, STORE, REPORT, DONE = b"K", b"S", b"R", b"D"
MEDIA_TYPES = {"video": VIDEO, "audio": AUDIO, "aac": AAC}

MAX_FRAME = 64 * 1024 * 1024
"""Largest frame accepted (bytes): a 4K key-frame part is a few MB."""

_HEADER = struct.Struct(">IB")
_MEDIA = struct.Struct(">IBHIBB")  # frame header + seq, timestamp, marker, keyframe


class LinkClosed(Exception):
    """The other end closed the link, or sent a frame that breaks the framing."""


def frame(kind: bytes, body: bytes = b"") -> bytes:
    """One framed message of type ``kind`` (one of the module's type constants)."""
    return _HEADER.pack(len(body) + 1, kind[0]) + body


def encode_media(kind: bytes, media: MediaPacket) -> bytes:
    """A VIDEO or AUDIO frame for ``media`` (header and payload in one ``bytes``)."""
    payload = media.payload
    return _MEDIA.pack(len(payload) + 9, kind[0], media.seq, media.timestamp,
                       1 if media.marker else 0, 1 if media.keyframe else 0) + payload


def decode_media(body: bytes) -> MediaPacket:
    """The :class:`~sfu.direct.MediaPacket` in a VIDEO/AUDIO body.

    :raises LinkClosed: the body is shorter than its fixed header (8 bytes).
    """
    if len(body) < 8:
        raise LinkClosed(f"media frame of {len(body)} bytes")
    seq, timestamp, marker, keyframe = struct.unpack_from(">HIBB", body)
    return MediaPacket(seq, timestamp, marker, body[8:], bool(keyframe), None)


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next ``(type, body)``.

    :raises LinkClosed: at the end of the stream, or on a frame longer than MAX_FRAME or
        shorter than its type byte.
    """
    try:
        header = await reader.readexactly(_HEADER.size)
        length, kind = _HEADER.unpack(header)
        if not 1 <= length <= MAX_FRAME:
            raise LinkClosed(f"frame length {length}")
        body = await reader.readexactly(length - 1) if length > 1 else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise LinkClosed(str(exc) or type(exc).__name__) from None
    return bytes([kind]), body
