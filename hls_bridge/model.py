"""In-memory state of one LL-HLS media playlist (draft-pantos-hls-rfc8216bis).

Pure data, no I/O: the bridge feeds finished parts and segment boundaries in, and
:mod:`hls_bridge.playlist` writes the text.  All durations are seconds (float), target
duration is whole seconds (§4.4.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "MediaPlaylist",
    "Part",
    "PlaylistError",
    "PlaylistStateError",
    "Segment",
    "ServerControl",
    "default_init_uri",
    "default_part_uri",
    "default_segment_uri",
]

from .errors import HlsBridgeError


class PlaylistError(HlsBridgeError):
    """Base error of the playlist model and writer."""


class PlaylistStateError(PlaylistError, ValueError):
    """A call would make the playlist violate the spec or its own invariants."""


@dataclass(frozen=True, slots=True)
class Part:
    """One Partial Segment (§4.4.4.9): ``index`` within its parent segment, from 0."""

    index: int
    duration: float
    uri: str
    independent: bool


@dataclass(frozen=True, slots=True)
class Segment:
    """One closed Media Segment: ``duration`` is the sum of its parts.

    ``discontinuity``: the segment starts a new Discontinuity Sequence
    (EXT-X-DISCONTINUITY before it, RFC 8216bis §4.4.4.3); ``init_uri``: its Media
    Initialization Section (EXT-X-MAP, §4.4.4.5), None = the playlist's ``init_uri``.
    """

    msn: int
    duration: float
    uri: str
    program_date_time: datetime | None
    parts: tuple[Part, ...]
    discontinuity: bool = False
    init_uri: str | None = None


@dataclass(frozen=True, slots=True)
class ServerControl:
    """``EXT-X-SERVER-CONTROL`` values (§4.4.3.8), seconds.

    ``can_skip_until`` None means delta updates are not offered.
    """

    part_hold_back: float
    hold_back: float
    can_skip_until: float | None
    can_block_reload: bool = True

    @classmethod
    def for_targets(
        cls,
        target_duration: int,
        part_target: float,
        *,
        part_hold_back_factor: float = 3.0,
        hold_back_factor: float = 3.0,
        skip_until_factor: float | None = 6.0,
    ) -> ServerControl:
        """Values as multiples of the targets (defaults: 3× part target, 3× / 6× target).

        Raises PlaylistStateError if a factor is below the spec minimum (2×, 3×, 6×).
        """
        if part_hold_back_factor < 2.0:
            raise PlaylistStateError("PART-HOLD-BACK must be >= 2x PART-TARGET (§4.4.3.8)")
        if hold_back_factor < 3.0:
            raise PlaylistStateError("HOLD-BACK must be >= 3x target duration (§4.4.3.8)")
        if skip_until_factor is not None and skip_until_factor < 6.0:
            raise PlaylistStateError("CAN-SKIP-UNTIL must be >= 6x target duration (§4.4.3.8)")
        return cls(
            part_hold_back=round(part_hold_back_factor * part_target, 6),
            hold_back=round(hold_back_factor * target_duration, 6),
            can_skip_until=(
                None if skip_until_factor is None else round(skip_until_factor * target_duration, 6)
            ),
        )


def default_segment_uri(rendition: str, msn: int) -> str:
    """Default naming scheme: ``{rendition}/seg{msn}.m4s``."""
    return f"{rendition}/seg{msn}.m4s"


def default_part_uri(rendition: str, msn: int, part: int) -> str:
    """Default naming scheme: ``{rendition}/part{msn}.{part}.m4s``."""
    return f"{rendition}/part{msn}.{part}.m4s"


def default_init_uri(rendition: str) -> str:
    """Default naming scheme: ``{rendition}/init.mp4``."""
    return f"{rendition}/init.mp4"


@dataclass(slots=True)
class MediaPlaylist:
    """State of one rendition's LL-HLS media playlist.

    Feed it with :meth:`add_part` (each finished CMAF chunk) and :meth:`close_segment`
    (at each segment boundary, i.e. before the part that starts the next GOP); call
    :meth:`end` when the stream stops.  The caller names every resource.

    - ``target_duration``: EXT-X-TARGETDURATION, whole seconds; every closed segment's
      duration rounded to the nearest integer must not exceed it (§4.4.3.1).
    - ``part_target``: PART-TARGET, seconds; no part may be longer (§4.4.4.9).
    - ``window_segments``: sliding window, the number of closed segments kept listed.
    - ``part_window``: parts are listed for segments that start within this many
      seconds of the playlist's end (default 3 × target duration, §4.4.4.9), and for
      at most the last three segments of the playlist (see :meth:`parts_listed_from`).
    - ``server_control``: defaults to :meth:`ServerControl.for_targets`; use the same
      value for every rendition of a stream.
    - ``first_msn``: MSN of the first segment (e.g. to continue numbering after a
      publisher reconnects).
    - ``discontinuity_sequence``: EXT-X-DISCONTINUITY-SEQUENCE (§4.4.3.3), the
      Discontinuity Sequence Number of the first listed segment; it grows by one for
      each segment with ``discontinuity`` that slides out of the window.
    - ``init_uri``: EXT-X-MAP URI of the in-progress segment; a closed segment keeps
      the one it was published with (:attr:`Segment.init_uri`).  Change it only with
      :meth:`discontinuity` pending and no parts in progress.

    Add the final (possibly short) part of a segment and call :meth:`close_segment`
    without yielding to the event loop in between, so that no rendered playlist ever
    shows a short non-final part (§4.4.4.9's 85 % rule).
    """

    target_duration: int
    part_target: float
    init_uri: str
    window_segments: int = 12
    part_window: float | None = None
    server_control: ServerControl | None = None
    first_msn: int = 0
    discontinuity_sequence: int = 0
    segments: list[Segment] = field(init=False, default_factory=list)
    pending_discontinuity: bool = field(init=False, default=False)
    """The in-progress segment starts a new Discontinuity Sequence (:meth:`discontinuity`)."""
    pending_parts: list[Part] = field(init=False, default_factory=list)
    pending_program_date_time: datetime | None = field(init=False, default=None)
    preload_hint_uri: str | None = field(init=False, default=None)
    ended: bool = field(init=False, default=False)
    _next_msn: int = field(init=False)

    def __post_init__(self) -> None:
        if self.target_duration < 1 or int(self.target_duration) != self.target_duration:
            raise PlaylistStateError("target_duration must be a positive whole number of seconds")
        if not 0 < self.part_target <= self.target_duration:
            raise PlaylistStateError("part_target must be in (0, target_duration]")
        if self.window_segments < 1:
            raise PlaylistStateError("window_segments must be >= 1")
        if self.discontinuity_sequence < 0:
            raise PlaylistStateError("discontinuity_sequence must be >= 0")
        if self.part_window is None:
            self.part_window = 3.0 * self.target_duration
        if self.server_control is None:
            self.server_control = ServerControl.for_targets(self.target_duration, self.part_target)
        self._next_msn = self.first_msn

    # -- state changes -------------------------------------------------------------

    def add_part(
        self, duration: float, uri: str, independent: bool, *, hint: str | None = None,
        program_date_time: datetime | None = None,
    ) -> Part:
        """Append a finished part to the in-progress segment (MSN :attr:`next_msn`).

        ``hint`` is the URI of the part after this one (EXT-X-PRELOAD-HINT) or None.
        ``program_date_time``, given with a segment's first part, is listed as the
        in-progress segment's EXT-X-PROGRAM-DATE-TIME (§4.4.4.6) until it closes.
        Raises PlaylistStateError after :meth:`end`, for a non-positive duration or one
        longer than PART-TARGET.
        """
        if self.ended:
            raise PlaylistStateError("playlist has ended")
        if not 0 < duration <= self.part_target:
            raise PlaylistStateError(
                f"part duration {duration} s outside (0, PART-TARGET={self.part_target}]"
            )
        part = Part(len(self.pending_parts), float(duration), uri, bool(independent))
        if not self.pending_parts:
            self.pending_program_date_time = program_date_time
        self.pending_parts.append(part)
        self.preload_hint_uri = hint
        return part

    def close_segment(
        self, uri: str, program_date_time: datetime | None = None, *, hint: str | None = None
    ) -> Segment:
        """Turn the in-progress parts into segment :attr:`next_msn` and slide the window.

        ``hint`` is the URI of the next segment's first part (EXT-X-PRELOAD-HINT);
        ``program_date_time`` defaults to the one given with the segment's first part.
        Raises PlaylistStateError with no pending parts, after :meth:`end`, or if the
        segment's rounded duration exceeds the target duration.
        """
        if self.ended:
            raise PlaylistStateError("playlist has ended")
        if not self.pending_parts:
            raise PlaylistStateError("close_segment needs at least one part")
        duration = sum(p.duration for p in self.pending_parts)
        if round(duration) > self.target_duration:
            raise PlaylistStateError(
                f"segment duration {duration:.3f} s exceeds target duration {self.target_duration}"
            )
        if program_date_time is None:
            program_date_time = self.pending_program_date_time
        segment = Segment(
            self._next_msn, duration, uri, program_date_time, tuple(self.pending_parts),
            discontinuity=self.pending_discontinuity, init_uri=self.init_uri,
        )
        self.segments.append(segment)
        self.pending_parts = []
        self.pending_program_date_time = None
        self.pending_discontinuity = False
        self._next_msn += 1
        removed = self.segments[: max(0, len(self.segments) - self.window_segments)]
        self.discontinuity_sequence += sum(s.discontinuity for s in removed)
        del self.segments[: len(removed)]
        self.preload_hint_uri = hint
        return segment

    def discontinuity(self) -> None:
        """Make the next segment start a new Discontinuity Sequence (EXT-X-DISCONTINUITY,
        §4.4.4.3), e.g. before new encoding parameters or a new EXT-X-MAP.

        A no-op for the tag while nothing was ever published (the first segment starts
        the first sequence anyway).  Raises PlaylistStateError after :meth:`end` or with
        parts in progress (close the segment first).
        """
        if self.ended:
            raise PlaylistStateError("playlist has ended")
        if self.pending_parts:
            raise PlaylistStateError("close the in-progress segment before discontinuity()")
        if self._next_msn > self.first_msn:
            self.pending_discontinuity = True

    def end(self) -> None:
        """Mark the playlist finished (EXT-X-ENDLIST); drops the preload hint.

        Raises PlaylistStateError if parts are pending (close the segment first).
        """
        if self.pending_parts:
            raise PlaylistStateError("close the in-progress segment before end()")
        self.ended = True
        self.preload_hint_uri = None

    # -- queries -------------------------------------------------------------------

    @property
    def next_msn(self) -> int:
        """MSN of the in-progress segment (the one :meth:`add_part` appends to)."""
        return self._next_msn

    @property
    def next_discontinuity_sequence(self) -> int:
        """Discontinuity Sequence Number of the in-progress segment (§4.4.3.3)."""
        listed = sum(s.discontinuity for s in self.segments)
        return self.discontinuity_sequence + listed + self.pending_discontinuity

    @property
    def media_sequence(self) -> int:
        """EXT-X-MEDIA-SEQUENCE: MSN of the first listed segment (never decreases)."""
        return self.segments[0].msn if self.segments else self._next_msn

    @property
    def duration(self) -> float:
        """Seconds of media listed: closed segments plus in-progress parts."""
        return sum(s.duration for s in self.segments) + sum(p.duration for p in self.pending_parts)

    def last_msn_part(self) -> tuple[int, int | None] | None:
        """(LAST-MSN, LAST-PART) as for EXT-X-RENDITION-REPORT (§4.4.5.4), or None if empty.

        The in-progress segment counts once it has a part; LAST-PART is None only when
        the last segment has no parts.
        """
        if self.pending_parts:
            return self._next_msn, self.pending_parts[-1].index
        if self.segments:
            last = self.segments[-1]
            return last.msn, (last.parts[-1].index if last.parts else None)
        return None

    def has_segment(self, msn: int) -> bool:
        """True once a closed segment with MSN >= ``msn`` exists (blocking reload)."""
        return bool(self.segments) and self.segments[-1].msn >= msn

    def has_part(self, msn: int, part: int) -> bool:
        """True once part ``part`` of segment ``msn``, or any later part, exists (§6.2.5.2)."""
        last = self.last_msn_part()
        if last is None:
            return False
        last_msn, last_part = last
        if last_msn != msn:
            return last_msn > msn
        return last_part is not None and last_part >= part

    def parts_listed_from(self) -> int:
        """MSN of the oldest closed segment whose parts are still listed (§4.4.4.9).

        Parts older than three target durations from the end of the playlist are
        removed: they are listed only for segments starting within ``part_window``
        seconds of the playlist's end, and only for the last three segments the
        playlist shows.  Until ENDLIST the in-progress segment is one of those three
        (players count it as a segment even while only its EXT-X-PRELOAD-HINT is
        listed), so at most two closed segments keep their parts.  The in-progress
        segment's parts are always listed.
        """
        assert self.part_window is not None
        remaining = self.duration
        first = self._next_msn
        for segment in self.segments:
            if remaining <= self.part_window + 1e-9:
                first = segment.msn
                break
            remaining -= segment.duration
        closed_with_parts = 3 if self.ended else 2
        if len(self.segments) > closed_with_parts:
            first = max(first, self.segments[-closed_with_parts].msn)
        return first
