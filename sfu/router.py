"""Router: one room on one SFU node — its publisher, producers, viewers and chat.

Publisher replacement: a new WHIP session for a live room replaces the old one
(the newest holder of the stream key wins, so an encoder that reconnects after
a network drop is not locked out by its own stale session).  When the publisher
leaves, viewers stay connected and wait; when a publisher comes back with a
compatible codec, every waiting consumer resumes on the next key frame with
continuous sequence numbers and timestamps — no renegotiation.  Viewers whose
codec no longer matches are closed so their players re-POST WHEP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCSessionDescription

from . import aiortc_private
from .bandwidth import BandwidthEstimator
from .chat import CHAT_LABEL, ChatRoom, ChatUpstream
from .config import SfuConfig
from .consumer import Consumer
from .errors import BadOffer, InvalidSdp, RoomConflict, RoomNotLive, SfuError, UnsupportedMedia
from .estimator_link import EstimatorLink
from .ingest_health import publisher_ingest
from .negotiation import (
    announce_address,
    check_track_counts,
    choose_consumer_codec,
    choose_publish_codec,
    codecs_compatible,
    drop_unreachable_candidates,
    negotiate_pause,
    negotiate_transport_cc,
    parse_offer,
    pipe_codec_preferences,
    publish_track,
)
from .participant import Participant, PlaceholderTrack, needs_max_bundle, new_peer_connection
from .producer import Producer
from .protocol import Identity, SessionKind
from .simulcast_sdp import (
    URI_REPAIRED_RID,
    URI_RID,
    SimulcastOffer,
    answer_simulcast,
    offered_simulcast,
)

logger = logging.getLogger(__name__)

INGEST_RECEIVE_BUFFER = 2 * 1024 * 1024  # bytes: absorbs key-frame bursts at high fan-out
SessionClosed = Callable[[str, str, str], None]  # (room, session_id, reason)
SessionConnected = Callable[[str, str], None]  # (room, session_id)


class Router:
    """Media and chat of one room.

    :param on_session_closed: called when the SFU ends a session on its own
        (ICE/DTLS failure, not connected within ``config.connect_timeout_s``, replaced
        publisher, codec change).
    :param on_state: called with the room state dict whenever it changes.
    :param on_session_connected: called when a session first connects (ICE and DTLS up).
    :param estimators: where viewers' bandwidth estimators run (the Worker's estimator
        process); None: in this process.
    """

    def __init__(
        self,
        room: str,
        config: SfuConfig,
        on_session_closed: SessionClosed,
        on_state: Callable[[dict[str, Any]], None],
        chat_upstream: ChatUpstream | None = None,
        on_session_connected: SessionConnected | None = None,
        estimators: EstimatorLink | None = None,
    ) -> None:
        self.room = room
        self.config = config
        self._estimators = estimators
        self.publisher: Participant | None = None
        self.viewers: dict[str, Participant] = {}
        self.pipes: dict[str, Participant] = {}
        """Node-to-node pipes this room feeds (:meth:`pipe_offer`), by session id."""
        self.producers: dict[str, Producer] = {}
        self.chat = ChatRoom(
            room,
            max_chars=config.chat_max_chars,
            rate=config.chat_rate,
            burst=config.chat_burst,
            history=config.chat_history,
            upstream=chat_upstream,
        )
        self._on_session_closed = on_session_closed
        self._on_state = on_state
        self._on_session_connected = on_session_connected
        self._expiring: set[str] = set()
        """Sessions being closed for missing the connect deadline."""
        self._pipe_idle_since: float | None = None
        self.holders: set[str] = set()
        """Local consumers other than viewers that need the room's producers (the LL-HLS
        bridge): an edge keeps its pipe open while any is registered."""

    # ---------------------------------------------------------------- state
    @property
    def live(self) -> bool:
        return bool(self.producers)

    @property
    def track_kinds(self) -> set[str]:
        """Kinds ("audio", "video") the room currently publishes to WebRTC viewers."""
        return set(self.producers) & {"audio", "video"}

    @property
    def pipe_fed(self) -> bool:
        """This node is an edge for the room: its publisher is a pipe from the origin node."""
        return self.publisher is not None and self.publisher.identity.role == SessionKind.PIPE

    @property
    def connected_viewers(self) -> int:
        """Viewers here whose session has connected (ICE and DTLS up).  A WHEP offer that
        never connects is not a viewer: it holds a session until the connect deadline, but
        counts nowhere (room state, /api/rooms, the LL-HLS viewer threshold)."""
        return sum(1 for viewer in self.viewers.values() if viewer.connected)

    def presence(self) -> dict[str, Any]:
        """What the room's chat participants see: ``{"live", "viewers"}`` (connected viewers
        here)."""
        return {"live": self.live, "viewers": self.connected_viewers}

    def state(self) -> dict[str, Any]:
        """The room's state for signaling: ``{"live", "viewers", "pipes"}``, plus
        ``"pipe": true`` on an edge node (fed by a pipe; signaling must not take it for
        the room's origin).  ``pipes`` counts the edges this node feeds."""
        state = {**self.presence(), "pipes": len(self.pipes)}
        if self.pipe_fed:
            state["pipe"] = True
        return state

    def ingest(self) -> dict[str, Any] | None:
        """The publisher's ingest health (:func:`sfu.ingest_health.publisher_ingest`: bitrate,
        fps, size, key-frame interval, loss, RTT, jitter, and the advice and dropped-frame count
        its session was given), or ``None`` with no publisher here or on an edge node (its
        publisher is a pipe from the origin, not the broadcaster)."""
        if not self.producers or self.pipe_fed:
            return None
        publisher = self.publisher
        return publisher_ingest(
            (self.producers[kind].health for kind in ("video", "audio") if kind in self.producers),
            publisher.ingest_advice if publisher is not None else None,
            publisher.ingest_dropped_frames if publisher is not None else None,
        )

    def delivery(self) -> dict[str, Any] | None:
        """How the room's video reaches its viewers here, or ``None`` without video::

            {"simulcast": bool,
             "layers": [{"spatial", "rid", "width", "height", "bitrate_bps", "active"}],
             "viewers": {"<spatial>": count, ...}, "paused": count,
             "estimate_bps": {"p50": int, "min": int} | None}

        ``layers`` by spatial index (0 = smallest); ``viewers`` counts connected viewers by the
        layer they get now (``rid`` names it for simulcast), ``paused`` those whose video is
        paused; ``estimate_bps`` summarises the viewers' bandwidth estimates (bits/s)."""
        producer = self.producers.get("video")
        if producer is None:
            return None
        by_layer: dict[str, int] = {}
        paused = 0
        estimates = []
        for viewer in self.viewers.values():
            consumer = viewer.consumers.get("video")
            if consumer is None or not viewer.connected:
                continue
            if viewer.bwe is not None:
                estimates.append(viewer.bwe.estimate_bps)
            if consumer.paused:
                paused += 1
            elif consumer.current_layer is not None:
                key = str(consumer.current_layer.spatial)
                by_layer[key] = by_layer.get(key, 0) + 1
        estimates.sort()
        return {
            "simulcast": producer.simulcast,
            "layers": [{"spatial": layer.spatial, "rid": layer.rid, "width": layer.width,
                        "height": layer.height, "bitrate_bps": sum(layer.bitrates_bps),
                        "active": layer.active} for layer in producer.layers],
            "viewers": by_layer,
            "paused": paused,
            "estimate_bps": {"p50": estimates[len(estimates) // 2], "min": estimates[0]} if estimates else None,
        }

    def _publish_state(self) -> None:
        self.chat.broadcast({"type": "presence", **self.presence()})
        self._on_state({"room": self.room, **self.state()})

    @property
    def empty(self) -> bool:
        return self.publisher is None and not self.viewers and not self.pipes

    def sessions(self) -> list[Participant]:
        return (([self.publisher] if self.publisher else []) + list(self.viewers.values())
                + list(self.pipes.values()))

    def _outputs(self) -> list[Participant]:
        """Sessions this room forwards to: viewers and node pipes."""
        return [*self.viewers.values(), *self.pipes.values()]

    # -------------------------------------------------------------- publish
    async def publish(self, session_id: str, offer_sdp: str, identity: Identity) -> str:
        """WHIP ingest: answer ``recvonly`` with one codec per track (RFC 9725 §4.2, §4.4).

        A pipe from another node (identity role ``"pipe"``) makes this node an edge for
        the room; it never replaces a real publisher here.

        :returns: the SDP answer.
        :raises BadOffer, UnsupportedMedia: nothing is allocated in that case.
        :raises RoomConflict: a pipe for a room that has its own publisher on this node.
        """
        if identity.role == SessionKind.PIPE and self.publisher is not None and not self.pipe_fed:
            raise RoomConflict(f"room {self.room!r} has its own publisher on this node")
        simulcast = offered_simulcast(offer_sdp)
        participant, answer = await self._open_session(
            session_id, offer_sdp, identity, publish=True,
            configure=lambda participant: self._add_producers(participant, simulcast),
            edit_answer=None if simulcast is None else lambda sdp: answer_simulcast(sdp, simulcast),
        )
        aiortc_private.set_receive_buffer(participant.pc, INGEST_RECEIVE_BUFFER)
        old = self.publisher
        self.publisher = participant
        for producer in self.producers.values():
            producer.close()
        self.producers = dict(participant.producers)
        if old is not None:
            await self._drop(old, "replaced by a new publisher session")
        await self._reattach_viewers()
        self._publish_state()
        return answer

    @staticmethod
    def _add_producers(participant: Participant, simulcast: SimulcastOffer | None) -> None:
        for transceiver in participant.pc.getTransceivers():
            negotiated = aiortc_private.negotiated_codecs(transceiver)
            track = publish_track(transceiver.kind, negotiated)
            codecs = choose_publish_codec(track, negotiated)
            aiortc_private.restrict_codecs(transceiver, codecs)
            negotiate_transport_cc(participant.pc, transceiver,
                                   simulcast=simulcast is not None and transceiver.kind == "video")
            transceiver.direction = "recvonly"
            rids = None
            if simulcast is not None and transceiver.kind == "video":
                rids = simulcast.rids
                aiortc_private.enable_header_extension(transceiver, URI_RID, simulcast.rid_extension_id)
                if simulcast.repaired_rid_extension_id is not None:
                    aiortc_private.enable_header_extension(
                        transceiver, URI_REPAIRED_RID, simulcast.repaired_rid_extension_id)
            participant.producers[track] = Producer(
                transceiver.kind, codecs[0], transceiver.receiver, participant.session_id, rids=rids,
                pausable=track == "audio" and negotiate_pause(participant.pc, transceiver),
            )

    async def _open_session(
        self,
        session_id: str,
        offer_sdp: str,
        identity: Identity,
        *,
        publish: bool,
        configure: Callable[[Participant], None],
        edit_answer: Callable[[str], str] | None = None,
    ) -> tuple[Participant, str]:
        """Validate the offer, negotiate, let ``configure`` set up the transceivers, answer
        (``edit_answer`` adds what aiortc cannot write: simulcast).

        Everything is released again if any step fails (no partial sessions).
        """
        desc = parse_offer(offer_sdp)
        check_track_counts(desc, publish=publish)
        if not publish:
            if not self.live:
                raise RoomNotLive(f"room {self.room!r} has no publisher yet")
            if not any(m.kind in self.track_kinds and m.port for m in desc.media):
                raise UnsupportedMedia("the offer receives none of the room's tracks ("
                                       + ", ".join(sorted(self.track_kinds)) + ")")
        pc = new_peer_connection(max_bundle=needs_max_bundle(desc))
        participant = Participant(session_id, self.room, identity, pc, self._failed, self._connected)
        try:
            await _set_offer(pc, offer_sdp)
            configure(participant)
            self._watch_chat(participant)
            try:
                answer = await _answer(pc, self.config)
                if edit_answer is not None:
                    answer = edit_answer(answer)
            except SfuError:
                raise
            except Exception as exc:  # aiortc: the answer does not fit the offer
                logger.info("room %s: no answer to an offer: %r", self.room, exc)
                raise InvalidSdp("the offer's m= sections cannot be answered") from exc
        except BaseException:
            await participant.close()
            raise
        return participant, answer

    async def _reattach_viewers(self) -> None:
        for viewer in self._outputs():
            for kind, consumer in viewer.consumers.items():
                producer = self.producers.get(kind)
                if producer is None:
                    consumer.detach()
                elif consumer.codec is not None and not codecs_compatible(producer.codec, consumer.codec):
                    await self._drop(viewer, f"publisher switched {kind} codec to {producer.codec.mimeType}")
                    break
                else:
                    consumer.attach(producer)

    # ------------------------------------------------------------ subscribe
    async def subscribe(self, session_id: str, offer_sdp: str, identity: Identity) -> str:
        """WHEP egress: answer ``sendonly`` with the producers' codecs.

        :raises RoomNotLive: nobody is publishing (signaling answers 409).
        :raises UnsupportedMedia: the viewer cannot receive the stream's codec.
        """
        participant, answer = await self._open_session(
            session_id, offer_sdp, identity, publish=False, configure=self._add_consumers
        )
        self.viewers[session_id] = participant
        for kind, consumer in participant.consumers.items():
            producer = self.producers.get(kind)
            if producer is not None:
                consumer.attach(producer)
        self._publish_state()
        return answer

    def _add_consumers(self, participant: Participant) -> None:
        for transceiver in participant.pc.getTransceivers():
            producer = self.producers.get(transceiver.kind)
            if producer is None:
                transceiver.direction = "inactive"
                continue
            codecs = choose_consumer_codec(producer.codec, aiortc_private.negotiated_codecs(transceiver))
            aiortc_private.restrict_codecs(transceiver, codecs)
            negotiate_transport_cc(participant.pc, transceiver, publisher=False)
            track = PlaceholderTrack(transceiver.kind)
            participant.tracks.append(track)
            participant.pc.addTrack(track)
            transceiver.direction = "sendonly"
            consumer = Consumer(transceiver.kind, codecs[0].clockRate, participant.session_id,
                                adaptive=self.config.adaptive)
            consumer.codec = codecs[0]
            if participant.bwe is None:
                initial = self.config.initial_estimate_bps
                participant.bwe = (BandwidthEstimator(initial_bps=initial) if self._estimators is None
                                   else self._estimators.open(initial))
                aiortc_private.install_rtcp_tap(transceiver.sender.transport,
                                                participant.bwe.on_transport_feedback)
            consumer.bwe = participant.bwe
            if transceiver.kind == "video" and participant.bwe is not None:
                participant.bwe.set_padding_sender(consumer.send_padding)
            self._install_consumer(consumer, transceiver)
            participant.consumers[transceiver.kind] = consumer

    @staticmethod
    def _install_consumer(consumer: Consumer, transceiver: Any) -> None:
        sender = transceiver.sender

        def started(params: aiortc_private.SendParameters) -> None:
            consumer.on_sender_started(params, aiortc_private.RawRtpSender(sender.transport))
            if consumer.bwe is not None:  # a viewer: its feedback skips aiortc's receive loop
                aiortc_private.receive_rtcp_directly(sender.transport)

        aiortc_private.install_forwarding_sender(sender, started, consumer.on_rtcp)

    # ------------------------------------------------------------ node pipe
    async def pipe_offer(self, session_id: str, identity: Identity) -> str:
        """Origin side of a node-to-node pipe (mediasoup ``pipeToRouter``): offer the room's
        producers ``sendonly`` to another SFU node, which answers through its own
        :meth:`publish` and so gets local Producers for its viewers.  Complete it with
        :meth:`pipe_answer`.  The pipe is a consumer session here: PLIs and NACKs from the
        other node reach this node's producers like a viewer's, and it resumes with
        continuous seq/ts when the publisher comes back.

        :returns: the SDP offer.
        :raises RoomNotLive: nobody publishes in this room.
        """
        if not self.live:
            raise RoomNotLive(f"room {self.room!r} has no publisher yet")
        # Two audio sections (Opus and an RTMP/SRT relay's AAC) need one transport from the start.
        pc = new_peer_connection(max_bundle=len({p.kind for p in self.producers.values()}) < len(self.producers))
        participant = Participant(session_id, self.room, identity, pc, self._failed, self._connected)
        try:
            for name, producer in self.producers.items():  # "video", "audio", "aac"
                track = PlaceholderTrack(producer.kind)
                participant.tracks.append(track)
                transceiver = pc.addTransceiver(track, direction="sendonly")
                transceiver.setCodecPreferences(pipe_codec_preferences(producer.kind, producer.codec))
                consumer = Consumer(producer.kind, producer.codec.clockRate, session_id)
                consumer.codec = producer.codec
                self._install_consumer(consumer, transceiver)
                participant.consumers[name] = consumer
            await pc.setLocalDescription(await pc.createOffer())
        except BaseException:
            await participant.close()
            raise
        self.pipes[session_id] = participant
        return announce_address(pc.localDescription.sdp, self.config.ice_announce)

    async def pipe_answer(self, session_id: str, answer_sdp: str) -> None:
        """Complete :meth:`pipe_offer` with the other node's answer; forwarding starts.

        :raises BadOffer: no such pending pipe, or the answer is not usable.
        """
        participant = self.pipes.get(session_id)
        if participant is None:
            raise BadOffer("no pipe offer pending for this session")
        sdp = drop_unreachable_candidates(answer_sdp, aiortc_private.host_addresses())
        try:
            await participant.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            await self._remove(participant)
            raise BadOffer(f"pipe answer refused: {exc}") from exc
        # The transceivers are in the order pipe_offer added a consumer for each track.
        for transceiver, (name, consumer) in zip(participant.pc.getTransceivers(), participant.consumers.items(), strict=True):
            producer = self.producers.get(name)
            if producer is None:
                continue
            consumer.codec = choose_consumer_codec(
                producer.codec, aiortc_private.negotiated_codecs(transceiver))[0]
            consumer.attach(producer)

    # ----------------------------------------------------------------- chat
    def _watch_chat(self, participant: Participant) -> None:
        @participant.pc.on("datachannel")
        def _on_channel(channel: Any) -> None:
            if channel.label != CHAT_LABEL:
                return

            def _open() -> None:
                self.chat.join(participant.identity, channel, self.presence())

            if channel.readyState == "open":
                _open()
            else:
                channel.on("open", _open)

            @channel.on("message")
            def _message(raw: str | bytes) -> None:
                self.chat.receive(participant.identity.id, raw)

            @channel.on("close")
            def _close() -> None:
                self.chat.leave(participant.identity.id, channel)

    # ---------------------------------------------------------------- close
    def find(self, session_id: str) -> Participant | None:
        if self.publisher is not None and self.publisher.session_id == session_id:
            return self.publisher
        return self.viewers.get(session_id) or self.pipes.get(session_id)

    async def close_session(self, session_id: str) -> bool:
        """End a session (WHIP/WHEP DELETE).  Returns False when unknown."""
        participant = self.find(session_id)
        if participant is None:
            return False
        await self._remove(participant)
        return True

    async def _remove(self, participant: Participant) -> None:
        self._expiring.discard(participant.session_id)
        self.chat.leave(participant.identity.id)
        if participant is self.publisher:
            self.publisher = None
            for producer in self.producers.values():
                producer.close()
            self.producers = {}
            for viewer in self._outputs():
                for consumer in viewer.consumers.values():
                    consumer.detach()
        else:
            self.viewers.pop(participant.session_id, None)
            self.pipes.pop(participant.session_id, None)
        await participant.close()
        self._publish_state()

    async def _drop(self, participant: Participant, reason: str) -> None:
        """Server-side end of a session; signaling is told so the resource 404s."""
        logger.info("room %s: closing session %s…: %s", self.room, participant.session_id[:8], reason)
        await self._remove(participant)
        self._on_session_closed(self.room, participant.session_id, reason)

    def _connected(self, participant: Participant) -> None:
        if participant.session_id in self.viewers:
            self._publish_state()  # one more viewer counts
        if self._on_session_connected is not None:
            self._on_session_connected(self.room, participant.session_id)

    def _failed(self, participant: Participant) -> None:
        task = asyncio.ensure_future(self._drop(participant, "ICE/DTLS connection failed"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        for participant in self.sessions():
            await self._drop(participant, "router closed")

    # ----------------------------------------------------------------- tick
    def tick(self) -> None:
        """Twice a second: sender reports, key-frame retries for gated consumers, the end of
        sessions not connected ``config.connect_timeout_s`` after their answer, on an
        edge node the end of a pipe nobody watched for ``config.pipe_linger_s``, and a
        sample of the producers' ingest counters."""
        now = time.monotonic()
        self._expire_unconnected(now)
        for producer in self.producers.values():
            producer.sample()
        if self.pipe_fed and not self.viewers and not self.holders:
            if self._pipe_idle_since is None:
                self._pipe_idle_since = now
            elif now - self._pipe_idle_since >= self.config.pipe_linger_s and self.publisher is not None:
                self._pipe_idle_since = None
                task = asyncio.ensure_future(self._drop(self.publisher, "edge without viewers"))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        else:
            self._pipe_idle_since = None
        audio = self.producers.get("audio")
        audio_bps = 0 if audio is None else sum(audio.top.bitrates_bps)
        for viewer in self._outputs():
            for consumer in viewer.consumers.values():
                consumer.send_sender_report()
                consumer.update_layers(now, audio_bps)
                if consumer.needs_keyframe_retry(now):
                    consumer.request_keyframe()

    def _expire_unconnected(self, now: float) -> None:
        """Close the sessions that have not connected ``config.connect_timeout_s`` after they
        were created (each once; `_drop` reports it to signaling)."""
        deadline_s = self.config.connect_timeout_s
        for participant in self.sessions():
            if (participant.connected or participant.closed
                    or participant.session_id in self._expiring
                    or now - participant.created_at_s < deadline_s):
                continue
            self._expiring.add(participant.session_id)
            task = asyncio.ensure_future(
                self._drop(participant, f"not connected within {deadline_s:g} s"))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _set_offer(pc: Any, sdp: str) -> None:
    # A loopback-only node must not send checks to the offer's other addresses
    # (see negotiation.drop_unreachable_candidates for why aioice would).
    sdp = drop_unreachable_candidates(sdp, aiortc_private.host_addresses())
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except SfuError:
        raise
    except Exception as exc:  # aiortc: ValueError / OperationError / InternalError
        logger.info("an offer was refused by aiortc: %r", exc)
        text = str(exc).lower()
        if "codec" in text or "parameters" in text:
            raise UnsupportedMedia("no codec or codec parameters in common with the SFU") from exc
        raise InvalidSdp("the offer was refused by the WebRTC stack") from exc


async def _answer(pc: Any, config: SfuConfig) -> str:
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    return announce_address(pc.localDescription.sdp, config.ice_announce)
