"""``relaycast`` command line: ``serve`` (signaling + embedded SFU) and ``sfu`` (a separate SFU node)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from urllib.parse import quote

from sfu.config import ConfigError, SfuConfig

from .config import SignalingConfig


def configure_logging(level: str) -> None:
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
    serve.add_argument("--room", dest="demo_room", help="demo room created at startup (RELAYCAST_DEMO_ROOM, default demo)")
    serve.add_argument("--stream-key", dest="demo_stream_key",
                       help="the demo room's stream key (RELAYCAST_STREAM_KEY; random if unset)")
    serve.add_argument("--ice-gather", help="comma-separated local IPs for ICE host candidates (RELAYCAST_ICE_GATHER)")
    serve.add_argument("--mode", choices=["forward", "relay"],
                       help="SFU mode (RELAYCAST_SFU_MODE): forward packets (default) or the naive "
                            "MediaRelay decode/re-encode baseline used by `loadtest fanout`")
    serve.add_argument("--no-embedded-sfu", action="store_true",
                       help="do not run an SFU worker in this process; wait for `relaycast sfu` nodes")

    node = sub.add_parser("sfu", help="run an SFU node that registers with a signaling server")
    node.add_argument("--signaling", required=True, help="signaling base URL, e.g. http://127.0.0.1:8080")
    node.add_argument("--node-id", default=None, help="node id (RELAYCAST_NODE_ID)")
    node.add_argument("--ice-gather", help="comma-separated local IPs for ICE host candidates")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.command == "serve":
            config = SignalingConfig.from_env(
                host=args.host, port=args.port, demo_room=args.demo_room,
                demo_stream_key=args.demo_stream_key, ice_gather=_gather(args.ice_gather),
                embedded_sfu=False if args.no_embedded_sfu else None,
            )
            if args.mode:
                config = replace(config, sfu=replace(config.sfu, mode=args.mode))
            return asyncio.run(_serve(config))
        return asyncio.run(_sfu_node(args))
    except ConfigError as exc:
        print(f"relaycast: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(config: SignalingConfig) -> int:
    from .service import Service

    async with Service(config) as service:
        print(f"relaycast listening on {service.url}", flush=True)
        if config.demo_room:
            room = quote(config.demo_room)
            print(f"  broadcast: {service.url}/broadcast/{room}", flush=True)
            print(f"  watch:     {service.url}/watch/{room}", flush=True)
            print(f"  WHIP:      {service.url}/whip/{room}", flush=True)
            print(f"  WHEP:      {service.url}/whep/{room}", flush=True)
            print(f"  stream key (Bearer token): {service.demo_stream_key}", flush=True)
        await _wait_for_signal()
        print("relaycast shutting down", flush=True)
    return 0


async def _sfu_node(args: argparse.Namespace) -> int:
    from sfu.node import SignalingLink
    from sfu.worker import Worker

    secret = os.environ.get("RELAYCAST_NODE_SECRET", "")
    if len(secret) < 16:
        raise ConfigError("RELAYCAST_NODE_SECRET (>= 16 characters) is required for `relaycast sfu`")
    config = SfuConfig.from_env()
    overrides = {}
    if args.node_id:
        overrides["node_id"] = args.node_id
    if args.ice_gather:
        overrides["ice_gather"] = _gather(args.ice_gather)
    if overrides:
        config = replace(config, **overrides)
    async with Worker(config) as worker:
        link = SignalingLink(worker, args.signaling, config.node_id, secret)
        await link.start(timeout=30)
        print(f"SFU node {config.node_id} registered with {args.signaling}", flush=True)
        await _wait_for_signal()
        worker.draining = True
        await link.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
