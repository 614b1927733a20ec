"""The fan-out harness works end to end (a functional test of the benchmark, not a timing test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import whip_client
from loadtest.fanout import FanoutOptions, run_fanout
from loadtest.report import summarize_collapsed
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from loadtest.subscriber import LightSubscriber, SeqCounter, SubscriberPool
from tests.polling import wait_for
from tests.services import STREAM_KEY


def _options(tmp_path: Path, mode: str, counts: list[int]) -> FanoutOptions:
    return FanoutOptions(
        counts=counts, relay_counts=counts, mode=mode, seconds=3.0, settle=1.0, baseline_seconds=1.0,
        width=320, height=180, decode_every=1, max_decoders=1, probes=2, out=tmp_path)


async def test_fanout_forward_harness_reports_sane_figures(tmp_path: Path) -> None:
    results = await run_fanout(_options(tmp_path, "forward", [2]))
    saved = json.loads(Path(results["json_path"]).read_text())
    step = saved["forward"]["steps"][0]
    assert step["n"] == 2 and step["joined"] == 2 and step["join_failed"] == 0
    assert step["forwarded_packets"] > 0
    assert step["loss_pct"] is not None and step["loss_pct"] <= 5.0
    assert step["fps_median"] > 10  # the publisher sends 30 fps; generous for a loaded machine
    assert step["latency_samples"] > 0 and 0 < step["latency_p50_ms"] < 5000
    assert step["join_decoded_samples"] == 1 and step["join_decoded_p50_ms"] > 0
    assert step["join_probes"] == 2 and step["join_probe_failed"] == 0 and step["join_probe_p95_ms"] > 0
    assert step["sfu_cpu_pct"] > 0 and step["us_per_packet"] > 0
    assert step["sfu_rss_mb"] > 10
    assert step["publisher"]["video_kbps"] > 100
    assert saved["forward"]["baseline"]["sfu_rss_mb"] > 10
    assert "forward_max_n_at_targets" in saved["summary"]


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2 or 0 not in __import__("os").sched_getaffinity(0),
                    reason="--pin-sfu needs CPU 0 and another")
async def test_pin_sfu_gives_the_forwarding_process_cpu_0_and_the_rest_the_others(tmp_path: Path) -> None:
    import os

    mine = set(os.sched_getaffinity(0))
    opts = _options(tmp_path, "forward", [2])
    opts.pin_sfu, opts.probes = True, 0
    results = await run_fanout(opts)
    step = results["forward"]["steps"][0]
    assert step["forwarded_packets"] > 0 and step["estimator_cpu_pct"] >= 0
    pinned = step["pinned"]
    assert pinned["forwarding"] == [0]
    assert pinned["load_generator"] and 0 not in pinned["load_generator"]
    assert pinned["estimators"] and 0 not in pinned["estimators"]  # the viewers' estimator process
    assert set(os.sched_getaffinity(0)) == mine  # this process (the test) is as it was


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / ".git").exists(), reason="needs a git checkout")
async def test_server_tree_serves_the_other_checkouts_product(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--server-tree``: the baseline's SFU, not this checkout's, under the same load generator."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    tree = tmp_path / "baseline"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), "HEAD"],
                   check=True, capture_output=True, timeout=60)
    try:
        marker = tmp_path / "imported-from"
        with (tree / "sfu" / "__init__.py").open("a") as init:  # the baseline says where it ran from
            init.write("\nimport os as _os\nif _os.environ.get('RELAYCAST_TEST_MARKER'):\n"
                       "    open(_os.environ['RELAYCAST_TEST_MARKER'], 'w').write(__file__)\n")
        monkeypatch.setenv("RELAYCAST_TEST_MARKER", str(marker))
        opts = _options(tmp_path / "out", "forward", [1])
        opts.probes, opts.server_tree = 0, tree
        results = await run_fanout(opts)
        assert results["forward"]["steps"][0]["forwarded_packets"] > 0
        assert Path(marker.read_text()).resolve() == (tree / "sfu" / "__init__.py").resolve()
        assert results["source"]["commit"] and "sfu/__init__.py" in results["source"]["modified"]
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                       capture_output=True, timeout=60)


async def test_fanout_relay_baseline_decodes_and_reencodes(tmp_path: Path) -> None:
    results = await run_fanout(_options(tmp_path, "relay", [1]))
    step = results["relay"]["steps"][0]
    assert step["n"] == 1 and step["forwarded_packets"] > 0
    assert step["latency_samples"] > 0  # the capture-time code survived decode + re-encode
    assert step["fps_median"] > 5


async def test_lossy_subscriber_is_repaired_by_nack(service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast receive path NACKs gaps; the SFU answers with RTX; decoding stays clean."""
    original = LightSubscriber._on_raw
    seen = {"video": 0}

    def lossy(self: LightSubscriber, data: bytes, arrival_us: int) -> None:
        if self._pts.get(data[1] & 0x7F) == ("video", False):
            seen["video"] += 1
            if seen["video"] % 29 == 0:
                return  # drop it, as a full socket buffer would
        original(self, data, arrival_us)

    monkeypatch.setattr(LightSubscriber, "_on_raw", lossy)
    pub = await whip_client.publish(f"{service.url}/whip/demo", STREAM_KEY,
                                    [PatternVideoTrack(320, 180, 30), ToneAudioTrack()])
    pool = SubscriberPool()
    try:
        await whip_client.wait_connected(pub.pc)
        await pool.join(f"{service.url}/whep/demo", [True])
        sub = pool.subscribers[0]
        assert sub.error is None and sub.fast_path
        assert (await pool.wait_media(15))["ready"] == 1
        await wait_for(lambda: sub.video.late >= 3, 10, "a few dropped packets to be repaired")
        assert sub.nacks_sent >= 3
        assert sub.video.late >= 3  # repaired packets arrived after newer ones
        assert sub.video.expected - sub.video.received <= 2  # at most the in-flight drops remain
        assert sub.decoder is not None and sub.decoder.decoded > 10
        assert sub.decoder.unreadable == 0  # never decoded across a gap
    finally:
        await pool.close()
        await pub.close()


@pytest.mark.parametrize(
    "seqs, expected, received, late, duplicates",
    [
        ([1, 2, 3], 3, 3, 0, 0),
        ([1, 3, 2], 3, 3, 1, 0),  # reordered / repaired
        ([1, 2, 2], 2, 2, 0, 1),  # duplicate
        ([65534, 65535, 0, 1], 4, 4, 0, 0),  # wrap-around
        ([10, 14], 5, 2, 0, 0),  # three lost
        ([10, 5, 11], 2, 2, 0, 0),  # older than the first: ignored
    ],
)
def test_seq_counter(seqs: list[int], expected: int, received: int, late: int, duplicates: int) -> None:
    counter = SeqCounter()
    for seq in seqs:
        counter.add(seq)
    assert (counter.expected, counter.received, counter.late, counter.duplicates) == (
        expected, received, late, duplicates)


def test_collapsed_stack_summary() -> None:
    text = "main (a.py:1);send (b.py:2) 30\nmain (a.py:1);protect (c.py:3) 10\nbad line\n"
    summary = summarize_collapsed(text)
    assert summary["self"][0] == (75.0, "send (b.py:2)")
    assert (100.0, "main (a.py:1)") in summary["inclusive"]


async def test_fanout_with_simulcast_and_rate_limited_viewers_reports_each_class(tmp_path: Path) -> None:
    """The issue-13 benchmark shape, small: a 3-layer simulcast publisher, one of two viewers
    behind a 300 kbit/s link; each class is reported with the picture size its viewers end on.
    (How fast a limited viewer moves down is asserted where the SFU can be watched:
    tests/sfu/test_simulcast_*.py, tests/e2e/test_adaptive_netns.py.)"""
    opts = _options(tmp_path, "forward", [2])
    opts.width, opts.height = 640, 360
    opts.simulcast, opts.limited_fraction, opts.limited_bps = True, 0.5, 300_000
    opts.settle, opts.seconds, opts.probes = 4.0, 3.0, 0
    results = await run_fanout(opts)
    step = results["forward"]["steps"][0]
    classes = step["classes"]
    assert classes["unlimited"]["n"] == 1 and classes["limited"]["n"] == 1, classes
    assert set(classes["unlimited"]["sizes"]) == {"640x360"}, classes
    (limited_size,) = classes["limited"]["sizes"]
    assert limited_size in {"640x360", "320x180", "160x90"}, classes
    assert classes["limited"]["fps_median"] > 5, classes  # a harness test: quality is measured elsewhere
    assert {"q_kbps", "h_kbps", "f_kbps"} <= set(step["publisher"]), step["publisher"]
