"""Run signaling (+ the embedded SFU worker) as one service; used by the CLI and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from common.log_redaction import install_redaction
from hls_bridge.bridge import BridgeManager, HlsConfig
from hls_bridge.origin import create_origin_app
from hls_bridge.vod import RecordingConfig, create_vod_app
from sfu.direct import DirectTransport
from sfu.node import SignalingLink
from sfu.router import Router
from sfu.worker import RouterFactory, Worker
from signaling.app import create_app
from signaling.app_keys import CASCADE, RECORDINGS, ROOMS
from signaling.config import SignalingConfig
from signaling.http_guard import ConnectionGuard, EdgeSite
from signaling.nodes import PlacementStrategy

logger = logging.getLogger(__name__)


class Service:
    """``async with Service(config) as svc``: listening server, embedded SFU registered.

    ``svc.url`` is the base URL (``port=0`` picks a free port).  With
    ``config.redis_url`` the instance shares SFU nodes and rooms with the other
    instances on that Redis (``embedded_sfu=False`` for signaling-only instances;
    an embedded worker needs a node id unique in the cluster).
    ``placement`` overrides the node placement strategy (default least-loaded);
    ``router_factory`` the embedded worker's per-room Router (default :class:`sfu.router.Router`).
    """

    def __init__(
        self,
        config: SignalingConfig,
        placement: PlacementStrategy | None = None,
        *,
        router_factory: RouterFactory | None = None,
    ) -> None:
        self.config = config
        self.app = create_app(config, placement)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.connections = ConnectionGuard(config.connections_per_address, config.trusted_proxies)
        self.worker: Worker | None = None
        self.router_factory = router_factory
        self.link: SignalingLink | None = None
        self.url = ""
        self.demo_stream_key: str | None = None
        self.hls: BridgeManager | None = None
        self.recordings = RecordingConfig.from_env()
        self._sweeper: asyncio.Task[None] | None = None
        if config.embedded_sfu:
            # Mounted now (the app freezes at start-up); the worker is attached in start().
            library = self.recordings.library()
            self.hls = BridgeManager(None, HlsConfig.from_env(), recordings=library)
            self.app.add_subapp("/hls", create_origin_app(self.hls))
            if library is not None:
                self.app[RECORDINGS] = library
                self.app.add_subapp("/vod", create_vod_app(library))

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        if config.demo_room:
            self.demo_stream_key = self.app[ROOMS].create(config.demo_room, config.demo_stream_key)
        install_redaction()  # secrets out of every log record, also when embedded
        await self.runner.setup()
        site = EdgeSite(self.runner, config.host, config.port, guard=self.connections,
                        header_timeout_s=config.header_timeout_s)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{port}"
        if config.embedded_sfu:
            self.worker = Worker(config.sfu, router_factory=self.router_factory or Router)
            await self.worker.__aenter__()
            if self.hls is not None:
                self.hls.attach(DirectTransport(self.worker))
                cascade, node_id = self.app[CASCADE], config.sfu.node_id
                self.hls.pull = lambda room: cascade.pull_into(room, node_id)
                self.hls.start()
                if self.hls.recordings is not None:
                    self._sweeper = asyncio.create_task(
                        self.hls.recordings.sweep_forever(self.recordings.sweep_interval_s))
            self.link = SignalingLink(self.worker, self.url, config.sfu.node_id, config.node_secret)
            await self.link.start()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.hls is not None:
            await self.hls.close()
        if self.link is not None:
            await self.link.stop()
            self.link = None
        if self.worker is not None:
            await self.worker.close()
            self.worker = None
        await self.runner.cleanup()
