"""Rooms with one in-memory stream key each: the :class:`PublishAuthority` of a bare
signaling app (the platform's channels replace it in ``relaycast serve``).

A stream key is 192 random bits (``secrets.token_urlsafe(24)``), shown once and kept only
as its SHA-256 digest — for high-entropy random secrets a fast hash is the right tool (no
dictionary to defend against) — and compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import secrets
from enum import Enum

from common.names import ROOM_RE, is_room_name

from .publish_auth import AccessRefused, PublishAuthority, PublishGrant, key_digest


class KeyCheck(Enum):
    OK = "ok"
    INVALID = "invalid"  # 401 invalid_token
    WRONG_ROOM = "wrong_room"  # 403 insufficient_scope: a real key, for another room


def new_stream_key() -> str:
    """``sk_`` + 192 random bits, base64url (35 characters)."""
    return "sk_" + secrets.token_urlsafe(24)


class StaticKeys(PublishAuthority):
    """Room name → the hex SHA-256 of its one stream key."""

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}

    def create(self, name: str, key: str | None = None) -> str:
        """Create (or re-key) room ``name``; :returns: the stream key in clear, once.

        :raises ValueError: ``name`` does not match :data:`common.names.ROOM_RE`.
        """
        if not is_room_name(name):
            raise ValueError(f"room name {name!r} must match {ROOM_RE.pattern}")
        key = key or new_stream_key()
        self.digests[name] = key_digest(key)
        return key

    def rotate(self, name: str) -> str:
        """A new key for an existing room.  :raises KeyError: no such room."""
        if name not in self.digests:
            raise KeyError(name)
        return self.create(name)

    def check_key(self, name: str, key: str) -> KeyCheck:
        """Constant-time comparison against the room's digest (and, for 403, the others')."""
        digest = key_digest(key).encode()
        own = self.digests.get(name)
        if own is not None and hmac.compare_digest(own.encode(), digest):
            return KeyCheck.OK
        for other, value in self.digests.items():
            if other != name and hmac.compare_digest(value.encode(), digest):
                return KeyCheck.WRONG_ROOM
        return KeyCheck.INVALID

    async def room_exists(self, room: str) -> bool:
        return room in self.digests

    async def room_for_key(self, key: str) -> str | None:
        digest = key_digest(key).encode()
        found = None
        for room, value in self.digests.items():  # every digest compared: constant time
            if hmac.compare_digest(value.encode(), digest):
                found = room
        return found

    async def authorize(self, room: str, bearer: str) -> PublishGrant:
        check = self.check_key(room, bearer)
        if check is KeyCheck.OK:
            return PublishGrant(room, key_digest(bearer))
        if check is KeyCheck.WRONG_ROOM:
            raise AccessRefused.scope(f"this stream key is not valid for room {room!r}")
        raise AccessRefused.invalid("invalid stream key")
