"""H.264 encoder probing/selection and the low-latency encoder context."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.frame import PictureType

from hls_bridge import encoders
from hls_bridge.encoders import (
    ENCODER_ORDER,
    ENV_VAR,
    EncoderChoice,
    EncoderConfigError,
    NoEncoderError,
    choose_encoder,
    open_video_encoder,
)
from hls_bridge.problems import PROBLEM_TYPES

# A GPU or a DRI render node may make a hardware encoder usable; the assertions
# that libx264 is chosen only hold on a machine without them.
HAS_HW = any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dri"))


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_VAR, raising=False)
    encoders.clear_probe_cache()
    yield
    encoders.clear_probe_cache()


def test_choice_follows_probe_order_and_logs_rejections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=encoders.__name__)
    choice = choose_encoder()

    names = [r.name for r in choice.results]
    assert names == list(ENCODER_ORDER[: len(names)])
    assert names[-1] == choice.name
    *rejected, chosen = choice.results
    assert chosen.available and chosen.seconds >= 0
    for result in rejected:
        assert not result.available
        assert result.reason.strip()
        assert result.problem in PROBLEM_TYPES  # what reports show instead of the reason
    assert chosen.problem is None
    messages = [r.getMessage() for r in caplog.records]
    for result in rejected:
        assert any(f"{result.name} rejected: {result.reason}" in m for m in messages)
    assert any(f"{choice.name} chosen" in m for m in messages)
    assert choice.options == encoders.SPECS[choice.name].options


@pytest.mark.skipif(HAS_HW, reason="a hardware encoder may be usable here")
def test_without_gpu_libx264_is_chosen_and_hw_rejections_explained() -> None:
    choice = choose_encoder()

    assert choice.name == "libx264"
    assert choice.options["tune"] == "zerolatency"
    assert choice.options["bf"] == "0"
    by_name = {r.name: r for r in choice.results}
    assert set(by_name) == set(ENCODER_ORDER)
    for name in ("h264_nvenc", "h264_qsv", "h264_vaapi"):
        assert not by_name[name].available
        assert len(by_name[name].reason) > 5, by_name[name]
    assert by_name["libx264"].available


def test_probe_results_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_probe = encoders.probe_encoder

    def counting_probe(name: str) -> encoders.ProbeResult:
        calls.append(name)
        return real_probe(name)

    monkeypatch.setattr(encoders, "probe_encoder", counting_probe)
    first = choose_encoder()
    second = choose_encoder()

    assert calls == [r.name for r in first.results]
    assert second.results == first.results


def test_unknown_encoder_in_env_raises_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_VAR, "h265_magic")
    with pytest.raises(EncoderConfigError) as excinfo:
        choose_encoder()
    message = str(excinfo.value)
    assert ENV_VAR in message and "h265_magic" in message
    assert all(name in message for name in ENCODER_ORDER)
    assert isinstance(excinfo.value, ValueError)


def test_unknown_preferred_encoder_raises() -> None:
    with pytest.raises(EncoderConfigError, match="libopenh264"):
        choose_encoder(["libx264", "libopenh264"])


def test_forcing_libx264_through_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "libx264")
    choice = choose_encoder()
    assert choice.name == "libx264"
    assert [r.name for r in choice.results] == ["libx264"]


@pytest.mark.skipif(HAS_HW, reason="VAAPI may be usable here")
def test_forcing_unusable_encoder_raises_with_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_VAR, "h264_vaapi")
    with pytest.raises(NoEncoderError, match="h264_vaapi: .+"):
        choose_encoder()


def _frames(width: int, height: int, count: int) -> Iterator[np.ndarray]:
    """Black, then noise from frame 7 on, black again at 15..21: hard scene cuts
    that make x264 insert I-frames unless scene-cut detection is off."""
    rng = np.random.default_rng(7)
    for i in range(count):
        if i < 7 or 15 <= i < 22:
            yield np.zeros((height, width, 3), np.uint8)
        else:
            yield rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("time_base", "pts_step"), [(None, 1), (Fraction(1, 90000), 3000)])
def test_keyframes_only_where_forced_and_no_b_frames(
    time_base: Fraction | None, pts_step: int
) -> None:
    choice = choose_encoder(["libx264"])
    ctx = open_video_encoder(
        choice, 640, 360, 30, bitrate=1_000_000, gop_frames=300, time_base=time_base
    )
    assert ctx.time_base == (time_base or Fraction(1, 30))
    assert ctx.max_b_frames == 0

    packets: list[av.Packet] = []
    for i, image in enumerate(_frames(640, 360, 30)):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * pts_step
        if i in (0, 15):
            frame.pict_type = PictureType.I
        packets += ctx.encode(frame)
    packets += ctx.encode(None)

    assert len(packets) == 30
    assert [p.pts for p in packets if p.is_keyframe] == [0, 15 * pts_step]
    assert all(p.pts == p.dts for p in packets)  # no reordering: no B-frames
    assert [p.pts for p in packets] == [i * pts_step for i in range(30)]

    decoder = av.CodecContext.create("h264", "r")
    types = []
    for packet in [*packets, None]:
        types += [PictureType(f.pict_type) for f in decoder.decode(packet)]
    expected = [PictureType.P] * 30
    expected[0] = expected[15] = PictureType.I
    assert types == expected


def test_open_video_encoder_rejects_bad_arguments() -> None:
    choice = choose_encoder(["libx264"])
    with pytest.raises(ValueError, match="even"):
        open_video_encoder(choice, 641, 360, 30, 1_000_000, 60)
    with pytest.raises(ValueError, match="positive"):
        open_video_encoder(choice, 640, 360, 0, 1_000_000, 60)
    bogus = EncoderChoice("libx264", {**choice.options, "no-such-option": "1"})
    with pytest.raises(ValueError, match="no-such-option"):
        open_video_encoder(bogus, 640, 360, 30, 1_000_000, 60)
