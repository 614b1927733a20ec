"""Shared fixtures: a real relaycast service (signaling + embedded SFU) on 127.0.0.1, a
private redis-server, and the session-wide check that every ICE candidate the SFU put in
an answer was on 127.0.0.1 (all test traffic stays on loopback).

Tests import helpers from plain modules (``from tests.services import STREAM_KEY``), never
from this file: pytest loads it as ``conftest``, an import as ``tests.conftest`` would load
it a second time.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdatachannel import RTCDataChannel

from loadtest import netns, whip_client
from relaycast.service import Service
from tests.redis_server import RedisServer
from tests.services import make_config

_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", re.MULTILINE)
LOOPBACK_CANDIDATES = {"127.0.0.1"}


def candidate_addresses(sdp: str) -> set[str]:
    """The connection addresses of the ``a=candidate`` lines of ``sdp`` (RFC 8839 §5.1)."""
    return set(_CANDIDATE.findall(sdp))


@pytest.fixture(scope="session", autouse=True)
def sfu_candidate_addresses() -> Iterator[set[str]]:
    """Every ICE candidate address the in-process SFU put in an answer during the session.

    After the last test the set must hold 127.0.0.1 only: a failing check here is reported
    as an error in the session's teardown and makes pytest exit non-zero.
    """
    seen: set[str] = set()
    yield seen
    stray = seen - LOOPBACK_CANDIDATES - netns.server_addresses_made()
    assert not stray, ("the SFU offered ICE candidates off 127.0.0.1 (and off the addresses of "
                       f"network namespaces the tests made) during the session: {sorted(stray)}")


_TEST_ENV = {
    # ``relaycast serve`` processes the tests start run their SFU in one process whatever
    # the machine's CPU count (``auto`` would start worker children on more than 2 CPUs);
    # tests of workers mode pass ``--workers`` themselves.
    "RELAYCAST_WORKERS": "1",
    # Bridges start whatever the machine's idle CPU (a test machine is busy with the
    # suite itself); the admission tests set their own threshold.
    "RELAYCAST_HLS_MIN_IDLE_CORES": "0",
    # No thumbnail captures (each asks the publisher for a key frame and taps the room,
    # which tests of key frames and consumers count); the thumbnail tests set their own.
    "RELAYCAST_THUMBNAIL_INTERVAL_S": "0",
}


@pytest.fixture(scope="session", autouse=True)
def _test_environment() -> Iterator[None]:
    """Settings every service the tests start shares (:data:`_TEST_ENV`)."""
    old = {name: os.environ.get(name) for name in _TEST_ENV}
    os.environ.update(_TEST_ENV)
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service a test starts (in process or as ``relaycast serve``) keeps its platform
    database in a fresh temporary directory, never in the working tree."""
    monkeypatch.setenv("RELAYCAST_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    monkeypatch.delenv("RELAYCAST_DATABASE_URL", raising=False)


@pytest.fixture(autouse=True)
def _loopback_ice() -> None:
    whip_client.pin_loopback()


@pytest.fixture(autouse=True)
def _record_answers(monkeypatch: pytest.MonkeyPatch, sfu_candidate_addresses: set[str]) -> None:
    """Record the candidates of every SDP answer the SFU produces."""
    from sfu import router

    original = router._answer

    async def answer(pc, config):  # type: ignore[no-untyped-def]
        sdp = await original(pc, config)
        sfu_candidate_addresses.update(candidate_addresses(sdp))
        return sdp

    monkeypatch.setattr(router, "_answer", answer)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for talking to the service."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    """Peer connections a test makes (append them); all closed when it ends."""
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    """A running service: ``service.url``, demo room ``demo`` with :data:`STREAM_KEY`."""
    async with Service(make_config()) as svc:
        yield svc


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private ``redis-server`` on 127.0.0.1 (``.url``; ``.stop()``/``.start()`` for an outage)."""
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
