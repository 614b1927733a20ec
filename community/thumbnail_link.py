"""The local link between the thumbnail capturer (in the SFU's process) and the thumbnail
worker process (:mod:`community.thumbnail_worker`).

One connected ``AF_UNIX`` stream socket pair carries the framing of
:mod:`hls_bridge.media_link` (``length (u32, big-endian, counts type + body) | type (1
byte) | body``) with these messages; several captures (one per stream) share the link,
told apart by a capture id (u32)::

    capturer → worker
      CAPTURE b"C"  JSON: {"capture": id, "track": TrackInfo fields (mime_type, clock_rate,
                    channels, parameters), "width": px, "quality": 1..100}
      VIDEO   b"v"  capture (u32) | seq (u16) | timestamp (u32, 90 kHz ticks) | marker (u8)
                    | keyframe (u8) | RTP payload
      CANCEL  b"X"  capture (u32): forget the capture (timed out, or the track ended)

    worker → capturer
      IMAGE   b"I"  capture (u32) | width (u16) | height (u16) | cpu_us (u32) | JPEG bytes
      FAILED  b"F"  capture (u32) | reason (UTF-8)

The capturer sends RTP payloads, not frames: while a capture is open the forwarding
process pays one non-blocking ``write`` per video packet, no more than for one WebRTC
viewer, and the worker reassembles (RFC 3550 §5.1), depacketizes (RFC 7741 VP8, RFC 6184
H.264), decodes and encodes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from hls_bridge.media_link import MAX_FRAME, LinkClosed, decode_media, frame, read_frame
from sfu.direct import MediaPacket

__all__ = [
    "CANCEL", "CAPTURE", "FAILED", "IMAGE", "MAX_FRAME", "VIDEO", "CaptureRequest", "Image",
    "LinkClosed", "ThumbnailError", "cancel", "capture", "decode_capture", "decode_failed", "decode_image",
    "decode_id", "decode_video", "encode_video", "failed", "frame", "image", "read_frame",
]

CAPTURE, VIDEO, CANCEL = b"C", b"v", b"X"
IMAGE, FAILED = b"I", b"F"

_ID = struct.Struct(">I")


class ThumbnailError(Exception):
    """A thumbnail could not be made; the message says why (safe to log)."""


_VIDEO = struct.Struct(">IBI")  # frame header (length, type) + capture id
_MEDIA_HEADER = struct.Struct(">HIBB")  # seq, timestamp, marker, keyframe (media_link's body)
_IMAGE = struct.Struct(">IHHI")  # capture, width, height, cpu_us


@dataclass(frozen=True)
class CaptureRequest:
    """A CAPTURE message.

    :ivar capture: the capture id.
    :ivar track: :class:`sfu.direct.TrackInfo` fields (``mime_type``, ``clock_rate``,
        ``channels``, ``parameters``).
    :ivar width: the JPEG's width, px (never wider than the frame).
    :ivar quality: JPEG quality, 1..100 (libjpeg's scale).
    """

    capture: int
    track: dict[str, Any]
    width: int
    quality: int


@dataclass(frozen=True)
class Image:
    """An IMAGE message: the JPEG of one key frame.

    :ivar cpu_us: the worker's CPU time for it (depacketize, decode, scale, encode), µs.
    """

    capture: int
    width: int
    height: int
    cpu_us: int
    jpeg: bytes


def capture(request: CaptureRequest) -> bytes:
    """A framed CAPTURE message."""
    body = {"capture": request.capture, "track": request.track, "width": request.width,
            "quality": request.quality}
    return frame(CAPTURE, json.dumps(body).encode())


def decode_capture(body: bytes) -> CaptureRequest:
    """:raises LinkClosed: the body is not a CAPTURE object."""
    try:
        data = json.loads(body)
        return CaptureRequest(int(data["capture"]), dict(data["track"]), int(data["width"]),
                              int(data["quality"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise LinkClosed(f"bad CAPTURE message: {exc}") from None


def encode_video(capture_id: int, media: MediaPacket) -> bytes:
    """A framed VIDEO message for one RTP packet of capture ``capture_id`` (one ``bytes``)."""
    payload = media.payload
    header = _VIDEO.pack(len(payload) + 13, VIDEO[0], capture_id)
    return header + _MEDIA_HEADER.pack(media.seq, media.timestamp, 1 if media.marker else 0,
                                       1 if media.keyframe else 0) + payload


def decode_video(body: bytes) -> tuple[int, MediaPacket]:
    """``(capture id, packet)`` of a VIDEO body.  :raises LinkClosed: the body is too short."""
    if len(body) < 12:
        raise LinkClosed(f"VIDEO message of {len(body)} bytes")
    return _ID.unpack_from(body)[0], decode_media(body[4:])


def cancel(capture_id: int) -> bytes:
    """A framed CANCEL message."""
    return frame(CANCEL, _ID.pack(capture_id))


def image(result: Image) -> bytes:
    """A framed IMAGE message."""
    return frame(IMAGE, _IMAGE.pack(result.capture, result.width, result.height,
                                    min(result.cpu_us, 0xFFFF_FFFF)) + result.jpeg)


def decode_image(body: bytes) -> Image:
    """:raises LinkClosed: the body is shorter than its header."""
    if len(body) < _IMAGE.size:
        raise LinkClosed(f"IMAGE message of {len(body)} bytes")
    capture_id, width, height, cpu_us = _IMAGE.unpack_from(body)
    return Image(capture_id, width, height, cpu_us, body[_IMAGE.size:])


def failed(capture_id: int, reason: str) -> bytes:
    """A framed FAILED message (``reason`` cut to 500 characters)."""
    return frame(FAILED, _ID.pack(capture_id) + reason[:500].encode())


def decode_failed(body: bytes) -> tuple[int, str]:
    """``(capture id, reason)``.  :raises LinkClosed: the body is shorter than its id."""
    if len(body) < 4:
        raise LinkClosed(f"FAILED message of {len(body)} bytes")
    return _ID.unpack_from(body)[0], body[4:].decode(errors="replace")


def decode_id(body: bytes) -> int:
    """The capture id of a CANCEL body.  :raises LinkClosed: the body is too short."""
    if len(body) < 4:
        raise LinkClosed(f"CANCEL message of {len(body)} bytes")
    return int(_ID.unpack_from(body)[0])
