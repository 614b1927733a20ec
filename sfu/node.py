"""SFU node ↔ signaling link over Socket.IO (namespace ``/sfu``).

The node connects to signaling as a Socket.IO client, authenticates with its
node id and the shared node secret, and answers RPC events with acks:

=============  ==========================================  =========================
event          request                                     ack
=============  ==========================================  =========================
``publish``    ``{room, session_id, sdp, identity}``       ``{sdp}`` or ``{error}``
``subscribe``  ``{room, session_id, sdp, identity}``       ``{sdp}`` or ``{error}``
``close``      ``{session_id}``                            ``{ok}`` or ``{error}``
``trickle``    ``{session_id, candidates, end_of_candidates}``  ``{ok}`` or ``{error}``
``stats``      ``{}``                                      worker stats
=============  ==========================================  =========================

It emits ``session_closed``, ``room_state`` and ``load`` (every second).  The
embedded default uses this same link over loopback, so running SFU nodes as
separate processes is configuration, not a rewrite.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio

from .worker import Worker

logger = logging.getLogger(__name__)

NAMESPACE = "/sfu"


class SignalingLink:
    """Keeps one worker registered with signaling.

    :param url: signaling base URL, e.g. ``http://127.0.0.1:8080``.
    :param node_id: this node's id.
    :param secret: the shared node secret (never logged).
    """

    def __init__(self, worker: Worker, url: str, node_id: str, secret: str, address: str = "") -> None:
        self.worker = worker
        self.url = url
        self.node_id = node_id
        self._secret = secret
        self.address = address
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.5,
                                        reconnection_delay_max=5, logger=False, engineio_logger=False)
        self.connected = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None
        self._register_handlers()
        worker.set_emitter(self._emit)

    def _register_handlers(self) -> None:
        sio, worker = self.sio, self.worker
        sio.on("publish", worker.publish, namespace=NAMESPACE)
        sio.on("subscribe", worker.subscribe, namespace=NAMESPACE)
        sio.on("close", worker.close_session, namespace=NAMESPACE)
        sio.on("trickle", worker.trickle, namespace=NAMESPACE)
        sio.on("stats", worker.stats, namespace=NAMESPACE)

        async def on_connect() -> None:
            logger.info("SFU node %s registered with signaling %s", self.node_id, self.url)
            self.connected.set()

        async def on_disconnect(*_: Any) -> None:
            self.connected.clear()
            logger.warning("SFU node %s lost signaling; reconnecting", self.node_id)

        sio.on("connect", on_connect, namespace=NAMESPACE)
        sio.on("disconnect", on_disconnect, namespace=NAMESPACE)

    async def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self.sio.connected:
            try:
                await self.sio.emit(event, data, namespace=NAMESPACE)
            except socketio.exceptions.BadNamespaceError:
                pass

    async def start(self, timeout: float = 10.0) -> None:
        """Connect (retrying until ``timeout``) and start load reports."""
        auth = {"node_id": self.node_id, "secret": self._secret, "address": self.address}
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.sio.connect(self.url, namespaces=[NAMESPACE], auth=auth,
                                       transports=["websocket"], wait_timeout=5)
                break
            except socketio.exceptions.ConnectionError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise ConnectionError(f"cannot register with signaling at {self.url}: {exc}") from exc
                await asyncio.sleep(0.2)
        await asyncio.wait_for(self.connected.wait(), timeout)
        self._load_task = asyncio.create_task(self._report_load(), name="sfu-load")

    async def _report_load(self) -> None:
        try:
            while True:
                await self._emit("load", self.worker.load())
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            pass

    async def stop(self) -> None:
        if self._load_task is not None:
            self._load_task.cancel()
            try:
                await self._load_task
            except asyncio.CancelledError:
                pass
        self.worker.set_emitter(None)
        await self.sio.disconnect()
