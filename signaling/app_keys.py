"""Typed aiohttp application keys shared by the signaling modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import socketio
from aiohttp import web

from common.ratelimit import TokenBuckets

from .config import SignalingConfig
from .rooms import Room, RoomRegistry

if TYPE_CHECKING:
    from hls_bridge.vod import RecordingLibrary

    from .cascade import Cascade
    from .chat import ChatService
    from .nodes import SfuNamespace
    from .sessions import SessionService

CONFIG = web.AppKey("config", SignalingConfig)
ROOMS = web.AppKey("rooms", RoomRegistry)
SIO = web.AppKey("sio", socketio.AsyncServer)
LIMITER = web.AppKey("limiter", TokenBuckets)
"""Per-client request limiter for WHIP/WHEP POST/PATCH/DELETE (RFC 9725 §5)."""
SESSION_SERVICE: web.AppKey[SessionService] = web.AppKey("session_service", object)  # type: ignore[arg-type]
"""WHIP/WHEP sessions: open, trickle, close (:mod:`signaling.sessions`)."""
NAMESPACE_KEY: web.AppKey[SfuNamespace] = web.AppKey("sfu_namespace", object)  # type: ignore[arg-type]
RECORDINGS: web.AppKey[RecordingLibrary] = web.AppKey("recordings", object)  # type: ignore[arg-type]
"""The node's recording library, set only when recording is on (RELAYCAST_HLS_RECORD_DIR)."""
ROOM_LISTENERS: web.AppKey[list[Callable[[Room], Awaitable[None]]]] = web.AppKey("room_listeners", list)
"""Called with a :class:`~signaling.rooms.Room` after its state (live, viewers, node) changed
by a node's report or a lost node, on every signaling instance that got the event (the
platform's stream lifecycle listens here)."""
CASCADE: web.AppKey[Cascade] = web.AppKey("cascade", object)  # type: ignore[arg-type]
"""Viewer placement across nodes and the rooms' node pipes (:mod:`signaling.cascade`)."""
CHAT: web.AppKey[ChatService] = web.AppKey("chat", object)  # type: ignore[arg-type]
"""The rooms' chat authority (:class:`signaling.chat.ChatService`); the platform sets its
``policy`` and adds ``listeners``."""
VIEWER_IDENTIFY: web.AppKey[list[Callable[[web.Request], Awaitable[tuple[str, str] | None]]]] = \
    web.AppKey("viewer_identify", list)
"""Who a WHEP request is: each hook returns ``(user_id, username)`` or ``None``; the first
answer names the viewer's session (its chat identity).  The platform reads its cookie/token."""
