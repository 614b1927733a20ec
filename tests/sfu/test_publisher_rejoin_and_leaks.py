"""Publisher drop/re-join without viewer renegotiation, and no leaks under viewer churn.

* A viewer keeps its one WHEP session while the publisher (a) vanishes by
  closing its peer connection without DELETE and (b) leaves with DELETE, each
  time re-joining with a new WHIP session.  The viewer decodes the new
  publisher's frames (told apart by a counter offset), and the RTP stream it
  receives stays one stream: sequence numbers continue at last + 1 and the
  timestamp moves forward across each switch.
* 20 viewers join and leave concurrently while the publisher is live; afterwards
  the worker holds only the publisher's session and nothing leaked: peer
  connections, asyncio tasks, UDP sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from loadtest import whip_client
from relaycast.service import Service
from sfu.consumer import Consumer
from sfu.participant import Participant
from signaling.app_keys import SESSION_SERVICE
from tests.polling import WaitTimeout, wait_for
from tests.services import make_config
from tests.sfu.lossy import RtpTap, payload_types
from tests.sfu.sfu_helpers import (
    FRAME_TICKS,
    OffsetPatternTrack,
    publish_pattern,
    read_frames,
    receiver_tracks,
)

SECOND = 1_000_000  # counter offset of the second publisher
THIRD = 2_000_000


def _session_id(session: whip_client.WhipSession) -> str:
    return session.location.rsplit("/", 1)[1]


def _check_continuity(tap: RtpTap, switches: list[float]) -> list[tuple[int, int]]:
    """One seq space without holes, ts never backwards; returns (seq step, ts step) per switch."""
    media = sorted((r for r in tap.records if not r.rtx), key=lambda r: r.arrival)
    assert len({r.ssrc for r in media}) == 1, "the viewer's stream keeps its SSRC"
    seqs = [r.seq for r in media]
    # Unwrap and check there is no hole (a packet lost on loopback is NACKed and
    # comes back as RTX, which the tap also records).
    received = tap.received_seqs()
    ext = [seqs[0]]
    for s in seqs[1:]:
        ext.append(ext[-1] + ((s - ext[-1]) & 0xFFFF if (s - ext[-1]) & 0xFFFF < 0x8000 else 0))
    missing = [e & 0xFFFF for e in range(ext[0], max(ext) + 1) if e & 0xFFFF not in received]
    assert missing == [], f"holes in the viewer's seq space: {missing[:20]}"
    steps = []
    for a, b in zip(media, media[1:], strict=False):
        ts_step = (b.timestamp - a.timestamp) & 0xFFFFFFFF
        assert ts_step < 0x8000_0000, f"timestamp went backwards: {a} -> {b}"
    for t in switches:
        before = [r for r in media if r.arrival < t][-1]
        after = next(r for r in media if r.arrival >= t)
        steps.append(((after.seq - before.seq) & 0xFFFF, (after.timestamp - before.timestamp) & 0xFFFFFFFF))
    return steps


async def test_viewer_survives_publisher_drop_and_rejoin(service: Any) -> None:
    router_of = lambda: service.worker.routers["demo"]  # noqa: E731
    pub1 = await publish_pattern(service, OffsetPatternTrack(0))
    viewer = await whip_client.view(f"{service.url}/whep/demo")
    pubs = [pub1]
    try:
        media_pt, rtx_pt = payload_types(viewer.answer, "video")
        tap = RtpTap(media_pt, rtx_pt).install(viewer.pc)
        await whip_client.wait_connected(viewer.pc)
        viewer_id = _session_id(viewer)
        participant = router_of().viewers[viewer_id]
        video = receiver_tracks(viewer.pc)["video"]
        first = await read_frames(video, 30, timeout=20)
        assert max(first.readable) < SECOND

        # (a) the encoder vanishes: its peer connection closes, no DELETE.
        await pub1.pc.close()
        await wait_for(
            lambda: router_of().publisher is None, 15, "the SFU to notice", interval_s=0.02
        )
        assert router_of().viewers.get(viewer_id) is participant, "the viewer session stays"
        assert participant.consumers["video"].producer is None, "consumer waits for a publisher"
        switch1 = time.monotonic()
        pub2 = await publish_pattern(service, OffsetPatternTrack(SECOND))
        pubs.append(pub2)
        await read_frames(video, 200, timeout=30, until=lambda c: c >= SECOND)
        second = await read_frames(video, 30, timeout=20)
        assert min(second.readable) >= SECOND, "frames come from the new publisher"

        # (b) the publisher leaves properly (DELETE) and comes back.
        assert await pub2.close() == 200
        await wait_for(
            lambda: router_of().publisher is None, 15, "the publisher to go", interval_s=0.02
        )
        switch2 = time.monotonic()
        pub3 = await publish_pattern(service, OffsetPatternTrack(THIRD))
        pubs.append(pub3)
        await read_frames(video, 200, timeout=30, until=lambda c: c >= THIRD)
        third = await read_frames(video, 30, timeout=20)
        assert min(third.readable) >= THIRD

        # Same session throughout: no renegotiation, still connected, same consumer.
        assert viewer.pc.connectionState == "connected"
        assert viewer.pc.signalingState == "stable"
        assert router_of().viewers[viewer_id] is participant
        for frames in (first, second, third):
            assert None not in frames.codes
            good = frames.readable
            assert all(b > a for a, b in zip(good, good[1:], strict=False)), good
        steps = _check_continuity(tap, [switch1, switch2])
        print(f"\nacross the switches (seq step, ts step): {steps}")
        for seq_step, ts_step in steps:
            assert seq_step == 1, "seq continues at last + 1"
            assert ts_step >= FRAME_TICKS, "ts advances at least one frame"
            assert ts_step < 60 * 90000, "ts advances by about the gap, not at random"
    finally:
        await viewer.close()
        for pub in pubs:
            await pub.close()


def _live_peer_connections() -> list[RTCPeerConnection]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)]


def _socket_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


async def _settled(measure: Callable[[], int], limit: int, timeout_s: float = 20.0) -> int:
    """Wait (bounded) until ``measure()`` <= ``limit``; return the last value (also on
    timeout: the assertions after this report what was left over)."""
    last = limit + 1

    def settled() -> bool:
        nonlocal last
        last = measure()
        return last <= limit

    with contextlib.suppress(WaitTimeout):
        await wait_for(settled, timeout_s, "the count to settle", interval_s=0.1)
    return last


@pytest.fixture
async def roomy_service() -> AsyncIterator[Service]:
    """The service, letting one address (all these viewers are on 127.0.0.1) open 20
    sessions at once (RELAYCAST_PENDING_SESSIONS_PER_ADDRESS)."""
    async with Service(make_config(pending_sessions_per_address=20)) as svc:
        yield svc


async def test_twenty_viewers_join_and_leave_without_leaks(roomy_service: Service) -> None:
    service = roomy_service
    pub = await publish_pattern(service)
    try:
        # Baselines with only the publisher live (both ends in this process, both
        # fully started: packets reach both producers).
        producers = service.worker.routers["demo"].producers
        await wait_for(
            lambda: all(p.packets > 0 for p in producers.values()),
            10,
            "publisher media",
            interval_s=0.02,
        )
        pcs_before = _live_peer_connections()
        assert any(pc is pub.pc for pc in pcs_before)
        assert any(pc is service.worker.routers["demo"].publisher.pc for pc in pcs_before)
        tasks_before_set = set(asyncio.all_tasks())
        tasks_before = len(tasks_before_set)
        sockets_before = _socket_fds()

        async def one_viewer(i: int) -> int:
            session = await asyncio.wait_for(whip_client.view(f"{service.url}/whep/demo"), 30)
            try:
                await whip_client.wait_connected(session.pc, timeout=30)
                frames = await read_frames(receiver_tracks(session.pc)["video"], 3, timeout=30)
                assert frames.readable, f"viewer {i} decoded nothing readable"
            finally:
                if i % 4 == 3:
                    # A player that just goes away: no DELETE, the SFU must notice.
                    await session.pc.close()
                    status = 0
                else:
                    status = await asyncio.wait_for(session.close(), 30) or 0
            return status

        statuses = await asyncio.wait_for(asyncio.gather(*(one_viewer(i) for i in range(20))), 120)
        assert statuses == [0 if i % 4 == 3 else 200 for i in range(20)]

        router = service.worker.routers["demo"]
        await wait_for(
            lambda: not router.viewers, 20, "every viewer session to end", interval_s=0.02
        )
        stats = await service.worker.stats()
        assert stats["sessions"] == 1, stats  # the publisher only
        await wait_for(
            lambda: len(service.app[SESSION_SERVICE].store.sessions) == 1,
            10,
            "signaling to forget the viewers",
            interval_s=0.02,
        )
        assert len(router.chat) == 0
        assert all(p.consumers == [] for p in router.producers.values())
        gc.collect()
        assert [o for o in gc.get_objects() if isinstance(o, Consumer)] == []
        assert len([o for o in gc.get_objects() if isinstance(o, Participant)]) == 1

        pcs = await _settled(lambda: len(_live_peer_connections()), len(pcs_before))
        tasks_after = await _settled(lambda: len(asyncio.all_tasks()), tasks_before)
        sockets_after = await _settled(_socket_fds, sockets_before + 2)
        print(f"\nafter 20 viewers: peer connections {len(pcs_before)} -> {pcs}, "
              f"tasks {tasks_before} -> {tasks_after}, sockets {sockets_before} -> {sockets_after}")
        leaked = [pc for pc in _live_peer_connections() if not any(pc is b for b in pcs_before)]
        assert leaked == [], f"leaked peer connections: {[pc.connectionState for pc in leaked]}"
        assert pcs == len(pcs_before)
        new_tasks = [t for t in asyncio.all_tasks() if t not in tasks_before_set]
        gone = [t for t in tasks_before_set if t.done()]
        describe = lambda ts: [t.get_coro().__qualname__ for t in ts]  # noqa: E731
        assert tasks_after <= tasks_before, (describe(new_tasks), describe(gone))
        assert sockets_after <= sockets_before + 2
    finally:
        await pub.close()
