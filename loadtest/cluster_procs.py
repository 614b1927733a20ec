"""Local processes for the scale-out benchmarks: a private ``redis-server``, ``relaycast
serve`` instances in Redis mode and ``relaycast sfu`` nodes, all on 127.0.0.1.

Everything is started with this interpreter (``python -m relaycast.cli``) and stopped
with SIGTERM, then SIGKILL after a bound; logs go to files named by the caller.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REPO = Path(__file__).resolve().parents[1]

ONE_ADDRESS_LOAD: dict[str, str] = {
    "RELAYCAST_REQUEST_RATE": "100000",
    "RELAYCAST_REQUEST_BURST": "100000",
    "RELAYCAST_PENDING_SESSIONS_PER_ADDRESS": "100000",
    "RELAYCAST_CONNECTIONS_PER_ADDRESS": "100000",
    "RELAYCAST_SIO_CONNECTIONS_PER_ADDRESS": "100000",
    "RELAYCAST_ICE_SERVERS_RATE": "100000",
    "RELAYCAST_ICE_SERVERS_BURST": "100000",
}
"""Per-client-address limits lifted for a service under load-test traffic: every synthetic
client comes from 127.0.0.1, where real users each have their own address.  Nothing else
changes (forwarding, admission deadlines, the publisher reserve, chat limits stay as shipped)."""


def relaycast_command() -> list[str]:
    """``relaycast`` run by this interpreter (the console script may lack the checkout)."""
    return [sys.executable, "-m", "relaycast.cli"]


async def stop_process(proc: asyncio.subprocess.Process | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


class RedisProcess:
    """A private ``redis-server`` on a free 127.0.0.1 port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, timeout: float = 15.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = await asyncio.create_subprocess_exec(
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--protected-mode", "yes",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                pong = await asyncio.wait_for(reader.read(16), 1)
                writer.close()
                if pong.startswith(b"+PONG"):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout} s")

    async def stop(self) -> None:
        await stop_process(self.proc, 2)


class RelaycastProcess:
    """A ``relaycast`` child process (this interpreter, ``python -m relaycast.cli``): its
    stdout is read until a line says it is up, then discarded; stderr goes to ``log_path``."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def launch(self, args: list[str], env: dict[str, str], up: Callable[[str], bool],
                     timeout: float = 30.0, command: list[str] | None = None,
                     cwd: Path | None = None) -> str:
        """Start ``relaycast ARGS`` (or ``command ARGS``), in ``cwd`` if given, and return the
        first stdout line ``up`` accepts.

        :raises RuntimeError: the process exited or said nothing of the kind in ``timeout`` s.
        """
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *(command or relaycast_command()), *args, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
                cwd=cwd)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            text = line.decode(errors="replace").strip()
            if up(text):
                self._drain = asyncio.create_task(self._discard())
                return text

    async def _discard(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    async def kill(self) -> None:
        """``kill -9``: no drain, no goodbye."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        await stop_process(self.proc, timeout)
        if self._drain is not None:
            self._drain.cancel()


def listening(line: str) -> bool:
    """``relaycast serve``'s "listening" line (the URL is its last word)."""
    return line.startswith("relaycast listening on ")


class ServeProcess(RelaycastProcess):
    """``relaycast serve --no-embedded-sfu`` in Redis mode; ``url`` once it listens."""

    def __init__(self, label: str, redis_url: str, secret: str, log_path: Path, *, room: str = "demo",
                 env: dict[str, str] | None = None) -> None:
        super().__init__(f"relaycast serve ({label})", log_path)
        self.label = label
        self.redis_url, self.secret, self.room, self.extra_env = redis_url, secret, room, env or {}
        self.url = ""

    async def start(self, timeout: float = 30.0) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, RELAYCAST_NODE_SECRET=self.secret, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        for var in ("REDIS_URL", "RELAYCAST_REDIS_URL", "RELAYCAST_DEMO_ROOM"):
            env.pop(var, None)
        env.update(ONE_ADDRESS_LOAD)
        # Two instances on one machine: RTMP and SRT on free ports.
        env["RELAYCAST_RTMP_PORT"] = env["RELAYCAST_SRT_PORT"] = "0"
        env.update(self.extra_env)
        args = ["--log-level", "warning", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
                "--room", self.room, "--no-embedded-sfu", "--redis-url", self.redis_url]
        self.url = (await self.launch(args, env, listening, timeout)).split()[-1]


class SfuNodeProcess(RelaycastProcess):
    """``relaycast sfu --node-id ID --ice-gather 127.0.0.1`` registered with ``signaling``
    (comma-separated URLs); ``pid`` for CPU readings, `kill` for failover runs."""

    def __init__(self, node_id: str, signaling: str, secret: str, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(f"SFU node {node_id}", log_path)
        self.node_id, self.signaling, self.secret, self.extra_env = node_id, signaling, secret, env or {}

    async def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ, RELAYCAST_NODE_SECRET=self.secret, PYTHONUNBUFFERED="1", **self.extra_env)
        args = ["--log-level", "warning", "sfu", "--signaling", self.signaling, "--node-id", self.node_id,
                "--ice-gather", "127.0.0.1"]
        await self.launch(args, env, lambda line: "registered with" in line, timeout)
