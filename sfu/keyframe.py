"""KeyFrameRequester: throttled PLI upstream (mediasoup ``KeyFrameRequestManager``).

Consumers that join or report picture loss ask their producer for a key frame.
Requests inside ``min_interval_s`` of the last PLI are coalesced into one
deferred PLI at the end of the interval, so a burst of joiners costs the
publisher one key frame, and nobody waits longer than the interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class KeyFrameRequester:
    """Throttles key-frame requests for one producer.

    :param send_pli: callable that sends one RTCP PLI upstream.
    :param min_interval_s: minimum spacing between two PLIs, seconds.
    """

    def __init__(self, send_pli: Callable[[], None], min_interval_s: float = 0.3) -> None:
        self._send_pli = send_pli
        self.min_interval_s = min_interval_s
        self._last = -1e9
        self._pending: asyncio.TimerHandle | None = None
        self.sent = 0
        self.coalesced = 0

    def request(self) -> None:
        """Ask for a key frame now, or at the end of the current throttle window."""
        now = time.monotonic()
        wait = self._last + self.min_interval_s - now
        if wait <= 0:
            self._fire()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(wait, self._fire)
        else:
            self.coalesced += 1

    def _fire(self) -> None:
        self._pending = None
        self._last = time.monotonic()
        self.sent += 1
        self._send_pli()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
