"""``relaycast turn``: coturn for development, or a coturn config for deployment.

* ``relaycast turn`` renders the development config and runs coturn in the
  foreground on 127.0.0.1 (loopback peers allowed) until Ctrl-C, printing the
  ``RELAYCAST_TURN_*`` settings for ``relaycast serve``.
* ``relaycast turn --print-config [--production]`` prints the rendered config
  (it contains the secret; ``-o FILE`` writes it with mode 0600 instead).

The secret comes from ``RELAYCAST_TURN_SECRET``; development generates one when
it is unset (and prints it, since ``relaycast serve`` needs the same value).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from typing import Any

from .config import DEFAULT_PORT, DEFAULT_REALM, CoturnConfig, split_list
from .credentials import TurnError
from .server import TurnServer


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``turn`` subcommand to ``relaycast``'s subparsers."""
    turn = sub.add_parser(
        "turn",
        help="run coturn on 127.0.0.1 for development, or print a coturn config (--print-config)",
        description="TURN with coturn. Without --print-config: run coturn in the foreground on "
                    "127.0.0.1 (development config, loopback peers allowed). The shared secret is "
                    "RELAYCAST_TURN_SECRET (generated for development when unset).",
    )
    turn.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listening port (default {DEFAULT_PORT})")
    turn.add_argument("--realm", default=DEFAULT_REALM, help=f"TURN realm (default {DEFAULT_REALM})")
    turn.add_argument("--min-port", type=int, help="lowest UDP relay port (default 49152; development 61000)")
    turn.add_argument("--max-port", type=int, help="highest UDP relay port (default 65535)")
    turn.add_argument("--print-config", action="store_true", help="print the rendered turnserver.conf and exit")
    turn.add_argument("-o", "--output", help="with --print-config: write the config to this file (mode 0600)")
    turn.add_argument("--production", action="store_true",
                      help="with --print-config: the production config (deny lists, no loopback peers)")
    prod = turn.add_argument_group("production config (--print-config --production)")
    prod.add_argument("--listening-ip", help="comma-separated listening addresses (default: all)")
    prod.add_argument("--relay-ip", help="comma-separated relay addresses (default: coturn's choice)")
    prod.add_argument("--external-ip", help="PUBLIC or PUBLIC/PRIVATE address when behind 1:1 NAT")
    prod.add_argument("--allowed-peer-ip", help="comma-separated SFU addresses or a-b ranges TURN may relay to "
                                                "despite the deny list; each must lie inside one private "
                                                "network (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)")
    prod.add_argument("--user-quota", type=int, help="concurrent allocations per credential (default 12)")
    prod.add_argument("--total-quota", type=int, help="concurrent allocations in total (default 1200)")
    prod.add_argument("--max-bps", type=int, help="per-session bandwidth cap, bytes per second")
    prod.add_argument("--tls-port", type=int, help="turns: listening port (with --cert and --pkey)")
    prod.add_argument("--cert", help="TLS certificate chain (PEM)")
    prod.add_argument("--pkey", help="TLS private key (PEM)")
    prod.add_argument("--log-file", help="coturn log file (default: stdout)")
    return turn


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"realm": args.realm}
    for name in ("min_port", "max_port", "user_quota", "total_quota", "max_bps", "tls_port", "cert",
                 "pkey", "log_file", "external_ip"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    for name in ("listening_ip", "relay_ip", "allowed_peer_ip"):
        if getattr(args, name):
            options[name + "s"] = split_list(getattr(args, name))
    return options


def main(args: argparse.Namespace, env: dict[str, str] | None = None) -> int:
    """Run ``relaycast turn``; returns the exit status (2 for configuration errors)."""
    env = dict(os.environ) if env is None else env
    secret = env.get("RELAYCAST_TURN_SECRET") or ""
    generated = False
    try:
        if not secret:
            if args.production:
                raise TurnError("RELAYCAST_TURN_SECRET is required for the production config "
                                "(the same value as relaycast serve's)")
            secret, generated = secrets.token_urlsafe(24), True
        options = _options(args)
        if args.print_config:
            if args.production:
                config = CoturnConfig.production(secret, port=args.port, **options)
            else:
                config = CoturnConfig.for_development(secret, port=args.port, **options)
            if args.output:
                print(f"wrote {config.write(args.output)}", file=sys.stderr)
            else:
                sys.stdout.write(config.render())
            return 0
        if args.production or args.output:
            raise TurnError("--production and --output go with --print-config; "
                            "relaycast turn itself runs the development config only")
        production_only = {"listening_ips", "relay_ips", "external_ip", "allowed_peer_ips", "tls_port", "cert", "pkey",
                    "log_file"}
        if production_only & options.keys():
            raise TurnError(f"{', '.join(sorted(production_only & options.keys()))}: production options "
                            "(use --print-config --production)")
        return asyncio.run(_run(secret, args.port, options, generated))
    except TurnError as exc:
        print(f"relaycast turn: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


async def _run(secret: str, port: int, options: dict[str, Any], generated: bool) -> int:
    server = TurnServer(secret, port=port, **options)
    async with server:
        print(f"coturn (development, loopback only) pid {server.process.pid if server.process else '?'}", flush=True)
        print(f"  TURN:  {server.url}", flush=True)
        print(f"  log:   {server.log_path}", flush=True)
        print("  for relaycast serve:", flush=True)
        print(f"    RELAYCAST_TURN_URLS={','.join(server.urls)}", flush=True)
        if generated:
            print(f"    RELAYCAST_TURN_SECRET={secret}   (generated; set it to keep it stable)", flush=True)
        else:
            print("    RELAYCAST_TURN_SECRET=<the value in your environment>", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        exited = asyncio.ensure_future(server.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if exited.done():
            print(f"relaycast turn: coturn exited with status {exited.result()}:\n{server.log_tail()}",
                  file=sys.stderr)
            return 1
        exited.cancel()
        print("relaycast turn: stopping coturn", flush=True)
    return 0
