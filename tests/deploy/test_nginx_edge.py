"""The deploy/nginx LL-HLS edge, run as a real nginx in front of the real service.

One WHIP publisher (through the edge) and one bridge for the whole live test, to keep
the 2-core machine light.  Origin requests are counted from the edge's access log
(``$upstream_addr`` is set only when a request went to the origin).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from yarl import URL

from loadtest import whip_client
from loadtest.llhls_player import LlhlsPlayer, parse_media_playlist
from loadtest.nginx_edge import TEMPLATE, NginxEdge, find_nginx, parse_access_log, render_template
from loadtest.sources import PatternVideoTrack
from relaycast.dev_certificate import ensure_dev_certificate
from relaycast.service import Service
from sfu.protocol import NAMESPACE as NODE_NAMESPACE
from sfu.protocol import SOCKETIO_PATH as NODE_PATH
from signaling.app_keys import NAMESPACE_KEY
from tests.polling import wait_for
from tests.services import STREAM_KEY

NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
TIMEOUT = aiohttp.ClientTimeout(total=20)
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
IMMUTABLE = "public, max-age=31536000, immutable"


# ------------------------------------------------------------------ shared fixtures
@pytest.fixture
async def edge(service: Service, tmp_path: Path) -> AsyncIterator[NginxEdge]:
    """A real nginx edge (deploy/nginx template) in front of the ``service`` fixture."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    async with NginxEdge(service.url, tmp_path / "edge") as running:
        yield running


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, timeout=TIMEOUT) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def wait_for_log(edge: NginxEdge, uri: str, count: int, timeout: float = 10.0) -> list:
    """Access-log lines for ``uri`` once there are ``count`` (nginx logs a request when it ends)."""

    def lines() -> list:
        found = [e for e in edge.log_entries() if e.uri == uri]
        return found if len(found) >= count else []

    return await wait_for(lines, timeout, f"{count} access-log lines for {uri}")


def origin_hits(edge: NginxEdge, uri: str) -> int:
    return edge.origin_requests()[uri]


# ------------------------------------------------------------------ no service needed
def test_template_placeholders_must_all_be_given() -> None:
    text = TEMPLATE.read_text()
    values = {"RELAYCAST_ORIGIN": "10.0.0.5:8080", "EDGE_LISTEN": "80", "EDGE_CACHE_DIR": "/var/cache/edge",
              "EDGE_CACHE_MAX_SIZE": "1g", "EDGE_ACCESS_LOG": "/dev/stdout",
              "EDGE_HTTP_LOCATIONS": "/etc/nginx/relaycast-edge-locations.conf"}
    rendered = render_template(text, values)
    assert "${" not in rendered
    assert "server 10.0.0.5:8080;" in rendered
    assert "include /etc/nginx/relaycast-edge-locations.conf;" in rendered
    assert "$upstream_cache_status" in rendered  # nginx variables are left alone
    with pytest.raises(KeyError, match="EDGE_LISTEN"):
        render_template(text, {k: v for k, v in values.items() if k != "EDGE_LISTEN"})


@needs_nginx
async def test_edge_starts_answers_and_stops_with_its_workers(tmp_path: Path) -> None:
    edge = NginxEdge("http://127.0.0.1:9", tmp_path / "edge")  # origin never contacted here
    async with edge:
        pids = edge.cpu_pids()
        assert len(pids) >= 2  # master + worker (+ cache manager/loader)
        assert "daemon off;" in edge.conf_path.read_text()
        assert ("user root" in edge.conf_path.read_text()) == (os.geteuid() == 0)
        async with aiohttp.ClientSession() as http:
            status, _, body = await fetch(http, f"{edge.url}/edge-healthz")
            assert (status, body) == (200, b"relaycast-edge\n")
            # The origin is down: 502 from the edge, not cached.
            status, headers, _ = await fetch(http, f"{edge.url}/hls/demo/index.m3u8")
            assert status == 502
        assert edge.pid_path.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    entries = parse_access_log(edge.access_log)
    assert [(e.uri, e.status) for e in entries] == [("/hls/demo/index.m3u8", 502)]


def test_player_playlist_parser_carries_program_date_time() -> None:
    text = "\n".join([
        "#EXTM3U", "#EXT-X-VERSION:9", "#EXT-X-TARGETDURATION:1",
        "#EXT-X-PART-INF:PART-TARGET=0.2", "#EXT-X-MEDIA-SEQUENCE:7", '#EXT-X-MAP:URI="init.mp4"',
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00.000Z",
        '#EXT-X-PART:DURATION=0.5,URI="part7.0.m4s",INDEPENDENT=YES',
        '#EXT-X-PART:DURATION=0.5,URI="part7.1.m4s"',
        "#EXTINF:1.0,", "seg7.m4s",
        '#EXT-X-PART:DURATION=0.4,URI="part8.0.m4s",INDEPENDENT=YES',
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part8.1.m4s"', "",
    ])
    pl = parse_media_playlist(text, "http://127.0.0.1:1/hls/r/v0/index.m3u8")
    start = 1767225600.0  # 2026-01-01T00:00:00Z
    assert [(p.msn, p.index, p.end_offset) for p in pl.parts] == [(7, 0, 0.5), (7, 1, 1.0), (8, 0, 0.4)]
    assert [p.segment_start for p in pl.parts] == [start, start, start + 1.0]
    assert pl.parts[1].last_in_segment and not pl.parts[2].closed_segment
    assert pl.preload_hint == "http://127.0.0.1:1/hls/r/v0/part8.1.m4s"
    assert pl.map_uri == "http://127.0.0.1:1/hls/r/v0/init.mp4"
    assert pl.next_position(7, 1, True) == (8, 0) and pl.next_position(8, 0, False) == (8, 1)


# ------------------------------------------------------------------ live, through the edge
async def test_llhls_through_the_nginx_edge(service: Service, edge: NginxEdge, http: aiohttp.ClientSession) -> None:
    # The publisher itself goes through the edge: WHIP POST (and DELETE at the end).
    pub = await whip_client.publish(f"{edge.url}/whip/demo", STREAM_KEY,
                                    [PatternVideoTrack(320, 180, 30, code="counter")])
    try:
        await whip_client.wait_connected(pub.pc)
        base = f"{edge.url}/hls/demo"

        # Multivariant playlist: the first request starts the bridge (origin may say 404
        # until the ladder is planned); the origin's headers come through, plus X-Cache-Status.
        async def multivariant() -> tuple[int, dict[str, str], bytes] | None:
            answer = await fetch(http, f"{base}/index.m3u8")
            assert answer[0] in (200, 404) and (answer[0] == 200 or answer[1]["Cache-Control"] == "no-store"), answer
            return answer if answer[0] == 200 else None

        status, headers, body = await wait_for(multivariant, 30, "the multivariant playlist",
                                               interval_s=0.5)
        assert headers["Content-Type"].startswith(PLAYLIST_TYPE)
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert headers["Cache-Control"] == "public, max-age=1"
        assert headers["X-Cache-Status"] in ("MISS", "EXPIRED")
        stream = service.hls.bridges["demo"].store.stream_id
        assert f"{stream}/v0/index.m3u8" in body.decode()

        # Media playlist (plain): wait until it lists a few parts.
        media = f"{base}/{stream}/v0/index.m3u8"
        async def listed_parts() -> tuple[dict[str, str], Any] | None:
            status, headers, body = await fetch(http, media)
            assert status == 200, body
            playlist = parse_media_playlist(body.decode(), media)
            return (headers, playlist) if len(playlist.parts) >= 3 and playlist.preload_hint else None

        headers, playlist = await wait_for(listed_parts, 20, "three parts and a preload hint",
                                           interval_s=0.2)
        assert headers["Content-Type"].startswith(PLAYLIST_TYPE)
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert headers["X-Cache-Status"] in ("MISS", "HIT", "EXPIRED", "UPDATING")

        # A part fetched twice: the second answer comes from the edge's cache.
        part = playlist.parts[-1]
        part_uri = part.uri.removeprefix(edge.url)
        first = await fetch(http, part.uri)
        second = await fetch(http, part.uri)
        assert (first[0], second[0]) == (200, 200)
        assert first[1]["X-Cache-Status"] == "MISS" and second[1]["X-Cache-Status"] == "HIT"
        assert first[2] == second[2] and len(first[2]) > 100
        assert second[1]["Cache-Control"] == IMMUTABLE
        assert second[1]["Access-Control-Allow-Origin"] == "*"
        await wait_for_log(edge, part_uri, 2)
        assert origin_hits(edge, part_uri) == 1

        # The query string is part of the key: two _HLS_msn values are two entries.
        older = playlist.parts[0]
        url_a = f"{media}?_HLS_msn={older.msn}&_HLS_part={older.index}"
        url_b = f"{media}?_HLS_msn={part.msn}&_HLS_part={part.index}"
        statuses = [await fetch(http, u) for u in (url_a, url_b, url_a, url_b)]
        assert [s[0] for s in statuses] == [200] * 4
        assert [s[1]["X-Cache-Status"] for s in statuses] == ["MISS", "MISS", "HIT", "HIT"]
        assert statuses[1][1]["Cache-Control"] == "public, max-age=3"  # blocking answer: 3 x target
        for u in (url_a, url_b):
            uri = u.removeprefix(edge.url)
            await wait_for_log(edge, uri, 2)
            assert origin_hits(edge, uri) == 1

        # Collapsed forwarding: 20 concurrent requests for a playlist that does not exist
        # yet (two parts ahead) and 20 for the preload-hinted part: each URL reaches the
        # origin once; the other 19 wait at the edge and get the cached answer.
        # (The current state is read from the origin itself: the edge's copy may be older.)
        status, _, body = await fetch(http, f"{service.url}/hls/demo/{stream}/v0/index.m3u8")
        assert status == 200
        now = parse_media_playlist(body.decode(), media)  # URIs resolved against the edge
        last = now.parts[-1]
        ahead = now.next_position(last.msn, last.index, last.last_in_segment)
        ahead = now.next_position(ahead[0], ahead[1], False)  # two parts past the last one
        blocking_url = f"{media}?_HLS_msn={ahead[0]}&_HLS_part={ahead[1]}"
        hint_url = now.preload_hint
        assert hint_url is not None
        n = 20
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as burst:
            answers = await asyncio.gather(*(fetch(burst, u) for u in [blocking_url] * n + [hint_url] * n))
        assert [a[0] for a in answers] == [200] * (2 * n)
        playlists, hinted = answers[:n], answers[n:]
        assert len({a[2] for a in playlists}) == 1 and len({a[2] for a in hinted}) == 1
        held = parse_media_playlist(playlists[0][2].decode(), media)
        assert any((p.msn, p.index) >= tuple(ahead) for p in held.parts)
        for url in (blocking_url, hint_url):
            uri = url.removeprefix(edge.url)
            lines = await wait_for_log(edge, uri, n)
            assert len(lines) == n
            assert sum(e.reached_origin for e in lines) == 1, [(e.cache_status, e.upstream_addr) for e in lines]
        # The blocking request was really held at the origin (it did not exist yet).
        origin_line = next(e for e in await wait_for_log(edge, blocking_url.removeprefix(edge.url), n)
                           if e.reached_origin)
        assert float(origin_line.upstream_time) > 0.05

        # Errors are never cached (no-store): each 404 goes to the origin.
        missing = f"{base}/{stream}/v0/part999999.0.m4s"
        for _ in range(2):
            status, headers, _ = await fetch(http, missing)
            assert status == 404 and headers["Cache-Control"] == "no-store"
            assert headers["X-Cache-Status"] == "MISS"
        await wait_for_log(edge, missing.removeprefix(edge.url), 2)
        assert origin_hits(edge, missing.removeprefix(edge.url)) == 2

        # The emulated LL-HLS player follows the live edge through the edge.
        player = LlhlsPlayer(f"{base}/index.m3u8", max_parts=12, duration=30)
        await player.run()
        assert player.stop_reason == "max_parts" and player.errors == []
        positions = [(r.msn, r.part) for r in player.records]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert all(r.rendition == "v0" and r.bytes > 0 for r in player.records)
        live = [r for r in player.records if not r.catchup]
        assert live and sum(r.hinted for r in live) >= len(live) // 2
        assert all(r.latency is not None and abs(r.latency) < 10 for r in live)
        assert player.init_segments["v0"][4:8] == b"ftyp"

        # Pages, API and Socket.IO pass through uncached.
        status, headers, body = await fetch(http, f"{edge.url}/watch/demo")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "X-Cache-Status" not in headers
        status, headers, body = await fetch(http, f"{edge.url}/api/rooms/demo")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        status, _, body = await fetch(http, f"{edge.url}/socket.io/?EIO=4&transport=polling")
        assert status == 200 and body.startswith(b"0{"), body
        async with http.ws_connect(f"{edge.url}/socket.io/?EIO=4&transport=websocket", timeout=10) as ws:
            message = await ws.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.TEXT and message.data.startswith("0{")
    finally:
        deleted = await pub.close()
    assert deleted in (200, 204)
    lines = [e for e in edge.log_entries() if e.uri.startswith("/whip/demo")]
    assert [e.method for e in lines] == ["POST", "DELETE"] and all(e.reached_origin for e in lines)


# ------------------------------------------------------------------ Socket.IO through the edge
async def test_edge_passes_pages_socketio_and_denies_the_node_endpoint(
    service: Service, edge: NginxEdge, http: aiohttp.ClientSession
) -> None:
    """Pages use /socket.io/ through the edge; the SFU nodes' /sfu-link/ is denied there
    (403, whatever the spelling nginx normalizes), and /sfu on /socket.io/ is refused by
    signaling, so no one reaches the node namespace through the edge even with the secret."""
    router = service.app[NAMESPACE_KEY].registry
    assert len(router.nodes) == 1  # the embedded SFU worker
    secret = service.config.node_secret

    # A page through the edge: same-origin (nginx passes Host), joins the demo room.
    page_http = aiohttp.ClientSession()
    page = socketio.AsyncClient(reconnection=False, http_session=page_http)
    try:
        await page.connect(edge.url, transports=["websocket"], headers={"Origin": edge.url}, wait_timeout=10)
        assert (await page.call("join", {"room": "demo"}, timeout=5))["room"] == "demo"
    finally:
        await page.disconnect()
        await page_http.close()
    status, _, body = await fetch(http, f"{edge.url}/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith(b"0{")

    # The node endpoint: served by the origin, denied by the edge.
    query = "?EIO=4&transport=polling"
    status, _, body = await fetch(http, f"{service.url}/{NODE_PATH}/{query}")
    assert status == 200 and body.startswith(b"0{")
    for path in (f"/{NODE_PATH}/", f"/{NODE_PATH}", "/%73fu-link/", f"//{NODE_PATH}/", f"/x/../{NODE_PATH}/"):
        url = URL(f"{edge.url}{path}{query}", encoded=True)  # sent as written
        async with http.get(url, timeout=TIMEOUT) as resp:
            assert resp.status == 403, path
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{edge.url}/{NODE_PATH}/?EIO=4&transport=websocket", timeout=10)
    assert refused.value.status == 403

    # A node with the right secret, through the edge: on its path (denied by nginx) and on
    # the pages' path (refused by signaling, with the reason).
    for path in (NODE_PATH, "socket.io"):
        node_http = aiohttp.ClientSession()
        node = socketio.AsyncClient(reconnection=False, http_session=node_http)
        refusals: list[object] = []
        node.on("connect_error", refusals.append, namespace=NODE_NAMESPACE)
        try:
            with pytest.raises(socketio.exceptions.ConnectionError):
                await node.connect(edge.url, namespaces=[NODE_NAMESPACE], socketio_path=path,
                                   transports=["websocket"], wait_timeout=10,
                                   auth={"node_id": "through-the-edge", "secret": secret})
        finally:
            await node.disconnect()
            await node_http.close()
        if path == "socket.io":
            assert refusals == [{"message": f"SFU nodes connect on /{NODE_PATH}/ (socketio_path={NODE_PATH!r})"}]
    assert [n.node_id for n in router.nodes.values()] == [service.config.sfu.node_id]


# ------------------------------------------------------------------ TLS at the edge
@needs_nginx
async def test_the_edge_terminates_tls_redirects_http_and_carries_socketio_over_wss(
    service: Service, tmp_path: Path
) -> None:
    """deploy/nginx with relaycast-edge-tls.conf.template: pages, LL-HLS and Socket.IO over
    HTTPS/WSS with HSTS (also on /hls/, whose location adds a header of its own), plain HTTP
    redirected, the certificate from a test CA checked by the client."""
    made = ensure_dev_certificate(tmp_path / "tls", "127.0.0.1")
    context = ssl.create_default_context(cafile=str(made.ca))
    async with NginxEdge(service.url, tmp_path / "edge", tls=(made.cert, made.key)) as edge, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as https:
        assert edge.url.startswith("https://127.0.0.1:")
        for path, status in (("/watch/demo", 200), ("/edge-healthz", 200), ("/hls/demo/index.m3u8", None)):
            async with https.get(f"{edge.url}{path}", timeout=TIMEOUT) as resp:
                assert status is None or resp.status == status, (path, resp.status)
                assert resp.headers.get("Strict-Transport-Security") == "max-age=31536000", path
        async with aiohttp.ClientSession() as plain:
            async with plain.get(f"{edge.http_url}/watch/demo?x=1", allow_redirects=False, timeout=TIMEOUT) as resp:
                assert resp.status == 308
                assert resp.headers["Location"] == "https://127.0.0.1/watch/demo?x=1"
                assert "Strict-Transport-Security" not in resp.headers  # never over plain HTTP
            status, _, body = await fetch(plain, f"{edge.http_url}/edge-healthz")
            assert status == 200 and body == b"relaycast-edge\n"
        # A page's Socket.IO through the edge over WSS: same origin for the origin server,
        # which reads the scheme from the edge's X-Forwarded-Proto.
        page = socketio.AsyncClient(reconnection=False, http_session=https)
        try:
            await page.connect(edge.url, transports=["websocket"], headers={"Origin": edge.url}, wait_timeout=10)
            assert page.transport() == "websocket"
            assert (await page.call("join", {"room": "demo"}, timeout=5))["room"] == "demo"
        finally:
            await page.disconnect()

