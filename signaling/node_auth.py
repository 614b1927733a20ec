"""Failed SFU node authentications, per client address: a lockout and a quiet log.

`NodeAuthThrottle` counts bad node secrets per client address in a token bucket
(`common.ratelimit.TokenBuckets`, refilled at ``max_failures`` per ``lockout_s``): the
``max_failures``-th bad secret within about ``lockout_s`` locks the address out for
``lockout_s``.  A locked-out address is refused before its secret is even compared, so
guessing the secret costs at most ``max_failures`` comparisons per ``lockout_s`` per
address.

Refusals are logged as one WARNING per address per ``lockout_s`` with the number of
refusals since the previous one; the others are DEBUG, so a flood of bad attempts cannot
flood the log.  Secrets are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.ratelimit import TokenBuckets

logger = logging.getLogger(__name__)

MAX_FAILURES = 5
"""Bad secrets from one address that lock it out."""
LOCKOUT_S = 60.0
"""How long an address stays locked out, and the WARNING window, s."""


@dataclass
class _Address:
    locked_until: float = 0.0
    """``clock()`` time until which attempts are refused unchecked (0: not locked)."""
    logged_at: float | None = None
    """``clock()`` time of the last WARNING for this address."""
    unlogged: int = 0
    """Refusals since that WARNING."""


class NodeAuthThrottle:
    """Per-address lockout after repeated bad node secrets (module docstring).

    :param max_failures: bad secrets that lock an address out (≥ 1).
    :param lockout_s: lockout and log window, s.
    :param clock: monotonic seconds (injectable for tests).
    :param max_addresses: addresses tracked at most; idle ones are forgotten first.
    """

    def __init__(
        self, max_failures: int = MAX_FAILURES, lockout_s: float = LOCKOUT_S, *,
        clock: Callable[[], float] = time.monotonic, max_addresses: int = 10000,
    ) -> None:
        if max_failures < 1 or lockout_s <= 0:
            raise ValueError("max_failures must be >= 1 and lockout_s > 0")
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self._clock = clock
        self._max_addresses = max_addresses
        # max_failures - 1 stored: the bad secret that finds the bucket empty locks.
        self._failures = TokenBuckets(max_failures / lockout_s, max_failures - 1,
                                      max_keys=max_addresses, clock=clock)
        self._addresses: dict[str, _Address] = {}

    def locked(self, address: str) -> float:
        """Seconds ``address`` stays locked out (0.0: it may try a secret now)."""
        entry = self._addresses.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry.locked_until - self._clock())

    def refused(self, address: str, *, bad_secret: bool) -> None:
        """Record a refused attempt and log it (rate-limited): a bad or missing secret (it
        counts towards the lockout), or with ``bad_secret`` False an attempt during the
        lockout."""
        now = self._clock()
        entry = self._addresses.get(address)
        if entry is None:
            if len(self._addresses) >= self._max_addresses:
                self._prune(now)
            entry = self._addresses[address] = _Address()
        if bad_secret and self._failures.take(address) > 0:
            entry.locked_until = now + self.lockout_s
        entry.unlogged += 1
        reason = "bad secret" if bad_secret else "locked out"
        if entry.logged_at is None or now - entry.logged_at >= self.lockout_s:
            logger.warning(
                "refused %d SFU node connection(s) from %s in the last %g s (last: %s)%s",
                entry.unlogged, address, self.lockout_s, reason,
                "; locked out" if entry.locked_until > now else "",
            )
            entry.logged_at, entry.unlogged = now, 0
        else:
            logger.debug("refused SFU node connection from %s: %s", address, reason)

    def _prune(self, now: float) -> None:
        idle = [a for a, e in self._addresses.items()
                if e.locked_until <= now and (e.logged_at is None or now - e.logged_at >= self.lockout_s)]
        for address in idle:
            del self._addresses[address]
        while len(self._addresses) >= self._max_addresses:  # all busy: drop the oldest
            self._addresses.pop(next(iter(self._addresses)))
