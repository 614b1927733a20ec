"""SFU errors.  Each carries the HTTP status the signaling edge answers with."""

from __future__ import annotations

from common.problems import problem_type

from .protocol import RpcError

INVALID_SDP_TYPE = problem_type("invalid-sdp")
"""RFC 9457 problem ``type`` of an SDP offer that breaks a rule of the SDP or WebRTC specs
(a stable identifier, not a locator: docs/whip-whep.md lists the rules)."""


class SfuError(Exception):
    """Base error of the sfu package.

    :param detail: human-readable explanation (safe to show to the client).
    """

    status = 500
    title = "SFU error"
    problem_type: str | None = None
    """RFC 9457 ``type`` URI; ``None`` means ``about:blank`` (``title`` is then the phrase)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title

    def to_rpc_error(self) -> RpcError:
        """This error as the SFU protocol's error ack (:class:`sfu.protocol.RpcError`)."""
        return RpcError(self.status, self.title, self.detail, self.problem_type)


class BadOffer(SfuError):
    """The SDP offer cannot be parsed or is not a usable WebRTC offer (400)."""

    status = 400
    title = "Malformed SDP offer"


class InvalidSdp(BadOffer):
    """An SDP offer that breaks a rule of RFC 8866 (SDP) or of the WebRTC SDP specs: a
    missing or duplicate ``a=mid``, a fingerprint hash other than SHA-2, a malformed
    ``c=`` line... (400, problem type :data:`INVALID_SDP_TYPE`).  ``detail`` is short and
    names the rule, never the offending text."""

    title = "Invalid SDP offer"
    problem_type = INVALID_SDP_TYPE


class UnsupportedMedia(SfuError):
    """Valid SDP the SFU cannot serve: codecs, track count, direction (422)."""

    status = 422
    title = "Unsupported media"


class RoomNotLive(SfuError):
    """A viewer asked for a room with no publisher (409 + Retry-After)."""

    status = 409
    title = "Room is not live"


class RoomConflict(SfuError):
    """A node pipe into a room that has its own publisher on this node (409)."""

    status = 409
    title = "Room has a publisher here"


class SessionNotFound(SfuError):
    status = 404
    title = "Unknown session"


class Overloaded(SfuError):
    """The node refuses new sessions (draining or full) (503 + Retry-After)."""

    status = 503
    title = "SFU overloaded"
