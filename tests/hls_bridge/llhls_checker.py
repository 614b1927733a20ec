"""Reusable LL-HLS conformance checker (RFC 8216bis §4.4.3.7, §4.4.3.8, §4.4.4.9,
§4.4.5.3, §4.4.5.4, §6.2.2, §6.2.5.1).

Works on playlist *text* parsed with the third-party ``m3u8`` package, so it can be
pointed at the writer's output in unit tests and at the real bridge over HTTP later.
Every ``*_problems`` function returns a list of human-readable violations (empty when
conforming); ``check_*`` raises :class:`LlHlsViolation` listing them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import m3u8

EPS = 1e-6


class LlHlsViolation(AssertionError):
    """A playlist broke one or more LL-HLS requirements."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _raise(problems: list[str]) -> None:
    if problems:
        raise LlHlsViolation(problems)


@dataclass(frozen=True)
class Entry:
    """One listed segment: ``uri`` None for the in-progress segment (parts only)."""

    msn: int
    uri: str | None
    duration: float | None
    parts: tuple[tuple[str, float, bool], ...]


def parse(text: str) -> m3u8.M3U8:
    return m3u8.loads(text)


def skipped(pl: m3u8.M3U8) -> int:
    return int(getattr(pl.skip, "skipped_segments", None) or 0)


def entries(pl: m3u8.M3U8) -> list[Entry]:
    """Listed segments with their MSNs (EXT-X-MEDIA-SEQUENCE + skipped + position)."""
    first = (pl.media_sequence or 0) + skipped(pl)
    out = []
    for i, seg in enumerate(pl.segments):
        parts = tuple((p.uri, float(p.duration), p.independent == "YES") for p in seg.parts)
        duration = None if seg.uri is None else float(seg.duration)
        out.append(Entry(first + i, seg.uri, duration, parts))
    return out


def last_msn_part(pl: m3u8.M3U8) -> tuple[int, int | None] | None:
    """(LAST-MSN, LAST-PART) of a parsed playlist, as a rendition report would give it."""
    listed = entries(pl)
    if not listed:
        return None
    last = listed[-1]
    return last.msn, (len(last.parts) - 1 if last.parts else None)


def media_problems(text: str, *, recommended: bool = True) -> list[str]:
    """Single-playlist rows: §4.4.3.7, §4.4.4.9, §4.4.3.8, §4.4.5.3, §6.2.2, TARGETDURATION.

    ``recommended`` also demands PART-HOLD-BACK >= 3x PART-TARGET (a SHOULD).
    """
    problems: list[str] = []
    pl = parse(text)
    if pl.is_variant:
        return ["expected a media playlist, got a multivariant playlist"]
    listed = entries(pl)
    has_parts = any(e.parts for e in listed)
    target = pl.target_duration
    part_target = getattr(pl.part_inf, "part_target", None)
    if target is None:
        problems.append("EXT-X-TARGETDURATION missing")
        return problems
    if has_parts and part_target is None:
        problems.append("§4.4.3.7 EXT-X-PART present without EXT-X-PART-INF:PART-TARGET")
    if pl.version is None or (skipped(pl) and pl.version < 9):
        problems.append(f"EXT-X-VERSION {pl.version} too low (EXT-X-SKIP needs 9)")

    # §4.4.3.8 server control
    sc = pl.server_control
    if part_target is not None:
        if sc is None:
            problems.append("§4.4.3.8 EXT-X-SERVER-CONTROL missing")
        else:
            if sc.can_block_reload != "YES":
                problems.append("§4.4.3.8 CAN-BLOCK-RELOAD=YES missing")
            phb = sc.part_hold_back
            need = (3.0 if recommended else 2.0) * part_target
            if phb is None or phb < need - EPS:
                problems.append(f"§4.4.3.8 PART-HOLD-BACK={phb} < {need:g}")
            hb = sc.hold_back if sc.hold_back is not None else 3.0 * target
            if hb < 3.0 * target - EPS:
                problems.append(f"§4.4.3.8 HOLD-BACK={hb} < 3x target duration")
            if sc.can_skip_until is not None and sc.can_skip_until < 6.0 * target - EPS:
                problems.append(f"§4.4.3.8 CAN-SKIP-UNTIL={sc.can_skip_until} < 6x target")

    # §4.4.3.1 target duration, §4.4.4.9 part durations
    for e in listed:
        if e.duration is not None and round(e.duration) > target:
            problems.append(f"segment {e.msn}: EXTINF {e.duration} rounds above {target}")
        if e.parts and e.duration is not None:
            total = sum(d for _, d, _ in e.parts)
            if abs(total - e.duration) > 1e-4 * len(e.parts) + EPS:
                problems.append(f"segment {e.msn}: parts sum {total:.5f} != EXTINF {e.duration}")
        if part_target is None:
            continue
        for i, (uri, d, independent) in enumerate(e.parts):
            if d > part_target + EPS:
                problems.append(f"§4.4.4.9 part {uri} ({d} s) > PART-TARGET {part_target}")
            final = e.uri is not None and i == len(e.parts) - 1
            if not independent and not final and d < 0.85 * part_target - EPS:
                problems.append(
                    f"§4.4.4.9 non-independent non-final part {uri} ({d} s) "
                    f"< 85% of PART-TARGET {part_target}"
                )
    if pl.is_independent_segments:
        for e in listed:
            if e.parts and not e.parts[0][2]:
                problems.append(f"EXT-X-INDEPENDENT-SEGMENTS but segment {e.msn} starts dependent")

    # EXT-X-PROGRAM-DATE-TIME of consecutive segments advances by the EXTINF between them
    # (a new Discontinuity Sequence may start anywhere in time, §4.4.4.3)
    for prev, seg in zip(pl.segments, pl.segments[1:], strict=False):
        if seg.discontinuity:
            continue
        if prev.program_date_time and seg.program_date_time and prev.uri is not None:
            step = (seg.program_date_time - prev.program_date_time).total_seconds()
            if abs(step - float(prev.duration)) > 0.002:
                problems.append(
                    f"EXT-X-PROGRAM-DATE-TIME of {seg.uri} is {step:.3f} s after the previous "
                    f"segment, whose EXTINF is {prev.duration}"
                )

    # §6.2.2 parts listed only near the live edge
    end = sum(
        (e.duration if e.uri is not None else sum(d for _, d, _ in e.parts)) or 0.0 for e in listed
    )
    position = 0.0
    for e in listed:
        part_start = position
        for uri, d, _ in e.parts:
            if end - part_start > 3.0 * target + EPS:
                problems.append(f"§6.2.2 part {uri} listed {end - part_start:.3f} s from the end")
            part_start += d
        position += e.duration if e.uri is not None else sum(d for _, d, _ in e.parts)

    # §4.4.5.3 preload hint
    if pl.preload_hint is not None:
        if pl.is_endlist:
            problems.append("§4.4.5.3 EXT-X-PRELOAD-HINT after EXT-X-ENDLIST")
        if pl.preload_hint.hint_type not in ("PART", "MAP"):
            problems.append(f"§4.4.5.3 PRELOAD-HINT TYPE={pl.preload_hint.hint_type}")
    if pl.is_endlist and skipped(pl):
        problems.append("§6.2.5.1 EXT-X-SKIP in an ended playlist")
    if listed and listed[0].uri is not None and pl.segments[0].init_section is None:
        problems.append("EXT-X-MAP missing before the first segment (fMP4)")
    return problems


def check_media(text: str, *, recommended: bool = True) -> m3u8.M3U8:
    _raise(media_problems(text, recommended=recommended))
    return parse(text)


def renditions_problems(texts: Mapping[str, str], *, exact_reports: bool = True) -> list[str]:
    """Cross-rendition rows: identical SERVER-CONTROL (§4.4.3.8) and reports (§4.4.5.4).

    ``texts`` maps the URI other renditions use in their reports to that rendition's
    playlist.  With ``exact_reports`` (playlists rendered from one instant) LAST-MSN and
    LAST-PART must equal the reported rendition's last part; otherwise the report may
    lag but must name a part (or segment) that rendition lists.
    """
    problems: list[str] = []
    parsed = {uri: parse(t) for uri, t in texts.items()}
    controls = {
        uri: None
        if p.server_control is None
        else (
            p.server_control.can_block_reload,
            p.server_control.part_hold_back,
            p.server_control.hold_back,
            p.server_control.can_skip_until,
        )
        for uri, p in parsed.items()
    }
    if len(set(controls.values())) > 1:
        problems.append(f"§4.4.3.8 EXT-X-SERVER-CONTROL differs between renditions: {controls}")
    for uri, pl in parsed.items():
        reports = {r.uri: r for r in pl.rendition_reports}
        others = set(parsed) - {uri}
        if set(reports) != others:
            problems.append(
                f"§4.4.5.4 {uri} reports {sorted(reports)} instead of the others {sorted(others)}"
            )
        for other in others & set(reports):
            r = reports[other]
            actual = last_msn_part(parsed[other])
            got = (r.last_msn, r.last_part)
            if actual is None:
                problems.append(f"§4.4.5.4 {uri} reports {other} which lists nothing")
            elif exact_reports and got != actual:
                problems.append(f"§4.4.5.4 {uri} reports {other} at {got}, it is at {actual}")
            elif not exact_reports:
                known = {(e.msn, i) for e in entries(parsed[other]) for i in range(len(e.parts))}
                known |= {(e.msn, None) for e in entries(parsed[other])}
                norm = (got[0], -1 if got[1] is None else got[1])
                if norm > (actual[0], -1 if actual[1] is None else actual[1]) or (got not in known):
                    problems.append(f"§4.4.5.4 {uri} reports {other} at unknown {got}")
    return problems


def check_renditions(texts: Mapping[str, str], *, exact_reports: bool = True) -> None:
    _raise(renditions_problems(texts, exact_reports=exact_reports))


def sequence_problems(texts: Sequence[str]) -> list[str]:
    """Successive renders of one rendition (§6.2.2): media sequence never decreases,
    an MSN never changes URI or duration, the live edge never moves back, ENDLIST stays."""
    problems: list[str] = []
    seen: dict[int, tuple[str, float]] = {}
    prev_seq = None
    prev_last = None
    ended = False
    for n, text in enumerate(texts):
        pl = parse(text)
        seq = pl.media_sequence or 0
        if prev_seq is not None and seq < prev_seq:
            problems.append(f"§6.2.2 render {n}: media sequence {seq} < {prev_seq}")
        prev_seq = seq
        for e in entries(pl):
            if e.uri is None:
                continue
            old = seen.setdefault(e.msn, (e.uri, e.duration or 0.0))
            if old != (e.uri, e.duration):
                problems.append(f"render {n}: MSN {e.msn} changed from {old} to {e.uri}")
        last = last_msn_part(pl)
        if last is not None:
            key = (last[0], -1 if last[1] is None else last[1])
            if prev_last is not None and key < prev_last:
                problems.append(f"render {n}: live edge moved back to {last}")
            prev_last = key
        if ended and not pl.is_endlist:
            problems.append(f"render {n}: EXT-X-ENDLIST disappeared")
        ended = ended or pl.is_endlist
    return problems


def check_sequence(texts: Sequence[str]) -> None:
    _raise(sequence_problems(texts))


def delta_problems(full_text: str, delta_text: str) -> list[str]:
    """§6.2.5.1: a delta update equals the full playlist (same instant) with its first
    SKIPPED-SEGMENTS segments replaced by EXT-X-SKIP, keeping >= CAN-SKIP-UNTIL listed."""
    problems: list[str] = []
    full, delta = parse(full_text), parse(delta_text)
    n = skipped(delta)
    sc = full.server_control
    if n and (sc is None or sc.can_skip_until is None):
        problems.append("§6.2.5.1 EXT-X-SKIP without CAN-SKIP-UNTIL")
    if n and full.is_endlist:
        problems.append("§6.2.5.1 EXT-X-SKIP after ENDLIST")
    if skipped(full):
        problems.append("the full playlist contains EXT-X-SKIP")
    if delta.media_sequence != full.media_sequence:
        problems.append(
            f"delta media sequence {delta.media_sequence} != full {full.media_sequence}"
        )
    full_entries, delta_entries = entries(full), entries(delta)
    if full_entries[n:] != delta_entries:
        problems.append(
            f"§6.2.5.1 delta lists {len(delta_entries)} segments after skipping {n}, "
            f"which are not the tail of the full playlist's {len(full_entries)}"
        )
    if n and sc is not None and sc.can_skip_until is not None:
        kept = sum(
            e.duration if e.uri is not None else sum(d for _, d, _ in e.parts)
            for e in delta_entries
        )
        if kept < sc.can_skip_until - EPS:
            problems.append(
                f"§6.2.5.1 delta keeps {kept:.3f} s < CAN-SKIP-UNTIL {sc.can_skip_until}"
            )
    if (full.preload_hint and full.preload_hint.uri) != (
        delta.preload_hint and delta.preload_hint.uri
    ):
        problems.append("delta and full playlists disagree on EXT-X-PRELOAD-HINT")
    return problems + media_problems(delta_text)


def check_delta(full_text: str, delta_text: str) -> None:
    _raise(delta_problems(full_text, delta_text))


def multivariant_problems(text: str) -> list[str]:
    """EXT-X-STREAM-INF has BANDWIDTH and CODECS, AVERAGE-BANDWIDTH <= BANDWIDTH, and
    every AUDIO group names an EXT-X-MEDIA TYPE=AUDIO group with a URI."""
    problems: list[str] = []
    pl = parse(text)
    if not pl.is_variant:
        return ["expected a multivariant playlist"]
    groups = {m.group_id for m in pl.media if m.type == "AUDIO"}
    for m in pl.media:
        if m.type == "AUDIO" and not m.uri:
            problems.append(f"EXT-X-MEDIA audio {m.name} has no URI")
    for v in pl.playlists:
        si = v.stream_info
        if not si.bandwidth:
            problems.append(f"{v.uri}: BANDWIDTH missing")
        if not si.codecs:
            problems.append(f"{v.uri}: CODECS missing")
        if (
            si.average_bandwidth is not None
            and si.bandwidth
            and si.average_bandwidth > si.bandwidth
        ):
            problems.append(f"{v.uri}: AVERAGE-BANDWIDTH > BANDWIDTH")
        if si.audio is not None and si.audio not in groups:
            problems.append(f"{v.uri}: AUDIO group {si.audio!r} not defined")
    return problems


def check_multivariant(text: str) -> m3u8.M3U8:
    _raise(multivariant_problems(text))
    return parse(text)
