"""loadtest.rtmp_ingest_cost end to end, small and short: a real relaycast serve, its ingest
process, FFmpeg's WHIP muxer as the baseline, Debian's ffmpeg publishing both clips over
RTMP and one over SRT; both processes' CPU is read."""

from __future__ import annotations

import shutil

import pytest

from loadtest import rtmp_ingest_cost


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")
async def test_both_cases_measure_the_forwarding_and_ingest_processes() -> None:
    results = await rtmp_ingest_cost.main_async(1.0, 1.5, size="320x240", clip_s=3)
    for case in ("passthrough", "transcode (B-frames)", "SRT passthrough"):
        figures = results[case]
        assert isinstance(figures, dict)
        assert figures["forwarding_cpu_pct"] > 0 and figures["ingest_cpu_pct"] > 0, figures
        assert figures["ratio_to_whip"] > 1 and figures["ratio_to_whip_publisher"] > 0
    assert results["WHIP publisher"]["forwarding_cpu_pct"] > 0  # FFmpeg's WHIP muxer, same run
