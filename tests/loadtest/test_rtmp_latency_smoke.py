"""loadtest.rtmp_latency end to end, one short case: Debian's ffmpeg publishes frames drawn
with capture times over RTMP and over SRT into a real relaycast serve, a WHEP viewer reads them back."""

from __future__ import annotations

import shutil

import pytest

from loadtest import rtmp_latency


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")
async def test_rtmp_and_srt_frames_are_read_back_with_their_capture_time() -> None:
    results = await rtmp_latency.main_async(1.5, ("rtmp", "srt"))
    for case in ("rtmp", "srt"):
        summary = results[case]
        assert summary["frames"] >= 30, summary  # 1.5 s at 30 fps, every frame's code read
        assert 0 < summary["g2g_p50_ms"] < 1000, summary
