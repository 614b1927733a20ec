"""common.log_redaction: credentials masked in text and in every log record."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from common.log_redaction import MASK, install_redaction, redact, redact_record

# Secrets as they occur: token characters, plus control characters such as \x7f (which
# made aiohttp log a raw header line).  Never whitespace, quotes or the separators a
# value ends at, nor the mask's own characters.
_SECRET_CHARS = st.characters(
    codec="utf-8",
    exclude_characters="\"'&;,<>[]=",
    exclude_categories=("Zs", "Zl", "Zp", "Cs"),
).filter(lambda c: not re.match(r"\s", c))
SECRETS = st.text(_SECRET_CHARS, min_size=8, max_size=40)
TEXT = st.text(max_size=40)

PATTERNS = [
    "Authorization: Bearer {}",
    "authorization: {}",
    "'Authorization': 'Bearer {}'",
    "Proxy-Authorization: Basic {}",
    "Bearer {}",
    "bearer {}",
    "GET /watch/demo?token={}&x=1 HTTP/1.1",
    "/broadcast/demo?key={}",
    "stream_key={}",
    "secret={}",
    "credential={}",
    "{{'username': 'u', 'credential': '{}'}}",
    '{{"password": "{}"}}',
    "redis://:{}@127.0.0.1:6379/0",
    "a=ice-ufrag:abcd\r\na=ice-pwd:{}\r\n",
    "Cookie: rc_csrf=abc; rc_access={}",
    "set-cookie: rc_refresh={}; HttpOnly",
]


@pytest.mark.parametrize("secret", [
    "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLV8",  # a JWT (RFC 7519 §3)
    "sk_" + "A1b2C3d4E5f6G7h8I9j0K1l2",  # a stream key
    "rt_" + "Zz09_-" * 7,  # a refresh token
])
@pytest.mark.parametrize("where", ["token {} seen", "({})", "'{}'", "{}"])
def test_tokens_are_masked_by_their_shape_anywhere(secret: str, where: str) -> None:
    assert secret not in redact(where.format(secret))


@given(secret=SECRETS, prefix=TEXT, suffix=TEXT, pattern=st.sampled_from(PATTERNS))
def test_an_embedded_secret_never_survives(
    secret: str, prefix: str, suffix: str, pattern: str
) -> None:
    message = prefix + " " + pattern.format(secret) + " " + suffix
    template = prefix + " " + pattern.format("") + " " + suffix
    assume(secret not in template and secret not in MASK)
    if pattern.startswith("redis://"):
        assume(not set(secret) & set("/:@"))  # a URL's userinfo has them percent-encoded
    assert secret not in redact(message)


@given(secret=SECRETS, prefix=TEXT)
def test_a_raw_header_line_in_a_bytes_repr_is_masked(secret: str, prefix: str) -> None:
    """What aiohttp's parser logs: the offending header line as a bytes repr."""
    raw = b"Authorization: Bearer " + secret.encode() + b"\x7f"
    message = f"{prefix}400, message:\n  Invalid header value char:\n\n    {raw!r}\n      ^"
    escaped = repr(secret.encode())[2:-1]
    assume(secret not in prefix and escaped not in prefix)
    out = redact(message)
    assert secret not in out and escaped not in out
    assert "Invalid header value char" in out


@pytest.mark.parametrize(
    "text",
    [
        "SFU node sfu-1 registered",
        "room demo: 3 viewers, key frame requested (ssrc=1234)",
        "POST /whip/demo 201",
        "",
    ],
)
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact(text) == text


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_a_record_is_redacted_message_arguments_and_exception() -> None:
    try:
        raise ValueError("Invalid header value char: b'Authorization: Bearer sk_live_1234567\\x7f'")
    except ValueError as exc:
        record = redact_record(_record("from %s token=%s", "127.0.0.1", "t0k3n_abcdef", exc=exc))
    text = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "sk_live_1234567" not in text and "t0k3n_abcdef" not in text
    assert "from 127.0.0.1 token=[REDACTED]" in text
    assert "Traceback" in text and "ValueError: Invalid header value char" in text
    assert record.exc_info is None  # no formatter can render the raw exception again


def test_an_unformattable_record_drops_its_arguments() -> None:
    record = redact_record(_record("%d items for key=%s", "not-a-number", "secretvalue99"))
    assert record.getMessage() == "%d items for key=[REDACTED] [arguments not shown: TypeError]"


def test_install_applies_to_every_logger_and_handler_once(caplog: pytest.LogCaptureFixture) -> None:
    install_redaction()
    factory = logging.getLogRecordFactory()
    install_redaction()
    assert logging.getLogRecordFactory() is factory  # idempotent
    caplog.set_level(logging.INFO)
    for name in ("aiohttp.access", "engineio.server", "aioice.ice", "relaycast.anything"):
        # ERROR: python-engineio lowers its own logger to ERROR once a server exists.
        logging.getLogger(name).error('"GET /watch/demo?token=%s HTTP/1.1" 200', "abcdefgh1234")
    assert len(caplog.records) == 4
    assert "abcdefgh1234" not in caplog.text
