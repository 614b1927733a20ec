"""Shared fixtures: a real relaycast service (signaling + embedded SFU) on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdatachannel import RTCDataChannel

from loadtest import whip_client
from relaycast.service import Service
from signaling.config import SignalingConfig

STREAM_KEY = "sk_test_" + "x" * 24
_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", re.MULTILINE)

# Every ICE candidate address the SFU put in an answer during the whole session
# (checked by tests/test_zz_candidates.py, which runs last).
SEEN_CANDIDATE_ADDRESSES: set[str] = set()


def record_candidates(sdp: str) -> None:
    SEEN_CANDIDATE_ADDRESSES.update(_CANDIDATE.findall(sdp))


@pytest.fixture(autouse=True)
def _loopback_ice() -> None:
    whip_client.pin_loopback()


@pytest.fixture(autouse=True)
def _record_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record the candidates of every SDP answer the SFU produces."""
    from sfu import router

    original = router._answer

    async def answer(pc, config):  # type: ignore[no-untyped-def]
        sdp = await original(pc, config)
        record_candidates(sdp)
        return sdp

    monkeypatch.setattr(router, "_answer", answer)


def make_config(**overrides: object) -> SignalingConfig:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "demo_stream_key": STREAM_KEY}
    values.update(overrides)
    return SignalingConfig.from_env({}, **values)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for talking to the service."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    """A running service: ``service.url``, demo room ``demo`` with :data:`STREAM_KEY`."""
    async with Service(make_config()) as svc:
        yield svc


@pytest.fixture
def redis_server() -> Iterator[object]:
    """A private ``redis-server`` on 127.0.0.1 (``.url``; ``.stop()``/``.start()`` for an outage)."""
    from redis_server import RedisServer

    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def chat_channels(monkeypatch: pytest.MonkeyPatch) -> dict[RTCPeerConnection, RTCDataChannel]:
    """whip_client creates the "chat" channel but does not return it: record it here."""
    channels: dict[RTCPeerConnection, RTCDataChannel] = {}
    original = RTCPeerConnection.createDataChannel

    def create(self: RTCPeerConnection, label: str, *args: Any, **kwargs: Any) -> RTCDataChannel:
        channel = original(self, label, *args, **kwargs)
        channels[self] = channel
        return channel

    monkeypatch.setattr(RTCPeerConnection, "createDataChannel", create)
    return channels
