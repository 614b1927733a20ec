"""Run coturn as a child process for development and tests.

::

    async with TurnServer(secret) as turn:           # development config on 127.0.0.1
        turn.url                                      # "turn:127.0.0.1:PORT?transport=udp"
        turn_credentials.ice_servers(turn.urls, secret)

``turnserver -c <rendered file>`` runs in the foreground (coturn's default)
with its config, log, pid file and SQLite database in a private temporary
directory that is removed on stop.  Start-up is bounded: the server counts as
started once it answers a STUN Binding request (RFC 8489 §6) on its listening
port; if it exits or stays silent past ``start_timeout_s``,
:class:`TurnServerError` carries the tail of its log.

This is not a process supervisor for production; deploy coturn with its own
service manager and a config from ``relaycast turn --print-config --production``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from .config import DEV_MAX_PORT, DEV_MIN_PORT, CoturnConfig
from .credentials import TurnError

logger = logging.getLogger(__name__)

TURNSERVER = "turnserver"

_MAGIC_COOKIE = 0x2112A442
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101


class TurnServerError(TurnError):
    """coturn is missing, did not start in time, or exited; the message has its log tail."""


def find_turnserver(binary: str = TURNSERVER) -> str | None:
    """The ``turnserver`` executable's path, or ``None`` when coturn is not installed."""
    return shutil.which(binary)


def free_port(host: str = "127.0.0.1", avoid: range | None = None) -> int:
    """A port free for both UDP and TCP on ``host`` (and outside ``avoid``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            if avoid is not None and port in avoid:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
            return port
    raise TurnServerError(f"no free UDP+TCP port on {host}")


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound for UDP or TCP (another server has it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return True
    return False


def stun_binding_request(transaction_id: bytes) -> bytes:
    """A 20-byte STUN Binding request without attributes (RFC 8489 §5)."""
    return struct.pack("!HHI12s", _BINDING_REQUEST, 0, _MAGIC_COOKIE, transaction_id)


class _StunProbe(asyncio.DatagramProtocol):
    def __init__(self, transaction_id: bytes) -> None:
        self.transaction_id = transaction_id
        self.answered = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) >= 20 and not self.answered.done():
            kind, _, cookie, tid = struct.unpack("!HHI12s", data[:20])
            if kind == _BINDING_SUCCESS and cookie == _MAGIC_COOKIE and tid == self.transaction_id:
                self.answered.set_result(True)


async def stun_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when ``host:port`` answers a STUN Binding request over UDP within ``timeout`` s."""
    loop = asyncio.get_running_loop()
    transaction_id = os.urandom(12)
    transport, probe = await loop.create_datagram_endpoint(
        lambda: _StunProbe(transaction_id), remote_addr=(host, port)
    )
    try:
        transport.sendto(stun_binding_request(transaction_id))
        await asyncio.wait_for(asyncio.shield(probe.answered), timeout)
        return True
    except (TimeoutError, OSError):
        return False
    finally:
        transport.close()


class TurnServer:
    """A coturn child process.

    :param secret: the shared secret (``static-auth-secret``, ≥ 16 characters).
    :param port: listening port; 0 picks a free one.
    :param production: render the production config (deny lists, no loopback
        peers) instead of the development one; ``listening_ips``/``relay_ips``
        default to 127.0.0.1 either way, so tests can run it on loopback.
    :param start_timeout_s: bound on start-up (first STUN answer).
    :param options: other :class:`~turn.config.CoturnConfig` fields.
    :raises TurnServerError: from :meth:`start` when coturn is absent or fails to start.
    """

    def __init__(
        self,
        secret: str,
        *,
        port: int = 0,
        production: bool = False,
        start_timeout_s: float = 15.0,
        binary: str = TURNSERVER,
        **options: Any,
    ) -> None:
        options.setdefault("listening_ips", ("127.0.0.1",))
        options.setdefault("relay_ips", ("127.0.0.1",))
        options.setdefault("min_port", DEV_MIN_PORT)
        options.setdefault("max_port", DEV_MAX_PORT)
        self.host = options["listening_ips"][0]
        self._requested_port = port
        # Validate now (port 0 is replaced at start): errors surface before any process starts.
        self.config = CoturnConfig(
            secret=secret, development=not production, port=port or 3478, **options
        )
        self.start_timeout_s = start_timeout_s
        self.binary = binary
        self.process: asyncio.subprocess.Process | None = None
        self.workdir: Path | None = None

    # ------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        return self.config.port

    @property
    def url(self) -> str:
        """``turn:HOST:PORT?transport=udp`` (RFC 7065)."""
        return f"turn:{self._url_host}:{self.port}?transport=udp"

    @property
    def urls(self) -> tuple[str, ...]:
        """The UDP and TCP ``turn:`` URLs."""
        return (self.url, f"turn:{self._url_host}:{self.port}?transport=tcp")

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "turnserver.log" if self.workdir else None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of coturn's log ("" before start)."""
        text = ""
        for path in (self.log_path, self.workdir / "stdout.log" if self.workdir else None):
            if path is not None and path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Render the config, start ``turnserver -c``, wait for its first STUN answer."""
        if self.process is not None:
            raise TurnServerError("this TurnServer is already started")
        binary = find_turnserver(self.binary)
        if binary is None:
            raise TurnServerError(f"{self.binary!r} not found: install coturn (apt-get install coturn)")
        relay = range(self.config.min_port, self.config.max_port + 1)
        port = self._requested_port or free_port(self.host, avoid=relay)
        if self._requested_port and port_in_use(self.host, port):
            raise TurnServerError(f"{self.host}:{port} is already in use (another TURN server?)")
        self.workdir = Path(tempfile.mkdtemp(prefix="relaycast-turn-"))
        self.config = replace(
            self.config,
            port=port,
            log_file=str(self.workdir / "turnserver.log"),
            pid_file=str(self.workdir / "turnserver.pid"),
            db_file=str(self.workdir / "turndb"),
        )
        conf = self.config.write(self.workdir / "turnserver.conf")
        stdout = open(self.workdir / "stdout.log", "wb")  # noqa: SIM115 - closed right after spawn
        try:
            self.process = await asyncio.create_subprocess_exec(
                binary, "-c", str(conf),
                stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            stdout.close()
        try:
            await self._wait_started()
        except BaseException:
            await self.stop()
            raise
        logger.info("coturn (%s) listening on %s:%d, pid %d",
                    "development" if self.config.development else "production",
                    self.host, port, self.process.pid)

    async def _wait_started(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        exited = asyncio.ensure_future(self.process.wait())
        try:
            while time.monotonic() < deadline:
                if not exited.done() and await stun_ping(self.host, self.port, timeout=0.3):
                    return
                await asyncio.wait({exited}, timeout=0.1)  # returns early when the process exits
                if exited.done():
                    raise TurnServerError(
                        f"turnserver exited with status {exited.result()}:\n{self.log_tail()}"
                    )
        finally:
            exited.cancel()
        raise TurnServerError(
            f"turnserver did not answer STUN on {self.host}:{self.port} within "
            f"{self.start_timeout_s} s:\n{self.log_tail()}"
        )

    async def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; removes the temporary directory."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                logger.warning("turnserver pid %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                await process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    async def wait(self) -> int:
        """Wait for coturn to exit (foreground use: ``relaycast turn``); its exit status."""
        if self.process is None:
            raise TurnServerError("not started")
        return await self.process.wait()

    async def __aenter__(self) -> TurnServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
