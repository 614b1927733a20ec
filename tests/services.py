"""What tests need to start the real service: the demo room's stream key, a
`SignalingConfig` on 127.0.0.1 with a free port, and channels with stream keys of their own
(`make_channel`).  The platform's database is in a temporary directory (conftest's
``RELAYCAST_DATA_DIR``).

Import as ``from tests.services import STREAM_KEY, make_config`` (conftest.py holds only
fixtures and hooks; pytest loads it itself, a test never imports it).
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from community.app import COMMUNITY
from community.keys import create_key
from community.models import Channel, User
from community.tokens import tokens_of
from signaling.config import SignalingConfig

STREAM_KEY = "sk_test_" + "x" * 24
"""The stream key of the demo room ``demo`` of every service `make_config` configures."""


def make_config(**overrides: object) -> SignalingConfig:
    """A `SignalingConfig` from an empty environment: ``host`` 127.0.0.1, ``port`` 0 (a
    free one), ``demo_stream_key`` `STREAM_KEY`; ``overrides`` are further fields."""
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "demo_stream_key": STREAM_KEY}
    values.update(overrides)
    return SignalingConfig.from_env({}, **values)


async def make_channel(app: web.Application, name: str, key: str | None = None,
                       *, private: bool = False) -> str:
    """A user ``name`` with channel ``name`` and one stream key, written directly to the
    platform's database of a started service's ``app``.  :returns: the key in clear."""
    async with app[COMMUNITY].db.transaction() as session:
        user = User(username=name, display_name=name.title(), password_hash="!")
        session.add(user)
        await session.flush()
        channel = Channel(name=name, owner_id=user.id, title=f"{name} stream", private=private)
        session.add(channel)
        await session.flush()
        _, clear = await create_key(session, channel.id, "test", key)
    return clear


async def access_token(app: web.Application, username: str, publish: list[str] | None = None) -> str:
    """An access JWT of user ``username`` from the service's own token service (``publish``:
    the channels granted; default the user's own)."""
    async with app[COMMUNITY].db.session() as session:
        user = (await session.execute(select(User).where(User.username == username))).scalar_one()
    token, _ = await tokens_of(app).issue_access(user, publish=publish)
    return token
