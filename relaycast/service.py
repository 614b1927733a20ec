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
from common.problems import HttpProblem
from community.app import COMMUNITY
from community.app import install as install_platform
from community.config import CommunityConfig
from community.demo import ensure_demo_channel
from community.thumbnails import thumbnails_of
from hls_bridge.bridge import BridgeManager, HlsConfig
from hls_bridge.origin import create_origin_app
from hls_bridge.vod import RecordingConfig, create_vod_app
from sfu.direct import DirectTransport
from sfu.node import SignalingLink
from sfu.router import Router
from sfu.worker import RouterFactory, Worker
from signaling import tls
from signaling.app import create_app
from signaling.app_keys import CASCADE, NAMESPACE_KEY, RECORDINGS, ROOMS
from signaling.config import SignalingConfig
from signaling.http_guard import ConnectionGuard, EdgeSite
from signaling.nodes import PlacementStrategy
from signaling.publish_auth import AccessRefused
from signaling.tls import HttpsSite

from .ingest_process import IngestConfig, IngestError, IngestProcess
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

    The platform (:mod:`community`: accounts, channels, keys, the ``/api`` REST API) is
    installed on the signaling app with ``community`` (default
    :meth:`CommunityConfig.from_env`: SQLite in ``RELAYCAST_DATA_DIR``, or
    ``RELAYCAST_DATABASE_URL``); channels are the rooms.  ``start`` makes sure the demo
    channel ``config.demo_room`` exists with ``config.demo_stream_key`` (a new random key
    when unset: `demo_stream_key`), and that an admin account exists (`admin_password` is
    its password when it was created by this start, else ``None``).

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
        community: CommunityConfig | None = None,
        ingest: IngestConfig | None = None,
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
        self.community = install_platform(self.app, community or CommunityConfig.from_env())
        self.runner = web.AppRunner(self.app, access_log=None)
        self.connections = ConnectionGuard(config.connections_per_address, config.trusted_proxies)
        self.worker: Worker | None = None
        self.router_factory = router_factory
        self.link: SignalingLink | None = None
        self.url = ""
        """The base URL users reach (``https://`` with a certificate)."""
        self.internal_url = ""
        """Where the service's own clients reach it (plain HTTP on 127.0.0.1 with TLS)."""
        self.tls_context = (tls.server_context(config.tls_cert, config.tls_key)
                            if config.tls_cert and config.tls_key else None)
        """HTTPS (:mod:`signaling.tls`); :raises TlsError: a certificate it cannot serve."""
        self.demo_stream_key: str | None = None
        self.admin_password: str | None = None
        self.hls: BridgeManager | None = None
        self.recordings = RecordingConfig.from_env()
        self.ingest_config = ingest
        self.ingest: IngestProcess | None = None
        """The RTMP/SRT ingest process (``ingest`` given with an RTMP port), started by `start`."""
        self._sweeper: asyncio.Task[None] | None = None
        if config.embedded_sfu:
            # Mounted now (the app freezes at start-up); the worker is attached in start().
            library = self.recordings.library()
            self.hls = BridgeManager(None, HlsConfig.from_env(), recordings=library)
            self.app.add_subapp("/hls", create_origin_app(self.hls, access=self.view_access))
            if library is not None:
                self.app[RECORDINGS] = library
                self.app.add_subapp("/vod", create_vod_app(library, access=self.view_access))

    def reload_tls(self) -> bool:
        """Load the certificate and key files again (``SIGHUP``): new connections get them,
        open ones keep theirs; a file refused leaves the old certificate in use (logged)."""
        config = self.config
        if self.tls_context is None or not config.tls_cert or not config.tls_key:
            return False
        try:
            cert = tls.reload_context(self.tls_context, config.tls_cert, config.tls_key)
        except tls.TlsError as exc:
            logger.error("TLS certificate not reloaded (the old one stays): %s", exc)
            return False
        logger.info("TLS certificate reloaded: %s, valid until %s UTC", cert.subject.rfc4514_string(),
                    f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}")
        return True

    async def view_access(self, room: str, token: str | None) -> bool:
        """LL-HLS and VOD viewers: the rooms' authority decides (a private channel needs a
        playback token, :mod:`hls_bridge.access`).  :raises HttpProblem: 401."""
        try:
            return await self.app[ROOMS].authority.authorize_view(room, token)
        except AccessRefused as refused:
            raise HttpProblem(refused.status, None, refused.detail,
                              headers={"WWW-Authenticate": refused.challenge}) from None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        install_redaction()  # secrets out of every log record, also when embedded
        if config.demo_room:  # known before start-up: its state is read from Redis then
            self.app[ROOMS].ensure(config.demo_room)
        await self.runner.setup()  # opens (and migrates) the database
        try:
            await self._ensure_demo_channel()
        except BaseException:
            await self.runner.cleanup()
            raise
        # The first-run admin's password hash (argon2id, ~0.1 s in a thread) runs beside
        # the SFU's start-up.
        admin = asyncio.create_task(self._ensure_admin(), name="ensure-admin")
        try:
            await self._start_serving()
        except BaseException:
            admin.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await admin
            raise
        try:
            self.admin_password = await admin
        except BaseException:
            await self.stop()
            raise

    async def _start_serving(self) -> None:
        config = self.config
        if self.tls_context is not None:
            site: EdgeSite = HttpsSite(self.runner, config.host, config.port, context=self.tls_context,
                                       guard=self.connections, header_timeout_s=config.header_timeout_s)
        else:
            site = EdgeSite(self.runner, config.host, config.port, guard=self.connections,
                            header_timeout_s=config.header_timeout_s)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"{'https' if self.tls_context else 'http'}://{shown}:{port}"
        self.internal_url = self.url
        if self.tls_context is not None:
            # The service's own clients (the SFU link, the ingest relay, worker processes)
            # talk to it over loopback in plain HTTP: the certificate names the public host.
            internal = EdgeSite(self.runner, "127.0.0.1", 0, guard=self.connections,
                                header_timeout_s=config.header_timeout_s)
            await internal.start()
            self.internal_url = f"http://127.0.0.1:{self.runner.addresses[-1][1]}"
        if config.embedded_sfu:
            sfu = replace(config.sfu, role="hls") if self.workers > 1 else config.sfu
            self.worker = Worker(sfu, router_factory=self.router_factory or Router)
            await self.worker.__aenter__()
            if self.hls is not None:
                self.hls.attach(DirectTransport(self.worker))
                cascade, node_id = self.app[CASCADE], config.sfu.node_id
                self.hls.pull = lambda room: cascade.pull_into(room, node_id)
                self.hls.start()
                if (thumbnails := thumbnails_of(self.app)) is not None:  # same node, same pull
                    thumbnails.attach(DirectTransport(self.worker), self.hls.pull)
                if self.hls.recordings is not None:
                    self._sweeper = asyncio.create_task(
                        self.hls.recordings.sweep_forever(self.recordings.sweep_interval_s))
            self.link = SignalingLink(self.worker, self.internal_url, config.sfu.node_id, config.node_secret)
            await self.link.start()
        if self.workers > 1:
            try:
                await self._start_workers()
            except BaseException:
                await self.stop()
                raise
        await self._start_ingest()

    async def _start_ingest(self) -> None:
        """The RTMP/SRT ingest process, publishing to this service's ``POST /whip``.  Its
        failure to listen (a port in use) is logged, not fatal: WHIP publishing goes on."""
        config = self.ingest_config
        if config is None or config.rtmp_port is None:
            return
        process = IngestProcess(config.settings(f"{self.internal_url}/whip"))
        try:
            await process.start()
        except (IngestError, OSError) as exc:
            logger.error("%s; RTMP and SRT ingest are off", exc)
            return
        self.ingest = process

    async def _ensure_demo_channel(self) -> None:
        """The demo channel and its key (`demo_stream_key`)."""
        if self.config.demo_room:
            self.demo_stream_key = await ensure_demo_channel(
                self.app[COMMUNITY].db, self.config.demo_room, self.config.demo_stream_key)

    async def _ensure_admin(self) -> str | None:
        """The first-run admin account; its password when created now."""
        from community.api.users import ensure_admin

        return await ensure_admin(self.app[COMMUNITY].db, None)

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
        specs = sfu_worker_specs(self.workers, self.internal_url, config.node_secret, config.sfu,
                                 log_level=level if level in ("debug", "info", "warning", "error") else "info")
        self.supervisor = Supervisor(specs)
        await self.supervisor.start()
        registry = self.app[NAMESPACE_KEY].registry
        names = set(self.supervisor.children)

        def registered() -> bool:
            return names <= {n.node_id for n in registry.nodes.values()}

        await self.supervisor.wait_until(registered, 60.0, f"{len(names)} SFU workers to register")

    async def stop(self) -> None:
        if self.ingest is not None:  # first: its sessions end through this service's WHIP
            await self.ingest.close()
            self.ingest = None
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
