"""``python -m loadtest.beacon_bench`` runs end to end on a small load against a real
``relaycast serve``: every beacon it sent is accepted and stored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtest import beacon_bench

pytestmark = pytest.mark.timeout(120)


def test_beacon_bench_stores_what_it_sends(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    args = [
        "--pages",
        "300",
        "--seconds",
        "1",
        "--warmup",
        "0.5",
        "--addresses",
        "3",
        "--channels",
        "2",
        "--settle",
        "0",
        "--md",
        str(out),
    ]
    assert beacon_bench.main(args) == 0
    text = out.read_text()
    assert "**30 requests/s = 150 beacons/s**" in text
    accepted, stored, dropped = re.search(
        r"\| beacons accepted / rows stored / dropped \| (\d+) / (\d+) / (\d+) \|", text
    ).groups()
    assert int(accepted) == int(stored) > 0 and dropped == "0"
    assert "statuses: {'202': 30}" in text
