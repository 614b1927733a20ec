"""Bounded request bodies for the HTTP APIs (WHIP/WHEP, the platform's REST API): at most a
given size — 413 over it, whether or not ``Content-Length`` says so — and JSON that does
not parse is a 400, never a 500 (a deeply nested array exhausts Python's parser:
``RecursionError``).  Errors are RFC 9457 problems (:class:`common.problems.HttpProblem`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .problems import HttpProblem


async def read_body(request: web.Request, max_bytes: int, what: str) -> bytes:
    """The body, at most ``max_bytes``.

    :raises HttpProblem: 413 "``what`` are limited to ``max_bytes`` bytes" over it."""
    too_large = HttpProblem(413, None, f"{what} are limited to {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    body = await request.content.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise too_large
    return body


def parse_json(body: bytes, detail: str = "the body is not JSON") -> Any:
    """``body`` as JSON (UTF-8, RFC 8259).

    :raises HttpProblem: 400 with ``detail``: not UTF-8, not JSON, or nested too deep."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpProblem(400, None, detail) from None
