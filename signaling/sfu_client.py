"""SfuClient: signaling's typed RPC client for SFU nodes (the other end of :mod:`sfu.protocol`).

Every method sends one :class:`~sfu.protocol.Rpc` to a node over the ``/sfu`` namespace and
returns the typed result, or raises :class:`RpcFailed` carrying the node's (or the
transport's) :class:`~sfu.protocol.RpcError`: 503 node unreachable, 504 no ack within the
timeout, 502 a reply of the wrong shape, else what the node answered (400, 404, 409, 422,
503...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sfu.protocol import (
    Answer,
    CloseSession,
    IceRestart,
    IceRestarted,
    IngestAdvice,
    OpenSession,
    PipeAnswer,
    PipeOffer,
    ProtocolError,
    Rpc,
    RpcError,
    Trickle,
    VideoSize,
)

if TYPE_CHECKING:
    from .nodes import SfuNamespace, SfuNode


class RpcFailed(Exception):
    """An RPC to an SFU node failed; :attr:`error` says how (its ``status`` is the HTTP one)."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(f"{error.status} {error.title}: {error.detail}")
        self.error = error


class SfuClient:
    """Typed RPCs to SFU nodes.

    :param namespace: the ``/sfu`` Socket.IO namespace the nodes are connected to (in Redis
        mode a node connected to another signaling instance is reached through it too).
    :param timeout_s: how long to wait for each ack, s.
    """

    def __init__(self, namespace: SfuNamespace, timeout_s: float) -> None:
        self.namespace = namespace
        self.timeout_s = timeout_s

    async def publish(self, node: SfuNode, request: OpenSession) -> Answer:
        """WHIP ingest (or the edge side of a pipe): the node's SDP answer."""
        return _answer(await self._call(node, Rpc.PUBLISH, request.to_wire()))

    async def subscribe(self, node: SfuNode, request: OpenSession) -> Answer:
        """WHEP playback: the node's SDP answer."""
        return _answer(await self._call(node, Rpc.SUBSCRIBE, request.to_wire()))

    async def trickle(self, node: SfuNode, request: Trickle) -> None:
        """Remote ICE candidates for a session (RFC 9725 §4.3.2)."""
        await self._call(node, Rpc.TRICKLE, request.to_wire())

    async def ice_restart(self, node: SfuNode, request: IceRestart) -> IceRestarted:
        """Restart a session's ICE with the client's new credentials (RFC 9725 §4.3.3): the
        node's new credentials and candidates; 502 for a reply of the wrong shape."""
        result = await self._call(node, Rpc.ICE_RESTART, request.to_wire())
        try:
            return IceRestarted.from_wire(result)
        except ProtocolError as exc:
            raise RpcFailed(RpcError(502, "Bad SFU reply", str(exc))) from None

    async def video_size(self, node: SfuNode, request: VideoSize) -> None:
        """A viewer's rendered video size for its video Consumer (docs/whip-whep.md)."""
        await self._call(node, Rpc.VIDEO_SIZE, request.to_wire())

    async def ingest_advice(self, node: SfuNode, request: IngestAdvice) -> None:
        """A publisher session's ingest advice and/or dropped-frame count (``None`` clears
        one, an absent one stays), reported with its room's ingest health (docs/whip-whep.md);
        :raises RpcFailed: 404 not a publisher session there."""
        await self._call(node, Rpc.INGEST_ADVICE, request.to_wire())

    async def close(self, node: SfuNode, session_id: str) -> None:
        """End a session on the node; :raises RpcFailed: 404 when the node does not know it."""
        await self._call(node, Rpc.CLOSE, CloseSession(session_id).to_wire())

    async def pipe_offer(self, node: SfuNode, request: PipeOffer) -> Answer:
        """The origin node's offer of a room's producers for a pipe to another node."""
        return _answer(await self._call(node, Rpc.PIPE_OFFER, request.to_wire()))

    async def pipe_answer(self, node: SfuNode, request: PipeAnswer) -> None:
        """Give the origin node the edge's answer; the pipe starts forwarding."""
        await self._call(node, Rpc.PIPE_ANSWER, request.to_wire())

    async def stats(self, node: SfuNode, room: str | None = None) -> dict[str, Any]:
        """The node's statistics (:meth:`sfu.worker.Worker.stats`): ``{node_id, sessions,
        rooms: {name: {live, viewers, pipes, ingest}}}`` — every room, or only ``room``."""
        return await self._call(node, Rpc.STATS, {} if room is None else {"room": room})

    async def _call(self, node: SfuNode, rpc: Rpc, payload: dict[str, Any]) -> dict[str, Any]:
        result = await self.namespace.call(node, rpc, payload, timeout=self.timeout_s)
        error = RpcError.from_wire(result)
        if error is not None:
            raise RpcFailed(error)
        return result


def _answer(result: dict[str, Any]) -> Answer:
    sdp = result.get("sdp")
    if not isinstance(sdp, str):
        raise RpcFailed(RpcError(502, "Bad SFU reply", "the reply has no SDP"))
    return Answer(sdp)
