"""The platform's tables (SQLAlchemy 2 declarative, portable across SQLite and PostgreSQL).

Ids are random URL-safe strings (:func:`new_id`); times are timezone-aware UTC
(:class:`UtcDateTime`); secrets are never stored — stream keys and refresh tokens as
their SHA-256 hex digest, passwords as argon2id hashes.  The schema is created and
upgraded by Alembic (``community/migrations``), never by ``create_all`` in the product.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    """A random id: 96 bits, 16 URL-safe characters."""
    return secrets.token_urlsafe(12)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` on every database (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class User(Base):
    """An account.  ``username`` is lower-case and also the name of the user's channel."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    display_name: Mapped[str] = mapped_column(String(64), default="")
    email: Mapped[str | None] = mapped_column(String(254), unique=True, default=None)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    """``viewer`` or ``admin``; every user is a broadcaster on their own channel."""
    bio: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    suspended_at: Mapped[datetime | None] = mapped_column(default=None)
    suspended_reason: Mapped[str] = mapped_column(String(500), default="")


class RefreshToken(Base):
    """An opaque, single-use refresh token (stored as SHA-256 hex).  Using one issues its
    successor in the same ``family_id``; reusing a used one revokes the whole family."""

    __tablename__ = "refresh_tokens"
    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(24), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class SigningKey(Base):
    """A JWT signing key (HS256 secret, base64url).  The newest unretired key signs; a
    retired one still verifies until ``retired_at`` + the overlap window."""

    __tablename__ = "signing_keys"
    kid: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)


class Category(Base):
    __tablename__ = "categories"
    slug: Mapped[str] = mapped_column(String(48), primary_key=True)
    name: Mapped[str] = mapped_column(String(80))


class Channel(Base):
    """A user's channel; its ``name`` is the room name in ``/whip/{name}``, ``/whep/{name}``,
    ``/hls/{name}/...`` and ``/vod/{name}/...``.  Defaults apply to streams started without
    ``POST /api/streams/start`` (OBS, FFmpeg)."""

    __tablename__ = "channels"
    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    title: Mapped[str] = mapped_column(String(140), default="")
    category: Mapped[str | None] = mapped_column(ForeignKey("categories.slug"), default=None)
    description: Mapped[str] = mapped_column(String(2000), default="")
    language: Mapped[str] = mapped_column(String(16), default="en")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelViewer(Base):
    """A user the owner of a private channel allows to watch it."""

    __tablename__ = "channel_viewers"
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StreamKey(Base):
    """A channel's stream key: 192 random bits shown once, stored as SHA-256 hex."""

    __tablename__ = "stream_keys"
    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16), default="")
    """The key's first characters (``sk_ab…``), to tell keys apart in lists."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Stream(Base):
    """One broadcast of a channel: ``pending`` (started by API, no media yet), ``live``,
    ``ended``.  At most one pending-or-live stream per channel (``Channel.name`` is the
    room)."""

    __tablename__ = "streams"
    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(140), default="")
    category: Mapped[str | None] = mapped_column(ForeignKey("categories.slug"), default=None)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    language: Mapped[str] = mapped_column(String(16), default="en")
    status: Mapped[str] = mapped_column(String(8), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_reason: Mapped[str] = mapped_column(String(32), default="")
    viewers: Mapped[int] = mapped_column(Integer, default=0, index=True)
    peak_viewers: Mapped[int] = mapped_column(Integer, default=0)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("stream_keys.id", ondelete="SET NULL"), default=None)
    """The stream key the broadcast went live with (``None``: a JWT publish grant)."""
    thumbnail_at: Mapped[datetime | None] = mapped_column(default=None)
    recording: Mapped[str | None] = mapped_column(String(255), default=None)
    """The VOD recording's path under ``/vod/`` once ready."""


Index("ix_streams_channel_status", Stream.channel_id, Stream.status)
Index("uq_streams_channel_open", Stream.channel_id, unique=True,
      sqlite_where=Stream.status != "ended", postgresql_where=Stream.status != "ended")
"""At most one pending-or-live stream per channel (the exactly-once go-live guard)."""
# The directory's keyset orders and the rarely-true filters (migration 0002).
Index("ix_streams_status_viewers", Stream.status, Stream.viewers, Stream.id)
Index("ix_streams_status_started", Stream.status, Stream.started_at, Stream.id)
Index("ix_channels_private", Channel.private,
      sqlite_where=text("private = 1"), postgresql_where=text("private = true"))
Index("ix_users_suspended_at", User.suspended_at,
      sqlite_where=text("suspended_at IS NOT NULL"), postgresql_where=text("suspended_at IS NOT NULL"))


class StreamTag(Base):
    """A stream's tags, one row each (indexed ``tag=`` filtering on every database)."""

    __tablename__ = "stream_tags"
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)


class Follow(Base):
    __tablename__ = "follows"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    """A stored notification (``kind`` e.g. ``stream.live``; ``payload`` JSON)."""

    __tablename__ = "notifications"
    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    read_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One webhook message to one endpoint (Standard Webhooks), with its attempts."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """``webhook-id`` (``msg_`` + random), the same on every retry."""
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="pending", index=True)
    """``pending``, ``delivered`` or ``failed`` (retries exhausted)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """An admin action: who, what, on which target, when, why."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    action: Mapped[str] = mapped_column(String(48))
    target_type: Mapped[str] = mapped_column(String(24))
    target_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(500), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
