"""Problem types (RFC 9457 §3.1.1) of the LL-HLS bridge's HTTP answers and reports.

Each type is a URI under :data:`PROBLEM_BASE` with a fixed ``title``; an answer's
``detail`` is a short sentence about this occurrence and never carries exception text,
library versions or file paths (those go to the log).  The same URIs name why an H.264
encoder probe failed in the node reports that ``GET /api/hls`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.problems import PROBLEM_BASE, HttpProblem

__all__ = [
    "BAD_DIRECTIVE",
    "ENCODER_NO_DEVICE",
    "ENCODER_NO_OUTPUT",
    "ENCODER_NOT_BUILT",
    "ENCODER_OPEN_FAILED",
    "ENCODER_UNAVAILABLE",
    "NOT_FOUND",
    "NOT_READY",
    "PROBLEM_BASE",
    "PROBLEM_TYPES",
    "ProblemType",
    "hls_problem",
]



@dataclass(frozen=True, slots=True)
class ProblemType:
    """One problem type: ``uri`` (the RFC 9457 ``type``), ``title`` and a default ``detail``."""

    slug: str
    title: str
    detail: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


NOT_FOUND = ProblemType(
    "hls-not-found", "No such HLS resource",
    "the room has no HLS stream, or the resource is unknown or expired",
)
BAD_DIRECTIVE = ProblemType(
    "hls-bad-directive", "Invalid LL-HLS delivery directive",
    "a delivery directive (_HLS_msn, _HLS_part, _HLS_skip) is malformed or out of range",
)
NOT_READY = ProblemType(
    "hls-not-ready", "HLS media not ready",
    "the requested playlist or part did not appear in time; retry",
)
ENCODER_NOT_BUILT = ProblemType(
    "hls-encoder-not-built", "Encoder not available",
    "this encoder is not part of the node's FFmpeg build",
)
ENCODER_NO_DEVICE = ProblemType(
    "hls-encoder-no-device", "Encoder device missing",
    "the encoder's hardware device is missing or not accessible",
)
ENCODER_OPEN_FAILED = ProblemType(
    "hls-encoder-open-failed", "Encoder failed to open",
    "the encoder could not be opened or could not encode test frames",
)
ENCODER_UNAVAILABLE = ProblemType(
    "hls-encoder-unavailable", "Encoder not usable",
    "the encoder cannot be used on this node",
)
ENCODER_NO_OUTPUT = ProblemType(
    "hls-encoder-no-output", "Encoder produced no output",
    "the encoder accepted test frames but produced no packet",
)

PROBLEM_TYPES: Mapping[str, ProblemType] = {
    t.uri: t
    for t in (
        NOT_FOUND, BAD_DIRECTIVE, NOT_READY, ENCODER_NOT_BUILT, ENCODER_NO_DEVICE,
        ENCODER_OPEN_FAILED, ENCODER_NO_OUTPUT, ENCODER_UNAVAILABLE,
    )
}
"""Every problem type above, by URI."""


def hls_problem(
    status: int, kind: ProblemType, detail: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> HttpProblem:
    """An :class:`~common.problems.HttpProblem` of type ``kind`` (``detail`` defaults to
    the type's own sentence)."""
    return HttpProblem(
        status, kind.title, kind.detail if detail is None else detail, headers=headers,
        type=kind.uri,
    )
