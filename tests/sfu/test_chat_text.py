"""The chat text rules (sfu/chat_text.py): table-driven units, then hypothesis fuzzing of the
parser alone and of a ChatRoom receiving arbitrary JSON-ish, text and byte payloads.

Properties: nothing raises, nothing is logged at ERROR, every reply is one of the documented
error codes, and every accepted (fanned-out) text is non-empty, at most ``max_chars`` code
points, free of bidi and control characters and lone surrogates, and encodable as UTF-8.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.chat import ChatRoom, Identity
from sfu.chat_text import (
    ANONYMOUS,
    BIDI_CONTROLS,
    NAME_MAX_CHARS,
    REMOVED,
    SPACED,
    Rejected,
    clean_name,
    clean_text,
    grapheme_len,
    parse_chat,
)

MAX_CHARS = 20
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- units


def test_the_removed_set_is_what_docs_chat_md_says() -> None:
    assert {chr(c) for c in range(0x202A, 0x202F)} | {chr(c) for c in range(0x2066, 0x206A)} <= REMOVED
    lone = {chr(0xD800), chr(0xDFFF)}  # lone surrogates
    assert {"\u200e", "\u200f", "\u061c", "\x00", "\x1b", "\x7f", "\x9b"} | lone <= REMOVED
    assert BIDI_CONTROLS <= REMOVED
    assert SPACED == {"\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x1f", "\x85",
                      "\u2028", "\u2029"}
    assert "\u200d" not in REMOVED, "ZERO WIDTH JOINER builds emoji sequences"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type":"chat","text":"hi"}', "hi"),
        ('{"type":"chat","text":"\\u202eevil\\u202c"}', "evil"),
        (b'{"type":"chat","text":"bytes \\u0000ok"}', "bytes ok"),
        ('{"type":"chat","text":"  \\u2067 spaced \\n"}', "spaced"),
        ('{"type":"chat","text":"' + "x" * MAX_CHARS + '"}', "x" * MAX_CHARS),
        ('{"type":"chat","text":"' + "x" * (MAX_CHARS + 1) + '"}', Rejected("too_long", "at most 20 characters")),
        ('{"type":"chat","text":"\\u200f\\u061c"}', Rejected("bad_message", "empty message")),
        ('{"type":"chat","text":null}', Rejected("bad_message", 'expected {"type":"chat","text":"..."}')),
        ('{"type":"chat","text":["a"]}', Rejected("bad_message", 'expected {"type":"chat","text":"..."}')),
        ('{"text":"no type"}', Rejected("bad_message", 'expected {"type":"chat","text":"..."}')),
        ("null", Rejected("bad_message", 'expected {"type":"chat","text":"..."}')),
        ("NaN", Rejected("bad_message", 'expected {"type":"chat","text":"..."}')),
        ("", Rejected("bad_message", "messages are JSON objects")),
        (b"\xff\xfe\x00", Rejected("bad_message", "messages are JSON objects")),
        ("[" * 5000 + "]" * 5000, Rejected("bad_message", "messages are JSON objects")),  # RecursionError
        ('{"type":"chat","text":"a"' + "}" * 3, Rejected("bad_message", "messages are JSON objects")),
    ],
)
def test_parse_chat(raw: str | bytes, expected: str | Rejected) -> None:
    assert parse_chat(raw, MAX_CHARS) == expected


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("swift-otter-42", "swift-otter-42"),
        ("\u202enimda", "nimda"),
        ("a\nb", "a b"),
        ("\x00\u2066", ANONYMOUS),
        ("", ANONYMOUS),
        ("n" * 100, "n" * NAME_MAX_CHARS),
        ("x" * (NAME_MAX_CHARS - 1) + " y", "x" * (NAME_MAX_CHARS - 1)),  # no trailing space after the cut
    ],
)
def test_clean_name(name: str, shown: str) -> None:
    assert clean_name(name) == shown


# ------------------------------------------------------------------------ strategies

# Characters with the interesting ones over-represented: every removed/spaced class,
# RTL letters, ZWJ, emoji, and anything else hypothesis picks (surrogates included).
_SPECIAL = sorted(BIDI_CONTROLS | SPACED | {chr(0xD800), chr(0xDC00)}  # lone surrogates
                  | {"\x00", "\x1b", "\x7f", "\x9b", "\u200d", "\u05d0", "\U0001f600", " ", "x"})
chars = st.one_of(st.sampled_from(_SPECIAL), st.characters(exclude_categories=()))
texts = st.text(chars, max_size=3 * MAX_CHARS)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
chat_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(["chat", "chat", "Chat", "other"]) | json_values,
     "text": texts | json_values},
    optional={"from": json_values, "seq": json_values, "id": json_values},
)


def _serialize(value: Any, ensure_ascii: bool) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii)


payloads = st.one_of(
    st.builds(_serialize, chat_objects, st.booleans()),  # mostly well-formed chat objects
    st.builds(_serialize, json_values, st.booleans()),  # any JSON value
    st.builds(lambda v: _serialize(v, True).encode(), chat_objects),  # as a binary message
    texts,  # raw text
    st.binary(max_size=200),  # raw bytes
    st.builds(lambda v, cut: _serialize(v, False)[:cut], chat_objects, st.integers(0, 80)),  # truncated
)


def _assert_clean(text: str) -> None:
    assert text and text == text.strip()
    # The limit is in grapheme clusters (sfu.chat_text.parse_chat): a kept U+200D joins the
    # character before it, so 20 graphemes may be 21 code points ("x0 … \u200d0…").
    assert grapheme_len(text) <= MAX_CHARS
    assert not set(text) & REMOVED, ascii(text)
    assert not set(text) & SPACED - {" "}, ascii(text)
    text.encode("utf-8")  # raises on a lone surrogate


@contextmanager
def _no_error_logs() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)
    assert records == [], [r.getMessage() for r in records]


# ------------------------------------------------------------------------------ fuzz


@FUZZ
@given(texts)
def test_clean_text_fuzz(text: str) -> None:
    cleaned = clean_text(text)
    assert not set(cleaned) & (REMOVED | SPACED - {" "})
    assert cleaned == cleaned.strip() and clean_text(cleaned) == cleaned, "idempotent"
    name = clean_name(text)
    assert name and len(name) <= NAME_MAX_CHARS and not set(name) & REMOVED


@FUZZ
@given(payloads)
def test_parse_chat_fuzz(raw: str | bytes) -> None:
    with _no_error_logs():
        result = parse_chat(raw, MAX_CHARS)
    if isinstance(result, Rejected):
        assert result.code in ("bad_message", "too_long") and result.detail
    else:
        _assert_clean(result)


class _WireChannel:
    """A data channel that sends like aiortc: UTF-8 text (raises on what UTF-8 cannot hold)."""

    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, data: str) -> None:
        self.sent.append(json.loads(data.encode("utf-8")))


@FUZZ
@given(st.lists(payloads, min_size=1, max_size=5), texts)
def test_chat_room_fuzz(raws: list[str | bytes], name: str) -> None:
    """Arbitrary payloads from a participant with an arbitrary display name: every reply is
    a documented message, every fanned-out text and name is clean, nothing raises or logs
    an ERROR."""
    room = ChatRoom("demo", max_chars=MAX_CHARS, rate=1000, burst=1000, clock=lambda: 0.0)
    sender, other = _WireChannel(), _WireChannel()
    with _no_error_logs():
        room.join(Identity("v1", name, "viewer"), sender, {})
        room.join(Identity("v2", "other", "viewer"), other, {})
        accepted = [room.receive("v1", raw) for raw in raws]
    shown = sender.sent[0]["participant"]["name"]
    assert shown == clean_name(name)
    for message in sender.sent[2:]:
        assert message["type"] in ("chat", "error", "welcome", "history"), message
        if message["type"] == "error":
            assert message["code"] in ("bad_message", "too_long"), message
    fanned_out = [m for m in other.sent if m["type"] == "chat"]
    assert len(fanned_out) == sum(m is not None for m in accepted)
    for message in fanned_out:
        _assert_clean(message["text"])
        assert message["from"] == {"id": "v1", "name": shown, "role": "viewer"}


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(payloads, min_size=1, max_size=20), st.integers(1, 5))
def test_rate_limit_fuzz(raws: list[str | bytes], burst: int) -> None:
    """At one instant, whatever is sent: at most ``burst`` messages are answered or
    accepted, and at most one rate_limited reply follows."""
    room = ChatRoom("demo", max_chars=MAX_CHARS, rate=1.0, burst=burst, clock=lambda: 0.0)
    sender = _WireChannel()
    room.join(Identity("v1", "v", "viewer"), sender, {})
    for raw in raws:
        room.receive("v1", raw)
    replies = [m.get("code", m["type"]) for m in sender.sent[2:]]
    assert len(replies) == min(len(raws), burst) + (len(raws) > burst)
    assert replies.count("rate_limited") == (len(raws) > burst)
