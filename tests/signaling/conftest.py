"""Fixtures shared by the signaling tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiortc import RTCPeerConnection

from tests.signaling.whip_helpers import MakeOffer, new_offer


@pytest.fixture
async def make_offer() -> AsyncIterator[MakeOffer]:
    """``await make_offer(kinds, direction="sendonly", codecs=...)`` → a real aiortc offer
    (a WHIP publisher's; test_whep_http overrides it with a viewer's); closed afterwards."""
    pcs: list[RTCPeerConnection] = []
    yield lambda *args, **kwargs: new_offer(pcs, *args, **kwargs)
    for pc in pcs:
        await pc.close()
