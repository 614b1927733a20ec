"""AAC-LC as MP4A-LATM elements with the configuration in band (RFC 6416 §6.1): FFmpeg's
LATM decoder reads what common.latm writes (the same PCM as the raw frames), ADTS frames
from FFmpeg's muxer are split into configuration and raw frame, and what is not AAC-LC
or not of the written form is refused."""

from __future__ import annotations

import fractions
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from common import latm
from common.latm import AacConfig, LatmError


def _aac_frames(rate: int, layout: str, count: int = 40) -> tuple[bytes, list[bytes]]:
    """FFmpeg's AAC-LC encoder: (its AudioSpecificConfig, ``count`` raw frames of a tone)."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = rate, layout, "fltp"
    encoder.time_base = fractions.Fraction(1, rate)
    encoder.bit_rate = 96_000
    encoder.open()
    channels = encoder.layout.nb_channels
    frames: list[bytes] = []
    for index in range(count):
        tone = np.sin(np.arange(1024) * 0.07 + index).astype(np.float32) * 0.3
        frame = av.AudioFrame.from_ndarray(np.repeat(tone[None, :], channels, 0), format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, index * 1024
        frames += [bytes(p) for p in encoder.encode(frame)]
    return bytes(encoder.extradata), frames


@pytest.mark.parametrize(("rate", "layout"), [(48000, "stereo"), (44100, "mono")])
def test_ffmpegs_latm_decoder_reads_the_elements(rate: int, layout: str) -> None:
    asc, frames = _aac_frames(rate, layout)
    config = AacConfig.from_asc(asc)
    assert config.sample_rate == rate and config.asc == asc[:2]
    plain = av.CodecContext.create("aac", "r")
    plain.extradata = asc
    expected = [f.to_ndarray() for p in frames for f in plain.decode(av.Packet(p))]
    reader = av.CodecContext.create("aac_latm", "r")
    decoded = []
    for frame in frames:
        element = latm.audio_mux_element(config, frame)
        assert latm.parse_audio_mux_element(element) == (config, frame)
        # FFmpeg's LATM decoder wants LOAS framing (§1.7.2): sync word 0x2B7, 13-bit length.
        loas = ((0x2B7 << 13) | len(element)).to_bytes(3, "big") + element
        decoded += [f.to_ndarray() for f in reader.decode(av.Packet(loas))]
    assert len(decoded) == len(expected) > 30
    assert all(np.array_equal(a, b) for a, b in zip(decoded, expected, strict=True))
    assert reader.sample_rate == rate and reader.layout.name == layout


def test_long_frames_get_a_long_payload_length() -> None:
    config = AacConfig(3, 2)
    frame = bytes(range(256)) * 3  # 768 bytes: PayloadLengthInfo 255, 255, 255, 3
    assert latm.parse_audio_mux_element(latm.audio_mux_element(config, frame)) == (config, frame)
    assert latm.parse_audio_mux_element(latm.audio_mux_element(config, b"")) == (config, b"")


def test_a_payload_of_several_elements_gives_each_back_in_order() -> None:
    # Frames of 1, 3, 0, 300 bytes: padding after each element differs (45 + 8·n bits).
    frames = [b"\x01", b"abc", b"", bytes(range(256)) + bytes(44)]
    configs = [AacConfig(3, 2), AacConfig(3, 2), AacConfig(4, 1), AacConfig(3, 2)]
    payload = b"".join(latm.audio_mux_element(c, f) for c, f in zip(configs, frames, strict=True))
    assert latm.parse_audio_mux_elements(payload) == list(zip(configs, frames, strict=True))
    assert latm.parse_audio_mux_element(payload) == (configs[0], frames[0])
    with pytest.raises(LatmError):  # a truncated last element spoils the payload
        latm.parse_audio_mux_elements(payload[:-1])
    with pytest.raises(LatmError):
        latm.parse_audio_mux_elements(payload + b"\x00")  # trailing bytes that are no element


def test_adts_frames_from_ffmpeg_split_into_config_and_raw_frame(tmp_path: Path) -> None:
    path = tmp_path / "tone.aac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100", "-t", "1", "-ac", "2", "-c:a", "aac",
                    "-f", "adts", str(path)], check=True)
    data = path.read_bytes()
    raw: list[bytes] = []
    while data:
        length = ((data[3] & 0x03) << 11) | (data[4] << 3) | (data[5] >> 5)
        config, frame = latm.parse_adts(data[:length])
        assert config == AacConfig(4, 2)  # 44.1 kHz stereo
        raw.append(frame)
        data = data[length:]
    with av.open(str(path)) as container:
        demuxed = [bytes(p) for p in container.demux(audio=0) if p.size]
    assert raw == [latm.parse_adts(p)[1] for p in demuxed] and len(raw) > 40


@pytest.mark.parametrize("asc", [
    bytes([0x29, 0x90]),  # object type 5 (SBR): HE-AAC
    bytes([0x11, 0x94]),  # AAC-LC with 960-sample frames
    bytes([0x17, 0x90]),  # sample-rate index 15 (an explicit rate): not a listed one
    bytes([0x12]),
])
def test_other_than_aac_lc_is_refused(asc: bytes) -> None:
    with pytest.raises(LatmError):
        AacConfig.from_asc(asc)


@pytest.mark.parametrize("element", [
    b"",
    bytes([0x80]) + bytes(10),                              # useSameStreamMux 1: no configuration
    latm.audio_mux_element(AacConfig(3, 2), b"x" * 40)[:10],  # truncated payload
])
def test_elements_of_another_form_are_refused(element: bytes) -> None:
    with pytest.raises(LatmError):
        latm.parse_audio_mux_element(element)


def test_adts_garbage_is_refused() -> None:
    with pytest.raises(LatmError):
        latm.parse_adts(b"\x00" * 20)
    with pytest.raises(LatmError):  # HE-AAC profile bits (object type 5 is not expressible; 1 = Main)
        latm.parse_adts(bytes([0xFF, 0xF1, 0x0C, 0x80, 0x02, 0x1F, 0xFC]) + bytes(9))
