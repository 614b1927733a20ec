"""The platform: users, channels (a channel is a room), stream keys, streams, discovery,
follows, notifications, webhooks and the admin audit log, on SQLAlchemy 2 (async) with
Alembic migrations — SQLite embedded, PostgreSQL at scale — and its REST API under ``/api``.

Entry point: :func:`community.app.install` adds it to the signaling application.
"""
