"""Building a platform-only app and making records directly, for the platform's tests."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from common.problems import problem_middleware
from community.app import COMMUNITY, Community, install
from community.config import CommunityConfig
from community.models import Channel, User
from community.tokens import tokens_of


def platform_app(config: CommunityConfig) -> web.Application:
    """An aiohttp app with only the platform (no signaling, no SFU)."""
    app = web.Application(middlewares=[problem_middleware])
    install(app, config)
    return app


def community_of(client: TestClient) -> Community:
    return client.server.app[COMMUNITY]


async def make_user(community: Community, username: str, *, role: str = "viewer") -> User:
    """A user and their channel, written directly (password unusable: ``"!"``)."""
    async with community.db.transaction() as session:
        user = User(username=username, display_name=username.title(), password_hash="!", role=role)
        session.add(user)
        await session.flush()
        session.add(Channel(name=username, owner_id=user.id, title=f"{username}'s stream"))
    return user


async def bearer(client: TestClient, user: User) -> dict[str, str]:
    """``Authorization`` header of a fresh access token of ``user``."""
    token, _ = await tokens_of(client.server.app).issue_access(user)
    return {"Authorization": f"Bearer {token}"}


def record_events(community: Community) -> list[tuple[str, dict[str, Any]]]:
    """Every platform event emitted from now on, as ``(event, payload)``, in order."""
    seen: list[tuple[str, dict[str, Any]]] = []

    async def listener(event: str, payload: dict[str, Any]) -> None:
        seen.append((event, payload))

    community.events.subscribe(listener)
    return seen
