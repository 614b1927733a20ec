"""The pages' Socket.IO namespace (signaling/browser.py) against real services on 127.0.0.1:
join/leave acks (also for any malformed payload: a hypothesis fuzz), ``room`` pushes, the
per-address limits (joins, concurrent connections), the Origin rule, and — in Redis mode
with two instances — one delivery per page whichever instance it is connected to."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import ConfigError
from common.ratelimit import TokenBuckets
from relaycast.service import Service
from sfu.protocol import SOCKETIO_PATH
from signaling import browser
from signaling.app_keys import NAMESPACE_KEY, SIO
from signaling.config import SignalingConfig
from tests.polling import wait_for
from tests.redis_server import RedisServer
from tests.services import make_channel, make_config

SECRET = "node-secret-for-browser-tests"


class Page:
    """A page's Socket.IO client recording every ``room`` event and connect refusal."""

    def __init__(self) -> None:
        # Its own HTTP session, closed by `close` also when connecting failed.
        self.http = aiohttp.ClientSession()
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.events: list[dict[str, Any]] = []
        self.refusals: list[Any] = []
        self.sio.on("room", self.events.append)
        self.sio.on("connect_error", self.refusals.append)

    async def connect(self, svc: Service, transport: str = "websocket", **kwargs: Any) -> Page:
        await self.sio.connect(svc.url, transports=[transport], wait_timeout=10, **kwargs)
        return self

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, timeout=5)

    async def close(self) -> None:
        await self.sio.disconnect()
        await self.http.close()


@pytest.fixture
async def pages() -> AsyncIterator[list[Page]]:
    made: list[Page] = []
    yield made
    for page in made:
        await page.close()


def new_page(pages: list[Page]) -> Page:
    """A page not connected yet, closed at the end of the test."""
    p = Page()
    pages.append(p)
    return p


async def page(pages: list[Page], svc: Service) -> Page:
    return await new_page(pages).connect(svc)


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    async with Service(make_config(embedded_sfu=False)) as s:
        yield s


async def settled(p: Page) -> list[dict[str, Any]]:
    """``p``'s events once all the server queued for it so far has arrived: a round trip on
    the same connection (an unknown event, answered with an error) comes back after them."""
    assert "error" in await p.call("settle")
    return p.events


class FrozenClock:
    """A monotonic clock the test moves by hand (``now``, s)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def namespace_of(svc: Service) -> browser.BrowserNamespace:
    handler = svc.app[SIO].namespace_handlers[browser.NAMESPACE]
    assert isinstance(handler, browser.BrowserNamespace)
    return handler


def frozen_join_limiter(svc: Service) -> FrozenClock:
    """Give ``svc``'s join limiter a clock that only the test moves."""
    clock = FrozenClock()
    namespace_of(svc).join_limiter = TokenBuckets(browser.JOIN_RATE, int(browser.JOIN_RATE), clock=clock)
    return clock


# ---------------------------------------------------------------- one instance
async def test_join_acks_the_room_state(svc: Service, pages: list[Page]) -> None:
    p = await page(pages, svc)
    ack = await p.call("join", {"room": "demo"})
    chat = ack.pop("chat")
    assert ack == {"room": "demo", "live": False, "viewers": 0}
    # Who the page chats as (a guest: a generated name) and the room's chat history.
    assert chat["history"] == [] and chat["moderator"] is False
    assert chat["participant"]["role"] == "viewer" and "user" not in chat["participant"]
    assert await p.call("join", {"room": "nope"}) == {"error": "no such room"}
    assert "error" in await p.call("join", "demo")
    assert await p.call("leave") == {"left": "demo"}
    assert await p.call("leave") == {"left": None}


async def test_announce_reaches_joined_pages_only(svc: Service, pages: list[Page]) -> None:
    joined, other = await page(pages, svc), await page(pages, svc)
    await joined.call("join", {"room": "demo"})
    svc.app[browser.ROOMS].get("demo").viewers = 3  # type: ignore[union-attr]

    await browser.announce_room(svc.app, "demo", origin=False)
    assert await settled(joined) == []

    await browser.announce_room(svc.app, "demo", origin=True)
    await wait_for(lambda: joined.events, 5, "the room event")
    event = joined.events[0]
    assert {k: event[k] for k in ("room", "live", "viewers")} == {"room": "demo", "live": False, "viewers": 3}
    assert isinstance(event["ts"], int) and event["ts"] > 1.6e12
    assert await settled(other) == []

    assert await joined.call("leave") == {"left": "demo"}
    await browser.announce_room(svc.app, "demo", origin=True)
    assert len(await settled(joined)) == 1


async def test_joining_another_room_leaves_the_first(svc: Service, pages: list[Page]) -> None:
    await make_channel(svc.app, "second")
    p = await page(pages, svc)
    await p.call("join", {"room": "demo"})
    assert (await p.call("join", {"room": "second"}))["room"] == "second"
    await browser.announce_room(svc.app, "demo", origin=True)
    await browser.announce_room(svc.app, "second", origin=True)
    assert [e["room"] for e in await settled(p)] == ["second"]


async def test_joins_are_rate_limited(svc: Service, pages: list[Page]) -> None:
    clock = frozen_join_limiter(svc)
    p = await page(pages, svc)
    replies = [await p.call("join", {"room": "demo"}) for _ in range(int(browser.JOIN_RATE) + 3)]
    assert [r.get("error") for r in replies] == [None] * int(browser.JOIN_RATE) + ["too many joins"] * 3
    assert replies[-1]["retry_after"] == pytest.approx(1 / browser.JOIN_RATE)
    clock.now += replies[-1]["retry_after"]  # the limiter's window passes
    assert (await p.call("join", {"room": "demo"}))["room"] == "demo"
    assert (await p.call("join", {"room": "demo"}))["error"] == "too many joins"


async def test_join_limit_is_per_address_not_per_connection(svc: Service, pages: list[Page]) -> None:
    """A reconnect (a new sid, same address) does not get a fresh bucket."""
    frozen_join_limiter(svc)
    first = await page(pages, svc)
    for _ in range(int(browser.JOIN_RATE)):
        assert (await first.call("join", {"room": "demo"}))["room"] == "demo"
    await first.close()
    second = await page(pages, svc)
    assert (await second.call("join", {"room": "demo"}))["error"] == "too many joins"


async def test_every_event_acks_an_error_for_a_bad_payload(
    svc: Service, pages: list[Page], caplog: pytest.LogCaptureFixture
) -> None:
    """No payload, several arguments, wrong types: an error ack of the usual shape, no log."""
    caplog.set_level(logging.DEBUG)
    p = await page(pages, svc)
    expected = {"error": 'expected {"room": name}'}
    assert await p.call("join") == expected  # python-socketio sends no argument at all
    assert await p.call("join", ({"room": "demo"}, 1)) == expected
    assert await p.call("join", {"room": ["demo"]}) == expected
    assert await p.call("join", {"room": "é" * 100_000}) == {"error": "no such room"}
    assert await p.call("leave", ("x", 2)) == {"left": None}
    for event in ("connect", "disconnect", "message", "room", "JOIN"):
        assert (await p.call(event, {"room": "demo"}))["error"].startswith("unknown event")
    assert (await p.call("join", {"room": "demo"}))["room"] == "demo"  # still connected
    assert [r for r in caplog.records if r.levelno > logging.INFO] == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
HUGE_TEXT = st.builds(lambda char, n: char * n, st.characters(), st.integers(1_000, 60_000))
"""Up to 60,000 characters: 720 kB as JSON at worst (12 bytes for an astral character),
under python-engineio's 1 MB message limit, past which the connection is closed."""
PAYLOAD = st.one_of(
    st.none(),  # no argument
    JSON,
    HUGE_TEXT,
    st.binary(max_size=64),  # a binary attachment
    st.fixed_dictionaries({"room": JSON | HUGE_TEXT | st.sampled_from(["demo", "nope", "demo\x00", "DEMO"])}),
    st.tuples(JSON, JSON),  # two arguments
)
EVENT = st.sampled_from(["join", "leave", "chat", "connect", "disconnect", "message", "room"]) | st.text(
    min_size=1, max_size=20)


@pytest.fixture
def fuzz_svc_errors() -> Iterator[list[logging.LogRecord]]:
    """Records above INFO from any logger while the fuzz test runs."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    yield seen
    logging.getLogger().removeHandler(handler)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(event=EVENT, payload=PAYLOAD)
async def test_fuzz_browser_events_always_ack(
    svc: Service, pages: list[Page], fuzz_svc_errors: list[logging.LogRecord], event: str, payload: Any
) -> None:
    """Any event with any payload through a real python-socketio client: an ack dict,
    the connection stays, nothing logged above INFO.  (One service and page for all
    examples: the health check about function-scoped fixtures is suppressed for that.)"""
    if not pages:
        await page(pages, svc)
        namespace_of(svc).join_limiter = TokenBuckets(1e9, 10**9)  # exercise the parsing
    p = pages[0]
    reply = await p.call(event, payload)
    assert isinstance(reply, dict), reply
    if event == "join" and reply.get("room") == "demo":
        assert payload == {"room": "demo"}
    elif event == "leave":
        assert set(reply) == {"left"}
    elif event == "chat" and "message" in reply:
        assert isinstance(payload, dict) and isinstance(payload.get("text"), str)
    elif event == "chat":
        assert {"error", "detail"} <= set(reply) <= {"error", "detail", "retry_after"}
    else:
        assert set(reply) == {"error"} and isinstance(reply["error"], str) and len(reply["error"]) < 200
    assert p.sio.connected
    # An unretrieved task exception is logged when the task is collected.  This example's
    # tasks are young: collecting generations 0–1 finds them without walking the whole
    # heap of the test session (a full collection per example costs ~1 s late in the suite).
    gc.collect(1)
    assert fuzz_svc_errors == [], [r.getMessage()[:300] for r in fuzz_svc_errors]


async def test_connections_per_address_are_capped(pages: list[Page]) -> None:
    async with Service(make_config(embedded_sfu=False, sio_connections_per_address=3)) as svc:
        ns = namespace_of(svc)
        for _ in range(3):
            await page(pages, svc)
        refused = new_page(pages)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(svc)
        assert refused.refusals == [{"message": "too many connections from 127.0.0.1 (at most 3); close one and retry"}]
        # A client naming its own event "disconnect" does not free a slot.
        assert (await pages[0].call("disconnect"))["error"].startswith("unknown event")
        assert ns.connections == {"127.0.0.1": 3}
        with pytest.raises(socketio.exceptions.ConnectionError):
            await new_page(pages).connect(svc)
        # A real disconnect does.
        await pages[0].close()
        await wait_for(lambda: ns.connections == {"127.0.0.1": 2}, 5, lambda: f"a free slot ({ns.connections})")
        again = await page(pages, svc)
        assert (await again.call("join", {"room": "demo"}))["room"] == "demo"
        for p in pages:
            await p.close()
        await wait_for(lambda: not ns.connections and not ns.addresses, 5, "every connection forgotten")


# ---------------------------------------------------------------- Origin
FOREIGN = "http://pages.example.org"


async def test_foreign_origin_is_refused_same_origin_and_none_accepted(
    svc: Service, pages: list[Page], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await new_page(pages).connect(svc, headers={"Origin": FOREIGN})
    same, none = new_page(pages), new_page(pages)
    await same.connect(svc, headers={"Origin": svc.url})
    await none.connect(svc)  # no Origin header: SFU nodes, python clients
    for p in (same, none):
        assert (await p.call("join", {"room": "demo"}))["room"] == "demo"
    assert [r for r in caplog.records if r.levelno > logging.INFO] == []  # a client error


async def test_origin_rule_holds_for_polling_handshakes(svc: Service, http: aiohttp.ClientSession) -> None:
    """The long-polling handshake (GET, what a cross-site page could send): 400 for a
    foreign Origin, an Engine.IO open packet otherwise.  (Raw requests: a python-socketio
    polling client takes a ping interval, 25 s, to disconnect.)"""
    url = f"{svc.url}/socket.io/?EIO=4&transport=polling"
    for origin, status in ((FOREIGN, 400), (svc.url, 200), (None, 200)):
        headers = {"Origin": origin} if origin else {}
        async with http.get(url, headers=headers) as resp:
            body = await resp.read()
            assert resp.status == status, (origin, body)
            assert body.startswith(b"0{") == (status == 200)
            allow = resp.headers.get("Access-Control-Allow-Origin")
            assert allow == (origin if origin and status == 200 else None)


@pytest.mark.parametrize("allowed", [(FOREIGN,), ("*",)])
async def test_allowed_origins_are_configurable(pages: list[Page], allowed: tuple[str, ...]) -> None:
    async with Service(make_config(embedded_sfu=False, allowed_origins=allowed)) as svc:
        p = await new_page(pages).connect(svc, headers={"Origin": FOREIGN})
        assert (await p.call("join", {"room": "demo"}))["room"] == "demo"
        other = new_page(pages)
        if allowed == ("*",):
            await other.connect(svc, headers={"Origin": "http://elsewhere.example"})
        else:
            with pytest.raises(socketio.exceptions.ConnectionError):
                await other.connect(svc, headers={"Origin": svc.url})  # only the listed ones
        await p.close()
        await other.close()


def test_allowed_origins_config() -> None:
    read = SignalingConfig.from_env
    assert read({}).allowed_origins == ()
    assert read({"RELAYCAST_ALLOWED_ORIGINS": "*"}).allowed_origins == ("*",)
    assert read({"RELAYCAST_ALLOWED_ORIGINS": "https://A.example/, http://b.example:8080"}).allowed_origins == (
        "https://a.example", "http://b.example:8080")
    for bad in ("https://a.example/watch", "ftp://a.example", "*, https://a.example", "a.example"):
        with pytest.raises(ConfigError, match="RELAYCAST_ALLOWED_ORIGINS"):
            read({"RELAYCAST_ALLOWED_ORIGINS": bad})
    assert read({}).sio_connections_per_address == 20
    assert read({"RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS": "5"}).sio_connections_per_address == 5
    with pytest.raises(ConfigError, match="RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS"):
        read({"RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS": "0"})


async def test_node_room_state_is_pushed(svc: Service, pages: list[Page]) -> None:
    """A node's room_state (a Socket.IO client on /sfu) reaches the joined page."""
    p = await page(pages, svc)
    await p.call("join", {"room": "demo"})
    node = await fake_node(svc, svc.config.node_secret)
    try:
        await node.emit("room_state", {"room": "demo", "live": True, "viewers": 2}, namespace="/sfu")
        await wait_for(lambda: p.events, 5, "the room event")
        assert {k: p.events[0][k] for k in ("live", "viewers")} == {"live": True, "viewers": 2}
    finally:
        await node.disconnect()
    await wait_for(lambda: len(p.events) == 2, 5, "node_lost to end the room")
    assert {k: p.events[1][k] for k in ("live", "viewers")} == {"live": False, "viewers": 0}


async def fake_node(svc: Service, secret: str) -> socketio.AsyncClient:
    node = socketio.AsyncClient(reconnection=False)
    await node.connect(svc.url, namespaces=["/sfu"], socketio_path=SOCKETIO_PATH, transports=["websocket"],
                       wait_timeout=10, auth={"node_id": "fake-node", "secret": secret})
    await node.emit("load", {"sessions": 0, "capacity": 10}, namespace="/sfu")
    await wait_for(lambda: svc.app[NAMESPACE_KEY].registry.nodes, 5, "the node to register")
    return node


# ---------------------------------------------------------------- Redis mode
@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[tuple[Service, Service]]:
    config = make_config(embedded_sfu=False, redis_url=redis_server.url, node_secret=SECRET)
    async with Service(config) as a, Service(config) as b:
        yield a, b


async def test_redis_announce_on_a_reaches_b_once(cluster: tuple[Service, Service], pages: list[Page]) -> None:
    a, b = cluster
    on_a, on_b = await page(pages, a), await page(pages, b)
    for p in (on_a, on_b):
        assert (await p.call("join", {"room": "demo"}))["room"] == "demo"

    await browser.announce_room(b.app, "demo", origin=False)  # B got the event too: silent
    await browser.announce_room(a.app, "demo", origin=True)
    # A marker through the same path: Redis delivers in publish order, so once the marker
    # is in, anything published before it is in too.
    a.app[browser.ROOMS].get("demo").viewers = 7  # type: ignore[union-attr]
    await browser.announce_room(a.app, "demo", origin=True)
    for p in (on_a, on_b):
        await wait_for(lambda p=p: any(e["viewers"] == 7 for e in p.events), 5, "the marker event")
        assert [e["viewers"] for e in p.events] == [0, 7]


async def test_redis_node_event_is_pushed_once_everywhere(
    cluster: tuple[Service, Service], pages: list[Page]
) -> None:
    """The node on A reports; both instances handle the event, pages on A and B get it once."""
    a, b = cluster
    on_a, on_b = await page(pages, a), await page(pages, b)
    for p in (on_a, on_b):
        await p.call("join", {"room": "demo"})
    node = await fake_node(a, SECRET)
    try:
        # One at a time: python-socketio runs each event handler in its own task, so the
        # states of a burst may be applied (and pushed) out of order.
        # State 4 is the marker: a duplicate of 1-3 would be published before it.
        for viewers in (1, 2, 3, 4):
            await node.emit("room_state", {"room": "demo", "live": True, "viewers": viewers}, namespace="/sfu")
            for p in (on_a, on_b):
                await wait_for(lambda p=p, n=viewers: len(p.events) >= n, 5, f"room event {viewers}")
        for p in (on_a, on_b):
            assert [e["viewers"] for e in p.events] == [1, 2, 3, 4]
        assert (await on_b.call("join", {"room": "demo"}))["viewers"] == 4  # B's state, via Redis
    finally:
        await node.disconnect()
