"""The hls_bridge package's base error, and the errors shared by its modules."""

from __future__ import annotations


class HlsBridgeError(Exception):
    """Base of every error the LL-HLS bridge raises."""


class BridgeRefused(HlsBridgeError):
    """A room's bridge was not started: the machine lacks the CPU for it (the text says why)."""


PASSTHROUGH_LOST_STATUS = 3
"""A transcoder process's exit status when the source stopped fitting the top rendition's
passthrough (:class:`hls_bridge.transcoder.PassthroughLost`): restart it without."""
