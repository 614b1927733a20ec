"""AMF0 as RTMP commands use it: values round-trip, FFmpeg's connect command decodes, and
malformed input only ever raises AmfError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import amf0

VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.lists(VALUES, max_size=5))
def test_values_round_trip(values: list[object]) -> None:
    assert amf0.decode_all(amf0.encode_all(*values)) == values


def test_a_long_string_and_an_ecma_array_decode() -> None:
    text = "x" * 70_000
    assert amf0.decode_all(amf0.encode(text)) == [text]
    assert amf0.encode(text)[0] == amf0.LONG_STRING
    # onMetaData as FFmpeg writes it: an ECMA array (count, then properties, then the end marker)
    ecma = bytes((amf0.ECMA_ARRAY,)) + (1).to_bytes(4, "big") + b"\x00\x05width" + amf0.encode(1280.0) \
        + b"\x00\x00\x09"
    assert amf0.decode_all(amf0.encode("onMetaData") + ecma) == ["onMetaData", {"width": 1280.0}]


def test_ffmpeg_connect_command_decodes() -> None:
    data = amf0.encode_all("connect", 1.0, {"app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0",
                                            "tcUrl": "rtmp://127.0.0.1:1935/live"})
    name, txn, options = amf0.decode_all(data)
    assert (name, txn, options["app"], options["tcUrl"]) == ("connect", 1.0, "live", "rtmp://127.0.0.1:1935/live")


@pytest.mark.parametrize("data", [b"\x02\x00\x05abc", b"\x00\x00", b"\x11\x00", b"\x03\x00\x01a",
                                  b"\x0a\xff\xff\xff\xff", b"\x02\x00\x02\xff\xfe"])
def test_malformed_input_is_an_amf_error(data: bytes) -> None:
    with pytest.raises(amf0.AmfError):
        amf0.decode_all(data)


def test_deep_nesting_is_refused() -> None:
    data = (b"\x0a\x00\x00\x00\x01" * 40) + amf0.encode(None)
    with pytest.raises(amf0.AmfError, match="deep"):
        amf0.decode_all(data)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_amf_error(data: bytes) -> None:
    try:
        amf0.decode_all(data)
    except amf0.AmfError:
        pass
