"""Per-stream analytics: viewer samples every 10 s, unique viewers and watch time, chat
messages per minute, ingest health samples, and the players' QoE beacons — all written in
batches, never a database round trip per event on a request or delivery path
(docs/analytics.md).

:class:`Analytics` (``Community.services[ANALYTICS]``, one per signaling process) holds

* :attr:`~Analytics.beacons`: :class:`community.analytics_store.BeaconQueue`, fed by
  ``POST /api/beacons``;
* :attr:`~Analytics.chat`: :class:`community.analytics_store.ChatCounter`, a listener on the
  chat service (``app[CHAT].listeners``: once per accepted message cluster-wide);
* :attr:`~Analytics.sampler`: :class:`community.stream_sampler.ViewerSampler` (every 10 s;
  one writer per stream in a cluster, idempotent writes);
* :attr:`~Analytics.metrics`: the QoE histograms and ingest gauges
  (:mod:`community.qoe_metrics`), registered in ``/metrics``
  (:data:`signaling.hls_api.METRICS_REGISTRY`).

All times are UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from signaling.app_keys import CHAT
from signaling.hls_api import METRICS_REGISTRY

from .analytics_store import BeaconQueue, ChatCounter, StreamIndex
from .app import COMMUNITY
from .database import Database
from .qoe_metrics import IngestCollector, QoeMetrics
from .stream_sampler import ViewerSampler

logger = logging.getLogger(__name__)

ANALYTICS = "analytics"
"""``Community.services[ANALYTICS]``: the :class:`Analytics` of this process."""


class Analytics:
    """This process's analytics: :attr:`beacons`, :attr:`chat`, :attr:`sampler`, :attr:`metrics`."""

    def __init__(self, app: web.Application, db: Database) -> None:
        self.metrics = QoeMetrics()
        self.index = StreamIndex(db)
        self.beacons = BeaconQueue(db, self.index, self.metrics)
        self.chat = ChatCounter(db, self.index)
        self.sampler = ViewerSampler(app, db, self.beacons)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        """The running loops by name: ``beacons``, ``chat``, ``sampler``."""

    def start(self) -> None:
        for name, loop in (
            ("beacons", self.beacons.run),
            ("chat", self.chat.run),
            ("sampler", self.sampler.run),
        ):
            self.tasks[name] = asyncio.create_task(loop(), name=f"analytics-{name}")

    async def close(self) -> None:
        tasks, self.tasks = list(self.tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for flush in (self.beacons.flush, self.chat.flush):
            try:
                await flush()
            except Exception:
                logger.exception("final analytics flush failed")


def analytics_of(app: web.Application) -> Analytics:
    """The :class:`Analytics` of the app (after start-up)."""
    found = app[COMMUNITY].services[ANALYTICS]
    assert isinstance(found, Analytics)
    return found


def setup(app: web.Application) -> None:
    """Start the analytics with the database; its collectors join ``/metrics``."""
    community = app[COMMUNITY]
    holder: dict[str, Analytics] = {}

    def readings() -> Mapping[str, Mapping[str, Any]]:
        found = holder.get(ANALYTICS)
        return found.sampler.ingest_latest if found is not None else {}

    registry = app.get(METRICS_REGISTRY)
    collector = IngestCollector(readings)

    async def start(app: web.Application) -> None:
        analytics = Analytics(app, community.db)
        holder[ANALYTICS] = community.services[ANALYTICS] = analytics
        if registry is not None:
            analytics.metrics.register(registry)
            registry.register(collector)
        chat = app.get(CHAT)
        if chat is not None:
            chat.listeners.append(analytics.chat.on_chat_event)
        analytics.start()

    async def stop(app: web.Application) -> None:
        analytics = holder.pop(ANALYTICS, None)
        if analytics is None:
            return
        await analytics.close()
        if registry is not None:
            for metric in (
                analytics.metrics.join,
                analytics.metrics.latency,
                analytics.metrics.stall,
                analytics.metrics.stalls,
                analytics.metrics.dropped,
                collector,
            ):
                with contextlib.suppress(KeyError):
                    registry.unregister(metric)

    app.on_startup.append(start)
    # After signaling's clean-up (the chat service hands its last events to the listeners)
    # and before the database closes (install() appends that after every module's setup).
    app.on_cleanup.append(stop)
