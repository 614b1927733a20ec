"""The schema on both databases: Alembic brings an empty SQLite and an empty PostgreSQL
database to head, the migrated schema is exactly what :mod:`community.models` declares,
and upgrading again changes nothing."""

from __future__ import annotations

import re
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from community.database import Database, alembic_config
from community.models import Base, Category, Channel, Follow, Notification, User, utcnow

SEARCH_OBJECTS = re.compile(r"(^|_)(fts|tsv|search)(_|$)")
"""Full-text search objects a migration makes in raw SQL, each database with its own engine
(an SQLite FTS5 virtual table and its shadow tables, a PostgreSQL ``tsvector`` column and
its GIN index): the models do not declare them, so the comparison leaves them out."""


def _declared(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (
        reflected and compare_to is None and name is not None and SEARCH_OBJECTS.search(name)
    )


def _differences(connection: Any) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"include_object": _declared, "compare_type": True, "compare_server_default": False},
    )
    return list(compare_metadata(context, Base.metadata))


def _revision(connection: Any) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def test_migrations_bring_an_empty_database_to_head(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        assert db.dialect == db_url.split("+", 1)[0]
        async with db.engine.connect() as connection:
            tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            assert await connection.run_sync(_revision) == _head()
        assert set(Base.metadata.tables) <= tables
        async with db.session() as session:
            categories = (await session.scalars(select(Category.slug))).all()
        assert "gaming" in categories and "music" in categories
    finally:
        await db.close()


async def test_models_and_migrations_agree(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        async with db.engine.connect() as connection:
            differences = await connection.run_sync(_differences)
        assert differences == [], (
            "community/models.py and community/migrations disagree; add a migration "
            f"(alembic revision --autogenerate): {differences}"
        )
    finally:
        await db.close()


async def test_upgrade_is_idempotent_and_keeps_rows(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        async with db.transaction() as session:
            user = User(username="keeper", password_hash="!")
            session.add(user)
        await db.migrate()
    finally:
        await db.close()
    db = await Database.open(db_url)  # a restart migrates again
    try:
        async with db.engine.connect() as connection:
            assert await connection.run_sync(_revision) == _head()
            assert await connection.run_sync(_differences) == []
        async with db.session() as session:
            assert await session.scalar(select(User.username).where(User.id == user.id)) == "keeper"
    finally:
        await db.close()


async def test_times_come_back_as_utc_and_json_round_trips(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        now = utcnow()
        async with db.transaction() as session:
            user = User(username="timekeeper", password_hash="!")
            session.add(user)
            await session.flush()
            session.add(
                Notification(
                    user_id=user.id,
                    kind="stream.live",
                    created_at=now,
                    payload={"channel": "x", "nested": {"n": [1, 2]}},
                )
            )
        async with db.session() as session:
            row = (await session.scalars(select(Notification))).one()
        assert row.created_at == now and row.created_at.utcoffset() is not None
        assert row.payload == {"channel": "x", "nested": {"n": [1, 2]}}
    finally:
        await db.close()


async def test_foreign_keys_cascade_on_both(db_url: str) -> None:
    """Deleting a user deletes their follows (SQLite enforces it only with the pragma on)."""
    db = await Database.open(db_url)
    try:
        async with db.transaction() as session:
            fan = User(username="fan", password_hash="!")
            owner = User(username="owner", password_hash="!")
            session.add_all([fan, owner])
            await session.flush()
            channel = Channel(name="owner", owner_id=owner.id)
            session.add(channel)
            await session.flush()
            session.add(Follow(user_id=fan.id, channel_id=channel.id))
        async with db.transaction() as session:
            await session.execute(text("DELETE FROM users WHERE id = :id"), {"id": fan.id})
        async with db.session() as session:
            assert (await session.scalars(select(Follow))).all() == []
    finally:
        await db.close()
