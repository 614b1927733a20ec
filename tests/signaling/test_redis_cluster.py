"""Redis mode end to end: two signaling instances (in-process, embedded SFU off) sharing
one redis-server, and real ``relaycast sfu`` node processes connected to instance A.

* a WHIP publish through B lands on A's node (B knows it only through Redis) and an
  aiortc WHEP viewer through A decodes it;
* Redis stopped and restarted mid-stream: media keeps flowing, /readyz flips to 503
  and back, /healthz stays 200, WHEP answers 503 + Retry-After meanwhile and works again;
* a node killed with SIGKILL (connection drops) or frozen with SIGSTOP (heartbeats stop)
  is forgotten within 5 s by both instances, its rooms released, no stale keys.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from loadtest import whip_client
from relaycast.service import Service
from signaling.app_keys import ROOMS, SESSION_SERVICE
from tests.cluster import (
    SECRET,
    Cluster,
    frames,
    listed,
    publish,
    room_live,
    running_cluster,
    viewers_are,
)
from tests.node_process import NodeProcess
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY, make_config


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    async with running_cluster(redis_server) as c:
        yield c


# ---------------------------------------------------------------------------------
async def test_publish_through_b_plays_through_a(cluster: Cluster) -> None:
    await cluster.node("node-a", via=cluster.a)
    assert (await cluster.status(cluster.b, "/readyz"))[0] == 200

    pub = await publish(cluster.b)  # B has no node connected: placement and RPC via Redis
    viewer = None
    try:
        redis = aioredis.Redis.from_url(cluster.redis_server.url, decode_responses=True)
        assert await redis.hget("relaycast:room:demo", "node") == "node-a"
        await redis.aclose()
        for svc in (cluster.a, cluster.b):
            await wait_for(lambda s=svc: room_live(s), 10, "the room to be live on both instances")

        viewer = await whip_client.view(f"{cluster.a.url}/whep/demo")
        await whip_client.wait_connected(viewer.pc, timeout=20)
        codes = await frames(viewer, 10)
        assert codes == sorted(codes) and codes[-1] > codes[0]
        await wait_for(lambda: viewers_are(cluster.b, 1), 10, "B to count the viewer")
    finally:
        if viewer is not None:
            assert await viewer.close() == 200
        assert await pub.close() == 200  # DELETE through B, RPC to A's node through Redis
    for svc in (cluster.a, cluster.b):
        await wait_for(lambda s=svc: _not(room_live(s)), 10, "the room to end everywhere")


async def _not(value: Any) -> bool:
    return not await value


async def test_redis_outage_mid_stream(cluster: Cluster) -> None:
    await cluster.node("node-a", via=cluster.a)
    pub = await publish(cluster.a)
    viewer = await whip_client.view(f"{cluster.b.url}/whep/demo")  # via Redis to A's node
    late = None
    try:
        await whip_client.wait_connected(viewer.pc, timeout=20)
        before = await frames(viewer, 5)

        cluster.redis_server.stop()
        stopped = time.monotonic()
        for svc in (cluster.a, cluster.b):
            await wait_for(lambda s=svc: _status_is(cluster, s, "/readyz", 503), 10, "/readyz 503")
            took = time.monotonic() - stopped
            status, body = await cluster.status(svc, "/readyz")
            assert "Redis" in body["status"] and body["redis"] == "unavailable", body
            assert (await cluster.status(svc, "/healthz"))[0] == 200
        print(f"/readyz answered 503 {took:.2f} s after Redis stopped")
        # Existing media does not need Redis.
        during = await frames(viewer, 15)
        assert during[0] > before[-1] and during[-1] > during[0]
        for svc in (cluster.a, cluster.b):
            async with cluster.http.post(f"{svc.url}/whep/demo", data="v=0\r\n",
                                         headers={"Content-Type": "application/sdp"}) as resp:
                assert resp.status == 503, await resp.text()
                assert resp.headers["Retry-After"] == str(svc.config.retry_after_s)
                assert resp.content_type == "application/problem+json"
                assert "Redis" in (await resp.json())["detail"]
            async with cluster.http.post(f"{svc.url}/whip/demo", data="v=0\r\n",
                                         headers={"Content-Type": "application/sdp",
                                                  "Authorization": f"Bearer {STREAM_KEY}"}) as resp:
                assert resp.status == 503 and "Retry-After" in resp.headers

        restarted = time.monotonic()
        cluster.redis_server.start()  # same port, empty: everything is rebuilt from heartbeats
        for svc in (cluster.a, cluster.b):
            await wait_for(lambda s=svc: _status_is(cluster, s, "/readyz", 200), 30, "/readyz 200 again")
        print(f"/readyz 200 on both instances {time.monotonic() - restarted:.2f} s after Redis restarted")
        after = await frames(viewer, 5)
        assert after[0] > during[-1]

        late = await whip_client.view(f"{cluster.b.url}/whep/demo")  # B → Redis → A's node again
        await whip_client.wait_connected(late.pc, timeout=20)
        assert len(await frames(late, 5)) == 5
        print(f"new WHEP viewer through B playing {time.monotonic() - restarted:.2f} s after the restart")
    finally:
        for session in (late, viewer, pub):
            if session is not None:
                await session.close()


async def _status_is(cluster: Cluster, svc: Service, path: str, status: int) -> bool:
    return (await cluster.status(svc, path))[0] == status


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_dead_node_is_forgotten_within_5_s(cluster: Cluster, how: str) -> None:
    """SIGKILL: the Socket.IO connection drops.  SIGSTOP: the connection stays open but the
    load reports (heartbeats) stop, so only the 4 s heartbeat TTL can tell."""
    victim = await cluster.node("node-victim", via=cluster.a)
    redis = aioredis.Redis.from_url(cluster.redis_server.url, decode_responses=True)
    pub = None
    try:
        pub = await _publish_on(cluster, "node-victim")
        await cluster.node("node-spare", via=cluster.a)  # stays; must stay listed
        for svc in (cluster.a, cluster.b):
            await wait_for(lambda s=svc: room_live(s), 10, "the room to be live")

        started = time.monotonic()
        victim.send(signal.SIGKILL if how == "SIGKILL" else signal.SIGSTOP)
        times = {}
        for name, svc in (("A", cluster.a), ("B", cluster.b)):
            await wait_for(lambda s=svc: "node-victim" not in listed(s), 10, f"{name} to forget the node")
            times[f"{name} forgot the node"] = time.monotonic() - started
        await wait_for(lambda: _gone(redis, "relaycast:room:demo"), 10, "the room to be released")
        times["room released in Redis"] = time.monotonic() - started
        for svc in (cluster.a, cluster.b):
            await wait_for(lambda s=svc: _not(room_live(s)), 10, "the room to be not live")
        times["room not live on A and B"] = time.monotonic() - started
        print(f"{how}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
        assert max(times.values()) <= 5.0, times
        assert "node-spare" in listed(cluster.a) and "node-spare" in listed(cluster.b)

        # No stale keys: nothing of the victim is left.
        assert sorted([k async for k in redis.scan_iter("relaycast:*victim*")]) == []
        assert await redis.zscore("relaycast:nodes", "node-victim") is None
        # The room can be published again, on the surviving node.
        await pub.pc.close()
        pub = await _publish_on(cluster, "node-spare")
    finally:
        await redis.aclose()
        if pub is not None:
            await pub.close()
        if how == "SIGSTOP":
            victim.send(signal.SIGKILL)


async def _publish_on(cluster: Cluster, node_id: str) -> whip_client.WhipSession:
    pub = await publish(cluster.b)
    redis = aioredis.Redis.from_url(cluster.redis_server.url, decode_responses=True)
    try:
        assert await redis.hget("relaycast:room:demo", "node") == node_id
    finally:
        await redis.aclose()
    return pub


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


@pytest.mark.parametrize("node_urls", ["A", "A,B"])
async def test_room_state_survives_signaling_restarts(redis_server: RedisServer, node_urls: str) -> None:
    """B (no node) restarts: the new process knows the live room from Redis at once.  Then A,
    the node's instance, restarts on its port: a node that knows only A comes back to it (the
    room is re-asserted by its first load report); a node that knows A and B moves to B at
    once and the room is never released.  Media flows throughout."""
    config = make_config(embedded_sfu=False, redis_url=redis_server.url, node_secret=SECRET)
    a, b = Service(config), Service(config)
    await a.start()
    await b.start()
    ports = {"A": _port(a), "B": _port(b)}
    urls = ",".join(f"http://127.0.0.1:{ports[x]}" for x in node_urls.split(","))
    node = NodeProcess(urls, "node-a", SECRET)
    sessions: list[whip_client.WhipSession] = []
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await node.start()
        await wait_for(lambda: "node-a" in listed(b), 10, "B to see the node")
        sessions.append(await publish(b))
        await wait_for(lambda: room_live(b), 10, "the room to be live")

        await b.stop()
        b = Service(replace(config, port=ports["B"]))
        await b.start()
        assert b.app[ROOMS].rooms["demo"].live  # restored from Redis during startup
        viewer = await whip_client.view(f"{b.url}/whep/demo")
        sessions.append(viewer)
        await whip_client.wait_connected(viewer.pc, timeout=20)
        before = await frames(viewer, 3)

        # Every removal of the room's key (release: DEL; TTL: expired), however short the
        # gap before it is placed again, through Redis keyspace notifications.
        await redis.config_set("notify-keyspace-events", "Kgx")
        watch = redis.pubsub()
        await watch.subscribe("__keyspace@0__:relaycast:room:demo")
        confirmed = await watch.get_message(timeout=5)
        assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
        released = asyncio.Event()

        async def watch_room() -> None:
            async for message in watch.listen():
                if message["type"] == "message" and message["data"] in ("del", "expired"):
                    released.set()

        watcher = asyncio.create_task(watch_room())
        restarted = time.monotonic()
        await a.stop()
        a = Service(replace(config, port=ports["A"]))
        await a.start()
        back_on = a if node_urls == "A" else b
        await wait_for(lambda: "node-a" in listed(back_on), 15, "the node to register again")
        print(f"{node_urls}: node registered again {time.monotonic() - restarted:.2f} s after A began to stop")
        for svc in (a, b):
            await wait_for(lambda s=svc: room_live(s), 5, "the room to be live on both instances")
        assert await redis.hget("relaycast:room:demo", "node") == "node-a"
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await watch.aclose()
        if node_urls == "A,B":
            assert not released.is_set(), "the room was released while its node moved"
            assert await b.app[SESSION_SERVICE].store.get(viewer.location.rsplit("/", 1)[1])  # no node_lost
        after = await frames(viewer, 5)
        assert after[0] > before[-1]
        late = await whip_client.view(f"{a.url}/whep/demo")
        sessions.append(late)
        await whip_client.wait_connected(late.pc, timeout=20)
        assert len(await frames(late, 3)) == 3
    finally:
        await redis.aclose()
        for session in sessions:
            await session.pc.close()
        await node.close()
        await a.stop()
        await b.stop()


def _port(svc: Service) -> int:
    return int(svc.url.rsplit(":", 1)[1])
