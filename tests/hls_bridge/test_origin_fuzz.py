"""Fuzzing the LL-HLS origin (hypothesis): arbitrary delivery directives, query keys and
path segments never get a 5xx other than the spec's 503 for a part that did not
appear in time (RFC 8216bis §6.2.5.2), and never log an ERROR."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from yarl import URL

from hls_bridge import origin
from hls_bridge.problems import NOT_READY, PROBLEM_TYPES
from hls_bridge.store import RoomStore

STREAM = "s1"
HOLD_S = 0.05
"""Blocking requests give up after this long here (3 target durations in service)."""
MAX_REQUEST_LINE = 8000
"""aiohttp's HTTP parser refuses request lines over 8190 bytes before any handler runs
(a 400 that aiohttp itself logs at ERROR): the fuzzed URLs stay below that."""

TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
TRICKY = st.sampled_from(
    ["", "²", "¹", "٣", "１", "+1", " 1", "1 ", "1.0", "0x1", "-0", "9" * 5000, "1e3", "۱۲"]
)
"""Strings a lax integer parser takes (str.isdigit, int()) or chokes on."""
NUMBERS = st.one_of(
    TRICKY,
    st.integers(min_value=-10, max_value=10).map(str),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
)
DIRECTIVES = st.sampled_from(["_HLS_msn", "_HLS_part", "_HLS_skip"])
DIRECTIVE_VALUES = st.one_of(NUMBERS, TEXT, st.sampled_from(["YES", "v2", "NO", "yes"]))
QUERIES = st.lists(
    st.tuples(st.one_of(DIRECTIVES, DIRECTIVES, TEXT), DIRECTIVE_VALUES), max_size=4
)
MEDIA_NAMES = st.one_of(
    st.sampled_from(["index.m3u8", "init.mp4", "seg0.m4s", "part1.0.m4s", "part3.3.m4s"]),
    st.from_regex(r"\A(seg|part)-?[0-9]{0,30}(\.-?[0-9]{0,30})?\.m4s\Z"),
    st.builds(lambda n: f"seg{n}.m4s", NUMBERS),
    st.builds(lambda a, b: f"part{a}.{b}.m4s", NUMBERS, NUMBERS),
    TEXT,
)
ROOMS = st.sampled_from(["live", "ended", "fresh"])
RENDITIONS = st.sampled_from(["v0", "a0"])
PATHS = st.one_of(
    # a media playlist that exists (the delivery directives are read)
    st.tuples(ROOMS, st.just(STREAM), RENDITIONS, st.just("index.m3u8")).map(list),
    # media names in a rendition that exists
    st.tuples(ROOMS, st.just(STREAM), RENDITIONS, MEDIA_NAMES).map(list),
    # anything in any path segment
    st.tuples(
        st.one_of(ROOMS, TEXT), st.one_of(st.just(STREAM), TEXT), st.one_of(RENDITIONS, TEXT),
        MEDIA_NAMES,
    ).map(list),
    st.lists(st.one_of(st.sampled_from(["live", STREAM, "v0", "index.m3u8"]), TEXT), max_size=6),
)


def make_room(parts: int, *, ended: bool = False) -> RoomStore:
    """A room with renditions v0 and a0, ``parts`` 0.2 s parts each (5 per segment)."""
    room = RoomStore(stream_id=STREAM)
    for name in ("v0", "a0"):
        store = room.add_rendition(name, target_duration=1, part_target=0.2)
        store.set_init(b"init")
        for index in range(parts):
            store.publish_part(b"part", 0.2, independent=index % 5 == 0,
                               program_date_time=datetime(2026, 1, 1, tzinfo=UTC))
            if index % 5 == 4:
                store.close_segment()
    room.set_variants([])
    if ended:
        room.end()
    return room


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[asyncio.AbstractEventLoop, TestClient]]:
    """The real origin app (blocking requests held `HOLD_S`) on 127.0.0.1, with its loop."""
    monkeypatch.setattr(origin, "blocking_timeout", lambda playlist: HOLD_S)
    rooms = {"live": make_room(18), "ended": make_room(10, ended=True), "fresh": make_room(0)}
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.add_subapp("/hls", origin.create_origin_app(rooms))
    test_client = TestClient(TestServer(app, host="127.0.0.1"), loop=loop)
    loop.run_until_complete(test_client.start_server())
    try:
        yield loop, test_client
    finally:
        loop.run_until_complete(test_client.close())
        loop.close()


async def fetch(client: TestClient, url: URL) -> tuple[int, dict[str, str], bytes]:
    async with client.session.get(url, allow_redirects=False) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def test_fuzzed_requests_never_get_a_5xx_or_log_an_error(
    client: tuple[asyncio.AbstractEventLoop, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    loop, test_client = client
    base = test_client.make_url("/hls")

    @settings(max_examples=1000, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(path=PATHS, query=QUERIES)
    def check(path: list[str], query: list[tuple[str, str]]) -> None:
        caplog.clear()
        raw = str(base) + "/" + "/".join(quote(segment, safe="") for segment in path)
        if query:
            raw += "?" + urlencode(query, quote_via=quote)
        assume(len(raw) < MAX_REQUEST_LINE)
        status, headers, body = loop.run_until_complete(fetch(test_client, URL(raw, encoded=True)))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
        if status >= 500:
            # Only the spec's answer to a part (or first playlist) that did not appear.
            assert status == 503 and headers.get("Retry-After") == "1", (raw[:300], status, body)
            assert NOT_READY.uri.encode() in body
        if status >= 400 and headers.get("Content-Type", "").startswith("application/problem"):
            assert any(uri.encode() in body for uri in PROBLEM_TYPES) or b"about:blank" in body

    with caplog.at_level(logging.INFO):
        check()
