"""ingest.aac_to_opus: AAC from Debian's ffmpeg → Opus packets that libopus decodes back to
the same tone, with pts 960 samples apart, for 48 kHz mono and stereo (interleaved, no
resampler) and 44.1 kHz (resampled to 48 kHz stereo)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from ingest.aac_to_opus import OPUS_FRAME, AacToOpus


def _aac(path: Path, rate: int, channels: int, seconds: float = 2.0) -> tuple[bytes, list[bytes]]:
    """A 1 kHz tone (left) and 500 Hz (right, if stereo) as AAC-LC: (AudioSpecificConfig, raw frames)."""
    expr = "sin(2*PI*1000*t)" + ("|sin(2*PI*500*t)" if channels == 2 else "")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"aevalsrc={expr}:s={rate}:d={seconds}", "-c:a", "aac", "-b:a", "128k", "-f", "mp4",
                    str(path)], check=True)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        config = bytes(stream.codec_context.extradata)
        return config, [bytes(p) for p in container.demux(stream) if p.size]


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize(("rate", "channels", "opus_channels"), [(48000, 1, 1), (48000, 2, 2), (44100, 2, 2)])
def test_aac_becomes_opus_that_decodes_to_the_same_tones(tmp_path: Path, rate: int, channels: int,
                                                         opus_channels: int) -> None:
    config, frames = _aac(tmp_path / "a.mp4", rate, channels)
    to_opus = AacToOpus(config)
    packets = [p for frame in frames for p in to_opus.push(frame)]
    assert to_opus.channels == opus_channels
    pts = [p for _, p in packets]
    assert pts == list(range(pts[0], pts[0] + OPUS_FRAME * len(pts), OPUS_FRAME))
    assert len(packets) >= 2.0 * 50 - 5  # ~2 s of 20 ms packets (the encoder keeps a little back)
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout = 48000, "stereo" if opus_channels == 2 else "mono"
    decoded = [f for data, _ in packets for f in decoder.decode(av.Packet(data))]
    assert decoded[0].format.name == "s16"  # interleaved 16-bit: (1, channels × n)
    pcm = np.concatenate([f.to_ndarray().reshape(-1, opus_channels).T for f in decoded], axis=1) / 32768
    middle = pcm[:, 24000:72000]  # 1 s away from the edges
    assert abs(_peak_hz(middle[0], 48000) - 1000) < 2
    if channels == 2:
        assert abs(_peak_hz(middle[1], 48000) - 500) < 2  # left and right not swapped or mixed
    assert 0.3 < float(np.sqrt(np.mean(middle[0] ** 2))) < 1.0  # the tone's level (0.707 RMS), not silence


def test_a_frame_that_does_not_decode_gives_nothing_and_the_stream_goes_on(tmp_path: Path) -> None:
    config, frames = _aac(tmp_path / "a.mp4", 48000, 2, 1.0)
    to_opus = AacToOpus(config)
    before = [p for frame in frames[:10] for p in to_opus.push(frame)]
    assert to_opus.push(b"\xff" * 7) == []
    after = [p for frame in frames[10:] for p in to_opus.push(frame)]
    assert before and after and after[0][1] > before[-1][1]
