"""Participant: one WebRTC peer connection (a mediasoup Transport) and who owns it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from .consumer import Consumer

if TYPE_CHECKING:
    from .estimator_link import Estimator
from .producer import Producer
from .protocol import Identity

logger = logging.getLogger(__name__)


def new_peer_connection(ice_servers: list[RTCIceServer] | None = None, *, max_bundle: bool = False) -> RTCPeerConnection:
    """A peer connection with explicit ICE servers (never aiortc's public STUN default).

    ``max_bundle``: every m= section on one transport from the start (RFC 9143 §4.1
    ``max-bundle``; W3C ``bundlePolicy``).  Needed for two sections of one kind (a
    publisher's Opus and AAC): under aiortc's default ``balanced`` policy the second
    shares the first's transport before BUNDLE is negotiated, and aiortc then never moves
    it onto the bundle's transport, so it never sends or receives.  Only where that is
    needed (:func:`needs_max_bundle`): ``max-bundle`` changed which ICE candidates a
    relay-only Chromium publisher's checks came from as the SFU saw them (a
    peer-reflexive one beside the TURN relay in ``tests/turn/test_turn_browser.py``).
    """
    policy = RTCBundlePolicy.MAX_BUNDLE if max_bundle else RTCBundlePolicy.BALANCED
    return RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or []), bundlePolicy=policy))


def needs_max_bundle(desc: Any) -> bool:
    """Whether a parsed offer (aiortc ``SessionDescription``) has two audio or two video
    sections (an RTMP/SRT relay's Opus and AAC) and a BUNDLE group (RFC 9143) that holds
    every m= section it uses, the first of them first: then it is answered ``max-bundle``."""
    used = [m for m in desc.media if m.port]
    mids = [m.rtp.muxId for m in used]
    kinds = [m.kind for m in used if m.kind in ("audio", "video")]
    group: list[str] = next((list(g.items) for g in desc.group if g.semantic == "BUNDLE"), [])
    return (len(kinds) > len(set(kinds)) and bool(group) and bool(mids) and group[0] == mids[0]
            and set(mids) <= set(group))


class PlaceholderTrack(MediaStreamTrack):
    """A track that never yields a frame: it only gives the answer an msid.

    The forwarding sender never reads it (see aiortc_private.install_forwarding_sender).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    async def recv(self):  # type: ignore[override]
        await self._never
        raise ConnectionError("placeholder track")

    def stop(self) -> None:
        super().stop()
        if not self._never.done():
            self._never.cancel()


class Participant:
    """One session: a publisher (producers) or a viewer (consumers) in a room.

    :ivar session_id: the WHIP/WHEP session id assigned by signaling.
    :ivar connected: the peer connection has reached ``connected`` (ICE and DTLS up) at
        least once; until then the session is *pending*.
    :ivar created_at_s: ``time.monotonic()`` when the session was created (its SDP answer
        or, for a node pipe, its offer): the connect deadline counts from here.
    :ivar ingest_advice: a publisher's: what its encoder should change, in words (at most
        :data:`~sfu.protocol.MAX_ADVICE_CHARS` characters; ``None``: nothing), as signaling
        passed it on (``ingest_advice`` RPC); reported with the room's ingest health.
    :ivar ingest_dropped_frames: a publisher's: the running total of video frames that whoever
        republishes its encoder (the RTMP/SRT ingest) had to drop, as signaling passed it on
        (``ingest_advice`` RPC); ``None``: never reported (or cleared).  Reported with the
        room's ingest health.
    :param on_connected: called once, when the session first connects.
    """

    def __init__(
        self,
        session_id: str,
        room: str,
        identity: Identity,
        pc: RTCPeerConnection,
        on_failed: Callable[[Participant], None],
        on_connected: Callable[[Participant], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.room = room
        self.identity = identity
        self.pc = pc
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.bwe: Estimator | None = None
        """A viewer transport's bandwidth estimator (:mod:`sfu.bandwidth`), shared by its consumers."""
        self.tracks: list[PlaceholderTrack] = []
        self.closed = False
        self.connected = False
        self.created_at_s = time.monotonic()
        self.ingest_advice: str | None = None
        self.ingest_dropped_frames: int | None = None
        self._on_failed = on_failed
        self._on_connected = on_connected

        @pc.on("connectionstatechange")
        def _state() -> None:
            state = pc.connectionState
            logger.debug("session %s… connection %s", session_id[:8], state)
            if state == "connected" and not self.connected and not self.closed:
                self.connected = True
                if self._on_connected is not None:
                    self._on_connected(self)
            elif state in ("failed", "closed") and not self.closed:
                self._on_failed(self)

    async def close(self) -> None:
        """Release everything: producers, consumers, tracks and the peer connection."""
        if self.closed:
            return
        self.closed = True
        for producer in self.producers.values():
            producer.close()
        for consumer in self.consumers.values():
            consumer.close()
        if self.bwe is not None:
            self.bwe.close()
        for track in self.tracks:
            track.stop()
        try:
            await self.pc.close()
        except Exception as exc:  # close must always finish
            logger.warning("closing peer connection: %r", exc)
