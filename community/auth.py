"""The auth middleware: who is calling, from a Bearer access token or the pages' cookie.

* ``Authorization: Bearer <JWT>`` (RFC 6750 §2.1), else cookie ``rc_access``, verified by
  :meth:`community.tokens.TokenService.verify_access` → ``request["principal"]`` =
  :class:`community.api.base.Principal`.
* Under ``/api/``: an invalid or expired token → 401 with ``WWW-Authenticate: Bearer
  error="invalid_token"`` (RFC 6750 §3.1); a suspended account → 403.  The session
  endpoints (:data:`UNAUTHENTICATED`: register, login, refresh, logout) read no access
  token at all, so an expired cookie never stands in the way of logging in again.
* Outside ``/api/`` the middleware never fails a request: a Bearer value that is not a
  valid access token (a stream key on ``/whip/``) is left to the route; a valid one sets
  the principal.
* Cookie-authenticated unsafe requests (POST, PUT, PATCH, DELETE) must carry header
  ``X-CSRF-Token`` equal to cookie ``rc_csrf`` (double-submit cookie; OWASP CSRF
  Prevention Cheat Sheet), else 403 under ``/api/`` (elsewhere: no principal).  Exempt:
  :data:`CSRF_EXEMPT` only — ``POST /api/beacons``, which ``navigator.sendBeacon`` sends
  without a way to add headers (W3C Beacon §3.1); a forged one can do no more than add
  playback telemetry, so the cookie's principal is kept there without the header, and an
  invalid or expired token or a suspended account makes it anonymous instead of refused
  (a page unloading cannot refresh its token first).
* Suspended accounts are held in :class:`SuspendedUsers`, a set of user ids reloaded from
  the database every :data:`SUSPENDED_RELOAD_S` and updated at once by the instance that
  suspends, so checking costs no query per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy import select

from common.bearer import bearer_token
from common.problems import HttpProblem

from .api.base import PRINCIPAL_KEY, Principal
from .app import COMMUNITY
from .database import Database
from .models import User
from .tokens import InvalidToken, tokens_of

logger = logging.getLogger(__name__)

ACCESS_COOKIE = "rc_access"
REFRESH_COOKIE = "rc_refresh"
CSRF_COOKIE = "rc_csrf"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHENTICATED = frozenset(
    {"/api/users/register", "/api/users/login", "/api/users/refresh", "/api/users/logout"}
)
CSRF_EXEMPT = frozenset({("POST", "/api/beacons")})
"""(method, path) of the requests that keep a cookie principal without the CSRF header and
are answered anonymously rather than refused for a bad token."""
SUSPENDED_RELOAD_S = 5.0
ACCESS_CLAIMS_KEY = "access_claims"
"""``request[ACCESS_CLAIMS_KEY]``: the verified :class:`~community.tokens.AccessClaims`."""
REALM = "relaycast"


class SuspendedUsers:
    """The ids of suspended accounts, cached; :meth:`contains` is synchronous."""

    def __init__(self, db: Database, reload_s: float = SUSPENDED_RELOAD_S) -> None:
        self.db = db
        self.reload_s = reload_s
        self._ids: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="suspended-users-reload")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.reload_s)
            try:
                await self.reload()
            except Exception:
                logger.exception("reloading the suspended accounts failed")

    async def reload(self) -> None:
        async with self.db.session() as session:
            ids = (
                await session.execute(select(User.id).where(User.suspended_at.is_not(None)))
            ).scalars()
            self._ids = frozenset(ids)

    def contains(self, user_id: str) -> bool:
        return user_id in self._ids

    def add(self, user_id: str) -> None:
        """Mark suspended now (the suspending instance; others see it at their next reload)."""
        self._ids = self._ids | {user_id}

    def discard(self, user_id: str) -> None:
        self._ids = self._ids - {user_id}


def suspended_of(app: web.Application) -> SuspendedUsers:
    """The :class:`SuspendedUsers` cache (``Community.services["suspended"]``)."""
    return app[COMMUNITY].services["suspended"]  # type: ignore[no-any-return]


def invalid_token(detail: str) -> HttpProblem:
    """401 with RFC 6750 §3.1 ``error="invalid_token"``."""
    safe = detail.replace('"', "'")
    challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{safe}"'
    return HttpProblem(401, None, detail, headers={"WWW-Authenticate": challenge})


def csrf_ok(request: web.Request) -> bool:
    """Double submit: header ``X-CSRF-Token`` equals cookie ``rc_csrf`` (constant time)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), header.encode())


def _credentials(request: web.Request) -> tuple[str, str] | None:
    token = bearer_token(request)
    if token is not None:
        return token, "bearer"
    cookie = request.cookies.get(ACCESS_COOKIE)
    if cookie:
        return cookie, "cookie"
    return None


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Set ``request["principal"]`` (see the module docstring for the rules)."""
    path = request.path
    exempt = (request.method, path) in CSRF_EXEMPT
    api = path.startswith("/api/") and not exempt  # an exempt request is never refused here
    if api and path in UNAUTHENTICATED:
        return await handler(request)
    found = _credentials(request)
    community = request.config_dict.get(COMMUNITY)
    if found is None or community is None or "tokens" not in community.services:
        return await handler(request)
    token, via = found
    try:
        claims = tokens_of(request.config_dict).verify_access(token)
    except InvalidToken as exc:
        if api:
            raise invalid_token(exc.detail) from None
        return await handler(request)
    if suspended_of(request.config_dict).contains(claims.user_id):
        if api:
            raise HttpProblem(403, None, "this account is suspended")
        return await handler(request)
    if via == "cookie" and request.method in UNSAFE_METHODS and not csrf_ok(request) and not exempt:
        if api:
            raise HttpProblem(
                403,
                None,
                f"cookie-authenticated requests that change state need "
                f"header {CSRF_HEADER} equal to cookie {CSRF_COOKIE}",
            )
        return await handler(request)
    request[PRINCIPAL_KEY] = Principal(claims.user_id, claims.username, claims.role, via)
    request[ACCESS_CLAIMS_KEY] = claims
    return await handler(request)
