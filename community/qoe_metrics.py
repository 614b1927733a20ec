"""Prometheus metrics of the players' quality of experience and of the publishers' ingest.

Added to the service's ``/metrics`` (:data:`signaling.hls_api.METRICS_REGISTRY`):

* ``relaycast_qoe_join_seconds{tier}`` (histogram): time to first frame, from ``join``
  beacons;
* ``relaycast_qoe_latency_seconds{tier}`` (histogram): playback latency, every beacon that
  carries ``latency_ms``;
* ``relaycast_qoe_stall_seconds{tier}`` (histogram): the duration of each stall;
* ``relaycast_qoe_stalls_total{tier}`` (counter): stalls;
* ``relaycast_qoe_beacons_dropped_total`` (counter): beacons not stored because the write
  queue was full (the database fell behind);
* gauges per live room, from the latest ingest reading of the SFU (sampled every 10 s by
  :mod:`community.analytics`): ``relaycast_ingest_bitrate_bps``, ``relaycast_ingest_fps``,
  ``relaycast_ingest_keyframe_interval_seconds``, ``relaycast_ingest_loss_ratio`` (0–1),
  ``relaycast_ingest_jitter_seconds``.

A beacon's ``stalls``/``stall_ms`` are cumulative per playback session
(:mod:`community.beacons`), so stalls are counted from the difference to the session's
previous beacon seen by this process (at most :data:`MAX_SESSIONS` sessions remembered,
the least recently heard forgotten first).  A session first heard mid-way (its earlier
beacons went to another instance, or were forgotten) counts its totals once more — an
over-count bounded by one session's totals.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .beacons import Beacon

JOIN_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
LATENCY_BUCKETS_S = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
STALL_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_SESSIONS = 100_000
MAX_STALLS_OBSERVED = 100
"""Stalls observed one by one per beacon at most (the counter still counts them all)."""

INGEST_GAUGES = (
    (
        "relaycast_ingest_bitrate_bps",
        "Publisher ingest bitrate as the SFU receives it, bit/s",
        "bitrate_bps",
        1.0,
    ),
    (
        "relaycast_ingest_fps",
        "Publisher video frames per second as the SFU receives them",
        "fps",
        1.0,
    ),
    (
        "relaycast_ingest_keyframe_interval_seconds",
        "Seconds between the publisher's key frames",
        "keyframe_interval_s",
        1.0,
    ),
    ("relaycast_ingest_loss_ratio", "Fraction of the publisher's packets lost (0-1)", "loss", 1.0),
    (
        "relaycast_ingest_jitter_seconds",
        "Interarrival jitter of the publisher's packets, s (RFC 3550 §6.4.1)",
        "jitter_ms",
        0.001,
    ),
)
"""(metric, help, Ingest field, factor to the metric's unit)."""


class QoeMetrics:
    """The QoE histograms and counters of one process (registered in no registry until
    :meth:`register`); :meth:`observe` is called for every accepted beacon (µs per beacon)."""

    def __init__(self) -> None:
        self.join = Histogram(
            "relaycast_qoe_join_seconds",
            "Player time to first frame, s",
            ["tier"],
            buckets=JOIN_BUCKETS_S,
            registry=None,
        )
        self.latency = Histogram(
            "relaycast_qoe_latency_seconds",
            "Player playback latency, s",
            ["tier"],
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.stall = Histogram(
            "relaycast_qoe_stall_seconds",
            "Duration of a player stall, s",
            ["tier"],
            buckets=STALL_BUCKETS_S,
            registry=None,
        )
        self.stalls = Counter("relaycast_qoe_stalls", "Player stalls", ["tier"], registry=None)
        self.dropped = Counter(
            "relaycast_qoe_beacons_dropped",
            "Beacons not stored: the write queue was full",
            registry=None,
        )
        self._totals: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def register(self, registry: CollectorRegistry) -> None:
        for metric in (self.join, self.latency, self.stall, self.stalls, self.dropped):
            registry.register(metric)

    def observe(self, beacon: Beacon) -> None:
        tier = beacon.tier
        if beacon.event == "join" and beacon.join_ms is not None:
            self.join.labels(tier).observe(beacon.join_ms / 1000)
        if beacon.latency_ms is not None:
            self.latency.labels(tier).observe(beacon.latency_ms / 1000)
        if beacon.stalls is not None:
            self._stalls(beacon, tier)
        if beacon.event == "end":
            self._totals.pop(beacon.session, None)

    def _stalls(self, beacon: Beacon, tier: str) -> None:
        stalls, stall_ms = beacon.stalls or 0, beacon.stall_ms or 0.0
        before = self._totals.pop(beacon.session, (0, 0.0))
        if stalls < before[0] or stall_ms < before[1]:
            before = (0, 0.0)  # the player restarted its counters
        self._totals[beacon.session] = (stalls, stall_ms)
        if len(self._totals) > MAX_SESSIONS:
            self._totals.popitem(last=False)
        new = stalls - before[0]
        if new <= 0:
            return
        self.stalls.labels(tier).inc(new)
        each_s = (stall_ms - before[1]) / new / 1000
        histogram = self.stall.labels(tier)
        for _ in range(min(new, MAX_STALLS_OBSERVED)):
            histogram.observe(each_s)


class IngestCollector(Collector):
    """The ingest gauges, read at scrape time from ``readings()``: ``{room: Ingest dict}``
    (fields of :class:`community.models.IngestSample`; a ``None`` value is left out)."""

    def __init__(self, readings: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        self.readings = readings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = self.readings()
        for name, text, key, factor in INGEST_GAUGES:
            family = GaugeMetricFamily(name, text, labels=["room"])
            for room, ingest in readings.items():
                value = ingest.get(key)
                if isinstance(value, int | float):
                    family.add_metric([room], float(value) * factor)
            yield family
