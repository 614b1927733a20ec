"""signaling.chat: the chat authority with the in-memory log (units, fake policy and sinks)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from signaling.chat import (
    ChatPolicy,
    ChatRefused,
    ChatService,
    MemoryChatLog,
    Sender,
    Verdict,
    mentions_of,
)
from tests.polling import wait_for


class Recorder:
    """A sink or listener that records what it got, in order."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.delay_s = delay_s

    async def __call__(self, room: str, event: dict[str, Any]) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.events.append((room, event))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]


class ScriptedPolicy(ChatPolicy):
    """Refuses senders named in ``refuse``, holds texts containing "hold"."""

    def __init__(self) -> None:
        self.refuse: dict[str, Verdict] = {}
        self.held: list[dict[str, Any]] = []
        self.accepted_seqs: list[int] = []

    async def check(self, room: str, sender: Sender, text: str) -> Verdict:
        if sender.target in self.refuse:
            return self.refuse[sender.target]
        if "hold" in text:
            return Verdict("hold", "held")
        return Verdict(badges=("moderator",) if sender.user_id == "mod" else ())

    async def hold(self, room: str, message: dict[str, Any], verdict: Verdict) -> None:
        self.held.append(message)

    async def accepted(self, room: str, sender: Sender, message: dict[str, Any]) -> None:
        self.accepted_seqs.append(message["seq"])


@pytest.fixture
async def chat() -> Any:
    service = ChatService(MemoryChatLog(history=5), rate=1000, burst=1000, history=5)
    await service.start()
    yield service
    await service.close()


ALICE = Sender("a1", "alice", user_id="u-alice", via="socketio")
GUEST = Sender("g1", "swift-otter-1", via="datachannel")


async def test_messages_are_numbered_delivered_in_order_and_noted_once(chat: ChatService) -> None:
    sink, listener = Recorder(delay_s=0.001), Recorder()
    chat.sinks.append(sink)
    chat.listeners.append(listener)
    sent = [await chat.submit("demo", ALICE if i % 2 else GUEST, f"m{i}") for i in range(8)]
    assert [m["seq"] for m in sent] == list(range(1, 9))
    await wait_for(lambda: len(sink.events) == 8 and len(listener.events) == 8, 5, "8 events")
    assert [e["id"] for e in sink.of("chat")] == [m["id"] for m in sent]  # one order, slow sink or not
    assert [e["seq"] for _, e in listener.events] == list(range(1, 9))
    first = sent[1]
    assert first["from"] == {"id": "a1", "name": "alice", "role": "viewer", "user": "u-alice"}
    assert sent[0]["from"] == {"id": "g1", "name": "swift-otter-1", "role": "viewer"}  # a guest: no user
    assert isinstance(first["ts"], int) and len(first["id"]) == 32
    # The bounded history: the last 5, oldest first; another room is separate.
    assert [m["text"] for m in await chat.history("demo")] == ["m3", "m4", "m5", "m6", "m7"]
    assert await chat.history("other") == []
    assert (await chat.submit("other", ALICE, "x"))["seq"] == 1


async def test_policy_refusals_holds_and_badges(chat: ChatService) -> None:
    policy = ScriptedPolicy()
    chat.policy = policy
    sink = Recorder()
    chat.sinks.append(sink)
    policy.refuse["u-alice"] = Verdict("refuse", "timed_out", "timed out", retry_after_s=30)
    with pytest.raises(ChatRefused) as refused:
        await chat.submit("demo", ALICE, "hi")
    assert (refused.value.code, refused.value.retry_after_s) == ("timed_out", 30)
    assert refused.value.to_error() == {"error": "timed_out", "detail": "timed out", "retry_after": 30}
    with pytest.raises(ChatRefused) as held:
        await chat.submit("demo", GUEST, "please hold this")
    assert held.value.code == "held"
    assert [m["text"] for m in policy.held] == ["please hold this"] and "seq" not in policy.held[0]
    moderator = Sender("m1", "mod", user_id="mod", via="api")
    ok = await chat.submit("demo", moderator, "hello")
    assert ok["from"]["badges"] == ["moderator"] and ok["seq"] == 1  # refused/held took no number
    assert policy.accepted_seqs == [1]
    # A moderator approves the held message: numbered now, fanned out, policy skipped.
    approved = await chat.publish_held("demo", policy.held[0])
    assert approved["seq"] == 2 and approved["text"] == "please hold this"
    await wait_for(lambda: len(sink.of("chat")) == 2, 5, "both messages delivered")


async def test_text_rules_apply_on_every_path(chat: ChatService) -> None:
    with pytest.raises(ChatRefused) as empty:
        await chat.submit("demo", ALICE, " \u202e\n ")
    assert empty.value.code == "bad_message"
    with pytest.raises(ChatRefused) as not_text:
        await chat.submit("demo", ALICE, 42)  # type: ignore[arg-type]
    assert not_text.value.code == "bad_message"
    # Length counts grapheme clusters: 500 family emoji (5 code points each) fit.
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    assert (await chat.submit("demo", ALICE, family * 500))["text"] == family * 500
    with pytest.raises(ChatRefused) as long:
        await chat.submit("demo", ALICE, "e\u0301" * 501)
    assert long.value.code == "too_long"
    cleaned = await chat.submit("demo", ALICE, "hi\nthere\u202e")
    assert cleaned["text"] == "hi there"


async def test_rate_limit_per_sender_with_retry_after() -> None:
    now = [0.0]
    service = ChatService(MemoryChatLog(), rate=2, burst=3, clock=lambda: now[0])
    await service.start()
    try:
        for i in range(3):
            await service.submit("demo", ALICE, f"m{i}")
        with pytest.raises(ChatRefused) as limited:
            await service.submit("demo", ALICE, "too many")
        assert limited.value.code == "rate_limited" and limited.value.retry_after_s == pytest.approx(0.5)
        await service.submit("demo", GUEST, "another sender has its own bucket")
        now[0] += 0.5
        await service.submit("demo", ALICE, "a token came back")
    finally:
        await service.close()


async def test_delete_and_clear_reach_sinks_history_and_listeners(chat: ChatService) -> None:
    sink, listener = Recorder(), Recorder()
    chat.sinks.append(sink)
    chat.listeners.append(listener)
    ids = [(await chat.submit("demo", ALICE, f"m{i}"))["id"] for i in range(3)]
    await chat.delete("demo", [ids[1]])
    assert [m["text"] for m in await chat.history("demo")] == ["m0", "m2"]
    await chat.clear("demo")
    assert await chat.history("demo") == []
    await wait_for(lambda: len(sink.events) == 5 and len(listener.events) == 5, 5, "5 events")
    assert [e["type"] for _, e in sink.events] == ["chat", "chat", "chat", "delete", "clear"]
    assert sink.events[3][1] == {"type": "delete", "ids": [ids[1]]}
    assert [e["type"] for _, e in listener.events] == ["chat", "chat", "chat", "delete", "clear"]


async def test_one_senders_concurrent_messages_keep_their_order() -> None:
    class SlowFirst(ChatPolicy):
        async def check(self, room: str, sender: Sender, text: str) -> Verdict:
            if text == "m0":
                await asyncio.sleep(0.05)  # the first message's check is slow
            return Verdict()

    service = ChatService(MemoryChatLog(), rate=1000, burst=1000)
    service.policy = SlowFirst()
    await service.start()
    try:
        sent = await asyncio.gather(*(service.submit("demo", ALICE, f"m{i}") for i in range(5)))
        assert [m["text"] for m in sorted(sent, key=lambda m: m["seq"])] == [f"m{i}" for i in range(5)]
    finally:
        await service.close()


async def test_a_failing_sink_or_listener_does_not_stop_the_others(chat: ChatService) -> None:
    async def broken(room: str, event: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    sink, listener = Recorder(), Recorder()
    chat.sinks += [broken, sink]
    chat.listeners += [broken, listener]
    await chat.submit("demo", ALICE, "still delivered")
    await wait_for(lambda: sink.events and listener.events, 5, "delivery past the broken ones")


@pytest.mark.parametrize(("text", "names"), [
    ("hi @Bob and @carol_1", ["bob", "carol_1"]),
    ("@bob @BOB @bob", ["bob"]),
    ("mail me at a@bob.com", []),
    ("@ab is too short, @" + "x" * 26 + " too long", []),
    ("(@dave) @eve!", ["dave", "eve"]),
])
def test_mentions(text: str, names: list[str]) -> None:
    assert mentions_of(text) == names
