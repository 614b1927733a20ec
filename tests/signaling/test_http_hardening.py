"""The HTTP edge of a real service under hostile clients: secrets kept out of the logs,
request-head deadline, connections per address, page headers, the ICE-servers limit and
client addresses behind a trusted proxy.  Raw sockets on 127.0.0.x where the bytes matter.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from common.client_address import parse_trusted_proxies
from relaycast.service import Service
from signaling.config import SignalingConfig
from signaling.http_guard import ConnectionGuard
from signaling.security_headers import PAGE_CSP
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config

IO_TIMEOUT_S = 20.0  # generous: the machine is shared


def _port(svc: Service) -> int:
    return int(svc.url.rsplit(":", 1)[1])


@asynccontextmanager
async def raw_connection(
    svc: Service, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP connection to ``svc`` from the loopback address ``source``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(svc), local_addr=(source, 0))
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (b"" on a reset)."""
    try:
        return await asyncio.wait_for(reader.read(), IO_TIMEOUT_S)
    except ConnectionResetError:
        return b""


async def raw_request(svc: Service, request: bytes, source: str = "127.0.0.1") -> bytes:
    async with raw_connection(svc, source) as (reader, writer):
        writer.write(request)
        return await read_until_closed(reader)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _head(response: bytes) -> dict[str, str]:
    lines = response.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


# ------------------------------------------------------------------ secrets never logged
async def test_a_bearer_key_with_a_control_character_is_not_logged(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's parser rejects the \\x7f and logs the raw header line: the record is
    kept, the key masked; the 400 is problem+json and does not echo the line either."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    request = (
        f"POST /whip/demo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/sdp\r\n"
        f"Authorization: Bearer {STREAM_KEY}\x7f\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    response = await raw_request(service, request)
    assert _status(response) == 400
    assert _head(response)["content-type"].startswith("application/problem+json")
    assert STREAM_KEY.encode() not in response
    records = [r for r in caplog.records if "Invalid header value char" in r.getMessage()]
    assert records, [r.getMessage() for r in caplog.records]
    assert records[0].levelno < logging.ERROR  # the client's fault: no ERROR, no traceback
    for record in caplog.records:
        assert STREAM_KEY not in record.getMessage() + (record.exc_text or "")
    assert STREAM_KEY not in caplog.text


# ------------------------------------------------------------------ request-head deadline
async def test_a_partial_request_head_is_closed_at_the_deadline() -> None:
    async with Service(make_config(header_timeout_s=0.5)) as svc:
        async with raw_connection(svc) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            assert await read_until_closed(reader) == b""
        # A client that trickles a byte now and then does not push the deadline back.
        async with raw_connection(svc) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            closed = asyncio.ensure_future(read_until_closed(reader))
            for _ in range(int(IO_TIMEOUT_S / 0.1)):
                if closed.done():
                    break
                writer.write(b"a")
                await asyncio.wait([closed], timeout=0.1)
            assert await closed == b""
        # Complete requests, two on one keep-alive connection, are answered.
        async with raw_connection(svc) as (reader, writer):
            for _ in range(2):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
                assert _status(head) == 200
                await reader.readexactly(int(_head(head)["content-length"]))


async def test_the_deadline_spares_requests_in_progress_and_websockets(
    http: aiohttp.ClientSession,
) -> None:
    """A Socket.IO WebSocket (and the SFU node's own connection) outlive the deadline."""
    async with Service(make_config(header_timeout_s=0.5)) as svc:
        async with http.ws_connect(f"{svc.url}/socket.io/?EIO=4&transport=websocket") as ws:
            opened = await ws.receive_str(timeout=IO_TIMEOUT_S)
            assert opened.startswith("0{")  # Engine.IO open packet
            # Let the deadline pass: a half-sent request opened now is closed by it.
            async with raw_connection(svc) as (reader, writer):
                writer.write(b"GET / HTTP/1.1\r\n")
                assert await read_until_closed(reader) == b""
            await ws.send_str("40")  # Socket.IO CONNECT to "/"
            answer = await ws.receive_str(timeout=IO_TIMEOUT_S)
            assert answer.startswith("40"), answer
        async with http.get(f"{svc.url}/readyz") as resp:
            assert resp.status == 200, await resp.text()  # the SFU node is still registered


# ------------------------------------------------------------------ connections per address
async def test_connections_per_address_are_capped(http: aiohttp.ClientSession) -> None:
    async with Service(make_config(connections_per_address=3, header_timeout_s=60)) as svc:
        held = [
            await asyncio.open_connection("127.0.0.1", _port(svc), local_addr=("127.0.0.2", 0))
            for _ in range(3)
        ]
        await wait_for(
            lambda: svc.connections.open["127.0.0.2"] == 3,
            IO_TIMEOUT_S,
            "three connections from 127.0.0.2",
        )
        refused = await raw_request(svc, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
        assert _status(refused) == 429
        assert _head(refused)["retry-after"] == "10"
        assert json.loads(refused.partition(b"\r\n\r\n")[2])["status"] == 429
        # Another address is not affected.
        other = await raw_request(
            svc, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "127.0.0.3"
        )
        assert _status(other) == 200
        # A closed connection frees its place.
        _, writer = held.pop()
        writer.close()
        await wait_for(
            lambda: svc.connections.open["127.0.0.2"] == 2,
            IO_TIMEOUT_S,
            "the closed connection to be released",
        )
        again = await raw_request(
            svc, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "127.0.0.2"
        )
        assert _status(again) == 200
        for _, writer in held:
            writer.close()
        await wait_for(
            lambda: "127.0.0.2" not in svc.connections.open,
            IO_TIMEOUT_S,
            "every connection from 127.0.0.2 to be released",
        )


async def test_trusted_proxies_are_not_capped() -> None:
    config = make_config(
        connections_per_address=1, trusted_proxies=parse_trusted_proxies("127.0.0.2")
    )
    async with Service(config) as svc:
        async with raw_connection(svc, "127.0.0.2"):
            await wait_for(
                lambda: svc.connections.open["127.0.0.2"] == 1,
                IO_TIMEOUT_S,
                "the first proxy connection",
            )
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            assert _status(await raw_request(svc, request, "127.0.0.2")) == 200


def test_connection_guard_counts_per_address() -> None:
    guard = ConnectionGuard(2, parse_trusted_proxies("10.0.0.0/8"))
    assert guard.admit("192.0.2.1") and guard.admit("192.0.2.1")
    assert not guard.admit("192.0.2.1")
    assert guard.admit("192.0.2.2")
    assert all(guard.admit("10.1.1.1") for _ in range(5))
    guard.release("192.0.2.1")
    assert guard.admit("192.0.2.1")
    assert guard.refused == 1
    for _ in range(2):
        guard.release("192.0.2.1")
    assert "192.0.2.1" not in guard.open


# ------------------------------------------------------------------ response headers
@pytest.mark.parametrize("path", ["/", "/watch/demo", "/broadcast/demo"])
async def test_pages_carry_the_security_headers(
    service: Service, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(service.url + path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Security-Policy"] == PAGE_CSP
        assert "frame-ancestors 'none'" in PAGE_CSP
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["Server"] == "relaycast"


@pytest.mark.parametrize(
    "path",
    ["/api/rooms", "/healthz", "/static/js/watch.js", "/no/such/thing", "/hls/demo/index.m3u8"],
)
async def test_no_response_reveals_software_versions(
    service: Service, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(service.url + path) as resp:
        assert resp.headers["Server"] == "relaycast"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_malformed_request_is_answered_without_versions(service: Service) -> None:
    response = await raw_request(service, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n")
    assert _status(response) == 400
    assert _head(response)["server"] == "relaycast"
    assert b"aiohttp" not in response and b"Python" not in response


# ------------------------------------------------------------------ /api/ice-servers limit
async def test_ice_servers_are_rate_limited_per_client(http: aiohttp.ClientSession) -> None:
    config = make_config(
        ice_servers_rate=0.001,
        ice_servers_burst=2,
        trusted_proxies=parse_trusted_proxies("127.0.0.1"),
    )
    async with Service(config) as svc:
        url = f"{svc.url}/api/ice-servers"
        first = {"X-Forwarded-For": "203.0.113.1"}
        for _ in range(2):
            async with http.get(url, headers=first) as resp:
                assert resp.status == 200
        async with http.get(url, headers=first) as resp:
            assert resp.status == 429
            assert resp.content_type == "application/problem+json"
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["status"] == 429
        async with http.get(url, headers={"X-Forwarded-For": "203.0.113.2"}) as resp:
            assert resp.status == 200  # another client has its own bucket


def test_the_http_limits_are_configurable_and_validated() -> None:
    config = SignalingConfig.from_env(
        {
            "RELAYCAST_HEADER_TIMEOUT_S": "2.5",
            "RELAYCAST_CONNECTIONS_PER_ADDRESS": "7",
            "RELAYCAST_ICE_SERVERS_RATE": "0.5",
            "RELAYCAST_ICE_SERVERS_BURST": "4",
        }
    )
    assert (config.header_timeout_s, config.connections_per_address) == (2.5, 7)
    assert (config.ice_servers_rate, config.ice_servers_burst) == (0.5, 4)
    defaults = SignalingConfig.from_env({})
    assert (defaults.header_timeout_s, defaults.connections_per_address) == (10.0, 100)
    for name, value in [
        ("RELAYCAST_HEADER_TIMEOUT_S", "0"),
        ("RELAYCAST_CONNECTIONS_PER_ADDRESS", "0"),
        ("RELAYCAST_ICE_SERVERS_RATE", "fast"),
        ("RELAYCAST_ICE_SERVERS_BURST", "0"),
    ]:
        with pytest.raises(ValueError, match=name):
            SignalingConfig.from_env({name: value})


# ------------------------------------------------------------------ client address behind a proxy
async def _whip_statuses(
    svc: Service, http: aiohttp.ClientSession, clients: list[str]
) -> list[int]:
    """POST /whip/demo (a text/plain body: 415 once past the limiter) once per client."""
    statuses = []
    for client in clients:
        async with http.post(
            f"{svc.url}/whip/demo",
            data="x",
            headers={"Content-Type": "text/plain", "X-Forwarded-For": client},
        ) as resp:
            statuses.append(resp.status)
    return statuses


async def test_a_trusted_proxy_gives_each_client_its_own_whip_bucket(
    http: aiohttp.ClientSession,
) -> None:
    config = SignalingConfig.from_env(
        {"RELAYCAST_TRUSTED_PROXIES": "127.0.0.1"},
        host="127.0.0.1",
        port=0,
        demo_stream_key=STREAM_KEY,
        request_rate=0.001,
        request_burst=1,
    )
    async with Service(config) as svc:
        assert await _whip_statuses(svc, http, ["203.0.113.1", "203.0.113.2", "203.0.113.1"]) == [
            415,
            415,
            429,
        ]


async def test_without_trusted_proxies_forwarded_for_is_ignored(
    http: aiohttp.ClientSession,
) -> None:
    async with Service(make_config(request_rate=0.001, request_burst=1)) as svc:
        assert await _whip_statuses(svc, http, ["203.0.113.1", "203.0.113.2"]) == [415, 429]
