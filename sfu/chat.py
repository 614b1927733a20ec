"""Data-channel chat for one room on this node.

Every participant may open a reliable data channel labelled ``chat``.  The SFU
rate-limits each participant with a token bucket (every message costs a token, valid or
not, so a flood stops here), parses the JSON and cleans the text (:mod:`sfu.chat_text`),
and stamps the sender's identity from the session (clients cannot choose who they are).
A newcomer first gets ``welcome`` and the ``history``.  The JSON schema is in docs/chat.md.

Linked to signaling (:class:`ChatUpstream`, every node of a relaycast service), the room
does not decide or number anything itself: each message goes to signaling's chat
authority (``chat_send``), which applies moderation, numbers it in the room's one sequence
(shared with the pages' Socket.IO chat and the REST API) and sends every event back to
every node hosting the room; :meth:`ChatRoom.deliver` fans them out to the local data
channels.  A refusal comes back in the ack and is sent to the sender only.  Without an
upstream (a bare Worker) the room numbers its own messages in memory.
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


class ChatUpstream(Protocol):
    """Signaling's chat authority as a node reaches it (:mod:`sfu.node`).

    ``submit`` answers ``{"message": ...}`` or ``{"error": code, "detail", "retry_after"?}``;
    ``history`` answers the room's recent messages, oldest first.  Both raise on a broken link.
    """

    async def submit(self, room: str, participant: Identity, text: str) -> dict[str, Any]: ...

    async def history(self, room: str) -> list[dict[str, Any]]: ...


class ChatRoom:
    """Chat state of one room: members, sequence counter, bounded history.

    :param max_chars: longest accepted message text (characters).
    :param rate: per-participant refill rate, messages/s.
    :param burst: per-participant bucket size, messages.
    :param history: messages kept and replayed to newcomers (without an upstream).
    :param upstream: signaling's chat authority; None = this room alone.
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
        upstream: ChatUpstream | None = None,
    ) -> None:
        self.room = room
        self.upstream = upstream
        self._tasks: set[asyncio.Task[None]] = set()
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
        if self.upstream is not None:
            self._spawn(self._replay_from_upstream(channel))
            return
        for batch in self._history_batches(self.history):
            self._send(channel, {"type": "history", "messages": batch})

    async def _replay_from_upstream(self, channel: Channel) -> None:
        assert self.upstream is not None
        try:
            messages = await self.upstream.history(self.room)
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
        a rejection is answered with ``bad_message`` or ``too_long``.  With an upstream the
        text goes to signaling (messages leave in the order they came) and ``None`` is
        returned; the numbered message arrives through :meth:`deliver`.
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
        if self.upstream is not None:
            # Decided, numbered and fanned out by signaling (every node, this one included).
            self._spawn(self._submit_upstream(member, text))
            return None
        message = {
            "type": "chat",
            "id": uuid.uuid4().hex,
            "ts": int(time.time() * 1000),
            "from": member.identity.to_dict(),
            "text": text,
        }
        self.seq += 1
        stamped = {"type": "chat", "seq": self.seq, **{k: v for k, v in message.items() if k != "type"}}
        self.deliver(stamped)
        return stamped

    async def _submit_upstream(self, member: _Member, text: str) -> None:
        assert self.upstream is not None
        try:
            ack = await self.upstream.submit(self.room, member.identity, text)
        except Exception as exc:
            logger.warning("chat message in room %s not sent to signaling: %r", self.room, exc)
            self._error(member, "unavailable", "chat is unavailable right now; not sent")
            return
        error = ack.get("error") if isinstance(ack, dict) else "unavailable"
        if error:
            reply = {"type": "error", "code": str(error), "detail": str(ack.get("detail", ""))}
            if isinstance(ack.get("retry_after"), int | float):
                reply["retry_after"] = ack["retry_after"]
            self._send(member.channel, reply)

    def deliver(self, event: dict[str, Any]) -> None:
        """Apply one chat event of the room and send it to every local member: a numbered
        ``chat`` message (kept in the history), ``delete`` (``ids`` leave the history) or
        ``clear`` (the history empties).  Called for local messages, and with an upstream
        for every event signaling sends this node."""
        kind = event.get("type")
        if kind == "chat":
            seq = event.get("seq")
            if isinstance(seq, int):
                self.seq = max(self.seq, seq)
            self.history.append(event)
        elif kind == "delete":
            gone = set(event.get("ids") or ())
            kept = [m for m in self.history if m.get("id") not in gone]
            self.history.clear()
            self.history.extend(kept)
        elif kind == "clear":
            self.history.clear()
        self.broadcast(event)

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
