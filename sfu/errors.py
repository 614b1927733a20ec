"""SFU errors.  Each carries the HTTP status the signaling edge answers with."""

from __future__ import annotations


class SfuError(Exception):
    """Base error of the sfu package.

    :param detail: human-readable explanation (safe to show to the client).
    """

    status = 500
    title = "SFU error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status, "title": self.title, "detail": self.detail}


class BadOffer(SfuError):
    """The SDP offer cannot be parsed or is not a usable WebRTC offer (400)."""

    status = 400
    title = "Malformed SDP offer"


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
