"""``python -m loadtest sio-fanout`` end to end, tiny (a functional test of the benchmark,
not a timing test): redis-server, two signaling instances, one client process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_sio_fanout_delivers_every_state_to_every_client(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtest", "sio-fanout", "--clients", "20", "--seconds", "2", "--rate", "5",
           "--procs", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "joined 20/20" in done.stderr

    report = json.loads((tmp_path / "sio_fanout.json").read_text())
    assert report == json.loads(done.stdout)
    assert report["connected"] == {"A": 10, "B": 10} and report["connect_failed"] == 0
    assert report["events_sent"] == 10
    deliveries = report["deliveries"]
    assert deliveries["expected"] == deliveries["received"] == 200
    assert deliveries["lost"] == 0 and deliveries["duplicates"] == 0 and deliveries["per_s"] > 0
    for label in ("A", "B"):  # A: local emit; B: through Redis, once (A emits, B does not)
        by = report["by_instance"][label]
        assert by["clients"] == 10 and by["received"] == by["expected"] == 100
        assert by["duplicates"] == 0 and by["clients_missing_any"] == 0 and by["disconnected"] == 0
        assert by["other_events"] == 0
        assert by["latency_ms"]["n"] == 100 and 0 < by["latency_ms"]["p50"] <= by["latency_ms"]["p99"] < 5000
        assert by["emit_to_receive_ms"]["n"] == 100
    assert set(report["latency_ms"]) == {"n", "p50", "p95", "p99", "max"}
    assert report["node_to_emit_ms"]["n"] == 10
    assert len(report["latency_p50_by_second_ms"]) == 2
    assert set(report["cpu_pct"]) == {"A", "B", "redis", "clients"}
    assert set(report["server_cpu_us_per_delivery"]) == {"A", "B"}
    assert report["server_rss_mb"]["A"] > 10
    assert (tmp_path / "serve_A.log").exists() and (tmp_path / "serve_B.log").exists()
