"""What chat text may contain: the cleaning rules and the parser of one inbound message.

Chat text and display names are shown to other people, so the SFU removes what could
make them lie about themselves before any length check and before fan-out
(docs/chat.md, "Text rules"):

* **bidirectional formatting characters** — the embeddings and overrides U+202A–U+202E,
  the isolates U+2066–U+2069 (Unicode UAX #9 §2.1–§2.4), and the implicit marks U+200E
  LEFT-TO-RIGHT MARK, U+200F RIGHT-TO-LEFT MARK and U+061C ARABIC LETTER MARK (UAX #9
  §2.6): an unterminated override reverses the rest of the line it is shown in
  ("Trojan Source", CVE-2021-42574), and marks let two different strings look the same;
* **control characters** (Unicode general category Cc: U+0000–U+001F, U+007F–U+009F):
  NUL and escape sequences have no business in a chat line.  The ones that are
  whitespace (tab, line feed, vertical tab, form feed, carriage return, U+001C–U+001F,
  U+0085 NEXT LINE) and the line/paragraph separators U+2028/U+2029 become one space
  each, so ``"hi\\nthere"`` stays two words; a chat message is one line, and a line
  break could otherwise forge a second message under another name;
* **lone surrogates** (category Cs: U+D800–U+DFFF, which JSON's ``\\uD800`` escape can
  produce): they cannot be encoded as UTF-8, so they could never be sent on.

Other format characters are kept: U+200D ZERO WIDTH JOINER builds emoji sequences.
After removal the text is stripped of leading and trailing whitespace; a chat text that
is then empty is rejected, and the length limit counts what is left in extended grapheme
clusters (Unicode UAX #29 §3): what a reader sees as one character — 👨‍👩‍👧 (five code
points) or "é" written as e + U+0301 — counts once.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

import regex

BIDI_CONTROLS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)]  # LRE RLE PDF LRO RLO (UAX #9 §2.1, §2.2)
    + [chr(c) for c in range(0x2066, 0x206A)]  # LRI RLI FSI PDI (UAX #9 §2.4)
    + ["\u200e", "\u200f", "\u061c"]  # LRM RLM ALM (UAX #9 §2.6)
)
"""Bidirectional formatting characters removed from chat text and names."""

LINE_SEPARATORS = frozenset(["\u2028", "\u2029"])
"""LINE SEPARATOR and PARAGRAPH SEPARATOR (categories Zl, Zp): replaced by a space."""

NAME_MAX_CHARS = 64
"""Longest display name kept, code points after cleaning."""

ANONYMOUS = "anonymous"
"""The display name used when a name is empty after cleaning."""


def _translation() -> dict[int, str | None]:
    table: dict[int, str | None] = dict.fromkeys(range(0xD800, 0xE000))  # lone surrogates (Cs)
    for code in range(0xA0):  # category Cc is exactly U+0000-U+001F and U+007F-U+009F
        if unicodedata.category(chr(code)) == "Cc":
            table[code] = " " if chr(code).isspace() else None
    for char in BIDI_CONTROLS:
        table[ord(char)] = None
    for char in LINE_SEPARATORS:
        table[ord(char)] = " "
    return table


_TRANSLATION = _translation()
REMOVED = frozenset(chr(code) for code, to in _TRANSLATION.items() if to is None)
"""Every code point :func:`clean_text` deletes."""
SPACED = frozenset(chr(code) for code, to in _TRANSLATION.items() if to == " ")
"""Every code point :func:`clean_text` turns into a space."""


def clean_text(text: str) -> str:
    """``text`` without bidi controls, control characters and lone surrogates (whitespace
    controls and U+2028/U+2029 become a space), stripped of outer whitespace."""
    return text.translate(_TRANSLATION).strip()


def clean_name(name: str) -> str:
    """A display name as shown to others: :func:`clean_text`, at most
    :data:`NAME_MAX_CHARS` code points, :data:`ANONYMOUS` when nothing is left."""
    return clean_text(name)[:NAME_MAX_CHARS].rstrip() or ANONYMOUS


@dataclass(frozen=True)
class Rejected:
    """Why an inbound chat message was refused: the ``error`` reply's ``code`` and
    ``detail`` (docs/chat.md, "error")."""

    code: str  # "bad_message" | "too_long"
    detail: str


NOT_JSON = Rejected("bad_message", "messages are JSON objects")
NOT_CHAT = Rejected("bad_message", 'expected {"type":"chat","text":"..."}')
EMPTY = Rejected("bad_message", "empty message")


_GRAPHEME = regex.compile(r"\X")
CODE_POINTS_PER_GRAPHEME = 32
"""A text longer than ``max_chars`` × this many code points is too long without counting."""


def grapheme_len(text: str) -> int:
    """The number of extended grapheme clusters in ``text`` (UAX #29 §3.1)."""
    return len(_GRAPHEME.findall(text))


def check_text(text: str, max_chars: int) -> str | Rejected:
    """Clean ``text`` (:func:`clean_text`) and check it: not empty, at most ``max_chars``
    grapheme clusters.  :returns: the cleaned text, or a :class:`Rejected`."""
    text = clean_text(text)
    if not text:
        return EMPTY
    if len(text) > max_chars and (
            len(text) > max_chars * CODE_POINTS_PER_GRAPHEME or grapheme_len(text) > max_chars):
        return Rejected("too_long", f"at most {max_chars} characters")
    return text


def parse_chat(raw: str | bytes, max_chars: int) -> str | Rejected:
    """Parse one data-channel message ``{"type": "chat", "text": <string>}``.

    :param raw: the message as received (text, or bytes in UTF-8/16/32, RFC 8259 §8.1).
    :param max_chars: longest accepted text, grapheme clusters after cleaning.
    :returns: the cleaned text (:func:`check_text`; 1 to ``max_chars`` graphemes), or a
        :class:`Rejected` saying why not.  Never raises for any input.
    """
    try:
        message: Any = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; so is bad JSON
        return NOT_JSON
    if not isinstance(message, dict) or message.get("type") != "chat":
        return NOT_CHAT
    text = message.get("text")
    if not isinstance(text, str):
        return NOT_CHAT
    return check_text(text, max_chars)
