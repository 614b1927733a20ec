"""Install the platform into the signaling application.

``install(app, config)`` (before the app starts) adds the :class:`Community` under
:data:`COMMUNITY`, the auth middleware, every API module's routes and start/stop hooks,
and ``/api/openapi.json``.  The database opens (and migrates) on start-up.

Each module in :data:`MODULES` may define ``routes`` (an :class:`~community.api.base.ApiRoutes`)
and ``setup(app)`` (start-up/clean-up hooks, listeners, page routes).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from aiohttp import web

from .api import openapi
from .api.base import ApiRoutes
from .config import CommunityConfig
from .database import Database
from .events import EventBus

logger = logging.getLogger(__name__)

MODULES = (
    "community.api.users",
    "community.api.admin",
    "community.api.channels",
    "community.api.streams",
    "community.api.discovery",
    "community.api.social",
    "community.api.chat",
    "community.chat_store",
    "community.api.moderation",
    "community.api.blocked_terms",
    "community.api.chat_reports",
    "community.chat_moderation",
    "community.api.analytics",
    "community.api.ingest",
    "community.notifications",
    "community.webhooks",
    "community.thumbnails",
    "community.pages",
    "community.analytics",
)


@dataclass
class Community:
    """The platform's shared state in one signaling process.

    :ivar db: open after start-up.
    :ivar events: :class:`~community.events.EventBus`.
    :ivar services: per-module service objects by name (``"tokens"``, ``"keys"`` ...), set
        by the modules' ``setup``; typed accessors live in those modules.
    """

    config: CommunityConfig
    events: EventBus = field(default_factory=EventBus)
    db: Database = field(init=False)
    services: dict[str, Any] = field(default_factory=dict)


COMMUNITY = web.AppKey("community", Community)


def _modules() -> list[ModuleType]:
    out = []
    for name in MODULES:
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return out


def api_groups(modules: list[ModuleType] | None = None) -> list[ApiRoutes]:
    return [m.routes for m in (modules if modules is not None else _modules()) if isinstance(getattr(m, "routes", None), ApiRoutes)]


def install(app: web.Application, config: CommunityConfig) -> Community:
    """Add the platform to ``app`` (not yet started).  :returns: the :class:`Community`."""
    community = Community(config)
    app[COMMUNITY] = community

    async def open_db(app: web.Application) -> None:
        community.db = await Database.open(config.url)
        logger.info("database: %s (%s)", config.url.split("://", 1)[0], community.db.dialect)

    async def close_db(app: web.Application) -> None:
        db = getattr(community, "db", None)
        if db is not None:
            await db.close()

    app.on_startup.insert(0, open_db)  # before every module's start-up hook
    modules = _modules()
    for module in modules:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
    for group in api_groups(modules):
        app.router.add_routes(group.routes())
    app.router.add_routes(openapi.routes(api_groups(modules)))
    app.on_cleanup.append(close_db)
    return community
