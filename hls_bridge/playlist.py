"""LL-HLS playlist writer (draft-pantos-hls-rfc8216bis): media, delta and multivariant.

Pure functions over :class:`hls_bridge.model.MediaPlaylist`; the HTTP layer decides
when to call them.  Everything here is I/O-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from hls_bridge.model import MediaPlaylist, Part, PlaylistError, Segment

__all__ = [
    "VERSION",
    "AudioRendition",
    "BadDeliveryDirective",
    "RenditionReport",
    "VariantStream",
    "blocking_timeout",
    "check_blocking_request",
    "rendition_report",
    "render",
    "render_multivariant",
    "skipped_segment_count",
]

VERSION = 9
"""EXT-X-VERSION of every playlist written here (EXT-X-SKIP needs 9, §4.4.5.2)."""


class BadDeliveryDirective(PlaylistError):
    """An invalid ``_HLS_msn``/``_HLS_part`` request: answer HTTP 400 (§6.2.5.2)."""

    status = 400


@dataclass(frozen=True, slots=True)
class RenditionReport:
    """EXT-X-RENDITION-REPORT (§4.4.5.4): another rendition's URI and last part."""

    uri: str
    last_msn: int
    last_part: int | None


@dataclass(frozen=True, slots=True)
class VariantStream:
    """One EXT-X-STREAM-INF entry (§4.4.6.2); ``bandwidth`` in bits per second."""

    uri: str
    bandwidth: int
    codecs: str
    average_bandwidth: int | None = None
    resolution: tuple[int, int] | None = None
    frame_rate: float | None = None
    audio: str | None = None


@dataclass(frozen=True, slots=True)
class AudioRendition:
    """One EXT-X-MEDIA TYPE=AUDIO entry (§4.4.6.1)."""

    group_id: str
    name: str
    uri: str
    language: str | None = None
    default: bool = True
    autoselect: bool = True
    channels: str | None = None


def _num(value: float) -> str:
    """decimal-floating-point with at most 5 decimals (§4.2)."""
    text = f"{value:.5f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _quote(value: str) -> str:
    if any(c in value for c in '"\r\n'):
        raise ValueError(f"quoted-string may not contain quotes or line breaks: {value!r}")
    return f'"{value}"'


def _pdt(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = value.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def rendition_report(playlist: MediaPlaylist, uri: str) -> RenditionReport | None:
    """Report of ``playlist`` as seen from a sibling rendition, or None while it is empty."""
    last = playlist.last_msn_part()
    if last is None:
        return None
    return RenditionReport(uri, last[0], last[1])


def skipped_segment_count(playlist: MediaPlaylist) -> int:
    """How many leading segments a delta update replaces with EXT-X-SKIP (§6.2.5.1).

    A segment is skipped only if everything after it still covers CAN-SKIP-UNTIL
    seconds, and never a segment that starts a Discontinuity Sequence (EXT-X-DISCONTINUITY,
    §4.4.4.3) nor any after it: a delta update keeps every listed EXT-X-DISCONTINUITY
    tag, so a client numbers the segments it receives from EXT-X-DISCONTINUITY-SEQUENCE
    without the skipped ones (§4.4.3.3, §4.4.5.2).  0 when CAN-SKIP-UNTIL is unset or
    the playlist has ended.
    """
    control = playlist.server_control
    assert control is not None
    if control.can_skip_until is None or playlist.ended:
        return 0
    remaining = playlist.duration
    count = 0
    for segment in playlist.segments:
        if segment.discontinuity:
            break
        remaining -= segment.duration
        if remaining < control.can_skip_until - 1e-9:
            break
        count += 1
    return count


def _part_line(part: Part) -> str:
    line = f"#EXT-X-PART:DURATION={_num(part.duration)},URI={_quote(part.uri)}"
    return line + (",INDEPENDENT=YES" if part.independent else "")


def _segment_start(lines: list[str], discontinuity: bool, init_uri: str, previous: str) -> str:
    """Append a segment's EXT-X-DISCONTINUITY and, if its init changed, EXT-X-MAP;
    returns the init URI in effect."""
    if discontinuity:
        lines.append("#EXT-X-DISCONTINUITY")
    if init_uri != previous:
        lines.append(f"#EXT-X-MAP:URI={_quote(init_uri)}")
    return init_uri


def render(
    playlist: MediaPlaylist,
    *,
    skip: bool = False,
    rendition_reports: Sequence[RenditionReport | None] = (),
) -> str:
    """The media playlist text (LL-HLS, §4.4), ending with a newline.

    ``skip=True`` (``_HLS_skip=YES``) writes a Playlist Delta Update whose EXT-X-SKIP
    replaces the segments that :func:`skipped_segment_count` allows; it is ignored
    (a full playlist) when CAN-SKIP-UNTIL is unset or after ENDLIST.
    ``rendition_reports`` describe the *other* renditions (§4.4.5.4); None entries
    (a rendition with nothing listed yet, see :func:`rendition_report`) are left out.
    EXT-X-PART tags are written for segments from :meth:`MediaPlaylist.parts_listed_from`
    on (§4.4.4.9); the in-progress segment's EXT-X-PROGRAM-DATE-TIME (§4.4.4.6), when
    known, precedes its first part.

    Discontinuities: EXT-X-DISCONTINUITY-SEQUENCE (§4.4.3.3) follows
    EXT-X-MEDIA-SEQUENCE once it is above 0; a segment that starts a Discontinuity
    Sequence (the in-progress one too, before its first part) is preceded by
    EXT-X-DISCONTINUITY (§4.4.4.3).  The first EXT-X-MAP (§4.4.4.5) names the first
    listed segment's Media Initialization Section; another follows, after the
    EXT-X-DISCONTINUITY, wherever the section changes.
    """
    control = playlist.server_control
    assert control is not None
    segments: list[Segment] = list(playlist.segments)
    has_parts = bool(playlist.pending_parts) or any(s.parts for s in segments)
    independent = (
        bool(segments or playlist.pending_parts)
        and all(s.parts and s.parts[0].independent for s in segments)
        and (not playlist.pending_parts or playlist.pending_parts[0].independent)
    )

    server_control = ["CAN-BLOCK-RELOAD=YES"] if control.can_block_reload else []
    if control.can_skip_until is not None:
        server_control.append(f"CAN-SKIP-UNTIL={_num(control.can_skip_until)}")
    server_control.append(f"HOLD-BACK={_num(control.hold_back)}")
    server_control.append(f"PART-HOLD-BACK={_num(control.part_hold_back)}")

    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{VERSION}",
        f"#EXT-X-TARGETDURATION:{playlist.target_duration}",
        f"#EXT-X-SERVER-CONTROL:{','.join(server_control)}",
        f"#EXT-X-PART-INF:PART-TARGET={_num(playlist.part_target)}",
        f"#EXT-X-MEDIA-SEQUENCE:{playlist.media_sequence}",
    ]
    if playlist.discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{playlist.discontinuity_sequence}")
    if independent:
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    skipped = skipped_segment_count(playlist) if skip else 0
    if skipped:
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
    listed = segments[skipped:]
    init_uri = (listed[0].init_uri if listed else None) or playlist.init_uri
    lines.append(f"#EXT-X-MAP:URI={_quote(init_uri)}")

    parts_from = playlist.parts_listed_from()
    for segment in listed:
        init_uri = _segment_start(lines, segment.discontinuity,
                                  segment.init_uri or playlist.init_uri, init_uri)
        if segment.program_date_time is not None:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(segment.program_date_time)}")
        if segment.msn >= parts_from:
            lines.extend(_part_line(p) for p in segment.parts)
        lines.append(f"#EXTINF:{_num(segment.duration)},")
        lines.append(segment.uri)
    if playlist.pending_parts:
        _segment_start(lines, playlist.pending_discontinuity, playlist.init_uri, init_uri)
    if playlist.pending_parts and playlist.pending_program_date_time is not None:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(playlist.pending_program_date_time)}")
    lines.extend(_part_line(p) for p in playlist.pending_parts)
    if playlist.ended:
        lines.append("#EXT-X-ENDLIST")
    elif playlist.preload_hint_uri is not None and has_parts:
        lines.append(f"#EXT-X-PRELOAD-HINT:TYPE=PART,URI={_quote(playlist.preload_hint_uri)}")
    for report in rendition_reports:
        if report is None:
            continue
        attrs = f"URI={_quote(report.uri)},LAST-MSN={report.last_msn}"
        if report.last_part is not None:
            attrs += f",LAST-PART={report.last_part}"
        lines.append(f"#EXT-X-RENDITION-REPORT:{attrs}")
    return "\n".join(lines) + "\n"


def render_multivariant(
    renditions: Sequence[VariantStream], audio: Sequence[AudioRendition] = ()
) -> str:
    """The multivariant playlist text (§4.4.6), ending with a newline.

    Raises ValueError if a variant names an AUDIO group that ``audio`` lacks.
    """
    groups = {a.group_id for a in audio}
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for a in audio:
        attrs = [
            "TYPE=AUDIO",
            f"GROUP-ID={_quote(a.group_id)}",
            f"NAME={_quote(a.name)}",
        ]
        if a.language:
            attrs.append(f"LANGUAGE={_quote(a.language)}")
        attrs.append(f"DEFAULT={'YES' if a.default else 'NO'}")
        attrs.append(f"AUTOSELECT={'YES' if a.autoselect or a.default else 'NO'}")
        if a.channels:
            attrs.append(f"CHANNELS={_quote(a.channels)}")
        attrs.append(f"URI={_quote(a.uri)}")
        lines.append(f"#EXT-X-MEDIA:{','.join(attrs)}")
    for v in renditions:
        attrs = [f"BANDWIDTH={int(v.bandwidth)}"]
        if v.average_bandwidth is not None:
            attrs.append(f"AVERAGE-BANDWIDTH={int(v.average_bandwidth)}")
        attrs.append(f"CODECS={_quote(v.codecs)}")
        if v.resolution is not None:
            attrs.append(f"RESOLUTION={v.resolution[0]}x{v.resolution[1]}")
        if v.frame_rate is not None:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        if v.audio is not None:
            if v.audio not in groups:
                raise ValueError(f"variant {v.uri!r} names unknown AUDIO group {v.audio!r}")
            attrs.append(f"AUDIO={_quote(v.audio)}")
        lines.append(f"#EXT-X-STREAM-INF:{','.join(attrs)}")
        lines.append(v.uri)
    return "\n".join(lines) + "\n"


def blocking_timeout(playlist: MediaPlaylist) -> float:
    """Seconds after which a blocked reload should get 503 (3 × target duration, §6.2.5.2)."""
    return 3.0 * playlist.target_duration


def advance_part_limit(playlist: MediaPlaylist) -> int:
    """How many parts past the last one a request may ask for (§6.2.5.2).

    3 parts, or 3 seconds' worth of parts when PART-TARGET is under one second.
    """
    if playlist.part_target >= 1.0:
        return 3
    return max(3, int(3.0 / playlist.part_target + 1e-9))


def check_blocking_request(
    playlist: MediaPlaylist, msn: int | None, part: int | None
) -> Literal["ready", "wait"]:
    """Decide a Blocking Playlist Reload (``_HLS_msn``/``_HLS_part``, §6.2.5.2).

    Returns "ready" (answer now with the whole playlist) or "wait" (block, up to
    :func:`blocking_timeout`, then 503).  After ENDLIST the directives are ignored
    ("ready").  Raises BadDeliveryDirective (400) for ``_HLS_part`` without
    ``_HLS_msn``, negative values, an MSN more than two past the last segment, or a
    part more than :func:`advance_part_limit` past the last part of that segment.
    """
    if playlist.ended:
        return "ready"
    if msn is None:
        if part is not None:
            raise BadDeliveryDirective("_HLS_part requires _HLS_msn")
        return "ready"
    if msn < 0 or (part is not None and part < 0):
        raise BadDeliveryDirective("_HLS_msn and _HLS_part must be non-negative")
    last = playlist.last_msn_part()
    last_msn = last[0] if last is not None else playlist.media_sequence - 1
    if msn > last_msn + 2:
        raise BadDeliveryDirective(f"_HLS_msn={msn} is more than 2 past the last MSN {last_msn}")
    if part is None:
        return "ready" if playlist.has_segment(msn) else "wait"
    if last is not None and msn == last_msn:
        last_part = -1 if last[1] is None else last[1]
        if part > last_part + advance_part_limit(playlist):
            raise BadDeliveryDirective(f"_HLS_part={part} is too far past the last part")
    return "ready" if playlist.has_part(msn, part) else "wait"
