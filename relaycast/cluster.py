"""``relaycast cluster``: the scaled topology as local processes on 127.0.0.1, no Docker.

Started in this order, each stage waited for within ``--ready-timeout`` seconds in all:

0. PostgreSQL, the platform's shared database, on ``--postgres-port`` (skipped when
   ``--database-url`` / ``RELAYCAST_DATABASE_URL`` names one): a throwaway server
   (``initdb`` into a new temporary folder, removed at exit; as the ``postgres`` user when
   run as root).  Without PostgreSQL binaries the instances share one SQLite file in
   ``RELAYCAST_DATA_DIR`` (default ``relaycast-data``) instead, which works for processes
   on one machine.
1. ``redis-server`` on ``--redis-port`` (skipped when ``--redis-url``,
   ``RELAYCAST_REDIS_URL`` or ``REDIS_URL`` names one),
2. with ``--turn``: coturn through ``relaycast turn --port TURN_PORT`` (development
   config); the signaling instances get ``RELAYCAST_TURN_URLS``/``RELAYCAST_TURN_SECRET``,
3. ``--signaling N`` instances ``relaycast serve --no-embedded-sfu`` on ports
   ``PORT .. PORT+N-1`` and, with ``--hls`` (the default), the LL-HLS bridge: ``relaycast
   serve --workers 1`` with its embedded SFU worker registered as node ``hls-1`` of role
   ``hls`` (``RELAYCAST_NODE_ROLE``: never picked for publishers or viewers, rooms are piped
   into it), on ``--hls-port`` (default ``PORT+N``),
4. ``--sfu M`` nodes ``relaycast sfu --node-id sfu-I``; each gets every signaling URL,
   rotated by its index so that the nodes spread over the instances.

The cluster is ready when every ``serve`` instance's ``GET /readyz`` reports M nodes (M+1
with the bridge) and Redis ok.  It then runs until SIGINT/SIGTERM/SIGHUP and stops the
children in reverse order: SIGTERM, up to ``--stop-timeout`` seconds, then SIGKILL to the
child's process group.  Children run in their own sessions, so a Ctrl-C reaches only this
launcher, which stops them in order.  Their output goes to ``NAME.log`` in ``--log-dir``
(default: a new temporary folder, printed and kept).

``RELAYCAST_NODE_SECRET`` and ``RELAYCAST_STREAM_KEY`` (and ``RELAYCAST_TURN_SECRET`` with
``--turn``) are generated when unset, printed, and shared by all children.

Exit status: 0 after a signal; 1 when a child exits or readiness times out (the message
has the child's last log lines); 2 for bad flags, a port in use or a missing redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from common.config import ConfigError
from signaling.config import check_redis_url

from .processes import spawn, terminate

# Start order; children are stopped tier by tier in reverse.
POSTGRES, REDIS, TURN, SERVE, SFU = range(5)
PG_USER = "relaycast"
PG_DATABASE = "postgres"


@dataclass
class Child:
    """One process of the cluster: ``name`` (``signaling-1``, ``sfu-2``, ...), its argv and
    environment, what it serves (``url``, printed) and its TCP listening ``port`` if any."""

    name: str
    tier: int
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    url: str
    port: int | None = None
    log: Path | None = None
    proc: asyncio.subprocess.Process | None = None
    prepare: Callable[[Child], None] | None = field(default=None, repr=False)
    """Run (blocking) right before the child is spawned; may complete ``argv``."""
    scratch: Path | None = None
    """A folder the child's ``prepare`` made, removed after the child stopped."""

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the child's log ("" before it started)."""
        try:
            text = self.log.read_text(errors="replace") if self.log else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, why: str) -> str:
        return f"{self.name} (pid {self.proc.pid if self.proc else '-'}) {why}; last lines of {self.log}:\n{self.tail()}"


class ClusterError(Exception):
    """A child exited or readiness timed out (the message names the child, with its log tail)."""


def _bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value
    return parse


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``cluster`` subcommand to ``relaycast``'s subparsers."""
    port = _bounded_int(1, 65535)
    p = sub.add_parser(
        "cluster", help="run Redis, signaling instances, SFU nodes and the HLS bridge as local processes",
        description="The scaled topology on 127.0.0.1 without Docker (see docs/cluster.md). "
                    "Runs until Ctrl-C, then stops every process.")
    p.add_argument("--signaling", type=_bounded_int(1, 32), default=2, metavar="N",
                   help="signaling instances (default 2)")
    p.add_argument("--sfu", type=_bounded_int(1, 64), default=2, metavar="M", help="SFU nodes (default 2)")
    p.add_argument("--port", type=port, default=8080, metavar="BASE",
                   help="first signaling port; instance i listens on BASE+i (default 8080)")
    p.add_argument("--hls", action=argparse.BooleanOptionalAction, default=True,
                   help="run the LL-HLS bridge instance hls-1 (default on)")
    p.add_argument("--hls-port", type=port, help="the bridge's port (default BASE+N)")
    p.add_argument("--redis-port", type=port, default=6380, help="port of the redis-server started (default 6380)")
    p.add_argument("--redis-url", help="use this Redis instead of starting one (also RELAYCAST_REDIS_URL, REDIS_URL)")
    p.add_argument("--postgres-port", type=port, default=5433,
                   help="port of the PostgreSQL server started (default 5433)")
    p.add_argument("--database-url", help="use this database instead of starting PostgreSQL "
                                          "(also RELAYCAST_DATABASE_URL)")
    p.add_argument("--turn", action=argparse.BooleanOptionalAction, default=False,
                   help="also run coturn (relaycast turn, development config) and advertise it (default off)")
    p.add_argument("--turn-port", type=port, default=3478, help="coturn's port with --turn (default 3478)")
    p.add_argument("--ice-gather", default="127.0.0.1",
                   help="ICE host candidate addresses of the SFU nodes (default 127.0.0.1)")
    p.add_argument("--ready-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the whole cluster to be ready (default 60)")
    p.add_argument("--stop-timeout", type=float, default=10.0, metavar="S",
                   help="seconds each stage may take to exit after SIGTERM before SIGKILL (default 10)")
    p.add_argument("--log-dir", help="folder for the children's logs (default: a new temporary folder)")
    return p


def plan(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[list[Child], dict[str, str]]:
    """The children to start, in order, and the settings generated for them (name -> value).

    :raises ConfigError: bad Redis URL, ports out of range or repeated, no redis-server.
    """
    base = dict(env)
    generated: dict[str, str] = {}
    makers = {"RELAYCAST_NODE_SECRET": lambda: secrets.token_urlsafe(32),
              "RELAYCAST_STREAM_KEY": lambda: "sk_" + secrets.token_urlsafe(24)}
    if args.turn:
        makers["RELAYCAST_TURN_SECRET"] = lambda: secrets.token_urlsafe(24)
    for name, make in makers.items():
        if not base.get(name):
            base[name] = generated[name] = make()
    python = [sys.executable, "-m", "relaycast.cli", "--log-level", args.log_level]
    children: list[Child] = []

    database_url = args.database_url or env.get("RELAYCAST_DATABASE_URL")
    if not database_url:
        pg_bin = postgres_bin(env)
        if pg_bin is not None:
            database_url = f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{args.postgres_port}/{PG_DATABASE}"
            children.append(Child("postgres", POSTGRES, [], base, database_url, args.postgres_port,
                                  prepare=lambda child, b=pg_bin: _init_postgres(child, b)))
    if database_url:
        base["RELAYCAST_DATABASE_URL"] = database_url
    else:  # no PostgreSQL here: one SQLite file shared by the instances on this machine
        base["RELAYCAST_DATA_DIR"] = env.get("RELAYCAST_DATA_DIR") or "relaycast-data"

    redis_url = args.redis_url or env.get("RELAYCAST_REDIS_URL") or env.get("REDIS_URL")
    if not redis_url:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise ConfigError("redis-server is not on PATH: install it (apt-get install redis-server) "
                              "or pass --redis-url")
        redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
        children.append(Child("redis", REDIS, [redis_server, "--port", str(args.redis_port), "--bind",
                                               "127.0.0.1", "--save", "", "--appendonly", "no"],
                              base, redis_url, args.redis_port))
    check_redis_url(redis_url, "--redis-url")
    base.update(REDIS_URL=redis_url, RELAYCAST_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    base.pop("RELAYCAST_NODE_ID", None)

    if args.turn:
        turn = f"127.0.0.1:{args.turn_port}"
        base["RELAYCAST_TURN_URLS"] = f"turn:{turn}?transport=udp,turn:{turn}?transport=tcp"
        children.append(Child("turn", TURN, [*python, "turn", "--port", str(args.turn_port)], base,
                               f"turn:{turn}", args.turn_port))

    urls = []
    for i in range(args.signaling):
        port = args.port + i
        urls.append(f"http://127.0.0.1:{port}")
        children.append(Child(f"signaling-{i + 1}", SERVE, [*python, "serve", "--no-embedded-sfu", "--host",
                                                            "127.0.0.1", "--port", str(port)], base, urls[-1], port))
    if args.hls:
        port = args.hls_port or args.port + args.signaling
        children.append(Child("hls-1", SERVE, [*python, "serve", "--host", "127.0.0.1", "--port", str(port),
                                               "--ice-gather", args.ice_gather, "--workers", "1"],
                               {**base, "RELAYCAST_NODE_ID": "hls-1", "RELAYCAST_EMBEDDED_SFU": "1",
                                "RELAYCAST_NODE_ROLE": "hls"},
                               f"http://127.0.0.1:{port}", port))
    for i in range(args.sfu):
        rotated = ",".join(urls[i % len(urls):] + urls[:i % len(urls)])
        children.append(Child(f"sfu-{i + 1}", SFU, [*python, "sfu", "--signaling", rotated, "--node-id",
                                                    f"sfu-{i + 1}", "--ice-gather", args.ice_gather],
                              base, f"-> {rotated}"))

    ports = [(c.port, c.name) for c in children if c.port is not None]
    for port, name in ports:
        if port > 65535:
            raise ConfigError(f"{name}'s port {port} is above 65535 (lower --port)")
        clash = [other for p, other in ports if p == port and other != name]
        if clash:
            raise ConfigError(f"{name} and {clash[0]} would both use port {port}")
    return children, generated


def postgres_bin(env: Mapping[str, str]) -> Path | None:
    """The folder of PostgreSQL's server binaries (``RELAYCAST_PG_BIN``, else the newest
    ``/usr/lib/postgresql/*/bin``), or ``None`` when ``postgres``/``initdb`` are not there."""
    candidates = [Path(env["RELAYCAST_PG_BIN"])] if env.get("RELAYCAST_PG_BIN") else sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True)
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in ("postgres", "initdb", "pg_isready")):
            return folder
    return None


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` account then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _init_postgres(child: Child, pg_bin: Path) -> None:
    """``initdb`` a throwaway cluster in a new temporary folder and set ``child.argv`` to run
    ``postgres`` on it (loopback only, trust authentication for user ``relaycast``).

    :raises ClusterError: initdb failed (its output in the message).
    """
    import pwd
    import subprocess

    folder = Path(tempfile.mkdtemp(prefix="relaycast-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
    data = folder / "data"
    done = subprocess.run([*_as_postgres_user(), str(pg_bin / "initdb"), "-D", str(data), "-U", PG_USER,
                           "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ClusterError(f"initdb failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    child.argv = [*_as_postgres_user(), str(pg_bin / "postgres"), "-D", str(data), "-p", str(child.port),
                  "-k", str(folder), "-c", "listen_addresses=127.0.0.1"]
    child.scratch = folder


async def _postgres_ready(pg_bin: Path, port: int) -> bool:
    proc = await asyncio.create_subprocess_exec(
        str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


def check_ports_free(children: list[Child]) -> None:
    """:raises ConfigError: naming the first child whose TCP port on 127.0.0.1 is taken."""
    for child in children:
        if child.port is None:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", child.port))
            except OSError as exc:
                raise ConfigError(f"port {child.port} for {child.name} is not free ({exc.strerror})") from None


def main(args: argparse.Namespace) -> int:
    """Run ``relaycast cluster``; returns the exit status (see the module docstring)."""
    try:
        children, generated = plan(args, os.environ)
        check_ports_free(children)
    except ConfigError as exc:
        print(f"relaycast cluster: {exc}", file=sys.stderr)
        return 2
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="relaycast-cluster-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"relaycast cluster: logs in {log_dir}", flush=True)
    for name, value in generated.items():
        print(f"  {name}={value}   (generated)", flush=True)
    try:
        return asyncio.run(_run(children, log_dir, args))
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 0


async def _run(children: list[Child], log_dir: Path, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            waiter = _Waiter(children, stop, started + args.ready_timeout, args.ready_timeout)
            serve = [c for c in children if c.tier == SERVE]
            nodes = [c for c in children if c.tier == SFU]
            expected = len(nodes) + (1 if args.hls else 0)
            for tier in sorted({c.tier for c in children}):
                group = [c for c in children if c.tier == tier]
                for child in group:
                    await _spawn(child, log_dir)
                if tier == POSTGRES:
                    pg_bin = postgres_bin(os.environ)
                    assert pg_bin is not None
                    up = await waiter.until("postgres", lambda b=pg_bin: _postgres_ready(b, args.postgres_port), group)
                elif tier == REDIS:
                    up = await waiter.until("redis", lambda: _redis_ping(args.redis_port), group)
                elif tier == TURN:
                    from turn.server import stun_ping

                    up = await waiter.until("coturn", lambda: stun_ping("127.0.0.1", args.turn_port), group)
                elif tier == SERVE:
                    up = await waiter.until("signaling /healthz", lambda: _all_healthy(http, serve), serve)
                else:
                    up = await waiter.until(f"/readyz to report {expected} nodes",
                                            lambda: _all_ready(http, serve, expected), nodes)
                if not up:  # a signal while starting
                    return 0
        _print_ready(children, time.monotonic() - started, args)
        await _watch(children, stop)
        return 0
    except ClusterError as exc:
        print(f"relaycast cluster: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await _stop_all(children, args.stop_timeout)


async def _spawn(child: Child, log_dir: Path) -> None:
    child.log = log_dir / f"{child.name}.log"
    if child.prepare is not None:
        print(f"  preparing {child.name}...", flush=True)
        await asyncio.to_thread(child.prepare, child)
    with open(child.log, "ab") as out:
        try:
            child.proc = await spawn(child.argv, child.env, stdout=out, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            raise ClusterError(f"cannot start {child.name} ({child.argv[0]}): {exc}") from None
    print(f"  {child.name:<12} pid {child.proc.pid:<8} {child.url}", flush=True)


class _Waiter:
    """Polls a check every 0.25 s, printing progress; fails on a child's exit or the deadline."""

    def __init__(self, children: list[Child], stop: asyncio.Event, deadline: float, timeout: float) -> None:
        self.children, self.stop, self.deadline, self.timeout = children, stop, deadline, timeout

    async def until(self, what: str, check: Callable[[], Awaitable[Any]], suspects: list[Child]) -> bool:
        """True once ``check()`` returns True (else it returns a progress text or False);
        False when a signal came first.  ``suspects``' logs go into the timeout message."""
        shown, shown_at = None, 0.0
        while not self.stop.is_set():
            for child in self.children:
                if child.proc is not None and child.proc.returncode is not None:
                    raise ClusterError(child.failure(f"exited with status {child.proc.returncode} "
                                                     f"while waiting for {what}"))
            result = await check()
            if result is True:
                return True
            now = time.monotonic()
            progress = result or "not yet"
            if progress != shown or now - shown_at >= 5:
                print(f"  waiting for {what}: {progress}", flush=True)
                shown, shown_at = progress, now
            if now > self.deadline:
                tails = "\n".join(c.failure("is running") for c in suspects)
                raise ClusterError(f"not ready after {self.timeout:g} s waiting for {what} ({progress})\n{tails}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.25)
        return False


async def _redis_ping(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
        try:
            writer.write(b"PING\r\n")
            return (await asyncio.wait_for(reader.readline(), 1)).startswith(b"+PONG")
        finally:
            writer.close()
    except (OSError, TimeoutError):
        return False


async def _get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """(status, JSON body); (0, None) when the server does not answer."""
    try:
        async with http.get(url) as resp:
            return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, None


async def _all_healthy(http: aiohttp.ClientSession, serve: list[Child]) -> bool | str:
    statuses = [(await _get_json(http, f"{c.url}/healthz"))[0] for c in serve]
    if all(s == 200 for s in statuses):
        return True
    return ", ".join(f"{c.name} {'up' if s == 200 else 'starting'}" for c, s in zip(serve, statuses, strict=True))


async def _all_ready(http: aiohttp.ClientSession, serve: list[Child], expected: int) -> bool | str:
    parts, ready = [], True
    for child in serve:
        status, body = await _get_json(http, f"{child.url}/readyz")
        if not isinstance(body, dict):
            parts.append(f"{child.name} no answer")
            ready = False
            continue
        ok = status == 200 and body.get("nodes") == expected and body.get("redis") == "ok"
        ready = ready and ok
        parts.append(f"{child.name} {body.get('nodes')}/{expected} nodes ({body.get('status')})")
    return True if ready else ", ".join(parts)


def _print_ready(children: list[Child], took: float, args: argparse.Namespace) -> None:
    signaling = [c for c in children if c.name.startswith("signaling-")]
    hls = [c for c in children if c.name == "hls-1"]
    room = os.environ.get("RELAYCAST_DEMO_ROOM", "demo") or "demo"
    print(f"relaycast cluster ready in {took:.1f} s: {len(signaling)} signaling, {args.sfu} SFU nodes"
          + (", LL-HLS bridge hls-1" if hls else ""), flush=True)
    print(f"  publish (WHIP, Bearer RELAYCAST_STREAM_KEY): {signaling[0].url}/whip/{room}", flush=True)
    print(f"  watch: {signaling[-1].url}/watch/{room}", flush=True)
    if hls:
        print(f"  LL-HLS (any live room, pulled into hls-1): {hls[0].url}/hls/{room}/index.m3u8", flush=True)
    print("  Ctrl-C stops the cluster", flush=True)


async def _watch(children: list[Child], stop: asyncio.Event) -> None:
    """Until ``stop``; :raises ClusterError: when a child exits first."""
    exits = {asyncio.ensure_future(c.proc.wait()): c for c in children if c.proc is not None}
    stopped = asyncio.ensure_future(stop.wait())
    done, pending = await asyncio.wait({stopped, *exits}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if stopped not in done:
        child = exits[next(iter(done))]
        raise ClusterError(child.failure(f"exited with status {child.proc.returncode if child.proc else '?'}"))


async def _stop_all(children: list[Child], timeout: float) -> None:
    """SIGTERM tier by tier in reverse start order; SIGKILL the process group after ``timeout``."""
    for tier in sorted({c.tier for c in children}, reverse=True):
        group = [c for c in children if c.tier == tier and c.proc is not None and c.proc.returncode is None]
        if not group:
            continue
        print(f"relaycast cluster: stopping {', '.join(c.name for c in group)}", flush=True)
        names = {id(c.proc): c.name for c in group}

        def killing(proc: asyncio.subprocess.Process, names: dict[int, str] = names) -> None:
            print(f"relaycast cluster: {names[id(proc)]} did not stop in {timeout:g} s, killing it", flush=True)

        await terminate([c.proc for c in group if c.proc is not None], timeout, killing)
    for child in children:
        if child.scratch is not None:
            shutil.rmtree(child.scratch, ignore_errors=True)
    if any(c.proc is not None for c in children):
        print("relaycast cluster: stopped", flush=True)
