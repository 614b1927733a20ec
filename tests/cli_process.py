"""A ``python -m relaycast.cli ...`` child process for tests: stdout lines collected
(``wait_line``), stderr in a temporary log file shown when it misbehaves.

Each child leads its own process group (``start_new_session``): `CliProcess.close`
SIGKILLs the whole group, and `kill_running` (sync, no event loop needed: a fixture's last
resort, and run at exit) does so for every child still running, so a test that fails or
hangs never leaves a node behind.

(``loadtest.cluster_procs.RelaycastProcess`` is the benchmarks' counterpart: it reads
stdout only until the process is up, then discards it.)"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Collection, Iterator

from tests.polling import wait_for

logger = logging.getLogger(__name__)

_running: set[CliProcess] = set()
"""Every launched child not yet `CliProcess.close`d."""


def kill_running(exclude: Collection[CliProcess] = ()) -> list[int]:
    """SIGKILL the process group of every `CliProcess` still running (not yet reaped) but
    ``exclude``; synchronous, so it works whatever state the event loop is in.  The pids
    killed."""
    return [child.pid for child in list(_running) if child not in exclude and child.kill()]


@contextlib.contextmanager
def killing_leftovers() -> Iterator[list[int]]:
    """On exit, SIGKILL (process group) every child launched within that is still running;
    the list yielded gets their pids."""
    before = set(_running)
    killed: list[int] = []
    try:
        yield killed
    finally:
        killed.extend(kill_running(exclude=before))


atexit.register(kill_running)


class CliProcess:
    def __init__(self, name: str, **env: str) -> None:
        self.env = {**os.environ, "RELAYCAST_LOG_LEVEL": "info", **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"relaycast-{name}-", suffix=".log", delete=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def launch(self, *args: str) -> None:
        """Start ``python -m relaycast.cli *args``."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaycast.cli", *args,
            stdout=asyncio.subprocess.PIPE, stderr=self._log, env=self.env, start_new_session=True,
        )
        _running.add(self)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_line(self, text: str, timeout: float) -> str:
        """The first stdout line containing ``text``, once printed.

        :raises WaitTimeout: no such line within ``timeout`` s (the log attached).
        :raises AssertionError: the process exited before printing it.
        """

        def printed() -> str | None:
            line = next((line for line in self.lines if text in line), None)
            exited = self.proc is not None and self.proc.returncode is not None
            if line is None and exited and self._reader is not None and self._reader.done():
                raise AssertionError(f"exited ({self.proc.returncode}) before {text!r}:\n{self.log()}")
            return line

        return await wait_for(printed, timeout, lambda: f"the process to print {text!r}:\n{self.log()}",
                              wake=self._changed)

    def log(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return "\n".join(self.lines) + "\n--- log ---\n" + f.read()[-6000:]

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> bool:
        """SIGKILL the child's process group, if the child was not reaped yet (after that
        its pid, the group's id, may belong to another process)."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        except PermissionError:  # should not happen for our own child; kill it alone then
            self.proc.kill()
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """SIGKILL the child and its process group; wait (``timeout`` s at most) for it to
        be reaped and its stdout to end.  Never hangs: a child that does not go is logged."""
        self.kill()
        try:
            if self.proc is not None:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            if self._reader is not None:
                async with asyncio.timeout(timeout):
                    await asyncio.gather(self._reader, return_exceptions=True)
        except TimeoutError:
            logger.warning("%s (pid %s) did not end within %g s of SIGKILL",
                           self.__class__.__name__, self.proc and self.proc.pid, timeout)
            if self._reader is not None:
                self._reader.cancel()
        finally:
            _running.discard(self)
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
