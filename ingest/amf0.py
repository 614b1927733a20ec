"""AMF0 (Action Message Format 0), the subset RTMP commands use (Adobe "AMF0 File Format
Specification", 2007 — §2 types): number, boolean, string, object, null, undefined, ECMA
array, strict array, date, long string.  Enough for NetConnection/NetStream commands
(``connect``, ``createStream``, ``publish``, ``onStatus`` …) and ``@setDataFrame`` /
``onMetaData``.

Values map to Python as: number → float, boolean → bool, string / long string → str,
object / ECMA array → dict[str, Any], strict array → list, null / undefined → None, date →
float (ms since the epoch).  :func:`decode_all` never raises anything but
:class:`AmfError` on malformed input (hypothesis-fuzzed), and is bounded: nesting depth
≤ 32 and at most as many values as bytes.
"""

from __future__ import annotations

import struct
from typing import Any

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED = 0x00, 0x01, 0x02, 0x03, 0x05, 0x06
ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING = 0x08, 0x09, 0x0A, 0x0B, 0x0C
_MAX_DEPTH = 32
_DOUBLE = struct.Struct("!d")


class AmfError(ValueError):
    """Malformed or unsupported AMF0 data."""


def encode(value: Any) -> bytes:
    """One AMF0 value.  Dicts are objects (keys are strings), lists strict arrays, ``None``
    null; strings longer than 65,535 bytes are long strings.

    :raises AmfError: a value of another type."""
    if value is None:
        return bytes((NULL,))
    if isinstance(value, bool):
        return bytes((BOOLEAN, 1 if value else 0))
    if isinstance(value, (int, float)):
        return bytes((NUMBER,)) + _DOUBLE.pack(float(value))
    if isinstance(value, str):
        data = value.encode()
        if len(data) > 0xFFFF:
            return bytes((LONG_STRING,)) + struct.pack("!I", len(data)) + data
        return bytes((STRING,)) + struct.pack("!H", len(data)) + data
    if isinstance(value, dict):
        out = bytearray((OBJECT,))
        for key, item in value.items():
            name = str(key).encode()
            out += struct.pack("!H", len(name)) + name + encode(item)
        return bytes(out + b"\x00\x00" + bytes((OBJECT_END,)))
    if isinstance(value, (list, tuple)):
        out = bytearray((STRICT_ARRAY,)) + struct.pack("!I", len(value))
        for item in value:
            out += encode(item)
        return bytes(out)
    raise AmfError(f"cannot encode {type(value).__name__} in AMF0")


def encode_all(*values: Any) -> bytes:
    """Values one after another (a command message's body)."""
    return b"".join(encode(v) for v in values)


def decode_all(data: bytes) -> list[Any]:
    """Every value in ``data``, in order.

    :raises AmfError: malformed, truncated or unsupported (AMF3 switch, references, XML)
        data."""
    values: list[Any] = []
    pos = 0
    while pos < len(data):
        value, pos = _decode(data, pos, 0)
        values.append(value)
    return values


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise AmfError("truncated AMF0 data")


def _string(data: bytes, pos: int, size_bytes: int) -> tuple[str, int]:
    _need(data, pos, size_bytes)
    size = int.from_bytes(data[pos:pos + size_bytes], "big")
    pos += size_bytes
    _need(data, pos, size)
    try:
        return data[pos:pos + size].decode(), pos + size
    except UnicodeDecodeError as exc:
        raise AmfError("AMF0 string is not UTF-8") from exc


def _properties(data: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while True:
        key, pos = _string(data, pos, 2)
        _need(data, pos, 1)
        if not key and data[pos] == OBJECT_END:
            return out, pos + 1
        out[key], pos = _decode(data, pos, depth + 1)


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise AmfError("AMF0 data nested too deep")
    _need(data, pos, 1)
    marker = data[pos]
    pos += 1
    if marker == NUMBER:
        _need(data, pos, 8)
        return _DOUBLE.unpack_from(data, pos)[0], pos + 8
    if marker == BOOLEAN:
        _need(data, pos, 1)
        return data[pos] != 0, pos + 1
    if marker == STRING:
        return _string(data, pos, 2)
    if marker == LONG_STRING:
        return _string(data, pos, 4)
    if marker == OBJECT:
        return _properties(data, pos, depth)
    if marker == ECMA_ARRAY:
        _need(data, pos, 4)  # the count is advisory: the properties end with OBJECT_END
        return _properties(data, pos + 4, depth)
    if marker in (NULL, UNDEFINED):
        return None, pos
    if marker == STRICT_ARRAY:
        _need(data, pos, 4)
        count = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if count > len(data) - pos:
            raise AmfError("AMF0 strict array longer than its data")
        items = []
        for _ in range(count):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == DATE:
        _need(data, pos, 10)
        return _DOUBLE.unpack_from(data, pos)[0], pos + 10
    raise AmfError(f"unsupported AMF0 marker 0x{marker:02x}")
