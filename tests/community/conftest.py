"""Fixtures for the platform (:mod:`community`): a bare aiohttp app with the platform
installed on a fresh SQLite database, helpers that make records directly, and the
databases (:mod:`tests.postgres`: a real PostgreSQL started by the session).

* ``postgres_server`` (session): the :class:`~tests.postgres.PostgresServer`; the tests
  using it skip when Debian's PostgreSQL binaries are not installed.
* ``postgres_url`` (session): its shared ``relaycast`` database.
* ``postgres_db``: a fresh, empty PostgreSQL database for one test (dropped after it).
* ``db_url``: parametrized ``sqlite`` / ``postgresql``: a fresh, empty database of each kind.
* ``db_client``: :func:`platform_app` on ``db_url`` (each test runs on both databases).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from community.config import CommunityConfig
from tests.community.platform_app import platform_app
from tests.postgres import MISSING, PostgresServer, available


@pytest.fixture
async def platform_client(tmp_path: Path) -> AsyncIterator[TestClient]:
    """A test client of :func:`platform_app` on a fresh SQLite database in ``tmp_path``."""
    client = TestClient(TestServer(platform_app(CommunityConfig(data_dir=tmp_path))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 server on 127.0.0.1 for the whole session (skips without the binaries)."""
    if not available():
        pytest.skip(MISSING)
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+asyncpg://relaycast@127.0.0.1:PORT/relaycast`` (shared by the session)."""
    return postgres_server.url


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind: SQLite in ``tmp_path``, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'relaycast.db'}"
    return str(request.getfixturevalue("postgres_db"))


@pytest.fixture
async def db_client(db_url: str, tmp_path: Path) -> AsyncIterator[TestClient]:
    """A test client of :func:`platform_app` on ``db_url`` (SQLite and PostgreSQL)."""
    config = CommunityConfig(data_dir=tmp_path, database_url=db_url)
    client = TestClient(TestServer(platform_app(config)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
