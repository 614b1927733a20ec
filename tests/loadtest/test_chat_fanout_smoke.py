"""``python -m loadtest chat-fanout`` end to end, tiny (a functional test of the benchmark, not
a timing test): redis-server, two signaling instances, two SFU nodes, one client process
with two data-channel participants (one per node) and two pages (one per instance), then a
flooded phase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chat_fanout_delivers_every_message_in_one_order_and_meters_the_flood(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtest", "chat-fanout", "--dc", "2", "--sio", "2", "--rate", "5",
           "--seconds", "2", "--flood", "40", "--procs", "1", "--quiet", "0.5", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "chat_fanout.json").read_text())
    assert report == json.loads(done.stdout)
    assert report["participants"] == {"datachannel": {"A": 1, "B": 1}, "socketio": {"A": 1, "B": 1}}
    # One data-channel participant on each node: the second one was placed past the first node's share.
    placement = report["placement"]
    assert placement["node-A"] == placement["node-B"] == 1 and placement["origin"] in ("node-A", "node-B")
    assert report["config"]["senders"] == 4 and report["seq_id_conflicts"] == 0
    assert report["refused"] == {"datachannel": {}, "socketio": {}}

    base = report["base"]
    assert base["messages"] == {"sent": 10, "numbered": 10, "not_numbered": 0, "flood_numbered": 0,
                                "numbered_in_phase_total": 10}
    assert base["deliveries"] == {"expected": 40, "received": 40, "lost": 0, "duplicates": 0}
    assert base["order_check"] == {"reference_messages": 10, "participants": 4, "participants_differing": 0,
                                   "participants_missing_some": 0, "participants_out_of_seq_order": 0,
                                   "passed": True}
    for path in ("datachannel", "socketio"):
        by = base["by_receiving_path"][path]
        assert by["participants"] == 2 and by["received"] == by["expected"] == 20 and by["closed"] == 0
        for key in (f"to {path}", f"from {path}"):
            latency = base["latency_ms"][key]
            assert latency["n"] == 20 and 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 5000
    assert base["latency_ms"]["all"]["n"] == 40
    assert base["deliveries_by_process"] == {"A": 10, "B": 10, "node A": 10, "node B": 10}
    assert all(v > 0 for v in base["cpu_us_per_delivery"].values())
    assert len(base["latency_p50_by_second_ms"]) == 2  # 10 messages at 5/s
    assert set(base["cpu_pct"]) == set(base["run_queue_wait_pct"]) == {
        "A", "B", "node A", "node B", "redis", "clients", "coordinator", "flood client"}

    flood = report["flood"]
    outcome = flood["flood_client"]
    assert outcome["path"] == "socketio" and outcome["sent"] == 80
    replies = outcome["replies"]
    assert sum(replies.values()) == 80  # one ack per message
    # The sender's bucket (3/s, burst 10) takes a few; everything else is refused rate_limited.
    assert 10 <= replies["accepted"] <= 10 + 3 * 6 and replies["rate_limited"] == 80 - replies["accepted"]
    numbered = 10 + replies["accepted"]
    assert flood["messages"]["numbered"] == 10 and flood["messages"]["flood_numbered"] == replies["accepted"]
    assert flood["messages"]["numbered_in_phase_total"] == numbered
    assert flood["deliveries"] == {"expected": 4 * numbered, "received": 4 * numbered, "lost": 0,
                                   "duplicates": 0}
    assert flood["order_check"]["passed"] and flood["latency_ms"]["all"]["n"] == 40
    assert report["flood_vs_base_p99"] > 0
    assert report["pooled_latency_ms"]["base"]["n"] == report["pooled_latency_ms"]["flood"]["n"] == 40
    assert set(report["pooled_cpu_pct"]["flood"]) == set(base["cpu_pct"])
