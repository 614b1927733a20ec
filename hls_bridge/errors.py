"""The hls_bridge package's one base error."""

from __future__ import annotations


class HlsBridgeError(Exception):
    """Base of every error the LL-HLS bridge raises."""
