"""Session admission on a real Worker: the connect deadline, connected-only viewer counts
and the publishers' reserve.

* An offer whose client never completes ICE (no candidates) or has gone away holds a
  session only until ``connect_timeout_s`` after its answer; then the node closes it and
  reports ``session_closed`` (signaling forgets it).
* A viewer counts (room state, load report) only once its ICE and DTLS are up; the node
  reports ``session_connected`` then.
* Viewers may not take the last ``publisher_reserve`` sessions: a publisher with a valid
  key is admitted when viewers have filled everything they may use.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from sfu.config import SfuConfig
from sfu.worker import Worker
from tests.polling import wait_for

PUBLISHER = {"id": "pub", "name": "demo", "role": "publisher"}
DEADLINE_S = 1.0


class Events:
    """The worker's events towards signaling, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.seen.append((str(event), data))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [data for name, data in self.seen if name == event]


async def client_offer(pcs: list[RTCPeerConnection], direction: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.append(pc)
    for kind in ("video", "audio"):
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    return pc


def without_candidates(sdp: str) -> str:
    """An offer whose client will never complete ICE: no candidates, no end-of-candidates."""
    return re.sub(r"a=(candidate:.*|end-of-candidates)\r\n", "", sdp)


async def open_session(worker: Worker, rpc: str, session_id: str, sdp: str,
                       identity: dict[str, str] | None = None) -> dict[str, Any]:
    call = worker.publish if rpc == "publish" else worker.subscribe
    return await call({"room": "demo", "session_id": session_id, "sdp": sdp,
                       "identity": identity or {"id": session_id}})


async def test_unconnected_sessions_are_closed_after_the_connect_deadline(pcs) -> None:
    events = Events()
    config = SfuConfig(ice_gather=("127.0.0.1",), connect_timeout_s=DEADLINE_S)
    async with Worker(config, emit=events) as worker:
        publisher = await client_offer(pcs, "sendonly")
        assert "sdp" in await open_session(worker, "publish", "pub",
                                           without_candidates(publisher.localDescription.sdp),
                                           PUBLISHER)
        junk = await client_offer(pcs, "recvonly")
        assert "sdp" in await open_session(worker, "subscribe", "junk",
                                           without_candidates(junk.localDescription.sdp))
        gone = await client_offer(pcs, "recvonly")  # candidates, but the client vanishes
        assert "sdp" in await open_session(worker, "subscribe", "gone", gone.localDescription.sdp)
        await gone.close()
        opened = time.monotonic()
        load = worker.load()
        assert (load["sessions"], load["pending"], load["viewers"]) == (3, 3, 0)
        assert worker.routers["demo"].state()["viewers"] == 0  # pending viewers count nowhere

        await wait_for(lambda: worker.load()["sessions"] == 0, 10 * DEADLINE_S,
                       lambda: f"the deadline to free {worker.load()}")
        assert time.monotonic() - opened >= DEADLINE_S * 0.5
        closed = {e["session_id"]: e for e in events.of("session_closed")}
        assert set(closed) == {"pub", "junk", "gone"}
        assert all("not connected" in e["reason"] for e in closed.values())
        assert worker.routers == {}
        assert events.of("session_connected") == []


async def test_a_viewer_counts_once_connected(pcs) -> None:
    events = Events()
    config = SfuConfig(ice_gather=("127.0.0.1",), connect_timeout_s=DEADLINE_S)
    async with Worker(config, emit=events) as worker:
        publisher = await client_offer(pcs, "sendonly")
        answer = await open_session(worker, "publish", "pub", publisher.localDescription.sdp,
                                    PUBLISHER)
        await publisher.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        viewer = await client_offer(pcs, "recvonly")
        answer = await open_session(worker, "subscribe", "viewer", viewer.localDescription.sdp)
        router = worker.routers["demo"]
        assert router.state()["viewers"] == 0 and worker.load()["viewers"] == 0
        await viewer.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

        await wait_for(lambda: router.state()["viewers"] == 1, 20, "the viewer to connect")
        assert worker.load()["viewers"] == 1
        assert {"room": "demo", "session_id": "viewer"} in events.of("session_connected")
        assert events.of("room_state")[-1]["viewers"] == 1
        # Connected sessions outlive the deadline.
        await wait_for(lambda: time.monotonic() - router.viewers["viewer"].created_at_s
                       > 2 * DEADLINE_S, 10, "twice the deadline")
        assert worker.load()["sessions"] == 2 and events.of("session_closed") == []


async def test_viewers_leave_the_publisher_reserve_free(pcs) -> None:
    config = SfuConfig(ice_gather=("127.0.0.1",), max_sessions=4, publisher_reserve=1)
    async with Worker(config) as worker:
        first = await client_offer(pcs, "sendonly")
        assert "sdp" in await open_session(worker, "publish", "pub-1",
                                           first.localDescription.sdp, PUBLISHER)
        viewer = (await client_offer(pcs, "recvonly")).localDescription.sdp
        statuses = []
        for n in range(4):  # bounded: viewers until the node refuses them
            result = await open_session(worker, "subscribe", f"viewer-{n}", viewer)
            statuses.append(result["error"]["status"] if "error" in result else 201)
        assert statuses == [201, 201, 503, 503]
        assert worker.load()["sessions"] == 3

        # The publisher (here: reconnecting with a new session) still gets in.
        second = await client_offer(pcs, "sendonly")
        result = await open_session(worker, "publish", "pub-2", second.localDescription.sdp,
                                    PUBLISHER)
        assert "sdp" in result, result
        assert worker.routers["demo"].publisher.session_id == "pub-2"
        assert worker.load()["sessions"] == 3  # the replaced publisher session is gone
