"""Offer inspection and codec selection (RFC 9725 §4.4, no partial answers).

The SFU only forwards, so a publisher is answered with exactly one codec per
track (VP8 or H.264 for video, Opus for audio) plus its RTX, and a viewer is
answered with the codec its producer uses — or refused with 422 when the
viewer's offer cannot receive it (no transcoding on this path).  A publisher whose
offer asks for transport-wide congestion control feedback gets it
(:func:`negotiate_transport_cc`), and so does a viewer whose offer asks for it (the
SFU then estimates the viewer's bandwidth from its feedback).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence

from aiortc import (
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import is_rtx

from . import aiortc_private, pause_resume
from .errors import InvalidSdp, UnsupportedMedia
from .sdp_validation import validate_offer
from .twcc import TRANSPORT_CC, TRANSPORT_CC_URI

logger = logging.getLogger(__name__)

PUBLISHER_START_BITRATE_KBPS = 2500
"""``x-google-start-bitrate`` and ``x-google-max-bitrate`` (kbps, libwebrtc codec parameters)
answered to a publisher that negotiated transport-cc: its send-side estimator starts at
2.5 Mbps instead of 300 kbps, and the per-resolution caps libwebrtc applies before the
first frame (1.7 Mbps up to 640x480) give way to 2.5 Mbps, libwebrtc's own maximum for
960x540 and up — so the encoder can start at 720p.  A link slower than that is found
within a few feedback intervals by the delay-based estimator transport-cc feeds."""
SIMULCAST_MAX_BITRATE_KBPS = 3500
"""``x-google-max-bitrate`` answered to a simulcast publisher, kbps: libwebrtc caps all its
simulcast streams together with it, and three layers (e.g. 150 + 500 + 2500 kbps) would not
fit under :data:`PUBLISHER_START_BITRATE_KBPS`."""
FORWARDABLE = {"video": ("video/vp8", "video/h264"), "audio": ("audio/opus",), "aac": ("audio/mp4a-latm",)}
"""Codecs the SFU takes from a publisher, by track: ``"aac"`` is a second audio section
that offers only AAC as MP4A-LATM (RFC 6416; the RTMP/SRT relay's copy of the encoder's
AAC): forwarded to the LL-HLS bridge and node-to-node pipes, never to WebRTC viewers."""
MAX_SDP_BYTES = 64 * 1024


def parse_offer(sdp: str) -> aiortc_sdp.SessionDescription:
    """Validate (:func:`sfu.sdp_validation.validate_offer`), parse and sanity-check an offer.

    :raises InvalidSdp: over 64 KiB, breaks an SDP/WebRTC rule, unparsable, or an m= section
        without ICE credentials or a DTLS fingerprint (400).
    :raises UnsupportedMedia: a media kind other than audio, video or application (422).
    """
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise InvalidSdp(f"SDP larger than {MAX_SDP_BYTES} bytes")
    validate_offer(sdp)
    try:
        desc = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError/KeyError/IndexError/... on junk
        logger.debug("unparsable SDP offer: %r", exc)
        raise InvalidSdp("the offer could not be parsed as SDP (RFC 8866)") from exc
    for media in desc.media:
        if media.kind not in ("audio", "video", "application"):
            raise UnsupportedMedia(f"media kind {media.kind!r} is not supported")
        if media.port == 0:
            continue
        if media.ice is None or not (media.ice.usernameFragment and media.ice.password):
            raise InvalidSdp(f"m={media.kind} section lacks a=ice-ufrag/a=ice-pwd (RFC 8839 §5.4)")
        if not media.dtls or not media.dtls.fingerprints:
            raise InvalidSdp(f"m={media.kind} section lacks a=fingerprint/a=setup (RFC 8842 §5)")
    return desc


def publish_track(kind: str, codecs: Sequence[RTCRtpCodecParameters]) -> str:
    """The track a publisher's section of ``kind`` with ``codecs`` (offered or negotiated)
    carries: ``kind``, or ``"aac"`` for an audio section whose codecs are all MP4A-LATM (see
    :data:`FORWARDABLE`)."""
    media = [c for c in codecs if not is_rtx(c)]
    if kind == "audio" and media and all(c.mimeType.lower() == "audio/mp4a-latm" for c in media):
        return "aac"
    return kind


def _aac_section(media: aiortc_sdp.MediaDescription) -> bool:
    return publish_track(media.kind, media.rtp.codecs) == "aac"


def check_track_counts(desc: aiortc_sdp.SessionDescription, *, publish: bool) -> None:
    """At most one audio, one video and one data-channel section (a publisher may add one
    audio section of AAC only, :data:`FORWARDABLE`).

    :raises UnsupportedMedia: more tracks than the SFU forwards, a publisher
        offer whose media is not ``sendonly``/``sendrecv``, or a viewer offer
        whose media is not ``recvonly``/``sendrecv``.
    """
    counts = {"audio": 0, "video": 0, "application": 0, "aac": 0}
    for media in desc.media:
        if media.port == 0:
            continue
        counts["aac" if publish and _aac_section(media) else media.kind] += 1
        if publish and media.kind != "application" and media.direction not in ("sendonly", "sendrecv"):
            raise UnsupportedMedia(f"publisher m={media.kind} must be sendonly, not {media.direction}")
        if not publish and media.kind != "application" and media.direction not in ("recvonly", "sendrecv"):
            # draft-ietf-wish-whep: a player's offer MUST NOT use sendonly or inactive.
            raise UnsupportedMedia(f"viewer m={media.kind} must be recvonly, not {media.direction}")
    for kind, n in counts.items():
        if n > 1:
            raise UnsupportedMedia(f"{n} {kind} sections offered; at most one is supported")
    if publish and counts["audio"] + counts["video"] + counts["aac"] == 0:
        raise UnsupportedMedia("publisher offer has no audio or video")


def _rtx_for(codecs: list[RTCRtpCodecParameters], base: RTCRtpCodecParameters) -> list[RTCRtpCodecParameters]:
    return [c for c in codecs if is_rtx(c) and c.parameters.get("apt") == base.payloadType][:1]


def choose_publish_codec(kind: str, negotiated: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    """The first forwardable codec the publisher offered for track ``kind`` (``"video"``,
    ``"audio"``, ``"aac"``: :func:`publish_track`), plus its RTX.

    :raises UnsupportedMedia: none of VP8/H.264 (video) or Opus (audio) offered.
    """
    for codec in negotiated:
        if not is_rtx(codec) and codec.mimeType.lower() in FORWARDABLE[kind]:
            return [codec, *_rtx_for(negotiated, codec)]
    offered = sorted({c.mimeType for c in negotiated if not is_rtx(c)}) or ["none in common"]
    raise UnsupportedMedia(
        f"{kind}: cannot forward {', '.join(offered)}; send one of "
        + ", ".join(m.split("/")[1].upper() for m in FORWARDABLE[kind])
    )


def offered_transport_cc(media: aiortc_sdp.MediaDescription, payload_type: int) -> int | None:
    """The offer's ``a=extmap`` id of the transport-wide sequence number extension
    (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) when the m= section also
    lists ``a=rtcp-fb:<payload_type> transport-cc`` (or ``a=rtcp-fb:* transport-cc``);
    ``None`` otherwise.
    """
    extension = next((e for e in media.rtp.headerExtensions if e.uri == TRANSPORT_CC_URI), None)
    if extension is None:
        return None
    for codec in media.rtp.codecs:
        if codec.payloadType == payload_type:
            if any(fb.type == TRANSPORT_CC for fb in codec.rtcpFeedback):
                return int(extension.id)
            break
    return None


def negotiate_pause(pc: RTCPeerConnection, transceiver: RTCRtpTransceiver) -> bool:
    """Answer RTP stream pause (RFC 7728 §10, ``a=rtcp-fb:<pt> ccm pause nowait``) on a
    publisher's audio transceiver when its section of the offer has it for the chosen
    codec: the SFU then pauses that stream while no one consumes it
    (:class:`~sfu.pause_resume.StreamPauser`).  Only the RTMP/SRT relay offers it; video
    is never paused (a viewer would wait for a key frame).  Call after the codecs were
    chosen and before ``createAnswer``.

    :returns: whether pause was answered."""
    codecs = aiortc_private.negotiated_codecs(transceiver)
    offer = pc.remoteDescription
    if transceiver.kind != "audio" or not codecs or offer is None or transceiver.mid is None:
        return False
    desc = aiortc_sdp.SessionDescription.parse(offer.sdp)
    media = next((m for m in desc.media if m.rtp.muxId == transceiver.mid), None)
    payload_type = codecs[0].payloadType
    if media is None or payload_type is None or not pause_resume.offered(media, payload_type):
        return False
    aiortc_private.enable_feedback(transceiver, pause_resume.FEEDBACK)
    return True


def negotiate_transport_cc(pc: RTCPeerConnection, transceiver: RTCRtpTransceiver, *,
                           publisher: bool = True, simulcast: bool = False) -> bool:
    """Answer transport-cc on a transceiver when its offer has it.

    For a viewer (``publisher=False``) the SFU is the sender: the viewer's feedback drives
    the SFU's estimate of its downlink (:mod:`sfu.bandwidth`); nothing else changes.  A
    simulcast publisher's maximum is :data:`SIMULCAST_MAX_BITRATE_KBPS` (all its layers).

    Call after the codecs were chosen (:func:`choose_publish_codec`) and before
    ``createAnswer``.  When the offer's m= section of the transceiver's kind lists
    ``transport-cc`` feedback for the chosen codec and the transport-wide sequence
    number extension, the answer gets both (``a=rtcp-fb:<pt> transport-cc``, the
    offer's ``a=extmap`` id) and the SFU sends transport feedback (RTPFB FMT 15,
    draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1) every 50 ms, so the
    publisher's send-side estimator (libwebrtc goog_cc) ramps up within a second; the
    video codec's ``a=fmtp`` also gets ``x-google-start-bitrate`` and
    ``x-google-max-bitrate`` (:data:`PUBLISHER_START_BITRATE_KBPS`).  ``goog-remb``
    stays in the answer when offered.

    :returns: whether transport-cc was answered.
    """
    codecs = aiortc_private.negotiated_codecs(transceiver)
    offer = pc.remoteDescription
    if not codecs or offer is None:
        return False
    desc = aiortc_sdp.SessionDescription.parse(offer.sdp)
    media = next((m for m in desc.media if m.kind == transceiver.kind and m.port), None)
    extension_id = None if media is None else offered_transport_cc(media, codecs[0].payloadType)
    if extension_id is None:
        return False
    aiortc_private.enable_transport_cc(transceiver, extension_id)
    if transceiver.kind == "video" and publisher:
        for codec in codecs:
            if not is_rtx(codec):
                codec.parameters["x-google-start-bitrate"] = PUBLISHER_START_BITRATE_KBPS
                codec.parameters["x-google-max-bitrate"] = (
                    SIMULCAST_MAX_BITRATE_KBPS if simulcast else PUBLISHER_START_BITRATE_KBPS)
    return True


Codec = RTCRtpCodecParameters | RTCRtpCodecCapability
"""Negotiated parameters or a capability: both carry mimeType, clockRate, parameters."""


def _h264_mode(codec: Codec) -> str:
    return str(codec.parameters.get("packetization-mode", "0"))


def _h264_profile(codec: Codec) -> str:
    """profile_idc + constraint byte (hex), level ignored: decoders accept lower levels."""
    return str(codec.parameters.get("profile-level-id", "42e01f"))[:4].lower()


def codecs_compatible(sent: Codec, accepted: Codec) -> bool:
    """Can a receiver that negotiated ``accepted`` decode packets encoded as ``sent``?"""
    if sent.mimeType.lower() != accepted.mimeType.lower() or sent.clockRate != accepted.clockRate:
        return False
    if sent.mimeType.lower() == "video/h264":
        if _h264_mode(sent) != _h264_mode(accepted):
            return False
        sp, ap = _h264_profile(sent), _h264_profile(accepted)
        # Constrained Baseline (42e0/4200 subset) streams are decodable by any profile.
        return sp == ap or sp.startswith("42") or ap[:2] == sp[:2]
    return True


def choose_consumer_codec(
    producer_codec: RTCRtpCodecParameters, negotiated: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    """The viewer's payload type for the producer's codec, plus its RTX.

    :raises UnsupportedMedia: the viewer cannot receive the producer's codec.
    """
    for codec in negotiated:
        if not is_rtx(codec) and codecs_compatible(producer_codec, codec):
            return [codec, *_rtx_for(negotiated, codec)]
    raise UnsupportedMedia(
        f"the stream is {producer_codec.mimeType}"
        + (f" ({producer_codec.parameters.get('profile-level-id')})" if "h264" in producer_codec.mimeType.lower() else "")
        + "; the offer cannot receive it and this path does not transcode"
    )


def pipe_codec_preferences(kind: str, producer_codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Codec preferences for a node-to-node pipe offering ``producer_codec``: the exact
    capability (H.264 profile and packetization mode included) plus RTX for video.

    :raises UnsupportedMedia: this node cannot offer the codec.
    """
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    exact = [c for c in capabilities if not is_rtx(c) and codecs_compatible(producer_codec, c)
             and (c.mimeType.lower() != "video/h264"
                  or _h264_profile(c) == _h264_profile(producer_codec))]
    base = exact or [c for c in capabilities if not is_rtx(c) and codecs_compatible(producer_codec, c)]
    if not base:
        raise UnsupportedMedia(f"cannot pipe {producer_codec.mimeType}")
    return [base[0], *[c for c in capabilities if is_rtx(c)][:1]]


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$", re.MULTILINE)


def announce_address(sdp: str, address: str | None) -> str:
    """Rewrite host candidates (and c= lines) to the announced address."""
    if not address:
        return sdp
    sdp = _CANDIDATE.sub(lambda m: m.group(1) + address + m.group(3), sdp)
    family = "IP6" if ":" in address else "IP4"
    return re.sub(r"^c=IN IP[46] \S+$", f"c=IN {family} {address}", sdp, flags=re.MULTILINE)


# Remote candidates on a loopback-only node.
#
# aioice pairs a local candidate with every remote candidate of the same
# component, transport and IP version (``Candidate.can_pair_with``); it never
# looks at the address scope.  So when the SFU gathers on 127.0.0.1 only (tests,
# single-host setups), each IPv4 host candidate in an offer gets a binding
# request from our 127.0.0.1 socket.  Measured here with Chromium (mDNS off):
# its offer lists only the machine's interface addresses (192.0.2.2, fd00::2),
# never 127.0.0.1, even with --allow-loopback-in-peer-connection, and the SFU
# sent one check to 192.0.2.2.  Linux delivers such a packet over ``lo`` when
# the address belongs to this host (traffic to a non-loopback address) and
# refuses it with EINVAL otherwise (a 127.0.0.1 source cannot leave ``lo``), so
# those pairs are useless at best.  The pair that works is the peer-reflexive
# 127.0.0.1 one aioice learns from the peer's own check to our 127.0.0.1
# candidate.  Dropping the unusable candidates before aiortc sees them keeps
# every packet the SFU sends on loopback.
_CANDIDATE_ADDRESS = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ ", re.MULTILINE)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # an mDNS name (x.local): resolving it would multicast


def loopback_only(local_addresses: Sequence[str] | None) -> bool:
    """True when ICE gathers on loopback addresses only (``None``/empty: all interfaces)."""
    return bool(local_addresses) and all(_is_loopback(a) for a in local_addresses or ())


def candidate_reachable(address: str, local_addresses: Sequence[str] | None) -> bool:
    """Can a host candidate gathered on ``local_addresses`` reach a remote ``address``?

    Only a loopback-only node is restricted: it can reach loopback addresses only.
    """
    return not loopback_only(local_addresses) or _is_loopback(address)


def drop_unreachable_candidates(sdp: str, local_addresses: Sequence[str] | None) -> str:
    """Remove the offer's ``a=candidate`` lines a loopback-only node cannot reach.

    When any is removed, ``a=end-of-candidates`` goes too: the peer's checks to
    our candidate still arrive (from a loopback source) and become peer-reflexive
    candidates, which aioice only learns while it still expects candidates.
    Unchanged when the node gathers on any non-loopback address.
    """
    if not loopback_only(local_addresses):
        return sdp
    lines = sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n")
    sep = "\r\n" if "\r\n" in sdp else "\n"
    kept: list[str] = []
    dropped = False
    for line in lines:
        match = _CANDIDATE_ADDRESS.match(line)
        if match and not _is_loopback(match.group(1)):
            dropped = True
            continue
        kept.append(line)
    if dropped:
        kept = [line for line in kept if line.strip() != "a=end-of-candidates"]
    return sep.join(kept)
