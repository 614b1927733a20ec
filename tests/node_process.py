"""A real ``relaycast sfu`` node process for tests (ICE on 127.0.0.1).

``await NodeProcess(url, node_id, secret).start()`` returns once the node printed that it
registered; its stdout lines are collected (``wait_line``), its log goes to a temporary
file shown when it misbehaves.
"""

from __future__ import annotations

from tests.cli_process import CliProcess


class NodeProcess(CliProcess):
    def __init__(self, signaling_url: str, node_id: str, secret: str, **env: str) -> None:
        super().__init__(node_id, RELAYCAST_NODE_SECRET=secret, **env)
        self.signaling_url = signaling_url
        self.node_id = node_id

    async def start(self, timeout: float = 60.0) -> NodeProcess:
        await self.launch("sfu", "--signaling", self.signaling_url, "--node-id", self.node_id,
                          "--ice-gather", "127.0.0.1")
        await self.wait_line("registered with", timeout)
        return self
