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
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
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


# --------------------------------------------------------------------------- chat
class ChatMessage(Base):
    """An accepted chat message of a channel's room (written in batches, never on the
    delivery path).  ``id`` is the message id every participant saw (32 hex characters);
    ``seq`` its number in the room's sequence.  A deleted message keeps its row with
    ``deleted_at`` set and is left out of every history."""

    __tablename__ = "chat_messages"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    stream_id: Mapped[str | None] = mapped_column(ForeignKey("streams.id", ondelete="SET NULL"), default=None)
    seq: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[datetime] = mapped_column(index=True)
    """Server time of the message (the ``ts`` every participant saw), ms precision."""
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    sender_id: Mapped[str] = mapped_column(String(64))
    """The participant id (a session's, a Socket.IO connection's, or the API sender's)."""
    sender_name: Mapped[str] = mapped_column(String(64))
    sender_role: Mapped[str] = mapped_column(String(16), default="viewer")
    text: Mapped[str] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    deleted_by: Mapped[str | None] = mapped_column(String(24), default=None)


Index("ix_chat_messages_stream", ChatMessage.stream_id, ChatMessage.sent_at, ChatMessage.seq)
Index("ix_chat_messages_channel", ChatMessage.channel_id, ChatMessage.sent_at, ChatMessage.seq)


class ChatSettings(Base):
    """A channel's chat rules (a channel without a row has the defaults)."""

    __tablename__ = "chat_settings"
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True)
    slow_mode_s: Mapped[int] = mapped_column(Integer, default=0)
    """Seconds between two messages of one user (0 = off; moderators and the broadcaster exempt)."""
    followers_only_s: Mapped[int | None] = mapped_column(Integer, default=None)
    """Followers-only mode: minimum follow age in seconds (None = off, 0 = any follower)."""
    guests_allowed: Mapped[bool] = mapped_column(Boolean, default=True)
    """Whether guests (not logged in) may write; guests always read."""
    links_allowed: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelModerator(Base):
    """A user the broadcaster appointed to moderate their channel's chat."""

    __tablename__ = "channel_moderators"
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True,
                                         index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChatBan(Base):
    """A ban (``expires_at`` None) or a timeout (until ``expires_at``) in a channel's chat.
    ``target`` is a user id, or ``guest:<participant id>`` for a guest."""

    __tablename__ = "chat_bans"
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True)
    target: Mapped[str] = mapped_column(String(80), primary_key=True)
    target_name: Mapped[str] = mapped_column(String(64), default="")
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BlockedTerm(Base):
    """A blocked term of one channel, or of the whole server (``channel_id`` None).
    ``action``: ``block`` (the message is refused) or ``hold`` (kept for review)."""

    __tablename__ = "blocked_terms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel_id: Mapped[str | None] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), default=None,
                                                   index=True)
    term: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(8), default="block")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChatReport(Base):
    """An item of a channel's moderation queue: a user's report of a message
    (``kind`` ``report``) or a message held by a blocked term (``kind`` ``held``).
    ``message`` is the message as it was shown (JSON: id, seq, ts, from, text)."""

    __tablename__ = "chat_reports"
    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    stream_id: Mapped[str | None] = mapped_column(ForeignKey("streams.id", ondelete="SET NULL"), default=None)
    kind: Mapped[str] = mapped_column(String(8), default="report")
    message_id: Mapped[str] = mapped_column(String(32))
    message: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reporter_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    reason: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(10), default="open")
    """``open``, ``resolved`` (acted on) or ``dismissed``."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    resolution: Mapped[str] = mapped_column(String(32), default="")


Index("ix_chat_reports_queue", ChatReport.channel_id, ChatReport.status, ChatReport.created_at)


class ModerationEntry(Base):
    """A moderator action in a channel: who, what, on whom, when, why."""

    __tablename__ = "moderation_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    actor_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(80), default="")
    """A user id, ``guest:<participant id>``, a message id, or empty (channel-wide actions)."""
    target_name: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(String(500), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_moderation_log_channel", ModerationEntry.channel_id, ModerationEntry.id)


# ---------------------------------------------------------------------- analytics
class ViewerSample(Base):
    """Concurrent viewers of a live stream at ``at`` (every 10 s), by tier."""

    __tablename__ = "viewer_samples"
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    at: Mapped[datetime] = mapped_column(primary_key=True)
    webrtc: Mapped[int] = mapped_column(Integer, default=0)
    llhls: Mapped[int] = mapped_column(Integer, default=0)


class StreamViewer(Base):
    """One viewer of a stream (a user, or an anonymous player session): when first and
    last seen and the seconds watched — unique viewers and watch time."""

    __tablename__ = "stream_viewers"
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    viewer: Mapped[str] = mapped_column(String(80), primary_key=True)
    """``user:<id>`` or ``session:<id>``."""
    tier: Mapped[str] = mapped_column(String(8), default="webrtc")
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    watch_s: Mapped[float] = mapped_column(Float, default=0.0)


class ChatMinute(Base):
    """Chat messages accepted in one minute of a stream."""

    __tablename__ = "chat_minutes"
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    messages: Mapped[int] = mapped_column(Integer, default=0)


class IngestSample(Base):
    """The publisher's ingest as the SFU sees it, every 10 s: bitrate (bps), frames per
    second, resolution, key-frame interval (s), packet loss (fraction 0–1), round-trip
    time (ms) and jitter (ms); a value the SFU cannot see is None."""

    __tablename__ = "ingest_samples"
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    at: Mapped[datetime] = mapped_column(primary_key=True)
    bitrate_bps: Mapped[int | None] = mapped_column(Integer, default=None)
    fps: Mapped[float | None] = mapped_column(Float, default=None)
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    keyframe_interval_s: Mapped[float | None] = mapped_column(Float, default=None)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    rtt_ms: Mapped[float | None] = mapped_column(Float, default=None)
    jitter_ms: Mapped[float | None] = mapped_column(Float, default=None)


class QoeBeacon(Base):
    """One player beacon (quality of experience), as validated: ``event`` ``join``,
    ``heartbeat``, ``stall``, ``switch``, ``error`` or ``end``; times in ms."""

    __tablename__ = "qoe_beacons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str | None] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), default=None)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    session: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    tier: Mapped[str] = mapped_column(String(8))
    event: Mapped[str] = mapped_column(String(12))
    join_ms: Mapped[float | None] = mapped_column(Float, default=None)
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    stalls: Mapped[int | None] = mapped_column(Integer, default=None)
    stall_ms: Mapped[float | None] = mapped_column(Float, default=None)
    switches: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str] = mapped_column(String(200), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_qoe_beacons_stream_received", QoeBeacon.stream_id, QoeBeacon.received_at)
"""A stream's beacons by time: its QoE, and the LL-HLS sessions heard in the last 30 s."""
