"""Typed aiohttp application keys shared by the signaling modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import socketio
from aiohttp import web

from common.ratelimit import TokenBuckets

from .config import SignalingConfig
from .rooms import RoomRegistry

if TYPE_CHECKING:
    from hls_bridge.vod import RecordingLibrary

    from .cascade import Cascade
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
CASCADE: web.AppKey[Cascade] = web.AppKey("cascade", object)  # type: ignore[arg-type]
"""Viewer placement across nodes and the rooms' node pipes (:mod:`signaling.cascade`)."""
