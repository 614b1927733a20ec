"""A ``python -m relaycast.cli ...`` child process for tests: stdout lines collected
(``wait_line``), stderr in a temporary log file shown when it misbehaves.

(``loadtest.cluster_procs.RelaycastProcess`` is the benchmarks' counterpart: it reads
stdout only until the process is up, then discards it.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile

from tests.polling import wait_for


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
            stdout=asyncio.subprocess.PIPE, stderr=self._log, env=self.env,
        )
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

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)
