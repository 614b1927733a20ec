"""In-process platform events: one place that says "a stream went live", many listeners.

The instance that makes a state change in the database (e.g. flips a stream from pending
to live, which the unique open-stream index makes exactly-once across instances) emits it;
listeners (notifications, webhooks, thumbnails) react.  A failing listener is logged and
never stops the others or the emitter.

Events and their payloads (dicts, JSON-safe):

* ``stream.started`` / ``stream.ended``: :func:`community.api.streams.stream_json` of the stream.
* ``recording.ready``: ``{"stream_id", "channel", "url"}``.
* ``key.revoked``: ``{"channel", "key_id", "key_hash"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], Awaitable[None]]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[tuple[frozenset[str] | None, Listener]] = []

    def subscribe(self, listener: Listener, *events: str) -> None:
        """Call ``listener(event, payload)`` for ``events`` (all events when none given)."""
        self._listeners.append((frozenset(events) or None, listener))

    async def emit(self, event: str, payload: dict[str, Any]) -> None:
        for events, listener in list(self._listeners):
            if events is not None and event not in events:
                continue
            try:
                await listener(event, payload)
            except Exception:
                logger.exception("listener %r failed on %s", listener, event)
