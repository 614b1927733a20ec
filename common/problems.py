"""RFC 9457 problem details for every 4xx/5xx at the HTTP edge."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

from aiohttp import web

logger = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"

PROBLEM_BASE = "https://relaycast.dev/problems/"
"""Base of relaycast's RFC 9457 problem ``type`` URIs (§3.1.1): ``PROBLEM_BASE + slug``.  They
identify a kind of error (docs list them); clients compare them, they do not fetch them."""


def problem_type(slug: str) -> str:
    """The ``type`` URI of problem ``slug`` (e.g. ``"invalid-sdp"``)."""
    return PROBLEM_BASE + slug

# RFC 9110 §15 names where Python's HTTPStatus still has the RFC 7231 ones.
_RFC9110_PHRASES = {
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def reason(status: int) -> str:
    """The RFC 9110 reason phrase of ``status`` ("Unprocessable Content" for 422)."""
    if status in _RFC9110_PHRASES:
        return _RFC9110_PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class HttpProblem(web.HTTPException):
    """An HTTP error answered as ``application/problem+json`` (RFC 9457).

    The problem ``type`` is ``about:blank``, so ``title`` should be the status's
    reason phrase (RFC 9457 §4.2.1; the default) and ``detail`` says what went
    wrong this time.

    :param status: HTTP status code.
    :param title: summary; ``None`` for the RFC 9110 reason phrase of ``status``.
    :param detail: explanation of this occurrence (never contains secrets).
    :param headers: extra response headers (``Retry-After``, ``WWW-Authenticate``...).
    :param extra: extension members added to the JSON object.
    """

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str = "",
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        self.status_code = status
        title = title or reason(status)
        body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
        if detail:
            body["detail"] = detail
        body.update(extra)
        super().__init__(
            headers=dict(headers or {}),
            reason=reason(status),
            text=json.dumps(body),
            content_type=PROBLEM_TYPE,
        )
        self.title = title
        self.detail = detail


def _detail(request: web.Request, exc: web.HTTPException) -> str:
    """A useful sentence for the errors aiohttp raises itself (no route, wrong method)."""
    if exc.status == 404:
        return f"no resource at {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"{request.method} is not allowed on {request.path}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    text = exc.text or ""
    return "" if text.startswith(f"{exc.status}:") else text


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn aiohttp's plain-text errors (404, 405, 413…) and crashes into problem+json."""
    try:
        return await handler(request)
    except HttpProblem:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() not in ("content-type", "content-length")
        }
        raise HttpProblem(exc.status, None, _detail(request, exc), headers=headers) from None
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client left
        logger.info("client went away during %s %s", request.method, request.path)
        raise
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        raise HttpProblem(500, None, "the error was logged") from None
