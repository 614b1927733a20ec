"""LL-HLS origin over real HTTP on 127.0.0.1: blocking reload, preload hints, retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import m3u8
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from hls_bridge.origin import create_origin_app
from hls_bridge.playlist import VariantStream
from hls_bridge.problems import BAD_DIRECTIVE, NOT_FOUND, NOT_READY, PROBLEM_TYPES, ProblemType
from hls_bridge.store import RenditionStore, RoomStore, StoreError
from tests.hls_bridge import llhls_checker as checker
from tests.polling import wait_for

TARGET = 1
PART = 0.2
PARTS_PER_SEGMENT = 5
RENDITIONS = ("v0", "v1")
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
BASE = "/hls/demo"
STREAM = "s1"
MEDIA = f"{BASE}/{STREAM}"  # rendition folders live under the stream id


def payload(rendition: str, msn: int, index: int) -> bytes:
    """Known, distinct bytes for each part."""
    return f"<{rendition} part {msn}.{index}>".encode() * 40


def init_bytes(rendition: str) -> bytes:
    return f"<init {rendition}>".encode() * 10


class FakeClock:
    """Retention clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Feeder:
    """Publishes 0.2 s parts (1 s segments) on every rendition of a room in lockstep."""

    def __init__(self, room: RoomStore) -> None:
        self.room = room
        self.published: dict[tuple[int, int], float] = {}
        """(msn, part) → time.monotonic() when it was published (on every rendition)."""

    def step(self) -> tuple[int, int]:
        """Publish the next part everywhere; close the segment after its 5th part."""
        first = self.room.renditions[RENDITIONS[0]].playlist
        msn, index = first.next_msn, len(first.pending_parts)
        for name, store in self.room.renditions.items():
            store.publish_part(payload(name, msn, index), PART, independent=index == 0)
            if index == PARTS_PER_SEGMENT - 1:
                store.close_segment(T0 + timedelta(seconds=msn * TARGET))
        self.published[(msn, index)] = time.monotonic()
        return msn, index

    def segments(self, count: int) -> None:
        for _ in range(count * PARTS_PER_SEGMENT):
            self.step()

    async def run(self, steps: int = 100) -> None:
        """Live source: one part per PART seconds (bounded)."""
        for _ in range(steps):
            await asyncio.sleep(PART)
            self.step()


def make_room(clock: Callable[[], float], **kwargs: object) -> RoomStore:
    room = RoomStore(stream_id=STREAM)
    for name in RENDITIONS:
        store = room.add_rendition(
            name, target_duration=TARGET, part_target=PART, clock=clock, **kwargs
        )
        store.set_init(init_bytes(name))
    room.set_variants(
        [
            VariantStream("v0/index.m3u8", 2_000_000, "avc1.64001f", resolution=(1280, 720)),
            VariantStream("v1/index.m3u8", 800_000, "avc1.64001e", resolution=(640, 360)),
        ]
    )
    return room


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def room(clock: FakeClock) -> RoomStore:
    return make_room(clock, window_segments=12)


@pytest.fixture
def feeder(room: RoomStore) -> Feeder:
    return Feeder(room)


@pytest.fixture
async def client(aiohttp_client, room: RoomStore) -> TestClient:
    app = web.Application()
    app.add_subapp("/hls", create_origin_app({"demo": room}))
    return await aiohttp_client(app)


def next_part(msn: int, index: int) -> tuple[int, int]:
    return (msn, index + 1) if index + 1 < PARTS_PER_SEGMENT else (msn + 1, 0)


async def get_playlist(
    client: TestClient, rendition: str = "v0", **query: str | int
) -> tuple[aiohttp.ClientResponse, str]:
    """GET a media playlist, assert 200 + headers + LL-HLS conformance."""
    resp = await client.get(f"{MEDIA}/{rendition}/index.m3u8", params=query)
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "application/vnd.apple.mpegurl"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    checker.check_media(text)
    return resp, text


async def assert_problem(
    resp: aiohttp.ClientResponse, status: int, kind: ProblemType | None = None
) -> dict:
    """A problem+json error of ``status``, of type ``kind`` (default: the origin's type
    for that status) with that type's title."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json(content_type=None)
    kind = kind or {400: BAD_DIRECTIVE, 404: NOT_FOUND, 503: NOT_READY}[status]
    assert body["status"] == status and body["type"] == kind.uri, body
    assert PROBLEM_TYPES[body["type"]].title == body["title"]
    return body


def listed_last(text: str) -> tuple[int, int]:
    last = checker.last_msn_part(m3u8.loads(text))
    assert last is not None and last[1] is not None
    return last[0], last[1]


# -- blocking playlist reload (§6.2.5.2) ----------------------------------------------


async def test_blocking_reload_returns_after_the_part_is_published(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    feeder.step()
    live = asyncio.create_task(feeder.run())
    try:
        renders = []
        store = room.renditions["v0"]
        for _ in range(6):
            last = store.playlist.last_msn_part()
            assert last is not None and last[1] is not None
            # two parts ahead: certainly not published before the request is sent
            target = next_part(*next_part(last[0], last[1]))
            sent = time.monotonic()
            resp, text = await get_playlist(client, _HLS_msn=target[0], _HLS_part=target[1])
            arrived = time.monotonic()
            assert sent < feeder.published[target] <= arrived
            assert listed_last(text) >= target
            assert f'"part{target[0]}.{target[1]}.m4s"' in text
            assert resp.headers["Cache-Control"] == f"public, max-age={3 * TARGET}"
            renders.append(text)
        checker.check_sequence(renders)

        # _HLS_msn alone waits for that whole segment to close
        msn = store.playlist.next_msn
        sent = time.monotonic()
        _, text = await get_playlist(client, "v1", _HLS_msn=msn)
        assert sent < feeder.published[(msn, PARTS_PER_SEGMENT - 1)]
        assert f"\nseg{msn}.m4s\n" in text
    finally:
        live.cancel()


async def test_bad_delivery_directives_are_400(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    feeder.segments(2)
    feeder.step()  # last = (2, 0)
    body = await assert_problem(
        await client.get(f"{MEDIA}/v0/index.m3u8", params={"_HLS_part": 1}), 400
    )
    assert "_HLS_msn" in body["detail"]
    # msn > last + 2
    await assert_problem(
        await client.get(f"{MEDIA}/v0/index.m3u8", params={"_HLS_msn": 5, "_HLS_part": 0}), 400
    )
    await assert_problem(await client.get(f"{MEDIA}/v0/index.m3u8?_HLS_msn=5"), 400)
    # a part far past the last one of the current segment
    await assert_problem(
        await client.get(f"{MEDIA}/v0/index.m3u8", params={"_HLS_msn": 2, "_HLS_part": 40}), 400
    )
    await assert_problem(await client.get(f"{MEDIA}/v0/index.m3u8?_HLS_msn=x"), 400)
    await assert_problem(await client.get(f"{MEDIA}/v0/index.m3u8?_HLS_skip=maybe"), 400)
    # msn = last + 2 is allowed: it blocks (here until the stream ends)
    store = room.renditions["v0"]
    pending = asyncio.create_task(client.get(f"{MEDIA}/v0/index.m3u8?_HLS_msn=4"))
    await wait_for(
        lambda: store.waiters == 1, 5.0, "one blocked playlist request", interval_s=0.005
    )
    for _ in range(PARTS_PER_SEGMENT - 1):
        feeder.step()
    assert not pending.done()
    room.end()
    resp = await asyncio.wait_for(pending, 5)
    assert resp.status == 200 and "#EXT-X-ENDLIST" in await resp.text()


@pytest.mark.parametrize(
    "query",
    [
        "_HLS_msn=%C2%B2",  # superscript two: str.isdigit() says yes, int() says no
        "_HLS_msn=0&_HLS_part=%C2%B9",  # superscript one
        pytest.param("_HLS_msn=" + "9" * 5000, id="msn-5000-digits"),  # int() refuses
        pytest.param("_HLS_msn=0&_HLS_part=" + "1" * 5000, id="part-5000-digits"),
        "_HLS_msn=%D9%A3",  # ARABIC-INDIC DIGIT THREE: int() would take it
        "_HLS_msn=%EF%BC%91",  # FULLWIDTH DIGIT ONE
        "_HLS_msn=1" + "0" * 20,  # 21 digits
        "_HLS_msn=",
        "_HLS_msn=+1",
        "_HLS_msn=%201",
        "_HLS_msn=1.0",
        "_HLS_msn=-0",
        "_HLS_msn=1&_HLS_msn=2",  # a directive given twice
    ],
)
async def test_malformed_delivery_directives_are_400(
    client: TestClient, feeder: Feeder, query: str
) -> None:
    """Directives are decimal-integers (RFC 8216bis §4.2): 1-20 ASCII digits."""
    feeder.step()
    resp = await client.get(f"{MEDIA}/v0/index.m3u8?{query}")
    body = await assert_problem(resp, 400)
    assert len(body["detail"]) < 100


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("seg" + "1" * 5000 + ".m4s", id="seg-5000-digits"),
        pytest.param("part" + "1" * 5000 + ".0.m4s", id="part-msn-5000-digits"),
        pytest.param("part0." + "1" * 5000 + ".m4s", id="part-index-5000-digits"),
        "seg%D9%A0.m4s",  # ARABIC-INDIC DIGIT ZERO: not segment 0
        "part%D9%A0.0.m4s",
        "seg%C2%B2.m4s",
        "seg-1.m4s",
        "seg.m4s",
        "seg0.m4s.bak",
        "part0.m4s",
        "index.m3u8x",
    ],
)
async def test_unknown_media_names_are_404(
    client: TestClient, feeder: Feeder, name: str
) -> None:
    feeder.segments(1)
    feeder.step()
    resp = await client.get(f"{MEDIA}/v0/{name}")
    await assert_problem(resp, 404)
    assert (await client.get(f"{MEDIA}/v0/seg0.m4s")).status == 200


async def roundtrip(client: TestClient) -> None:
    """One request through the origin: waiters woken by an earlier store change have
    re-checked their condition by the time it is answered."""
    assert (await client.get(f"{MEDIA}/v0/init.mp4")).status == 200


async def test_first_playlists_wait_for_a_closed_segment(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    """A starting stream is never handed out empty: parts alone are not enough (hls.js
    answers a playlist without an EXTINF with levelEmptyError); media playlists are
    held until their rendition's first segment closes, the multivariant playlist until
    every rendition's has."""
    v0, v1 = room.renditions["v0"], room.renditions["v1"]
    multivariant = asyncio.create_task(client.get(f"{BASE}/index.m3u8"))
    plain = asyncio.create_task(client.get(f"{MEDIA}/v0/index.m3u8"))
    blocking = asyncio.create_task(client.get(f"{MEDIA}/v0/index.m3u8?_HLS_msn=0&_HLS_part=0"))
    await wait_for(
        lambda: v0.waiters == 3, 5.0, "three blocked playlist requests", interval_s=0.005
    )
    for _ in range(PARTS_PER_SEGMENT - 1):  # parts 0.0-0.3 on both renditions
        feeder.step()
    await roundtrip(client)
    assert not any(t.done() for t in (multivariant, plain, blocking))
    assert v0.waiters == 3

    # v0's segment 0 closes: its playlists are answered, the multivariant waits for v1
    v0.publish_part(payload("v0", 0, 4), PART, independent=False)
    v0.close_segment(T0)
    for pending in (plain, blocking):
        resp = await asyncio.wait_for(pending, 5)
        text = await resp.text()
        assert resp.status == 200, text
        checker.check_media(text)
        parsed = m3u8.loads(text)
        assert [s.uri for s in parsed.segments if s.uri] == ["seg0.m4s"]
        assert parsed.segments[0].program_date_time == T0
        assert parsed.preload_hint.uri == "part1.0.m4s"
        assert "#EXT-X-INDEPENDENT-SEGMENTS" in text
    await roundtrip(client)
    assert not multivariant.done()
    assert v1.waiters == 1

    v1.publish_part(payload("v1", 0, 4), PART, independent=False)
    v1.close_segment(T0)
    resp = await asyncio.wait_for(multivariant, 5)
    assert resp.status == 200, await resp.text()
    variants = m3u8.loads(await resp.text()).playlists
    assert len(variants) == 2
    for variant in variants:  # every playlist it names is answered at once, not empty
        started = time.monotonic()
        text = await (await client.get(f"{BASE}/{variant.uri}")).text()
        assert time.monotonic() - started < 1.0
        assert "#EXTINF:" in text, text


@pytest.mark.parametrize("parts", [0, 2])
async def test_first_playlists_without_a_segment_are_503_after_three_target_durations(
    client: TestClient, room: RoomStore, feeder: Feeder, parts: int
) -> None:
    for _ in range(parts):
        feeder.step()
    started = time.monotonic()
    multivariant, media = await asyncio.gather(
        client.get(f"{BASE}/index.m3u8"), client.get(f"{MEDIA}/v0/index.m3u8")
    )
    elapsed = time.monotonic() - started
    for resp in (multivariant, media):
        await assert_problem(resp, 503)
        assert resp.headers["Retry-After"] == "1"
    assert 3 * TARGET - 0.05 <= elapsed < 3 * TARGET + 2.0
    assert room.renditions["v0"].waiters == 0
    if parts:
        return
    # an ended rendition that never closed a segment is answered at once (ENDLIST)
    room.end()
    resp = await client.get(f"{MEDIA}/v1/index.m3u8")
    assert resp.status == 200 and "#EXT-X-ENDLIST" in await resp.text()
    assert (await client.get(f"{BASE}/index.m3u8")).status == 200


async def test_blocked_past_three_target_durations_is_503(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    feeder.segments(1)
    store = room.renditions["v0"]
    started = time.monotonic()
    resp = await client.get(f"{MEDIA}/v0/index.m3u8", params={"_HLS_msn": 1, "_HLS_part": 0})
    elapsed = time.monotonic() - started
    await assert_problem(resp, 503)
    assert 3 * TARGET - 0.05 <= elapsed < 3 * TARGET + 2.0
    assert store.waiters == 0


async def test_endlist_ignores_blocking_directives(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    feeder.segments(2)
    store = room.renditions["v0"]
    # a request blocked on a part that never comes is released by the end of the stream
    pending = asyncio.create_task(
        client.get(f"{MEDIA}/v0/index.m3u8", params={"_HLS_msn": 3, "_HLS_part": 0})
    )
    await wait_for(
        lambda: store.waiters == 1, 5.0, "one blocked playlist request", interval_s=0.005
    )
    room.end()
    resp = await asyncio.wait_for(pending, 5)
    text = await resp.text()
    assert resp.status == 200 and "#EXT-X-ENDLIST" in text
    checker.check_media(text)
    for query in ({"_HLS_msn": 50, "_HLS_part": 3}, {"_HLS_part": 1}, {"_HLS_msn": 9}):
        started = time.monotonic()
        _, text = await get_playlist(client, **query)
        assert time.monotonic() - started < 1.0
        parsed = m3u8.loads(text)
        assert parsed.is_endlist and parsed.preload_hint is None
    # no delta update after ENDLIST
    _, text = await get_playlist(client, _HLS_skip="YES")
    assert "#EXT-X-SKIP" not in text


# -- preload hints (§4.4.5.3) --------------------------------------------------------


async def test_preload_hinted_part_is_answered_once_published(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    feeder.segments(1)
    feeder.step()
    _, text = await get_playlist(client)
    hint = m3u8.loads(text).preload_hint.uri
    assert hint == "part1.1.m4s"
    store = room.renditions["v0"]

    pending = asyncio.create_task(client.get(f"{MEDIA}/v0/{hint}"))
    await wait_for(
        lambda: store.waiters == 1, 5.0, "one blocked playlist request", interval_s=0.005
    )
    assert not pending.done()
    published = time.monotonic()
    feeder.step()
    resp = await asyncio.wait_for(pending, 5)
    assert time.monotonic() >= published
    assert resp.status == 200
    assert await resp.read() == payload("v0", 1, 1)
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"

    # a part further ahead than the hint is simply unknown
    await assert_problem(await client.get(f"{MEDIA}/v0/part1.3.m4s"), 404)

    # a hinted part that the segment closes without is answered 404, not held
    other = room.renditions["v1"]
    pending = asyncio.create_task(client.get(f"{MEDIA}/v1/part1.2.m4s"))
    await wait_for(lambda: other.waiters == 1, 5.0, "a blocked request on v1", interval_s=0.005)
    other.close_segment(T0 + timedelta(seconds=1))
    await assert_problem(await asyncio.wait_for(pending, 5), 404)


# -- media and playlists --------------------------------------------------------------


async def test_media_is_served_byte_exact_with_headers(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    feeder.segments(2)
    feeder.step()
    feeder.step()
    for name in RENDITIONS:
        resp = await client.get(f"{MEDIA}/{name}/init.mp4")
        assert resp.status == 200 and resp.content_type == "video/mp4"
        assert await resp.read() == init_bytes(name)
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        for msn in (0, 1):
            resp = await client.get(f"{MEDIA}/{name}/seg{msn}.m4s")
            assert resp.status == 200 and resp.content_type == "video/iso.segment"
            expected = b"".join(payload(name, msn, i) for i in range(PARTS_PER_SEGMENT))
            assert await resp.read() == expected
            assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        for msn, index in ((0, 0), (1, 4), (2, 1)):
            resp = await client.get(f"{MEDIA}/{name}/part{msn}.{index}.m4s")
            assert resp.status == 200 and resp.content_type == "video/iso.segment"
            assert await resp.read() == payload(name, msn, index)
            assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        head = await client.head(f"{MEDIA}/{name}/part2.0.m4s")
        assert head.status == 200
        assert int(head.headers["Content-Length"]) == len(payload(name, 2, 0))

    # the in-progress segment, unknown media, renditions and rooms
    for path in ("v0/seg2.m4s", "v0/seg99.m4s", "v0/part0.9.m4s", "v9/index.m3u8", "v9/init.mp4"):
        await assert_problem(await client.get(f"{MEDIA}/{path}"), 404)
    await assert_problem(await client.get("/hls/nope/index.m3u8"), 404)
    await assert_problem(await client.get("/hls/nope/s1/v0/index.m3u8"), 404)
    # another stream of the room (an earlier one, cached URLs): 404, never its media
    await assert_problem(await client.get(f"{BASE}/s0/v0/index.m3u8"), 404)
    await assert_problem(await client.get(f"{BASE}/s0/v0/part2.0.m4s"), 404)
    await assert_problem(await client.get(f"{BASE}/v0/part2.0.m4s"), 404)

    # playlists: short-lived caching, every listed URI resolves
    resp = await client.get(f"{BASE}/index.m3u8")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "application/vnd.apple.mpegurl"
    assert resp.headers["Cache-Control"] == "public, max-age=1"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    variants = checker.check_multivariant(text)
    texts = {}
    for variant in variants.playlists:
        stream, name = variant.uri.split("/")[:2]
        assert stream == STREAM
        resp, media = await get_playlist(client, name)
        assert resp.headers["Cache-Control"] == "public, max-age=1"
        texts[f"../{name}/index.m3u8"] = media
        parsed = m3u8.loads(media)
        uris = [parsed.segments[0].init_section.uri]
        uris += [s.uri for s in parsed.segments if s.uri]
        uris += [p.uri for s in parsed.segments for p in s.parts]
        for uri in uris:
            resp = await client.get(f"{MEDIA}/{name}/{uri}")
            assert resp.status == 200, uri
    checker.check_renditions(texts)


async def test_delta_update_skips_old_segments(
    client: TestClient, room: RoomStore, feeder: Feeder
) -> None:
    feeder.segments(10)
    feeder.step()
    _, full = await get_playlist(client)
    for value in ("YES", "v2"):
        _, delta = await get_playlist(client, _HLS_skip=value)
        assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n" in delta
        checker.check_delta(full, delta)
    # a blocking request may ask for a delta too
    pending = asyncio.create_task(get_playlist(client, _HLS_msn=10, _HLS_part=1, _HLS_skip="YES"))
    await wait_for(
        lambda: room.renditions["v0"].waiters == 1, 5.0, "a blocked request", interval_s=0.005
    )
    feeder.step()
    _, delta = await asyncio.wait_for(pending, 5)
    assert "#EXT-X-SKIP" in delta
    assert listed_last(delta) == (10, 1)


# -- retention (§6.2.2) ---------------------------------------------------------------


async def test_parts_and_segments_expire_after_the_grace_window(
    aiohttp_client, clock: FakeClock
) -> None:
    room = make_room(clock, window_segments=3)
    feeder = Feeder(room)
    app = web.Application()
    app.add_subapp("/hls", create_origin_app({"demo": room}))
    client = await aiohttp_client(app)

    feeder.segments(6)
    store = room.renditions["v0"]
    # parts: the last two closed segments and the in-progress one (§4.4.4.9)
    assert store.playlist.parts_listed_from() == 4
    assert store.playlist.media_sequence == 3
    _, text = await get_playlist(client)
    assert "part0.0.m4s" not in text and "seg0.m4s" not in text

    # unlisted, but still inside the grace window (3 target durations)
    clock.now = 3 * TARGET - 0.1
    for path in ("part0.0.m4s", "part3.4.m4s", "seg0.m4s", "seg2.m4s"):
        resp = await client.get(f"{MEDIA}/v0/{path}")
        assert resp.status == 200, path

    clock.now = 3 * TARGET + 0.1
    for path in ("part0.0.m4s", "part3.4.m4s", "seg0.m4s", "seg2.m4s"):
        await assert_problem(await client.get(f"{MEDIA}/v0/{path}"), 404)
    # still listed: still served
    for path in ("part4.0.m4s", "seg3.m4s", "seg5.m4s"):
        resp = await client.get(f"{MEDIA}/v0/{path}")
        assert resp.status == 200, path

    # the next change forgets the expired media; newer unlisted parts get their own grace
    feeder.segments(1)
    assert store.part(0, 0) is None and store.segment(0) is None
    assert store.part(4, 0) == payload("v0", 4, 0)  # unlisted now, expires at now + 3
    clock.now += 3 * TARGET + 0.1
    assert store.part(4, 0) is None


def test_store_rejects_rewrites() -> None:
    store = RenditionStore("v0", target_duration=TARGET, part_target=PART)
    store.set_init(b"abc")
    store.set_init(b"abc")
    with pytest.raises(StoreError):
        store.set_init(b"xyz")
    with pytest.raises(StoreError):
        RenditionStore("a/b", target_duration=TARGET, part_target=PART)
    room = RoomStore()
    room.add_rendition("v0", target_duration=TARGET, part_target=PART)
    with pytest.raises(StoreError):
        room.add_rendition("v0", target_duration=TARGET, part_target=PART)
    # every stream gets its own media URLs
    assert room.stream_id != RoomStore().stream_id
    with pytest.raises(StoreError):
        RoomStore(stream_id="../x")
