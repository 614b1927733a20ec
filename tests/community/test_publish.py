"""Publishing to channels through the real service: WHIP with a channel's stream key or an
access JWT carrying a publish grant (`community.publish.ChannelPublishAuthority`), and live
sessions ended when their key is revoked or rotated or their owner is suspended."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiortc import RTCPeerConnection
from sqlalchemy import select

from community.app import COMMUNITY
from community.models import Channel, SigningKey, StreamKey, User
from community.publish import publish_authority_of
from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from signaling.app_keys import ROOMS, SESSION_SERVICE
from signaling.publish_auth import key_digest
from tests.cli_process import CliProcess
from tests.cluster import publish as cluster_publish
from tests.cluster import running_cluster
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import STREAM_KEY, access_token, make_channel, make_config
from tests.signaling.whip_helpers import SDP, new_offer, problem


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    async with Service(make_config()) as service:
        yield service


@pytest.fixture
async def offer() -> AsyncIterator[Any]:
    pcs: list[RTCPeerConnection] = []

    async def make() -> str:
        return await new_offer(pcs)

    yield make
    for pc in pcs:
        await pc.close()


async def post_whip(http: aiohttp.ClientSession, svc: Service, channel: str, bearer: str,
                    offer: str) -> aiohttp.ClientResponse:
    resp = await http.post(f"{svc.url}/whip/{channel}", data=offer,
                           headers={"Content-Type": SDP, "Authorization": f"Bearer {bearer}"})
    await resp.read()
    return resp


def challenge_error(resp: aiohttp.ClientResponse) -> str | None:
    value = resp.headers["WWW-Authenticate"]
    assert value.startswith('Bearer realm="relaycast"')
    return value.split('error="', 1)[1].rstrip('"') if 'error="' in value else None


async def go_live(svc: Service, channel: str, bearer: str) -> whip_client.WhipSession:
    session = await whip_client.publish(f"{svc.url}/whip/{channel}", bearer,
                                        [PatternVideoTrack(320, 180, 15, code="counter")])
    await whip_client.wait_connected(session.pc)
    return session


async def key_rows(svc: Service, channel: str) -> list[StreamKey]:
    async with svc.app[COMMUNITY].db.session() as session:
        rows = await session.execute(select(StreamKey).join(Channel, Channel.id == StreamKey.channel_id)
                                     .where(Channel.name == channel))
        return list(rows.scalars())


async def test_a_channel_key_goes_live_and_records_its_use(svc: Service) -> None:
    key = await make_channel(svc.app, "alice")
    session = await go_live(svc, "alice", key)
    try:
        await wait_for(lambda: (r := svc.app[ROOMS].get("alice")) is not None and r.live, 10,
                       "channel alice live")
        authority = publish_authority_of(svc.app)
        assert authority is not None
        await authority.flush()
        [row] = await key_rows(svc, "alice")
        assert row.last_used_at is not None
        assert row.key_hash != key and key not in (row.hint or "")
    finally:
        await session.close()


async def test_key_refusals(svc: Service, http: aiohttp.ClientSession, offer: Any) -> None:
    alice = await make_channel(svc.app, "alice")
    bob = await make_channel(svc.app, "bob")
    sdp = await offer()
    resp = await post_whip(http, svc, "alice", bob, sdp)  # a real key, of another channel
    await problem(resp, 403)
    assert challenge_error(resp) == "insufficient_scope"
    resp = await post_whip(http, svc, "alice", "sk_" + "n" * 32, sdp)  # nobody's key
    await problem(resp, 401)
    assert challenge_error(resp) == "invalid_token"
    resp = await post_whip(http, svc, "nobody", alice, sdp)  # no such channel
    await problem(resp, 404)
    whep = await http.post(f"{svc.url}/whep/nobody", data=sdp, headers={"Content-Type": SDP})
    await problem(whep, 404)
    # revoked through the API: 401 from then on
    [row] = await key_rows(svc, "alice")
    owner = {"Authorization": "Bearer " + await access_token(svc.app, "alice")}
    deleted = await http.delete(f"{svc.url}/api/channels/alice/keys/{row.id}", headers=owner)
    assert deleted.status == 204, await deleted.text()
    resp = await post_whip(http, svc, "alice", alice, sdp)
    await problem(resp, 401)
    assert challenge_error(resp) == "invalid_token"
    # POST /whip (the room from the key, as the RTMP ingest publishes): the same reason
    by_key = await http.post(f"{svc.url}/whip", data=sdp,
                             headers={"Content-Type": SDP, "Authorization": f"Bearer {alice}"})
    body = await problem(by_key, 401)
    assert "revoked" in body["detail"]
    assert svc.app[SESSION_SERVICE].store.sessions == {}


async def test_access_token_with_a_publish_grant(svc: Service, http: aiohttp.ClientSession,
                                                 offer: Any) -> None:
    await make_channel(svc.app, "alice")
    await make_channel(svc.app, "bob")
    token = await access_token(svc.app, "alice")  # grants.publish == ["alice"]
    resp = await post_whip(http, svc, "bob", token, await offer())
    await problem(resp, 403)
    assert challenge_error(resp) == "insufficient_scope"
    resp = await post_whip(http, svc, "alice", token, await offer())
    assert resp.status == 201, await resp.text()
    location = svc.url + resp.headers["Location"]
    # Only the same user's token ends the session: bob's is refused.
    bob_token = await access_token(svc.app, "bob")
    other = await http.delete(location, headers={"Authorization": f"Bearer {bob_token}"})
    await problem(other, 403)
    fresh = await access_token(svc.app, "alice")
    ended = await http.delete(location, headers={"Authorization": f"Bearer {fresh}"})
    assert ended.status == 200
    assert svc.app[SESSION_SERVICE].store.sessions == {}


async def test_an_expired_access_token_is_401(svc: Service, http: aiohttp.ClientSession, offer: Any) -> None:
    await make_channel(svc.app, "alice")
    async with svc.app[COMMUNITY].db.session() as session:
        signing = (await session.execute(select(SigningKey).where(SigningKey.retired_at.is_(None)))).scalars().first()
    assert signing is not None
    valid = jwt.decode(await access_token(svc.app, "alice"), options={"verify_signature": False})
    now = int(time.time())
    claims = {**valid, "iat": now - 3600, "nbf": now - 3600, "exp": now - 600}
    expired = jwt.encode(claims, signing.secret.encode("ascii"), algorithm="HS256",
                         headers={"kid": signing.kid})
    resp = await post_whip(http, svc, "alice", expired, await offer())
    await problem(resp, 401)
    assert challenge_error(resp) == "invalid_token"


async def closed(pc: RTCPeerConnection) -> bool:
    return pc.connectionState in ("closed", "failed")


@pytest.mark.parametrize("how", ["revoke", "rotate"])
async def test_revoking_or_rotating_the_key_in_use_ends_the_broadcast(
        svc: Service, http: aiohttp.ClientSession, how: str) -> None:
    key = await make_channel(svc.app, "alice")
    session = await go_live(svc, "alice", key)
    try:
        assert (await http.get(session.location)).status == 204
        [row] = await key_rows(svc, "alice")
        owner = {"Authorization": "Bearer " + await access_token(svc.app, "alice")}
        base = f"{svc.url}/api/channels/alice/keys/{row.id}"
        if how == "revoke":
            resp = await http.delete(base, headers=owner)
            assert resp.status == 204
        else:
            resp = await http.post(base + "/rotate", headers=owner)
            assert resp.status == 201
            new_key = (await resp.json())["key"]
        assert (await http.get(session.location)).status == 404  # ended before the answer
        await wait_for(lambda: closed(session.pc), 20, "the publisher's peer connection to close")
        if how == "rotate":
            replacement = await go_live(svc, "alice", new_key)
            await replacement.close()
    finally:
        await session.close()


async def test_suspending_the_owner_ends_the_broadcast_and_refuses_the_key(
        svc: Service, http: aiohttp.ClientSession, offer: Any) -> None:
    key = await make_channel(svc.app, "alice")
    session = await go_live(svc, "alice", key)
    try:
        await make_channel(svc.app, "boss")
        async with svc.app[COMMUNITY].db.transaction() as db:
            (await db.execute(select(User).where(User.username == "boss"))).scalar_one().role = "admin"
            alice_id = (await db.execute(select(User.id).where(User.username == "alice"))).scalar_one()
        boss = {"Authorization": "Bearer " + await access_token(svc.app, "boss")}
        resp = await http.post(f"{svc.url}/api/admin/users/{alice_id}/suspend", json={"reason": "spam"},
                               headers=boss)
        assert resp.status == 200, await resp.text()
        assert (await http.get(session.location)).status == 404
        resp = await post_whip(http, svc, "alice", key, await offer())
        await problem(resp, 403)
    finally:
        await session.close()


async def test_keys_are_never_logged(svc: Service, http: aiohttp.ClientSession,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await make_channel(svc.app, "alice")
    owner = {"Authorization": "Bearer " + await access_token(svc.app, "alice")}
    created = await http.post(f"{svc.url}/api/channels/alice/keys", json={"label": "obs"}, headers=owner)
    assert created.status == 201
    body = await created.json()
    key = body["key"]
    session = await go_live(svc, "alice", key)
    await http.delete(session.location, headers={"Authorization": f"Bearer {key}"})
    await session.close()
    rotated = await http.post(f"{svc.url}/api/channels/alice/keys/{body['id']}/rotate", headers=owner)
    assert rotated.status == 201
    new_key = (await rotated.json())["key"]
    listed = await (await http.get(f"{svc.url}/api/channels/alice/keys", headers=owner)).text()
    assert key not in listed and new_key not in listed
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage()
        assert key not in text and new_key not in text, record


async def serve_output(data_dir: str, *args: str) -> tuple[CliProcess, dict[str, str]]:
    process = CliProcess("serve", RELAYCAST_ICE_GATHER="127.0.0.1", RELAYCAST_RTMP_PORT="0",
                         RELAYCAST_SRT_PORT="0")
    await process.launch("serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", data_dir, *args)
    await process.wait_line("RTMP:", 60)  # the last line
    shown = {}
    for line in process.lines:
        label, _, value = line.strip().partition(": ")
        shown[label.strip()] = value.strip()
    return process, shown


async def test_serve_prints_a_working_demo_channel_and_the_first_run_admin(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    process, first = await serve_output(str(tmp_path / "data"))
    try:
        whip = first["WHIP"]
        assert whip.endswith("/whip/demo") and first["WHEP"].endswith("/whep/demo")
        assert first["broadcast"].endswith("/broadcast/demo") and first["watch"].endswith("/watch/demo")
        key = first["stream key (Bearer token)"]
        assert key.startswith("sk_")
        admin = first["admin login"]
        assert admin.startswith("admin / ")
        login = await http.post(whip.replace("/whip/demo", "/api/users/login"),
                                json={"username": "admin", "password": admin.split(" ")[2]})
        assert login.status == 200, await login.text()
        resp = await http.post(whip, data=b"not an offer",
                               headers={"Content-Type": SDP, "Authorization": f"Bearer {key}"})
        assert resp.status == 400, await resp.text()  # admitted; the offer is refused
        rtmp = first["RTMP"].split()[0]
        assert re.fullmatch(r"rtmp://127\.0\.0\.1:\d+/live", rtmp), first["RTMP"]
        if shutil.which("ffmpeg"):  # the printed RTMP URL takes the printed key
            ffmpeg = await asyncio.create_subprocess_exec(
                "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30",
                "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-f", "flv", f"{rtmp}/{key}",
                stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(ffmpeg.communicate(), 30)
            assert ffmpeg.returncode == 0, err.decode()
        srt = first["SRT"]
        assert re.fullmatch(r"srt://127\.0\.0\.1:\d+\?streamid=#!::r=demo,m=publish,s=STREAM_KEY", srt), srt
        if shutil.which("ffmpeg"):  # the printed SRT URL with the printed key: admitted in the handshake
            ffmpeg = await asyncio.create_subprocess_exec(
                "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30",
                "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-f", "mpegts",
                srt.replace("STREAM_KEY", key), stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(ffmpeg.communicate(), 30)
            assert ffmpeg.returncode == 0, err.decode()
    finally:
        assert await process_stop(process) == 0
    # The same data directory again, no key given: a fresh key, the old one still valid,
    # and no admin password (the account exists).
    process, second = await serve_output(str(tmp_path / "data"))
    try:
        assert "admin login" not in second
        new_key = second["stream key (Bearer token)"]
        assert new_key.startswith("sk_") and new_key != key
        for bearer in (key, new_key):
            resp = await http.post(second["WHIP"], data=b"not an offer",
                                   headers={"Content-Type": SDP, "Authorization": f"Bearer {bearer}"})
            assert resp.status == 400, await resp.text()
    finally:
        assert await process_stop(process) == 0
    assert list((tmp_path / "data").iterdir()), "the database lives in --data-dir"


async def process_stop(process: CliProcess) -> int:
    process.send(signal.SIGTERM)
    try:
        return await process.wait(20)
    finally:
        await process.close()


async def test_revoking_through_another_instance_ends_the_broadcast(redis_server: RedisServer) -> None:
    """Redis mode: the publisher is on a node of instance A; the key is revoked through B
    (both share the database): B finds the session in Redis and closes it on the node."""
    async with running_cluster(redis_server) as cluster:
        await cluster.node("node-a", via=cluster.a)
        publisher = await cluster_publish(cluster.a)
        try:
            async with cluster.b.app[COMMUNITY].db.session() as session:
                key_id = (await session.execute(select(StreamKey.id).where(
                    StreamKey.key_hash == key_digest(STREAM_KEY)))).scalar_one()
            owner = {"Authorization": "Bearer " + await access_token(cluster.b.app, "demo")}
            async with cluster.http.delete(f"{cluster.b.url}/api/channels/demo/keys/{key_id}",
                                           headers=owner) as resp:
                assert resp.status == 204, await resp.text()
            async with cluster.http.get(publisher.location) as resp:
                assert resp.status == 404
            await wait_for(lambda: closed(publisher.pc), 20, "the publisher's peer connection to close")
        finally:
            await publisher.pc.close()


async def test_many_channels_live_at_once_each_with_its_own_audience(svc: Service,
                                                                    http: aiohttp.ClientSession) -> None:
    """Three broadcasters on one node: three live rooms and streams, the directory lists all
    three, and a viewer counts in the room it watches only."""
    names = ["ann", "ben", "cat"]
    sessions = [await go_live(svc, name, await make_channel(svc.app, name)) for name in names]
    viewer = None
    try:
        def live() -> bool:
            rooms = svc.app[ROOMS]
            return all((r := rooms.get(n)) is not None and r.live for n in names)

        await wait_for(live, 15, "three live channels")

        async def directory() -> list[str] | None:
            async with http.get(f"{svc.url}/api/streams", params={"live": "true"}) as resp:
                assert resp.status == 200
                found = sorted(s["channel"] for s in (await resp.json())["streams"])
            return found if found == names else None

        await wait_for(directory, 15, "the three streams in the directory")
        viewer = await whip_client.view(f"{svc.url}/whep/ben")
        await whip_client.wait_connected(viewer.pc)
        rooms = svc.app[ROOMS]
        await wait_for(lambda: rooms.get("ben").viewers == 1, 10, "ben's viewer counted")
        assert rooms.get("ann").viewers == 0 and rooms.get("cat").viewers == 0
    finally:
        if viewer is not None:
            await viewer.close()
        for session in sessions:
            await session.close()
