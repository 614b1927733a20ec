"""A channel's stream keys in the database: create (the clear key returned once), list,
revoke.

A key is ``sk_`` + 192 random bits (:func:`signaling.static_keys.new_stream_key`), stored
only as its SHA-256 hex digest (``stream_keys.key_hash``) and a short ``hint`` (its first
characters) to tell keys apart.  A fast hash is the right tool for high-entropy random
secrets (nothing to brute-force from a dictionary).  Revoking sets ``revoked_at``; the row
stays (streams reference the key they went live with).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from signaling.publish_auth import key_digest
from signaling.static_keys import new_stream_key

from .models import StreamKey, utcnow

HINT_CHARS = 7
"""Characters of the key kept as its hint: ``sk_`` and 4 random characters (24 bits)."""
MAX_KEYS_PER_CHANNEL = 20
"""Unrevoked keys one channel may hold (more: 409)."""


def hint_of(key: str) -> str:
    """``sk_AbCd…``: enough to tell keys apart in a list, useless for guessing."""
    return key[:HINT_CHARS] + "…"


async def create_key(session: AsyncSession, channel_id: str, label: str = "",
                     key: str | None = None) -> tuple[StreamKey, str]:
    """Add a stream key to the channel (the caller commits).

    :param key: the clear key to store (the demo channel's configured key); default a new
        random one.
    :returns: the row and the clear key — the only time it exists outside the client.
    """
    clear = key or new_stream_key()
    row = StreamKey(channel_id=channel_id, label=label, key_hash=key_digest(clear), hint=hint_of(clear),
                    created_at=utcnow())
    session.add(row)
    await session.flush()
    return row, clear


async def active_keys(session: AsyncSession, channel_id: str) -> int:
    """How many unrevoked keys the channel holds."""
    rows = await session.execute(select(StreamKey.id).where(
        StreamKey.channel_id == channel_id, StreamKey.revoked_at.is_(None)))
    return len(rows.all())


async def list_keys(session: AsyncSession, channel_id: str) -> list[StreamKey]:
    """The channel's keys, newest first, revoked ones included."""
    rows = await session.execute(select(StreamKey).where(StreamKey.channel_id == channel_id)
                                 .order_by(StreamKey.created_at.desc(), StreamKey.id))
    return list(rows.scalars())


def revoked_event(channel: str, key: StreamKey) -> dict[str, str]:
    """The ``key.revoked`` event's payload (the publish authority ends the key's session)."""
    return {"channel": channel, "key_id": key.id, "key_hash": key.key_hash}


async def revoke_key(session: AsyncSession, key: StreamKey) -> bool:
    """Mark ``key`` revoked (the caller commits and emits ``key.revoked``).

    :returns: whether it was active until now.
    """
    if key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    await session.flush()
    return True
