"""Rooms and their stream keys.

A stream key is 192 random bits (``secrets.token_urlsafe(24)``), shown once
and stored only as its SHA-256 digest — for high-entropy random secrets a fast
hash is the right tool (no dictionary to defend against) — and compared with
:func:`hmac.compare_digest`.  Keys can be rotated.

Failed attempts are throttled per client address, successes never: after ``max_failures``
wrong keys within ``window_s`` (10 in 60 s by default) the address is *blocked* until the
oldest of them leaves the window.  While it is blocked, a key from it is compared with the room's key only — a right
one is accepted, a wrong one is answered 429 at once, without the search that tells 401
from 403.  So someone guessing keys from the publisher's address (a shared NAT) cannot lock
the publisher out; what it costs them is that their guesses are answered 429 from then
on.  Guessing speed is then bounded by the per-address request rate only, which against
192-bit random keys changes nothing (2^191 guesses on average).
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

from common.names import ROOM_RE, is_room_name


class KeyCheck(Enum):
    OK = "ok"
    INVALID = "invalid"  # 401 invalid_token
    WRONG_ROOM = "wrong_room"  # 403 insufficient_scope: a real key, for another room


def digest_of(key: str) -> bytes:
    """SHA-256 of a stream key: what is stored and compared, never the key."""
    return hashlib.sha256(key.encode()).digest()


def same_key(digest: bytes, key: str) -> bool:
    """Whether ``key`` hashes to ``digest``, in constant time (:func:`hmac.compare_digest`)."""
    return hmac.compare_digest(digest, digest_of(key))


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
        if not is_room_name(name):
            raise ValueError(f"room name {name!r} must match {ROOM_RE.pattern}")
        key = key or new_stream_key()
        room = self.rooms.get(name)
        if room is None:
            self.rooms[name] = Room(name, digest_of(key))
        else:
            room.key_digest = digest_of(key)
        return key

    def rotate(self, name: str) -> str:
        if name not in self.rooms:
            raise KeyError(name)
        return self.create(name)

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def key_matches(self, name: str, key: str) -> bool:
        """Whether ``key`` is room ``name``'s key (constant time; False for no such room)."""
        room = self.rooms.get(name)
        return room is not None and same_key(room.key_digest, key)

    def check_key(self, name: str, key: str) -> KeyCheck:
        """Constant-time comparison against the room's digest (and, for 403, the others')."""
        digest = digest_of(key)
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

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` is no longer `blocked` (0.0 when it is not), s."""
        if not self.blocked(client):
            return 0.0
        recent = self._failures[client]
        return max(0.0, recent[-self._max_failures] + self._window_s - time.monotonic())

    def record_failure(self, client: str) -> None:
        """Count a wrong key from ``client`` (at most ``max_failures`` are kept per address)."""
        failures = self._failures.setdefault(client, [])
        failures.append(time.monotonic())
        del failures[:-self._max_failures]
