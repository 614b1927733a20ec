"""The database: one async SQLAlchemy engine, migrated by Alembic at start-up.

SQLite (embedded default) runs in WAL mode with ``synchronous=NORMAL`` and foreign keys
on: a committed transaction survives a killed process (``kill -9``).  PostgreSQL
(``postgresql+asyncpg://``) is the scale-out store shared by every signaling instance.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_KEY = 0x72656C6179  # "relay": the advisory lock id held while migrating


def alembic_config(url: str) -> Config:
    """An Alembic configuration for ``url`` without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """``db = await Database.open(url)``; ``async with db.session() as s: ...``; ``await db.close()``.

    :ivar dialect: ``"sqlite"`` or ``"postgresql"``.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Database:
        """Connect and bring the schema to the newest Alembic revision.

        A SQLite file's directory is created.  :raises sqlalchemy.exc.OperationalError:
        the database cannot be reached.
        """
        parsed = make_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        db = cls(engine)
        if migrate:
            await db.migrate()
        return db

    async def migrate(self) -> None:
        """``alembic upgrade head`` on this engine's connection, one process at a time:
        instances starting together on one database (``relaycast cluster``) would otherwise
        race to create the same tables.  PostgreSQL: a transaction-level advisory lock;
        SQLite: an exclusive ``flock`` on ``<database>.migrate.lock``."""
        def upgrade(connection: Any) -> None:
            config = alembic_config(self.engine.url.render_as_string(hide_password=False))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        lock_file = None
        if self.dialect == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            lock_file = open(f"{self.engine.url.database}.migrate.lock", "a+b")  # noqa: SIM115
            await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
        try:
            async with self.engine.begin() as connection:
                if self.dialect == "postgresql":
                    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                             {"key": MIGRATION_LOCK_KEY})
                await connection.run_sync(upgrade)
        finally:
            if lock_file is not None:
                lock_file.close()  # releases the flock

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session; commit is the caller's (``await s.commit()``); rolled back on error."""
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside ``BEGIN … COMMIT`` (rolled back on error)."""
        async with self.sessions() as session, session.begin():
            yield session

    async def close(self) -> None:
        await self.engine.dispose()


