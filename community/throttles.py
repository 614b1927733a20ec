"""Rate limits on the account endpoints (token buckets, :class:`common.ratelimit.TokenBuckets`).

* Login and password checks: every attempt takes a token from the client address's bucket
  (:data:`LOGIN_PER_ADDRESS`) and from the account's (:data:`LOGIN_PER_ACCOUNT`, keyed by the
  normalized login name whether or not such an account exists, so the limit tells nothing
  about which accounts exist).  An empty bucket → 429 with ``Retry-After`` before any
  password is checked.
* Registration: per client address (:data:`REGISTER_PER_ADDRESS`).

Per process: with several signaling instances each keeps its own buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from common.problems import HttpProblem
from common.ratelimit import TokenBuckets

LOGIN_PER_ADDRESS = (30, 30 / 300)
"""(burst, tokens/s): 30 attempts, then one every 10 s."""
LOGIN_PER_ACCOUNT = (10, 10 / 900)
"""(burst, tokens/s): 10 attempts, then one every 90 s (10 per 15 min)."""
REGISTER_PER_ADDRESS = (10, 10 / 3600)
"""(burst, tokens/s): 10 accounts, then one every 6 min."""


def _buckets(spec: tuple[int, float]) -> TokenBuckets:
    burst, rate = spec
    return TokenBuckets(rate, burst)


def too_many(wait_s: float, what: str) -> HttpProblem:
    """429 with ``Retry-After`` in whole seconds (RFC 9110 §10.2.3)."""
    retry = max(1, math.ceil(wait_s))
    return HttpProblem(
        429, None, f"too many {what}; try again in {retry} s", headers={"Retry-After": str(retry)}
    )


@dataclass
class AccountThrottles:
    """The account endpoints' buckets (one set per process)."""

    login_address: TokenBuckets = field(default_factory=lambda: _buckets(LOGIN_PER_ADDRESS))
    login_account: TokenBuckets = field(default_factory=lambda: _buckets(LOGIN_PER_ACCOUNT))
    register_address: TokenBuckets = field(default_factory=lambda: _buckets(REGISTER_PER_ADDRESS))

    def login(self, address: str, account: str) -> None:
        """Take a login attempt.  :raises HttpProblem: 429."""
        wait = self.login_address.take(address)
        if wait == 0.0:
            wait = self.login_account.take(account)
        if wait > 0.0:
            raise too_many(wait, "login attempts")

    def register(self, address: str) -> None:
        """Take a registration.  :raises HttpProblem: 429."""
        wait = self.register_address.take(address)
        if wait > 0.0:
            raise too_many(wait, "registrations from this address")
