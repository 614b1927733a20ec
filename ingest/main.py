"""The ingest process: ``python -m ingest.main --fd N --parent PID`` (started by the service,
:mod:`relaycast.ingest_process`).  It never forwards: it takes encoders' RTMP and SRT and
republishes each stream into the service over WHIP on loopback
(:class:`ingest.whip_relay.WhipRelay`).

The link (the inherited socket) carries one JSON line each way: the service sends
:class:`IngestSettings` as a dict; the process answers ``{"rtmp_port": N, "rtmps_port": N |
null, "srt_port": N | null, "srt_error": "..." | null}`` once it listens, or
``{"error": "..."}`` (the RTMP port is taken, say) and exits.  SRT is optional: a port it
cannot bind, or libsrt missing, leaves RTMP up and is reported in ``srt_error``.  It then
serves until the link closes (the service stopped) and ends every session (their WHIP
sessions are deleted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from dataclasses import asdict, dataclass
from urllib.parse import quote

import aiohttp

from common.child_main import start_child
from sfu import aiortc_private

from . import srt_lib
from .rtmp_server import PublishRequest, RtmpServer
from .srt_server import SrtPublish, SrtServer
from .whip_relay import WhipRelay

logger = logging.getLogger("ingest.main")


@dataclass(frozen=True)
class IngestSettings:
    """What the ingest process needs: ``whip_url`` (the service's ``POST /whip`` on loopback),
    the RTMP listen address, ``ice_hosts`` (the addresses its WHIP peer connections gather
    on: loopback, the service being on the same machine), and for RTMPS a certificate chain
    and key file (both or neither) and its port; ``srt_port`` (None: no SRT) on ``rtmp_host``,
    the listener-wide SRT passphrase (None: unencrypted) and receiver latency (None: libsrt's
    120 ms)."""

    whip_url: str
    rtmp_host: str = "127.0.0.1"
    rtmp_port: int = 1935
    ice_hosts: tuple[str, ...] = ("127.0.0.1",)
    rtmps_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    srt_port: int | None = None
    srt_passphrase: str | None = None
    srt_latency_ms: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> IngestSettings:
        values = json.loads(line)
        values["ice_hosts"] = tuple(values.get("ice_hosts") or ("127.0.0.1",))
        return cls(**values)


async def serve(sock: socket.socket) -> None:
    """Read the settings from the link, listen, answer, serve until the link closes."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    settings = IngestSettings.from_json((await reader.readline()).decode())
    aiortc_private.set_host_addresses(list(settings.ice_hosts))
    async with aiohttp.ClientSession() as http:

        async def on_publish(request: PublishRequest) -> WhipRelay:
            return await WhipRelay.open(settings.whip_url, request.key, http, f"RTMP {request.peer}")

        async def on_srt_publish(request: SrtPublish) -> WhipRelay:
            url = f"{settings.whip_url}/{quote(request.channel, safe='')}"
            return await WhipRelay.open(url, request.key, http, f"SRT {request.peer}")

        servers = [RtmpServer(on_publish, settings.rtmp_host, settings.rtmp_port)]
        if settings.rtmps_port is not None and settings.tls_cert and settings.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
            servers.append(RtmpServer(on_publish, settings.rtmp_host, settings.rtmps_port, ssl=context))
        try:
            for server in servers:
                await server.start()
        except OSError as exc:
            writer.write((json.dumps({"error": f"RTMP cannot listen: {exc}"}) + "\n").encode())
            await writer.drain()
            return
        answer = {"rtmp_port": servers[0].port, "rtmps_port": servers[1].port if len(servers) > 1 else None,
                  "srt_port": None, "srt_error": None}
        srt = None
        if settings.srt_port is not None:
            srt = SrtServer(on_srt_publish, settings.rtmp_host, settings.srt_port, settings.srt_passphrase,
                            settings.srt_latency_ms)
            try:
                await srt.start()
                answer["srt_port"] = srt.port
            except (srt_lib.SrtError, srt_lib.SrtUnavailable) as exc:
                answer["srt_error"] = f"SRT cannot listen: {exc}"
                srt = None
        writer.write((json.dumps(answer) + "\n").encode())
        await writer.drain()
        try:
            await reader.read()  # until the service closes the link
        finally:
            if srt is not None:
                await srt.close()
            for server in servers:
                await server.close()
            writer.close()


def main(argv: list[str] | None = None) -> None:
    args = start_child("python -m ingest.main", "the service's process id", argv)
    sock = socket.socket(fileno=args.fd)
    try:
        asyncio.run(serve(sock))
    except (ConnectionError, OSError) as exc:
        logger.info("ingest link ended: %s", exc)


if __name__ == "__main__":
    main()
