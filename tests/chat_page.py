"""A page's chat over the pages' Socket.IO connection, for tests: join a room, send with
acks, record every ``chat`` event (message shapes: docs/chat.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import socketio

from tests.polling import wait_for

Message = dict[str, Any]


class ChatPage:
    """One page: its Socket.IO client and every chat event it received, in order.

    :param token: an access JWT (the page is that user); ``None`` = a guest.
    """

    def __init__(self, token: str | None = None) -> None:
        self.http = aiohttp.ClientSession()
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.token = token
        self.events: list[Message] = []
        self.welcome: Message = {}
        self._arrived = asyncio.Event()
        self.sio.on("chat", self._on_chat)

    def _on_chat(self, event: Message) -> None:
        self.events.append(event)
        self._arrived.set()

    async def join(self, url: str, room: str) -> Message:
        """Connect to ``url`` and join ``room``; returns the join ack's ``chat`` member."""
        auth = {"token": self.token} if self.token else None
        await self.sio.connect(url, transports=["websocket"], wait_timeout=10, auth=auth)
        ack = await self.sio.call("join", {"room": room}, timeout=10)
        if "chat" not in ack:
            raise AssertionError(f"join refused: {ack}")
        self.welcome = ack["chat"]
        return self.welcome

    async def send(self, text: str) -> Message:
        """Send one message; the ack (``{"message"}`` or ``{"error", "detail"}``)."""
        ack: Message = await self.sio.call("chat", {"text": text}, timeout=10)
        return ack

    def chats(self) -> list[Message]:
        return [e for e in self.events if e.get("type") == "chat"]

    async def until(self, predicate: Callable[[list[Message]], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate(events)`` is truthy and return it."""
        return await wait_for(lambda: predicate(self.events), timeout,
                              lambda: f"chat events (last: {self.events[-5:]})",
                              interval_s=timeout, wake=self._arrived)

    async def close(self) -> None:
        await self.sio.disconnect()
        await self.http.close()
