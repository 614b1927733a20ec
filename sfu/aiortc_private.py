"""Every use of aiortc/aioice private API in relaycast lives in this module.

aiortc is used for ICE, DTLS, SRTP, SCTP and SDP only.  The SFU must never decode
or encode media, but aiortc's `RTCRtpReceiver` feeds every packet to a jitter
buffer and a decoder thread, and `RTCRtpSender` pulls frames from a track and
encodes them.  This module rewires single receiver/sender *instances* so that:

* a publisher's receiver hands each RTP packet (already SRTP-unprotected and
  parsed) to a callback after keeping aiortc's receive statistics (for receiver
  reports), unwrapping RTX and generating NACKs; no decoder thread is started;
  where transport-cc was negotiated it records each packet's transport-wide
  sequence number and the transport sends transport feedback upstream
  (:class:`TransportFeedback`, aiortc has none);
* a subscriber's sender starts no RTP/RTCP tasks; the SFU sends raw RTP bytes
  through :class:`RawRtpSender` (SRTP protect + UDP ``sendto``, synchronously)
  and receives the viewer's RTCP (NACK, PLI, FIR, REMB, RR) through a callback;
* the ingest health (:mod:`sfu.ingest_health`) reads a receiver's RTCP receive
  statistics (:func:`receive_statistics`) and the round trip of the ICE consent
  checks the peer answered (:func:`ice_round_trip_time`).

An aiortc upgrade should only ever require changes here.  Tested against aiortc
1.14–1.16 and aioice 0.9–0.13.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import MethodType
from typing import Any, NamedTuple

import aioice.ice
import aioice.stun
from aiortc import RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import codecs as aiortc_codecs
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import AnyRtcpPacket, RtpPacket, unwrap_rtx

from .twcc import FEEDBACK_INTERVAL_S, TRANSPORT_CC, TRANSPORT_CC_URI, TwccRecorder

logger = logging.getLogger(__name__)

RtpCallback = Callable[[RtpPacket, int], None]
RtcpCallback = Callable[[AnyRtcpPacket], None]

# --------------------------------------------------------------------------- ICE

_original_get_host_addresses = aioice.ice.get_host_addresses
_host_addresses: list[str] | None = None


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Pin the local addresses aioice gathers host candidates on (process-wide).

    aioice leaves 127.0.0.1 out of host candidates; the SFU, the load tester and
    the tests gather on the configured addresses instead (mediasoup ``listenIps``).
    ``None`` restores aioice's own choice (every non-loopback interface).
    """
    global _host_addresses
    _host_addresses = list(addresses) if addresses else None

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if _host_addresses is None:
            return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        return [
            a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
        ]

    aioice.ice.get_host_addresses = get_host_addresses


def host_addresses() -> list[str] | None:
    """The addresses pinned by :func:`set_host_addresses` (``None``: aioice's own choice)."""
    return None if _host_addresses is None else list(_host_addresses)


_PEER_CHECKS = "_relaycast_peer_checks"  # Connection attribute: remote addr -> monotonic time
_CONSENT_RTT = "_relaycast_consent_rtt"  # Connection attribute: (round trip s, loop time answered)
CONSENT_RTT_MAX_AGE_S = 15.0
"""A consent round trip older than this (three missed rounds) is no longer reported."""


def accept_peer_consent_checks() -> None:
    """Let a peer's own authenticated checks keep ICE consent fresh (process-wide, idempotent).

    aioice sends a consent check on the nominated pair every ~5 s and closes the
    connection after 6 unanswered ones (RFC 7675, ~30 s).  FFmpeg's WHIP muxer
    (8.1) stops answering binding requests once its handshake is done, but keeps
    sending its own authenticated consent checks, as an ICE-lite client would;
    without this every FFmpeg publisher was dropped after ~35 s.  Here a
    consent round whose check goes unanswered still counts as fresh when the
    peer sent a binding request that passed MESSAGE-INTEGRITY with our password,
    from the pair's remote address, since the previous round — the liveness rule
    ICE-lite servers (mediasoup, Janus) apply.  Peers that answer checks see no
    change; peers that neither answer nor send checks still expire after ~30 s.
    Each answered check's round trip is kept for :func:`ice_round_trip_time`.
    """
    connection_cls = aioice.ice.Connection
    if getattr(connection_cls, "_relaycast_consent", False):
        return
    original_check_incoming = connection_cls.check_incoming

    def check_incoming(self: Any, message: Any, addr: tuple[str, int], protocol: Any) -> None:
        # aioice calls this only for authenticated binding requests it answered.
        checks = self.__dict__.setdefault(_PEER_CHECKS, {})
        checks[(addr[0], addr[1])] = asyncio.get_running_loop().time()
        original_check_incoming(self, message, addr, protocol)

    async def query_consent(self: Any) -> None:
        # aioice 0.13 Connection.query_consent, plus the peer-check rule above.
        assert self.remote_password is not None
        failures = 0
        loop = asyncio.get_running_loop()
        last_round = loop.time()
        while True:
            await asyncio.sleep(aioice.ice.CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
            for pair in self._nominated.values():
                request = self.build_request(pair, nominate=False)
                try:
                    sent = loop.time()
                    await pair.protocol.request(
                        request,
                        pair.remote_addr,
                        integrity_key=self.remote_password.encode("utf8"),
                        retransmissions=0,
                    )
                    answered = loop.time()
                    self.__dict__[_CONSENT_RTT] = (answered - sent, answered)
                    failures = 0
                except aioice.stun.TransactionError:
                    seen = self.__dict__.get(_PEER_CHECKS, {}).get(tuple(pair.remote_addr[:2]))
                    failures = 0 if seen is not None and seen >= last_round else failures + 1
                if failures >= aioice.ice.CONSENT_FAILURES:
                    logger.info("ICE consent expired for %s", pair.remote_addr)
                    self._query_consent_task = None
                    await self.close()
                    return
            last_round = loop.time()

    connection_cls.check_incoming = check_incoming  # type: ignore[method-assign]
    connection_cls.query_consent = query_consent  # type: ignore[method-assign]
    connection_cls._relaycast_consent = True  # type: ignore[attr-defined]


# ------------------------------------------------------------------ capabilities

_H264_EXTRA_PROFILES = ("4d001f", "640c1f", "64001f")


def extend_codec_capabilities() -> None:
    """Let aiortc negotiate H.264 Main and High profiles too (idempotent).

    aiortc only lists the (constrained) Baseline profile because it must be able
    to decode what it negotiates.  The SFU never decodes, so any profile the
    publisher sends can be forwarded to viewers that accept it.
    """
    video = aiortc_codecs.CODECS["video"]
    present = {
        str(c.parameters.get("profile-level-id", "")).lower()
        for c in video
        if c.mimeType.lower() == "video/h264"
    }
    pt = max(c.payloadType or 0 for c in video) + 1
    for profile in _H264_EXTRA_PROFILES:
        if profile in present:
            continue
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=pt,
                rtcpFeedback=[
                    RTCRtcpFeedback(type="nack"),
                    RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="goog-remb"),
                ],
                parameters={
                    "level-asymmetry-allowed": "1",
                    "packetization-mode": "1",
                    "profile-level-id": profile,
                },
            )
        )
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90000, payloadType=pt + 1, parameters={"apt": pt}
            )
        )
        pt += 2


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """Codecs negotiated for a transceiver after ``setRemoteDescription`` (remote PTs)."""
    return list(transceiver._codecs)


def restrict_codecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """Replace the negotiated codecs before ``createAnswer`` (no partial answers)."""
    transceiver._codecs = [copy.deepcopy(c) for c in codecs]


def enable_transport_cc(transceiver: RTCRtpTransceiver, extension_id: int) -> None:
    """Answer transport-cc for a receiving transceiver (before ``createAnswer``).

    Adds ``a=rtcp-fb:<pt> transport-cc`` to its negotiated media codecs and the
    transport-wide sequence number extension (``a=extmap:<extension_id>``,
    draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) to its header extensions;
    aiortc knows neither, so its own negotiation drops both from every answer.  Once
    the transceiver receives, :func:`install_forwarding_receiver` records the sequence
    numbers and the transport sends feedback (:class:`TransportFeedback`).
    """
    for codec in transceiver._codecs:
        if not is_rtx(codec) and not any(fb.type == TRANSPORT_CC for fb in codec.rtcpFeedback):
            codec.rtcpFeedback.append(RTCRtcpFeedback(type=TRANSPORT_CC))
    extensions = transceiver._headerExtensions
    if not any(e.uri == TRANSPORT_CC_URI for e in extensions):
        transceiver._headerExtensions = [
            *extensions, RTCRtpHeaderExtensionParameters(id=extension_id, uri=TRANSPORT_CC_URI)]


def transport_cc_negotiated(parameters: Any) -> bool:
    """RTP parameters (send or receive) with transport-cc feedback on a codec and the
    transport-wide sequence number extension."""
    return any(e.uri == TRANSPORT_CC_URI for e in parameters.headerExtensions) and any(
        fb.type == TRANSPORT_CC for c in parameters.codecs for fb in c.rtcpFeedback)


class TransportFeedback:
    """Transport-wide congestion control feedback for one DTLS transport
    (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1).

    The sequence numbers are transport-wide, so the receivers of a bundled transport
    share one :class:`~sfu.twcc.TwccRecorder`; every 50 ms its feedback packets go
    upstream through :class:`RawRtpSender` (one SRTCP protect + ``sendto`` each).  The
    task ends when the last receiver using it stops or the transport closes.

    :ivar sent: feedback packets sent.
    """

    _by_transport: weakref.WeakKeyDictionary[RTCDtlsTransport, TransportFeedback] = (
        weakref.WeakKeyDictionary())

    def __init__(self, dtls: RTCDtlsTransport, sender_ssrc: int) -> None:
        self.recorder = TwccRecorder(sender_ssrc)
        self.sent = 0
        self._dtls = dtls
        self._sender = RawRtpSender(dtls)
        self._users = 0
        self._task = asyncio.ensure_future(self._run_feedback())
        self._task.add_done_callback(self._ended)

    @classmethod
    def acquire(cls, dtls: RTCDtlsTransport, sender_ssrc: int) -> TransportFeedback:
        """The transport's feedback (made on first use); :meth:`release` it when done."""
        feedback = cls._by_transport.get(dtls)
        if feedback is None or feedback._task.done():
            feedback = cls._by_transport[dtls] = cls(dtls, sender_ssrc)
        feedback._users += 1
        return feedback

    @classmethod
    def of(cls, dtls: RTCDtlsTransport) -> TransportFeedback | None:
        """The transport's feedback, if a receiver on it negotiated transport-cc."""
        return cls._by_transport.get(dtls)

    @property
    def running(self) -> bool:
        """The feedback loop runs (until the last receiver stops or the transport closes)."""
        return not self._task.done()

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self._task.cancel()

    def record(self, seq: int, media_ssrc: int) -> None:
        """A packet with transport-wide sequence number ``seq`` arrived now."""
        self.recorder.record(seq, time.monotonic_ns() // 1000, media_ssrc)

    async def _run_feedback(self) -> None:
        while self._dtls.state not in ("closed", "failed"):
            await asyncio.sleep(FEEDBACK_INTERVAL_S)
            if not self.recorder.pending:
                continue
            for packet in self.recorder.build_feedback():
                if self._sender.send_rtcp(packet):
                    self.sent += 1

    def _ended(self, task: asyncio.Future[None]) -> None:
        if self._by_transport.get(self._dtls) is self:
            del self._by_transport[self._dtls]  # the value holds its key: drop it by hand
        if not task.cancelled() and task.exception() is not None:
            logger.warning("transport feedback stopped: %r", task.exception())


# ----------------------------------------------------------------- publish side


def install_forwarding_receiver(
    receiver: RTCRtpReceiver, on_rtp: RtpCallback, on_rtcp: RtcpCallback
) -> None:
    """Make ``receiver`` forward instead of decode.

    ``on_rtp(packet, arrival_time_ms)`` gets each media packet (RTX unwrapped);
    ``on_rtcp(packet)`` each RTCP packet routed to this receiver (SR, BYE).
    Receiver reports and NACKs for lost packets keep going upstream via aiortc.
    When the receive parameters negotiated transport-cc (:func:`enable_transport_cc`),
    every packet's transport-wide sequence number is recorded on arrival — RTX and
    padding-only probes included, before any other check — and the transport's
    :class:`TransportFeedback` reports it.

    aiortc learns a publisher's RTX SSRC only from a second ``a=ssrc`` line.
    FFmpeg's WHIP muxer names it in ``a=ssrc-group:FID`` alone (RFC 5576 §4),
    so an RTX packet from an unknown SSRC is mapped to the media SSRC of its
    ``apt`` payload type (signalled, else the one seen) — without that every
    retransmission FFmpeg sent was dropped and losses were never repaired.
    """
    name = "_RTCRtpReceiver__"
    kind = getattr(receiver, name + "kind")
    nack_generator = NackGenerator() if kind == "video" else None
    original_rtcp = receiver._handle_rtcp_packet
    original_stop = receiver.stop
    media_ssrc: dict[int, int] = {}  # media payload type -> SSRC, for unsignalled RTX
    feedback: TransportFeedback | None = None

    async def receive(self: RTCRtpReceiver, parameters: Any) -> None:
        nonlocal feedback
        if getattr(self, name + "started"):
            return
        codecs = getattr(self, name + "codecs")
        rtx_ssrc = getattr(self, name + "rtx_ssrc")
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
            if encoding.ssrc:
                media_ssrc[encoding.payloadType] = encoding.ssrc
        if transport_cc_negotiated(parameters):
            feedback = TransportFeedback.acquire(self.transport, getattr(self, name + "rtcp_ssrc"))
        # No decoder thread: this is the whole point.
        self.transport._register_rtp_receiver(self, parameters)
        setattr(self, name + "rtcp_task", asyncio.ensure_future(self._run_rtcp()))
        setattr(self, name + "started", True)

    async def handle_rtp(self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int) -> None:
        if feedback is not None and packet.extensions.transport_sequence_number is not None:
            feedback.record(packet.extensions.transport_sequence_number, packet.ssrc)
        codecs = getattr(self, name + "codecs")
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        streams: dict[int, StreamStatistics] = getattr(self, name + "remote_streams")
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        if is_rtx(codec):
            rtx_ssrc = getattr(self, name + "rtx_ssrc")
            original_ssrc = rtx_ssrc.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original_ssrc is None and isinstance(apt, int):
                original_ssrc = media_ssrc.get(apt)  # RTX SSRC only in a=ssrc-group:FID
                if original_ssrc is not None:
                    rtx_ssrc[packet.ssrc] = original_ssrc
            if original_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        elif packet.payload_type not in media_ssrc:
            media_ssrc[packet.payload_type] = packet.ssrc
        if nack_generator is not None and nack_generator.add(packet):
            await self._send_rtcp_nack(packet.ssrc, sorted(nack_generator.missing))
        on_rtp(packet, arrival_time_ms)

    async def handle_rtcp(self: RTCRtpReceiver, packet: AnyRtcpPacket) -> None:
        await original_rtcp(packet)  # keeps LSR/DLSR for receiver reports
        on_rtcp(packet)

    async def stop(self: RTCRtpReceiver) -> None:
        nonlocal feedback
        if feedback is not None:
            feedback.release()
            feedback = None
        await original_stop()

    receiver.receive = MethodType(receive, receiver)  # type: ignore[method-assign]
    receiver.stop = MethodType(stop, receiver)  # type: ignore[method-assign]
    receiver._handle_rtp_packet = MethodType(handle_rtp, receiver)  # type: ignore[method-assign]
    receiver._handle_rtcp_packet = MethodType(handle_rtcp, receiver)  # type: ignore[method-assign]


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Awaitable[None]:
    """RTCP PLI upstream (RFC 4585 §6.3.1) for ``media_ssrc``."""
    return receiver._send_rtcp_pli(media_ssrc)


def receiver_has_started(receiver: RTCRtpReceiver) -> bool:
    return bool(getattr(receiver, "_RTCRtpReceiver__started"))  # noqa: B009 (name-mangled)


class ReceiveStatistics(NamedTuple):
    """One received RTP stream as aiortc counts it for its receiver reports (RFC 3550 §6.4.1,
    §A.3): packets expected (extended highest sequence number − first + 1) and received
    (duplicates included, retransmissions on their own RTX SSRC not), interarrival jitter in
    codec clock ticks (§A.8)."""

    packets_expected: int
    packets_received: int
    jitter_ticks: int


def receive_statistics(receiver: RTCRtpReceiver, ssrc: int) -> ReceiveStatistics | None:
    """aiortc's receive statistics of stream ``ssrc`` on ``receiver`` (``None``: none yet)."""
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    stats: StreamStatistics | None = streams.get(ssrc) if isinstance(streams, dict) else None
    if stats is None or stats.max_seq is None or stats.base_seq is None:
        return None
    return ReceiveStatistics(stats.packets_expected, stats.packets_received, stats.jitter)


def ice_round_trip_time(receiver: RTCRtpReceiver) -> float | None:
    """Round-trip time, s, of the last ICE consent check the peer answered on the receiver's
    transport (a STUN binding request/response on the nominated pair, RFC 7675 §5.1 — what
    W3C webrtc-stats calls the candidate pair's ``currentRoundTripTime``).  ``None`` when no
    check was answered in the last :data:`CONSENT_RTT_MAX_AGE_S` s: a peer that does not
    answer checks (FFmpeg's WHIP muxer), or the first ~5 s of a session."""
    try:
        connection = receiver.transport.transport._connection
        loop_time = asyncio.get_running_loop().time()
    except (AttributeError, RuntimeError):
        return None
    measured = connection.__dict__.get(_CONSENT_RTT)
    if measured is None or loop_time - measured[1] > CONSENT_RTT_MAX_AGE_S:
        return None
    return float(measured[0])


def transport_feedback(receiver: RTCRtpReceiver) -> TransportFeedback | None:
    """The feedback of ``receiver``'s transport (``None``: transport-cc not negotiated)."""
    return TransportFeedback.of(receiver.transport)


# ---------------------------------------------------------------- consume side


class SendParameters:
    """What a forwarding sender learned when aiortc started it."""

    __slots__ = ("ssrc", "rtx_ssrc", "codec", "rtx_payload_type", "mid", "cname", "extensions")

    def __init__(self, sender: RTCRtpSender, parameters: Any) -> None:
        self.ssrc: int = sender._ssrc
        self.rtx_ssrc: int = sender._rtx_ssrc
        self.codec: RTCRtpCodecParameters = parameters.codecs[0]
        self.rtx_payload_type: int | None = None
        for codec in parameters.codecs:
            if is_rtx(codec) and codec.parameters.get("apt") == self.codec.payloadType:
                self.rtx_payload_type = codec.payloadType
        self.mid: str | None = parameters.muxId
        self.cname: str | None = parameters.rtcp.cname
        self.extensions: dict[str, int] = {e.uri: e.id for e in parameters.headerExtensions}


def install_forwarding_sender(
    sender: RTCRtpSender,
    on_start: Callable[[SendParameters], None],
    on_rtcp: RtcpCallback,
) -> None:
    """Make ``sender`` a raw forwarding endpoint: no track reading, no encoder.

    ``on_start`` fires when the transport is connected and the sender would start;
    from then on the caller sends through :class:`RawRtpSender`.  RTCP the viewer
    sends for this sender's SSRC arrives at ``on_rtcp``.
    """
    state = {"started": False}

    async def send(self: RTCRtpSender, parameters: Any) -> None:
        if state["started"]:
            return
        state["started"] = True
        self.transport._register_rtp_sender(self, parameters)
        on_start(SendParameters(self, parameters))

    async def stop(self: RTCRtpSender) -> None:
        if state["started"]:
            state["started"] = False
            self.transport._unregister_rtp_sender(self)

    async def handle_rtcp(self: RTCRtpSender, packet: AnyRtcpPacket) -> None:
        on_rtcp(packet)

    sender.send = MethodType(send, sender)  # type: ignore[method-assign]
    sender.stop = MethodType(stop, sender)  # type: ignore[method-assign]
    sender._handle_rtcp_packet = MethodType(handle_rtcp, sender)  # type: ignore[method-assign]


class _Route:
    __slots__ = ("protect", "protect_rtcp", "sock_sendto", "transport", "addr")

    def __init__(self, srtp: Any, transport: Any, addr: Any) -> None:
        self.protect = srtp.protect
        self.protect_rtcp = srtp.protect_rtcp
        self.transport = transport
        self.addr = addr
        # asyncio's DatagramTransport.sendto adds ~1 µs of checks per call; the
        # raw socket's sendto is used directly and the transport only when the
        # socket buffer is full (it then queues, as it would have anyway).
        sock = getattr(transport, "_sock", None)
        self.sock_sendto = sock.sendto if sock is not None else None


class RawRtpSender:
    """Synchronous SRTP-protect-and-send on a connected DTLS transport.

    Skips aiortc's coroutine chain (``_send_rtp`` → ``Connection.send`` →
    ``sendto``): one ``protect`` and one ``sendto`` on the nominated ICE pair's
    socket per packet.  The route is resolved once and reused while the DTLS
    transport stays connected (no ICE restart exists to move it).  Errors
    (transport closed, no nominated pair, socket errors) are counted in
    ``dropped``, never raised.
    """

    __slots__ = ("_dtls", "_route", "dropped")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._route: _Route | None = None
        self.dropped = 0

    def _resolve(self) -> _Route | None:
        self._route = None
        dtls = self._dtls
        if dtls._state != State.CONNECTED or dtls._tx_srtp is None:
            return None
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return None
        self._route = _Route(dtls._tx_srtp, pair.protocol.transport, pair.remote_addr)
        return self._route

    def _send(self, route: _Route, data: bytes) -> bool:
        try:
            if route.sock_sendto is None or route.transport._buffer:
                route.transport.sendto(data, route.addr)
            else:
                route.sock_sendto(data, route.addr)
            return True
        except (BlockingIOError, InterruptedError):
            route.transport.sendto(data, route.addr)
            return True
        except OSError:
            self.dropped += 1
            return False

    def send_rtp(self, data: bytes) -> bool:
        route = self._route
        if route is None or self._dtls._state is not State.CONNECTED:
            route = self._resolve()
            if route is None:
                self.dropped += 1
                return False
        return self._send(route, route.protect(data))

    def send_rtcp(self, data: bytes) -> bool:
        route = self._route
        if route is None or self._dtls._state is not State.CONNECTED:
            route = self._resolve()
            if route is None:
                return False
        return self._send(route, route.protect_rtcp(data))

    @property
    def connected(self) -> bool:
        return self._resolve() is not None


def set_receive_buffer(pc: Any, size: int) -> int:
    """Raise ``SO_RCVBUF`` (bytes, capped by ``net.core.rmem_max``) on every ICE socket of ``pc``.

    A publisher's key frame arrives as a burst of ~100 packets while the event
    loop may be busy fanning out the previous ones; the kernel default
    (~208 KiB) then drops ingest packets at a few hundred viewers.  Returns the
    number of sockets changed.
    """
    changed = 0
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in getattr(connection, "_protocols", []):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None or id(sock) in seen:
                continue
            seen.add(id(sock))
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                changed += 1
            except OSError:
                pass
    return changed
