"""Nothing is lost on a crash: users, channels, stream keys, streams, follows and
notifications written through the API survive ``kill -9`` of ``relaycast serve`` (SQLite in
WAL mode commits durably for a process crash) and work after the restart."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from tests.polling import wait_for
from tests.serve_process import ServeProcess

PASSWORD = "correct horse battery"


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, f"{resp.method} {resp.url}: {resp.status} {await resp.text()}"
    return await resp.json() if resp.content_type == "application/json" else None


async def _register(http: aiohttp.ClientSession, base: str, name: str) -> str:
    async with http.post(f"{base}/api/users/register", json={"username": name, "password": PASSWORD}) as r:
        return str((await _json(r, 201))["access_token"])


async def _login(http: aiohttp.ClientSession, base: str, name: str) -> str:
    async with http.post(f"{base}/api/users/login", json={"username": name, "password": PASSWORD}) as r:
        return str((await _json(r, 200))["access_token"])


async def _publish(base: str, channel: str, key: str) -> tuple[RTCPeerConnection, int]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(VideoStreamTrack())
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/whip/{channel}", data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}) as resp:
        status = resp.status
        if status == 201:
            await pc.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
    return pc, status


async def test_records_survive_kill_9(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    serve = await ServeProcess(RELAYCAST_DATA_DIR=data).start()
    pcs: list[RTCPeerConnection] = []
    try:
        async with aiohttp.ClientSession() as http:
            base = serve.url
            alice = await _register(http, base, "alice")
            bob = await _register(http, base, "bob")
            a_auth = {"Authorization": f"Bearer {alice}"}
            b_auth = {"Authorization": f"Bearer {bob}"}
            async with http.post(f"{base}/api/channels/alice/keys", json={"label": "obs"}, headers=a_auth) as r:
                created = await _json(r, 201)
            key, key_id = created["key"], created["id"]
            async with http.post(f"{base}/api/channels/alice/follow", headers=b_auth) as r:
                await _json(r, 200)
            async with http.patch(f"{base}/api/channels/alice", json={"title": "Durable title"},
                                  headers=a_auth) as r:
                await _json(r, 200)
            pc, status = await _publish(base, "alice", key)
            pcs.append(pc)
            assert status == 201

            async def live_stream() -> str | None:
                async with http.get(f"{base}/api/channels/alice") as r:
                    body = await _json(r, 200)
                return body["stream_id"] if body["live"] else None

            stream_id = await wait_for(live_stream, 30, "alice's channel to be live")

            async def notified() -> list[dict[str, Any]]:
                async with http.get(f"{base}/api/notifications", headers=b_auth) as r:
                    return list((await _json(r, 200))["notifications"])

            before = await wait_for(notified, 30, "bob's go-live notification")
        serve.send(signal.SIGKILL)
        await serve.wait(10)
    finally:
        for pc in pcs:
            await pc.close()
        await serve.close()

    again = await ServeProcess(RELAYCAST_DATA_DIR=data).start()
    try:
        async with aiohttp.ClientSession() as http:
            base = again.url
            alice = await _login(http, base, "alice")
            bob = await _login(http, base, "bob")
            a_auth = {"Authorization": f"Bearer {alice}"}
            b_auth = {"Authorization": f"Bearer {bob}"}
            async with http.get(f"{base}/api/channels/alice") as r:
                channel = await _json(r, 200)
            assert channel["title"] == "Durable title" and channel["followers"] == 1
            async with http.get(f"{base}/api/channels/alice/keys", headers=a_auth) as r:
                keys = (await _json(r, 200))["keys"]
            assert [k["id"] for k in keys if k["revoked_at"] is None] == [key_id]
            assert all("key" not in k for k in keys)  # shown once, stored hashed
            async with http.get(f"{base}/api/users/me/following", headers=b_auth) as r:
                assert [c["name"] for c in (await _json(r, 200))["channels"]] == ["alice"]
            async with http.get(f"{base}/api/notifications", headers=b_auth) as r:
                after = (await _json(r, 200))["notifications"]
            assert [n["id"] for n in after] == [n["id"] for n in before]
            async with http.get(f"{base}/api/streams/{stream_id}") as r:
                stream = await _json(r, 200)
            assert stream["channel"] == "alice" and stream["started_at"] is not None
            # The crashed broadcast is over; the key still publishes.
            await wait_for(lambda: _status(http, f"{base}/api/streams/{stream_id}", "ended"), 30,
                           "the crashed stream to be ended")
            pc, status = await _publish(base, "alice", key)
            pcs.append(pc)
            assert status == 201
    finally:
        for pc in pcs:
            await pc.close()
        await again.stop()


async def _status(http: aiohttp.ClientSession, url: str, want: str) -> bool:
    async with http.get(url) as r:
        return bool((await _json(r, 200))["status"] == want)
