"""The session-wide ICE candidate audit (tests/conftest.py) sees what the SFU answers."""

from __future__ import annotations

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack
from relaycast.service import Service
from tests.services import STREAM_KEY


async def test_the_audit_records_the_candidates_of_an_sfu_answer(
    service: Service, sfu_candidate_addresses: set[str]
) -> None:
    session = await whip_client.publish(
        f"{service.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(320, 180, 15, code="counter")]
    )
    try:
        # RFC 8839 §5.1: candidate-attribute = foundation component transport priority address ...
        answered = {line.split()[4] for line in session.answer.splitlines() if line.startswith("a=candidate:")}
        assert answered, session.answer
        assert answered <= sfu_candidate_addresses
    finally:
        await session.close()
