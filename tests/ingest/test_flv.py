"""FLV video/audio tag bodies: H.264 and AAC parsed, Enhanced RTMP and other codecs refused
with a message that says what to send, malformed input only ever a FlvError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import flv

SPS = bytes.fromhex("6742c01e8c8d40a0fd0078")
PPS = bytes.fromhex("68ce3c80")
CONFIG = bytes((1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1)) + len(SPS).to_bytes(2, "big") + SPS + b"\x01" \
    + len(PPS).to_bytes(2, "big") + PPS


def test_avc_config_and_frames() -> None:
    tag = flv.parse_video_tag(bytes((0x17, 0, 0, 0, 0)) + CONFIG)
    assert (tag.kind, tag.keyframe) == ("config", True)
    config = flv.parse_avc_config(tag.data)
    assert (config.profile, config.level, config.length_size) == (66, 30, 4)
    assert config.sps == (SPS,) and config.pps == (PPS,)
    idr, sei = b"\x65\x88\x80", b"\x06\x05\x01"
    frame = flv.parse_video_tag(bytes((0x17, 1, 0, 0, 0x43)) + b"".join(len(n).to_bytes(4, "big") + n
                                                                        for n in (sei, idr)))
    assert (frame.kind, frame.keyframe, frame.composition_ms) == ("frame", True, 0x43)
    assert flv.split_nalus(frame.data, config.length_size) == [sei, idr]
    inter = flv.parse_video_tag(bytes((0x27, 1, 0xFF, 0xFF, 0xDF)) + b"\x00\x00\x00\x01\x41")
    assert (inter.keyframe, inter.composition_ms) == (False, -33)  # SI24
    assert flv.parse_video_tag(bytes((0x17, 2, 0, 0, 0))).kind == "end"


@pytest.mark.parametrize(("body", "named"), [
    (bytes((0x90,)) + b"hvc1" + bytes(8), "HEVC"),
    (bytes((0x91,)) + b"av01" + bytes(8), "AV1"),
    (bytes((0x12, 0, 0, 0, 0)), "Sorenson H.263"),
])
def test_other_video_codecs_are_refused_saying_what_to_send(body: bytes, named: str) -> None:
    with pytest.raises(flv.UnsupportedCodec, match=named) as info:
        flv.parse_video_tag(body)
    assert "H.264" in str(info.value)


def test_aac_config_and_frames() -> None:
    config_tag = flv.parse_audio_tag(b"\xaf\x00\x11\x90")  # AAC-LC, 48 kHz, stereo
    assert config_tag.kind == "config"
    assert flv.parse_aac_config(config_tag.data) == flv.AacConfig(2, 48000, 2)
    assert flv.parse_aac_config(b"\x12\x08") == flv.AacConfig(2, 44100, 1)
    assert flv.parse_audio_tag(b"\xaf\x01\x21\x00").data == b"\x21\x00"
    with pytest.raises(flv.UnsupportedCodec, match="send AAC"):
        flv.parse_audio_tag(b"\x2f\x00")  # MP3


@pytest.mark.parametrize("data", [b"", b"\x01\x42", bytes((1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 9, 1)),
                                  bytes((1, 0x42, 0, 0x1E, 0xFF, 0xE0, 0))])
def test_malformed_avc_config(data: bytes) -> None:
    with pytest.raises(flv.FlvError):
        flv.parse_avc_config(data)


def test_a_nal_length_past_the_frame_is_an_error() -> None:
    with pytest.raises(flv.FlvError):
        flv.split_nalus(b"\x00\x00\x00\x09\x65", 4)


@settings(max_examples=400)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=4))
def test_any_bytes_parse_or_raise_flv_error(data: bytes, length_size: int) -> None:
    for parse in (flv.parse_video_tag, flv.parse_audio_tag, flv.parse_avc_config, flv.parse_aac_config,
                  lambda d: flv.split_nalus(d, length_size)):
        try:
            parse(data)
        except flv.FlvError:
            pass
