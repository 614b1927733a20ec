"""Typed aiohttp application keys shared by the signaling modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .config import SignalingConfig
from .rooms import RoomRegistry

if TYPE_CHECKING:
    from hls_bridge.vod import RecordingLibrary

    from .nodes import SfuNamespace
    from .whip import Session

CONFIG = web.AppKey("config", SignalingConfig)
ROOMS = web.AppKey("rooms", RoomRegistry)
SESSIONS: web.AppKey[dict[str, Session]] = web.AppKey("sessions", dict)
NAMESPACE_KEY: web.AppKey[SfuNamespace] = web.AppKey("sfu_namespace", object)  # type: ignore[arg-type]
RECORDINGS: web.AppKey[RecordingLibrary] = web.AppKey("recordings", object)  # type: ignore[arg-type]
"""The node's recording library, set only when recording is on (RELAYCAST_HLS_RECORD_DIR)."""
