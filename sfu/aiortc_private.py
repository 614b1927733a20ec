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
  checks the peer answered (:func:`ice_round_trip_time`);
* a simulcast publisher's streams (RFC 8853) are told apart and repaired per SSRC: the
  RtpStreamId / RepairedRtpStreamId header extensions are negotiated
  (:func:`enable_header_extension`), RTX is mapped by RepairedRtpStreamId, NACKs are
  generated per stream (:func:`install_forwarding_receiver`);
* a viewer's transport-cc feedback (RTPFB FMT 15), which aiortc misreads as a NACK, reaches
  the viewer's bandwidth estimator raw (:func:`install_rtcp_tap`);
* ICE restarts (RFC 9725 §4.3.3; aioice has none): :func:`restart_ice` on the SFU, and
  :func:`begin_ice_restart` / :func:`complete_ice_restart` for aiortc test clients;
  :class:`RawRtpSender` follows the newly nominated pair.

An aiortc upgrade should only ever require changes here.  Tested against aiortc
1.14–1.16 and aioice 0.9–0.13.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import logging
import random
import secrets
import socket
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import MethodType
from typing import Any, NamedTuple

import aioice.ice
import aioice.stun
import aioice.turn
import pylibsrtp
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import codecs as aiortc_codecs
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcicetransport import RTCIceCandidate, candidate_from_aioice, candidate_to_aioice
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import AnyRtcpPacket, RtpPacket, unwrap_rtx

from common import latm

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


# ------------------------------------------------------------------ ICE restart
# aioice has no ICE restart: the functions below drive its Connection's check list by hand
# (written against aioice 0.13's Connection: _check_list, _check_list_state, _nominated,
# _early_checks, _remote_candidates, _protocols).

ICE_RESTART_TIMEOUT_S = 30.0
"""How long, s, the checks of a restarted ICE session run before the restart counts as
failed; the previously selected pair then stays in use until its consent expires
(RFC 7675 §5.1), which ends the session."""
CHECK_PACING_S = 0.02
"""Ta, s: one ordinary connectivity check starts per interval (RFC 8445 §6.1.4.2; aioice's
pace in ``Connection.connect``)."""
_ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class IceRestartUnavailable(RuntimeError):
    """ICE cannot be restarted now: the first connectivity checks have not selected a pair
    yet, or the connection is closed (the session keeps its ICE state)."""


class _Restart:
    """One ICE restart of an aioice ``Connection`` in progress (RFC 8445 §9).

    ``previous``: the pairs selected before it, per component; they keep carrying media
    (and consent checks, with the new credentials) until a pair of the new generation is
    nominated.  ``gone``: client side, the sockets of an address that went away, closed
    once the new pair is selected."""

    __slots__ = ("previous", "state", "task", "gone")

    def __init__(self, previous: dict[int, Any]) -> None:
        # weak: an entry of _restarts must not keep its connection alive
        self.previous = {component: weakref.ref(pair) for component, pair in previous.items()}
        self.state: asyncio.Queue[int] | None = None
        self.task: asyncio.Task[bool] | None = None
        self.gone: list[Any] = []

    def waiting(self, connection: Any) -> bool:
        """No pair of the new generation is nominated for every component yet."""
        nominated = connection._nominated
        return len(nominated) < len(connection._components) or any(
            (ref := self.previous.get(component)) is not None and pair is ref()
            for component, pair in nominated.items())


_restarts: weakref.WeakKeyDictionary[Any, _Restart] = weakref.WeakKeyDictionary()
_raw_senders: weakref.WeakKeyDictionary[Any, weakref.WeakSet[RawRtpSender]] = (
    weakref.WeakKeyDictionary())


def enable_ice_restart() -> None:
    """Let aioice connections restart ICE and raw senders follow the selected pair
    (process-wide, idempotent).

    aioice completes a check list once every component has a nominated pair; during a
    restart the previous generation's pair is still nominated (it carries the media), so a
    restarting connection completes only when each component's nominated pair is a new one.
    Whenever the nominated pair changes (a restart, or a peer nominating another pair), the
    :class:`RawRtpSender` routes on that connection are dropped and re-resolved on their
    next packet — they cache the pair's socket and address, nothing is looked up per packet.
    """
    connection_cls = aioice.ice.Connection
    if getattr(connection_cls, "_relaycast_restart", False):
        return
    original_maybe_complete = connection_cls._check_list_maybe_complete

    def _check_list_maybe_complete(self: Any) -> bool:
        restart = _restarts.get(self)
        if restart is not None and restart.waiting(self):
            return False
        _follow_nominated(self)
        return bool(original_maybe_complete(self))

    connection_cls._check_list_maybe_complete = _check_list_maybe_complete  # type: ignore[method-assign]
    connection_cls._relaycast_restart = True  # type: ignore[attr-defined]


def _follow_nominated(connection: Any) -> None:
    """Drop the routes of raw senders whose pair is no longer the nominated one."""
    senders = _raw_senders.get(connection)
    if not senders:
        return
    pair = connection._nominated.get(1)
    for sender in list(senders):
        if sender._pair is not pair:
            sender._route = None


def _register_raw_sender(connection: Any, sender: RawRtpSender) -> None:
    try:
        senders = _raw_senders.get(connection)
        if senders is None:
            senders = _raw_senders[connection] = weakref.WeakSet()
    except TypeError:  # a stand-in connection without weak references (benchmarks)
        return
    senders.add(sender)


def _ice_string(length: int) -> str:
    """Random ice-chars (RFC 8839 §5.4) from a CSPRNG."""
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))


def _ice_transport(pc: Any) -> Any:
    """The one connected ICE transport of a max-bundle peer connection (RFC 9725 §4.4).

    :raises IceRestartUnavailable: none has selected a pair yet, or it is closed.
    :raises ValueError: several transports carry media (not bundled).
    """
    transports: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        transports[id(ice)] = ice
    if pc.sctp is not None:
        ice = pc.sctp.transport.transport
        transports[id(ice)] = ice
    connected = [t for t in transports.values()
                 if t._connection._nominated and not t._connection._closing]
    if not connected:
        raise IceRestartUnavailable("ICE has not selected a candidate pair (or is closed)")
    if len(connected) > 1:
        raise ValueError("the peer connection has several ICE transports (not max-bundle)")
    return connected[0]


def _check_credentials(ufrag: str, pwd: str) -> None:
    """:raises ValueError: not an ice-ufrag (4–256 ice-chars) / ice-pwd (22–256), RFC 8839 §5.4."""
    aioice.ice.validate_username(ufrag)
    aioice.ice.validate_password(pwd)


def _new_generation(connection: Any, restart: _Restart, remote_ufrag: str, remote_pwd: str) -> None:
    """Drop the previous generation's check list and remote candidates and take the peer's
    new credentials (RFC 8445 §9); the nominated pairs stay until new ones are nominated."""
    for pair in connection._check_list:
        if pair.task is not None:
            pair.task.cancel()
    restart.state = asyncio.Queue()
    connection._check_list = []
    connection._check_list_state = restart.state
    connection._check_list_done = False
    connection._nominating.clear()
    connection._remote_candidates = []
    connection._remote_candidates_end = False
    connection.remote_username = remote_ufrag
    connection.remote_password = remote_pwd


def _supersede(connection: Any) -> _Restart:
    """A new restart of ``connection``; one still running is cancelled, its gone sockets kept."""
    if connection._closing:
        raise IceRestartUnavailable("the ICE connection is closed")
    running = _restarts.pop(connection, None)
    restart = _Restart(dict(connection._nominated))  # still the previous generation's pairs
    if running is not None:
        if running.task is not None:
            running.task.cancel()
        restart.gone = running.gone
    return restart


async def _add_remote_candidates(ice: Any, candidates: Sequence[Any], end_of_candidates: bool) -> None:
    connection = ice._connection
    ice.iceGatherer._remote_candidates_end = False  # aiortc's flag: trickle goes on after a restart
    for candidate in candidates:
        await connection.add_remote_candidate(candidate_to_aioice(candidate))
    if end_of_candidates:
        ice.iceGatherer._remote_candidates_end = True
        await connection.add_remote_candidate(None)
    connection.sort_check_list()
    connection._unfreeze_initial()


async def _run_checks(connection: Any, restart: _Restart, timeout_s: float) -> bool:
    """Ordinary checks of the new generation, paced like aioice's ``connect`` (triggered
    checks start on their own, RFC 8445 §7.3.1.4) until a new pair is nominated for every
    component, the check list fails, the connection closes or ``timeout_s`` passes.
    :returns: whether the restart selected a new pair."""
    result = aioice.ice.ICE_FAILED
    assert restart.state is not None
    try:
        async with asyncio.timeout(timeout_s):
            while connection._check_periodic():
                await asyncio.sleep(CHECK_PACING_S)
            result = await restart.state.get()
    except TimeoutError:
        logger.info("ICE restart of %r: no new pair within %g s", connection, timeout_s)
    if _restarts.get(connection) is not restart:
        return False  # superseded by a newer restart meanwhile
    del _restarts[connection]
    connection._check_list_done = True
    for pair in connection._check_list:
        if pair.task is not None:
            pair.task.cancel()
    if result == aioice.ice.ICE_COMPLETED:
        for protocol in restart.gone:  # no longer nominated: closing it ends nothing
            await protocol.close()
        return True
    connection._protocols.extend(restart.gone)  # still carries the selected pair; closed with it
    return False


async def restart_ice(
    pc: Any,
    remote_ufrag: str,
    remote_pwd: str,
    remote_candidates: Sequence[RTCIceCandidate],
    *,
    end_of_candidates: bool = False,
    timeout_s: float = ICE_RESTART_TIMEOUT_S,
) -> tuple[str, str, list[RTCIceCandidate]]:
    """Restart ICE on the server side of ``pc`` (RFC 9725 §4.3.3, RFC 8445 §9).

    The peer's new ``remote_ufrag`` / ``remote_pwd`` (and its first candidates of the new
    generation) replace the old ones; the server takes a new ufrag (8 ice-chars) and pwd
    (24 ice-chars, ~143 bits) for the same host sockets, so its candidates keep their
    addresses.  The check list starts over in the background: the peer's checks arrive on
    those sockets as before, and one from an address it did not signal becomes a
    peer-reflexive candidate (RFC 8445 §7.3.1.3).  Media, DTLS and SRTP keep using the
    previously selected pair until the peer nominates a new one; :class:`RawRtpSender`
    then moves to it; consent checks (RFC 7675) use the new credentials.  A restart while
    another runs supersedes it.

    :param remote_candidates: the fragment's candidates (``sdpMid`` not needed).
    :returns: ``(local_ufrag, local_pwd, local_candidates)`` for the 200 response.
    :raises ValueError: malformed credentials (RFC 8839 §5.4) or an unbundled ``pc``.
    :raises IceRestartUnavailable: ICE has not selected a pair yet, or it is closed.
    """
    enable_ice_restart()
    _check_credentials(remote_ufrag, remote_pwd)
    ice = _ice_transport(pc)
    connection = ice._connection
    if not connection._check_list_done and connection not in _restarts:
        raise IceRestartUnavailable("the first ICE checks are still running")
    restart = _supersede(connection)
    local_ufrag, local_pwd = _ice_string(8), _ice_string(24)
    connection._local_username, connection._local_password = local_ufrag, local_pwd
    _restarts[connection] = restart
    _new_generation(connection, restart, remote_ufrag, remote_pwd)
    await _add_remote_candidates(ice, remote_candidates, end_of_candidates)
    restart.task = asyncio.ensure_future(_run_checks(connection, restart, timeout_s))
    restart.task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return local_ufrag, local_pwd, [candidate_from_aioice(c) for c in connection.local_candidates]


class _GoneTransport:
    """The socket of a network address that went away: sends nothing, is closed later."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def sendto(self, data: bytes, addr: Any = None) -> None:
        pass

    def close(self) -> None:
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


async def _rebind_host_sockets(connection: Any) -> list[Any]:
    """New host sockets (new ports) on the same addresses; the old ones go silent (nothing
    sent, everything received dropped), as when the network under them changes.
    :returns: the old protocols."""
    loop = asyncio.get_running_loop()
    gone, fresh, kept = [], [], []
    for protocol in connection._protocols:
        old = protocol.local_candidate
        if old.type != "host":
            kept.append(protocol)
            continue
        transport, new = await loop.create_datagram_endpoint(
            lambda: aioice.ice.StunProtocol(connection), local_addr=(old.host, 0))
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as aioice's own host sockets
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
        host, port = transport.get_extra_info("sockname")[:2]
        new.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host), component=old.component,
            transport="udp", priority=candidate_priority(old.component, "host"), host=host,
            port=port, type="host")
        protocol.transport = _GoneTransport(protocol.transport)
        protocol.datagram_received = lambda data, addr: None
        gone.append(protocol)
        fresh.append(new)
    connection._protocols = fresh + kept
    connection._local_candidates = [p.local_candidate for p in connection._protocols]
    return gone


async def begin_ice_restart(pc: Any, *, rebind: bool = False) -> tuple[str, str, list[RTCIceCandidate]]:
    """Client side, step 1 of an ICE restart (an aiortc WHIP/WHEP client, RFC 9725 §4.3.3):
    new local credentials for the PATCH fragment.

    The peer's checks with the new credentials are answered at once and acted on in
    :func:`complete_ice_restart` (RFC 8445 §7.3).  With ``rebind`` the host sockets move
    to new ports and the old ones go silent — the client's address changes, as when a
    phone moves from Wi-Fi to cellular; media stops until the restart completes.

    :returns: ``(ufrag, pwd, candidates)`` to send (candidates: the current host ones).
    :raises IceRestartUnavailable: ICE has not selected a pair yet, or it is closed.

    When the PATCH is refused, call this again for another try, or close ``pc`` and open a
    new session (after ``rebind`` the old address stays silent).
    """
    enable_ice_restart()
    ice = _ice_transport(pc)
    connection = ice._connection
    restart = _supersede(connection)
    ufrag, pwd = _ice_string(8), _ice_string(24)
    connection._local_username, connection._local_password = ufrag, pwd
    connection.remote_username = None  # any peer ufrag until complete_ice_restart
    connection._early_checks.clear()
    connection._early_checks_done = False
    _restarts[connection] = restart
    if rebind:
        restart.gone.extend(await _rebind_host_sockets(connection))
    return ufrag, pwd, [candidate_from_aioice(c) for c in connection.local_candidates]


async def complete_ice_restart(
    pc: Any,
    remote_ufrag: str,
    remote_pwd: str,
    remote_candidates: Sequence[RTCIceCandidate],
    *,
    end_of_candidates: bool = True,
    timeout_s: float = 10.0,
) -> None:
    """Client side, step 2: the server's new credentials and candidates (the PATCH's 200
    fragment); runs the checks as the controlling agent and returns once a new pair is
    nominated (RFC 8445 §8.1).  The old address's sockets (``rebind``) are closed then.

    :raises ValueError: malformed credentials (RFC 8839 §5.4).
    :raises IceRestartUnavailable: no :func:`begin_ice_restart` before.
    :raises ConnectionError: no new pair within ``timeout_s`` (the previous pair stays).
    """
    _check_credentials(remote_ufrag, remote_pwd)
    ice = _ice_transport(pc)
    connection = ice._connection
    restart = _restarts.get(connection)
    if restart is None or restart.state is not None:
        raise IceRestartUnavailable("begin_ice_restart was not called")
    _new_generation(connection, restart, remote_ufrag, remote_pwd)
    await _add_remote_candidates(ice, remote_candidates, end_of_candidates)
    for early in connection._early_checks:  # answered already, acted on now
        connection.check_incoming(*early)
    connection._early_checks.clear()
    connection._early_checks_done = True
    restart.task = asyncio.ensure_future(_run_checks(connection, restart, timeout_s))
    if not await restart.task:
        raise ConnectionError("the ICE restart selected no new candidate pair")


def selected_candidate_pair(pc: Any) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """``((local address, port), (remote address, port))`` of the pair ``pc`` sends on
    (W3C webrtc-pc ``RTCIceTransport.getSelectedCandidatePair``); ``None`` before one is
    selected."""
    try:
        pair = _ice_transport(pc)._connection._nominated.get(1)
    except (IceRestartUnavailable, ValueError):
        return None
    if pair is None:
        return None
    return (pair.local_addr[0], pair.local_addr[1]), (pair.remote_addr[0], pair.remote_addr[1])


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


def add_latm_capability() -> None:
    """Let aiortc negotiate AAC as MP4A-LATM (RFC 6416; :mod:`common.latm`) too (idempotent).

    aiortc never encodes or decodes it here: the RTMP/SRT relay sends the encoder's AAC this
    way and the SFU only forwards it (to the LL-HLS bridge and node-to-node pipes, never to
    WebRTC viewers: :func:`sfu.negotiation.publish_track`).  aiortc then lists it in the
    offers of audio transceivers without codec preferences too, after Opus.
    """
    audio = aiortc_codecs.CODECS["audio"]
    if any(c.mimeType.lower() == latm.MIME_TYPE.lower() for c in audio):
        return
    used = {c.payloadType for kind in ("audio", "video") for c in aiortc_codecs.CODECS[kind]}
    audio.append(RTCRtpCodecParameters(
        mimeType=latm.MIME_TYPE, clockRate=latm.CLOCK_RATE,
        payloadType=next(pt for pt in range(96, 128) if pt not in used), parameters=dict(latm.FMTP)))


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


def enable_header_extension(transceiver: RTCRtpTransceiver, uri: str, extension_id: int) -> None:
    """Answer (and parse) the RTP header extension ``uri`` with the offer's id on a transceiver
    (before ``createAnswer``): aiortc negotiates only the extensions it implements, so the
    simulcast RtpStreamId / RepairedRtpStreamId (RFC 8852 §3–4) would be dropped from the
    answer, and RTP packets would be parsed without them."""
    extensions = transceiver._headerExtensions
    if not any(e.uri == uri for e in extensions):
        transceiver._headerExtensions = [
            *extensions, RTCRtpHeaderExtensionParameters(id=extension_id, uri=uri)]


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

    Simulcast (RFC 8853): each stream of a publisher arrives on its own SSRC, routed here by
    payload type; each media SSRC gets its own NACK generator (aiortc's keeps one sequence
    space), and an RTX packet from an unknown SSRC is mapped to its stream's media SSRC by its
    RepairedRtpStreamId (RFC 8852 §4) — aiortc maps RTX only through ``a=ssrc-group:FID``,
    which simulcast offers from browsers do not carry.  The caller tells the streams apart
    by the RtpStreamId in ``packet.extensions.rtp_stream_id`` (sent until the SFU's receiver
    reports name the SSRC; it must remember SSRC → rid itself).

    aiortc learns a publisher's RTX SSRC only from a second ``a=ssrc`` line.
    FFmpeg's WHIP muxer names it in ``a=ssrc-group:FID`` alone (RFC 5576 §4),
    so an RTX packet from an unknown SSRC is mapped to the media SSRC of its
    ``apt`` payload type (signalled, else the one seen) — without that every
    retransmission FFmpeg sent was dropped and losses were never repaired.
    """
    name = "_RTCRtpReceiver__"
    kind = getattr(receiver, name + "kind")
    nack_generators: dict[int, NackGenerator] = {}  # media SSRC -> its NACK state (video)
    original_rtcp = receiver._handle_rtcp_packet
    original_stop = receiver.stop
    media_ssrc: dict[int, int] = {}  # media payload type -> SSRC, for unsignalled RTX
    rid_ssrc: dict[str, int] = {}  # RtpStreamId -> media SSRC (simulcast, RFC 8852 §3)
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
            if original_ssrc is None:
                repaired = packet.extensions.repaired_rtp_stream_id
                if repaired is not None:  # simulcast RTX names its stream (RFC 8852 §4)
                    original_ssrc = rid_ssrc.get(repaired)
                elif isinstance(apt, int) and not rid_ssrc:
                    original_ssrc = media_ssrc.get(apt)  # RTX SSRC only in a=ssrc-group:FID
                if original_ssrc is not None:
                    rtx_ssrc[packet.ssrc] = original_ssrc
            if original_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        else:
            rid = packet.extensions.rtp_stream_id
            if rid is not None and rid_ssrc.get(rid) != packet.ssrc:
                rid_ssrc[rid] = packet.ssrc
            if packet.payload_type not in media_ssrc:
                media_ssrc[packet.payload_type] = packet.ssrc
        if kind == "video":
            generator = nack_generators.get(packet.ssrc)
            if generator is None:
                generator = nack_generators[packet.ssrc] = NackGenerator()
            if generator.add(packet):
                await self._send_rtcp_nack(packet.ssrc, sorted(generator.missing))
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


# -------------------------------------------------------- consume side: RTCP tap

_RTCP_TAP = "_relaycast_rtcp_tap"  # RTCDtlsTransport attribute: the on_feedback callback


def split_transport_feedback(data: bytes, on_feedback: Callable[[bytes], None], fmt: int = 15) -> bytes:
    """Hand each RTCP transport-layer feedback packet of FMT ``fmt`` (RTPFB; 15: transport-cc,
    draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1; 9: PAUSE-RESUME, RFC 7728 §8)
    of the compound RTCP packet ``data`` (RFC 3550 §6.1, already SRTCP-unprotected) to
    ``on_feedback`` as raw bytes, and return the compound without them (``data`` itself
    when it holds none; ``b""`` when it held nothing else).  A truncated tail is left in
    the rest, for aiortc to reject.
    """
    n = len(data)
    pos = 0
    kept: list[bytes] | None = None
    while pos + 4 <= n:
        first = data[pos]
        end = pos + (((data[pos + 2] << 8) | data[pos + 3]) + 1) * 4
        if end > n:
            break
        if first >> 6 == 2 and first & 0x1F == fmt and data[pos + 1] == 205:
            if kept is None:
                kept = [data[:pos]]
            on_feedback(data[pos:end])
        elif kept is not None:
            kept.append(data[pos:end])
        pos = end
    if kept is None:
        return data
    kept.append(data[pos:])
    return b"".join(kept)


def install_rtcp_tap(dtls_transport: RTCDtlsTransport, on_feedback: Callable[[bytes], None]) -> None:
    """Deliver the viewer's transport-cc feedback on ``dtls_transport`` (one instance) to
    ``on_feedback(packet: bytes)``, one raw RTPFB FMT 15 packet per call (§3.1).

    aiortc parses FMT 15 as a generic NACK (RFC 4585 §6.2.1) and drops its FCI; a feedback
    packet with RTCP padding even makes it reject the whole compound packet — the NACK or
    receiver report beside it included.  The tap takes the FMT 15 packets out of each
    compound packet before aiortc parses it; aiortc's own handling (receiver reports, NACK,
    PLI, REMB routed to the senders) continues with the rest.  Installing again replaces the
    callback.  An exception from ``on_feedback`` is logged, not raised into aiortc's receive
    loop (it would end the transport).
    """
    already = getattr(dtls_transport, _RTCP_TAP, None) is not None
    setattr(dtls_transport, _RTCP_TAP, on_feedback)
    if already:
        return
    original = dtls_transport._handle_rtcp_data

    def deliver(packet: bytes) -> None:
        try:
            getattr(dtls_transport, _RTCP_TAP)(packet)
        except Exception:  # noqa: BLE001 — the receive loop must go on
            logger.exception("transport feedback callback failed")

    async def handle_rtcp_data(self: RTCDtlsTransport, data: bytes) -> None:
        rest = split_transport_feedback(data, deliver)
        if rest:
            await original(rest)

    dtls_transport._handle_rtcp_data = MethodType(handle_rtcp_data, dtls_transport)  # type: ignore[method-assign]
    setattr(dtls_transport, _RTCP_DELIVER, (deliver, original))


def install_pause_resume_listener(dtls_transport: RTCDtlsTransport, on_packet: Callable[[bytes], None]) -> None:
    """Deliver each RTCP PAUSE-RESUME packet (RTPFB FMT 9, RFC 7728 §8) arriving on
    ``dtls_transport`` to ``on_packet(packet: bytes)`` (install once per transport).

    Its media source SSRC is 0 (the targets are in the FCI), so aiortc, which routes
    feedback by that field, would drop it — after parsing it as a generic NACK.  The rest
    of each compound packet goes to aiortc as before.  An exception from ``on_packet`` is
    logged, never raised into aiortc's receive loop."""
    original = dtls_transport._handle_rtcp_data

    def deliver(packet: bytes) -> None:
        try:
            on_packet(packet)
        except Exception:  # noqa: BLE001 — the receive loop must go on
            logger.exception("pause-resume callback failed")

    async def handle_rtcp_data(self: RTCDtlsTransport, data: bytes) -> None:
        rest = split_transport_feedback(data, deliver, fmt=9)
        if rest:
            await original(rest)

    dtls_transport._handle_rtcp_data = MethodType(handle_rtcp_data, dtls_transport)  # type: ignore[method-assign]


def send_receiver_rtcp(receiver: RTCRtpReceiver, build: Callable[[int], bytes]) -> Awaitable[None] | None:
    """Send the RTCP packet ``build(sender_ssrc)`` upstream on ``receiver``'s transport
    (SRTCP-protected), ``sender_ssrc`` being the receiver's own RTCP SSRC; None (nothing
    sent) before the receiver started."""
    ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
    if ssrc is None or not receiver_has_started(receiver):
        return None
    return receiver.transport._send_rtp(build(ssrc))  # type: ignore[no-any-return]


def enable_feedback(transceiver: RTCRtpTransceiver, feedback: RTCRtcpFeedback) -> None:
    """Answer ``feedback`` (an ``a=rtcp-fb`` the offer had and aiortc's negotiation dropped,
    knowing only its own) on the transceiver's media codecs (before ``createAnswer``)."""
    for codec in transceiver._codecs:
        if not is_rtx(codec) and feedback not in codec.rtcpFeedback:
            codec.rtcpFeedback.append(feedback)


_RTCP_DELIVER = "_relaycast_rtcp_deliver"  # RTCDtlsTransport: (deliver, aiortc's own handler)
_DIRECT = "_relaycast_rtcp_direct"  # aioice protocol attribute: the hook is installed


def receive_rtcp_directly(dtls_transport: RTCDtlsTransport) -> int:
    """Take a connected viewer transport's SRTCP out of aiortc's receive loop (call after
    :func:`install_rtcp_tap`, once the transport is connected; idempotent).

    A browser sends transport-cc feedback every 50 ms — at 200 viewers 4,000 datagrams a
    second, each costing ~25 µs in aiortc's path (aioice queue, the DTLS transport's receive
    coroutine, SRTCP unprotect, parse, routing) before the estimator sees it.  Here the
    ICE socket's datagram callback unprotects SRTCP itself (RFC 3711 §3.4) and hands the
    feedback to the tap synchronously; anything else in the packet (receiver reports, NACK,
    PLI, REMB) still goes to aiortc's handler, in a task.  RTP, DTLS and STUN are untouched.
    Returns the number of ICE sockets hooked (0: not connected yet — call again later).
    """
    tap = getattr(dtls_transport, _RTCP_DELIVER, None)
    if tap is None or dtls_transport._state != State.CONNECTED or dtls_transport._rx_srtp is None:
        return 0
    deliver, original = tap
    unprotect_rtcp = srtp_function(dtls_transport._rx_srtp, "unprotect_rtcp")
    hooked = 0
    for protocol in getattr(dtls_transport.transport._connection, "_protocols", []):
        if getattr(protocol, _DIRECT, False):
            hooked += 1
            continue
        received = protocol.datagram_received

        def datagram_received(data: bytes, addr: Any, received: Any = received) -> None:
            # RFC 5761 §4 / RFC 7983: version 2, then an RTCP packet type (aiortc's is_rtcp)
            if len(data) > 22 and 127 < data[0] < 192 and 191 < data[1] < 209:
                try:
                    plain = unprotect_rtcp(data)
                except pylibsrtp.Error:
                    return
                rest = split_transport_feedback(plain, deliver)
                if rest:
                    task = asyncio.ensure_future(original(rest))
                    task.add_done_callback(_rtcp_task_done)
                return
            received(data, addr)

        protocol.datagram_received = datagram_received
        setattr(protocol, _DIRECT, True)
        hooked += 1
    return hooked


def _rtcp_task_done(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("RTCP handling failed: %r", task.exception())


_SRTP_TRAILERS = {"protect": "SRTP_MAX_TRAILER_LEN", "protect_rtcp": "SRTP_MAX_SRTCP_TRAILER_LEN",
                  "unprotect": None, "unprotect_rtcp": None}


def srtp_function(session: pylibsrtp.Session, operation: str = "protect") -> Callable[[bytes], bytes]:
    """``session.protect`` (or ``protect_rtcp``, ``unprotect``, ``unprotect_rtcp``: RFC 3711
    §3.3, §3.4) without pylibsrtp's per-call overhead: its methods go through two Python
    frames, a type check and a fresh ``int *`` on every packet; this reuses one length cell
    and the session's own 1,500-byte buffer (pylibsrtp internals, hence here).  Same output,
    same errors (:class:`pylibsrtp.Error`; ``ValueError`` for a packet too long for the
    buffer).  Falls back to the session's method if pylibsrtp's internals are not what
    this expects.

    :raises KeyError: an unknown ``operation``.
    """
    trailer_name = _SRTP_TRAILERS[operation]
    method = getattr(session, operation)
    try:
        from pylibsrtp._binding import ffi, lib

        cdata = session._cdata
        buffer = session._buffer
        srtp_t = session._srtp[0]
        limit = len(cdata) - (getattr(pylibsrtp, trailer_name) if trailer_name else 0)
        fail = pylibsrtp._srtp_assert
        function = getattr(lib, "srtp_" + operation)
    except (ImportError, AttributeError, TypeError):
        return method  # type: ignore[no-any-return]
    length = ffi.new("int *")

    def process(data: bytes) -> bytes:
        size = len(data)
        if size > limit:
            return method(data)  # type: ignore[no-any-return]  # raises ValueError, as pylibsrtp does
        length[0] = size
        buffer[0:size] = data
        status = function(srtp_t, cdata, length)
        if status:
            fail(status)
        return buffer[0:length[0]]  # type: ignore[no-any-return]

    return process


class _Gso:
    """Linux UDP generic segmentation offload (``UDP_SEGMENT``, Linux 4.18): whether this
    process still uses it, and its limits."""

    UDP_SEGMENT = 103  # <linux/udp.h>; Python's socket module does not name it
    MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS
    MAX_BYTES = 65000  # under the 65,507-byte UDP payload limit

    def __init__(self) -> None:
        self.enabled = hasattr(socket, "SOL_UDP") and hasattr(socket.socket, "sendmsg")

    UNSUPPORTED = frozenset((errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP))
    """What the kernel answers when it cannot segment a send (no checksum offload on the
    route's device, an old kernel, a segment it refuses)."""

    @staticmethod
    def size_option(size: int) -> bytes:
        """The ``UDP_SEGMENT`` control message's data: the segment size, a host-order u16."""
        return size.to_bytes(2, sys.byteorder)

    def disable(self, exc: OSError) -> None:
        if self.enabled:
            self.enabled = False
            logger.info("UDP segmentation offload unavailable (%s): sending packet by packet", exc)


_gso = _Gso()


class _Route:
    __slots__ = ("protect", "protect_rtcp", "sock_sendto", "sock_sendmsg", "transport", "addr")

    def __init__(self, srtp: Any, transport: Any, addr: Any) -> None:
        self.protect = srtp_function(srtp)  # srtp (and srtp_t) live as long as the method
        self.protect_rtcp = srtp.protect_rtcp
        self.transport = transport
        self.addr = addr
        # asyncio's DatagramTransport.sendto adds ~1 µs of checks per call; the
        # raw socket's sendto is used directly and the transport only when the
        # socket buffer is full (it then queues, as it would have anyway).
        sock = getattr(transport, "_sock", None)
        self.sock_sendto = sock.sendto if sock is not None else None
        self.sock_sendmsg = sock.sendmsg if sock is not None else None


class RawRtpSender:
    """Synchronous SRTP-protect-and-send on a connected DTLS transport.

    Skips aiortc's coroutine chain (``_send_rtp`` → ``Connection.send`` →
    ``sendto``): one ``protect`` and one ``sendto`` on the nominated ICE pair's
    socket per packet.  The route is resolved once and reused while the DTLS
    transport stays connected and its nominated pair stays the same: when the
    pair changes (an ICE restart, :func:`restart_ice`) the route is dropped and
    resolved again on the next packet (:func:`enable_ice_restart`).  Errors
    (transport closed, no nominated pair, socket errors) are counted in
    ``dropped``, never raised.
    """

    __slots__ = ("_dtls", "_route", "_pair", "dropped", "__weakref__")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._route: _Route | None = None
        self._pair: Any = None  # the nominated ICE pair the route was resolved for
        self.dropped = 0

    def _resolve(self) -> _Route | None:
        self._route = None
        dtls = self._dtls
        if dtls._state != State.CONNECTED or dtls._tx_srtp is None:
            return None
        connection = dtls.transport._connection
        pair = connection._nominated.get(1)
        if pair is None or pair.protocol.transport is None:
            return None
        self._pair = pair
        _register_raw_sender(connection, self)  # dropped when the nominated pair changes
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

    def send_rtp_many(self, packets: Sequence[bytes]) -> int:
        """Protect and send ``packets`` in order; returns how many went out (the rest are
        counted in ``dropped``).

        A run of protected packets of one size (the last of a run may be shorter: the
        FU-A fragments of a frame, cut equal) goes to the kernel in one ``sendmsg`` with
        Linux UDP generic segmentation offload (``UDP_SEGMENT``), which cuts it back into
        the same datagrams: one system call per run instead of one per packet.  Where the
        kernel or the route cannot (no raw socket: a TURN relay; an error from GSO, after
        which it is not tried again in this process) each packet is sent on its own."""
        route = self._route
        if route is None or self._dtls._state is not State.CONNECTED:
            route = self._resolve()
            if route is None:
                self.dropped += len(packets)
                return 0
        protect = route.protect
        protected = [protect(p) for p in packets]
        if route.sock_sendmsg is None or route.transport._buffer or len(protected) < 2 or not _gso.enabled:
            return sum(self._send(route, data) for data in protected)
        sent = 0
        start, count = 0, len(protected)
        while start < count:
            size = len(protected[start])
            end = start + 1
            limit = min(start + _gso.MAX_SEGMENTS, start + _gso.MAX_BYTES // size, count)
            while end < limit and len(protected[end]) == size:
                end += 1
            if end < limit and len(protected[end]) < size:
                end += 1  # GSO: the last segment may be shorter
            if end - start < 2 or not _gso.enabled:
                sent += self._send(route, protected[start])
                start += 1
                continue
            sent += self._send_segmented(route, protected[start:end], size)
            start = end
        return sent

    def _send_segmented(self, route: _Route, run: list[bytes], size: int) -> int:
        assert route.sock_sendmsg is not None
        try:
            route.sock_sendmsg([b"".join(run)], [(socket.SOL_UDP, _gso.UDP_SEGMENT, _gso.size_option(size))],
                               0, route.addr)
            return len(run)
        except (BlockingIOError, InterruptedError):
            for data in run:
                route.transport.sendto(data, route.addr)
            return len(run)
        except OSError as exc:
            if exc.errno not in _gso.UNSUPPORTED:  # as _send: counted, never raised
                self.dropped += len(run)
                return 0
            _gso.disable(exc)
            return sum(self._send(route, data) for data in run)

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
