"""Cascading end to end: two signaling instances, two real ``relaycast sfu``
node processes and a real redis-server.  The publisher is on node A; viewers beyond
``viewers_per_node`` go to node B, which pulls the room from A over one node pipe and
serves its viewers from it; chat from a viewer on B reaches the publisher on A in order;
the pipe closes when B has no viewers left."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from signaling.app_keys import NAMESPACE_KEY
from tests.chat_client import ChatClient
from tests.cluster import (
    SECRET,
    Cluster,
    frames,
    listed,
    node_of,
    publish,
    room_live,
    running_cluster,
    viewers_are,
)
from tests.node_process import NodeProcess
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY, make_config

NODE_ENV = {"RELAYCAST_PIPE_LINGER_S": "1"}


def room_viewers(svc: Service, node_id: str, room: str = "demo") -> int:
    """Viewers of ``room`` on ``node_id`` as ``svc`` knows them (from load reports)."""
    for node in svc.app[NAMESPACE_KEY].registry.nodes.values():
        if node.node_id == node_id:
            return node.room_viewers(room)
    return -1


async def view(cluster: Cluster, svc: Service, chat: bool = False) -> whip_client.WhipSession:
    viewer = await whip_client.view(f"{svc.url}/whep/demo", chat=chat)
    await whip_client.wait_connected(viewer.pc, timeout=20)
    return viewer


async def pipes(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    return {edge: json.loads(raw) for edge, raw in (await redis.hgetall("relaycast:pipes:demo")).items()}


async def test_viewers_beyond_the_origin_are_served_by_a_second_node(
    redis_server: RedisServer, chat_channels: Any
) -> None:
    env = {**NODE_ENV, "REDIS_URL": redis_server.url}  # chat across nodes through Redis
    sessions: list[whip_client.WhipSession] = []
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with running_cluster(redis_server, viewers_per_node=2) as cluster:
        try:
            await cluster.node("node-a", via=cluster.a, **env)
            await cluster.node("node-b", via=cluster.b, **env)
            publisher = await whip_client.publish(
                f"{cluster.a.url}/whip/demo", STREAM_KEY,
                [PatternVideoTrack(320, 180, 15, code="counter")], chat=True)
            sessions.append(publisher)
            await whip_client.wait_connected(publisher.pc, timeout=20)
            assert await node_of(cluster.a, publisher.location) == "node-a"  # least loaded, then by id
            pub_chat = ChatClient(publisher, chat_channels[publisher.pc])

            # Two viewers fit on the origin (one through each instance) ...
            placed = []
            for n, svc in enumerate((cluster.a, cluster.b), start=1):
                sessions.append(await view(cluster, svc))
                placed.append(await node_of(svc, sessions[-1].location))
                for s in (cluster.a, cluster.b):
                    await wait_for(lambda s=s, n=n: room_viewers(s, "node-a") == n, 10, "the load report")
            # ... the next two go to node B, the first one opening the pipe.
            started = time.monotonic()
            edge_viewer = await view(cluster, cluster.b, chat=True)
            edge_chat = ChatClient(edge_viewer, chat_channels[edge_viewer.pc])
            print(f"first edge viewer connected {(time.monotonic() - started) * 1000:.0f} ms after its POST "
                  "(pipe included)")
            sessions.append(edge_viewer)
            placed.append(await node_of(cluster.b, edge_viewer.location))
            sessions.append(await view(cluster, cluster.a))
            placed.append(await node_of(cluster.a, sessions[-1].location))
            assert placed == ["node-a", "node-a", "node-b", "node-b"]
            records = await pipes(redis)
            assert list(records) == ["node-b"] and records["node-b"]["origin"] == "node-a", records
            assert records["node-b"]["ready"] is True
            assert 0 < await redis.pttl("relaycast:pipes:demo") <= 15000

            # Every viewer, on either node, decodes the publisher's frames in order.
            for viewer in sessions[1:]:
                codes = await frames(viewer, 10)
                assert codes == sorted(codes) and codes[-1] > codes[0], codes
            for svc in (cluster.a, cluster.b):
                await wait_for(lambda s=svc: viewers_are(s, 4), 10, "4 viewers counted on both instances")

            # Chat from the viewer on B reaches the publisher on A, in order, one sequence.
            await edge_chat.first("history")
            for i in range(5):
                edge_chat.chat(f"from B #{i}")
            got = await pub_chat.chats(5, timeout=10)
            assert [m["text"] for m in got] == [f"from B #{i}" for i in range(5)]
            seqs = [m["seq"] for m in got]
            assert seqs == list(range(seqs[0], seqs[0] + 5)), seqs
            pub_chat.chat("from A")
            echoed = await edge_chat.until(lambda ms: [m for m in ms if m.get("text") == "from A"])
            assert echoed[0]["seq"] == seqs[-1] + 1

            # B's viewers leave: after the linger B closes its pipe and A frees its side.
            for viewer in sessions[3:]:
                assert await viewer.close() == 200
            del sessions[3:]
            left = time.monotonic()
            await wait_for(lambda: _no_pipes(redis), 15, "the pipe record to go")
            took = time.monotonic() - left
            await wait_for(lambda: _sessions(redis, "node-a", 3), 10, "node A to end its side of the pipe")
            await wait_for(lambda: _sessions(redis, "node-b", 0), 10, "node B to end the pipe")
            print(f"pipe closed {took:.1f} s after the edge's last viewer left (linger 1 s)")
            codes = await frames(sessions[1], 5)  # the origin's viewers are unaffected
            assert codes == sorted(codes)
        finally:
            await redis.aclose()
            for session in sessions:
                await session.close()


async def outlast_linger(router: Any, linger_s: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Watch an edge's `sfu.router.Router` of a pipe-fed room until it would have ended an
    unwatched pipe, asserting all along that its pipe is still there.

    The Router ends such a pipe on the first of its ticks (every 0.5 s) at least
    ``linger_s`` after the tick that first saw the room without viewers and holders.  The
    wait is counted in the Router's own ticks, not in wall time: it ends on the second tick
    ``linger_s`` or more after the first one observed here, when an unheld pipe's end would
    have been decided and carried out (the publisher slot emptied) — so a stalled event loop
    cannot make it pass early.
    """
    ticks: list[float] = []
    tick = router.tick

    def counted_tick() -> None:
        tick()
        ticks.append(time.monotonic())

    monkeypatch.setattr(router, "tick", counted_tick)

    def linger_passed() -> bool:
        assert router.pipe_fed and router.publisher is not None, "the edge ended the held pipe"
        return sum(1 for t in ticks if t - ticks[0] >= linger_s) >= 2

    await wait_for(linger_passed, linger_s + 30, f"two ticks {linger_s:g} s after the first (the linger)")


async def _no_pipes(redis: aioredis.Redis) -> bool:
    return not await redis.hgetall("relaycast:pipes:demo")


async def _sessions(redis: aioredis.Redis, node_id: str, n: int) -> bool:
    return await redis.hget(f"relaycast:node:{node_id}", "sessions") == str(n)


async def test_llhls_bridge_pulls_a_room_live_on_another_node(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scaled deployment's LL-HLS bridge (an instance with an embedded SFU, node
    ``hls-1``) serves a room whose publisher is on node A: the first HLS request pipes
    the room into ``hls-1``, and the bridge keeps the pipe open (it is no WebRTC viewer)."""
    monkeypatch.setenv("RELAYCAST_HLS_LADDER", "180:300k")

    def on_node_a(room: str, candidates: Any) -> Any:
        return next((n for n in candidates if n.node_id == "node-a"), candidates[0])

    config = make_config(embedded_sfu=False, redis_url=redis_server.url, node_secret=SECRET)
    bridge_config = make_config(redis_url=redis_server.url, node_secret=SECRET)
    bridge_config = replace(bridge_config, sfu=replace(bridge_config.sfu, node_id="hls-1", pipe_linger_s=1.0))
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    node = NodeProcess("", "node-a", SECRET)
    publisher = None
    async with (aiohttp.ClientSession() as http, Service(config, placement=on_node_a) as a,
                Service(bridge_config, placement=on_node_a) as h):
        try:
            node.signaling_url = a.url
            await node.start()
            await wait_for(lambda: {"node-a", "hls-1"} <= listed(a) and {"node-a", "hls-1"} <= listed(h),
                           10, "both nodes listed everywhere")
            publisher = await publish(a)
            assert await node_of(a, publisher.location) == "node-a"
            await wait_for(lambda: room_live(h), 10, "the room live on the bridge's instance")

            body = ""

            async def multivariant() -> bool:
                nonlocal body
                async with http.get(f"{h.url}/hls/demo/index.m3u8") as resp:
                    body = await resp.text()
                    return resp.status == 200

            await wait_for(multivariant, 30, "the bridge's multivariant playlist")
            assert body.startswith("#EXTM3U"), body
            records = await pipes(redis)
            assert records["hls-1"]["origin"] == "node-a" and records["hls-1"]["ready"], records
            media = next(line for line in body.splitlines() if line and not line.startswith("#"))
            blocking = media + ("&" if "?" in media else "?") + "_HLS_msn=0&_HLS_part=1"
            async with http.get(f"{h.url}/hls/demo/{blocking}") as resp:  # until the part exists
                assert resp.status == 200
                assert "#EXT-X-PART:" in await resp.text()
            # No viewer on hls-1, but the bridge holds the pipe past the edge's linger.
            assert h.worker is not None
            await outlast_linger(h.worker.routers["demo"], bridge_config.sfu.pipe_linger_s, monkeypatch)
            assert "hls-1" in await pipes(redis)
        finally:
            await redis.aclose()
            if publisher is not None:
                await publisher.close()
            await node.close()
