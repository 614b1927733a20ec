"""Fragmented MP4 packaging of encoded H.264/AAC packets for LL-HLS.

Codec helpers (H.264 Annex-B <-> AVCC, SPS/PPS and AudioSpecificConfig extraction,
RFC 6381 ``CODECS`` strings) and `TrackPackager`, which turns a stream of encoded
packets (PyAV ``av.Packet``) into CMAF fragments, one per LL-HLS Partial Segment.
The box writing itself lives in :mod:`hls_bridge.cmaf` and is re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from common.h264 import iter_nal_units

from .cmaf import (
    CmafError,
    Sample,
    avc_decoder_configuration,
    fragment,
    init_segment_audio,
    init_segment_video,
)

__all__ = [
    "AudioConfig",
    "CmafError",
    "FragmentPart",
    "Sample",
    "TrackPackager",
    "aac_audio_specific_config",
    "annexb_to_avcc",
    "avc_decoder_configuration",
    "codecs_string_aac",
    "codecs_string_avc",
    "fragment",
    "h264_parameter_sets",
    "init_segment_audio",
    "init_segment_video",
    "iter_nal_units",
    "PacketLike",
    "parse_audio_specific_config",
]

NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
_AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050,
                     16000, 12000, 11025, 8000, 7350)


# --- H.264 ------------------------------------------------------------------------------


def annexb_to_avcc(data: bytes, *, keep_parameter_sets: bool = False) -> bytes:
    """Convert an Annex-B access unit to 4-byte length-prefixed NAL units (AVCC).

    Access unit delimiters are dropped, and SPS/PPS too unless ``keep_parameter_sets``
    (they are carried once in ``avcC``).  Raises `CmafError` if ``data`` has no start code.
    """
    out = []
    for nal in iter_nal_units(data):
        nal_type = nal[0] & 0x1F
        if nal_type == NAL_AUD or (
            not keep_parameter_sets and nal_type in (NAL_SPS, NAL_PPS)
        ):
            continue
        out.append(len(nal).to_bytes(4, "big"))
        out.append(nal)
    if not out and not data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        raise CmafError("not an Annex-B access unit (no start code)")
    return b"".join(out)


def h264_parameter_sets(data: bytes) -> tuple[bytes, bytes]:
    """The first SPS and PPS NAL units from H.264 extradata or an Annex-B keyframe.

    ``data`` is either an ``AVCDecoderConfigurationRecord`` (first byte 1, as MP4
    demuxers give), Annex-B extradata (libx264 with ``GLOBAL_HEADER``) or an Annex-B
    IDR access unit with in-band parameter sets.  Raises `CmafError` if either is missing.
    """
    if data[:1] == b"\x01":
        return _parse_avcc_record(data)
    sps = pps = None
    for nal in iter_nal_units(data):
        nal_type = nal[0] & 0x1F
        if nal_type == NAL_SPS and sps is None:
            sps = nal
        elif nal_type == NAL_PPS and pps is None:
            pps = nal
    if sps is None or pps is None:
        raise CmafError("no H.264 SPS/PPS in the data")
    return sps, pps


def _parse_avcc_record(data: bytes) -> tuple[bytes, bytes]:
    try:
        count = data[5] & 0x1F
        pos = 6
        sps_list = []
        for _ in range(count):
            size = int.from_bytes(data[pos:pos + 2], "big")
            sps_list.append(data[pos + 2:pos + 2 + size])
            pos += 2 + size
        pps_count = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 3], "big")
        pps = data[pos + 3:pos + 3 + size]
    except IndexError:
        raise CmafError("truncated AVCDecoderConfigurationRecord") from None
    if not sps_list or not pps_count or not sps_list[0] or len(pps) != size:
        raise CmafError("AVCDecoderConfigurationRecord without SPS/PPS")
    return sps_list[0], pps


def codecs_string_avc(sps: bytes) -> str:
    """RFC 6381 ``CODECS`` value for H.264, e.g. ``avc1.64001f`` (profile, flags, level)."""
    if len(sps) < 4 or sps[0] & 0x1F != NAL_SPS:
        raise CmafError("not an H.264 SPS NAL unit")
    return f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"


# --- AAC --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """The leading fields of an AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1)."""

    object_type: int
    sample_rate: int
    channels: int


def parse_audio_specific_config(asc: bytes) -> AudioConfig:
    """Read audioObjectType, sampling rate and channelConfiguration from ``asc``."""
    if len(asc) < 2:
        raise CmafError("AudioSpecificConfig shorter than 2 bytes")
    bits = int.from_bytes(asc, "big")
    left = len(asc) * 8

    def take(count: int) -> int:
        nonlocal left
        if count > left:
            raise CmafError("truncated AudioSpecificConfig")
        left -= count
        return (bits >> left) & ((1 << count) - 1)

    object_type = take(5)
    if object_type == 31:
        object_type = 32 + take(6)
    index = take(4)
    sample_rate = take(24) if index == 15 else (
        _AAC_SAMPLE_RATES[index] if index < len(_AAC_SAMPLE_RATES) else 0
    )
    if not sample_rate:
        raise CmafError(f"reserved sampling frequency index {index}")
    return AudioConfig(object_type, sample_rate, take(4))


def aac_audio_specific_config(
    extradata: bytes | None, *, sample_rate: int = 48000, channels: int = 2,
) -> bytes:
    """The AudioSpecificConfig to put in ``esds``.

    PyAV's ``aac`` encoder extradata already is one (e.g. ``1190`` for AAC-LC 48 kHz
    stereo, possibly followed by an SBR sync extension); it is validated and returned.
    Without extradata an AAC-LC config is built from ``sample_rate``/``channels``.
    """
    if extradata:
        parse_audio_specific_config(extradata)
        return bytes(extradata)
    if sample_rate not in _AAC_SAMPLE_RATES or not 0 < channels < 8:
        raise CmafError(f"cannot build an AudioSpecificConfig for {sample_rate} Hz/{channels}")
    value = (2 << 11) | (_AAC_SAMPLE_RATES.index(sample_rate) << 7) | (channels << 3)
    return value.to_bytes(2, "big")


def codecs_string_aac(asc: bytes) -> str:
    """RFC 6381 ``CODECS`` value for AAC, e.g. ``mp4a.40.2`` (AAC-LC)."""
    return f"mp4a.40.{parse_audio_specific_config(asc).object_type}"


# --- packaging --------------------------------------------------------------------------


class PacketLike(Protocol):
    """What `TrackPackager.add` reads from a PyAV ``av.Packet``."""

    @property
    def pts(self) -> int | None: ...
    @property
    def dts(self) -> int | None: ...
    @property
    def duration(self) -> int | None: ...
    @property
    def time_base(self) -> Fraction | None: ...
    @property
    def is_keyframe(self) -> bool: ...

    def __bytes__(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FragmentPart:
    """One packaged Partial Segment: ``data`` is ``moof`` + ``mdat``.

    ``duration`` in seconds (exact as ``duration_ticks / timescale``); ``independent``
    is true when the first sample is a sync sample (``EXT-X-PART ... INDEPENDENT=YES``).
    """

    data: bytes
    sequence_number: int
    base_media_decode_time: int
    duration_ticks: int
    timescale: int
    sample_count: int
    independent: bool

    @property
    def duration(self) -> float:
        return self.duration_ticks / self.timescale


class TrackPackager:
    """Accumulates one track's encoded packets and emits CMAF fragments on demand.

    Timestamps are converted to ``timescale`` ticks exactly (``Fraction``), from absolute
    times so rounding never accumulates; ``start_time`` (seconds) is the media time that
    maps to decode time 0 (default: the first packet's dts; give all tracks of a
    presentation the same value to keep them aligned).  A sample's duration is the
    distance to the next sample's dts; the last pending sample uses its packet's
    ``duration`` (or the previous sample's) so a part can be emitted without waiting.

    ``h264=True`` converts Annex-B packets to AVCC and takes sync from ``is_keyframe``;
    otherwise (AAC) every sample is a sync sample.
    """

    def __init__(
        self, track_id: int, timescale: int, *, h264: bool, start_time: Fraction | None = None,
        sequence_number: int = 1,
    ) -> None:
        if timescale <= 0:
            raise CmafError("timescale must be positive")
        self.track_id = track_id
        self.timescale = timescale
        self.h264 = h264
        self.sequence_number = sequence_number
        self._start_ticks: int | None = (
            None if start_time is None else math.floor(Fraction(start_time) * timescale + Fraction(1, 2))
        )
        # Pending samples: (data, dts ticks, cto ticks, sync, end ticks from packet duration)
        self._pending: list[tuple[bytes, int, int, bool, int | None]] = []
        self._next_decode_time: int | None = None
        self._last_duration = 0
        self._last_dts = -1
        self._time_base = Fraction(0)
        self._scale = (0, 1)

    @property
    def next_decode_time(self) -> int | None:
        """Decode time (ticks) where the next fragment starts, once one has been emitted."""
        return self._next_decode_time

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_duration(self) -> Fraction:
        """Seconds of media waiting for `flush_part` (last sample's duration estimated)."""
        if not self._pending:
            return Fraction(0)
        first = self._pending[0][1]
        return Fraction(self._end_of_last() - first, self.timescale)

    def _ticks(self, value: int, time_base: Fraction) -> int:
        """``value * time_base`` seconds in ticks, exact, rounded half up (integer math)."""
        if time_base != self._time_base:
            self._time_base = time_base
            self._scale = (time_base.numerator * self.timescale, time_base.denominator)
        numerator, denominator = self._scale
        return (2 * value * numerator + denominator) // (2 * denominator)

    def add(self, packet: PacketLike) -> None:
        """Queue one encoded packet (``pts``/``dts``/``duration`` in ``packet.time_base``)."""
        time_base = packet.time_base
        if time_base is None or packet.pts is None:
            raise CmafError("packet without time base or pts")
        self.add_sample(
            bytes(packet), pts=packet.pts, dts=packet.dts, duration=packet.duration,
            time_base=time_base, is_sync=packet.is_keyframe,
        )

    def add_sample(
        self, data: bytes, *, pts: int, dts: int | None, duration: int | None,
        time_base: Fraction, is_sync: bool,
    ) -> None:
        """Queue one encoded access unit; times are integers in ``time_base`` seconds."""
        dts = pts if dts is None else dts
        dts_ticks = self._ticks(dts, time_base)
        if self._start_ticks is None:
            self._start_ticks = dts_ticks
        dts_ticks -= self._start_ticks
        if dts_ticks < 0:
            raise CmafError(f"decode time {dts} x {time_base} s is before the track start")
        if dts_ticks <= self._last_dts:
            raise CmafError("decode times must increase")
        self._last_dts = dts_ticks
        cto = self._ticks(pts, time_base) - self._start_ticks - dts_ticks
        end = self._ticks(dts + duration, time_base) - self._start_ticks if duration else None
        if self.h264:
            data = annexb_to_avcc(data)
        else:
            is_sync = True
        self._pending.append((data, dts_ticks, cto, is_sync, end))

    def _end_of_last(self) -> int:
        _, dts, _, _, end = self._pending[-1]
        if end is not None and end > dts:
            return end
        if len(self._pending) > 1:
            return dts + (dts - self._pending[-2][1])
        return dts + self._last_duration

    def flush_part(self) -> FragmentPart | None:
        """Emit every pending sample as one ``moof`` + ``mdat``; None if nothing is pending.

        The fragment's ``tfdt`` is the first sample's decode time, so consecutive parts
        are continuous whenever the encoder's timestamps are.  Raises `CmafError` if the
        last sample's duration is unknown (a single packet without ``duration``).
        """
        pending = self._pending
        if not pending:
            return None
        end = self._end_of_last()
        if end <= pending[-1][1]:
            raise CmafError("cannot tell the duration of the last sample")
        samples = []
        for index, (data, dts, cto, sync, _) in enumerate(pending):
            next_dts = pending[index + 1][1] if index + 1 < len(pending) else end
            samples.append(Sample(data, next_dts - dts, sync, cto))
        base = pending[0][1]
        data = fragment(self.sequence_number, self.track_id, base, samples)
        part = FragmentPart(
            data=data, sequence_number=self.sequence_number, base_media_decode_time=base,
            duration_ticks=end - base, timescale=self.timescale, sample_count=len(samples),
            independent=samples[0].is_sync,
        )
        self._last_duration = samples[-1].duration
        self._next_decode_time = end
        self.sequence_number += 1
        self._pending = []
        return part
