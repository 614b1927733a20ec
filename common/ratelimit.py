"""The token bucket: one for a single sender (chat), keyed buckets for many (HTTP, Socket.IO)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Classic token bucket: ``rate`` tokens/s, at most ``burst`` stored, full at start."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now()

    def take(self, now: float) -> bool:
        """Take one token at monotonic time ``now`` (s); False when the bucket is empty."""
        return self.wait(now) == 0.0

    def wait(self, now: float) -> float:
        """Take one token: 0.0 when taken, else the seconds until one is available (none taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class TokenBuckets:
    """One :class:`TokenBucket` per key (a client address): memory stays bounded under churn
    (at most ``max_keys`` buckets; idle full ones are dropped first)."""

    def __init__(
        self, rate: float, burst: int, *, max_keys: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float:
        """0.0 when allowed, else seconds until ``key`` has a token (nothing taken then)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, lambda: now)
        return bucket.wait(now)

    def _prune(self, now: float) -> None:
        refill_s = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < refill_s}
        while len(self._buckets) >= self.max_keys:  # all busy: drop the oldest
            self._buckets.pop(next(iter(self._buckets)))
