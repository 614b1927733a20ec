"""Failover: ``kill -9`` of the SFU node holding a cascaded room's publisher.

Two signaling instances, two real ``relaycast sfu`` processes, real redis-server.  The
publisher and two viewers are on node A, two more viewers on node B (piped from A).
Node A is killed; signaling notices (Socket.IO disconnect), releases A's rooms, closes
B's dead pipe; the clients notice on their own (`loadtest.resilient`: stalled frames,
missing receiver reports) and POST again: the publisher lands on B (which still hosts
the room's edge viewers), A's viewers too; B's viewers are served again either way (their
sessions survive, but with a 1 s stall detector they usually re-POST before the
publisher, whose receiver-report detector needs 2 s, is back).

Nothing here can hang: every wait is bounded, the clients' `stop` is bounded and never
raises, and the node processes are SIGKILLed (process group) by `running_cluster` and, as
a last resort, by the `_no_leftover_nodes` fixture before the event loop is closed.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
import warnings
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from loadtest.resilient import ReconnectingPublisher, ReconnectingViewer
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from signaling.app_keys import ROOMS
from tests.cli_process import killing_leftovers
from tests.cluster import node_of, running_cluster
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY

RECOVERY_BOUND_S = 15.0
"""Generous: client detection (1–2 s) + node loss (≈0.1 s) + new sessions (≈1 s) on 2 cores."""

STOP_BOUND_S = 15.0
"""All clients' `stop` together (each is bounded by about 4 * close_s = 8 s by itself)."""


@pytest.fixture
async def _no_leftover_nodes() -> AsyncIterator[None]:
    """SIGKILL the process group of every node the test left running.  Async on purpose:
    pytest-asyncio finishes an async fixture before it closes the test's event loop, so
    this runs even when closing the loop would hang on a task that never ends."""
    with killing_leftovers() as killed:
        yield
    if killed:
        warnings.warn(f"node processes left running, killed: {killed}", stacklevel=1)


@pytest.mark.usefixtures("_no_leftover_nodes")
async def test_kill_9_of_the_origin_node_mid_stream(redis_server: RedisServer) -> None:
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True,
                                    socket_timeout=5, socket_connect_timeout=5)
    offsets = iter(range(0, 10_000_000, 100_000))
    publisher = ReconnectingPublisher(
        "", STREAM_KEY, lambda: [PatternVideoTrack(320, 180, 15, code="counter", first_code=next(offsets))])
    viewers: list[ReconnectingViewer] = []
    async with running_cluster(redis_server, viewers_per_node=2) as cluster:
        try:
            victim = await cluster.node("node-a", via=cluster.a)
            await cluster.node("node-b", via=cluster.b)
            publisher.url = f"{cluster.a.url}/whip/demo"
            await publisher.start()
            assert publisher.session and await node_of(cluster.a, publisher.session.location) == "node-a"
            for i in range(4):
                svc = (cluster.a, cluster.b)[i % 2]
                viewer = ReconnectingViewer(f"{svc.url}/whep/demo")
                await viewer.start()
                viewers.append(viewer)
                await wait_for(lambda v=viewer: bool(v.frames), 15, "the viewer's first frame", wake=viewer.new_frame)
                await wait_for(lambda n=i + 1: _room_viewers(cluster.a, n), 10, "the load reports")
            placed = [await node_of(svc, v.session.location) for v, svc in zip(viewers, (cluster.a, cluster.b) * 2,
                                                                           strict=True) if v.session]
            assert placed == ["node-a", "node-a", "node-b", "node-b"], placed

            killed = time.monotonic()
            victim.send(signal.SIGKILL)
            for viewer in viewers:  # every viewer plays the new publisher session's frames
                try:
                    await wait_for(lambda v=viewer: v.first_frame_after(killed, 100_000) is not None,
                                   RECOVERY_BOUND_S + 5, "every viewer to receive again", wake=viewer.new_frame)
                except AssertionError:
                    state = [(v.log.attempts, v.log.reasons, v.log.last_error, v.frames[-1:] if v.frames else None,
                              v.session and await node_of(cluster.a if i % 2 == 0 else cluster.b, v.session.location))
                             for i, v in enumerate(viewers)]
                    raise AssertionError(f"viewers (attempts, reasons, last error, last frame, node): {state}; "
                                         f"publisher {publisher.log.reasons} on "
                                         f"{publisher.session and await node_of(cluster.a, publisher.session.location)}") from None
            recovered = [v.first_frame_after(killed, 100_000) - killed for v in viewers]  # type: ignore[operator]
            republished = publisher.log.sessions[-1] - killed
            print(f"kill -9 of the origin: publisher re-published after {republished:.2f} s; viewers "
                  f"receiving again after {', '.join(f'{t:.2f}' for t in recovered)} s "
                  f"(median {statistics.median(recovered):.2f}); reasons {publisher.log.reasons} "
                  f"{[v.log.reasons for v in viewers]}")
            assert max(recovered) <= RECOVERY_BOUND_S, recovered

            async def publisher_on_b() -> bool:  # (a stalled machine may have it re-POST once more)
                session = publisher.session
                return session is not None and await node_of(cluster.a, session.location) == "node-b"

            await wait_for(publisher_on_b, 10, lambda: f"the publisher on node-b ({publisher.log.reasons})")
            # A's viewers had to come back with new sessions (B's may keep theirs: re-piped).
            assert all(len(v.log.sessions) == 2 for v in viewers[:2]), [v.log.reasons for v in viewers]

            # No stale keys: after the TTL nothing of node A is left in Redis.
            await wait_for(lambda: _no_keys(redis, "relaycast:*node-a*"), 10, "node A's keys to expire")
            assert await redis.zscore("relaycast:nodes", "node-a") is None
            assert await redis.hget("relaycast:room:demo", "node") == "node-b"
            assert not await redis.hgetall("relaycast:pipes:demo")  # B is the origin now
        finally:  # bounded (running_cluster kills the nodes next, whatever happened)
            try:
                async with asyncio.timeout(STOP_BOUND_S):  # a belt: each stop() is bounded and never raises
                    await asyncio.gather(*(client.stop() for client in [*viewers, publisher]))
            finally:
                await redis.aclose()


def _room_viewers(svc: Service, n: int) -> bool:
    room = svc.app[ROOMS].get("demo")
    return room is not None and room.viewers == n


async def _no_keys(redis: aioredis.Redis, pattern: str) -> bool:
    return not [k async for k in redis.scan_iter(pattern)]
