"""A real ``relaycast sfu`` node process for tests (ICE on 127.0.0.1).

``await NodeProcess(url, node_id, secret).start()`` returns once the node printed that it
registered; its stdout lines are collected (``wait_line``), its log goes to a temporary
file shown when it misbehaves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile

from tests.polling import wait_for


class NodeProcess:
    def __init__(self, signaling_url: str, node_id: str, secret: str, **env: str) -> None:
        self.signaling_url = signaling_url
        self.node_id = node_id
        self.env = {**os.environ, "RELAYCAST_NODE_SECRET": secret, "RELAYCAST_LOG_LEVEL": "info", **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"relaycast-{node_id}-", suffix=".log", delete=False)

    async def start(self, timeout: float = 60.0) -> NodeProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaycast.cli", "sfu", "--signaling", self.signaling_url,
            "--node-id", self.node_id, "--ice-gather", "127.0.0.1",
            stdout=asyncio.subprocess.PIPE, stderr=self._log, env=self.env,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_line("registered with", timeout)
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_line(self, text: str, timeout: float) -> str:
        """The first stdout line containing ``text``, once printed.

        :raises WaitTimeout: no such line within ``timeout`` s (the node's log attached).
        :raises AssertionError: the node exited before printing it.
        """

        def printed() -> str | None:
            line = next((line for line in self.lines if text in line), None)
            exited = self.proc is not None and self.proc.returncode is not None
            if line is None and exited and self._reader is not None and self._reader.done():
                raise AssertionError(f"node exited ({self.proc.returncode}) before {text!r}:\n{self.log()}")
            return line

        return await wait_for(printed, timeout, lambda: f"the node to print {text!r}:\n{self.log()}",
                              wake=self._changed)

    def log(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return "\n".join(self.lines) + "\n--- log ---\n" + f.read()[-4000:]

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
        os.unlink(self._log.name)
