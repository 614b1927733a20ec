"""Data-channel chat: aiortc participants through the real service, plus ChatRoom units.

Message shapes are documented in docs/chat.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdatachannel import RTCDataChannel

from loadtest import whip_client
from relaycast.service import Service
from sfu.chat import ChatRoom, Identity, TokenBucket
from signaling.config import SignalingConfig
from tests.chat_client import ChatClient, Message
from tests.polling import wait_for
from tests.sfu.sfu_helpers import publish_pattern, stream_key

# --------------------------------------------------------------------------- helpers


async def join(
    svc: Service, channels: dict[RTCPeerConnection, RTCDataChannel], *, publisher: bool = False
) -> ChatClient:
    if publisher:
        session = await publish_pattern(svc, audio=False, chat=True)
    else:
        session = await whip_client.view(f"{svc.url}/whep/demo", chat=True)
        await whip_client.wait_connected(session.pc)
    client = ChatClient(session, channels[session.pc])
    await client.first("history")  # welcome comes first, then the replay
    return client


# ----------------------------------------------------------------------- end to end


async def test_chat_between_publisher_and_two_viewers(service: Service, chat_channels: Any) -> None:
    pub = await join(service, chat_channels, publisher=True)
    v1 = v2 = None
    try:
        welcome = pub.messages[0]
        assert welcome["type"] == "welcome"
        assert welcome["room"] == "demo" and welcome["live"] is True and welcome["viewers"] == 0
        me = welcome["participant"]
        assert me["role"] == "publisher" and me["name"] == "demo"
        assert re.fullmatch(r"[0-9a-f]{12}", me["id"])
        assert pub.messages[1] == {"type": "history", "messages": []}

        v1 = await join(service, chat_channels)
        w1 = v1.messages[0]
        assert w1["participant"]["role"] == "viewer"
        assert re.fullmatch(r"[a-z]+-[a-z]+-\d{1,2}", w1["participant"]["name"])
        assert w1["viewers"] == 1 and w1["live"] is True
        assert v1.messages[1]["type"] == "history"
        await pub.first("presence", viewers=1)

        v2 = await join(service, chat_channels)
        w2 = v2.messages[0]
        assert w2["viewers"] == 2
        assert len({me["id"], w1["participant"]["id"], w2["participant"]["id"]}) == 3
        for client in (pub, v1):
            assert await client.first("presence", viewers=2) == {"type": "presence", "live": True, "viewers": 2}

        # Messages from everybody: one per-room sequence, server-stamped sender.
        pub.chat("  hello from the stage  ")
        await pub.chats(1)
        v1.send({"type": "chat", "text": "I am the publisher", "from": me, "seq": 999, "id": "x"})
        await v1.chats(2)
        v2.chat("hi all")
        seen = [await c.chats(3) for c in (pub, v1, v2)]
        assert seen[0] == seen[1] == seen[2], "everybody sees the same messages in the same order"
        msgs = seen[0]
        first_seq = msgs[0]["seq"]
        assert [m["seq"] for m in msgs] == [first_seq, first_seq + 1, first_seq + 2]
        assert [m["text"] for m in msgs] == ["hello from the stage", "I am the publisher", "hi all"]
        shown = [{k: v for k, v in m["from"].items() if k != "badges"} for m in msgs]
        assert shown == [me, w1["participant"], w2["participant"]], "from is stamped"
        assert msgs[0]["from"]["badges"] == ["broadcaster"]  # the channel's owner publishes
        assert "badges" not in msgs[2]["from"]
        for m in msgs:
            assert set(m) == {"type", "seq", "id", "ts", "from", "text"}
            assert re.fullmatch(r"[0-9a-f]{32}", m["id"]) and m["id"] != "x"
            assert abs(m["ts"] - time.time() * 1000) < 60_000

        # Too long: an error to the sender only; exactly max_chars is fine.
        v1.chat("x" * 501)
        err = await v1.first("error")
        assert err == {"type": "error", "code": "too_long", "detail": "at most 500 characters"}
        v1.chat("y" * 500)
        assert (await v2.chats(4))[-1]["text"] == "y" * 500

        # Not JSON / not a chat object / empty text: bad_message.
        for bad in ("not json {", "[1, 2]", '{"type": "chat"}', '{"type": "chat", "text": "   "}',
                    '{"type": "shout", "text": "hey"}'):
            v2.send(bad)
        await v2.until(lambda ms: len([m for m in ms if m["type"] == "error"]) >= 5)
        assert [m["code"] for m in v2.of_type("error")] == ["bad_message"] * 5

        # Rejected messages reach nobody else; the errors stay with the sender.
        assert len(await pub.chats(4)) == 4
        assert [m["text"] for m in await v1.chats(4)] == [m["text"] for m in msgs] + ["y" * 500]
        assert pub.of_type("error") == []
        assert [e["code"] for e in v1.of_type("error")] == ["too_long"]

        # A viewer leaves: the others see the new count.
        assert await v2.session.close() == 200
        v2 = None
        for client in (pub, v1):
            assert await client.first("presence", viewers=1) == {"type": "presence", "live": True, "viewers": 1}
    finally:
        for client in (v2, v1, pub):
            if client is not None:
                await client.session.close()


@pytest.fixture
async def roomy_service() -> AsyncIterator[Service]:
    """A service whose chat limit does not get in the way of sending 55 messages."""
    config = SignalingConfig.from_env(
        {"RELAYCAST_CHAT_RATE": "1000", "RELAYCAST_CHAT_BURST": "1000"},
        host="127.0.0.1", port=0, demo_stream_key="sk_chat_" + "y" * 24,
    )
    async with Service(config) as svc:
        yield svc


async def test_newcomer_gets_last_50_messages(roomy_service: Service, chat_channels: Any) -> None:
    assert stream_key(roomy_service)
    pub = await join(roomy_service, chat_channels, publisher=True)
    viewer = None
    try:
        for i in range(55):
            pub.chat(f"m{i}")
        sent = await pub.chats(55)
        assert [m["seq"] for m in sent] == list(range(1, 56))
        viewer = await join(roomy_service, chat_channels)
        assert [m["type"] for m in viewer.messages[:2]] == ["welcome", "history"]
        history = viewer.messages[1]["messages"]
        assert len(history) == 50
        assert history == sent[5:], "the last 50, oldest first, exactly as sent"
        # Live messages continue the sequence after the replay.
        pub.chat("after")
        live = await viewer.chats(1)
        assert live[0]["seq"] == 56 and live[0]["text"] == "after"
    finally:
        if viewer is not None:
            await viewer.session.close()
        await pub.session.close()


@pytest.fixture
async def strict_service() -> AsyncIterator[Service]:
    """A service whose chat bucket holds 3 tokens and refills one every 5 s."""
    config = SignalingConfig.from_env(
        {"RELAYCAST_CHAT_RATE": "0.2", "RELAYCAST_CHAT_BURST": "3"},
        host="127.0.0.1", port=0, demo_stream_key="sk_chat_" + "z" * 24,
    )
    async with Service(config) as svc:
        yield svc


async def test_a_flood_costs_tokens_and_gets_one_rate_limit_reply(
    strict_service: Service, chat_channels: Any
) -> None:
    """300 invalid and valid messages at once: 3 answered (the burst), one rate_limited
    for the rest, nothing fanned out; once a token is back, the next message goes through
    (which also shows that every earlier message was handled: the channel is ordered)."""
    pub = await join(strict_service, chat_channels, publisher=True)
    viewer = None
    try:
        viewer = await join(strict_service, chat_channels)
        joined = len(viewer.messages)
        invalid = ["not json {", json.dumps({"type": "chat", "text": "\u202e\u2066 \x00"}), "[1]"]
        for i in range(100):
            for raw in invalid:
                viewer.send(raw)
            viewer.chat(f"flood {i}")
        limited = await viewer.first("error", code="rate_limited")
        assert limited == {"type": "error", "code": "rate_limited", "detail": "at most 0.2 messages/s"}
        probes = 0

        def probe_accepted() -> bool:
            nonlocal probes
            if any(m["text"].startswith("probe") for m in viewer.of_type("chat")):
                return True
            probes += 1
            viewer.chat(f"probe {probes}")
            return False

        await wait_for(probe_accepted, 30, "a token to come back (one per 5 s)", interval_s=0.5)
        replies = viewer.messages[joined:]
        assert [(m["type"], m.get("code")) for m in replies] == [
            ("error", "bad_message"), ("error", "bad_message"), ("error", "bad_message"),
            ("error", "rate_limited"), ("chat", None),
        ], replies
        assert replies[-1]["text"].startswith("probe ")
        assert [m["text"] for m in await pub.chats(1)] == [replies[-1]["text"]]
        assert pub.of_type("error") == []
    finally:
        if viewer is not None:
            await viewer.session.close()
        await pub.session.close()


# ---------------------------------------------------------------------------- units


class FakeChannel:
    def __init__(self, state: str = "open", fail: bool = False) -> None:
        self.readyState = state
        self.fail = fail
        self.sent: list[Message] = []

    def send(self, data: str) -> None:
        if self.fail:
            raise ConnectionError("association closing")
        self.sent.append(json.loads(data))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "burst", "takes", "expected"),
    [
        pytest.param(1.0, 3, [0, 0, 0, 0], [True, True, True, False], id="burst-then-empty"),
        pytest.param(1.0, 3, [0, 0, 0, 1.0, 1.0], [True, True, True, True, False], id="refill-one"),
        pytest.param(1.0, 2, [0, 0, 100, 100, 100], [True, True, True, True, False], id="refill-capped"),
        pytest.param(0.5, 1, [0, 1.0, 2.0, 2.0], [True, False, True, False], id="slow-rate"),
        pytest.param(3.0, 10, [0.0] * 10 + [0.1, 0.34], [True] * 10 + [False, True], id="default-3-per-s"),
    ],
)
def test_token_bucket(rate: float, burst: int, takes: list[float], expected: list[bool]) -> None:
    bucket = TokenBucket(rate, burst, now=lambda: 0.0)
    assert [bucket.take(t) for t in takes] == expected


PUB = Identity("p1", "demo", "publisher")
V1 = Identity("v1", "calm-otter-1", "viewer")


def _room(**kwargs: Any) -> tuple[ChatRoom, FakeClock, FakeChannel, FakeChannel]:
    clock = FakeClock()
    room = ChatRoom("demo", clock=clock, **kwargs)
    a, b = FakeChannel(), FakeChannel()
    room.join(PUB, a, {"live": True, "viewers": 1})
    room.join(V1, b, {"live": True, "viewers": 1})
    return room, clock, a, b


def test_chat_room_welcome_and_history_on_join() -> None:
    room, _, a, _ = _room(history=3)
    assert a.sent == [
        {"type": "welcome", "participant": {"id": "p1", "name": "demo", "role": "publisher"},
         "room": "demo", "live": True, "viewers": 1},
        {"type": "history", "messages": []},
    ]
    for i in range(5):
        room.receive("p1", json.dumps({"type": "chat", "text": f"t{i}"}))
    late = FakeChannel()
    room.join(Identity("v2", "x", "viewer"), late, {"live": True, "viewers": 2})
    assert [m["text"] for m in late.sent[1]["messages"]] == ["t2", "t3", "t4"]
    assert [m["seq"] for m in late.sent[1]["messages"]] == [3, 4, 5]


def test_chat_room_stamps_and_fans_out() -> None:
    room, _, a, b = _room()
    a.sent.clear(), b.sent.clear()
    forged = {"type": "chat", "text": " hi ", "from": PUB.to_dict(), "seq": 77, "ts": 1, "id": "z"}
    stamped = room.receive("v1", json.dumps(forged).encode())
    assert stamped is not None
    assert stamped["from"] == V1.to_dict() and stamped["seq"] == 1 and stamped["text"] == "hi"
    assert stamped["id"] != "z" and stamped["ts"] > 1
    assert a.sent == b.sent == [stamped], "everybody, the sender included, gets the stamped copy"
    assert room.receive("nobody", '{"type":"chat","text":"x"}') is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_message"),
        (b"\xc3\x28", "bad_message"),  # not UTF-8
        ("[]", "bad_message"),
        ('"text"', "bad_message"),
        ('{"type":"chat"}', "bad_message"),
        ('{"type":"chat","text":5}', "bad_message"),
        ('{"type":"other","text":"x"}', "bad_message"),
        ('{"type":"chat","text":"  \\n "}', "bad_message"),
        (json.dumps({"type": "chat", "text": "x" * 11}), "too_long"),
    ],
)
def test_chat_room_rejects_to_sender_only(raw: str | bytes, code: str) -> None:
    room, _, a, b = _room(max_chars=10)
    a.sent.clear(), b.sent.clear()
    assert room.receive("v1", raw) is None
    assert [m["type"] for m in b.sent] == ["error"] and b.sent[0]["code"] == code
    assert isinstance(b.sent[0]["detail"], str) and b.sent[0]["detail"]
    assert a.sent == [] and room.seq == 0 and not room.history


def test_chat_room_max_chars_counts_stripped_text() -> None:
    room, _, _, b = _room(max_chars=10)
    assert room.receive("v1", json.dumps({"type": "chat", "text": "   " + "x" * 10 + "  "})) is not None


def test_chat_room_rate_limit_with_fake_clock() -> None:
    room, clock, a, b = _room(rate=1.0, burst=2)
    a.sent.clear(), b.sent.clear()
    msg = '{"type":"chat","text":"x"}'
    results = [room.receive("v1", msg) is not None for _ in range(3)]
    assert results == [True, True, False]
    assert b.sent[-1] == {"type": "error", "code": "rate_limited", "detail": "at most 1 messages/s"}
    assert room.receive("p1", msg) is not None, "buckets are per participant"
    clock.now = 0.99
    assert room.receive("v1", msg) is None
    clock.now = 2.0
    assert room.receive("v1", msg) is not None
    assert [m["seq"] for m in a.sent if m["type"] == "chat"] == [1, 2, 3, 4]


def _replies(channel: FakeChannel) -> list[str]:
    return [m.get("code", m["type"]) for m in channel.sent]


def test_invalid_messages_cost_a_token_and_a_flood_gets_one_reply_per_refill() -> None:
    """2000 invalid messages at once: the burst is answered, then one rate_limited;
    after that one reply (at most) per refilled token, never one per message."""
    room, clock, a, b = _room(rate=1.0, burst=3)
    a.sent.clear(), b.sent.clear()
    for i in range(2000):
        assert room.receive("v1", "not json {" if i % 2 else '{"type":"chat","text":"\u202e"}') is None
    assert _replies(b) == ["bad_message"] * 3 + ["rate_limited"]
    assert a.sent == [] and room.seq == 0
    clock.now = 0.5  # half a token: still quiet
    room.receive("v1", "not json {")
    room.receive("v1", '{"type":"chat","text":"valid but over the limit"}')
    assert _replies(b) == ["bad_message"] * 3 + ["rate_limited"]
    clock.now = 1.0  # one token back: spent by the next message, then one more rate_limited
    for _ in range(500):
        room.receive("v1", "[]")
    assert _replies(b) == ["bad_message"] * 3 + ["rate_limited", "bad_message", "rate_limited"]
    clock.now = 2.0
    assert room.receive("v1", '{"type":"chat","text":"ok"}') is not None
    assert [m["text"] for m in a.sent] == ["ok"]


def test_valid_messages_over_the_limit_get_the_same_single_reply() -> None:
    room, clock, a, b = _room(rate=2.0, burst=3)
    a.sent.clear(), b.sent.clear()
    accepted = [room.receive("v1", json.dumps({"type": "chat", "text": f"m{i}"})) for i in range(100)]
    assert [m is not None for m in accepted] == [True] * 3 + [False] * 97
    assert _replies(b) == ["chat"] * 3 + ["rate_limited"]
    assert b.sent[-1] == {"type": "error", "code": "rate_limited", "detail": "at most 2 messages/s"}
    assert room.receive("p1", '{"type":"chat","text":"x"}') is not None, "buckets are per participant"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\u202egnp.exe", "gnp.exe"),  # RIGHT-TO-LEFT OVERRIDE ("Trojan Source")
        ("a\u202ab\u202bc\u202cd\u202de", "abcde"),  # embeddings, PDF, LRO
        ("\u2066x\u2067y\u2068z\u2069", "xyz"),  # isolates
        ("\u200eleft\u200fright\u061c", "leftright"),  # LRM, RLM, ALM
        ("nul\x00byte\x07bell\x1b[31mred\x7f\x9b", "nulbytebell[31mred"),  # Cc removed
        ("two\nlines\r\nand\ttab", "two lines  and tab"),  # whitespace Cc -> space
        ("para\u2028graph\u2029s", "para graph s"),
        ("  \u202e  padded \x00 ", "padded"),
        ("family \U0001f468\u200d\U0001f469\u200d\U0001f467", "family \U0001f468\u200d\U0001f469\u200d\U0001f467"),
        ("\u05e9\u05dc\u05d5\u05dd", "\u05e9\u05dc\u05d5\u05dd"),  # Hebrew letters stay
    ],
)
def test_chat_text_loses_bidi_and_control_characters(text: str, shown: str) -> None:
    room, _, a, b = _room()
    stamped = room.receive("v1", json.dumps({"type": "chat", "text": text}))
    assert stamped is not None and stamped["text"] == shown
    assert a.sent[-1]["text"] == shown and b.sent[-1]["text"] == shown


@pytest.mark.parametrize("text", ["\u202e", "\u2066\u2069\u200e", "\x00\x01\x02", " \n\t\u2028 ", "\udfff\ud800"])
def test_chat_text_empty_after_stripping_is_rejected(text: str) -> None:
    room, _, a, b = _room()
    a.sent.clear(), b.sent.clear()
    assert room.receive("v1", json.dumps({"type": "chat", "text": text})) is None
    assert b.sent == [{"type": "error", "code": "bad_message", "detail": "empty message"}]
    assert a.sent == [] and room.seq == 0


def test_length_limit_counts_the_text_after_stripping() -> None:
    room, _, _, b = _room(max_chars=10)
    assert room.receive("v1", json.dumps({"type": "chat", "text": "\u202e" * 50 + "x" * 10})) is not None
    assert room.receive("v1", json.dumps({"type": "chat", "text": "\u2066" + "x" * 11})) is None
    assert b.sent[-1]["code"] == "too_long"


def test_lone_surrogates_never_reach_the_wire() -> None:
    """JSON may escape a lone surrogate; UTF-8 cannot carry it, so it is dropped."""
    room, _, a, b = _room()
    stamped = room.receive("v1", '{"type":"chat","text":"hi \\ud83d there"}')
    assert stamped is not None and stamped["text"] == "hi  there"
    assert a.sent[-1]["text"] == "hi  there"


def test_deeply_nested_json_is_a_bad_message_not_an_exception() -> None:
    room, _, _, b = _room()
    assert room.receive("v1", "[" * 5000 + "]" * 5000) is None
    assert b.sent[-1]["code"] == "bad_message"


def test_display_names_lose_bidi_and_control_characters() -> None:
    room, _, a, _ = _room()
    spoof = FakeChannel()
    room.join(Identity("v7", "\u202enimda\x00\n", "viewer"), spoof, {})
    blank = FakeChannel()
    room.join(Identity("v8", "\u2066\u2069\x00", "viewer"), blank, {})
    long = FakeChannel()
    room.join(Identity("v9", "\u202e" + "n" * 100, "viewer"), long, {})
    assert spoof.sent[0]["participant"]["name"] == "nimda"
    assert blank.sent[0]["participant"]["name"] == "anonymous"
    assert long.sent[0]["participant"]["name"] == "n" * 64
    stamped = room.receive("v7", '{"type":"chat","text":"hello"}')
    assert stamped is not None and stamped["from"]["name"] == "nimda"
    assert a.sent[-1]["from"] == {"id": "v7", "name": "nimda", "role": "viewer"}


def test_chat_room_leave_and_broken_channels() -> None:
    room, _, a, b = _room()
    broken = FakeChannel(fail=True)
    closing = FakeChannel(state="closing")
    room.join(Identity("v2", "x", "viewer"), broken, {})
    room.join(Identity("v3", "y", "viewer"), closing, {})
    assert len(room) == 4
    a.sent.clear(), b.sent.clear()
    room.broadcast({"type": "presence", "live": True, "viewers": 3})
    assert a.sent == b.sent == [{"type": "presence", "live": True, "viewers": 3}]
    assert closing.sent == [] and broken.sent == []
    room.leave("v1")
    room.leave("v1")  # idempotent
    assert len(room) == 3
    room.receive("p1", '{"type":"chat","text":"bye"}')
    assert b.sent[-1]["type"] == "presence", "a member that left gets nothing more"
    assert room.receive("v1", '{"type":"chat","text":"x"}') is None


def test_chat_room_history_is_split_below_the_sctp_message_size() -> None:
    """50 long non-ASCII messages (~100 KB of JSON) replay in several small messages."""
    room, _, a, _ = _room(max_chars=500, rate=1000, burst=1000, history=50)
    for i in range(55):
        room.receive("p1", json.dumps({"type": "chat", "text": f"{i:02d}" + "😀" * 498}))
    assert "😀" in json.dumps(a.sent[-1], ensure_ascii=False)
    newcomer = _RawChannel()
    room.join(Identity("v9", "z", "viewer"), newcomer, {})
    welcome, *replay = newcomer.raw
    assert json.loads(welcome)["type"] == "welcome"
    assert len(replay) > 1, "one message would be ~100 KB"
    assert all(len(r.encode()) <= 20 * 1024 for r in replay), [len(r.encode()) for r in replay]
    assert "\\ud83d" not in replay[0], "UTF-8 is sent as is, not as \\u escapes"
    messages = [m for r in replay for m in json.loads(r)["messages"]]
    assert [m["seq"] for m in messages] == list(range(6, 56))
    assert all(json.loads(r)["type"] == "history" for r in replay)


def test_chat_room_empty_history_is_one_empty_message() -> None:
    room = ChatRoom("demo")
    channel = _RawChannel()
    room.join(V1, channel, {})
    assert [json.loads(r)["type"] for r in channel.raw] == ["welcome", "history"]
    assert json.loads(channel.raw[1])["messages"] == []


def test_chat_room_reopened_channel_keeps_the_rate_limit() -> None:
    room, _, _, b = _room(rate=1.0, burst=2)
    msg = '{"type":"chat","text":"x"}'
    assert [room.receive("v1", msg) is not None for _ in range(3)] == [True, True, False]
    assert b.sent[-1]["code"] == "rate_limited"
    second = FakeChannel()
    room.join(V1, second, {})  # the same participant opens another "chat" channel
    assert room.receive("v1", msg) is None, "a fresh channel must not refill the bucket"
    assert [m["type"] for m in second.sent] == ["welcome", "history"], \
        "nor reset the one-reply-per-refill rule"
    room.leave("v1", b)  # the old channel closing does not remove the new one
    assert len(room) == 2
    room.leave("v1", second)
    assert len(room) == 1


class _RawChannel:
    readyState = "open"

    def __init__(self) -> None:
        self.raw: list[str] = []

    def send(self, data: str) -> None:
        self.raw.append(data)
