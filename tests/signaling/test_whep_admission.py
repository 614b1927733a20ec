"""Admission of WHEP sessions that never connect, against a real service.

A WHEP offer needs no key, so offers that never complete ICE used to hold an SFU session
each, forever, count as viewers, and — once they filled ``RELAYCAST_MAX_SESSIONS`` — make
the node refuse real viewers and the real publisher alike (503).  Now:

* the SFU closes a session not connected ``RELAYCAST_CONNECT_TIMEOUT_S`` after its answer,
  and signaling forgets it;
* one client address may hold ``RELAYCAST_PENDING_SESSIONS_PER_ADDRESS`` unconnected WHEP
  sessions (429 + ``Retry-After`` beyond), and a session stops counting once connected;
* viewers count (``/api/rooms``, room state) only once connected;
* viewers leave ``RELAYCAST_PUBLISHER_RESERVE`` sessions free: the publisher's key still
  gets 201 on a node that viewers filled.
"""

from __future__ import annotations

import re

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from signaling.app_keys import SESSION_SERVICE
from signaling.config import SignalingConfig
from tests.polling import wait_for
from tests.services import STREAM_KEY
from tests.signaling.whip_helpers import SDP, problem

DEADLINE_S = 2.0


def config(**env: str) -> SignalingConfig:
    """The test service's config with ``RELAYCAST_*`` variables ``env``."""
    return SignalingConfig.from_env(env, host="127.0.0.1", port=0, demo_stream_key=STREAM_KEY)


async def junk_offer(pcs: list[RTCPeerConnection]) -> str:
    """A viewer offer whose ICE can never complete: no candidates, no end-of-candidates."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.append(pc)
    for kind in ("video", "audio"):
        pc.addTransceiver(kind, direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return re.sub(r"a=(candidate:.*|end-of-candidates)\r\n", "", pc.localDescription.sdp)


async def view(svc: Service, http: aiohttp.ClientSession, offer: str) -> aiohttp.ClientResponse:
    resp = await http.post(f"{svc.url}/whep/demo", data=offer, headers={"Content-Type": SDP})
    await resp.read()
    return resp


async def publish(svc: Service) -> whip_client.WhipSession:
    """A real WHIP publisher (the loadtest client), connected."""
    session = await whip_client.publish(f"{svc.url}/whip/demo", STREAM_KEY,
                                        [PatternVideoTrack(160, 90, 10)])
    await whip_client.wait_connected(session.pc, timeout=20)
    return session


async def api_viewers(svc: Service, http: aiohttp.ClientSession) -> int:
    async with http.get(f"{svc.url}/api/rooms/demo") as resp:
        return int((await resp.json())["viewers"])


async def test_junk_offers_are_freed_within_the_deadline_and_never_counted(http, pcs) -> None:
    async with Service(config(RELAYCAST_CONNECT_TIMEOUT_S=str(DEADLINE_S))) as svc:
        pub = await publish(svc)
        try:
            # The offers are made first: posting them must take well under the deadline,
            # or the first is closed before the count below (aiortc's offers are slow on a
            # loaded machine).
            offers = [await junk_offer(pcs) for _ in range(3)]
            for offer in offers:
                assert (await view(svc, http, offer)).status == 201
            assert svc.worker.load()["sessions"] == 4
            assert await api_viewers(svc, http) == 0  # pending offers are no viewers
            assert len(svc.app[SESSION_SERVICE].pending) == 3

            await wait_for(lambda: svc.worker.load()["sessions"] == 1, 15 * DEADLINE_S,
                           lambda: f"the junk sessions to be closed ({svc.worker.load()})")
            # Signaling forgets them (session_closed) and they no longer count as pending.
            store = svc.app[SESSION_SERVICE].store.sessions
            await wait_for(lambda: [s.resource for s in store.values()] == ["whip"], 10,
                           lambda: f"signaling to forget them ({list(store.values())})")
            assert len(svc.app[SESSION_SERVICE].pending) == 0
            # The publisher was connected: the deadline does not touch it.
            assert pub.pc.connectionState == "connected"
        finally:
            assert await pub.close() == 200


async def test_pending_offers_per_address_are_capped(http, pcs) -> None:
    async with Service(config(RELAYCAST_PENDING_SESSIONS_PER_ADDRESS="2")) as svc:
        pub = await publish(svc)
        viewer = None
        try:
            first = await view(svc, http, await junk_offer(pcs))
            assert (first.status, (await view(svc, http, await junk_offer(pcs))).status) == (201, 201)
            resp = await view(svc, http, await junk_offer(pcs))
            await problem(resp, 429)
            assert int(resp.headers["Retry-After"]) > 0
            assert svc.worker.load()["sessions"] == 3  # the refused offer allocated nothing

            # A pending session that ends frees its place ...
            assert (await http.delete(svc.url + first.headers["Location"])).status == 200
            viewer = await whip_client.view(f"{svc.url}/whep/demo", kinds=("video",))
            await whip_client.wait_connected(viewer.pc, timeout=20)
            # ... and one that connects stops counting: a real viewer does not use a place.
            await wait_for(lambda: len(svc.app[SESSION_SERVICE].pending) == 1, 10, "the viewer to count as connected")
            assert (await view(svc, http, await junk_offer(pcs))).status == 201
            await problem(await view(svc, http, await junk_offer(pcs)), 429)
            await wait_for(lambda: api_viewers(svc, http), 10, "the viewer in /api/rooms")
            assert await api_viewers(svc, http) == 1
        finally:
            if viewer is not None:
                await viewer.close()
            assert await pub.close() == 200


async def test_a_publisher_is_admitted_when_viewers_filled_the_node(http, pcs) -> None:
    env = {"RELAYCAST_MAX_SESSIONS": "4", "RELAYCAST_PUBLISHER_RESERVE": "1",
           "RELAYCAST_PENDING_SESSIONS_PER_ADDRESS": "10"}
    async with Service(config(**env)) as svc:
        first = await publish(svc)
        second = None
        try:
            statuses = []
            for _ in range(4):  # bounded: viewers until the node refuses them
                resp = await view(svc, http, await junk_offer(pcs))
                statuses.append(resp.status)
                if resp.status == 503:
                    assert int(resp.headers["Retry-After"]) > 0
            assert statuses == [201, 201, 503, 503]
            assert svc.worker.load()["sessions"] == 3

            # The publisher comes back with its key (a new session replaces the old one).
            second = await publish(svc)
            router = svc.worker.routers["demo"]
            await wait_for(lambda: router.publisher.pc.connectionState == "connected", 20,
                           "the new publisher session to connect on the SFU")
        finally:
            if second is not None:
                assert await second.close() == 200
            await first.pc.close()
