"""Analytics and quality of experience: player beacons in, a stream's report out.

* ``POST /api/beacons`` — any player (logged in or not): ``{"beacons": [Beacon, 1..50]}``
  (:mod:`community.beacons`) → 202 ``{"accepted": n}``.  Sent with ``navigator.sendBeacon``
  (W3C Beacon §3.1), which cannot set headers, so it is exempt from the CSRF header
  (:data:`community.auth.CSRF_EXEMPT`); the access cookie, when valid, still names the user.
  Validated in full before anything is kept (one bad value: 422, nothing stored); bodies
  over 64 KiB: 413; :data:`BEACONS_PER_ADDRESS` requests per client address
  (``RELAYCAST_TRUSTED_PROXIES`` for the address behind a proxy): 429 with ``Retry-After``
  (RFC 9110 §10.2.3).  Queued in memory and written in batches (:mod:`community.analytics`).
* ``GET /api/streams/{id}/analytics`` — the channel's owner or an admin: the stream's
  report (:mod:`community.analytics_report`).  Unknown streams and private channels'
  streams the caller may not watch: 404; others' streams: 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from common.problems import HttpProblem
from common.ratelimit import TokenBuckets
from signaling.client_ip import client_of

from ..analytics import ANALYTICS, Analytics, analytics_of
from ..analytics_report import stream_report
from ..app import COMMUNITY
from ..beacons import BeaconBatch, BeaconsAccepted
from ..throttles import too_many
from .base import ApiRoutes, Call
from .ingest import IngestFigures
from .streams import ID_RE, NOT_FOUND, can_view, load_stream

routes = ApiRoutes("analytics")

BEACONS_PER_ADDRESS = (600, 60.0)
"""(burst, requests/s) per client address.  A page sends at most one request every 10 s
(plus one when it is hidden), so one address sustains 600 watching pages — a household, an
office or a carrier-grade NAT — and 600 pages starting at once pass the burst."""
BUCKETS = "beacon_buckets"
"""``Community.services[BUCKETS]``: the :class:`TokenBuckets` of ``POST /api/beacons``."""


class Spread(BaseModel):
    p50: float
    p95: float


class Qoe(BaseModel):
    """One tier's quality of experience over the stream's playback sessions."""

    sessions: int
    join_ms: Spread | None = Field(description="time to first frame, ms (each session's)")
    latency_ms: Spread | None = Field(description="playback latency, ms (each session's mean)")
    stalls: int
    stall_s: float
    switches: int
    errors: int


class QoeByTier(BaseModel):
    webrtc: Qoe
    llhls: Qoe


class ViewerSampleOut(BaseModel):
    at: datetime
    webrtc: int
    llhls: int


class Viewers(BaseModel):
    samples: list[ViewerSampleOut] = Field(description="concurrent viewers every 10 s, by tier")
    peak: int
    unique: int
    watch_time_s: float
    average_watch_s: float


class ChatMinuteOut(BaseModel):
    minute: datetime
    messages: int


class ChatActivity(BaseModel):
    total: int
    per_minute: list[ChatMinuteOut]


class IngestHistory(BaseModel):
    latest: IngestFigures | None
    samples: list[IngestFigures]


class AnalyticsOut(BaseModel):
    """A stream's analytics; times ISO 8601 UTC."""

    stream_id: str
    status: Literal["pending", "live", "ended"]
    started_at: datetime | None
    ended_at: datetime | None
    viewers: Viewers
    chat: ChatActivity
    followers_gained: int
    qoe: QoeByTier
    ingest: IngestHistory


def _buckets(call: Call[Any, Any]) -> TokenBuckets:
    services = call.request.app[COMMUNITY].services
    buckets = services.get(BUCKETS)
    if not isinstance(buckets, TokenBuckets):
        burst, rate = BEACONS_PER_ADDRESS
        buckets = services[BUCKETS] = TokenBuckets(rate, burst)
    return buckets


@routes.op(
    "POST",
    "/api/beacons",
    body=BeaconBatch,
    auth="optional",
    responses={202: BeaconsAccepted},
    summary="Report playback quality (player beacons)",
)
async def post_beacons(call: Call[BeaconBatch, None]) -> tuple[int, BeaconsAccepted]:
    """Takes 1–50 beacons of playback sessions (``navigator.sendBeacon`` with a JSON
    ``Blob``; no CSRF header needed).  Every field is range-checked and unknown fields are
    refused: one bad beacon rejects the batch (422) and nothing is stored.  429 with
    ``Retry-After`` past 600 requests at once / 60 per second from one client address."""
    wait = _buckets(call).take(client_of(call.request))
    if wait > 0.0:
        raise too_many(wait, "beacon requests from this address")
    user_id = call.principal.user_id if call.principal is not None else None
    accepted = analytics_of(call.request.app).beacons.submit(call.body.beacons, user_id)
    return 202, BeaconsAccepted(accepted=accepted)


@routes.op(
    "GET",
    "/api/streams/{id}/analytics",
    auth="user",
    responses={200: AnalyticsOut, 403: None, 404: None},
    summary="A stream's analytics (owner or admin)",
)
async def get_analytics(call: Call[None, None]) -> AnalyticsOut:
    """Viewers every 10 s by tier, peak, unique viewers and watch time; chat messages per
    minute; followers gained during the stream; QoE per tier; ingest health samples.
    404: no such stream (or a private channel's the caller may not watch); 403: not the
    channel's owner nor an admin."""
    community = call.request.app[COMMUNITY]
    stream_id = call.path("id")
    async with community.db.session() as session:
        found = await load_stream(session, stream_id) if ID_RE.fullmatch(stream_id) else None
        if found is None or not await can_view(session, found[1], call.principal):
            raise HttpProblem(404, None, NOT_FOUND)
        stream, channel, _owner, _category = found
        if channel.owner_id != call.user.user_id and not call.user.is_admin:
            raise HttpProblem(
                403, None, "only the channel's owner or an admin can read its analytics"
            )
        analytics = community.services.get(ANALYTICS)
        live = (
            analytics.sampler.ingest_latest.get(channel.name)
            if isinstance(analytics, Analytics) and stream.status == "live"
            else None
        )
        report = await stream_report(session, stream, live)
    return AnalyticsOut.model_validate(report)
