"""``python -m loadtest cascade-cpu`` and ``failover`` end to end, tiny (functional tests of
the benchmarks, not timing tests): redis-server, two signaling instances, real SFU nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "loadtest", *args, "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return json.loads((tmp_path / f"{args[0]}.json").read_text())


def test_cascade_cpu_splits_viewers_over_origin_and_edge(tmp_path: Path) -> None:
    report = run(tmp_path, "cascade-cpu", "--viewers", "4", "--seconds", "2", "--settle", "1",
                 "--width", "320", "--height", "180")
    single = report["single"]["per_node"]
    assert list(single.values())[0]["outputs"] == 4
    nodes = report["cascade"]["per_node"]
    roles = {n["role"]: n for n in nodes.values()}
    # Two viewers per node: the origin also feeds the pipe, the edge only its viewers.
    assert roles["origin"]["viewers"] == 2 and roles["origin"]["outputs"] == 3
    assert roles["edge"]["viewers"] == 2 and roles["edge"]["outputs"] == 2
    assert report["cascade"]["packets_per_output"] > 0
    assert all(n["us_per_packet"] > 0 for n in nodes.values())
    assert set(report["us_per_packet_ratio_vs_single"]) == set(nodes)


def test_failover_measures_every_kill(tmp_path: Path) -> None:
    report = run(tmp_path, "failover", "--kills", "1", "--viewers", "2")
    (only,) = report["rounds"]
    assert only["killed"].startswith("sfu-")
    assert len(only["viewer_recovery_s"]) == 2 and 0 < only["all_back_s"] < 30
    assert report["all_viewers_back_ms"]["n"] == 1 and report["viewer_recovery_ms"]["n"] == 2
