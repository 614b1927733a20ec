"""Rooms and their stream keys.

A stream key is 192 random bits (``secrets.token_urlsafe(24)``), shown once
and stored only as its SHA-256 digest — for high-entropy random secrets a fast
hash is the right tool (no dictionary to defend against) — and compared with
:func:`hmac.compare_digest`.  Keys can be rotated.  Failed attempts are
rate-limited per client address.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from common.names import ROOM_RE


class KeyCheck(Enum):
    OK = "ok"
    INVALID = "invalid"  # 401 invalid_token
    WRONG_ROOM = "wrong_room"  # 403 insufficient_scope: a real key, for another room


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_stream_key() -> str:
    return "sk_" + secrets.token_urlsafe(24)


@dataclass
class Room:
    name: str
    key_digest: bytes = field(repr=False)
    live: bool = False
    viewers: int = 0
    """Viewers on every node (origin and edges)."""
    node: str | None = None
    """The room's origin node: the SFU node hosting its publisher."""
    node_viewers: dict[str, int] = field(default_factory=dict, repr=False)
    """Viewers per node id (nodes that reported some)."""

    def to_json(self) -> dict[str, object]:
        return {"room": self.name, "live": self.live, "viewers": self.viewers}

    def apply_state(self, node_id: str, state: Mapping[str, Any]) -> None:
        """A node's report of this room, ``{live, viewers, pipes?, pipe?}``: viewers add up
        over nodes; ``live`` and ``node`` follow the origin (a report without ``pipe``)."""
        viewers = int(state.get("viewers") or 0)
        if viewers > 0:
            self.node_viewers[node_id] = viewers
        else:
            self.node_viewers.pop(node_id, None)
        if not state.get("pipe"):
            if state.get("live") or viewers or state.get("pipes"):
                self.live, self.node = bool(state.get("live")), node_id
            elif self.node == node_id:
                self.live, self.node = False, None
        self.viewers = sum(self.node_viewers.values())

    def forget_node(self, node_id: str) -> bool:
        """The node is gone.  :returns: whether the room's state changed."""
        changed = self.node_viewers.pop(node_id, None) is not None
        if self.node == node_id:
            self.live, self.node, changed = False, None, True
        self.viewers = sum(self.node_viewers.values())
        return changed


class RoomRegistry:
    """In-memory rooms (the embedded default; Redis-backed in scale-out)."""

    def __init__(self, max_failures: int = 10, window_s: float = 60.0) -> None:
        self.rooms: dict[str, Room] = {}
        self._failures: dict[str, list[float]] = {}
        self._max_failures = max_failures
        self._window_s = window_s

    def create(self, name: str, key: str | None = None) -> str:
        """Create (or re-key) a room; returns the stream key in clear, once."""
        if not ROOM_RE.match(name):
            raise ValueError(f"room name {name!r} must match {ROOM_RE.pattern}")
        key = key or new_stream_key()
        room = self.rooms.get(name)
        if room is None:
            self.rooms[name] = Room(name, _digest(key))
        else:
            room.key_digest = _digest(key)
        return key

    def rotate(self, name: str) -> str:
        if name not in self.rooms:
            raise KeyError(name)
        return self.create(name)

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def check_key(self, name: str, key: str) -> KeyCheck:
        """Constant-time comparison against the room's digest (and, for 403, the others')."""
        digest = _digest(key)
        room = self.rooms.get(name)
        if room is not None and hmac.compare_digest(room.key_digest, digest):
            return KeyCheck.OK
        for other in self.rooms.values():
            if other is not room and hmac.compare_digest(other.key_digest, digest):
                return KeyCheck.WRONG_ROOM
        return KeyCheck.INVALID

    def blocked(self, client: str) -> bool:
        """Too many failed key attempts from ``client`` in the window."""
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < self._window_s]
        self._failures[client] = recent
        if not recent:
            self._failures.pop(client, None)
        return len(recent) >= self._max_failures

    def record_failure(self, client: str) -> None:
        self._failures.setdefault(client, []).append(time.monotonic())
