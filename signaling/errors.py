"""RFC 9457 problem details for every 4xx/5xx at the HTTP edge."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

logger = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class HttpProblem(web.HTTPException):
    """An HTTP error answered as ``application/problem+json``.

    :param status: HTTP status code.
    :param title: short, stable summary of the problem type.
    :param detail: explanation of this occurrence (never contains secrets).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        self.status_code = status
        body = {"type": "about:blank", "title": title, "status": status}
        if detail:
            body["detail"] = detail
        body.update(extra)
        super().__init__(
            headers=dict(headers or {}),
            text=json.dumps(body),
            content_type=PROBLEM_TYPE,
        )
        self.title = title
        self.detail = detail


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
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        raise HttpProblem(exc.status, exc.reason, exc.text or "", headers=headers) from None
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        raise HttpProblem(500, "Internal Server Error", "the error was logged") from None
