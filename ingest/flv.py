"""FLV tag bodies as RTMP carries them (video message type 9, audio type 8): H.264 (AVC) and
AAC — Adobe "Video File Format Specification" v10.1 §E.4.2.1 (VIDEODATA, AVCVIDEOPACKET),
§E.4.3.1 (AUDIODATA, AACAUDIODATA); the AVC decoder configuration record of ISO/IEC
14496-15 §5.2.4.1; the AAC AudioSpecificConfig of ISO/IEC 14496-3 §1.6.2.1.  Enhanced RTMP
(veovera "Enhanced RTMP" v1: an ``IsExHeader`` bit and a FourCC — HEVC, AV1, VP9) is
recognised and refused with :class:`UnsupportedCodec`.

Everything here is pure parsing; malformed input raises :class:`FlvError` (a
``ValueError``), never anything else (hypothesis-fuzzed).
"""

from __future__ import annotations

from dataclasses import dataclass

AVC_CODEC_ID = 7
AAC_SOUND_FORMAT = 10
_EX_HEADER = 0x80
_FOURCC_NAMES = {b"hvc1": "HEVC", b"av01": "AV1", b"vp09": "VP9", b"avc1": "H.264 (enhanced)"}
_VIDEO_CODECS = {2: "Sorenson H.263", 3: "Screen video", 4: "On2 VP6", 5: "On2 VP6 alpha",
                 6: "Screen video 2", 12: "HEVC (non-standard FLV id 12)"}
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025,
              8000, 7350)


class FlvError(ValueError):
    """A malformed FLV video or audio tag body."""


class UnsupportedCodec(FlvError):
    """Media this ingest does not take (yet); the message says what was sent and what to send."""


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """An AVCDecoderConfigurationRecord: ``profile`` (profile_idc: 66 baseline, 77 main,
    100 high), ``level`` (level_idc × 10), ``length_size`` (bytes of each NAL unit's length
    prefix in the frames, 1–4), the SPS and PPS NAL units (without start codes)."""

    profile: int
    level: int
    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class VideoTag:
    """One AVC video tag: ``kind`` ``"config"`` (the decoder configuration record in
    ``data``), ``"frame"`` (length-prefixed NAL units of one access unit in ``data``) or
    ``"end"`` (end of sequence); ``keyframe`` from the FLV frame type; ``composition_ms`` the
    composition time offset (pts − dts, ms): non-zero only when frames are reordered
    (B-frames)."""

    kind: str
    keyframe: bool
    composition_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AudioTag:
    """One AAC audio tag: ``kind`` ``"config"`` (an AudioSpecificConfig in ``data``) or
    ``"frame"`` (one raw AAC frame)."""

    kind: str
    data: bytes


@dataclass(frozen=True, slots=True)
class AacConfig:
    """An AudioSpecificConfig: ``object_type`` (2 = AAC-LC), ``sample_rate`` (Hz),
    ``channels`` (channel configuration 1–7; 0: given elsewhere)."""

    object_type: int
    sample_rate: int
    channels: int


def parse_video_tag(body: bytes) -> VideoTag:
    """The body of an RTMP video message (an FLV VIDEODATA).

    :raises UnsupportedCodec: Enhanced RTMP (HEVC/AV1/VP9 FourCCs) or a codec other than AVC.
    :raises FlvError: too short, or an unknown AVC packet type."""
    if not body:
        raise FlvError("empty video tag")
    first = body[0]
    if first & _EX_HEADER:
        fourcc = body[1:5]
        name = _FOURCC_NAMES.get(fourcc, repr(fourcc.decode("latin-1")))
        raise UnsupportedCodec(f"Enhanced RTMP video ({name}) is not supported yet: send H.264 (AVC)")
    codec = first & 0x0F
    if codec != AVC_CODEC_ID:
        name = _VIDEO_CODECS.get(codec, f"FLV codec id {codec}")
        raise UnsupportedCodec(f"video codec {name} is not supported: send H.264 (AVC)")
    if len(body) < 5:
        raise FlvError("AVC video tag shorter than its 5-byte header")
    packet_type = body[1]
    composition = int.from_bytes(body[2:5], "big", signed=True)
    keyframe = (first >> 4) == 1
    if packet_type == 0:
        return VideoTag("config", keyframe, 0, body[5:])
    if packet_type == 1:
        return VideoTag("frame", keyframe, composition, body[5:])
    if packet_type == 2:
        return VideoTag("end", keyframe, 0, b"")
    raise FlvError(f"unknown AVC packet type {packet_type}")


def parse_avc_config(data: bytes) -> AvcConfig:
    """An AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1).

    :raises FlvError: truncated, a version other than 1, or no SPS/PPS."""
    if len(data) < 7 or data[0] != 1:
        raise FlvError("not an AVC decoder configuration record (version 1)")
    profile, level = data[1], data[3]
    length_size = (data[4] & 0x03) + 1
    pos = 5
    sets: list[tuple[bytes, ...]] = []
    for mask in (0x1F, 0xFF):  # numOfSequenceParameterSets (5 bits), numOfPictureParameterSets
        if pos >= len(data):
            raise FlvError("AVC configuration record truncated")
        count = data[pos] & mask
        pos += 1
        units = []
        for _ in range(count):
            if pos + 2 > len(data):
                raise FlvError("AVC configuration record truncated")
            size = int.from_bytes(data[pos:pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > len(data):
                raise FlvError("AVC parameter set truncated")
            units.append(data[pos:pos + size])
            pos += size
        sets.append(tuple(units))
    if not sets[0] or not sets[1]:
        raise FlvError("AVC configuration record without SPS or PPS")
    return AvcConfig(profile, level, length_size, sets[0], sets[1])


def split_nalus(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of a length-prefixed access unit (``length_size`` 1–4 bytes each).

    :raises FlvError: a length that runs past the end, or an empty NAL unit."""
    nalus = []
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise FlvError("NAL unit length prefix truncated")
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(data):
            raise FlvError("NAL unit length runs past the frame")
        nalus.append(data[pos:pos + size])
        pos += size
    return nalus


def parse_audio_tag(body: bytes) -> AudioTag:
    """The body of an RTMP audio message (an FLV AUDIODATA).

    :raises UnsupportedCodec: a sound format other than AAC (Enhanced RTMP audio included).
    :raises FlvError: too short, or an unknown AAC packet type."""
    if not body:
        raise FlvError("empty audio tag")
    sound_format = body[0] >> 4
    if sound_format != AAC_SOUND_FORMAT:
        raise UnsupportedCodec(f"audio format {sound_format} is not supported: send AAC")
    if len(body) < 2:
        raise FlvError("AAC audio tag shorter than its 2-byte header")
    if body[1] == 0:
        return AudioTag("config", body[2:])
    if body[1] == 1:
        return AudioTag("frame", body[2:])
    raise FlvError(f"unknown AAC packet type {body[1]}")


def parse_aac_config(data: bytes) -> AacConfig:
    """An AudioSpecificConfig's first fields (ISO/IEC 14496-3 §1.6.2.1).

    :raises FlvError: shorter than 2 bytes, or a reserved sample-rate index."""
    if len(data) < 2:
        raise FlvError("AAC AudioSpecificConfig shorter than 2 bytes")
    bits = int.from_bytes(data[:2], "big")
    object_type = bits >> 11
    rate_index = (bits >> 7) & 0x0F
    channels = (bits >> 3) & 0x0F
    if rate_index == 0x0F:
        if len(data) < 5:
            raise FlvError("AAC AudioSpecificConfig with an explicit rate truncated")
        word = int.from_bytes(data[:5], "big")
        rate = (word >> 7) & 0xFFFFFF
        channels = (word >> 3) & 0x0F
    elif rate_index < len(_AAC_RATES):
        rate = _AAC_RATES[rate_index]
    else:
        raise FlvError(f"reserved AAC sample-rate index {rate_index}")
    return AacConfig(object_type, rate, channels)
