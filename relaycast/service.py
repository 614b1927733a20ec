"""Run signaling (+ the embedded SFU worker, or SFU worker processes) as one service; used
by the CLI and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
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
from signaling.app_keys import CASCADE, NAMESPACE_KEY, RECORDINGS, ROOMS
from signaling.config import SignalingConfig
from signaling.http_guard import ConnectionGuard, EdgeSite
from signaling.nodes import PlacementStrategy

from .workers import Supervisor, sfu_worker_specs, viewers_per_worker

logger = logging.getLogger(__name__)


class Service:
    """``async with Service(config) as svc``: listening server, embedded SFU registered.

    ``svc.url`` is the base URL (``port=0`` picks a free port).  With
    ``config.redis_url`` the instance shares SFU nodes and rooms with the other
    instances on that Redis (``embedded_sfu=False`` for signaling-only instances;
    an embedded worker needs a node id unique in the cluster).
    ``placement`` overrides the node placement strategy (default least-loaded);
    ``router_factory`` the embedded worker's per-room Router (default :class:`sfu.router.Router`).

    ``workers`` (needs ``config.embedded_sfu``): 1 runs the SFU Worker in this process;
    ``N >= 2`` runs N SFU worker child processes (:mod:`relaycast.workers`), node ids
    ``<config.sfu.node_id>-w1..N``, placed by load and cascading a room's viewers beyond
    ``viewers_per_node`` (default in this mode `relaycast.workers.viewers_per_worker`) to
    another worker.  This process then keeps an embedded Worker of role ``hls`` (node id
    ``config.sfu.node_id``) as the LL-HLS bridge's node: placement never picks it, rooms
    are piped into it on demand.  ``start`` returns once every worker registered.
    """

    def __init__(
        self,
        config: SignalingConfig,
        placement: PlacementStrategy | None = None,
        *,
        router_factory: RouterFactory | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if workers > 1:
            if not config.embedded_sfu:
                raise ValueError("SFU worker processes need config.embedded_sfu")
            if config.viewers_per_node == 0:
                config = replace(config, viewers_per_node=viewers_per_worker(config.sfu))
        self.workers = workers
        self.supervisor: Supervisor | None = None
        """The SFU worker processes (``workers >= 2``), started by `start`."""
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
            sfu = replace(config.sfu, role="hls") if self.workers > 1 else config.sfu
            self.worker = Worker(sfu, router_factory=self.router_factory or Router)
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
        if self.workers > 1:
            try:
                await self._start_workers()
            except BaseException:
                await self.stop()
                raise

    async def _start_workers(self) -> None:
        """Start the SFU worker processes; wait until each one registered.

        :raises WorkerError: one could not start or register within 60 s.
        """
        config = self.config
        if self.hls is not None:
            rooms = self.app[ROOMS]
            # Live room → WebRTC viewers over all workers: the bridge's node has none itself.
            self.hls.popularity = lambda: {r.name: r.viewers for r in rooms.rooms.values() if r.live}
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        specs = sfu_worker_specs(self.workers, self.url, config.node_secret, config.sfu,
                                 log_level=level if level in ("debug", "info", "warning", "error") else "info")
        self.supervisor = Supervisor(specs)
        await self.supervisor.start()
        registry = self.app[NAMESPACE_KEY].registry
        names = set(self.supervisor.children)

        def registered() -> bool:
            return names <= {n.node_id for n in registry.nodes.values()}

        await self.supervisor.wait_until(registered, 60.0, f"{len(names)} SFU workers to register")

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
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
