"""A real ``relaycast serve`` process for tests (127.0.0.1, a free port).

``await ServeProcess(*args, **env).start()`` returns once it printed its URL (``.url``);
``stop()`` sends SIGTERM and returns the exit status.
"""

from __future__ import annotations

import re
import signal

from tests.cli_process import CliProcess
from tests.services import STREAM_KEY


class ServeProcess(CliProcess):
    def __init__(self, *args: str, **env: str) -> None:
        # RTMP on any free port: the ingest process runs as in production, and several serve
        # processes (or one beside a real service) never contend for 1935.
        super().__init__("serve", **{"RELAYCAST_ICE_GATHER": "127.0.0.1", "RELAYCAST_RTMP_PORT": "0",
                                     "RELAYCAST_SRT_PORT": "0", **env})
        self.args = args
        self.url = ""

    async def start(self, timeout: float = 60.0) -> ServeProcess:
        await self.launch("serve", "--host", "127.0.0.1", "--port", "0", "--stream-key", STREAM_KEY,
                          *self.args)
        line = await self.wait_line("relaycast listening on", timeout)
        match = re.search(r"(http://\S+)", line)
        assert match, line
        self.url = match.group(1)
        return self

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout``); the exit status.

        :raises AssertionError: it did not stop within ``timeout`` s.
        """
        assert self.proc is not None
        if self.proc.returncode is None:
            self.send(signal.SIGTERM)
            try:
                await self.wait(timeout)
            except TimeoutError:
                await self.close()
                raise AssertionError(f"serve did not stop in {timeout:g} s:\n{self.log()}") from None
        return self.proc.returncode
