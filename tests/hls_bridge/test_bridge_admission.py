"""Bridge admission: no bridge starts where the machine lacks idle CPU, and it says why."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from hls_bridge.admission import Admission
from hls_bridge.bridge import HlsConfig
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from tests.polling import wait_for
from tests.services import STREAM_KEY


async def publish_live(svc) -> whip_client.WhipSession:  # type: ignore[no-untyped-def]
    """A WHIP publisher of room demo, once the SFU reports the room live."""
    pub = await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY,
                                    [PatternVideoTrack(320, 180, 15)])
    try:
        await whip_client.wait_connected(pub.pc)
        await wait_for(lambda: svc.hls.direct.room("demo") and svc.hls.direct.room("demo").live,
                       10, "the room to be live")
    except BaseException:
        await pub.pc.close()
        raise
    return pub


class FakeMachine:
    def __init__(self) -> None:
        self.now = 0.0
        self.idle = 0.0

    def run(self, seconds: float, idle_cores: float) -> None:
        self.now += seconds
        self.idle += seconds * idle_cores


def test_admission_averages_idle_cores_over_its_window() -> None:
    machine = FakeMachine()
    admission = Admission(0.5, clock=lambda: machine.now, idle_seconds=lambda: machine.idle)
    assert admission.idle_cores is None and admission.refusal("a") is None  # no measure yet
    for _ in range(10):
        machine.run(0.5, 0.2)
        admission.sample()
    assert abs(admission.idle_cores - 0.2) < 1e-9
    reason = admission.refusal("a")
    assert reason is not None and "0.20 idle cores" in reason and "needs 0.5" in reason
    assert admission.refused == 1 and admission.to_json()["refusals"] == {"a": reason}
    # The machine calms down: after the window (3 s) only the idle samples count.
    for _ in range(8):
        machine.run(0.5, 1.5)
        admission.sample()
    assert admission.idle_cores > 1.0
    assert admission.refusal("a") is None and admission.to_json()["refusals"] == {}
    assert Admission(0, clock=lambda: machine.now, idle_seconds=lambda: 0.0).refusal("b") is None


async def test_bridge_without_cpu_is_refused_with_a_reason(service, http) -> None:
    svc = service
    assert svc.hls is not None
    svc.hls.config = HlsConfig(min_idle_cores=10_000.0)  # more idle cores than any machine has
    svc.hls.admission.min_idle_cores = 10_000.0
    pub = await publish_live(svc)
    try:
        svc.hls.admission.sample()
        await wait_for(lambda: svc.hls.admission.idle_cores is not None, 5, "an idle-CPU measure",
                       interval_s=0.1)
        async with http.get(f"{svc.url}/hls/demo/index.m3u8") as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 503 and resp.headers["Retry-After"] == "10"
        assert "idle cores" in body["detail"] and "RELAYCAST_HLS_MIN_IDLE_CORES" in body["detail"]
        assert svc.hls.bridges == {}

        async def reported() -> dict | None:
            async with http.get(f"{svc.url}/api/hls") as resp:
                (node,) = (await resp.json())["nodes"]
            return node if node["admission"]["refused"] >= 1 else None

        node = await wait_for(reported, 10, "the refusal in /api/hls")
        assert "idle cores" in node["admission"]["refusals"]["demo"]
        async with http.get(f"{svc.url}/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        (sample,) = families["relaycast_hls_bridges_refused"].samples
        assert sample.value >= 1
    finally:
        await pub.pc.close()


async def test_request_started_bridge_runs_when_cpu_allows(service, http: aiohttp.ClientSession) -> None:
    svc = service
    svc.hls.admission.min_idle_cores = 0.0
    pub = await publish_live(svc)
    try:
        async with http.get(f"{svc.url}/hls/demo/index.m3u8") as resp:
            assert resp.status == 200, await resp.text()
        assert svc.hls.admission.to_json()["refusals"] == {}
    finally:
        await pub.pc.close()
