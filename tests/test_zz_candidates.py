"""Runs last: every ICE candidate the SFU offered during the suite was on 127.0.0.1."""

from __future__ import annotations

from conftest import SEEN_CANDIDATE_ADDRESSES, STREAM_KEY

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack


async def test_every_sfu_candidate_is_loopback(service) -> None:
    # Make sure at least one answer is recorded even when this file runs alone.
    session = await whip_client.publish(
        f"{service.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(320, 180, 15, code="counter")]
    )
    await session.close()
    assert SEEN_CANDIDATE_ADDRESSES, "no SFU answer was recorded"
    assert SEEN_CANDIDATE_ADDRESSES == {"127.0.0.1"}, SEEN_CANDIDATE_ADDRESSES
