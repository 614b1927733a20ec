"""The room-name rule: a room name is safe in a URL path segment, a file name and a Redis key."""

from __future__ import annotations

import re

ROOM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""1–64 characters: ASCII letters and digits, ``_`` and ``-``, not starting with ``_``/``-``."""


def is_room_name(name: object) -> bool:
    """True when ``name`` is a ``str`` matching :data:`ROOM_RE` (no path tricks, no control bytes)."""
    return isinstance(name, str) and ROOM_RE.fullmatch(name) is not None
