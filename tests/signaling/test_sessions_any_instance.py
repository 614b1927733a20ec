"""Session records in Redis: a WHIP/WHEP session opened through one signaling instance is
trickled to and deleted through another (no load-balancer stickiness needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from loadtest import whip_client
from tests.cluster import Cluster, publish, running_cluster, viewers_are
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY

FRAG = b"a=end-of-candidates\r\n"


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    async with running_cluster(redis_server) as c:
        yield c


def on(svc_url: str, location: str) -> str:
    """The same session resource, addressed through another signaling instance."""
    return svc_url + urlsplit(location).path


async def test_patch_and_delete_through_the_other_instance(cluster: Cluster) -> None:
    await cluster.node("node-a", via=cluster.a)
    redis = aioredis.Redis.from_url(cluster.redis_server.url, decode_responses=True)
    records = "relaycast:node:node-a:sessions"
    publisher = await publish(cluster.a)
    viewer = await whip_client.view(f"{cluster.a.url}/whep/demo")
    try:
        await whip_client.wait_connected(viewer.pc, timeout=20)
        await wait_for(lambda: viewers_are(cluster.b, 1), 10, "the viewer counted on B")
        viewer_id = viewer.location.rsplit("/", 1)[1]
        assert set(await redis.hkeys(records)) == {viewer_id, publisher.location.rsplit("/", 1)[1]}
        assert 0 < await redis.pttl(records) <= 4000, "the records expire with the node's keys"

        # Trickle through B: B finds the record A wrote and reaches the node.
        headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": viewer.etag or ""}
        async with cluster.http.patch(on(cluster.b.url, viewer.location), data=FRAG, headers=headers) as resp:
            assert resp.status == 204, await resp.text()
        async with cluster.http.patch(on(cluster.b.url, viewer.location), data=FRAG,
                                      headers={**headers, "If-Match": '"stale"'}) as resp:
            assert resp.status == 412, "B checks the ETag A issued"

        # DELETE through B ends it on the node and forgets it everywhere.
        async with cluster.http.delete(on(cluster.b.url, viewer.location)) as resp:
            assert resp.status == 200, await resp.text()
        assert viewer_id not in await redis.hkeys(records)
        await wait_for(lambda: viewers_are(cluster.a, 0), 10, "the viewer gone from the node")
        for svc in (cluster.a, cluster.b):
            async with cluster.http.delete(on(svc.url, viewer.location)) as resp:
                assert resp.status == 404

        # The publisher's session too (WHIP session requests carry the stream key).
        async with cluster.http.delete(on(cluster.b.url, publisher.location),
                                       headers={"Authorization": f"Bearer {STREAM_KEY}"}) as resp:
            assert resp.status == 200, await resp.text()
        assert await redis.hkeys(records) == []
        await wait_for(lambda: _not_live(cluster), 10, "the room to end")
    finally:
        await viewer.pc.close()
        await publisher.pc.close()
        await redis.aclose()


async def _not_live(cluster: Cluster) -> bool:
    async with cluster.http.get(f"{cluster.a.url}/api/rooms/demo") as resp:
        return not (await resp.json())["live"]
