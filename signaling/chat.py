"""Chat: one conversation per room for every tier, with one authority.

A room's chat reaches people three ways — the WebRTC participants' ``chat`` data channels
(through their SFU node), the pages' Socket.IO connection (LL-HLS viewers and anyone
without a data channel) and the REST API — and all three feed :meth:`ChatService.submit`
in a signaling process:

1. the sender's token bucket (``rate`` messages/s, ``burst``), per user (a guest: per
   participant);
2. the text rules (:func:`sfu.chat_text.check_text`: bidi and control characters removed,
   not empty, at most ``max_chars`` grapheme clusters);
3. the room's :class:`ChatPolicy` (moderation: bans, timeouts, slow mode, blocked terms ...;
   the platform plugs its own in, the default allows everything) — a refusal raises
   :class:`ChatRefused`, a held message goes to the policy's review queue instead of the room;
4. numbering in the room's one sequence by the :class:`ChatLog` (:class:`MemoryChatLog` in
   one process; :class:`signaling.chat_redis.RedisChatLog` across signaling instances),
   which also keeps the recent history and publishes every event to every instance;
5. every instance hands each event to its *sinks* in order: the local pages (Socket.IO
   event ``chat``) and the SFU nodes connected to it, which deliver it to their data channels.

So every participant sees the same messages in the same order whatever their tier, and a
moderation rule holds on every path.  Moderation events (``delete``, ``clear``) travel the
same way.  :attr:`ChatService.listeners` (persistence, analytics) are called once per event
in the whole cluster, on the instance that accepted it.  The wire objects are in docs/chat.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common.ratelimit import TokenBuckets
from sfu.chat_text import Rejected, check_text, clean_name

logger = logging.getLogger(__name__)

VIAS = ("datachannel", "socketio", "api")
MENTION_RE = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9_]{2,24})\b")
"""``@name`` of a username (``^[a-z0-9][a-z0-9_]{2,24}$``, case-insensitive)."""
OUTBOX_LIMIT = 10_000
"""Events waiting for local delivery before new ones are dropped (counted, logged)."""

Event = dict[str, Any]
Sink = Callable[[str, Event], Awaitable[None]]
Listener = Callable[[str, Event], Awaitable[None]]


@dataclass(frozen=True)
class Sender:
    """Who sends a chat message, decided by signaling or the platform from credentials —
    never by the client's message.

    :ivar id: participant id: a WHIP/WHEP session's identity id, a Socket.IO connection's, or
        ``api-<user id>`` for the REST API (1–64 characters).
    :ivar name: display name (the username when logged in; generated for a guest).
    :ivar role: ``publisher`` or ``viewer``.
    :ivar user_id: the platform user, ``None`` for a guest.
    :ivar via: ``datachannel``, ``socketio`` or ``api``.
    """

    id: str
    name: str
    role: str = "viewer"
    user_id: str | None = None
    via: str = "datachannel"

    @property
    def target(self) -> str:
        """What bans and slow mode key on: the user id, or ``guest:<participant id>``."""
        return self.user_id or f"guest:{self.id}"

    def to_dict(self, badges: tuple[str, ...] = ()) -> dict[str, Any]:
        """The message's ``from`` object: ``{id, name, role, user?, badges?}``."""
        out: dict[str, Any] = {"id": self.id, "name": clean_name(self.name), "role": self.role}
        if self.user_id:
            out["user"] = self.user_id
        if badges:
            out["badges"] = list(badges)
        return out


@dataclass(frozen=True)
class Verdict:
    """A :class:`ChatPolicy`'s answer about one message.

    :ivar action: ``allow``, ``refuse`` or ``hold`` (kept for a moderator's review).
    :ivar code: refuse/hold: the error code (docs/chat.md, "error").
    :ivar retry_after_s: when the sender may try again (slow mode, timeouts), seconds.
    :ivar badges: allow: shown with the sender's name (``broadcaster``, ``moderator``, ``admin``).
    """

    action: str = "allow"
    code: str = ""
    detail: str = ""
    retry_after_s: float | None = None
    badges: tuple[str, ...] = ()


ALLOW = Verdict()


class ChatRefused(Exception):
    """A message not accepted: ``code`` (docs/chat.md, "error"), ``detail`` for people,
    ``retry_after_s`` when waiting helps."""

    def __init__(self, code: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.retry_after_s = code, detail, retry_after_s

    def to_error(self) -> dict[str, Any]:
        """``{"error": code, "detail": ..., "retry_after"?: s}`` (a Socket.IO/node ack)."""
        out: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.retry_after_s is not None:
            out["retry_after"] = round(self.retry_after_s, 3)
        return out


class ChatPolicy:
    """A room's chat rules.  This base allows everything (a bare signaling app); the
    platform's ``community.chat_moderation.ChannelChatPolicy`` enforces moderation."""

    async def check(self, room: str, sender: Sender, text: str) -> Verdict:
        """Decide about one cleaned message before it is numbered."""
        return ALLOW

    async def hold(self, room: str, message: Event, verdict: Verdict) -> None:
        """Keep a held message (not fanned out) for review."""

    async def accepted(self, room: str, sender: Sender, message: Event) -> None:
        """Called after ``message`` was numbered (e.g. slow-mode bookkeeping)."""

    async def describe(self, room: str, sender: Sender) -> dict[str, Any]:
        """``{"badges": [...], "moderator": bool}`` of ``sender`` in ``room``."""
        return {"badges": [], "moderator": False}


class ChatUnavailable(Exception):
    """The chat log could not store or read (Redis unreachable or too slow)."""


class ChatLog(ABC):
    """Numbering, recent history and the event stream of every room.

    ``on_event(room, event)`` is called on the event loop for every event of every room
    (``chat``, ``delete``, ``clear``), in the room's order, on every signaling instance.
    """

    def __init__(self, history: int) -> None:
        self.history_len = max(1, history)
        self.on_event: Callable[[str, Event], None] = lambda room, event: None

    async def start(self) -> None:  # noqa: B027 - a no-op unless events come from elsewhere
        """Start receiving events (a no-op in memory)."""

    async def close(self) -> None:  # noqa: B027
        """Stop receiving events and release connections."""

    @abstractmethod
    async def append(self, room: str, message: Event) -> Event:
        """Number ``message`` (no ``seq`` yet), keep it, publish it; returns it numbered.

        :raises ChatUnavailable: it was not stored."""

    @abstractmethod
    async def history(self, room: str, count: int) -> list[Event]:
        """The last ``count`` kept messages, oldest first, deleted ones left out.

        :raises ChatUnavailable: the history cannot be read."""

    @abstractmethod
    async def delete(self, room: str, ids: list[str]) -> None:
        """Drop messages ``ids`` from the history and publish ``{"type": "delete", "ids"}``.

        :raises ChatUnavailable: the deletion was not stored."""

    @abstractmethod
    async def clear(self, room: str) -> None:
        """Empty the history and publish ``{"type": "clear"}``.

        :raises ChatUnavailable: the clearing was not stored."""


class MemoryChatLog(ChatLog):
    """One signaling process: per room a counter and a bounded deque.  A room's ``seq``
    keeps counting for as long as the process runs."""

    def __init__(self, history: int = 50) -> None:
        super().__init__(history)
        self._seq: dict[str, int] = {}
        self._kept: dict[str, deque[Event]] = {}

    async def append(self, room: str, message: Event) -> Event:
        seq = self._seq.get(room, 0) + 1
        self._seq[room] = seq
        stamped = {"type": "chat", "seq": seq, **{k: v for k, v in message.items() if k != "type"}}
        self._kept.setdefault(room, deque(maxlen=self.history_len)).append(stamped)
        self.on_event(room, stamped)
        return stamped

    async def history(self, room: str, count: int) -> list[Event]:
        kept = self._kept.get(room)
        return list(kept)[-count:] if kept and count > 0 else []

    async def delete(self, room: str, ids: list[str]) -> None:
        kept = self._kept.get(room)
        if kept:
            gone = set(ids)
            self._kept[room] = deque((m for m in kept if m.get("id") not in gone), maxlen=self.history_len)
        self.on_event(room, {"type": "delete", "ids": list(ids)})

    async def clear(self, room: str) -> None:
        self._kept.pop(room, None)
        self.on_event(room, {"type": "clear"})


def mentions_of(text: str) -> list[str]:
    """Lower-case usernames written as ``@name`` in ``text``, first mention first, once each."""
    seen: dict[str, None] = {}
    for match in MENTION_RE.finditer(text):
        seen.setdefault(match.group(1).lower(), None)
    return list(seen)


class ChatService:
    """The chat authority of one signaling process (module docstring).

    :param log: numbering, history and events (memory or Redis).
    :param max_chars: longest text, grapheme clusters.
    :param rate: per-participant token-bucket refill, messages/s.
    :param burst: per-participant bucket size, messages.
    :param history: messages a newcomer gets.
    """

    def __init__(self, log: ChatLog, *, max_chars: int = 500, rate: float = 3.0, burst: int = 10,
                 history: int = 50, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.max_chars = max_chars
        self.rate = rate
        self.history_len = history
        self.policy: ChatPolicy = ChatPolicy()
        self.listeners: list[Listener] = []
        """``listener(room, event)``: once per event in the cluster (module docstring)."""
        self.sinks: list[Sink] = []
        """Local delivery: ``sink(room, event)`` for every event of every room, in order."""
        self.dropped = 0
        """Events not delivered locally because the outbox was full."""
        self.accepted: dict[str, int] = {}
        """Messages numbered here, by path (``via``)."""
        self.refused: dict[str, int] = {}
        """Messages refused here, by code (``held`` included)."""
        self._buckets = TokenBuckets(rate, burst, clock=clock)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._outbox: asyncio.Queue[tuple[str, Event]] | None = None
        self._notes: asyncio.Queue[tuple[str, Event]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        log.on_event = self._on_event

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start delivering (call on the event loop before the first event)."""
        if self._tasks:
            return
        self._outbox = asyncio.Queue()
        self._notes = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._drain(self._outbox, self._deliver), name="chat-deliver"),
                       asyncio.create_task(self._drain(self._notes, self._notify), name="chat-listeners")]
        await self.log.start()

    async def close(self) -> None:
        """Hand what is queued to the listeners (bounded, 5 s), stop, close the log."""
        if self._notes is not None and self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notes.join(), 5.0)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.log.close()

    # ------------------------------------------------------------- sending
    async def submit(self, room: str, sender: Sender, text: Any) -> Event:
        """Accept one message from ``sender`` into ``room``: the numbered message.

        :raises ChatRefused: ``rate_limited`` (with ``retry_after_s``), ``bad_message``,
            ``too_long``, a policy's code (``banned``, ``slow_mode`` …), ``held`` (kept for
            review, not fanned out) or ``unavailable`` (the log did not store it).
        """
        try:
            message = await self._submit(room, sender, text)
        except ChatRefused as refused:
            self.refused[refused.code] = self.refused.get(refused.code, 0) + 1
            raise
        self.accepted[sender.via] = self.accepted.get(sender.via, 0) + 1
        return message

    async def _submit(self, room: str, sender: Sender, text: Any) -> Event:
        wait = self._buckets.take(f"{room}\0{sender.target}")  # a user's tabs and paths share one
        if wait > 0:
            raise ChatRefused("rate_limited", f"at most {self.rate:g} messages/s", wait)
        if not isinstance(text, str):
            raise ChatRefused("bad_message", 'expected {"text": "..."}')
        cleaned = check_text(text, self.max_chars)
        if isinstance(cleaned, Rejected):
            raise ChatRefused(cleaned.code, cleaned.detail)
        key = (room, sender.id)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        try:
            async with lock:  # one sender's messages keep the order they were sent in
                return await self._accept(room, sender, cleaned)
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def _accept(self, room: str, sender: Sender, text: str) -> Event:
        verdict = await self.policy.check(room, sender, text)
        message = self._message(sender, text, verdict.badges)
        if verdict.action == "hold":
            await self.policy.hold(room, message, verdict)
            raise ChatRefused("held", verdict.detail or "your message is held for a moderator's review")
        if verdict.action != "allow":
            raise ChatRefused(verdict.code or "refused", verdict.detail or "not allowed",
                              verdict.retry_after_s)
        stamped = await self._append(room, message)
        await self.policy.accepted(room, sender, stamped)
        return stamped

    async def publish_held(self, room: str, message: Event) -> Event:
        """Number and fan out a message a moderator approved (no policy check).

        :raises ChatRefused: ``unavailable``."""
        fresh = {k: v for k, v in message.items() if k not in ("seq", "type")}
        fresh["ts"] = int(time.time() * 1000)
        return await self._append(room, fresh)

    async def _append(self, room: str, message: Event) -> Event:
        try:
            stamped = await self.log.append(room, message)
        except ChatUnavailable as exc:
            logger.warning("chat message in room %s not stored: %s", room, exc)
            raise ChatRefused("unavailable", "chat is unavailable right now; not sent") from None
        self._note(room, stamped)
        return stamped

    @staticmethod
    def _message(sender: Sender, text: str, badges: tuple[str, ...]) -> Event:
        message: Event = {"type": "chat", "id": uuid.uuid4().hex, "ts": int(time.time() * 1000),
                          "from": sender.to_dict(badges), "text": text}
        mentioned = mentions_of(text)
        if mentioned:
            message["mentions"] = mentioned
        return message

    # ---------------------------------------------------------- moderation
    async def delete(self, room: str, ids: list[str]) -> None:
        """Remove messages ``ids`` for everybody (history and pages).

        :raises ChatRefused: ``unavailable``."""
        try:
            await self.log.delete(room, list(ids))
        except ChatUnavailable as exc:
            raise ChatRefused("unavailable", f"chat is unavailable right now: {exc}") from None
        self._note(room, {"type": "delete", "ids": list(ids)})

    async def clear(self, room: str) -> None:
        """Empty ``room``'s chat for everybody.  :raises ChatRefused: ``unavailable``."""
        try:
            await self.log.clear(room)
        except ChatUnavailable as exc:
            raise ChatRefused("unavailable", f"chat is unavailable right now: {exc}") from None
        self._note(room, {"type": "clear"})

    async def history(self, room: str, count: int | None = None) -> list[Event]:
        """The room's recent messages, oldest first (``count``: default ``history``).

        :raises ChatUnavailable: the log cannot be read."""
        return await self.log.history(room, self.history_len if count is None else count)

    # ------------------------------------------------------------ delivery
    def _on_event(self, room: str, event: Event) -> None:
        if self._outbox is None:
            return
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("chat delivery is behind: %d events dropped", self.dropped)
            return
        self._outbox.put_nowait((room, event))

    def _note(self, room: str, event: Event) -> None:
        if self._notes is not None and self.listeners:
            self._notes.put_nowait((room, event))

    async def _deliver(self, room: str, event: Event) -> None:
        for sink in list(self.sinks):
            try:
                await sink(room, event)
            except Exception:
                logger.exception("chat sink %r failed", sink)

    async def _notify(self, room: str, event: Event) -> None:
        for listener in list(self.listeners):
            try:
                await listener(room, event)
            except Exception:
                logger.exception("chat listener %r failed", listener)

    @staticmethod
    async def _drain(queue: asyncio.Queue[tuple[str, Event]],
                     handle: Callable[[str, Event], Awaitable[None]]) -> None:
        while True:
            room, event = await queue.get()
            try:
                await handle(room, event)
            finally:
                queue.task_done()
