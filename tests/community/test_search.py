"""Discovery on SQLite (FTS5) and PostgreSQL (tsvector + GIN): search finds streams by
title word, channel name, display name, tag and category name; filters; the index follows
changes (triggers); keyset pagination covers every result exactly once; hostile ``q``
strings never answer 5xx (hypothesis); categories and past broadcasts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from community.app import Community
from community.config import CommunityConfig
from community.models import Channel, Stream, StreamTag, User, utcnow
from community.search import Cursor, fts5_query, terms, tsquery
from tests.community.platform_app import community_of, make_user, platform_app

pytestmark = pytest.mark.timeout(120)

_clock = itertools.count()


async def add_stream(community: Community, channel: str, title: str, *, status: str = "live", viewers: int = 0,
                     category: str | None = None, tags: list[str] | None = None, language: str = "en",
                     recording: str | None = None) -> str:
    """A stream written directly (the search index follows through the database's triggers)."""
    now = utcnow()
    started = now - timedelta(seconds=1000 - next(_clock))
    async with community.db.transaction() as session:
        owner = (await session.execute(select(Channel).where(Channel.name == channel))).scalar_one()
        stream = Stream(channel_id=owner.id, title=title, status=status, viewers=viewers, peak_viewers=viewers,
                        category=category, tags=tags or [], language=language, recording=recording,
                        started_at=None if status == "pending" else started,
                        ended_at=started + timedelta(seconds=90) if status == "ended" else None)
        session.add(stream)
        await session.flush()
        for tag in tags or []:
            session.add(StreamTag(stream_id=stream.id, tag=tag))
        return stream.id


async def ids(client: TestClient, path: str, **params: Any) -> list[str]:
    response = await client.get(path, params={k: str(v).lower() if isinstance(v, bool) else v
                                              for k, v in params.items()})
    assert response.status == 200, await response.text()
    return [s["id"] for s in (await response.json())["streams"]]


@pytest.fixture
async def seeded(db_client: TestClient) -> dict[str, str]:
    community = community_of(db_client)
    for name in ("rustacean", "painter", "chef", "planner", "hidden", "banned"):
        await make_user(community, name)
    async with community.db.transaction() as session:
        for user in (await session.execute(select(User))).scalars():
            if user.username == "rustacean":
                user.display_name = "Ferris Crab"
            if user.username == "banned":
                user.suspended_at = utcnow()
        hidden = (await session.execute(select(Channel).where(Channel.name == "hidden"))).scalar_one()
        hidden.private = True
    return {
        "compiler": await add_stream(community, "rustacean", "Writing a compiler in Rust", viewers=30,
                                     category="software-development", tags=["rust", "compilers"]),
        "watercolor": await add_stream(community, "painter", "Watercolour landscapes", viewers=50, category="art",
                                       tags=["painting"], language="fr"),
        "cafe": await add_stream(community, "chef", "Café crème & croissants", viewers=10, category="food-drink",
                                 tags=["baking", "french"], language="fr"),
        "old": await add_stream(community, "chef", "Sourdough basics", status="ended", category="food-drink",
                                tags=["baking"], recording="chef/20261201T000000Z-00000001/index.m3u8"),
        "pending": await add_stream(community, "planner", "Upcoming oil session", status="pending"),
        "private": await add_stream(community, "hidden", "Secret compiler stream", viewers=99),
        "suspended": await add_stream(community, "banned", "Compiler for the banned", viewers=98),
    }


@pytest.mark.parametrize("q, expected", [
    ("compiler", ["compiler"]),          # a title word
    ("COMPIL", ["compiler"]),            # prefix, any case
    ("rustacean", ["compiler"]),         # the channel name
    ("ferris", ["compiler"]),            # the owner's display name
    ("compilers", ["compiler"]),         # a tag
    ("software development", ["compiler"]),  # the category name (all words required)
    ("food", ["cafe", "old"]),           # category name, live and ended
    ("cafe creme", ["cafe"]),            # diacritics do not matter
    ("baking", ["cafe", "old"]),         # a tag on two streams
    ("rust painting", []),               # every word must match
    ("oil", []),                         # pending streams are not listed
    ("secret", []),                      # private channels are not listed
    ("banned", []),                      # nor suspended owners
])
async def test_search_finds_by_every_field(db_client: TestClient, seeded: dict[str, str], q: str,
                                           expected: list[str]) -> None:
    found = await ids(db_client, "/api/streams/search", q=q)
    assert sorted(found) == sorted(seeded[name] for name in expected)


async def test_search_and_directory_filters(db_client: TestClient, seeded: dict[str, str]) -> None:
    s = seeded
    # The directory: live streams, most viewers first.
    assert await ids(db_client, "/api/streams") == [s["watercolor"], s["compiler"], s["cafe"]]
    assert await ids(db_client, "/api/streams", live=False) == [s["old"]]
    assert await ids(db_client, "/api/streams", category="food-drink") == [s["cafe"]]
    assert await ids(db_client, "/api/streams", tag="Rust") == [s["compiler"]]
    assert await ids(db_client, "/api/streams", language="fr") == [s["watercolor"], s["cafe"]]
    assert await ids(db_client, "/api/streams", sort="recent") == [s["cafe"], s["watercolor"], s["compiler"]]
    assert await ids(db_client, "/api/streams/search", q="baking", live=True) == [s["cafe"]]
    assert await ids(db_client, "/api/streams/search", q="baking", live=False) == [s["old"]]
    assert await ids(db_client, "/api/streams/search", q="", category="art") == [s["watercolor"]]
    assert await ids(db_client, "/api/streams/search", q="baking", tag="french") == [s["cafe"]]

    response = await db_client.get("/api/streams/search", params={"q": "compiler"})
    [stream] = (await response.json())["streams"]
    assert (stream["channel"], stream["channel_display_name"], stream["category_name"], stream["status"]) == (
        "rustacean", "Ferris Crab", "Software Development", "live")


async def test_index_follows_changes(db_client: TestClient, seeded: dict[str, str]) -> None:
    community = community_of(db_client)
    async with community.db.transaction() as session:
        stream = await session.get(Stream, seeded["watercolor"])
        assert stream is not None
        stream.title = "Gouache portraits"
        stream.tags = ["gouache"]
        owner = (await session.execute(select(User).where(User.username == "chef"))).scalar_one()
        owner.display_name = "Gordon Cook"
    assert await ids(db_client, "/api/streams/search", q="watercolour") == []
    assert await ids(db_client, "/api/streams/search", q="gouache portraits") == [seeded["watercolor"]]
    assert sorted(await ids(db_client, "/api/streams/search", q="gordon")) == sorted([seeded["cafe"], seeded["old"]])
    async with community.db.transaction() as session:
        await session.delete(await session.get(Stream, seeded["cafe"]))
    assert await ids(db_client, "/api/streams/search", q="gordon") == [seeded["old"]]


async def test_categories_count_live_public_streams(db_client: TestClient, seeded: dict[str, str]) -> None:
    response = await db_client.get("/api/categories")
    assert response.status == 200
    categories = (await response.json())["categories"]
    assert categories[:3] == [
        {"slug": "art", "name": "Art", "live_streams": 1, "viewers": 50},
        {"slug": "software-development", "name": "Software Development", "live_streams": 1, "viewers": 30},
        {"slug": "food-drink", "name": "Food & Drink", "live_streams": 1, "viewers": 10},
    ]
    assert len(categories) >= 12 and all(c["live_streams"] == 0 for c in categories[3:])


async def test_videos_of_a_channel(db_client: TestClient, seeded: dict[str, str]) -> None:
    response = await db_client.get("/api/channels/chef/videos")
    assert response.status == 200
    [video] = (await response.json())["videos"]
    assert video["stream_id"] == seeded["old"] and video["duration_s"] == 90.0
    assert video["url"].endswith("/vod/chef/20261201T000000Z-00000001/index.m3u8")
    assert (await db_client.get("/api/channels/nobody/videos")).status == 404
    assert (await db_client.get("/api/channels/hidden/videos")).status == 404  # private
    assert (await db_client.get("/api/channels/chef/videos", params={"cursor": "x"})).status == 400


@pytest.mark.parametrize("sort", ["viewers", "recent"])
async def test_pagination_covers_every_result_once(db_client: TestClient, sort: str) -> None:
    community = community_of(db_client)
    await make_user(community, "pager")
    for number in range(15):  # one open stream per channel: ended ones, plus one live
        await add_stream(community, "pager", f"episode {number}", status="ended", viewers=0)
    others = []
    for number in range(8):
        name = f"pager_{number}"
        await make_user(community, name)
        others.append(await add_stream(community, name, f"episode live {number}", viewers=number % 3))
    for path, params, total in (("/api/streams/search", {"q": "episode"}, 23),
                                ("/api/streams", {"live": "true"}, 8)):
        seen: list[str] = []
        cursor = None
        for _ in range(20):
            query = {**params, "sort": sort, "limit": "4", **({"cursor": cursor} if cursor else {})}
            response = await db_client.get(path, params=query)
            assert response.status == 200, await response.text()
            body = await response.json()
            assert len(body["streams"]) <= 4
            seen += [s["id"] for s in body["streams"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == total, (path, sort)
    assert set(others) <= set(seen)


async def test_bad_cursors_and_limits_are_400(db_client: TestClient) -> None:
    platform_client = db_client
    viewers_cursor = Cursor("viewers", 3, "abc").encode()
    for params in ({"cursor": "not base64 !"}, {"cursor": "W10"}, {"cursor": viewers_cursor, "sort": "recent"},
                   {"cursor": Cursor("recent", "yesterday", "x").encode(), "sort": "recent"},
                   {"cursor": Cursor("recent", "2026-01-01T00:00:00", "x").encode(), "sort": "recent"},
                   {"cursor": Cursor("viewers", 2**63, "x").encode()}, {"cursor": Cursor("viewers", 1, "\x00").encode()},
                   {"category": "\x00"}, {"tag": "a\x00"}, {"language": "e\x00"},
                   {"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"sort": "random"}, {"live": "maybe"},
                   {"cursor": "A" * 500}):
        for path in ("/api/streams", "/api/streams/search"):
            response = await platform_client.get(path, params=params)
            assert response.status == 400, (path, params)
            assert response.content_type == "application/problem+json"
    too_long = await platform_client.get("/api/streams/search", params={"q": "x" * 1001})
    assert too_long.status == 400


def test_terms_are_never_query_syntax() -> None:
    assert terms('"NEAR(a b)" OR x* -y ^z col:w') == ["near", "a", "b", "or", "x", "y", "z", "col"]  # 8 at most
    assert terms("") == [] and terms("*** --- \"\"") == []
    assert fts5_query(["near", "or"]) == '"near"* "or"*'
    assert tsquery(["it's"]) == "'it''s':*"
    assert len(terms("word " * 100)) == 8


HOSTILE = ['"', "'", '""', "NEAR(", "NEAR(a b", "*", "-", "a -b", "a OR", "AND", "NOT x", "col:x", "^x", "(((",
           ")", "{a b}", "a:*", "!", "&|", "\\", "\x00", "ü", "日本語の配信", "🎮🎮", "x" * 1000, "é" * 999,
           "' OR 1=1 --", "%", "_", "a" + "\u0301" * 10, "\ufeff", "²³", "١٢٣"]


@pytest.fixture
def loop_client(db_url: str, tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, TestClient]]:
    """A platform test client on its own event loop (hypothesis drives it synchronously)."""
    loop = asyncio.new_event_loop()
    config = CommunityConfig(data_dir=tmp_path, database_url=db_url)
    client = TestClient(TestServer(platform_app(config)), loop=loop)
    loop.run_until_complete(client.start_server())

    async def seed() -> None:
        community = community_of(client)
        await make_user(community, "fuzz")
        await add_stream(community, "fuzz", "Fuzzing the search box", tags=["x"])

    loop.run_until_complete(seed())
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def test_hostile_queries_never_5xx(loop_client: tuple[asyncio.AbstractEventLoop, TestClient]) -> None:
    loop, client = loop_client

    async def search(q: str, sort: str) -> int:
        async with client.session.get(client.make_url("/api/streams/search"),
                                      params={"q": q, "sort": sort}) as response:
            await response.read()
            return response.status

    for q in HOSTILE:
        assert loop.run_until_complete(search(q, "viewers")) == 200, q

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(q=st.text(max_size=1000), sort=st.sampled_from(["viewers", "recent"]))
    def check(q: str, sort: str) -> None:
        status = loop.run_until_complete(search(q, sort))
        assert status == 200 or (status == 400 and ("\x00" in q or len(q) > 1000)), (q, status)

    check()
