"""``relaycast sfu`` drains on SIGTERM: it reports ``draining``, refuses new sessions (503 +
Retry-After at the WHIP/WHEP edge), keeps the existing ones forwarding until they end or
``RELAYCAST_DRAIN_S`` passes, then exits with status 0."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from loadtest import whip_client
from loadtest.pattern import read_code
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from signaling.app_keys import NAMESPACE_KEY
from tests.node_process import NodeProcess
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config

SECRET = "node-secret-for-drain-tests"


@pytest.fixture
async def signaling() -> AsyncIterator[Service]:
    async with Service(make_config(embedded_sfu=False, node_secret=SECRET)) as svc:
        yield svc


async def next_codes(session: whip_client.WhipSession, count: int) -> list[int]:
    track = next(t.receiver.track for t in session.pc.getTransceivers() if t.kind == "video")
    codes: list[int] = []
    while len(codes) < count:
        code = read_code(await asyncio.wait_for(track.recv(), 20))
        if code is not None:
            codes.append(code)
    return codes


async def live_node(svc: Service, drain_s: str) -> tuple[NodeProcess, whip_client.WhipSession, whip_client.WhipSession]:
    node = await NodeProcess(svc.url, "drainer", SECRET, RELAYCAST_DRAIN_S=drain_s).start()
    pub = await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY,
                                    [PatternVideoTrack(320, 180, 15, code="counter"), ToneAudioTrack()])
    await whip_client.wait_connected(pub.pc, timeout=20)
    viewer = await whip_client.view(f"{svc.url}/whep/demo")
    await whip_client.wait_connected(viewer.pc, timeout=20)
    await next_codes(viewer, 3)
    return node, pub, viewer


async def sigterm_and_check_refusal(svc: Service, node: NodeProcess, viewer: whip_client.WhipSession) -> None:
    router = svc.app[NAMESPACE_KEY].registry
    node.send(signal.SIGTERM)
    await node.wait_line("draining: 2 sessions", 10)
    await wait_for(lambda: any(n.draining for n in router.nodes.values()), 5, "the draining load report")
    with pytest.raises(whip_client.WhipError) as refused:
        await whip_client.view(f"{svc.url}/whep/demo")
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == str(svc.config.retry_after_s)
    assert "draining" in str(refused.value.problem)
    before = await next_codes(viewer, 1)
    later = await next_codes(viewer, 10)  # still forwarding while draining
    assert later[0] > before[0] and later == sorted(later)


async def test_drain_ends_when_the_sessions_end(signaling: Service) -> None:
    node, pub, viewer = await live_node(signaling, "60")
    try:
        await sigterm_and_check_refusal(signaling, node, viewer)
        started = time.monotonic()
        assert await viewer.close() == 200
        assert node.proc is not None and node.proc.returncode is None  # the publisher is still on
        assert await pub.close() == 200
        assert await node.wait(30) == 0
        print(f"drained node exited {time.monotonic() - started:.2f} s after its last session ended")
        assert any("drained" in line for line in node.lines), node.log()
        await wait_for(lambda: not signaling.app[NAMESPACE_KEY].registry.nodes, 5, "the node to leave")
    finally:
        await viewer.pc.close()
        await pub.pc.close()
        await node.close()


async def test_drain_deadline_closes_what_is_left(signaling: Service) -> None:
    node, pub, viewer = await live_node(signaling, "3")
    try:
        started = time.monotonic()
        await sigterm_and_check_refusal(signaling, node, viewer)
        assert await node.wait(30) == 0
        took = time.monotonic() - started
        print(f"node exited {took:.2f} s after SIGTERM (deadline 3 s)")
        assert took >= 3.0
        assert any("closing 2 sessions" in line for line in node.lines), node.log()
        # Signaling forgot the node's sessions; the session resources are gone.
        await wait_for(lambda: not signaling.app[NAMESPACE_KEY].registry.nodes, 5, "the node to leave")
        async with aiohttp.ClientSession() as http, http.delete(viewer.location) as resp:
            assert resp.status == 404
    finally:
        await viewer.pc.close()
        await pub.pc.close()
        await node.close()
