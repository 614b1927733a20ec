"""Chat across SFU nodes: one room's data-channel chat shared through Redis.

With a :class:`RedisChatBus` a node does not number and fan out chat messages itself.
:meth:`RedisChatBus.append` runs one Lua script that atomically

1. takes the room's next sequence number (``INCR relaycast:chat:{room}:seq``),
2. appends the stamped message to the room's bounded history stream
   (``XADD relaycast:chat:{room}:history MAXLEN <history>``), and
3. publishes it on ``relaycast:chat:{room}:events``,

so every node subscribed to ``relaycast:chat:*:events`` receives each room's messages
in sequence order and delivers them to its local participants; a message is
acknowledged to its sender only once Redis stored it.  A newcomer's history comes from
the stream (:meth:`RedisChatBus.history`), so it survives node and signaling restarts
for as long as Redis keeps it.  Connection errors surface as :class:`ChatBusError`
(the chat answers the sender ``unavailable``); the subscriber reconnects with
backoff on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["ChatBusError", "RedisChatBus", "room_keys"]

logger = logging.getLogger(__name__)

PREFIX = "relaycast:chat:"
EVENTS_PATTERN = f"{PREFIX}*:events"

# KEYS: seq, history, events; ARGV: message JSON (no "seq"), history length.
_APPEND = """
local seq = redis.call('INCR', KEYS[1])
local message = cjson.decode(ARGV[1])
message['seq'] = seq
local data = cjson.encode(message)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'm', data)
redis.call('PUBLISH', KEYS[3], data)
return data
"""


class ChatBusError(Exception):
    """Redis did not take the message (unreachable, timeout)."""


def room_keys(room: str) -> tuple[str, str, str]:
    """``(seq, history, events)`` Redis keys of ``room``."""
    base = f"{PREFIX}{room}"
    return f"{base}:seq", f"{base}:history", f"{base}:events"


class RedisChatBus:
    """One per SFU node.  ``on_message(room, message)`` is called on the event loop for
    every message of every room, in each room's sequence order.

    - ``url``: ``redis://host:port/db``.
    - ``history``: messages kept per room (the stream's MAXLEN).
    - ``timeout``: seconds for one Redis command.
    """

    def __init__(self, url: str, *, history: int = 50, timeout: float = 2.0) -> None:
        self.url = url
        self.history_len = max(1, history)
        self.timeout = timeout
        self.on_message: Callable[[str, dict[str, Any]], None] = lambda room, message: None
        self._redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._append = self._redis.register_script(_APPEND)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, wait: float = 5.0) -> None:
        """Start the subscriber; waits up to ``wait`` seconds for the first subscription."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="chat-bus")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    async def append(self, room: str, message: dict[str, Any]) -> dict[str, Any]:
        """Number, store and publish ``message`` (without ``seq``); returns it stamped.

        :raises ChatBusError: Redis is unreachable or too slow.
        """
        keys = room_keys(room)
        try:
            data = await asyncio.wait_for(
                self._append(keys=list(keys), args=[json.dumps(message), self.history_len]),
                self.timeout + 1)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ChatBusError(f"chat store unavailable: {type(exc).__name__}") from exc
        stamped: dict[str, Any] = json.loads(data)
        return stamped

    async def history(self, room: str, count: int) -> list[dict[str, Any]]:
        """The last ``count`` messages of ``room``, oldest first.

        :raises ChatBusError: Redis is unreachable or too slow.
        """
        if count <= 0:
            return []
        try:
            entries = await asyncio.wait_for(
                self._redis.xrevrange(room_keys(room)[1], count=count), self.timeout + 1)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ChatBusError(f"chat store unavailable: {type(exc).__name__}") from exc
        rows: list[Any] = list(entries or [])
        return [json.loads(fields[b"m"]) for _, fields in reversed(rows)]

    async def _listen(self) -> None:
        """Subscribe to every room's events; reconnect with backoff (0.2 s → 5 s)."""
        delay = 0.2
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(EVENTS_PATTERN)
                self._subscribed.set()
                delay = 0.2
                async for item in pubsub.listen():
                    if item.get("type") != "pmessage":
                        continue
                    channel = item["channel"].decode()
                    room = channel[len(PREFIX):-len(":events")]
                    try:
                        message = json.loads(item["data"])
                    except ValueError:
                        continue
                    try:
                        self.on_message(room, message)
                    except Exception:
                        logger.exception("chat delivery failed")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                logger.warning("chat bus lost Redis (%s); retrying in %.1f s", type(exc).__name__, delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
