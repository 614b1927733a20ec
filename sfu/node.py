"""SFU node ↔ signaling link over Socket.IO (namespace ``/sfu``).

The node connects to signaling as a Socket.IO client on :data:`sfu.protocol.NAMESPACE`,
authenticates with its node id and the shared node secret, and answers RPC events with
acks.  Payloads are the dataclasses of :mod:`sfu.protocol` (their ``to_wire`` /
``from_wire`` JSON objects); every failed RPC acks :class:`~sfu.protocol.RpcError`
``{"error": {status, title, detail}}``:

=================  =======================================================  ====================================
RPC                request                                                  ack
=================  =======================================================  ====================================
``publish``        ``OpenSession {room, session_id, sdp, identity}``        ``Answer {sdp}``
``subscribe``      ``OpenSession {room, session_id, sdp, identity}``        ``Answer {sdp}``
``trickle``        ``Trickle {session_id, candidates, end_of_candidates}``  ``{ok}``
``close``          ``CloseSession {session_id}``                            ``{ok}``
``pipe_offer``     ``PipeOffer {room, session_id, identity}``               ``Answer {sdp}`` (the offer)
``pipe_answer``    ``PipeAnswer {session_id, sdp}``                         ``{ok}``
``stats``          ``{}`` or ``{room}``                                     the worker's statistics (one room's)
``ice_restart``    ``IceRestart {session_id, ice_ufrag, ice_pwd,            ``IceRestarted {ice_ufrag, ice_pwd,
                   candidates, end_of_candidates}``                         candidates, mids, media}``
``video_size``     ``VideoSize {session_id, width, height}``                ``{ok}``
``ingest_advice``  ``IngestAdvice {session_id, advice?,                     ``{ok}``
                   dropped_frames?}`` (at least one of the two)
=================  =======================================================  ====================================

A pipe is opened by signaling in three RPCs: ``pipe_offer`` on the origin node,
``publish`` with a ``pipe`` identity on the edge node (its answer), ``pipe_answer`` on the
origin (:mod:`signaling.cascade`).

Chat (docs/chat.md): the node asks signaling ``chat_send`` / ``chat_history``
(:class:`~sfu.protocol.NodeCall`, acknowledged) for its participants' data-channel
messages, and signaling sends every chat event of every room as ``chat_event``
(:data:`~sfu.protocol.CHAT_EVENT`), which the node hands to the room's data channels.

The node emits ``session_closed`` (:class:`~sfu.protocol.SessionClosed`, with the session's
kind), ``session_connected`` (:class:`~sfu.protocol.SessionConnected`: ICE and DTLS up for
the first time; signaling counts a session as pending until then), ``room_state``
(:class:`~sfu.protocol.RoomState`) and ``load`` (every second, and at
once after connecting or when draining starts).  ``load`` is the node's heartbeat: the
worker's load plus ``room_states`` (``{room: {live, viewers}}``), so signaling can
rebuild where rooms live after a signaling or Redis restart.  The embedded default
uses this same link over loopback, so running SFU nodes as separate processes is
configuration, not a rewrite.

Drain (`SignalingLink.drain`, on SIGTERM for ``relaycast sfu``): the node reports
``draining: true`` at once, refuses new sessions (503) and lets existing ones run until
they end or a deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import socketio

from .protocol import CHAT_EVENT, NAMESPACE, SOCKETIO_PATH, Identity, NodeCall, NodeEvent, Rpc
from .worker import Worker

logger = logging.getLogger(__name__)

CHAT_CALL_TIMEOUT_S = 10.0
"""How long a data-channel message waits for signaling's verdict before ``unavailable``."""
CHAT_SEND_DEADLINE_S = 4.0
"""A ``chat_send`` signaling starts handling later than this after it was sent is refused
(``unavailable``) rather than numbered: well inside :data:`CHAT_CALL_TIMEOUT_S`, so a
sender told "not sent" was really not sent."""


class LinkChatUpstream:
    """:class:`sfu.chat.ChatUpstream` over the signaling link (``chat_send``, ``chat_history``)."""

    def __init__(self, link: SignalingLink) -> None:
        self.link = link

    async def submit(self, room: str, participant: Identity, text: str) -> dict[str, Any]:
        deadline_ms = int((time.time() + CHAT_SEND_DEADLINE_S) * 1000)
        ack = await self.link.call(NodeCall.CHAT_SEND, {"room": room, "participant": participant.to_dict(),
                                                        "text": text, "deadline": deadline_ms})
        return ack if isinstance(ack, dict) else {"error": "unavailable", "detail": "no answer"}

    async def history(self, room: str) -> list[dict[str, Any]]:
        ack = await self.link.call(NodeCall.CHAT_HISTORY, {"room": room})
        if not isinstance(ack, dict) or not isinstance(ack.get("messages"), list):
            raise ConnectionError(f"chat history of {room} unavailable: {ack!r}"[:200])
        return ack["messages"]



class SignalingLink:
    """Keeps one worker registered with signaling.

    :param url: signaling base URL, e.g. ``http://127.0.0.1:8080``; several separated by
        commas (Redis mode: instances sharing one Redis) are tried in turn, so the node
        moves to another instance when its instance goes away.
    :param node_id: this node's id.
    :param secret: the shared node secret (never logged).
    """

    def __init__(self, worker: Worker, url: str, node_id: str, secret: str, address: str = "") -> None:
        self.worker = worker
        self.urls = [u.strip() for u in url.split(",") if u.strip()]
        self.url = self.urls[0]
        self.node_id = node_id
        self._secret = secret
        self.address = address
        self.connected = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Future[None] | None = None
        self._stopping = False
        self.sio = self._new_client()
        worker.set_emitter(self._emit)
        worker.chat_upstream = LinkChatUpstream(self)

    def _new_client(self) -> socketio.AsyncClient:
        # Reconnection is ours (`_reconnect`): python-socketio does not reconnect after a
        # server-side disconnect (signaling shutting down, or dropping a silent node).
        sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
        self._register_handlers(sio)
        return sio

    def _register_handlers(self, sio: socketio.AsyncClient) -> None:
        worker = self.worker
        handlers = {
            Rpc.PUBLISH: worker.publish,
            Rpc.SUBSCRIBE: worker.subscribe,
            Rpc.TRICKLE: worker.trickle,
            Rpc.CLOSE: worker.close_session,
            Rpc.PIPE_OFFER: worker.pipe_offer,
            Rpc.PIPE_ANSWER: worker.pipe_answer,
            Rpc.STATS: worker.stats,
            Rpc.ICE_RESTART: worker.ice_restart,
            Rpc.VIDEO_SIZE: worker.video_size,
            Rpc.INGEST_ADVICE: worker.ingest_advice,
        }
        for rpc, handler in handlers.items():
            sio.on(str(rpc), handler, namespace=NAMESPACE)
        sio.on(CHAT_EVENT, worker.deliver_chat, namespace=NAMESPACE)

        async def on_connect() -> None:
            logger.info("SFU node %s registered with signaling %s", self.node_id, self.url)
            self.connected.set()
            # Re-assert this node's rooms at once (signaling may have restarted).
            task = asyncio.ensure_future(self.report_now())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

        async def on_disconnect(reason: Any = None, *_: Any) -> None:
            if sio is not self.sio:
                return  # a replaced client finishing its close
            self.connected.clear()
            if self._stopping:
                return
            logger.warning("SFU node %s lost signaling (%s); reconnecting", self.node_id, reason)
            if self._rejoin is None or self._rejoin.done():
                self._rejoin = asyncio.ensure_future(self._reconnect())

        sio.on("connect", on_connect, namespace=NAMESPACE)
        sio.on("disconnect", on_disconnect, namespace=NAMESPACE)

    async def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self.sio.connected:
            try:
                await self.sio.emit(event, data, namespace=NAMESPACE)
            except socketio.exceptions.BadNamespaceError:
                pass

    async def call(self, event: str, data: dict[str, Any]) -> Any:
        """One request to signaling; its ack.

        :raises ConnectionError: not connected, or no ack within :data:`CHAT_CALL_TIMEOUT_S`."""
        if not self.sio.connected:
            raise ConnectionError("not connected to signaling")
        try:
            return await self.sio.call(event, data, namespace=NAMESPACE, timeout=CHAT_CALL_TIMEOUT_S)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError) as exc:
            raise ConnectionError(f"{event}: {type(exc).__name__}") from exc

    def _auth(self) -> dict[str, str]:
        return {"node_id": self.node_id, "secret": self._secret, "address": self.address,
                "role": self.worker.config.role}

    async def _connect_next(self) -> None:
        """One attempt, on the next signaling URL after a failure."""
        try:
            await self.sio.connect(self.url, namespaces=[NAMESPACE], auth=self._auth(),
                                   socketio_path=SOCKETIO_PATH,
                                   transports=["websocket"], wait_timeout=5)
        except BaseException:
            self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
            raise

    async def _reconnect(self) -> None:
        """Reconnect until connected: every URL once per round, rounds 0.5 s apart, then
        doubling up to 5 s."""
        delay, tried = 0.5, 0
        while not self._stopping and not self.sio.connected:
            if tried % len(self.urls) == 0:
                await asyncio.sleep(delay)  # (also lets the client finish closing)
                delay = min(delay * 2, 5.0)
            tried += 1
            try:
                await self._connect_next()
            except socketio.exceptions.ConnectionError:
                pass
            except ValueError:
                # The old connection is still closing (its close handshake can wait on a
                # signaling instance that is shutting down): use a fresh client.
                old, self.sio = self.sio, self._new_client()
                task = asyncio.ensure_future(old.disconnect())
                task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def start(self, timeout: float = 10.0) -> None:
        """Connect (retrying until ``timeout``) and start load reports."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self._connect_next()
                break
            except socketio.exceptions.ConnectionError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise ConnectionError(f"cannot register with signaling at {self.url}: {exc}") from exc
                await asyncio.sleep(0.2)
        await asyncio.wait_for(self.connected.wait(), timeout)
        self._load_task = asyncio.create_task(self._report_load(), name="sfu-load")

    def load(self) -> dict[str, Any]:
        """The load report: the worker's load and each room's ``{live, viewers}``."""
        states = {name: router.state() for name, router in self.worker.routers.items()}
        return {**self.worker.load(), "room_states": states}

    async def report_now(self) -> None:
        await self._emit(NodeEvent.LOAD, self.load())

    async def _report_load(self) -> None:
        try:
            while True:
                await self.report_now()
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            pass

    async def drain(self, deadline_s: float) -> bool:
        """Stop taking sessions, tell signaling now, wait for the sessions to end.

        :returns: whether every session ended before ``deadline_s``.
        """
        self.worker.draining = True
        await self.report_now()
        return await self.worker.drain(deadline_s)

    async def stop(self) -> None:
        self._stopping = True
        if self._rejoin is not None:
            self._rejoin.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._rejoin
        if self._load_task is not None:
            self._load_task.cancel()
            try:
                await self._load_task
            except asyncio.CancelledError:
                pass
        self.worker.set_emitter(None)
        await self.sio.disconnect()
