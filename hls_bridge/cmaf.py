"""CMAF box writer: init segments and fragments (ISO/IEC 14496-12, ISO/IEC 23000-19).

Pure ``struct`` byte building, no muxer.  An init segment is ``ftyp`` + ``moov`` (one
track, empty sample tables, ``mvex/trex``); a fragment (an LL-HLS Partial Segment) is
``moof`` (``mfhd``, ``traf`` with ``tfhd`` default-base-is-moof, ``tfdt`` v1, ``trun``)
followed by ``mdat``.  Timestamps are integer ticks of the track's ``timescale``.

Video sample data is AVCC (4-byte big-endian NAL unit lengths, ISO/IEC 14496-15 §5.3.2);
audio sample data is raw AAC access units.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sfu.picture_size import BitReader, rbsp

from .errors import HlsBridgeError

__all__ = [
    "CmafError",
    "Sample",
    "avc_decoder_configuration",
    "fragment",
    "init_segment_audio",
    "init_segment_video",
    "sample_flags",
]


class CmafError(HlsBridgeError, ValueError):
    """Input that cannot be written as a valid CMAF box."""


SYNC_SAMPLE_FLAGS = 0x02000000
"""sample_depends_on=2 (does not depend on others), is_non_sync_sample=0 (§8.8.3.1)."""
NON_SYNC_SAMPLE_FLAGS = 0x01010000
"""sample_depends_on=1 (depends on others), is_non_sync_sample=1 (§8.8.3.1)."""

MOVIE_TIMESCALE = 1000
_LANGUAGE_UND = 0x55C4  # ISO-639-2/T "und", packed 5 bits per letter (§8.4.2.3)
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_HIGH_PROFILES = frozenset({100, 110, 122, 144, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True, slots=True)
class Sample:
    """One media sample of a fragment.

    ``data``: AVCC length-prefixed NAL units (video) or one AAC frame (audio);
    ``duration`` and ``composition_offset`` (pts - dts) in timescale ticks.
    """

    data: bytes
    duration: int
    is_sync: bool
    composition_offset: int = 0


def sample_flags(is_sync: bool) -> int:
    """The 32-bit ``sample_flags`` of §8.8.3.1 for a sync or non-sync sample."""
    return SYNC_SAMPLE_FLAGS if is_sync else NON_SYNC_SAMPLE_FLAGS


def box(kind: bytes, *payload: bytes) -> bytes:
    """A plain box (§4.2): 32-bit size, 4-character type, payload."""
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    """A FullBox (§4.2): box header, 8-bit version, 24-bit flags, payload."""
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


# --- init segment -------------------------------------------------------------------


def _ftyp() -> bytes:
    return box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"cmfc", b"mp41", b"dash")


def _mvhd(next_track_id: int) -> bytes:
    return full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, MOVIE_TIMESCALE, 0),
        struct.pack(">IH10x", 0x00010000, 0x0100),  # rate 1.0, volume 1.0, reserved
        _MATRIX,
        bytes(24),  # pre_defined
        struct.pack(">I", next_track_id),
    )


def _tkhd(track_id: int, width: int, height: int, audio: bool) -> bytes:
    return full_box(
        b"tkhd", 0, 0x000003,  # track_enabled | track_in_movie
        struct.pack(">IIII", 0, 0, track_id, 0),
        struct.pack(">I8xhhH2x", 0, 0, 0, 0x0100 if audio else 0),
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )


def _mdhd(timescale: int) -> bytes:
    return full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, _LANGUAGE_UND, 0))


def _hdlr(handler: bytes, name: bytes) -> bytes:
    return full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler), name + b"\x00")


def _dinf() -> bytes:
    url = full_box(b"url ", 0, 0x000001)  # media data in the same file
    return box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), url))


def _stbl(sample_entry: bytes) -> bytes:
    empty = struct.pack(">I", 0)
    return box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        full_box(b"stts", 0, 0, empty),
        full_box(b"stsc", 0, 0, empty),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, empty),
    )


def _init_segment(
    track_id: int, timescale: int, width: int, height: int, handler: bytes,
    media_header: bytes, sample_entry: bytes,
) -> bytes:
    audio = handler == b"soun"
    name = b"SoundHandler" if audio else b"VideoHandler"
    minf = box(b"minf", media_header, _dinf(), _stbl(sample_entry))
    mdia = box(b"mdia", _mdhd(timescale), _hdlr(handler, name), minf)
    trak = box(b"trak", _tkhd(track_id, width, height, audio), mdia)
    trex = full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))
    moov = box(b"moov", _mvhd(track_id + 1), trak, box(b"mvex", trex))
    return _ftyp() + moov


def avc_decoder_configuration(sps: bytes, pps: bytes) -> bytes:
    """The ``AVCDecoderConfigurationRecord`` (ISO/IEC 14496-15 §5.3.3.1) for one SPS/PPS.

    ``sps``/``pps`` are bare NAL units (header byte first, no start code).  High
    profiles get the chroma format / bit depth extension parsed from the SPS.
    Raises `CmafError` if the SPS is not an SPS.
    """
    if len(sps) < 4 or sps[0] & 0x1F != 7:
        raise CmafError("not an H.264 SPS NAL unit")
    if not pps or pps[0] & 0x1F != 8:
        raise CmafError("not an H.264 PPS NAL unit")
    profile, compat, level = sps[1], sps[2], sps[3]
    record = [
        struct.pack(">BBBBBB", 1, profile, compat, level, 0xFF, 0xE1),  # 4-byte lengths, 1 SPS
        struct.pack(">H", len(sps)), sps,
        struct.pack(">BH", 1, len(pps)), pps,
    ]
    if profile in _HIGH_PROFILES:
        reader = BitReader(rbsp(sps[:64]))
        try:
            reader.bits(24)  # profile_idc, constraint flags, level_idc
            reader.ue()  # seq_parameter_set_id
            chroma_format = reader.ue()
            if chroma_format == 3:
                reader.bits(1)  # separate_colour_plane_flag
            depth_luma, depth_chroma = reader.ue(), reader.ue()
        except ValueError as exc:
            raise CmafError(f"bad SPS: {exc}") from None
        record.append(struct.pack(
            ">BBBB", 0xFC | chroma_format, 0xF8 | depth_luma, 0xF8 | depth_chroma, 0,
        ))
    return b"".join(record)


def init_segment_video(
    width: int, height: int, sps: bytes, pps: bytes, *, timescale: int = 90000,
    track_id: int = 1,
) -> bytes:
    """A CMAF H.264 init segment (``ftyp`` + ``moov``) with an ``avc1`` sample entry.

    ``width``/``height`` in pixels; ``sps``/``pps`` bare NAL units (see
    `hls_bridge.fmp4.h264_parameter_sets`); ``timescale`` in ticks per second.
    """
    if not (0 < width < 65536 and 0 < height < 65536) or timescale <= 0:
        raise CmafError(f"bad video geometry or timescale: {width}x{height} @ {timescale}")
    avc1 = box(
        b"avc1",
        struct.pack(">6xH", 1),  # reserved, data_reference_index
        struct.pack(">HH12xHHIIIH", 0, 0, width, height, 0x00480000, 0x00480000, 0, 1),
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
        box(b"avcC", avc_decoder_configuration(sps, pps)),
    )
    vmhd = full_box(b"vmhd", 0, 0x000001, bytes(8))
    return _init_segment(track_id, timescale, width, height, b"vide", vmhd, avc1)


def _descriptor(tag: int, *payload: bytes) -> bytes:
    """An MPEG-4 descriptor (ISO/IEC 14496-1 §8.3.3) with a 4-byte expandable length."""
    body = b"".join(payload)
    size = len(body)
    if size >= 1 << 28:
        raise CmafError("descriptor too large")
    length = bytes((0x80 | (size >> 21) & 0x7F, 0x80 | (size >> 14) & 0x7F,
                    0x80 | (size >> 7) & 0x7F, size & 0x7F))
    return bytes((tag,)) + length + body


def init_segment_audio(
    sample_rate: int, channels: int, asc: bytes, *, timescale: int | None = None,
    track_id: int = 1, bitrate: int = 0,
) -> bytes:
    """A CMAF AAC init segment with an ``mp4a`` sample entry and ``esds`` (ISO/IEC 14496-14).

    ``asc`` is the AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1); ``timescale``
    defaults to ``sample_rate``; ``bitrate`` in bit/s (0 = unknown).
    """
    timescale = sample_rate if timescale is None else timescale
    if not 0 < sample_rate < 65536 or not 0 < channels < 256 or timescale <= 0:
        raise CmafError(f"bad audio parameters: {sample_rate} Hz, {channels} channels")
    if not asc:
        raise CmafError("empty AudioSpecificConfig")
    decoder_config = _descriptor(
        0x04,
        struct.pack(">BB", 0x40, 0x15),  # Audio ISO/IEC 14496-3, AudioStream, upstream 0, 1
        struct.pack(">I", 0)[1:],  # bufferSizeDB
        struct.pack(">II", bitrate, bitrate),
        _descriptor(0x05, asc),
    )
    es = _descriptor(0x03, struct.pack(">HB", track_id, 0), decoder_config, _descriptor(0x06, b"\x02"))
    mp4a = box(
        b"mp4a",
        struct.pack(">6xH", 1),
        struct.pack(">8xHHHHI", channels, 16, 0, 0, sample_rate << 16),
        full_box(b"esds", 0, 0, es),
    )
    smhd = full_box(b"smhd", 0, 0, struct.pack(">hH", 0, 0))
    return _init_segment(track_id, timescale, 0, 0, b"soun", smhd, mp4a)


# --- fragments ----------------------------------------------------------------------

_TRUN_DATA_OFFSET = 0x000001
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTO = 0x000800
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
_ENTRY = struct.Struct(">III")
_ENTRY_CTO = struct.Struct(">IIIi")


def fragment(
    sequence_number: int, track_id: int, base_media_decode_time: int, samples: list[Sample],
) -> bytes:
    """One ``moof`` + ``mdat`` (ISO/IEC 14496-12 §8.8.4–8.8.12) holding ``samples``.

    ``base_media_decode_time`` is the decode time of the first sample in timescale ticks
    (``tfdt`` version 1); ``trun`` carries per-sample duration, size, flags and, when
    any is non-zero, the composition offset (version 1, signed).  Raises `CmafError` for
    an empty sample list or out-of-range numbers.
    """
    if not samples:
        raise CmafError("a fragment needs at least one sample")
    if sequence_number < 0 or base_media_decode_time < 0:
        raise CmafError("sequence number and decode time must be non-negative")
    with_cto = any(s.composition_offset for s in samples)
    trun_flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS
    try:
        if with_cto:
            trun_flags |= _TRUN_CTO
            pack = _ENTRY_CTO.pack
            entries = b"".join([
                pack(s.duration, len(s.data), SYNC_SAMPLE_FLAGS if s.is_sync
                     else NON_SYNC_SAMPLE_FLAGS, s.composition_offset) for s in samples
            ])
        else:
            pack = _ENTRY.pack
            entries = b"".join([
                pack(s.duration, len(s.data), SYNC_SAMPLE_FLAGS if s.is_sync
                     else NON_SYNC_SAMPLE_FLAGS) for s in samples
            ])
    except struct.error as exc:
        raise CmafError(f"sample duration/size/offset out of range: {exc}") from None
    tfhd = full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_media_decode_time))
    # Sizes are fixed, so compute moof's size before writing trun's data_offset.
    trun_size = 12 + 8 + len(entries)
    traf_size = 8 + len(tfhd) + len(tfdt) + trun_size
    moof_size = 8 + 16 + traf_size  # moof header + mfhd + traf
    trun = struct.pack(
        ">I4sIIi", trun_size, b"trun", (1 if with_cto else 0) << 24 | trun_flags,
        len(samples), moof_size + 8,  # data_offset: first byte after the mdat header
    ) + entries
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number))
    payload = b"".join([s.data for s in samples])
    return b"".join((
        struct.pack(">I4s", moof_size, b"moof"), mfhd,
        struct.pack(">I4s", traf_size, b"traf"), tfhd, tfdt, trun,
        struct.pack(">I4s", 8 + len(payload), b"mdat"), payload,
    ))
