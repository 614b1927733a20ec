"""Secrets out of every log record: stream keys, tokens, TURN credentials, passwords.

:func:`redact` masks credentials in a text; :func:`install_redaction` installs a
``logging`` record factory that applies it to every record any logger creates (ours and
third-party ones: ``aiohttp.server``, ``aiohttp.access``, ``socketio``, ``engineio``,
``aioice``, ``aiortc``...), before any handler or formatter sees it, whatever handlers are
configured.  That matters for text we do not write ourselves: aiohttp's HTTP parser, for
one, puts the raw offending header line (``Authorization: Bearer <key>\\x7f``) into the
exception it logs.

What is masked (names case-insensitive; the value becomes ``[REDACTED]``):

* the rest of the line after an ``Authorization`` or ``Proxy-Authorization`` header name
  (``Authorization: ...``, ``'Authorization': '...'``, ``authorization=...``);
* the credential after an HTTP authentication scheme ``Bearer`` or ``Basic``
  (RFC 9110 §11.4, RFC 6750 §2.1): everything up to the next whitespace or quote;
* the value of a parameter whose name ends in ``key``, ``token``, ``secret``,
  ``credential``, ``password``, ``passwd`` or ``pwd`` (``key=...``, ``stream_key: ...``,
  ``"credential": "..."``, SDP's ``a=ice-pwd:...``): a quoted value up to its closing
  quote (or the end of the line), else up to whitespace, a quote or one of ``& ; , < >``;
* the password of a URL's userinfo (``redis://:password@host``, RFC 3986 §3.2.1);
* the rest of the line after a ``Cookie`` or ``Set-Cookie`` header name (the pages'
  access and refresh tokens ride in cookies);
* anything shaped like a JWT (``eyJ….eyJ….sig``, RFC 7519 §3) and relaycast's stream keys
  and refresh tokens by their prefixes (``sk_…``, ``rt_…``, 16+ characters), wherever
  they appear.

A secret that contains whitespace is masked only up to the whitespace unless it is the
value of an ``Authorization`` header or quoted: keep secrets to the token alphabet
(random stream keys and minted TURN credentials are).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

MASK = "[REDACTED]"

_AUTHORIZATION = re.compile(r"""((?:proxy-)?authorization["']?\s*[:=]\s*)[^\r\n]+""", re.IGNORECASE)
_SCHEME = re.compile(r"""((?:bearer|basic)\s+)[^\s"']+""", re.IGNORECASE)
_NAMED = re.compile(
    r"""([\w.-]*(?:key|token|secret|credential|password|passwd|pwd)["']?\s*[:=]\s*)"""
    r"""(?:"[^"\r\n]*"?|'[^'\r\n]*'?|[^\s"'&;,<>]+)""",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(://[^/\s:@]*:)[^@\s/]+@")
_COOKIE = re.compile(r"""((?:set-)?cookie["']?\s*[:=]\s*)[^\r\n]+""", re.IGNORECASE)
_JWT = re.compile(r"eyJ[\w-]*\.eyJ[\w-]*\.[\w-]*")
_PREFIXED = re.compile(r"\b(?:sk|rt)_[A-Za-z0-9_-]{16,}")


def redact(text: str) -> str:
    """``text`` with every credential listed in the module docstring replaced by
    :data:`MASK`; text without one is returned unchanged."""
    if not text:
        return text
    text = _AUTHORIZATION.sub(rf"\1{MASK}", text)
    text = _COOKIE.sub(rf"\1{MASK}", text)
    text = _JWT.sub(MASK, text)
    text = _PREFIXED.sub(MASK, text)
    text = _SCHEME.sub(rf"\1{MASK}", text)
    text = _NAMED.sub(rf"\1{MASK}", text)
    return _USERINFO.sub(rf"\1{MASK}@", text)


_FORMATTER = logging.Formatter()


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask credentials in ``record`` in place and return it.

    The message is formatted now (``msg % args``) and stored redacted with no ``args``
    (arguments that do not fit ``msg`` are dropped, with a note);
    an exception is rendered into ``exc_text`` (redacted, the text every
    :class:`logging.Formatter` prints) and ``exc_info`` is dropped, so that no formatter
    can render the exception's own, unredacted message; ``stack_info`` is redacted too.
    """
    try:
        message = record.getMessage()
    except Exception as exc:  # ``msg % args`` fails: the arguments cannot be placed, drop them
        message = f"{record.msg} [arguments not shown: {type(exc).__name__}]"
    record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


_Factory = Callable[..., logging.LogRecord]


def install_redaction() -> None:
    """Make every new :class:`logging.LogRecord` go through :func:`redact_record`.

    Wraps the current record factory (:func:`logging.setLogRecordFactory`); calling it
    again is a no-op, so every entry point (the CLI's ``configure_logging``, an embedded
    ``relaycast.service.Service``) may call it.
    """
    current: _Factory = logging.getLogRecordFactory()
    if getattr(current, "redacts_secrets", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(current(*args, **kwargs))

    factory.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
