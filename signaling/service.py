"""Run signaling (+ the embedded SFU worker) as one service; used by the CLI and the tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sfu.node import SignalingLink
from sfu.worker import Worker

from .app import create_app
from .app_keys import ROOMS
from .config import SignalingConfig

logger = logging.getLogger(__name__)


@dataclass
class ServiceInfo:
    base_url: str
    demo_room: str | None
    demo_stream_key: str | None


class Service:
    """``async with Service(config) as svc``: listening server, embedded SFU registered.

    ``svc.url`` is the base URL (``port=0`` picks a free port).
    """

    def __init__(self, config: SignalingConfig) -> None:
        self.config = config
        self.app = create_app(config)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.worker: Worker | None = None
        self.link: SignalingLink | None = None
        self.url = ""
        self.demo_stream_key: str | None = None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        if config.demo_room:
            self.demo_stream_key = self.app[ROOMS].create(config.demo_room, config.demo_stream_key)
        await self.runner.setup()
        site = web.TCPSite(self.runner, config.host, config.port, reuse_address=True)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{port}"
        if config.embedded_sfu:
            self.worker = Worker(config.sfu)
            await self.worker.__aenter__()
            self.link = SignalingLink(self.worker, self.url, config.sfu.node_id, config.node_secret)
            await self.link.start()

    async def stop(self) -> None:
        if self.link is not None:
            await self.link.stop()
            self.link = None
        if self.worker is not None:
            await self.worker.close()
            self.worker = None
        await self.runner.cleanup()
