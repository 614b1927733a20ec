"""Operator webhooks (Standard Webhooks 1.0, https://www.standardwebhooks.com/).

The platform events :data:`EVENTS` are POSTed to every ``RELAYCAST_WEBHOOK_URLS`` endpoint:

* Body: ``{"type": <event>, "timestamp": <ISO 8601 UTC>, "data": <event payload>}`` as
  ``application/json`` (``data``: :func:`community.api.streams.stream_json` for
  ``stream.*``, ``{"stream_id", "channel", "url"}`` for ``recording.ready``).
* Headers (spec "Signature scheme"): ``webhook-id`` (``msg_…``, the same on every retry:
  receivers deduplicate on it), ``webhook-timestamp`` (Unix seconds of this attempt) and
  ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
  ``key`` = the base64-decoded part of ``RELAYCAST_WEBHOOK_SECRET`` after ``whsec_``.
* Delivery: each message is first written to ``webhook_deliveries`` (one row per endpoint)
  and then sent by a background task, so a restart resumes what was pending.  A 2xx
  answer within :data:`TIMEOUT_S` is delivered; anything else (other status, redirect,
  timeout, connection error) is retried after :data:`RETRY_SCHEDULE_S` (5 s, 30 s, 2 min,
  10 min, 1 h), then the delivery is ``failed``; 410 Gone fails it at once (spec: the
  endpoint is gone).  Delivery is at least once.
* Cluster: every instance with webhooks configured runs a sender against the shared
  database; an attempt is claimed by a conditional ``UPDATE`` (``status = 'pending' AND
  next_attempt_at <= now AND attempts = <seen>``) that moves ``next_attempt_at`` a lease
  (:data:`LEASE_S`) ahead, so exactly one instance sends each attempt, and an instance
  that dies mid-attempt leaves it to be retried when the lease ends.
* ``GET /api/admin/webhooks/deliveries`` (admin): the delivery log, newest first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import select, update
from yarl import URL

from .api.base import ApiRoutes, Call
from .api.pagination import PageQuery, before, next_cursor
from .app import COMMUNITY
from .config import CommunityConfigError
from .database import Database
from .models import WebhookDelivery, utcnow

logger = logging.getLogger(__name__)

EVENTS = ("stream.started", "stream.ended", "recording.ready")
RETRY_SCHEDULE_S = (5.0, 30.0, 120.0, 600.0, 3600.0)
"""Waits before attempts 2, 3, ... (s); after the last retry fails the delivery is failed."""
TIMEOUT_S = 10.0
"""One attempt's limit, connect to last byte of the answer's head (s)."""
LEASE_S = TIMEOUT_S + 20.0
"""How long a claimed attempt is this instance's before another instance may retry it (s)."""
POLL_S = 5.0
"""The sender looks for due deliveries (other instances' too) at least this often (s)."""
CLAIM_BATCH = 20
"""Deliveries attempted together by one instance."""
SECRET_PREFIX = "whsec_"
USER_AGENT = "relaycast-webhooks/1"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (24 to 64 bytes, as the spec asks).

    :raises CommunityConfigError: the secret is not of that form.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise CommunityConfigError(
            "RELAYCAST_WEBHOOK_SECRET: expected whsec_<base64 of 24-64 random bytes>"
        )
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise CommunityConfigError(
            "RELAYCAST_WEBHOOK_SECRET: the part after whsec_ is not base64"
        ) from None
    if not 24 <= len(key) <= 64:
        raise CommunityConfigError(
            f"RELAYCAST_WEBHOOK_SECRET: the key is {len(key)} bytes; use 24 to 64"
        )
    return key


def new_secret() -> str:
    """A fresh ``whsec_`` secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


class WebhookSender:
    """Writes webhook messages to the database and delivers them (module docstring).

    :param db: the platform's database (shared by the instances of a cluster).
    :param urls: the endpoints; every message goes to each.
    :param secret: ``whsec_<base64>``.  :raises CommunityConfigError: when malformed.
    :param schedule: waits between attempts, s.
    :param timeout_s: one attempt's limit, s.
    :param poll_s: longest wait between looks for due deliveries, s.
    :param lease_s: how long a claimed attempt is this instance's, s (more than
        ``timeout_s``).
    """

    def __init__(
        self,
        db: Database,
        urls: Sequence[str],
        secret: str,
        *,
        schedule: Sequence[float] = RETRY_SCHEDULE_S,
        timeout_s: float = TIMEOUT_S,
        poll_s: float = POLL_S,
        lease_s: float = LEASE_S,
    ) -> None:
        if lease_s <= timeout_s:
            raise ValueError(f"lease_s ({lease_s:g} s) must exceed timeout_s ({timeout_s:g} s)")
        self.db = db
        self.urls = tuple(urls)
        self._key = secret_key(secret)
        self.schedule = tuple(schedule)
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.attempted = asyncio.Event()
        """Set after every attempt this instance makes (tests await it)."""

    async def enqueue(self, event: str, data: dict[str, Any]) -> list[str]:
        """Write one pending delivery per endpoint (committed before this returns) and wake
        the sender.  :returns: the delivery ids (the ``webhook-id`` of each message)."""
        now = utcnow()
        envelope = {
            "type": event,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": data,
        }
        rows = [
            WebhookDelivery(
                id=new_message_id(),
                event=event,
                url=url,
                payload=envelope,
                created_at=now,
                next_attempt_at=now,
            )
            for url in self.urls
        ]
        async with self.db.transaction() as session:
            session.add_all(rows)
        self._wake.set()
        return [row.id for row in rows]

    async def on_event(self, event: str, payload: dict[str, Any]) -> None:
        """:class:`~community.events.EventBus` listener for :data:`EVENTS`."""
        await self.enqueue(event, payload)

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), headers={"User-Agent": USER_AGENT}
        )
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def close(self) -> None:
        """Stop sending; a claimed attempt in flight is retried after its lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        while True:
            try:
                await self.send_due()
                wait = await self._next_due_in()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: keep trying, without a hot loop
                logger.exception("webhook sender failed; retrying in %g s", self.poll_s)
                wait = self.poll_s
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancellation
            # that arrives as the event is set, and close() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _next_due_in(self) -> float:
        async with self.db.session() as session:
            due = await session.scalar(
                select(WebhookDelivery.next_attempt_at)
                .where(WebhookDelivery.status == "pending")
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(1)
            )
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.0, (due - utcnow()).total_seconds()))

    async def send_due(self) -> int:
        """Claim the due deliveries (up to :data:`CLAIM_BATCH` at a time) and attempt them.
        :returns: how many attempts this call made."""
        made = 0
        while True:
            claimed = await self._claim()
            if not claimed:
                return made
            await asyncio.gather(*(self._attempt(delivery) for delivery in claimed))
            made += len(claimed)

    async def _claim(self) -> list[WebhookDelivery]:
        now = utcnow()
        async with self.db.session() as session:
            due = (
                await session.scalars(
                    select(WebhookDelivery)
                    .where(
                        WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(CLAIM_BATCH)
                )
            ).all()
        claimed = []
        for delivery in due:
            async with self.db.transaction() as session:
                result = await session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery.id,
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= now,
                        WebhookDelivery.attempts == delivery.attempts,
                    )
                    .values(
                        attempts=delivery.attempts + 1,
                        next_attempt_at=now + timedelta(seconds=self.lease_s),
                    )
                )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                delivery.attempts += 1
                claimed.append(delivery)
        return claimed

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        status, error = await self._post(delivery)
        now = utcnow()
        values: dict[str, Any] = {"last_status": status, "last_error": error[:500]}
        if status is not None and 200 <= status < 300:
            values.update(status="delivered", delivered_at=now, next_attempt_at=None)
        elif status == 410 or delivery.attempts > len(self.schedule):
            values.update(status="failed", next_attempt_at=None)
        else:
            values["next_attempt_at"] = now + timedelta(
                seconds=self.schedule[delivery.attempts - 1]
            )
        async with self.db.transaction() as session:
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery.id,
                    WebhookDelivery.attempts == delivery.attempts,
                    WebhookDelivery.status == "pending",
                )
                .values(**values)
            )
        log = logger.info if values.get("status") == "delivered" else logger.warning
        log(
            "webhook %s %s to %s: attempt %d: %s",
            delivery.event,
            delivery.id,
            _origin(delivery.url),
            delivery.attempts,
            values.get("status") or f"retry at {values['next_attempt_at']:%H:%M:%S}",
            extra={"webhook_id": delivery.id, "http_status": status},
        )
        self.attempted.set()

    async def _post(self, delivery: WebhookDelivery) -> tuple[int | None, str]:
        """One attempt: ``(HTTP status or None, error text or "")``."""
        assert self._http is not None
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self._key, delivery.id, timestamp, body),
        }
        try:
            async with self._http.post(
                delivery.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                return response.status, "" if response.status < 300 else f"HTTP {response.status}"
        except TimeoutError:
            return None, f"no answer within {self.timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (logs never show paths or credentials)."""
    parts = URL(url)
    return f"{parts.scheme}://{parts.host}" + (
        f":{parts.explicit_port}" if parts.explicit_port else ""
    )


# -- the delivery log ---------------------------------------------------------------------

routes = ApiRoutes("webhooks")


class DeliveryOut(BaseModel):
    """One webhook message to one endpoint.  ``last_status``: the endpoint's last HTTP
    status (null: no answer); ``next_attempt_at``: null once delivered or failed."""

    id: str
    event: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None
    last_error: str
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    payload: dict[str, Any]


class DeliveriesQuery(PageQuery):
    status: Literal["pending", "delivered", "failed"] | None = None


class DeliveriesPage(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: str | None


@routes.op(
    "GET",
    "/api/admin/webhooks/deliveries",
    auth="admin",
    query=DeliveriesQuery,
    summary="Webhook delivery log",
    responses={200: DeliveriesPage},
)
async def deliveries(call: Call[None, DeliveriesQuery]) -> DeliveriesPage:
    """Webhook deliveries, newest first (optionally only one ``status``)."""
    query = call.query
    statement = (
        select(WebhookDelivery)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(query.limit + 1)
    )
    if query.status is not None:
        statement = statement.where(WebhookDelivery.status == query.status)
    page = before(WebhookDelivery.created_at, WebhookDelivery.id, query.cursor)
    if page is not None:
        statement = statement.where(page)
    async with call.request.app[COMMUNITY].db.session() as session:
        rows = (await session.scalars(statement)).all()
    return DeliveriesPage(
        deliveries=[
            DeliveryOut.model_validate(row, from_attributes=True) for row in rows[: query.limit]
        ],
        next_cursor=next_cursor(rows, query.limit),
    )


def setup(app: web.Application) -> None:
    """With ``RELAYCAST_WEBHOOK_URLS`` set: send :data:`EVENTS` there from start-up on.

    :raises CommunityConfigError: ``RELAYCAST_WEBHOOK_SECRET`` is missing or malformed.
    """
    community = app[COMMUNITY]
    config = community.config
    if not config.webhook_urls:
        return
    secret_key(config.webhook_secret)  # fail at install, not at the first event

    async def forward(event: str, payload: dict[str, Any]) -> None:
        sender = community.services.get("webhooks")
        if sender is not None:
            await sender.on_event(event, payload)

    async def start(app: web.Application) -> None:
        sender = WebhookSender(community.db, config.webhook_urls, config.webhook_secret)
        await sender.start()
        community.services["webhooks"] = sender

    async def stop(app: web.Application) -> None:
        sender = community.services.pop("webhooks", None)
        if sender is not None:
            await sender.close()

    community.events.subscribe(forward, *EVENTS)
    app.on_startup.append(start)
    app.on_shutdown.append(stop)
