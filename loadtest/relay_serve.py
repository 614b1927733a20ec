"""``python -m loadtest relay-serve``: the service with the naive MediaRelay Router (a baseline).

The same ``relaycast serve`` (same flags, same output), except that every room is served by
:class:`loadtest.relay_router.RelayRouter` (decode once, encode per viewer) instead of the
packet-forwarding Router.  ``loadtest fanout --mode relay`` starts it as its own process to
measure the SFU against it; it is not part of the product.
"""

from __future__ import annotations

import argparse
import asyncio

from relaycast.cli import serve
from signaling.config import SignalingConfig

from .relay_router import RelayRouter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8080)")
    parser.add_argument("--room", dest="demo_room", help="demo room created at startup (default demo)")
    parser.add_argument("--stream-key", dest="demo_stream_key", help="the demo room's stream key")
    parser.add_argument("--ice-gather", help="comma-separated local IPs for ICE host candidates")


def main(args: argparse.Namespace) -> int:
    gather = tuple(a.strip() for a in args.ice_gather.split(",") if a.strip()) if args.ice_gather else None
    config = SignalingConfig.from_env(
        host=args.host, port=args.port, demo_room=args.demo_room,
        demo_stream_key=args.demo_stream_key, ice_gather=gather,
    )
    try:
        return asyncio.run(serve(config, router_factory=RelayRouter))
    except KeyboardInterrupt:
        return 0
