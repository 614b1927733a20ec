"""``relaycast`` command line: ``serve`` (signaling + embedded SFU, or SFU worker processes
with ``--workers N``) and ``sfu`` (a separate SFU node)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from common.config import ConfigError, env_number
from common.log_redaction import install_redaction
from community.config import CommunityConfig, CommunityConfigError
from sfu.config import SfuConfig
from sfu.worker import RouterFactory
from signaling.config import SignalingConfig
from signaling.tls import TlsError

from .ingest_process import IngestConfig
from .workers import WorkerError, WorkersConfig


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` ("debug"... "error"); chatty libraries at WARNING or above.

    Every record, third-party ones included, has its credentials masked
    (:func:`common.log_redaction.install_redaction`) whatever handlers are configured.
    """
    install_redaction()
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aioice", "aiortc", "engineio", "socketio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _gather(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(a.strip() for a in value.split(",") if a.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaycast",
        description="WebRTC SFU live streaming: WHIP in, WHEP out, data-channel chat.",
        epilog="Every flag has a RELAYCAST_* environment variable; see README.md.",
    )
    parser.add_argument("--log-level", default=os.environ.get("RELAYCAST_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run signaling with an embedded SFU worker (no Redis needed)")
    serve.add_argument("--host", help="listen address (RELAYCAST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (RELAYCAST_PORT, default 8080)")
    serve.add_argument("--room", dest="demo_room",
                       help="demo channel made sure of at start-up (RELAYCAST_DEMO_ROOM, default demo)")
    serve.add_argument("--stream-key", dest="demo_stream_key",
                       help="a stream key of the demo channel (RELAYCAST_STREAM_KEY; a new random one "
                            "on every start if unset)")
    serve.add_argument("--ice-gather", help="comma-separated local IPs for ICE host candidates (RELAYCAST_ICE_GATHER)")
    serve.add_argument("--no-embedded-sfu", action="store_true",
                       help="do not run an SFU worker in this process; wait for `relaycast sfu` nodes")
    serve.add_argument("--workers", metavar="N|auto",
                       help="SFU worker processes (RELAYCAST_WORKERS, default auto: one per CPU minus "
                            "one, at least 1); 1 runs the SFU in this process")
    serve.add_argument("--data-dir", help="where the embedded SQLite database lives, created on first "
                                          "start (RELAYCAST_DATA_DIR, default ./relaycast-data); "
                                          "RELAYCAST_DATABASE_URL=postgresql+asyncpg://... uses PostgreSQL")
    serve.add_argument("--tls-cert", metavar="FILE",
                       help="PEM certificate (chain): serve HTTPS and WSS (RELAYCAST_TLS_CERT)")
    serve.add_argument("--tls-key", metavar="FILE", help="its PEM private key (RELAYCAST_TLS_KEY)")
    serve.add_argument("--self-signed", action="store_true",
                       help="HTTPS with a development certificate from a local CA made in the data folder "
                            "(for this machine's names and addresses; prints how to trust the CA)")
    serve.add_argument("--redis-url", help="Redis mode: share nodes and rooms with other signaling "
                                           "instances (RELAYCAST_REDIS_URL or REDIS_URL)")

    node = sub.add_parser("sfu", help="run an SFU node that registers with a signaling server")
    node.add_argument("--signaling", required=True,
                      help="signaling base URL, e.g. http://127.0.0.1:8080; in Redis mode several, "
                           "comma-separated, tried in turn when one goes away")
    node.add_argument("--node-id", default=None,
                      help="node id (RELAYCAST_NODE_ID; default sfu-HOSTNAME-PID, unique per process)")
    node.add_argument("--ice-gather", help="comma-separated local IPs for ICE host candidates")
    node.add_argument("--parent-pid", type=int, metavar="PID",
                      help="exit when process PID (the parent, e.g. `relaycast serve --workers`) exits")

    from turn import cli as turn_cli  # `relaycast turn`: coturn for development / config rendering

    turn_cli.add_parser(sub)
    from . import cluster  # `relaycast cluster`: the scaled topology as local processes

    cluster.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.command == "turn":
            from turn import cli as turn_cli

            return turn_cli.main(args)
        if args.command == "cluster":
            from . import cluster

            return cluster.main(args)
        if args.command == "serve":
            community = CommunityConfig.from_env(data_dir=args.data_dir)
            tls_cert, tls_key = args.tls_cert, args.tls_key
            if args.self_signed:
                if tls_cert or tls_key:
                    raise ConfigError("--self-signed makes its own certificate: leave out --tls-cert/--tls-key")
                from .dev_certificate import ensure_dev_certificate

                host = args.host or os.environ.get("RELAYCAST_HOST", "127.0.0.1")
                made = ensure_dev_certificate(community.data_dir / "tls", host)
                tls_cert, tls_key = str(made.cert), str(made.key)
                print(made.instructions(), flush=True)
            config = SignalingConfig.from_env(
                host=args.host, port=args.port, demo_room=args.demo_room,
                demo_stream_key=args.demo_stream_key, ice_gather=_gather(args.ice_gather),
                embedded_sfu=False if args.no_embedded_sfu else None, redis_url=args.redis_url,
                tls_cert=tls_cert, tls_key=tls_key,
            )
            workers = WorkersConfig.from_env(workers=args.workers, embedded_sfu=config.embedded_sfu)
            ingest = IngestConfig.from_env(os.environ, config.host, config.tls_cert, config.tls_key)
            return asyncio.run(serve(config, workers=workers.count, community=community, ingest=ingest))
        return asyncio.run(_sfu_node(args))
    except (ConfigError, CommunityConfigError, TlsError) as exc:
        print(f"relaycast: configuration error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"relaycast: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _stop_on_signal() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets, from now on (the handlers are installed before
    anything is printed: a supervisor that signals on a printed line must not find the
    default action, which kills the process without stopping its children)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


class _Signals:
    """SIGINT/SIGTERM as events: ``first`` on the first one, ``second`` on the next."""

    def __init__(self) -> None:
        self.first, self.second = asyncio.Event(), asyncio.Event()
        self.watchers: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._fired)

    def _fired(self) -> None:
        (self.second if self.first.is_set() else self.first).set()


async def serve(config: SignalingConfig, router_factory: RouterFactory | None = None, workers: int = 1,
                community: CommunityConfig | None = None, ingest: IngestConfig | None = None) -> int:
    """Run the service until SIGINT/SIGTERM, printing its URLs, the demo channel's stream key
    and, on the first run, the admin account's password.

    :param router_factory: the per-room Router class of the embedded worker (default
        :class:`sfu.router.Router`).
    :param workers: SFU worker processes (:class:`relaycast.service.Service`); 1 = none.
    :param community: the platform's settings (default from the environment).
    :param ingest: the RTMP/SRT ingest's settings (None: no ingest process).
    """
    from .service import Service

    stop = _stop_on_signal()
    async with Service(config, router_factory=router_factory, workers=workers,
                       community=community, ingest=ingest) as service:
        if service.tls_context is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, service.reload_tls)
        print(f"relaycast listening on {service.url}", flush=True)
        if service.tls_context is not None:
            print("  HTTPS and WSS; plain HTTP on this port is redirected; SIGHUP reloads the certificate",
                  flush=True)
        if service.admin_password is not None:  # before the stream key: the last line
            print(f"  admin login: admin / {service.admin_password}  (shown once; change it in /settings)",
                  flush=True)
        if service.supervisor is not None:
            pids = ", ".join(f"{name} pid {pid}" for name, pid in service.supervisor.pids().items())
            print(f"  SFU workers: {pids}; LL-HLS node {config.sfu.node_id} in this process", flush=True)
        if config.demo_room:
            room = quote(config.demo_room)
            print(f"  broadcast: {service.url}/broadcast/{room}", flush=True)
            print(f"  watch:     {service.url}/watch/{room}", flush=True)
            print(f"  WHIP:      {service.url}/whip/{room}", flush=True)
            print(f"  WHEP:      {service.url}/whep/{room}", flush=True)
            print(f"  stream key (Bearer token): {service.demo_stream_key}", flush=True)
        if service.ingest is not None:
            host = service.ingest.settings.rtmp_host
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
            if service.ingest.srt_port is not None:
                channel = quote(config.demo_room) if config.demo_room else "CHANNEL"
                print(f"  SRT:       srt://{host}:{service.ingest.srt_port}?streamid=#!::r={channel},m=publish,"
                      "s=STREAM_KEY", flush=True)
            print(f"  RTMP:      rtmp://{host}:{service.ingest.rtmp_port}/live  (stream key as the key)", flush=True)
            if service.ingest.rtmps_port is not None:
                print(f"  RTMPS:     rtmps://{host}:{service.ingest.rtmps_port}/live", flush=True)
        await stop.wait()
        print("relaycast shutting down", flush=True)
    return 0


def _watch_parent(parent_pid: int, signals: _Signals) -> None:
    """Stop at once when the parent is gone (where the kernel does not kill us for it)."""
    from .processes import parent_alive

    async def watch() -> None:
        while parent_alive(parent_pid):
            await asyncio.sleep(1.0)
        signals.first.set()
        signals.second.set()

    task = asyncio.get_running_loop().create_task(watch(), name="parent-watch")
    signals.watchers.append(task)


async def _sfu_node(args: argparse.Namespace) -> int:
    from sfu.node import SignalingLink
    from sfu.worker import Worker

    secret = os.environ.get("RELAYCAST_NODE_SECRET", "")
    if len(secret) < 16:
        raise ConfigError("RELAYCAST_NODE_SECRET (>= 16 characters) is required for `relaycast sfu`")
    drain_s = env_number(os.environ, "RELAYCAST_DRAIN_S", 30.0, 0, 86400)
    config = SfuConfig.from_env()
    overrides: dict[str, Any] = {}
    if args.node_id:
        overrides["node_id"] = args.node_id
    elif not os.environ.get("RELAYCAST_NODE_ID"):
        overrides["node_id"] = f"sfu-{socket.gethostname()}-{os.getpid()}"
    if args.ice_gather:
        overrides["ice_gather"] = _gather(args.ice_gather)
    if overrides:
        config = replace(config, **overrides)
    poll_parent = False
    if args.parent_pid is not None:
        from .processes import die_with_parent

        poll_parent = not die_with_parent(args.parent_pid)
    async with Worker(config) as worker:
        link = SignalingLink(worker, args.signaling, config.node_id, secret)
        signals = _Signals()
        if poll_parent:
            _watch_parent(args.parent_pid, signals)
        await link.start(timeout=30)
        print(f"SFU node {config.node_id} registered with {args.signaling}", flush=True)
        await signals.first.wait()
        # Drain: no new sessions (503), existing ones run until they end or the deadline;
        # a second signal cuts it short.
        sessions = worker.load()["sessions"]
        print(f"SFU node {config.node_id} draining: {sessions} sessions, up to {drain_s:g} s", flush=True)
        drain = asyncio.ensure_future(link.drain(drain_s))
        cut = asyncio.ensure_future(signals.second.wait())
        await asyncio.wait([drain, cut], return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        ended = drain.done() and drain.result()
        drain.cancel()
        left = worker.load()["sessions"]
        print(f"SFU node {config.node_id} " + ("drained" if ended else f"closing {left} sessions"), flush=True)
        await worker.close()
        await link.stop()  # signaling forgets the node's sessions on the disconnect
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
