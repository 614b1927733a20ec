"""The ABR ladder of the LL-HLS bridge: which renditions to encode for a source.

A `Rung` names one video rendition by its nominal height ("720p") and bitrate. The
"p" number is the *short side* of the picture, so a portrait 720x1280 phone stream
fits the 720p rung as 720x1280. `plan_ladder` fits a configured ladder to a source
size: it never upscales (rungs above the source are dropped), the top rung is the
source itself capped at the largest configured rung, and every size is even with the
source's aspect ratio kept (rounded to even pixels, e.g. 1280x720 -> 854x480).
With ``min_rungs`` a source too small for that many configured rungs gets smaller
rungs below its lowest one (`fill_rung`), so a ladder re-planned for a smaller source
keeps its renditions.

Configuration strings (`parse_ladder`)::

    "1080p,720p,480p,360p"      # default bitrates of DEFAULT_BITRATES
    "720:2800k,360:800k"        # explicit bitrates: bits/s, or with a k/M suffix
    "720p:2.8M, 480p"           # mixed
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

__all__ = [
    "DEFAULT_BITRATES",
    "DEFAULT_LADDER",
    "DEFAULT_LADDER_SPEC",
    "Rung",
    "fill_rung",
    "parse_bitrate",
    "parse_ladder",
    "plan_ladder",
]

DEFAULT_BITRATES = MappingProxyType(
    {
        2160: 14_000_000,
        1440: 8_000_000,
        1080: 5_000_000,
        720: 2_800_000,
        540: 2_000_000,
        480: 1_400_000,
        360: 800_000,
        240: 400_000,
    }
)
"""Video bitrate (bits/s) for a bare ``"NNNp"`` entry, by short-side height."""

MIN_HEIGHT = 64
MAX_HEIGHT = 4320


@dataclass(frozen=True, slots=True)
class Rung:
    """One video rendition; ``video_bitrate`` in bits per second.

    In a configured ladder ``height`` is the short side in pixels (even) and ``width``
    is 0; `plan_ladder` returns rungs whose ``width`` x ``height`` is the picture size
    (for a portrait source the picture height is then the larger number).
    """

    name: str
    height: int
    video_bitrate: int
    width: int = 0

    def __post_init__(self) -> None:
        if not MIN_HEIGHT <= self.height <= MAX_HEIGHT or self.height % 2:
            raise ValueError(
                f"rung {self.name!r}: height must be even and in "
                f"[{MIN_HEIGHT}, {MAX_HEIGHT}], got {self.height}"
            )
        if self.video_bitrate <= 0:
            raise ValueError(f"rung {self.name!r}: bitrate must be positive")
        if self.width < 0 or self.width % 2:
            raise ValueError(f"rung {self.name!r}: width must be even, got {self.width}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the encoded picture (after `plan_ladder`)."""
        return self.width, self.height

    @classmethod
    def standard(cls, height: int) -> Rung:
        """The ``"{height}p"`` rung with its `DEFAULT_BITRATES` bitrate."""
        bitrate = DEFAULT_BITRATES.get(height)
        if bitrate is None:
            cls(f"{height}p", height, 1)  # raises for a bad height first
            known = ", ".join(f"{h}p" for h in sorted(DEFAULT_BITRATES, reverse=True))
            raise ValueError(
                f"no default bitrate for {height}p (known: {known}); "
                f"give one explicitly, e.g. '{height}:{DEFAULT_BITRATES[720] // 1000}k'"
            )
        return cls(f"{height}p", height, bitrate)


_BITRATE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
_ENTRY = re.compile(r"^(\d+)[pP]?$")


def parse_bitrate(text: str) -> int:
    """``"800k"`` -> 800000, ``"2.8M"`` -> 2800000, ``"500000"`` -> 500000 (bits/s)."""
    match = _BITRATE.match(text.strip())
    if match is None:
        raise ValueError(f"bad bitrate {text!r}: expected e.g. 800k, 2.8M or 500000")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    if value < 1000:
        raise ValueError(f"bitrate {text!r} is below 1 kbit/s")
    return round(value)


def parse_ladder(spec: str) -> list[Rung]:
    """Parse ``"1080p,720p,480p,360p"`` or ``"720:2800k,360:800k"`` into rungs.

    Raises ValueError naming the bad entry (empty list, unknown height without a
    bitrate, odd or out-of-range height, bad bitrate, a height given twice).
    """
    rungs: list[Rung] = []
    entries = [e.strip() for e in spec.split(",")]
    if not any(entries):
        raise ValueError("empty ladder: expected e.g. '1080p,720p,480p,360p'")
    for entry in entries:
        if not entry:
            raise ValueError(f"empty entry in ladder {spec!r}")
        height_text, sep, bitrate_text = entry.partition(":")
        match = _ENTRY.match(height_text.strip())
        if match is None:
            raise ValueError(
                f"bad ladder entry {entry!r}: expected HEIGHT[p][:BITRATE], e.g. 720p or 720:2800k"
            )
        height = int(match.group(1))
        try:
            if sep:
                rung = Rung(f"{height}p", height, parse_bitrate(bitrate_text))
            else:
                rung = Rung.standard(height)
        except ValueError as exc:
            raise ValueError(f"ladder entry {entry!r}: {exc}") from None
        if any(r.height == height for r in rungs):
            raise ValueError(f"ladder {spec!r} lists {height}p twice")
        rungs.append(rung)
    return rungs


DEFAULT_LADDER_SPEC = "1080p,720p,480p,360p"
DEFAULT_LADDER: tuple[Rung, ...] = tuple(parse_ladder(DEFAULT_LADDER_SPEC))
"""Source up to 1080p, then 720p, 480p and 360p."""


def _even(value: float) -> int:
    return max(2, 2 * math.floor(value / 2 + 0.5))


def fill_rung(lowest: Rung) -> Rung | None:
    """The rung below ``lowest`` (unsized: ``width`` 0) that fills a ladder, or None
    below `MIN_HEIGHT`.

    Its short side is the largest `DEFAULT_BITRATES` height within [2/3, 1) of
    ``lowest.height``, else 2/3 of it (even); its bitrate is the default one for that
    height, else ``lowest``'s scaled by pixel count.
    """
    floor = lowest.height * 2 / 3
    standard = [h for h in DEFAULT_BITRATES if floor <= h < lowest.height]
    height = max(standard) if standard else _even(floor)
    if height < MIN_HEIGHT or height >= lowest.height:
        return None
    bitrate = DEFAULT_BITRATES.get(height) or max(
        1000, round(lowest.video_bitrate * (height / lowest.height) ** 2)
    )
    return Rung(f"{height}p", height, min(bitrate, lowest.video_bitrate))


def plan_ladder(
    source_width: int, source_height: int, rungs: Iterable[Rung] = DEFAULT_LADDER,
    *, min_rungs: int = 0,
) -> list[Rung]:
    """The rungs to encode for a ``source_width`` x ``source_height`` source, largest first.

    The top rung is the source size (short side rounded down to even) capped at the
    largest configured rung; rungs at or above it are replaced by it, lower ones are
    kept. A top rung between configured heights gets the bitrate of the next rung up
    scaled by pixel count. Widths are computed from the source aspect ratio, even.
    While there are fewer than ``min_rungs`` rungs, `fill_rung` adds one below the
    lowest (down to `MIN_HEIGHT`: a tiny source may still get fewer).
    Raises ValueError for an empty ladder or a source smaller than 2x2.
    """
    configured: Sequence[Rung] = sorted(rungs, key=lambda r: r.height, reverse=True)
    if not configured:
        raise ValueError("empty ladder")
    if source_width < 2 or source_height < 2:
        raise ValueError(f"bad source size {source_width}x{source_height}")
    short = min(source_width, source_height)
    top_height = min(configured[0].height, short - short % 2)

    exact = next((r for r in configured if r.height == top_height), None)
    if exact is not None:
        top = exact
    else:
        above = min((r for r in configured if r.height > top_height), key=lambda r: r.height)
        bitrate = round(above.video_bitrate * (top_height / above.height) ** 2)
        top = Rung(f"{top_height}p", top_height, bitrate)
    planned = [top] + [r for r in configured if r.height < top_height]
    while len(planned) < min_rungs:
        extra = fill_rung(planned[-1])
        if extra is None:
            break
        planned.append(extra)
    return [_size(r, source_width, source_height) for r in planned]


def _size(rung: Rung, source_width: int, source_height: int) -> Rung:
    """``rung`` with its picture size for the source (short side = ``rung.height``)."""
    if source_width >= source_height:
        width = _even(source_width * rung.height / source_height)
        return replace(rung, width=width)
    # Portrait: the short side is the width; Rung.height holds the picture height.
    height = _even(source_height * rung.height / source_width)
    return Rung(rung.name, height, rung.video_bitrate, rung.height)
