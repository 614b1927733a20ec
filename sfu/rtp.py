"""Wire-level RTP helpers for the forwarding path (RFC 3550, RFC 8285, RFC 7741, RFC 6184).

Everything here works on bytes and ints; nothing decodes media.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def sender_elements(extensions: Mapping[str, int], mid: str | None) -> tuple[bytes, bytes]:
    """What a sender puts in every packet's one-byte header extension (RFC 8285 §4.2), from
    the negotiated ``extensions`` (URI → id): the ``mid`` element (RFC 8843 §15; ``b""``
    unless negotiated with an id 1–14 and ``mid`` given) and the abs-send-time element's
    header byte (``b""`` unless negotiated; its 3 bytes, :func:`abs_send_time_now`, follow
    per packet)."""
    mid_id = extensions.get(URI_MID, 0)
    mid_element = b""
    if mid and 1 <= mid_id <= 14:
        value = mid.encode()
        mid_element = bytes(((mid_id << 4) | (len(value) - 1),)) + value
    ast_id = extensions.get(URI_ABS_SEND_TIME, 0)
    return mid_element, bytes(((ast_id << 4) | 2,)) if 1 <= ast_id <= 14 else b""


def abs_send_time_now() -> bytes:
    """abs-send-time: 6.18 fixed-point seconds of the NTP clock, 24 bits."""
    ntp = int((time.time() + 2208988800) * (1 << 18))
    return (ntp & 0xFFFFFF).to_bytes(3, "big")


def vp8_is_keyframe_start(payload: bytes) -> bool:
    """True when ``payload`` starts a VP8 key frame (RFC 7741 §4.2-4.3)."""
    if len(payload) < 2:
        return False
    first = payload[0]
    start = first & 0x10
    partition = first & 0x07
    if not start or partition != 0:
        return False
    pos = 1
    if first & 0x80:  # X
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id
            if pos >= len(payload):
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            pos += 1
    if pos >= len(payload):
        return False
    return (payload[pos] & 0x01) == 0  # P bit of the VP8 payload header: 0 = key frame


_H264_KEY_NALS = (5, 7)  # IDR slice, SPS


def h264_is_keyframe_start(payload: bytes) -> bool:
    """True when ``payload`` carries an SPS or the start of an IDR slice (RFC 6184 §5)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in _H264_KEY_NALS:
        return True
    if nal_type == 24:  # STAP-A
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            if pos + 2 >= len(payload):
                break
            if payload[pos + 2] & 0x1F in _H264_KEY_NALS:
                return True
            pos += 2 + size
        return False
    if nal_type == 28 and len(payload) > 1:  # FU-A
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) in _H264_KEY_NALS
    return False


def is_keyframe_start(mime_type: str, payload: bytes) -> bool:
    """Keyframe detection by codec; audio packets are always 'key'."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_is_keyframe_start(payload)
    if mime == "video/h264":
        return h264_is_keyframe_start(payload)
    return not mime.startswith("video/")


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` is newer than ``b`` (RFC 1982 arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000
