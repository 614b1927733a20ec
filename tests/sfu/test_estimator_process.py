"""Viewers' bandwidth estimation in its own process (sfu.estimator_link / sfu.estimator_main):
a real estimator process, real shared memory, feedback built by the SFU's own transport-cc
recorder from arrivals on a simulated path."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from sfu import probe
from sfu.bandwidth import BandwidthEstimator
from sfu.estimator_link import EstimatorLink, RemoteEstimator
from sfu.send_history import SHARED_SIZE, SharedSendHistory
from sfu.twcc import TwccRecorder
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(60)


async def _feed(estimators: list[BandwidthEstimator | RemoteEstimator], seconds: float,
                delay_s: float = 0.03) -> None:
    """300 packets/s of 1,100 bytes for ``seconds`` (real time), every one arriving
    ``delay_s`` later; one feedback packet every 50 ms to each estimator."""
    recorders = [TwccRecorder(sender_ssrc=7) for _ in estimators]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(15):
            now_us = int(time.monotonic() * 1e6)
            for estimator, recorder in zip(estimators, recorders, strict=True):
                recorder.record(estimator.next_sequence(1100), now_us + int(delay_s * 1e6), 1)
        await asyncio.sleep(0.05)
        for estimator, recorder in zip(estimators, recorders, strict=True):
            for packet in recorder.build_feedback():
                estimator.on_transport_feedback(packet)


def _shm_names() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").is_dir() else set()


async def test_feedback_is_applied_in_the_estimator_process_like_in_this_one() -> None:
    link = EstimatorLink()
    try:
        remote = link.open(1_000_000)
        local = BandwidthEstimator(initial_bps=1_000_000)
        assert isinstance(remote, RemoteEstimator)
        await _feed([remote, local], 2.0)
        await wait_for(lambda: remote.feedback_packets == local.feedback_packets, 5,
                       lambda: f"the process's count {remote.feedback_packets} = {local.feedback_packets}")
        await wait_for(lambda: remote.reported_received == local.reported_received, 5,
                       "every reported packet")
        assert remote.source == local.source == "transport-cc"
        # the same feedback, applied ~ms apart: the same estimate (AIMD growth differs by
        # the time between the two applications only)
        assert abs(remote.estimate_bps - local.estimate_bps) <= 0.03 * local.estimate_bps, (
            remote.estimate_bps, local.estimate_bps)
        assert remote.estimate_bps > 1_000_000  # it grew: not the initial value
        assert link.pid is not None and link.pid != os.getpid()
        cmdline = " ".join(psutil.Process(link.pid).cmdline())
        assert "sfu.estimator_main" in cmdline
        remote.stats()  # asks for a fresh snapshot
        stats = await wait_for(lambda: (s := remote.stats()).get("feedback_packets") and "rtt_ms" in s and s,
                               5, "the process's stats")
        assert stats["process"] == "estimator" and stats["invalid_feedback"] == 0
        assert stats["reported_received"] == local.reported_received
    finally:
        await link.close()


async def test_a_probe_is_paced_by_the_process_and_sent_here() -> None:
    link = EstimatorLink()
    sent: list[tuple[float, int]] = []
    try:
        remote = link.open(500_000)
        assert isinstance(remote, RemoteEstimator)

        def pad(size: int) -> bool:
            sent.append((time.monotonic(), size))
            remote.next_probe_sequence(size)
            return True

        remote.set_padding_sender(pad)
        await _feed([remote], 1.0)
        await wait_for(lambda: remote.source == "transport-cc", 5, "feedback applied")
        remote.probe(2_000_000)
        await wait_for(lambda: len(sent) >= probe.MIN_CLUSTER_PACKETS, 5,
                       lambda: f"probe padding, {len(sent)} so far")
        await _feed([remote], 0.6)
        span = sent[-1][0] - sent[0][0]
        # paced over the cluster (40 ms, its padding due a pace interval ahead), not in one burst
        assert probe.CLUSTER_DURATION_S / 2 <= span <= 0.5, span
        assert remote.padding_packets == len(sent)
        stats = await wait_for(lambda: (s := remote.stats()).get("probe") and s, 5, "stats")
        assert stats["probe"]["clusters"] >= 1
    finally:
        await link.close()


async def test_when_the_process_dies_estimation_goes_on_here() -> None:
    link = EstimatorLink()
    try:
        remote = link.open(1_000_000)
        assert isinstance(remote, RemoteEstimator)
        await _feed([remote], 1.0)
        await wait_for(lambda: remote.feedback_packets > 0, 5, "feedback applied")
        last = remote.estimate_bps
        assert link.pid is not None
        os.kill(link.pid, signal.SIGKILL)
        await wait_for(lambda: link.failed, 5, "the link to notice")
        assert not remote.remote
        assert abs(remote.estimate_bps - last) <= 0.05 * last  # it goes on from there
        before = remote.feedback_packets
        await _feed([remote], 0.5)
        assert remote.feedback_packets > before  # applied here, at once
        assert remote.source == "transport-cc"
        assert isinstance(link.open(1_000_000), BandwidthEstimator)  # new ones are local
    finally:
        await link.close()


async def test_close_stops_the_process_and_frees_the_shared_memory() -> None:
    before = _shm_names()
    link = EstimatorLink()
    remote = link.open(1_000_000)
    await wait_for(lambda: link.running, 10, "the process")
    pid = link.pid
    created = _shm_names() - before
    assert created  # one block
    assert isinstance(remote, RemoteEstimator)
    remote.close()
    await link.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (_shm_names() & created)


async def test_a_closed_estimators_late_packets_never_reach_the_next_owner_of_its_slot() -> None:
    link = EstimatorLink()
    try:
        first = link.open(1_000_000)
        assert isinstance(first, RemoteEstimator)
        number = first.next_sequence  # what a consumer holds
        for _ in range(5):
            number(1000)
        first.close()
        second = link.open(1_000_000)
        assert isinstance(second, RemoteEstimator) and second.slot == first.slot
        assert number(1000) == 5  # the closed one goes on in its own copy …
        assert second.next_sequence(1000) == 0  # … the new owner starts empty
    finally:
        await link.close()


async def test_disabled_or_without_a_loop_estimators_are_local() -> None:
    link = EstimatorLink(enabled=False)
    assert isinstance(link.open(1_000_000), BandwidthEstimator)
    await link.close()
    assert link.pid is None


def test_a_shared_history_reads_what_the_writer_numbered() -> None:
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(create=True, size=SHARED_SIZE)
    try:
        writer = SharedSendHistory(block.buf[:SHARED_SIZE], reset=True)
        tags: list[int] = []
        reader = SharedSendHistory(block.buf[:SHARED_SIZE], on_cluster=tags.append)
        for k in range(10):
            writer.next_sequence(100 + k)
        reader.cluster = 3  # the estimator side starts a probe cluster …
        writer.set_tag(tags[-1])  # … the forwarding side tags what it numbers next
        writer.next_sequence(500)
        assert reader.next_seq == 11 and reader.slot(3) >= 0
        assert reader.bytes_since(0) == (sum(range(100, 110)) + 500, 11)
        assert reader.bytes_since(10, 3) == (500, 1)
        writer.detach()
        writer.next_sequence(1)
        assert reader.next_seq == 11
        reader.release()
    finally:
        block.close()
        block.unlink()
