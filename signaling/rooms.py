"""Rooms: the live state each room has on this signaling instance, and the per-address
throttle of wrong publish credentials.

A room exists when the :class:`~signaling.publish_auth.PublishAuthority` says so (a static
room, or every channel of the platform); its :class:`Room` state (live, viewers, origin node)
is created here when first needed — a publisher, a viewer, a page joining, a node's report.

Failed publish attempts are throttled per client address, successes never: after
``max_failures`` wrong credentials within ``window_s`` (10 in 60 s by default) the address
is *blocked* until the oldest of them leaves the window.  While it is blocked, a credential
from it is still checked — a right one is accepted — but a wrong one is answered 429 at
once, without telling 401 from 403.  So someone guessing keys from the publisher's address
(a shared NAT) cannot lock the publisher out; what it costs them is that their guesses are
answered 429 from then on.  Guessing speed is then bounded by the per-address request rate
only, which against 192-bit random keys changes nothing (2^191 guesses on average).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.names import ROOM_RE, is_room_name

from .publish_auth import PublishAuthority
from .static_keys import StaticKeys


@dataclass
class Room:
    name: str
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
    """The rooms' state on this instance (mirrored from Redis in Redis mode), and which rooms
    exist (:attr:`authority`).

    :param authority: default :class:`~signaling.static_keys.StaticKeys` (no room until one
        is created there); the platform installs its own.
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0,
                 authority: PublishAuthority | None = None) -> None:
        self.rooms: dict[str, Room] = {}
        self.authority: PublishAuthority = authority if authority is not None else StaticKeys()
        self._failures: dict[str, list[float]] = {}
        self._max_failures = max_failures
        self._window_s = window_s

    def get(self, name: str) -> Room | None:
        """The state of a room this instance has seen, else ``None`` (no lookup)."""
        return self.rooms.get(name)

    def ensure(self, name: str) -> Room:
        """The room's state, created (offline, no viewers) when first needed.

        :raises ValueError: ``name`` does not match :data:`common.names.ROOM_RE`.
        """
        room = self.rooms.get(name)
        if room is None:
            if not is_room_name(name):
                raise ValueError(f"room name {name!r} must match {ROOM_RE.pattern}")
            room = self.rooms[name] = Room(name)
        return room

    async def find(self, name: str) -> Room | None:
        """The state of room ``name`` if it exists (:meth:`PublishAuthority.room_exists`),
        created when first needed; ``None`` for a room that does not exist."""
        room = self.rooms.get(name)
        if room is not None:
            return room
        if not is_room_name(name) or not await self.authority.room_exists(name):
            return None
        return self.ensure(name)

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
