"""Chat across signaling instances: a room's sequence, history and events in Redis.

:meth:`RedisChatLog.append` runs one Lua script that atomically

1. takes the room's next sequence number (``INCR relaycast:chat:{room}:seq``),
2. appends the numbered message to the room's bounded history stream
   (``XADD relaycast:chat:{room}:history MAXLEN <history>``), and
3. publishes it on ``relaycast:chat:{room}:events``,

so every instance subscribed to ``relaycast:chat:*:events`` receives each room's events in
sequence order and delivers them to its own pages and SFU nodes; a message is acknowledged
to its sender only once Redis stored it.  ``delete`` removes the messages from the stream
(``XDEL`` of the entries holding them) and publishes ``{"type": "delete", "ids"}``;
``clear`` deletes the stream and publishes ``{"type": "clear"}``, each in one script too.
The sequence and the history expire :data:`KEEP_S` after a room's last message.

Connection errors surface as :class:`~signaling.chat.ChatUnavailable`; the subscriber
reconnects with backoff (0.2 s → 5 s).  Events published while an instance's subscriber
is reconnecting are in the history but are not pushed to that instance's participants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .chat import ChatLog, ChatUnavailable, Event

logger = logging.getLogger(__name__)

PREFIX = "relaycast:chat:"
EVENTS_PATTERN = f"{PREFIX}*:events"
KEEP_S = 86_400
"""Seconds a room's sequence and history outlive its last message."""

# KEYS: seq, history, events; ARGV: message JSON (no "seq"), history length, keep s.
_APPEND = """
local seq = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local message = cjson.decode(ARGV[1])
message['type'] = 'chat'
message['seq'] = seq
local data = cjson.encode(message)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'm', data)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], data)
return data
"""

# KEYS: history, events; ARGV: the event JSON, history length, then the ids.
_DELETE = """
local gone = {}
for i = 3, #ARGV do gone[ARGV[i]] = true end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[2])
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'm' then
      local ok, message = pcall(cjson.decode, fields[j + 1])
      if ok and type(message) == 'table' and gone[message['id']] then
        redis.call('XDEL', KEYS[1], entry[1])
      end
    end
  end
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: history, events; ARGV: the event JSON.
_CLEAR = """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""


def room_keys(room: str) -> tuple[str, str, str]:
    """``(seq, history, events)`` Redis keys of ``room``."""
    base = f"{PREFIX}{room}"
    return f"{base}:seq", f"{base}:history", f"{base}:events"


class RedisChatLog(ChatLog):
    """One per signaling instance.

    :param url: ``redis://host:port/db``.
    :param history: messages kept per room (the stream's MAXLEN).
    :param timeout: seconds for one Redis command.
    """

    def __init__(self, url: str, *, history: int = 50, timeout: float = 2.0) -> None:
        super().__init__(history)
        self.url = url
        self.timeout = timeout
        self._redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._append = self._redis.register_script(_APPEND)
        self._delete = self._redis.register_script(_DELETE)
        self._clear = self._redis.register_script(_CLEAR)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, wait: float = 5.0) -> None:
        """Start the subscriber; waits up to ``wait`` seconds for the first subscription."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="chat-log")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    async def _run(self, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self.timeout + 1)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ChatUnavailable(f"chat store unavailable: {type(exc).__name__}") from exc

    async def append(self, room: str, message: Event) -> Event:
        body = {k: v for k, v in message.items() if k not in ("type", "seq")}
        data = await self._run(self._append(keys=list(room_keys(room)),
                                            args=[json.dumps(body), self.history_len, KEEP_S]))
        stamped: Event = json.loads(data)
        return stamped

    async def history(self, room: str, count: int) -> list[Event]:
        if count <= 0:
            return []
        entries = await self._run(self._redis.xrevrange(room_keys(room)[1], count=count))
        rows: list[Any] = list(entries or [])
        return [json.loads(fields[b"m"]) for _, fields in reversed(rows)]

    async def delete(self, room: str, ids: list[str]) -> None:
        _, history, events = room_keys(room)
        event = json.dumps({"type": "delete", "ids": ids})
        await self._run(self._delete(keys=[history, events], args=[event, self.history_len, *ids]))

    async def clear(self, room: str) -> None:
        _, history, events = room_keys(room)
        await self._run(self._clear(keys=[history, events], args=[json.dumps({"type": "clear"})]))

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
                        event = json.loads(item["data"])
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        try:
                            self.on_event(room, event)
                        except Exception:
                            logger.exception("chat delivery failed")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                logger.warning("chat log lost Redis (%s); retrying in %.1f s", type(exc).__name__, delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
