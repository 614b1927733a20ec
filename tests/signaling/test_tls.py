"""HTTPS on the service's port (signaling.tls, relaycast.dev_certificate): a real
``Service`` with a certificate from a test CA, reached on 127.0.0.1 with aiohttp (the CA
trusted, hostname checked) and with raw sockets for plain HTTP; the start-up checks;
``SIGHUP``'s reload against a live ``relaycast serve``."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import ssl
import stat
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from relaycast.dev_certificate import ensure_dev_certificate
from relaycast.service import Service
from signaling.tls import TlsError, check_certificate, server_context
from tests.services import STREAM_KEY, make_config


def _client_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))  # verifies the chain and the host name
    return context


async def _plain(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_https_serves_the_service_and_plain_http_on_the_port_is_redirected(tmp_path: Path) -> None:
    made = ensure_dev_certificate(tmp_path / "tls", "127.0.0.1", extra_names=("relaycast.test",))
    config = make_config(tls_cert=str(made.cert), tls_key=str(made.key))
    async with Service(config) as service:
        assert service.url.startswith("https://127.0.0.1:")
        port = int(service.url.rsplit(":", 1)[1])
        context = _client_context(made.ca)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{service.url}/watch/demo", ssl=context) as resp:
                assert resp.status == 200
                assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
                assert resp.connection is not None
                assert resp.connection.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            # The platform's cookies are Secure over HTTPS (no RELAYCAST_COOKIE_SECURE needed).
            async with http.post(f"{service.url}/api/users/login", ssl=context,
                                 json={"username": "admin", "password": service.admin_password},
                                 headers={"X-Relaycast-Client": "web"}) as resp:
                assert resp.status == 200, await resp.text()
                cookies = resp.headers.getall("Set-Cookie")
                assert cookies and all("Secure" in c for c in cookies)
            # The embedded SFU registered over the internal link: a WHEP viewer is told
            # there is no publisher yet (409), not that no node exists.
            async with http.post(f"{service.url}/whep/demo", ssl=context, data="v=0\r\n",
                                 headers={"Content-Type": "application/sdp"}) as resp:
                assert resp.status in (400, 409), await resp.text()
            # Socket.IO's same-origin rule knows the request came over TLS: the page's own
            # https origin is accepted, its http twin is not.
            sio = f"{service.url}/socket.io/?EIO=4&transport=polling"
            for origin, status in ((service.url, 200), (service.url.replace("https:", "http:"), 400)):
                async with http.get(sio, ssl=context, headers={"Origin": origin}) as resp:
                    assert resp.status == status, (origin, await resp.text())
            assert service.internal_url.startswith("http://127.0.0.1:")
            assert service.worker is not None and service.link is not None
        # TLS 1.1 is refused.
        old = ssl.create_default_context(cafile=str(made.ca))
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=old, server_hostname="relaycast.test")
        # Plain HTTP on the same port: a redirect to the same place over HTTPS, POST included.
        answer = await _plain(port, b"GET /broadcast/demo?x=1 HTTP/1.1\r\nHost: relaycast.test:%d\r\n\r\n" % port)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 308 ")
        assert b"\r\nLocation: https://relaycast.test:%d/broadcast/demo?x=1\r\n" % port in head
        assert body.startswith(b"HTTPS needed")
        answer = await _plain(port, b"POST /whip/demo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nv=0")
        assert answer.startswith(b"HTTP/1.1 308 ") and b"Location: https://127.0.0.1/whip/demo\r\n" in answer
        answer = await _plain(port, b"GET / HTTP/1.1\r\nHost: evil\r\nX: y\r\n\r\n".replace(b"evil", b"a b"))
        assert answer.startswith(b"HTTP/1.1 400 ")  # no usable Host: refused, not redirected


def test_an_expired_or_mismatched_certificate_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=800)
    expired = ensure_dev_certificate(tmp_path / "old", "127.0.0.1", now=past)
    with pytest.raises(TlsError, match="expired on"):
        server_context(str(expired.cert), str(expired.key))
    good = ensure_dev_certificate(tmp_path / "good", "127.0.0.1")
    other = ensure_dev_certificate(tmp_path / "other", "127.0.0.1")
    with pytest.raises(TlsError, match="does not belong to the certificate"):
        server_context(str(good.cert), str(other.key))
    with pytest.raises(TlsError, match="does not exist"):
        server_context(str(tmp_path / "none.pem"), str(good.key))
    with pytest.raises(TlsError, match="not a PEM certificate"):
        server_context(str(good.key), str(good.key))
    check_certificate(str(good.cert), str(good.key))  # the good one passes


async def test_the_command_line_refuses_an_expired_certificate_before_listening(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=800)
    expired = ensure_dev_certificate(tmp_path / "old", "127.0.0.1", now=past)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaycast", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
        "--tls-cert", str(expired.cert), "--tls-key", str(expired.key),
        env={**os.environ, "RELAYCAST_RTMP_PORT": "off"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"configuration error: the certificate" in err and b"expired on" in err
    assert b"listening" not in out


async def test_rtmps_uses_the_services_own_certificate(tmp_path: Path) -> None:
    """``--self-signed`` (as ``--tls-cert``): RTMPS needs no certificate of its own."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaycast", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
        "--self-signed",
        env={**os.environ, "RELAYCAST_RTMP_PORT": "0", "RELAYCAST_RTMPS_PORT": "0", "RELAYCAST_SRT_PORT": "off"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        while b"RTMPS:" not in line:
            assert line, "relaycast serve ended before printing its RTMPS address"
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
        port = int(line.decode().rsplit(":", 1)[1].split("/", 1)[0])
        made = ensure_dev_certificate(tmp_path / "data" / "tls", "127.0.0.1")
        assert not made.made  # the one the service made and serves
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_context(made.ca),
                                                       server_hostname="127.0.0.1")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        served = x509.load_der_x509_certificate(der)
        assert served == x509.load_pem_x509_certificates(made.cert.read_bytes())[0]
        writer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


class _Connection:
    """One TLS connection to the service on 127.0.0.1 (HTTP/1.1 keep-alive by hand)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.serial = x509.load_der_x509_certificate(der).serial_number

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
        return cls(reader, writer)

    async def healthz(self) -> int:
        self.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        return int(head.split(b" ")[1])


async def _read_until(stream: asyncio.StreamReader | None, text: bytes) -> None:
    assert stream is not None
    while text not in await asyncio.wait_for(stream.readline(), 20):
        pass


def test_the_development_certificate_names_this_machine_and_is_kept(tmp_path: Path) -> None:
    first = ensure_dev_certificate(tmp_path, "127.0.0.1", extra_names=("relaycast.test",))
    assert first.made and {"localhost", "relaycast.test", "127.0.0.1", "::1"} <= set(first.names)
    chain = x509.load_pem_x509_certificates(first.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(first.ca.read_bytes())
    chain[0].verify_directly_issued_by(ca)
    assert stat.S_IMODE(os.stat(first.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "relaycast-ca.key").st_mode) == 0o600
    again = ensure_dev_certificate(tmp_path, "127.0.0.1", extra_names=("relaycast.test",))
    assert not again.made and again.cert.read_bytes() == first.cert.read_bytes()
    renamed = ensure_dev_certificate(tmp_path, "127.0.0.1", extra_names=("studio.test",))
    assert renamed.made and renamed.ca.read_bytes() == first.ca.read_bytes()  # same CA: nothing to install again
    assert "trust this CA" in renamed.instructions()


async def test_sighup_reloads_the_certificate_and_keeps_open_connections(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    made = ensure_dev_certificate(folder, "127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaycast", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
        "--tls-cert", str(made.cert), "--tls-key", str(made.key), "--stream-key", STREAM_KEY,
        env={**os.environ, "RELAYCAST_RTMP_PORT": "off"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        while b"listening on" not in line:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
        url = line.decode().split("listening on ", 1)[1].strip()
        port = int(url.rsplit(":", 1)[1])
        context = _client_context(made.ca)
        kept = await _Connection.open(port, context)  # a keep-alive connection across the reload
        assert await kept.healthz() == 200
        renewed = ensure_dev_certificate(folder, "127.0.0.1", extra_names=("renewed.test",))
        assert renewed.made
        proc.send_signal(signal.SIGHUP)
        await _read_until(proc.stdout, b"TLS certificate reloaded")
        fresh = await _Connection.open(port, context)
        assert await fresh.healthz() == 200 and fresh.serial != kept.serial  # new connections: the new one
        assert await kept.healthz() == 200  # the open connection goes on, on its old certificate
        (folder / "server.key").write_text("not a key")
        proc.send_signal(signal.SIGHUP)
        await _read_until(proc.stdout, b"not reloaded")
        third = await _Connection.open(port, context)
        assert await third.healthz() == 200 and third.serial == fresh.serial  # the last good one stays
        for connection in (kept, fresh, third):
            connection.writer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
