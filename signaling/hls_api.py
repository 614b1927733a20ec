"""LL-HLS at the signaling edge: ``GET /api/hls``, ``GET /api/recordings``, ``GET /metrics``.

Each SFU node's load report (every second over ``/sfu``) carries an ``"hls"`` section
written by its `hls_bridge.bridge.BridgeManager`: the chosen H.264 encoder with every
probe's reason, the viewer threshold, and one entry per running bridge (room, encoder,
renditions, what started it, transcoder CPU in cores, real-time factor).  This module
shows those sections per node as JSON and as Prometheus metrics (prometheus_client,
collected at scrape time from the node registry, so nothing goes stale).  A rejected
encoder probe is shown by its stable RFC 9457 problem type (``type``, a URI of
`hls_bridge.problems`) with that type's ``title`` and short ``detail``; FFmpeg's error
text, library versions and device paths stay in the node's log.
``/api/recordings`` lists the finished recordings of the node's `RecordingLibrary`
(``RELAYCAST_HLS_RECORD_DIR``; empty with ``"enabled": false`` when recording is off).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from common.names import is_room_name
from common.problems import HttpProblem
from hls_bridge.problems import ENCODER_UNAVAILABLE, PROBLEM_TYPES

from .app_keys import CHAT, NAMESPACE_KEY, RECORDINGS, ROOMS

__all__ = ["METRICS_REGISTRY", "add_routes", "hls_nodes", "list_recordings", "public_hls_node"]


def hls_nodes(app: web.Application) -> list[dict[str, Any]]:
    """``[{"node", "encoder", "viewer_threshold", "bridges": [...]}]``, one per SFU node
    that reported an ``hls`` section (see `BridgeManager.report`)."""
    nodes = []
    for node in app[NAMESPACE_KEY].registry.nodes.values():
        section = node.load.get("hls")
        if isinstance(section, dict):
            nodes.append({"node": node.node_id, **section})
    return nodes


def _public_probe(probe: Any) -> dict[str, Any]:
    """One encoder probe as clients see it: ``{"name", "available"}`` plus, when
    rejected, ``{"type", "title", "detail"}`` from the problem type (never the node's
    own text)."""
    probe = probe if isinstance(probe, dict) else {}
    out: dict[str, Any] = {"name": str(probe.get("name", "")),
                           "available": probe.get("available") is True}
    if not out["available"]:
        kind = PROBLEM_TYPES.get(str(probe.get("type")), ENCODER_UNAVAILABLE)
        out.update(type=kind.uri, title=kind.title, detail=kind.detail)
    return out


def public_hls_node(node: dict[str, Any]) -> dict[str, Any]:
    """A node's HLS section with only the fields clients may see."""
    encoder = node.get("encoder")
    if isinstance(encoder, dict):
        encoder = {"name": encoder.get("name"),
                   "probes": [_public_probe(p) for p in encoder.get("probes") or []]}
    else:
        encoder = None
    return {
        "node": node["node"],
        "encoder": encoder,
        "viewer_threshold": node.get("viewer_threshold"),
        "recording": node.get("recording"),
        "admission": node.get("admission"),
        "bridges": node.get("bridges", []),
    }


async def get_hls(request: web.Request) -> web.Response:
    """``GET /api/hls``: ``{"nodes": [{"node", "encoder": {"name", "probes": [{"name",
    "available", "type", "title", "detail"}]}, "viewer_threshold", "recording",
    "admission": {"cores", "idle_cores", "min_idle_cores", "refused", "refusals": {room:
    reason}}, "bridges"}], "bridges": [{..., "node", "url"}]}``; ``url`` is the room's multivariant
    playlist path; a probe's ``type``/``title``/``detail`` only when it was rejected."""
    nodes = [public_hls_node(node) for node in hls_nodes(request.app)]
    bridges = [
        {**bridge, "node": node["node"], "url": f"/hls/{bridge['room']}/index.m3u8"}
        for node in nodes for bridge in node.get("bridges", [])
    ]
    return web.json_response({"nodes": nodes, "bridges": bridges},
                             headers={"Cache-Control": "no-store"})


async def list_recordings(request: web.Request) -> web.Response:
    """``GET /api/recordings[?room=NAME]``: ``{"enabled", "recordings": [...]}``, newest
    first; each recording has room, id, started, ended, duration_s, bytes, renditions,
    truncated, expires and ``url`` (``/vod/{room}/{id}/index.m3u8``)."""
    library = request.app.get(RECORDINGS)
    room = request.query.get("room")
    if room is not None and not is_room_name(room):
        raise HttpProblem(400, "Bad Request", "room must be a room name")
    if library is None:
        recordings: list[dict[str, Any]] = []
    else:
        recordings = await asyncio.to_thread(library.list, room)
    return web.json_response({"enabled": library is not None, "recordings": recordings},
                             headers={"Cache-Control": "no-store"})


class _Collector(Collector):
    """Reads the registry at scrape time: rooms, nodes and their HLS bridges."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        app = self.app
        nodes = list(app[NAMESPACE_KEY].registry.nodes.values())
        sessions = GaugeMetricFamily("relaycast_sfu_sessions", "WebRTC sessions on an SFU node",
                                     labels=["node"])
        for node in nodes:
            sessions.add_metric([node.node_id], node.sessions)
        yield sessions
        viewers = GaugeMetricFamily("relaycast_room_viewers", "WebRTC viewers of a live room",
                                    labels=["room"])
        for room in app[ROOMS].rooms.values():
            if room.live:
                viewers.add_metric([room.name], room.viewers)
        yield viewers
        encoder = InfoMetricFamily("relaycast_hls_encoder", "H.264 encoder an SFU node's HLS "
                                   "bridges chose", labels=["node"])
        bridges = GaugeMetricFamily("relaycast_hls_bridges", "Running LL-HLS bridges",
                                    labels=["node", "encoder"])
        cpu = GaugeMetricFamily("relaycast_hls_bridge_cpu_cores", "Cores used by a bridge's "
                                "transcoder", labels=["node", "room", "encoder"])
        factor = GaugeMetricFamily("relaycast_hls_bridge_realtime_factor", "Media seconds "
                                   "transcoded per transcoder-thread second",
                                   labels=["node", "room", "encoder"])
        rss = GaugeMetricFamily("relaycast_hls_bridge_rss_bytes", "Resident memory of a "
                                "bridge's transcoder process", labels=["node", "room", "encoder"])
        restarts = CounterMetricFamily("relaycast_hls_bridge_restarts", "Transcoder processes "
                                       "of a bridge restarted after an early exit",
                                       labels=["node", "room", "encoder"])
        idle = GaugeMetricFamily("relaycast_hls_idle_cores", "Idle cores of an LL-HLS node's "
                                 "machine, as bridge admission measured them", labels=["node"])
        refused = CounterMetricFamily("relaycast_hls_bridges_refused", "Bridges not started "
                                      "for lack of idle CPU", labels=["node"])
        for report in hls_nodes(app):
            admission = report.get("admission")
            if isinstance(admission, dict):
                if isinstance(admission.get("idle_cores"), int | float):
                    idle.add_metric([report["node"]], float(admission["idle_cores"]))
                refused.add_metric([report["node"]], float(admission.get("refused") or 0))
            chosen = (report.get("encoder") or {}).get("name")
            if chosen:
                encoder.add_metric([report["node"]], {"name": chosen})
            counts: dict[str, int] = {}
            for bridge in report.get("bridges", []):
                name = bridge.get("encoder") or "none"
                counts[name] = counts.get(name, 0) + 1
                labels = [report["node"], str(bridge.get("room")), name]
                cpu.add_metric(labels, float(bridge.get("cpu") or 0.0))
                rss.add_metric(labels, float(bridge.get("rss_bytes") or 0))
                restarts.add_metric(labels, float(bridge.get("restarts") or 0))
                if bridge.get("realtime_factor") is not None:
                    factor.add_metric(labels, float(bridge["realtime_factor"]))
            for name, count in counts.items():
                bridges.add_metric([report["node"], name], count)
        yield from (encoder, bridges, cpu, factor, rss, restarts, idle, refused)
        yield from _chat_metrics(app)


def _chat_metrics(app: web.Application) -> Iterator[Any]:
    """This instance's chat authority (docs/chat.md): messages it numbered by path, refused
    by code, and events it could not deliver to its pages and nodes."""
    chat = app.get(CHAT)
    if chat is None:
        return
    accepted = CounterMetricFamily("relaycast_chat_messages", "Chat messages this signaling "
                                   "instance accepted and numbered", labels=["via"])
    for via, count in sorted(chat.accepted.items()):
        accepted.add_metric([via], count)
    refused = CounterMetricFamily("relaycast_chat_refused", "Chat messages this signaling "
                                  "instance refused, by error code", labels=["code"])
    for code, count in sorted(chat.refused.items()):
        refused.add_metric([code], count)
    dropped = CounterMetricFamily("relaycast_chat_delivery_dropped", "Chat events not "
                                  "delivered to this instance's pages and nodes (outbox full)")
    dropped.add_metric([], chat.dropped)
    yield from (accepted, refused, dropped)


METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
"""The registry ``/metrics`` exposes; other packages (the platform) register their own
collectors in it (at start-up), so signaling never imports them."""


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text exposition format."""
    body = generate_latest(request.app[METRICS_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    """Register ``GET /api/hls``, ``GET /api/recordings`` and ``GET /metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(app))
    app[METRICS_REGISTRY] = registry
    app.router.add_routes([web.get("/api/hls", get_hls), web.get("/api/recordings", list_recordings),
                           web.get("/metrics", metrics)])
