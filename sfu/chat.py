"""Data-channel chat for one room.

Every participant may open a reliable data channel labelled ``chat``.  The SFU
rate-limits each participant with a token bucket (every message costs a token,
valid or not), removes bidi and control characters (:mod:`sfu.chat_text`), caps the
length, stamps each message with the sender's identity from the session (clients
cannot choose who they are), assigns a per-room sequence number and server time,
and fans it out to everybody in the room.  A newcomer first gets ``welcome`` and the last
``history`` messages.  The JSON schema is in docs/chat.md.

With a chat bus (:class:`sfu.chat_bus.RedisChatBus`, Redis mode) the room does not
number messages itself: accepted messages go to the bus, which stamps the room-wide
sequence number in Redis and publishes them to every node; :meth:`ChatRoom.deliver`
fans them out locally, and newcomers get the history from Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from common.ratelimit import TokenBucket

from .chat_text import Rejected, clean_name, parse_chat
from .protocol import Identity

logger = logging.getLogger(__name__)

CHAT_LABEL = "chat"
HISTORY_CHUNK_BYTES = 16 * 1024  # per "history" message (LiveKit caps reliable data at 15 KiB)


def _encode(message: dict[str, Any]) -> str:
    """Compact JSON, UTF-8 text kept as is (a \\uXXXX escape would triple its size)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Channel(Protocol):
    readyState: str

    def send(self, data: str) -> None: ...


class _Limit:
    """One participant's rate limit: its token bucket and when it may next be told
    ``rate_limited`` (monotonic s); it outlives a reopened channel."""

    __slots__ = ("bucket", "quiet_until")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.quiet_until = float("-inf")


class _Member:
    __slots__ = ("identity", "channel", "limit")

    def __init__(self, identity: Identity, channel: Channel, limit: _Limit) -> None:
        self.identity = identity
        self.channel = channel
        self.limit = limit


class ChatBus(Protocol):
    """What a room needs from a shared chat store (see :mod:`sfu.chat_bus`)."""

    async def append(self, room: str, message: dict[str, Any]) -> dict[str, Any]: ...

    async def history(self, room: str, count: int) -> list[dict[str, Any]]: ...


class ChatRoom:
    """Chat state of one room: members, sequence counter, bounded history.

    :param max_chars: longest accepted message text (characters).
    :param rate: per-participant refill rate, messages/s.
    :param burst: per-participant bucket size, messages.
    :param history: messages kept and replayed to newcomers.
    :param bus: shared store across nodes (Redis mode); None = this room alone.
    """

    def __init__(
        self,
        room: str,
        *,
        max_chars: int = 500,
        rate: float = 3.0,
        burst: int = 10,
        history: int = 50,
        clock: Callable[[], float] = time.monotonic,
        bus: ChatBus | None = None,
    ) -> None:
        self.room = room
        self.bus = bus
        self._tasks: set[asyncio.Task[None]] = set()
        self._append_lock = asyncio.Lock()
        """Appends go to the bus one at a time: a sender's messages keep their order."""
        self.max_chars = max_chars
        self.rate = rate
        self.burst = burst
        self.seq = 0
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self._members: dict[str, _Member] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._members)

    def join(self, identity: Identity, channel: Channel, state: dict[str, Any]) -> None:
        """Register ``channel`` and greet it: welcome (+ room ``state``), then history.

        A participant that opens a second chat channel keeps its token bucket
        (reopening a channel must not refill it).  The history is replayed oldest
        first in one or more ``history`` messages of at most
        :data:`HISTORY_CHUNK_BYTES` each, so a full replay never exceeds the
        peer's SCTP max-message-size (64 KiB by default, RFC 8841).
        """
        identity = replace(identity, name=clean_name(identity.name))
        existing = self._members.get(identity.id)
        limit = existing.limit if existing else _Limit(TokenBucket(self.rate, self.burst, self._clock))
        self._members[identity.id] = _Member(identity, channel, limit)
        self._send(channel, {"type": "welcome", "participant": identity.to_dict(), "room": self.room, **state})
        if self.bus is not None:
            self._spawn(self._replay_from_bus(channel))
            return
        for batch in self._history_batches(self.history):
            self._send(channel, {"type": "history", "messages": batch})

    async def _replay_from_bus(self, channel: Channel) -> None:
        assert self.bus is not None
        try:
            messages = await self.bus.history(self.room, self.history.maxlen or 0)
        except Exception as exc:
            logger.warning("chat history of room %s unavailable: %s", self.room, exc)
            self._send(channel, {"type": "error", "code": "unavailable",
                                 "detail": "chat history is unavailable"})
            return
        for batch in self._history_batches(messages):
            self._send(channel, {"type": "history", "messages": batch})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _history_batches(history: Any) -> list[list[dict[str, Any]]]:
        batches: list[list[dict[str, Any]]] = [[]]
        size = 0
        for message in history:
            n = len(_encode(message).encode()) + 1
            if batches[-1] and size + n > HISTORY_CHUNK_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(message)
            size += n
        return batches

    def leave(self, participant_id: str, channel: Channel | None = None) -> None:
        """Forget a participant; with ``channel``, only if that is still its channel."""
        member = self._members.get(participant_id)
        if member is not None and (channel is None or member.channel is channel):
            del self._members[participant_id]

    def receive(self, participant_id: str, raw: str | bytes) -> dict[str, Any] | None:
        """Handle one inbound message; returns the stamped message that was fanned out.

        Every message costs the sender one token first, valid or not, so a flood of
        anything is bounded by the bucket (``rate`` messages/s, ``burst``).  Over the
        limit the message is dropped; the sender is told ``rate_limited`` at most once
        per refill (until its bucket holds a token again), not once per message.  Then
        the message is parsed and its text cleaned (:func:`sfu.chat_text.parse_chat`):
        a rejection is answered with ``bad_message`` or ``too_long``.
        Never raises for any ``raw``.
        """
        member = self._members.get(participant_id)
        if member is None:
            return None
        now = self._clock()
        wait_s = member.limit.bucket.wait(now)
        if wait_s > 0:
            if now >= member.limit.quiet_until:
                member.limit.quiet_until = now + wait_s
                self._error(member, "rate_limited", f"at most {self.rate:g} messages/s")
            return None
        text = parse_chat(raw, self.max_chars)
        if isinstance(text, Rejected):
            self._error(member, text.code, text.detail)
            return None
        message = {
            "type": "chat",
            "id": uuid.uuid4().hex,
            "ts": int(time.time() * 1000),
            "from": member.identity.to_dict(),
            "text": text,
        }
        if self.bus is not None:
            # Numbered and fanned out by the bus (every node, this one included).
            self._spawn(self._append_to_bus(member, message))
            return message
        self.seq += 1
        stamped = {"type": "chat", "seq": self.seq, **{k: v for k, v in message.items() if k != "type"}}
        self.deliver(stamped)
        return stamped

    async def _append_to_bus(self, member: _Member, message: dict[str, Any]) -> None:
        assert self.bus is not None
        try:
            async with self._append_lock:
                await self.bus.append(self.room, message)
        except Exception as exc:
            logger.warning("chat message in room %s not stored: %s", self.room, exc)
            self._error(member, "unavailable", "chat is unavailable right now; not sent")

    def deliver(self, message: dict[str, Any]) -> None:
        """Keep a stamped message in the history and send it to every local member
        (called for local messages, and by the bus for every node's messages)."""
        seq = message.get("seq")
        if isinstance(seq, int):
            self.seq = max(self.seq, seq)
        self.history.append(message)
        self.broadcast(message)

    def broadcast(self, message: dict[str, Any]) -> None:
        data = _encode(message)
        for member in list(self._members.values()):
            self._send_raw(member.channel, data)

    def _error(self, member: _Member, code: str, detail: str) -> None:
        self._send(member.channel, {"type": "error", "code": code, "detail": detail})

    def _send(self, channel: Channel, message: dict[str, Any]) -> None:
        self._send_raw(channel, _encode(message))

    @staticmethod
    def _send_raw(channel: Channel, data: str) -> None:
        if channel.readyState != "open":
            return
        try:
            channel.send(data)
        except Exception as exc:  # a closing SCTP association must not hurt the others
            logger.debug("chat send failed: %r", exc)
