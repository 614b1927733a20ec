"""``relaycast serve --workers N|auto``: one SFU Worker process per core on one machine.

A Python process forwards on one core, so ``relaycast serve`` with ``N >= 2`` runs its
media plane as ``N`` child processes (mediasoup's one Worker per core), still without
Redis.  Each child is an ordinary SFU node, ``relaycast sfu --signaling
http://127.0.0.1:PORT --node-id <node_id>-w<i>``, registered over the ``/sfu`` Socket.IO
link (:mod:`sfu.node`) with the serve process on loopback:

* the node secret is the serve process's (``RELAYCAST_NODE_SECRET``, else generated at
  start-up and handed over in the child's environment, never on its command line);
* the SFU settings are the serve process's (:meth:`sfu.config.SfuConfig.to_env`: ICE
  addresses, session limits, pipe linger...), with role ``media``;
* signaling places rooms on the least-loaded worker (`signaling.nodes.least_loaded`) and
  a room's viewers beyond ``viewers_per_node`` on another worker, fed by a node pipe
  (:mod:`signaling.cascade`); in workers mode ``RELAYCAST_VIEWERS_PER_NODE`` defaults to
  `viewers_per_worker`.

`Supervisor` keeps the children running: a child that exits is started again after a
back-off (`RESTART_BACKOFF_S`, doubling up to `RESTART_BACKOFF_MAX_S`, at most
`RESTARTS_PER_MINUTE` starts a minute), with a log line each time; signaling handles the
lost node as any failover (its sessions are closed, clients POST again).  Children run
in their own session (:func:`relaycast.processes.spawn`), so a terminal's Ctrl-C reaches
only the serve process, which stops them (SIGTERM, `STOP_TIMEOUT_S`, SIGKILL); a child
also dies with a SIGKILLed parent (``relaycast sfu --parent-pid``,
:func:`relaycast.processes.die_with_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from common.config import ConfigError
from sfu.config import SfuConfig

from .processes import Process, spawn, terminate

logger = logging.getLogger(__name__)

MAX_WORKERS = 256
RESTART_BACKOFF_S = 0.5
"""Wait before restarting a child that exited; doubles for each exit in a row."""
RESTART_BACKOFF_MAX_S = 8.0
STABLE_S = 60.0
"""A child that ran this long resets the back-off."""
RESTARTS_PER_MINUTE = 5
"""Starts of one child within 60 s beyond which the next start waits for the window."""
STOP_TIMEOUT_S = 5.0
"""Seconds the children get to exit after SIGTERM before SIGKILL."""


class WorkerError(Exception):
    """The SFU worker processes could not be started (the message says which and why)."""


def cpus_available() -> int:
    """CPUs this process may run on: its affinity mask (``os.sched_getaffinity``) where the
    platform has one, else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_workers(cpus: int | None = None) -> int:
    """``auto``: one worker per CPU but one, which signaling (HTTP, Socket.IO, placement)
    and the LL-HLS node keep: ``max(1, cpus - 1)`` — so 1 (one process, no children) on a
    2-core machine, 15 on 16 cores."""
    return max(1, (cpus_available() if cpus is None else cpus) - 1)


def parse_workers(text: str, name: str = "RELAYCAST_WORKERS", cpus: int | None = None) -> int:
    """``"auto"`` (`auto_workers`) or a whole number 1..`MAX_WORKERS`.

    :raises ConfigError: naming ``name``.
    """
    text = text.strip().lower()
    if text == "auto":
        return auto_workers(cpus)
    try:
        count = int(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is neither a whole number nor auto") from None
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"{name}: {count} is outside [1, {MAX_WORKERS}]")
    return count


@dataclass(frozen=True)
class WorkersConfig:
    """How many SFU worker processes ``relaycast serve`` runs.

    :ivar count: ``RELAYCAST_WORKERS`` / ``--workers`` (default ``auto``, `auto_workers`);
        1 = the SFU Worker runs inside the serve process (no children).
    """

    count: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, workers: str | None = None,
                 *, embedded_sfu: bool = True) -> WorkersConfig:
        """``workers`` (the flag) or ``RELAYCAST_WORKERS`` or ``auto``.  Without an embedded
        SFU (``--no-embedded-sfu``: signaling only) the count is 1 and ``auto`` is ignored.

        :raises ConfigError: a bad value, or an explicit count >= 2 with no embedded SFU.
        """
        env = os.environ if env is None else env
        name = "--workers" if workers is not None else "RELAYCAST_WORKERS"
        text = workers if workers is not None else env.get("RELAYCAST_WORKERS") or "auto"
        if not embedded_sfu:
            if text.strip().lower() != "auto" and parse_workers(text, name) > 1:
                raise ConfigError(f"{name}: SFU worker processes need the embedded SFU "
                                  "(drop --no-embedded-sfu / RELAYCAST_EMBEDDED_SFU=0)")
            return cls(1)
        return cls(parse_workers(text, name))


def viewers_per_worker(sfu: SfuConfig) -> int:
    """Workers mode's default ``viewers_per_node``: half of what one worker admits as
    viewers, ``(max_sessions - reserved_for_publishers) // 2`` (245 with the default 500
    sessions) — below the ~368 viewers of a 1.5 Mbit/s 720p30 stream one core forwards
    (docs/benchmarks.md), leaving the worker CPU for its other rooms and for joins."""
    return max(1, (sfu.max_sessions - sfu.reserved_for_publishers) // 2)


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child: its ``name`` (the SFU node id), argv and environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(repr=False)


def sfu_worker_specs(count: int, signaling_url: str, secret: str, sfu: SfuConfig,
                     *, log_level: str = "info", env: Mapping[str, str] | None = None) -> list[ChildSpec]:
    """The ``count`` SFU worker children of a serve process at ``signaling_url``: node ids
    ``<sfu.node_id>-w1`` .. ``-w<count>``, role ``media``, ``sfu``'s settings, ``secret``
    in ``RELAYCAST_NODE_SECRET``, no drain on SIGTERM (``RELAYCAST_DRAIN_S=0``: the
    whole service is stopping)."""
    base = {k: v for k, v in (os.environ if env is None else env).items() if k != "RELAYCAST_WORKERS"}
    specs = []
    for i in range(1, count + 1):
        node_id = f"{sfu.node_id}-w{i}"
        media = replace(sfu, node_id=node_id, role="media")
        child_env = {**base, **media.to_env(), "RELAYCAST_NODE_SECRET": secret,
                     "RELAYCAST_DRAIN_S": "0", "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "relaycast.cli", "--log-level", log_level, "sfu",
                "--signaling", signaling_url, "--node-id", node_id, "--parent-pid", str(os.getpid())]
        specs.append(ChildSpec(node_id, argv, child_env))
    return specs


@dataclass
class Child:
    """A supervised child: its spec, the running process, and when it was (re)started."""

    spec: ChildSpec
    proc: Process | None = None
    started_at: float = 0.0
    starts: deque[float] = field(default_factory=deque)
    """``time.monotonic()`` of the starts within the last 60 s."""
    backoff_s: float = RESTART_BACKOFF_S

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None


class Supervisor:
    """Runs ``specs`` as children and restarts any that exits, until `stop`.

    :param restarts_per_minute: starts of one child within 60 s beyond which the next
        start waits until the oldest leaves the window.
    :param backoff_s/backoff_max_s: wait before a restart, doubling per exit in a row,
        reset once a child ran `STABLE_S`.
    :param on_start: called with each child after each (re)start.
    """

    def __init__(self, specs: Sequence[ChildSpec], *, restarts_per_minute: int = RESTARTS_PER_MINUTE,
                 backoff_s: float = RESTART_BACKOFF_S, backoff_max_s: float = RESTART_BACKOFF_MAX_S,
                 stop_timeout_s: float = STOP_TIMEOUT_S, on_start: Callable[[Child], None] | None = None) -> None:
        self.children = {s.name: Child(s, backoff_s=backoff_s) for s in specs}
        self.restarts_per_minute = restarts_per_minute
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.stop_timeout_s = stop_timeout_s
        self.on_start = on_start
        self.restarts = 0
        """Restarts so far (all children)."""
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._changed = asyncio.Event()

    def pids(self) -> dict[str, int]:
        """Running children: name → pid."""
        return {name: c.pid for name, c in self.children.items() if c.pid is not None}

    async def start(self) -> None:
        """Start every child.  :raises WorkerError: one cannot be started at all."""
        for child in self.children.values():
            await self._start(child)
        self._keepers = [asyncio.create_task(self._keep(c), name=f"keep-{c.spec.name}")
                         for c in self.children.values()]

    async def _start(self, child: Child) -> None:
        try:
            child.proc = await spawn(child.spec.argv, child.spec.env)
        except OSError as exc:
            raise WorkerError(f"cannot start SFU worker {child.spec.name}: {exc}") from None
        now = time.monotonic()
        child.started_at = now
        child.starts.append(now)
        self._changed.set()
        if self.on_start is not None:
            self.on_start(child)

    async def _keep(self, child: Child) -> None:
        while True:
            assert child.proc is not None
            status = await child.proc.wait()
            self._changed.set()
            if self._stopping:
                return
            now = time.monotonic()
            if now - child.started_at >= STABLE_S:
                child.backoff_s = self.backoff_s
            while child.starts and now - child.starts[0] >= 60.0:
                child.starts.popleft()
            delay = child.backoff_s
            window = ""
            if len(child.starts) >= self.restarts_per_minute:
                delay = max(delay, child.starts[0] + 60.0 - now)
                window = f", {len(child.starts)} starts in the last 60 s"
            logger.warning("SFU worker %s (pid %d) exited with status %s; restarting in %.1f s%s",
                           child.spec.name, child.proc.pid, status, delay, window)
            child.backoff_s = min(child.backoff_s * 2, self.backoff_max_s)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._start(child)
            except WorkerError as exc:
                logger.error("%s; retrying", exc)
                continue
            self.restarts += 1
            logger.warning("SFU worker %s restarted (pid %d)", child.spec.name, child.proc.pid)

    async def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait (polling every 0.1 s, and at every child start or exit) until ``ready()``.

        :raises WorkerError: not within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"timed out after {timeout_s:g} s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(0.1, left))

    async def stop(self) -> None:
        """Stop every child: SIGTERM, ``stop_timeout_s``, SIGKILL to its process group."""
        self._stopping = True
        for task in self._keepers:  # no restart from now on
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        self._keepers = []
        procs = [c.proc for c in self.children.values() if c.proc is not None]

        def killing(proc: Process) -> None:
            logger.warning("SFU worker pid %d did not stop in %g s: killing it", proc.pid, self.stop_timeout_s)

        await terminate(procs, self.stop_timeout_s, killing)
