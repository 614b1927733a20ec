"""full-text search of streams, keyset indexes of the directory

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

SQLite: an FTS5 table ``stream_search`` (rowid = ``streams.rowid``; columns title, channel,
display_name, tags, category; ``unicode61`` tokenizer without diacritics) kept in step with
``streams``, ``users.display_name`` and ``categories.name`` by triggers.

PostgreSQL: a ``tsvector`` column ``streams.search`` (text search configuration
``relaycast_search``: ``simple`` with the ``unaccent`` dictionary first when that extension
can be created, a trusted extension since PostgreSQL 13; else plain ``simple``; weights A
title, B channel and display name, C tags and category) set by a ``BEFORE INSERT OR UPDATE``
trigger, refreshed by triggers on ``users.display_name`` and ``categories.name``, with a GIN
index.

Both: ``(status, viewers, id)`` and ``(status, started_at, id)`` indexes for the directory's
keyset pagination; partial indexes of private channels and suspended users (the channels
never listed).

Note for later revisions: on SQLite, a batch operation that *recreates* ``streams`` drops
its triggers and renumbers rowids; such a revision must re-create the triggers below and
refill ``stream_search``.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The searchable text of stream row ``{s}`` (``new`` in a trigger, ``s`` in the backfill).
_SQLITE_VALUES = """
    {s}.title,
    (SELECT c.name FROM channels c WHERE c.id = {s}.channel_id),
    (SELECT u.display_name FROM channels c JOIN users u ON u.id = c.owner_id WHERE c.id = {s}.channel_id),
    (SELECT group_concat(j.value, ' ') FROM json_each({s}.tags) j),
    (SELECT g.name FROM categories g WHERE g.slug = {s}.category)
"""
_SQLITE_COLUMNS = "rowid, title, channel, display_name, tags, category"

SQLITE_UP = [
    "CREATE VIRTUAL TABLE stream_search USING fts5("
    "title, channel, display_name, tags, category, tokenize = 'unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER streams_search_insert AFTER INSERT ON streams BEGIN
        INSERT INTO stream_search ({_SQLITE_COLUMNS}) VALUES (new.rowid, {_SQLITE_VALUES.format(s='new')});
    END""",
    f"""CREATE TRIGGER streams_search_update AFTER UPDATE OF title, tags, category, channel_id ON streams
    BEGIN
        DELETE FROM stream_search WHERE rowid = old.rowid;
        INSERT INTO stream_search ({_SQLITE_COLUMNS}) VALUES (new.rowid, {_SQLITE_VALUES.format(s='new')});
    END""",
    """CREATE TRIGGER streams_search_delete AFTER DELETE ON streams BEGIN
        DELETE FROM stream_search WHERE rowid = old.rowid;
    END""",
    """CREATE TRIGGER users_search_update AFTER UPDATE OF display_name ON users
    WHEN old.display_name IS NOT new.display_name BEGIN
        UPDATE stream_search SET display_name = new.display_name WHERE rowid IN (
            SELECT s.rowid FROM streams s JOIN channels c ON c.id = s.channel_id WHERE c.owner_id = new.id);
    END""",
    """CREATE TRIGGER categories_search_update AFTER UPDATE OF name ON categories
    WHEN old.name IS NOT new.name BEGIN
        UPDATE stream_search SET category = new.name WHERE rowid IN (
            SELECT s.rowid FROM streams s WHERE s.category = new.slug);
    END""",
    f"INSERT INTO stream_search ({_SQLITE_COLUMNS}) SELECT s.rowid, {_SQLITE_VALUES.format(s='s')} FROM streams s",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS categories_search_update",
    "DROP TRIGGER IF EXISTS users_search_update",
    "DROP TRIGGER IF EXISTS streams_search_delete",
    "DROP TRIGGER IF EXISTS streams_search_update",
    "DROP TRIGGER IF EXISTS streams_search_insert",
    "DROP TABLE IF EXISTS stream_search",
]

POSTGRESQL_UP = [
    """CREATE FUNCTION streams_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.search :=
            setweight(to_tsvector('relaycast_search', coalesce(NEW.title, '')), 'A') ||
            setweight(to_tsvector('relaycast_search', coalesce((
                SELECT c.name || ' ' || u.display_name FROM channels c JOIN users u ON u.id = c.owner_id
                WHERE c.id = NEW.channel_id), '')), 'B') ||
            setweight(to_tsvector('relaycast_search', coalesce((
                SELECT string_agg(t, ' ') FROM json_array_elements_text(NEW.tags::json) t), '')), 'C') ||
            setweight(to_tsvector('relaycast_search', coalesce((
                SELECT g.name FROM categories g WHERE g.slug = NEW.category), '')), 'C');
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER streams_search BEFORE INSERT OR UPDATE OF title, tags, category, channel_id
    ON streams FOR EACH ROW EXECUTE FUNCTION streams_search_vector()""",
    # A stream's vector is recomputed by touching its title (the trigger above).
    """CREATE FUNCTION users_search_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE streams SET title = title
        WHERE channel_id IN (SELECT c.id FROM channels c WHERE c.owner_id = NEW.id);
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER users_search AFTER UPDATE OF display_name ON users FOR EACH ROW
    WHEN (OLD.display_name IS DISTINCT FROM NEW.display_name) EXECUTE FUNCTION users_search_refresh()""",
    """CREATE FUNCTION categories_search_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE streams SET title = title WHERE category = NEW.slug;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER categories_search AFTER UPDATE OF name ON categories FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION categories_search_refresh()""",
    "UPDATE streams SET title = title",
    "CREATE INDEX ix_streams_search ON streams USING gin (search)",
]
POSTGRESQL_DOWN = [
    "DROP INDEX IF EXISTS ix_streams_search",
    "DROP TRIGGER IF EXISTS categories_search ON categories",
    "DROP FUNCTION IF EXISTS categories_search_refresh()",
    "DROP TRIGGER IF EXISTS users_search ON users",
    "DROP FUNCTION IF EXISTS users_search_refresh()",
    "DROP TRIGGER IF EXISTS streams_search ON streams",
    "DROP FUNCTION IF EXISTS streams_search_vector()",
    "DROP TEXT SEARCH CONFIGURATION IF EXISTS relaycast_search",
]


def _search_configuration() -> None:
    """``relaycast_search``: ``simple`` (no stemming, no stop words: names and tags in any
    language), accents removed by ``unaccent`` where the extension can be created."""
    bind = op.get_bind()
    unaccent = False
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS unaccent"))
        unaccent = True
    except sa.exc.DBAPIError:  # not installed, or no CREATE privilege: accents stay significant
        pass
    op.execute("CREATE TEXT SEARCH CONFIGURATION relaycast_search (COPY = simple)")
    if unaccent:
        op.execute("ALTER TEXT SEARCH CONFIGURATION relaycast_search "
                   "ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple")


def upgrade() -> None:
    """Upgrade schema."""
    dialect = op.get_bind().dialect.name
    op.create_index("ix_streams_status_viewers", "streams", ["status", "viewers", "id"])
    op.create_index("ix_streams_status_started", "streams", ["status", "started_at", "id"])
    # The few channels never listed (private, or a suspended owner's), found without a scan.
    op.create_index("ix_channels_private", "channels", ["private"],
                    sqlite_where=sa.text("private = 1"), postgresql_where=sa.text("private = true"))
    op.create_index("ix_users_suspended_at", "users", ["suspended_at"],
                    sqlite_where=sa.text("suspended_at IS NOT NULL"),
                    postgresql_where=sa.text("suspended_at IS NOT NULL"))
    if dialect == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
    elif dialect == "postgresql":
        _search_configuration()
        op.add_column("streams", sa.Column("search", postgresql.TSVECTOR(), nullable=True))
        for statement in POSTGRESQL_UP:
            op.execute(statement)


def downgrade() -> None:
    """Downgrade schema."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
    elif dialect == "postgresql":
        for statement in POSTGRESQL_DOWN:
            op.execute(statement)
        op.drop_column("streams", "search")
    op.drop_index("ix_users_suspended_at", table_name="users")
    op.drop_index("ix_channels_private", table_name="channels")
    op.drop_index("ix_streams_status_started", table_name="streams")
    op.drop_index("ix_streams_status_viewers", table_name="streams")
