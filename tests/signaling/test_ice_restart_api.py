"""ICE restart over HTTP (RFC 9725 §4.3.3): PATCH with a new ice-ufrag/ice-pwd → 200
``application/trickle-ice-sdpfrag`` with the server's new credentials and candidates and a
new ETag; preconditions, malformed restarts and the session record (in memory and in Redis).

The clients here never complete their side of the restart: these tests are about the HTTP
resource; tests/sfu/test_ice_restart.py restarts for real and watches media resume."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis

from loadtest import whip_client
from relaycast.service import Service
from signaling.app_keys import SESSION_SERVICE
from signaling.sessions import Session, ice_credentials
from tests.cluster import Cluster, running_cluster
from tests.cluster import publish as cluster_publish
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY
from tests.sfu.sfu_helpers import publish_pattern
from tests.signaling.whip_helpers import FRAG, STRONG_ETAG, attribute, problem, sdpfrag

AUTH = {"Authorization": f"Bearer {STREAM_KEY}"}
NEW_UFRAG, NEW_PWD = "newUfrag", "aNewIcePasswordOf22chars"
ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")


def restart_frag(offer: str, ufrag: str = NEW_UFRAG, pwd: str = NEW_PWD, **kwargs: object) -> str:
    return sdpfrag(offer, ufrag, pwd, **kwargs)  # type: ignore[arg-type]


def record(svc: Service, location: str) -> Session:
    return svc.app[SESSION_SERVICE].store.sessions[location.rsplit("/", 1)[1]]


async def test_restart_answers_200_with_new_credentials_candidates_and_etag(
        service: Service, http: aiohttp.ClientSession) -> None:
    publisher = await publish_pattern(service, audio=False)
    viewer = await whip_client.view(f"{service.url}/whep/demo", kinds=("video",), http=http)
    try:
        await whip_client.wait_connected(viewer.pc)
        offer = viewer.pc.localDescription.sdp
        assert viewer.etag and STRONG_ETAG.match(viewer.etag)
        resp = await http.patch(viewer.location, data=restart_frag(offer),
                                headers={"Content-Type": FRAG, "If-Match": "*"})
        body = await resp.text()
        assert resp.status == 200, body
        assert resp.content_type == FRAG
        etag = resp.headers["ETag"]
        assert STRONG_ETAG.match(etag) and etag != viewer.etag

        # The body: the server's new ice-ufrag/ice-pwd, the bundle tag's m= section, its
        # candidates (on loopback, as in the answer) and end-of-candidates (RFC 8840 §4.4).
        lines = body.rstrip("\r\n").split("\r\n")
        assert lines[0].startswith("a=ice-ufrag:") and lines[1].startswith("a=ice-pwd:")
        ufrag, pwd = ice_credentials(body)
        assert ufrag and pwd and ICE_CHARS.match(ufrag) and ICE_CHARS.match(pwd)
        assert len(ufrag) >= 4 and len(pwd) >= 22
        old_ufrag, old_pwd = ice_credentials(viewer.answer)
        assert ufrag != old_ufrag and pwd != old_pwd
        assert attribute(body, "group") == attribute(viewer.answer, "group")
        media = [ln for ln in lines if ln.startswith("m=")]
        assert media == [next(ln for ln in viewer.answer.splitlines() if ln.startswith("m="))]
        assert attribute(body, "mid") == attribute(viewer.answer, "mid")
        candidates = [ln for ln in lines if ln.startswith("a=candidate:")]
        assert candidates and all(" 127.0.0.1 " in c for c in candidates)
        assert lines[-1] == "a=end-of-candidates"

        # The record keeps the client's new credentials and the new ETag.
        assert (record(service, viewer.location).remote_ufrag,
                record(service, viewer.location).remote_pwd) == (NEW_UFRAG, NEW_PWD)
        assert record(service, viewer.location).etag == etag

        # The old ETag is stale; with the new credentials a fragment is a trickle again.
        stale = await http.patch(viewer.location, data=sdpfrag(offer, NEW_UFRAG, NEW_PWD),
                                 headers={"Content-Type": FRAG, "If-Match": viewer.etag})
        await problem(stale, 412)
        trickle = await http.patch(viewer.location, data=sdpfrag(offer, NEW_UFRAG, NEW_PWD),
                                   headers={"Content-Type": FRAG, "If-Match": etag})
        assert trickle.status == 204 and await trickle.read() == b""
        assert "ETag" not in trickle.headers

        # A second restart, conditional on the current ETag, gets yet another one.
        again = await http.patch(viewer.location, data=restart_frag(offer, "thirdU", "x" * 22),
                                 headers={"Content-Type": FRAG, "If-Match": etag})
        assert again.status == 200, await again.text()
        assert again.headers["ETag"] not in (etag, viewer.etag)
        assert ice_credentials(await again.text())[0] != ufrag
        assert (await http.get(viewer.location)).status == 204
        assert service.worker.load()["sessions"] == 2
    finally:
        await viewer.close(http)
        await publisher.close(http)


@pytest.mark.parametrize(
    ("name", "headers", "fragment", "status"),
    [
        ("no If-Match", {}, lambda o: restart_frag(o), 428),
        ("stale ETag", {"If-Match": '"stale"'}, lambda o: restart_frag(o), 412),
        ("not a fragment type", {"Content-Type": "application/sdp"}, lambda o: restart_frag(o), 415),
        ("ufrag only", {}, lambda o: re.sub(r"a=ice-pwd:\S+\r\n", "", restart_frag(o)), 400),
        ("short ufrag", {}, lambda o: restart_frag(o, ufrag="abc"), 400),
        ("short pwd", {}, lambda o: restart_frag(o, pwd="tooShort"), 400),
        ("bad ice-char", {}, lambda o: restart_frag(o, ufrag="bad-ufrag"), 400),
        ("bad candidate", {}, lambda o: restart_frag(o, candidate="a=candidate:garbage"), 400),
        ("without the key", {"Authorization": ""}, lambda o: restart_frag(o), 401),
        ("another key", {"Authorization": "Bearer sk_other_" + "y" * 24}, lambda o: restart_frag(o), 403),
    ],
)
async def test_refused_restarts_change_nothing(
        service: Service, http: aiohttp.ClientSession, name: str, headers: dict[str, str],
        fragment, status: int) -> None:  # type: ignore[no-untyped-def]
    """On a connected WHIP session: the refusal, and the session, its record and its media
    stay as they were (RFC 9725 §4.3.3)."""
    publisher = await publish_pattern(service, audio=False)
    try:
        offer = publisher.pc.localDescription.sdp
        before = record(service, publisher.location)
        sent = {"Content-Type": FRAG, "If-Match": "" if name == "no If-Match" else "*", **AUTH, **headers}
        sent = {k: v for k, v in sent.items() if v}  # "" leaves the header out
        await problem(await http.patch(publisher.location, data=fragment(offer), headers=sent), status)
        after = record(service, publisher.location)
        assert (after.etag, after.remote_ufrag, after.remote_pwd) == (
            before.etag, before.remote_ufrag, before.remote_pwd)
        assert service.worker.routers["demo"].live
        assert publisher.pc.connectionState == "connected"
    finally:
        await publisher.close(http)


async def test_whip_restart_with_the_stream_key_and_unknown_session(
        service: Service, http: aiohttp.ClientSession) -> None:
    publisher = await publish_pattern(service, audio=False)
    try:
        offer = publisher.pc.localDescription.sdp
        headers = {"Content-Type": FRAG, "If-Match": publisher.etag or "", **AUTH}
        resp = await http.patch(publisher.location, data=restart_frag(offer), headers=headers)
        assert resp.status == 200, await resp.text()
        assert resp.headers["ETag"] != publisher.etag
        gone = publisher.location.rsplit("/", 1)[0] + "/" + "x" * 32
        await problem(await http.patch(gone, data=restart_frag(offer), headers=headers), 404)
    finally:
        await publisher.close(http)


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[Cluster]:
    async with running_cluster(redis_server) as c:
        yield c


def on(svc_url: str, location: str) -> str:
    return svc_url + urlsplit(location).path


async def test_restart_through_one_instance_is_seen_by_the_other(cluster: Cluster) -> None:
    """Redis mode: the record in Redis takes the new credentials and ETag, so the next PATCH
    works through any instance."""
    await cluster.node("node-a", via=cluster.a)
    redis = aioredis.Redis.from_url(cluster.redis_server.url, decode_responses=True)
    publisher = await cluster_publish(cluster.a)
    viewer = await whip_client.view(f"{cluster.a.url}/whep/demo", kinds=("video",))
    try:
        await whip_client.wait_connected(viewer.pc, timeout=20)
        offer = viewer.pc.localDescription.sdp
        resp = await cluster.http.patch(on(cluster.b.url, viewer.location), data=restart_frag(offer),
                                        headers={"Content-Type": FRAG, "If-Match": "*"})
        assert resp.status == 200, await resp.text()
        etag = resp.headers["ETag"]
        raw = await redis.hget("relaycast:node:node-a:sessions", viewer.location.rsplit("/", 1)[1])
        stored = Session.from_json(raw or "")
        assert stored is not None
        assert (stored.etag, stored.remote_ufrag, stored.remote_pwd) == (etag, NEW_UFRAG, NEW_PWD)
        frag = sdpfrag(offer, NEW_UFRAG, NEW_PWD)
        async with cluster.http.patch(on(cluster.a.url, viewer.location), data=frag,
                                      headers={"Content-Type": FRAG, "If-Match": viewer.etag or ""}) as old:
            assert old.status == 412, "A sees the ETag B issued"
        async with cluster.http.patch(on(cluster.a.url, viewer.location), data=frag,
                                      headers={"Content-Type": FRAG, "If-Match": etag}) as new:
            assert new.status == 204, await new.text()
        # A restart of a session that ended is not written back (no resurrected record).
        async with cluster.http.delete(on(cluster.b.url, viewer.location)) as gone:
            assert gone.status == 200
        assert not await cluster.a.app[SESSION_SERVICE].store.replace(stored)
        assert await redis.hget("relaycast:node:node-a:sessions", stored.id) is None
    finally:
        await viewer.pc.close()
        await publisher.pc.close()
        await redis.aclose()
