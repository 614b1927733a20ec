"""SFU node admission on ``/sfu`` (signaling/nodes.py, signaling/node_auth.py): nodes only
on their own Socket.IO path, bad secrets throttled per client address with one WARNING
per address and window, the secret compared in constant time — unit tests of the
throttle with a hand-moved clock, then the real service on 127.0.0.1."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import socketio

from relaycast.service import Service
from sfu.protocol import NAMESPACE, SOCKETIO_PATH
from signaling import node_auth
from signaling.app_keys import NAMESPACE_KEY
from signaling.node_auth import NodeAuthThrottle
from tests.polling import wait_for
from tests.services import make_config

SECRET = "node-secret-for-auth-tests"


class FrozenClock:
    """A monotonic clock the test moves by hand (``now``, s)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == node_auth.__name__ and r.levelno == logging.WARNING]


# ------------------------------------------------------------------ the throttle alone
def test_lockout_after_max_failures_until_the_window_passes() -> None:
    clock = FrozenClock()
    throttle = NodeAuthThrottle(max_failures=3, lockout_s=60.0, clock=clock)
    for _ in range(2):
        throttle.refused("10.0.0.1", bad_secret=True)
        assert throttle.locked("10.0.0.1") == 0.0
    throttle.refused("10.0.0.1", bad_secret=True)
    assert throttle.locked("10.0.0.1") == 60.0
    assert throttle.locked("10.0.0.2") == 0.0  # per address
    clock.now += 59.0
    throttle.refused("10.0.0.1", bad_secret=False)  # refused unchecked: no longer lockout
    assert throttle.locked("10.0.0.1") == pytest.approx(1.0)
    clock.now += 1.0
    assert throttle.locked("10.0.0.1") == 0.0
    throttle.refused("10.0.0.1", bad_secret=True)  # the bucket refilled in the lockout
    assert throttle.locked("10.0.0.1") == 0.0


def test_one_warning_per_address_and_window_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=node_auth.__name__)
    clock = FrozenClock()
    throttle = NodeAuthThrottle(max_failures=5, lockout_s=60.0, clock=clock)
    for _ in range(50):
        throttle.refused("10.0.0.1", bad_secret=True)
    throttle.refused("10.0.0.2", bad_secret=True)
    assert warnings_of(caplog) == [
        "refused 1 SFU node connection(s) from 10.0.0.1 in the last 60 s (last: bad secret)",
        "refused 1 SFU node connection(s) from 10.0.0.2 in the last 60 s (last: bad secret)",
    ]
    clock.now += 30.0
    throttle.refused("10.0.0.1", bad_secret=False)  # locked out (since the 5th): DEBUG only
    assert len(warnings_of(caplog)) == 2
    clock.now += 30.0
    throttle.refused("10.0.0.1", bad_secret=True)
    assert warnings_of(caplog)[2:] == [
        "refused 51 SFU node connection(s) from 10.0.0.1 in the last 60 s (last: bad secret)"
    ]


def test_tracked_addresses_stay_bounded() -> None:
    clock = FrozenClock()
    throttle = NodeAuthThrottle(max_failures=2, lockout_s=60.0, clock=clock, max_addresses=100)
    for i in range(1000):
        throttle.refused(f"10.0.{i // 256}.{i % 256}", bad_secret=True)
    assert len(throttle._addresses) <= 100


# ------------------------------------------------------------------ through the real service
@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    async with Service(make_config(embedded_sfu=False, node_secret=SECRET)) as s:
        yield s


class Node:
    """A Socket.IO client posing as an SFU node; ``refusals`` holds the server's reasons."""

    def __init__(self) -> None:
        self.http = aiohttp.ClientSession()  # closed by `close` also when connecting failed
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.refusals: list[Any] = []
        self.sio.on("connect_error", self.refusals.append, namespace=NAMESPACE)

    async def connect(self, svc: Service, secret: str, path: str = SOCKETIO_PATH) -> bool:
        try:
            await self.sio.connect(svc.url, namespaces=[NAMESPACE], socketio_path=path, transports=["websocket"],
                                   wait_timeout=10, auth={"node_id": "auth-test-node", "secret": secret})
        except socketio.exceptions.ConnectionError:
            return False
        return True

    async def close(self) -> None:
        await self.sio.disconnect()
        await self.http.close()


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[[], Node]]:
    """Makes `Node` clients, all closed at the end of the test."""
    made: list[Node] = []

    def make() -> Node:
        made.append(Node())
        return made[-1]

    yield make
    for node in made:
        await node.close()


async def test_nodes_are_admitted_only_on_their_path(svc: Service, nodes: Callable[[], Node]) -> None:
    """The pages' /socket.io/ (the path a public edge passes) refuses /sfu even with the
    right secret; /sfu-link/ admits the node."""
    wrong = nodes()
    assert not await wrong.connect(svc, SECRET, path="socket.io")
    assert wrong.refusals == [{"message": "SFU nodes connect on /sfu-link/ (socketio_path='sfu-link')"}]
    assert not svc.app[NAMESPACE_KEY].registry.nodes
    assert await nodes().connect(svc, SECRET)
    await wait_for(lambda: svc.app[NAMESPACE_KEY].registry.nodes, 5, "the node to register")


async def test_bad_secrets_lock_the_address_out_without_comparing(
    svc: Service, nodes: Callable[[], Node], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FrozenClock()
    namespace = svc.app[NAMESPACE_KEY]
    namespace.auth_throttle = NodeAuthThrottle(max_failures=3, lockout_s=60.0, clock=clock)
    compared: list[bytes] = []
    real_compare = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare)

    for i in range(3):
        node = nodes()
        assert not await node.connect(svc, f"wrong-secret-{i}-xxxxxxxx")
        assert node.refusals == [{"message": "bad node credentials"}]
    assert compared == [f"wrong-secret-{i}-xxxxxxxx".encode() for i in range(3)]  # constant-time compare

    # Locked out: even the right secret is refused, and not compared.
    locked = nodes()
    assert not await locked.connect(svc, SECRET)
    assert locked.refusals == [{"message": "too many bad node credentials from 127.0.0.1; retry in 60 s"}]
    assert len(compared) == 3
    assert not namespace.registry.nodes
    assert warnings_of(caplog) == [
        "refused 1 SFU node connection(s) from 127.0.0.1 in the last 60 s (last: bad secret)"]
    assert [r for r in caplog.records if r.levelno > logging.WARNING] == []

    clock.now += 60.0  # the lockout ends
    assert await nodes().connect(svc, SECRET)
    await wait_for(lambda: namespace.registry.nodes, 5, "the node to register")
    assert len(compared) == 4
