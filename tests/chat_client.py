"""aiortc chat participants for tests: the "chat" data channel of a WHIP/WHEP session and
every message it received, parsed (message shapes: docs/chat.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiortc.rtcdatachannel import RTCDataChannel

from loadtest import whip_client
from tests.polling import wait_for

Message = dict[str, Any]


class ChatClient:
    """One participant's chat channel: every received message, parsed, in order."""

    def __init__(self, session: whip_client.WhipSession, channel: RTCDataChannel) -> None:
        self.session = session
        self.channel = channel
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()
        channel.on("message", self._on_message)

    def _on_message(self, raw: str | bytes) -> None:
        self.messages.append(json.loads(raw))
        self._arrived.set()

    def send(self, payload: Message | str) -> None:
        self.channel.send(payload if isinstance(payload, str) else json.dumps(payload))

    def chat(self, text: str) -> None:
        self.send({"type": "chat", "text": text})

    def of_type(self, kind: str) -> list[Message]:
        return [m for m in self.messages if m["type"] == kind]

    async def until(self, predicate: Callable[[list[Message]], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate(messages)`` is truthy (re-checked on every arrival) and
        return it.

        :raises tests.polling.WaitTimeout: not within ``timeout`` seconds.
        """
        return await wait_for(lambda: predicate(self.messages), timeout,
                              lambda: f"chat messages (last: {self.messages[-5:]})",
                              interval_s=timeout, wake=self._arrived)

    async def first(self, kind: str, timeout: float = 10.0, **fields: Any) -> Message:
        def match(messages: list[Message]) -> Message | None:
            for m in messages:
                if m["type"] == kind and all(m.get(k) == v for k, v in fields.items()):
                    return m
            return None

        return await self.until(match, timeout)

    async def chats(self, count: int, timeout: float = 10.0) -> list[Message]:
        return await self.until(lambda ms: len(self.of_type("chat")) >= count and self.of_type("chat"), timeout)
