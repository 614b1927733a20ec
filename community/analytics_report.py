"""A stream's analytics report (``GET /api/streams/{id}/analytics``), read from the tables
:mod:`community.analytics` writes.

* viewers: the 10 s samples by tier; ``peak`` = the highest sample (both tiers), or the
  WebRTC peak the stream lifecycle recorded between samples if higher; ``unique`` = the
  stream's distinct viewers; ``watch_time_s`` their total and ``average_watch_s`` the mean.
* chat: messages per UTC minute and their total.
* followers_gained: follows of the channel made between the stream's start and its end
  (or now) that still exist.
* qoe, per tier, over the stream's beacons grouped by playback session: ``sessions``;
  ``join_ms`` p50/p95 of each session's time to first frame; ``latency_ms`` p50/p95 of each
  session's mean latency; ``stalls``, ``stall_s``, ``switches`` summed over the sessions'
  latest (cumulative) totals; ``errors``: ``error`` beacons.  Percentiles are nearest-rank;
  ``null`` when no session reported the value.
* ingest: the 10 s ingest samples and the latest reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .beacons import TIERS
from .models import ChatMinute, Follow, IngestSample, QoeBeacon, Stream, StreamViewer, ViewerSample

INGEST_COLUMNS = (
    "at",
    "bitrate_bps",
    "fps",
    "width",
    "height",
    "keyframe_interval_s",
    "loss",
    "rtt_ms",
    "jitter_ms",
)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}


async def _qoe(session: AsyncSession, stream_id: str) -> dict[str, Any]:
    errors = func.sum(case((QoeBeacon.event == "error", 1), else_=0))
    rows = (
        await session.execute(
            select(
                QoeBeacon.tier,
                QoeBeacon.session,
                func.min(QoeBeacon.join_ms),
                func.avg(QoeBeacon.latency_ms),
                func.max(QoeBeacon.stalls),
                func.max(QoeBeacon.stall_ms),
                func.max(QoeBeacon.switches),
                errors,
            )
            .where(QoeBeacon.stream_id == stream_id)
            .group_by(QoeBeacon.tier, QoeBeacon.session)
        )
    ).all()
    out = {}
    for tier in TIERS:
        mine = [r for r in rows if r[0] == tier]
        out[tier] = {
            "sessions": len(mine),
            "join_ms": _spread([float(r[2]) for r in mine if r[2] is not None]),
            "latency_ms": _spread([float(r[3]) for r in mine if r[3] is not None]),
            "stalls": sum(int(r[4] or 0) for r in mine),
            "stall_s": round(sum(float(r[5] or 0) for r in mine) / 1000, 3),
            "switches": sum(int(r[6] or 0) for r in mine),
            "errors": sum(int(r[7] or 0) for r in mine),
        }
    return out


def _ingest_row(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in INGEST_COLUMNS}


async def stream_report(
    session: AsyncSession, stream: Stream, live_ingest: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The report of ``stream`` (shape: :class:`community.api.analytics.AnalyticsOut`).

    :param live_ingest: this instance's latest ingest reading of the stream's room, used as
        ``ingest.latest`` when newer than the last stored sample (``{"at": ..., fields}``).
    """
    sid = stream.id
    samples = (
        await session.execute(
            select(ViewerSample.at, ViewerSample.webrtc, ViewerSample.llhls)
            .where(ViewerSample.stream_id == sid)
            .order_by(ViewerSample.at)
        )
    ).all()
    unique, watch = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(StreamViewer.watch_s), 0.0)).where(
                StreamViewer.stream_id == sid
            )
        )
    ).one()
    minutes = (
        await session.execute(
            select(ChatMinute.minute, ChatMinute.messages)
            .where(ChatMinute.stream_id == sid)
            .order_by(ChatMinute.minute)
        )
    ).all()
    followers = 0
    if stream.started_at is not None:
        until = stream.ended_at or datetime.now(UTC)
        followers = (
            await session.execute(
                select(func.count())
                .select_from(Follow)
                .where(
                    Follow.channel_id == stream.channel_id,
                    Follow.created_at >= stream.started_at,
                    Follow.created_at <= until,
                )
            )
        ).scalar_one()
    ingest_rows = (
        (
            await session.execute(
                select(IngestSample).where(IngestSample.stream_id == sid).order_by(IngestSample.at)
            )
        )
        .scalars()
        .all()
    )
    ingest = [_ingest_row(r) for r in ingest_rows]
    latest: dict[str, Any] | None = ingest[-1] if ingest else None
    if live_ingest is not None and (latest is None or live_ingest["at"] > latest["at"]):
        latest = dict(live_ingest)
    peak = max([w + h for _, w, h in samples] + [stream.peak_viewers or 0])
    return {
        "stream_id": sid,
        "status": stream.status,
        "started_at": stream.started_at,
        "ended_at": stream.ended_at,
        "viewers": {
            "samples": [{"at": at, "webrtc": w, "llhls": h} for at, w, h in samples],
            "peak": peak,
            "unique": int(unique),
            "watch_time_s": round(float(watch), 1),
            "average_watch_s": round(float(watch) / unique, 1) if unique else 0.0,
        },
        "chat": {
            "total": sum(n for _, n in minutes),
            "per_minute": [{"minute": m, "messages": n} for m, n in minutes],
        },
        "followers_gained": int(followers),
        "qoe": await _qoe(session, sid),
        "ingest": {"latest": latest, "samples": ingest},
    }
