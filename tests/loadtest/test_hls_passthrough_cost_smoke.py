"""loadtest.hls_passthrough_cost end to end, small and short: a real relaycast serve per mode,
Debian's ffmpeg publishing over RTMP, the LL-HLS transcoder's CPU read with the top
rendition passed through and encoded."""

from __future__ import annotations

import shutil

import pytest

from loadtest import hls_passthrough_cost


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")
async def test_both_modes_measure_the_transcoder() -> None:
    results = await hls_passthrough_cost.main_async(1.5, 1.0, size="320x240", clip_s=4)
    assert results["passthrough"]["passthrough"] is True and results["encoded"]["passthrough"] is False
    assert results["passthrough"]["audio_passthrough"] is True and results["encoded"]["audio_passthrough"] is False
    for mode in ("passthrough", "encoded"):
        assert results[mode]["transcoder_cpu_pct"] > 0 and results[mode]["restarts"] == 0, results[mode]
