"""A Standard Webhooks endpoint for tests: an aiohttp server on 127.0.0.1 that verifies every
request's signature with its own implementation of the spec (not the sender's code) and
records it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


def verify(secret: str, headers: Any, body: bytes, tolerance_s: float = 300) -> bool:
    """Standard Webhooks verification, written here from the spec (not the sender's code):
    key = base64(secret after ``whsec_``); any ``v1,`` signature in the space-separated
    header equal to base64(HMAC-SHA256(key, "id.timestamp.body")); timestamp within 5 min."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(
        hmac.compare_digest(part[3:], expected)
        for part in headers["webhook-signature"].split(" ")
        if part.startswith("v1,")
    )


@dataclass
class Attempt:
    msg_id: str
    timestamp: int
    body: dict[str, Any]
    verified: bool
    answered: int | None


class Receiver:
    """An endpoint on 127.0.0.1 that verifies and records every request.  ``answer(msg_id,
    attempt_no)`` picks the status (``None``: never answer, until the test ends)."""

    def __init__(
        self, secret: str, answer: Callable[[str, int], int | None] = lambda msg_id, n: 204
    ) -> None:
        self.secret = secret
        self.answer = answer
        self.attempts: list[Attempt] = []
        self.arrived = asyncio.Event()
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify(self.secret, request.headers, body)
        msg_id = request.headers["webhook-id"]
        status = (
            self.answer(msg_id, sum(a.msg_id == msg_id for a in self.attempts) + 1) if ok else 401
        )
        self.attempts.append(
            Attempt(msg_id, int(request.headers["webhook-timestamp"]), json.loads(body), ok, status)
        )
        self.arrived.set()
        if status is None:
            await self._release.wait()
            status = 204
        return web.Response(status=status)

    def of(self, msg_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.msg_id == msg_id]

    async def start(self) -> Receiver:
        await self.server.start_server()
        return self

    async def close(self) -> None:
        self._release.set()
        await self.server.close()
