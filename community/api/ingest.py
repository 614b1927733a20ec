"""Ingest health of a channel's live publisher, as its SFU node sees it (for the studio).

* ``GET /api/channels/{name}/ingest`` (the channel's owner or an admin) → :class:`Ingest`:
  bitrate (bps), frames per second, picture size, key-frame interval (s), packet loss
  (fraction 0–1), round-trip time (ms) and jitter (ms); a value the SFU cannot see is
  ``null``; and what the publisher session was told by a PATCH of the WHIP session
  (docs/whip-whep.md), ``null`` until then: ``advice``, what the encoder should change (the
  RTMP/SRT ingest's B-frame advice), and ``dropped_frames``, the running total of video
  frames the RTMP/SRT ingest had to drop before the SFU (which cannot see them).
  404 for an unknown channel, for anyone but the owner or an admin (the same answer:
  nothing tells them apart), and when no publisher is live on an SFU node.

The values come from the room's origin node through the ``stats`` RPC
(:meth:`signaling.sfu_client.SfuClient.stats`, :meth:`sfu.worker.Worker.stats`), computed on
the forwarding path by :mod:`sfu.ingest_health`.  :func:`ingest_of_rooms` reads many rooms
with one RPC per node (the analytics sampler's call); :func:`ingest_of_room` one room.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import select

from common.problems import HttpProblem
from sfu.protocol import (
    MAX_ADVICE_CHARS,
    MAX_DROPPED_FRAMES,
    ProtocolError,
    dropped_frames,
    ingest_advice,
)
from signaling.app_keys import NAMESPACE_KEY, ROOMS
from signaling.sfu_client import RpcFailed, SfuClient

from ..app import COMMUNITY
from ..models import Channel, utcnow
from .base import ApiRoutes, Call

logger = logging.getLogger(__name__)

routes = ApiRoutes("ingest")

INGEST_RPC_TIMEOUT_S = 2.0
"""How long a ``stats`` RPC to a node may take, s (a node that does not answer in time
reports nothing this round)."""
MAX_NAME_CHARS = 64
INGEST_FIELDS = ("bitrate_bps", "fps", "width", "height", "keyframe_interval_s", "loss", "rtt_ms",
                 "jitter_ms")
_INTEGER_FIELDS = ("bitrate_bps", "width", "height")


class IngestFigures(BaseModel):
    """A publisher's ingest health at ``at`` as measured (a stored sample's fields):
    ``bitrate_bps`` (RTP payload bits/s over ~2 s, all tracks), ``fps`` (video frames/s),
    ``width``/``height`` (px, from the last key frame's SPS or VP8 header),
    ``keyframe_interval_s`` (s, mean of the last 4 spacings), ``loss`` (fraction 0–1 of the
    packets expected over ~2 s, RFC 3550 §6.4.1), ``rtt_ms`` (ICE consent check round trip,
    RFC 7675; null when the publisher does not answer checks), ``jitter_ms`` (RFC 3550 §A.8
    interarrival jitter, audio track if any)."""

    at: datetime
    bitrate_bps: int | None
    fps: float | None
    width: int | None
    height: int | None
    keyframe_interval_s: float | None
    loss: float | None
    rtt_ms: float | None
    jitter_ms: float | None


class Ingest(IngestFigures):
    """The live publisher's ingest health: its :class:`IngestFigures` and what its WHIP
    session was told (docs/whip-whep.md, "Ingest advice"): ``advice``, what its encoder should
    change in words (at most 200 characters) — e.g. ``"set bframes=0 / profile baseline for
    lower latency and no transcoding"`` from the RTMP/SRT ingest when it transcodes B-frames;
    null when none — and ``dropped_frames``, the session's running total of video frames
    the RTMP/SRT ingest had to drop before they reached the SFU (lost in transit on SRT, a
    full queue, an undecodable frame); null when never reported (a WebRTC encoder, which
    publishes directly, has none).  Neither is stored with the analytics samples."""

    advice: str | None = Field(default=None, max_length=MAX_ADVICE_CHARS)
    dropped_frames: int | None = Field(default=None, ge=0, le=MAX_DROPPED_FRAMES)


def ingest_values(reported: Any) -> dict[str, Any] | None:
    """The :data:`INGEST_FIELDS` of a node's ``ingest`` report, each a finite number or
    ``None``, its ``advice``, a string of at most :data:`~sfu.protocol.MAX_ADVICE_CHARS`
    characters without control characters or ``None``, and its ``dropped_frames``, an
    integer from 0 to :data:`~sfu.protocol.MAX_DROPPED_FRAMES` or ``None`` (anything else a
    node sends is dropped); ``None`` when there is no report."""
    if not isinstance(reported, Mapping):
        return None
    out: dict[str, Any] = {}
    for name in INGEST_FIELDS:
        value = reported.get(name)
        number = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value) and value >= 0)
        out[name] = value if number else None
    for name in _INTEGER_FIELDS:
        if out[name] is not None:
            out[name] = int(out[name])
    if out["loss"] is not None:
        out["loss"] = min(1.0, float(out["loss"]))
    for name, check in (("advice", ingest_advice), ("dropped_frames", dropped_frames)):
        try:
            out[name] = check(reported.get(name))
        except ProtocolError:
            out[name] = None
    return out


async def ingest_of_rooms(app: web.Application, rooms: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ingest health of the live ``rooms`` (room name == channel name): one ``stats``
    RPC per origin node, the nodes asked concurrently.

    :returns: ``{room: {"at": datetime (UTC), "bitrate_bps", "fps", "width", "height",
        "keyframe_interval_s", "loss", "rtt_ms", "jitter_ms", "advice", "dropped_frames"}}`` —
        the :class:`Ingest` fields (without ``advice`` and ``dropped_frames``, those of an
        ``IngestSample`` row) — for each room whose origin node reported a publisher.  Rooms
        that are not live, whose node is gone or did not answer within
        :data:`INGEST_RPC_TIMEOUT_S` are left out.  Never raises for a node's failure; on
        an app without signaling (no SFU) it is ``{}``.
    """
    room_states, namespace = app.get(ROOMS), app.get(NAMESPACE_KEY)
    if room_states is None or namespace is None:
        return {}
    by_node: dict[str, list[str]] = {}
    for room in rooms:
        state = room_states.get(room)
        if state is not None and state.live and state.node is not None:
            by_node.setdefault(state.node, []).append(room)
    if not by_node:
        return {}
    nodes = {node.node_id: node for node in namespace.registry.nodes.values()}
    client = SfuClient(namespace, INGEST_RPC_TIMEOUT_S)
    at = utcnow()
    out: dict[str, dict[str, Any]] = {}

    async def read(node_id: str, names: list[str]) -> None:
        node = nodes.get(node_id)
        if node is None:
            return
        try:
            result = await client.stats(node, names[0] if len(names) == 1 else None)
        except RpcFailed as exc:
            logger.info("no ingest health from node %s: %s", node_id, exc)
            return
        reported = result.get("rooms")
        if not isinstance(reported, Mapping):
            return
        for name in names:
            state = reported.get(name)
            values = ingest_values(state.get("ingest") if isinstance(state, Mapping) else None)
            if values is not None:
                out[name] = {"at": at, **values}

    await asyncio.gather(*(read(node_id, names) for node_id, names in by_node.items()))
    return out


async def ingest_of_room(app: web.Application, room: str) -> dict[str, Any] | None:
    """The ingest health of ``room``'s live publisher (the dict :func:`ingest_of_rooms`
    gives for one room), or ``None`` when it is not live or its node cannot tell."""
    return (await ingest_of_rooms(app, [room])).get(room)


@routes.op("GET", "/api/channels/{name}/ingest", summary="Ingest health of the live publisher (owner, admin)",
           auth="user", responses={200: Ingest, 404: None})
async def get_ingest(call: Call[None, None]) -> Ingest:
    """What the SFU sees of the channel's live publisher, now.  404: unknown channel, not the
    owner or an admin, or nothing live."""
    community = call.request.app[COMMUNITY]
    name = call.path("name")
    channel = None
    if len(name) <= MAX_NAME_CHARS:
        async with community.db.session() as session:
            channel = await session.scalar(select(Channel).where(Channel.name == name))
    if channel is None or (channel.owner_id != call.user.user_id and not call.user.is_admin):
        raise HttpProblem(404, None, "no such channel")
    ingest = await ingest_of_room(call.request.app, channel.name)
    if ingest is None:
        raise HttpProblem(404, None, "the channel has no live publisher on an SFU node")
    return Ingest(**ingest)
