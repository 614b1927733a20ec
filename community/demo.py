"""The demo channel ``relaycast serve`` prints at start-up, so the README's FFmpeg and OBS
instructions work on a fresh machine: a user of the same name (no usable password), its
channel, and a stream key."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from signaling.publish_auth import key_digest

from .database import Database
from .keys import create_key
from .models import Channel, StreamKey, User

UNUSABLE_PASSWORD = "!"
"""A ``password_hash`` no password verifies against (not an argon2 hash)."""


async def ensure_demo_channel(db: Database, name: str, key: str | None = None) -> str:
    """Make sure channel ``name`` (owned by user ``name``) exists and ``key`` publishes to it.

    :param key: the configured stream key; ``None``: a new random key is added (the clear
        keys of earlier runs are not known, only their digests).
    :returns: the stream key in clear (to print once).
    :raises ValueError: ``key`` is a key of another channel.
    """
    for attempt in range(3):  # instances starting together race for the same rows
        try:
            async with db.transaction() as session:
                channel = (await session.execute(
                    select(Channel).where(Channel.name == name))).scalar_one_or_none()
                if channel is None:
                    user = (await session.execute(
                        select(User).where(User.username == name))).scalar_one_or_none()
                    if user is None:
                        user = User(username=name, display_name=name.title(),
                                    password_hash=UNUSABLE_PASSWORD)
                        session.add(user)
                        await session.flush()
                    channel = Channel(name=name, owner_id=user.id, title=f"{name.title()} stream")
                    session.add(channel)
                    await session.flush()
                if key is not None:
                    row = (await session.execute(select(StreamKey).where(
                        StreamKey.key_hash == key_digest(key)))).scalar_one_or_none()
                    if row is not None:
                        if row.channel_id != channel.id:
                            raise ValueError("the configured stream key belongs to another channel")
                        row.revoked_at = None
                        return key
                _, clear = await create_key(session, channel.id, "demo (relaycast serve)", key)
                return clear
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
