"""RelayRouter: the naive aiortc "SFU" — decode once, encode per viewer (a benchmark baseline).

This is what a user of aiortc builds from its examples: the publisher's tracks
are received and **decoded** by aiortc as usual, and every viewer gets
``MediaRelay().subscribe(track)``, so aiortc's ``RTCRtpSender`` re-encodes the
decoded frames once per viewer (VP8 at aiortc's default 500 kbps target, Opus).
It exists so ``loadtest fanout --mode relay`` can measure the packet-forwarding
:class:`~sfu.router.Router` against it in the same run: ``python -m loadtest relay-serve``
runs the service with this Router in its own process (:mod:`loadtest.relay_serve`).  It is
not part of the product and not meant for production: no key-frame gating, no NACK cache, per-viewer queues
grow without bound when the encoders fall behind.

aiortc's receiver decodes every frame even when nobody reads the track and
queues the pictures without bound, so the relay keeps one sink subscription
draining each source from the moment the publisher arrives (as aiortc's
examples do with ``MediaBlackhole``); otherwise the first viewer would be
served seconds of stale backlog.

Simplifications against :class:`Router`: when the publisher leaves or is
replaced, the viewers are closed (their players re-POST WHEP) instead of
waiting and resuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu import aiortc_private
from sfu.negotiation import choose_publish_codec
from sfu.participant import Participant
from sfu.protocol import Identity
from sfu.router import Router

logger = logging.getLogger(__name__)


class RelayRouter(Router):
    """One room served by ``MediaRelay`` (decode + per-viewer encode), same RPC surface as Router."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._relay = MediaRelay()
        self._sources: dict[str, MediaStreamTrack] = {}
        self._sinks: list[asyncio.Task[None]] = []

    @property
    def live(self) -> bool:
        return bool(self._sources)

    @property
    def track_kinds(self) -> set[str]:
        return set(self._sources)

    async def publish(self, session_id: str, offer_sdp: str, identity: Identity) -> str:
        """WHIP ingest with aiortc's normal (decoding) receivers."""
        sources: dict[str, MediaStreamTrack] = {}

        def decode_tracks(participant: Participant) -> None:
            for transceiver in participant.pc.getTransceivers():
                codecs = choose_publish_codec(
                    transceiver.kind, aiortc_private.negotiated_codecs(transceiver)
                )
                aiortc_private.restrict_codecs(transceiver, codecs)
                transceiver.direction = "recvonly"
                sources[transceiver.kind] = transceiver.receiver.track

        participant, answer = await self._open_session(
            session_id, offer_sdp, identity, publish=True, configure=decode_tracks
        )
        old = self.publisher
        if old is not None:
            await self._drop(old, "replaced by a new publisher session")
        self.publisher = participant
        self._relay = MediaRelay()
        self._sources = sources
        self._sinks = [asyncio.create_task(_drain(self._relay.subscribe(track, buffered=False)))
                       for track in sources.values()]
        self._publish_state()
        return answer

    async def subscribe(self, session_id: str, offer_sdp: str, identity: Identity) -> str:
        """WHEP egress: one ``MediaRelay`` proxy per track, encoded by aiortc for this viewer."""
        def relay_tracks(participant: Participant) -> None:
            for transceiver in participant.pc.getTransceivers():
                source = self._sources.get(transceiver.kind)
                if source is None:
                    if transceiver.kind in ("audio", "video"):
                        transceiver.direction = "inactive"
                    continue
                proxy = self._relay.subscribe(source)
                participant.tracks.append(proxy)  # type: ignore[arg-type]  # stopped on close
                participant.pc.addTrack(proxy)
                transceiver.direction = "sendonly"

        participant, answer = await self._open_session(
            session_id, offer_sdp, identity, publish=False, configure=relay_tracks
        )
        self.viewers[session_id] = participant
        self._publish_state()
        return answer

    async def _remove(self, participant: Participant) -> None:
        self.chat.leave(participant.identity.id)
        if participant is self.publisher:
            self.publisher = None
            self._sources = {}
            for sink in self._sinks:
                sink.cancel()
            self._sinks = []
            await participant.close()
            for viewer in list(self.viewers.values()):
                await self._drop(viewer, "publisher left (relay mode does not resume)")
        else:
            self.viewers.pop(participant.session_id, None)
            await participant.close()
        self._publish_state()

    def tick(self) -> None:
        """Nothing to do: aiortc's own senders emit reports and answer PLI/NACK."""


async def _drain(track: MediaStreamTrack) -> None:
    """Read and discard ``track`` until it ends (keeps the source's queue empty)."""
    with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
        while True:
            await track.recv()
