"""``relaycast serve --workers N``: SFU worker child processes under one command.

Units: the worker count (``auto`` from the CPU affinity), the settings a worker child is
handed (`SfuConfig.to_env`), and `relaycast.workers.Supervisor` restarting and stopping
small real child processes.  End to end, with real ``relaycast sfu`` worker processes and
aiortc WHIP/WHEP clients on 127.0.0.1: a room published on one worker and watched on the
other through a node pipe, a killed worker restarted while its clients reconnect, and the
serve process's SIGTERM (or SIGKILL) taking every child with it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from common.config import ConfigError
from loadtest import whip_client
from loadtest.resilient import ReconnectingPublisher, ReconnectingViewer
from loadtest.sources import PatternVideoTrack
from relaycast import workers
from relaycast.service import Service
from relaycast.workers import ChildSpec, Supervisor, WorkersConfig
from sfu.config import SfuConfig
from sfu.direct import DirectTransport
from signaling.app_keys import CASCADE, NAMESPACE_KEY
from tests.cluster import frames, listed, node_of, publish, viewers_are
from tests.polling import wait_for
from tests.serve_process import ServeProcess
from tests.services import STREAM_KEY, make_config
from tests.test_cluster_cli import alive

WORKER_IDS = {"sfu-1-w1", "sfu-1-w2"}


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("text", "cpus", "count"),
    [("auto", 1, 1), ("auto", 2, 1), ("auto", 16, 15), (" AUTO ", 4, 3), ("1", 16, 1), ("3", 2, 3)],
)
def test_worker_count(text: str, cpus: int, count: int) -> None:
    assert workers.parse_workers(text, cpus=cpus) == count


@pytest.mark.parametrize("text", ["0", "-2", "two", "", "257", "1.5"])
def test_a_bad_worker_count_names_the_setting(text: str) -> None:
    with pytest.raises(ConfigError, match="RELAYCAST_WORKERS"):
        WorkersConfig.from_env({"RELAYCAST_WORKERS": text or " "})


def test_auto_counts_the_cpus_this_process_may_use() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert workers.cpus_available() == expected
    assert WorkersConfig.from_env({}).count == max(1, (expected or 1) - 1)


def test_the_flag_beats_the_environment_and_signaling_only_runs_no_worker() -> None:
    assert WorkersConfig.from_env({"RELAYCAST_WORKERS": "4"}, "2").count == 2
    assert WorkersConfig.from_env({"RELAYCAST_WORKERS": "4"}).count == 4
    assert WorkersConfig.from_env({"RELAYCAST_WORKERS": "auto"}, embedded_sfu=False).count == 1
    with pytest.raises(ConfigError, match="--workers.*embedded SFU"):
        WorkersConfig.from_env({}, "2", embedded_sfu=False)


def test_viewers_per_worker_default() -> None:
    assert workers.viewers_per_worker(SfuConfig()) == (500 - 10) // 2
    assert workers.viewers_per_worker(SfuConfig(max_sessions=3, publisher_reserve=2)) == 1


def test_a_worker_child_gets_the_serve_settings_back() -> None:
    sfu = SfuConfig(ice_gather=("127.0.0.1",), ice_announce="192.0.2.7", max_sessions=40, publisher_reserve=3,
                    connect_timeout_s=2.5, node_id="edge-9", pipe_linger_s=0.5, chat_rate=1.5, role="hls",
                    estimator_process=False, adaptive=False)
    assert SfuConfig.from_env(sfu.to_env()) == sfu
    assert SfuConfig.from_env({}).estimator_process  # on by default
    [spec] = workers.sfu_worker_specs(1, "http://127.0.0.1:9", "s" * 20, sfu, env={"RELAYCAST_WORKERS": "8"})
    assert SfuConfig.from_env(spec.env) == replace(sfu, node_id="edge-9-w1", role="media")
    assert spec.env["RELAYCAST_NODE_SECRET"] == "s" * 20 and "s" * 20 not in " ".join(spec.argv)
    assert "RELAYCAST_WORKERS" not in spec.env
    assert spec.argv[-2:] == ["--parent-pid", str(os.getpid())]


@pytest.mark.parametrize("role", ["edge", "HLS-1"])
def test_a_bad_node_role_is_refused(role: str) -> None:
    with pytest.raises(ConfigError, match="RELAYCAST_NODE_ROLE"):
        SfuConfig.from_env({"RELAYCAST_NODE_ROLE": role})


async def test_an_hls_node_alone_takes_no_session_and_is_not_ready(http: aiohttp.ClientSession) -> None:
    """``RELAYCAST_NODE_ROLE=hls`` (the cluster's ``hls-1``): registered, never placed on."""
    config = make_config()
    async with Service(replace(config, sfu=replace(config.sfu, role="hls"))) as svc:
        async with http.get(f"{svc.url}/readyz") as resp:
            assert resp.status == 503
            assert await resp.json() == {"status": "no SFU node", "nodes": 1, "node_ids": ["sfu-1"]}
        with pytest.raises(whip_client.WhipError) as refused:
            await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(160, 90, 5)])
        assert refused.value.status == 503
        assert svc.worker is not None and svc.worker.load()["sessions"] == 0


# ------------------------------------------------------------------ Supervisor
def python_child(name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-c", code], dict(os.environ))


async def test_a_crashing_child_is_restarted_with_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relaycast.workers")
    supervisor = Supervisor([python_child("crash", "raise SystemExit(3)")], restarts_per_minute=2,
                            backoff_s=0.01)
    await supervisor.start()
    try:
        # Two starts; the second exit waits for the 60 s window instead of a third start.
        await wait_for(lambda: "2 starts in the last 60 s" in caplog.text, 15,
                       lambda: f"the restart bound to be logged:\n{caplog.text}")
        assert supervisor.restarts == 1
        assert caplog.text.count("exited with status 3") == 2
        assert "SFU worker crash restarted" in caplog.text
    finally:
        started = time.monotonic()
        await supervisor.stop()  # does not wait out the 60 s
    assert time.monotonic() - started < 5
    assert supervisor.restarts == 1


async def test_a_killed_child_is_replaced_and_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = python_child("stubborn", "import signal, time, pathlib; signal.signal(signal.SIGTERM, "
                            f"signal.SIG_IGN); pathlib.Path({str(ready)!r}).touch(); time.sleep(120)")
    supervisor = Supervisor([python_child("sleeper", "import time; time.sleep(120)"), stubborn],
                            backoff_s=0.01, stop_timeout_s=1.0)
    await supervisor.start()
    try:
        first = supervisor.pids()["sleeper"]
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: supervisor.pids().get("sleeper") not in (None, first), 15,
                       "the sleeper to be restarted")
        await wait_for(ready.exists, 15, "the stubborn child to ignore SIGTERM")
    finally:
        pids = list(supervisor.pids().values())
        await supervisor.stop()
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)


# ------------------------------------------------------------------ end to end, in process
@pytest.fixture
async def two_workers(request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    """The service with two SFU worker processes; ``indirect`` params: config overrides."""
    overrides = getattr(request, "param", {})
    async with Service(make_config(**overrides), workers=2) as svc:
        yield svc


@pytest.mark.parametrize("two_workers", [{"viewers_per_node": 1}], indirect=True)
async def test_a_room_published_on_one_worker_is_watched_on_the_other(two_workers: Service) -> None:
    svc = two_workers
    assert svc.supervisor is not None and set(svc.supervisor.pids()) == WORKER_IDS
    assert listed(svc) == {"sfu-1", *WORKER_IDS}  # this process's node: the LL-HLS bridge's
    [bridge] = [n for n in svc.app[NAMESPACE_KEY].registry.nodes.values() if n.node_id == "sfu-1"]
    assert bridge.role == "hls"
    sessions = []
    try:
        sessions.append(await publish(svc))
        origin = await node_of(svc, sessions[0].location)
        assert origin in WORKER_IDS
        for count in (1, 2):
            viewer = await whip_client.view(f"{svc.url}/whep/demo")
            sessions.append(viewer)
            await whip_client.wait_connected(viewer.pc, timeout=20)
            await wait_for(lambda n=count: viewers_are(svc, n), 15, f"{count} viewers counted")
        placed = [await node_of(svc, s.location) for s in sessions[1:]]
        assert placed == [origin, *(WORKER_IDS - {origin})], placed  # 1 viewer per worker
        for viewer in sessions[1:]:
            codes = await frames(viewer, 10)
            assert codes == sorted(codes) and codes[-1] > codes[0], codes
        assert svc.hls is not None and svc.hls.popularity is not None
        assert svc.hls.popularity() == {"demo": 2}  # viewers over all workers
        # The LL-HLS node is no viewer's edge, but the room can be piped into it.
        assert await svc.app[CASCADE].pull_into("demo", "sfu-1")
        assert svc.worker is not None
        bridge_node = DirectTransport(svc.worker)
        await wait_for(lambda: (info := bridge_node.room("demo")) is not None and info.live, 15,
                       "the room live on the LL-HLS node")
    finally:
        for session in sessions:
            await session.close()


async def test_a_killed_worker_is_restarted_and_its_clients_reconnect(
    two_workers: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relaycast.workers")
    svc = two_workers
    assert svc.supervisor is not None
    offsets = iter(range(0, 10_000_000, 100_000))
    publisher = ReconnectingPublisher(
        f"{svc.url}/whip/demo", STREAM_KEY,
        lambda: [PatternVideoTrack(320, 180, 15, code="counter", first_code=next(offsets))])
    viewer = ReconnectingViewer(f"{svc.url}/whep/demo")
    try:
        await publisher.start()
        await viewer.start()
        await wait_for(lambda: bool(viewer.frames), 15, "the viewer's first frame")
        assert publisher.session is not None and viewer.session is not None
        origin = await node_of(svc, publisher.session.location)
        assert origin in WORKER_IDS and await node_of(svc, viewer.session.location) == origin
        pid = svc.supervisor.pids()[origin]

        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: svc.supervisor.pids().get(origin) not in (None, pid)  # type: ignore[union-attr]
                       and origin in listed(svc), 30, f"{origin} restarted and registered again")
        await wait_for(lambda: viewer.first_frame_after(killed, 100_000) is not None, 30,
                       lambda: f"the viewer to play the re-published stream ({viewer.log})")
        assert f"SFU worker {origin} (pid {pid}) exited with status -9; restarting" in caplog.text
        assert f"SFU worker {origin} restarted" in caplog.text
        assert len(viewer.log.sessions) >= 2 and len(publisher.log.sessions) >= 2
    finally:
        await viewer.stop()
        await publisher.stop()


# ------------------------------------------------------------------ the serve command
async def start_serve_with_two_workers() -> tuple[ServeProcess, dict[str, int]]:
    """``relaycast serve --workers 2 --port 0`` and its workers' pids by node id, once every
    worker registered (the line it prints then)."""
    serve = ServeProcess("--workers", "2")
    await serve.start()
    line = await serve.wait_line("SFU workers:", 60)
    pids = {m[0]: int(m[1]) for m in re.findall(r"(\S+) pid (\d+)", line)}
    assert set(pids) == WORKER_IDS, serve.log()
    for pid in pids.values():
        assert _parent_of(pid) == serve.pid
    return serve, pids


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


async def test_sigterm_to_serve_stops_every_worker() -> None:
    serve, pids = await start_serve_with_two_workers()
    try:
        assert await serve.stop(30) == 0, serve.log()
        await wait_for(lambda: not any(alive(p) for p in pids.values()), 5, "no worker left")
    finally:
        await serve.close()


async def test_the_workers_die_with_a_killed_serve_process() -> None:
    serve, pids = await start_serve_with_two_workers()
    try:
        assert serve.proc is not None
        serve.proc.kill()  # no chance to stop its children: the kernel does (PR_SET_PDEATHSIG)
        await serve.proc.wait()
        await wait_for(lambda: not any(alive(p) for p in pids.values()), 10,
                       lambda: f"the workers {pids} to die with their parent")
    finally:
        await serve.close()
