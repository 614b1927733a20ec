"""Helpers for Redis-mode cluster tests: two in-process signaling instances (embedded SFU
off) on one redis-server, real ``relaycast sfu`` node processes, aiortc clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from loadtest import whip_client
from loadtest.pattern import read_code
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service
from signaling.app_keys import NAMESPACE_KEY, SESSION_SERVICE
from tests.node_process import NodeProcess
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY, make_config

SECRET = "node-secret-for-redis-tests"


class Cluster:
    def __init__(self, redis: RedisServer, a: Service, b: Service, http: aiohttp.ClientSession) -> None:
        self.redis_server, self.a, self.b, self.http = redis, a, b, http
        self.nodes: list[NodeProcess] = []

    async def node(self, node_id: str, via: Service, **env: str) -> NodeProcess:
        node = NodeProcess(via.url, node_id, SECRET, **env)
        self.nodes.append(node)
        await node.start()
        for svc in (self.a, self.b):  # both instances see it (B through Redis)
            await wait_for(lambda s=svc: node_id in listed(s), 10, f"{node_id} listed")
        return node

    async def status(self, svc: Service, path: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{svc.url}{path}") as resp:
            return resp.status, await resp.json(content_type=None)


def listed(svc: Service) -> set[str]:
    return {n.node_id for n in svc.app[NAMESPACE_KEY].registry.nodes.values()}


@asynccontextmanager
async def running_cluster(redis: RedisServer, **config: Any) -> AsyncIterator[Cluster]:
    """Two signaling instances on ``redis`` (``config``: `SignalingConfig` overrides);
    node processes started with `Cluster.node` are killed on exit."""
    cfg = make_config(embedded_sfu=False, redis_url=redis.url, node_secret=SECRET, **config)
    async with aiohttp.ClientSession() as http, Service(cfg) as a, Service(cfg) as b:
        c = Cluster(redis, a, b, http)
        try:
            yield c
        finally:
            for node in c.nodes:  # all gone at once (SIGKILL, no await in between), then reaped
                node.kill()
            for node in c.nodes:
                await node.close()


async def frames(session: whip_client.WhipSession, count: int, timeout: float = 30) -> list[int]:
    """The frame counters of the next ``count`` decoded video frames."""
    track = next(t.receiver.track for t in session.pc.getTransceivers() if t.kind == "video")
    codes: list[int] = []

    async def read() -> None:
        while len(codes) < count:
            code = read_code(await track.recv())
            if code is not None:
                codes.append(code)

    await asyncio.wait_for(read(), timeout)
    return codes


async def publish(svc: Service) -> whip_client.WhipSession:
    pub = await whip_client.publish(
        f"{svc.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(320, 180, 15, code="counter"), ToneAudioTrack()]
    )
    await whip_client.wait_connected(pub.pc, timeout=20)
    return pub


async def room_live(svc: Service) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/api/rooms/demo") as resp:
        return bool((await resp.json())["live"])


async def viewers_are(svc: Service, n: int) -> bool:
    """``GET /api/rooms/demo`` on ``svc`` counts ``n`` viewers (all nodes)."""
    async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/api/rooms/demo") as resp:
        return (await resp.json())["viewers"] == n


async def node_of(svc: Service, location: str) -> str | None:
    """The node id the WHIP/WHEP session at ``location`` is on, as signaling instance ``svc``
    finds its record (in Redis mode any instance does)."""
    record = await svc.app[SESSION_SERVICE].store.get(location.rsplit("/", 1)[1])
    node = svc.app[NAMESPACE_KEY].registry.nodes.get(record.node_sid) if record else None
    return node.node_id if node else None


