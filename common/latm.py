"""AAC-LC in RTP as MP4A-LATM with its configuration in band (RFC 6416 §6.1 with
``cpresent=1``; LATM: ISO/IEC 14496-3 §1.7.3), and AAC's ADTS framing (§1.A.2).

The RTMP/SRT relay sends the encoder's AAC this way alongside the Opus it encodes for
WebRTC, so the LL-HLS bridge can publish the broadcaster's own AAC.  Each RTP payload is one
``AudioMuxElement(1)`` that repeats the ``StreamMuxConfig`` (``useSameStreamMux`` 0): a
receiver that joins at any packet knows the stream's sample rate and channels.  A payload
may hold several whole elements, each padded to a byte (RFC 6416 §6.1: the RTP timestamp is
the first frame's; the relay puts up to :data:`FRAMES_PER_PACKET` in one packet), or a
fragment of one larger than a packet (the marker bit on its last).  The RTP
clock is 90 kHz (the media type's default, RFC 6416 §7.3), so the configuration need not be
known when the session is negotiated — an RTMP encoder sends it only after ``publish`` was
accepted.  Only what this writes is read back: one program, one layer, one sub-frame,
``frameLengthType`` 0, AAC-LC with 1,024-sample frames.
"""

from __future__ import annotations

from dataclasses import dataclass

MIME_TYPE = "audio/MP4A-LATM"
CLOCK_RATE = 90000
FMTP = {"cpresent": "1", "object": "2"}
"""``a=fmtp`` parameters (RFC 6416 §7.3): configuration in band, AAC-LC."""
AAC_LC = 2
FRAME_SAMPLES = 1024
SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
FRAMES_PER_PACKET = 4
"""Elements a sender puts in one RTP payload at most (~85 ms at 48 kHz: the LL-HLS tier
waits that much longer for audio, and the stream takes a quarter of the packets)."""
_HEADER_BITS = 45  # useSameStreamMux .. crcCheckPresent, as written by audio_mux_element


class LatmError(ValueError):
    """Not AAC-LC, or not an element/frame of the form this module writes."""


@dataclass(frozen=True, slots=True)
class AacConfig:
    """An AAC-LC configuration: ``rate_index`` into :data:`SAMPLE_RATES`, ``channels``
    (channelConfiguration 1–7)."""

    rate_index: int
    channels: int

    def __post_init__(self) -> None:
        if not 0 <= self.rate_index < len(SAMPLE_RATES) or not 1 <= self.channels <= 7:
            raise LatmError(f"AAC-LC rate index {self.rate_index} / channel configuration {self.channels}")

    @property
    def sample_rate(self) -> int:
        """Hz."""
        return SAMPLE_RATES[self.rate_index]

    @property
    def asc(self) -> bytes:
        """The 2-byte AudioSpecificConfig (§1.6.2.1): AAC-LC, 1,024-sample frames."""
        return ((AAC_LC << 11) | (self.rate_index << 7) | (self.channels << 3)).to_bytes(2, "big")

    @classmethod
    def from_asc(cls, data: bytes) -> AacConfig:
        """From an AudioSpecificConfig (e.g. FLV's AAC sequence header).

        :raises LatmError: not AAC-LC with a listed sample rate and 1–7 channels, or with
            960-sample frames or a core coder (anything after the first two bytes, such as
            an SBR sync extension, is ignored: implicit signalling)."""
        if len(data) < 2:
            raise LatmError("AudioSpecificConfig shorter than 2 bytes")
        bits = int.from_bytes(data[:2], "big")
        if bits >> 11 != AAC_LC:
            raise LatmError(f"audio object type {bits >> 11} is not AAC-LC")
        if bits & 0x06:
            raise LatmError("AAC-LC with 960-sample frames or a core coder")
        return cls((bits >> 7) & 0x0F, (bits >> 3) & 0x0F)


def parse_adts(frame: bytes) -> tuple[AacConfig, bytes]:
    """One ADTS frame (§1.A.2.2) → its configuration and the raw AAC frame.

    :raises LatmError: no ADTS syncword, shorter than its header or its frame length says,
        more than one raw data block, or not AAC-LC."""
    if len(frame) < 7 or frame[0] != 0xFF or frame[1] & 0xF6 != 0xF0:
        raise LatmError("not an ADTS frame")
    header = 7 if frame[1] & 0x01 else 9  # protection_absent: no CRC
    profile = frame[2] >> 6  # audio object type − 1
    if profile + 1 != AAC_LC:
        raise LatmError(f"ADTS audio object type {profile + 1} is not AAC-LC")
    length = ((frame[3] & 0x03) << 11) | (frame[4] << 3) | (frame[5] >> 5)
    if frame[6] & 0x03 or not header <= length <= len(frame):
        raise LatmError("ADTS frame with several raw data blocks or a wrong length")
    config = AacConfig((frame[2] >> 2) & 0x0F, ((frame[2] & 0x01) << 2) | (frame[3] >> 6))
    return config, frame[header:length]


def audio_mux_element(config: AacConfig, frame: bytes) -> bytes:
    """One raw AAC frame as an ``AudioMuxElement(1)`` with its ``StreamMuxConfig``."""
    header = 0                       # useSameStreamMux 0
    header = (header << 1) | 0       # audioMuxVersion 0
    header = (header << 1) | 1       # allStreamsSameTimeFraming
    header <<= 6 + 4 + 3             # numSubFrames, numProgram, numLayer: 0 (one of each)
    header = (header << 16) | int.from_bytes(config.asc, "big")
    header = (header << 3) | 0       # frameLengthType 0: PayloadLengthInfo gives the length
    header = (header << 8) | 0xFF    # latmBufferFullness: not given
    header <<= 2                     # otherDataPresent 0, crcCheckPresent 0
    tail = b"\xff" * (len(frame) // 255) + bytes((len(frame) % 255,)) + frame
    bits = _HEADER_BITS + 8 * len(tail)
    pad = -bits % 8
    value = ((header << (8 * len(tail))) | int.from_bytes(tail, "big")) << pad
    return value.to_bytes((bits + pad) // 8, "big")


def parse_audio_mux_element(data: bytes) -> tuple[AacConfig, bytes]:
    """The configuration and raw AAC frame of an element :func:`audio_mux_element` wrote
    (the first, if ``data`` holds several).

    :raises LatmError: another LATM form (a configuration referred to, not repeated; several
        programs, layers or sub-frames; other frame length types), not AAC-LC, or truncated."""
    config, frame, _ = _parse_at(data, 0)
    return config, frame


def parse_audio_mux_elements(data: bytes) -> list[tuple[AacConfig, bytes]]:
    """Every element of an RTP payload that holds one or more whole elements, each padded
    to a byte (RFC 6416 §6.1), in order.

    :raises LatmError: as :func:`parse_audio_mux_element`, for any of them."""
    elements = []
    offset = 0
    while offset < len(data):
        config, frame, offset = _parse_at(data, offset)
        elements.append((config, frame))
    return elements


def _parse_at(data: bytes, offset: int) -> tuple[AacConfig, bytes, int]:
    """The element that starts at byte ``offset``: (configuration, frame, the byte after it)."""
    total = 8 * (len(data) - offset)
    if total < _HEADER_BITS + 8:
        raise LatmError("LATM element too short")
    bits = int.from_bytes(data[offset:], "big")
    header = bits >> (total - _HEADER_BITS)
    if header >> 29 != 0b0010000000000000:  # useSameStreamMux 0, version 0, same framing, 0/0/0
        raise LatmError("LATM element without its own single-program StreamMuxConfig")
    asc = (header >> 13) & 0xFFFF
    if (header >> 10) & 0x07 or header & 0x03:
        raise LatmError("LATM frameLengthType, other data or CRC not supported")
    config = AacConfig.from_asc(asc.to_bytes(2, "big"))
    pos = _HEADER_BITS
    length = 0
    while True:
        if pos + 8 > total:
            raise LatmError("LATM PayloadLengthInfo truncated")
        byte = (bits >> (total - pos - 8)) & 0xFF
        pos += 8
        length += byte
        if byte != 255:
            break
    if pos + 8 * length > total:
        raise LatmError("LATM payload truncated")
    frame = (bits >> (total - pos - 8 * length)) & ((1 << (8 * length)) - 1)
    end = pos + 8 * length
    return config, frame.to_bytes(length, "big"), offset + (end + 7) // 8
