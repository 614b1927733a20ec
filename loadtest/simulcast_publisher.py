"""``python -m loadtest.simulcast_publisher``: a WHIP publisher that sends VP8 simulcast like a browser.

One aiortc peer connection carries Opus audio (aiortc's own sender, a
:class:`~loadtest.sources.ToneAudioTrack`) and one video m-section whose offer is
munged into a browser's simulcast offer (RFC 8853 §5.1, RFC 8851, RFC 8852):
``a=extmap`` for ``urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`` and
``...:repaired-rtp-stream-id``, ``a=rid:<rid> send`` per layer, ``a=simulcast:send
q;h;f`` and no ``a=ssrc`` lines in the video section (Chrome's unified-plan simulcast
offer).  aiortc's video sender is turned into a raw endpoint
(:func:`sfu.aiortc_private.install_forwarding_sender`); once DTLS is up every layer is
scaled from one :class:`~loadtest.sources.PatternVideoTrack` frame (the capture time is
drawn into every frame: receivers read it with :func:`loadtest.pattern.read_code` for the
glass-to-glass delay), encoded by its own libvpx encoder (PyAV), packetized per RFC 7741
and sent on its own SSRC through :class:`sfu.aiortc_private.RawRtpSender`.

Per layer SSRC: every packet carries the mid and rid header extensions (one-byte form,
RFC 8285 §4.2; RFC 8852 §3) — like Chrome, mid and rid are left off once the receiver
sent a receiver report for the SSRC, unless ``always_send_rid``; PLI (RFC 4585 §6.3.1)
and FIR (RFC 5104 §4.3.1) force a key frame on that layer's encoder only; generic NACKs
(RFC 4585 §6.2.1) are answered from a 1024-packet history, as RTX (RFC 4588 §4, its own
SSRC, the ``repaired-rtp-stream-id`` extension) when the answer negotiated rtx, else
by resending the packet; an RTCP sender report + SDES CNAME (RFC 3550 §6.4.1, §6.5) goes
out about once a second.  The video section also offers transport-cc like Chrome; when the
answer accepts it every video packet (RTX included) carries the next transport-wide sequence
number (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2); the feedback is ignored
(the layer bitrates are fixed: no send-side bandwidth estimation here).  Packets of a frame
go out in one burst (no pacer).

Temporal scalability (``temporal=3``: L1T3, ``2``: L1T2): libvpx's temporal layering via
FFmpeg's ``ts-parameters`` (``ts_layering_mode`` 3: pattern TID 0,2,1,2; mode 2: 0,1),
error-resilient mode so that entropy contexts do not leak across layers.  FFmpeg restarts
the pattern on every forced key frame; the key frame itself is sent as TID 0.  Every
packet's VP8 payload descriptor carries PictureID (15 bit), TL0PICIDX and TID/Y (RFC 7741
§4.2); ``temporal=1`` sends the PictureID only.  Frames of TID ≤ t decode bit-exactly without
the frames of TID > t (tests/loadtest/test_simulcast_publisher.py checks it).

When the answer does not accept simulcast (no ``a=simulcast:recv``) only the top layer is
sent, without rid extensions, as a browser falls back to one encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import fractions
import json
import logging
import math
import multiprocessing
import random
import re
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from sfu import aiortc_private

from . import aiortc_hooks, whip_client
from .sources import VIDEO_CLOCK_RATE, PatternVideoTrack, ToneAudioTrack

__all__ = [
    "ABS_SEND_TIME_URI",
    "AnswerSimulcast",
    "MID_URI",
    "REPAIRED_RID_URI",
    "RID_URI",
    "TRANSPORT_CC_URI",
    "EncodedFrame",
    "LayerSpec",
    "LayerStream",
    "SimulcastPublisher",
    "Vp8LayerEncoder",
    "default_layers",
    "munge_offer",
    "packetize_vp8",
    "parse_answer",
    "vp8_key_frame_size",
]

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RID_EXT_ID = 10  # Chrome's ids for the two extensions
REPAIRED_RID_EXT_ID = 11
TRANSPORT_CC_EXT_ID = 5  # Chrome uses 3, which aiortc gives abs-send-time

MAX_PAYLOAD = 1200  # bytes of VP8 payload (descriptor included) per RTP packet
HISTORY = 1024  # packets kept per SSRC for NACK (power of two)
SR_INTERVAL_S = 1.0
NTP_EPOCH_OFFSET = 2_208_988_800  # s from 1900-01-01 to 1970-01-01

# Temporal layering (RFC 7741 §4.2 TID; libvpx temporal layering mode of FFmpeg's libvpxenc):
# pattern of TIDs, whether each frame depends on TID 0 frames only (Y), cumulative rate split.
_TEMPORAL = {
    1: ((0,), (True,), (1.0,), 0),
    2: ((0, 1), (True, True), (0.6, 1.0), 2),  # TL1 references LAST (= TL0) only
    3: ((0, 2, 1, 2), (True, True, True, False), (0.4, 0.6, 1.0), 3),  # pos 3 refs GOLDEN (= TL1)
}


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One simulcast encoding: ``rid`` (RFC 8851 §10 rid-id), picture = full size / ``scale_down``,
    target ``bitrate_bps``."""

    rid: str
    scale_down: int
    bitrate_bps: int


def default_layers(count: int = 3, top_bitrate_bps: int = 2_000_000) -> list[LayerSpec]:
    """The broadcast page's layers, lowest first: ``q`` (1/4, 150 kbps), ``h`` (1/2, 500 kbps),
    ``f`` (full, ``top_bitrate_bps``); ``count`` 2 drops ``q``, 1 keeps ``f`` only.

    :raises ValueError: ``count`` not in 1..3.
    """
    if count not in (1, 2, 3):
        raise ValueError("layers must be 1, 2 or 3")
    every = [LayerSpec("q", 4, 150_000), LayerSpec("h", 2, 500_000), LayerSpec("f", 1, top_bitrate_bps)]
    return every[3 - count:]


# --------------------------------------------------------------------------- SDP


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    session: list[str] = []
    media: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def _join(session: list[str], media: list[list[str]]) -> str:
    return "\r\n".join([*session, *(line for section in media for line in section)]) + "\r\n"


def munge_offer(sdp: str, rids: Sequence[str], *, rid_id: int = RID_EXT_ID,
                repaired_rid_id: int = REPAIRED_RID_EXT_ID,
                transport_cc_id: int | None = TRANSPORT_CC_EXT_ID) -> str:
    """Turn aiortc's offer into a browser's simulcast offer (RFC 8853 §5.1).

    In the (first) video m-section: drop ``a=ssrc``/``a=ssrc-group`` lines, add
    ``a=extmap:<rid_id> urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`` and
    ``a=extmap:<repaired_rid_id> ...:repaired-rtp-stream-id`` (RFC 8852 §4.3, §4.4) after
    the other extmaps, then ``a=rid:<rid> send`` per rid (RFC 8851 §4) and
    ``a=simulcast:send <rid>;<rid>;...`` at the end of the section.  With ``transport_cc_id``
    the section also offers transport-wide congestion control as Chrome does
    (``a=extmap:<transport_cc_id>`` of the transport-wide sequence number,
    draft-holmer-rmcat-transport-wide-cc-extensions-01 §2, and ``a=rtcp-fb:<pt> transport-cc``
    for every media codec).  Other sections are unchanged.  ``rids`` lowest layer first (the
    order of the page's sendEncodings).

    :raises ValueError: no video m-section, or an extmap id already in use.
    """
    session, media = _sections(sdp)
    video = next((s for s in media if s[0].startswith("m=video")), None)
    if video is None:
        raise ValueError("offer has no video m-section")
    used = {int(m.group(1)) for line in video if (m := re.match(r"a=extmap:(\d+)", line))}
    if used & {rid_id, repaired_rid_id, transport_cc_id}:
        raise ValueError(f"extmap id {rid_id}, {repaired_rid_id} or {transport_cc_id} already used")
    kept = [line for line in video if not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
    if transport_cc_id is not None:
        media_pts = [m.group(1) for line in kept
                     if (m := re.match(r"a=rtpmap:(\d+) (?!rtx/)", line, re.IGNORECASE))]
        for pt in media_pts:
            after = max(i for i, line in enumerate(kept)
                        if line.startswith((f"a=rtpmap:{pt} ", f"a=rtcp-fb:{pt} ")))
            kept.insert(after + 1, f"a=rtcp-fb:{pt} transport-cc")
    last_extmap = max((i for i, line in enumerate(kept) if line.startswith("a=extmap:")), default=0)
    extmaps = [f"a=extmap:{rid_id} {RID_URI}", f"a=extmap:{repaired_rid_id} {REPAIRED_RID_URI}"]
    if transport_cc_id is not None:
        extmaps.insert(0, f"a=extmap:{transport_cc_id} {TRANSPORT_CC_URI}")
    kept[last_extmap + 1:last_extmap + 1] = extmaps
    kept += [f"a=rid:{rid} send" for rid in rids]
    kept.append("a=simulcast:send " + ";".join(rids))
    video[:] = kept
    return _join(session, media)


@dataclass(frozen=True, slots=True)
class AnswerSimulcast:
    """What the answer's video m-section accepted: ``rids`` (from ``a=simulcast:recv``, paused
    ``~`` streams left out, order as answered; empty when simulcast was not accepted) and the
    extension ids (``None``: not negotiated)."""

    rids: tuple[str, ...]
    rid_id: int | None
    repaired_rid_id: int | None
    transport_cc_id: int | None = None


def parse_answer(sdp: str) -> AnswerSimulcast:
    """Read the simulcast answer (RFC 8853 §5.3) of the first video m-section of ``sdp``."""
    _, media = _sections(sdp)
    video = next((s for s in media if s[0].startswith("m=video")), [])
    rid_id = repaired_id = transport_cc_id = None
    rids: list[str] = []
    for line in video:
        m = re.match(r"a=extmap:(\d+)(?:/\w+)?\s+(\S+)", line)
        if m and m.group(2) == RID_URI:
            rid_id = int(m.group(1))
        elif m and m.group(2) == REPAIRED_RID_URI:
            repaired_id = int(m.group(1))
        elif m and m.group(2) == TRANSPORT_CC_URI:
            transport_cc_id = int(m.group(1))
        elif line.startswith("a=simulcast:"):
            parts = line[len("a=simulcast:"):].split()
            for direction, streams in zip(parts[::2], parts[1::2], strict=False):
                if direction != "recv":
                    continue
                for alternatives in streams.split(";"):
                    first = alternatives.split(",")[0]
                    if first and not first.startswith("~"):
                        rids.append(first)
    if not any(re.match(r"a=rtcp-fb:\S+ transport-cc", line) for line in video):
        transport_cc_id = None
    return AnswerSimulcast(tuple(rids) if rid_id is not None else (), rid_id, repaired_id, transport_cc_id)


# --------------------------------------------------------------------------- VP8


@dataclass(slots=True)
class EncodedFrame:
    """One encoded VP8 frame: ``data`` (the frame, RFC 6386), ``keyframe``, ``tid`` (temporal
    layer, 0 when not layered) and ``layer_sync`` (Y: depends only on TID 0 frames)."""

    data: bytes
    keyframe: bool
    tid: int
    layer_sync: bool


def _threads(pixels: int) -> int:
    cpus = multiprocessing.cpu_count()
    return 2 if pixels > 640 * 480 and cpus >= 3 else 1


class Vp8LayerEncoder:
    """libvpx VP8 real-time CBR encoder (PyAV) for one layer, optionally temporally layered.

    ``encode(frame, keyframe)`` takes a yuv420p frame of exactly ``width x height``; settings
    are aiortc's (cpu-used -6, no lag, one token partition) plus error-resilient mode and,
    for ``temporal`` 2/3, FFmpeg's ``ts-parameters`` (libvpx ``ts_layering_mode`` 2/3,
    cumulative ``ts_target_bitrate`` 60/100 % or 40/60/100 %).  The TID of each output frame
    follows the pattern, restarted at every forced key frame as FFmpeg's libvpxenc does.

    :raises ValueError: ``temporal`` not in 1..3.
    """

    def __init__(self, width: int, height: int, bitrate_bps: int, temporal: int = 3,
                 fps: float = 30.0) -> None:
        if temporal not in _TEMPORAL:
            raise ValueError("temporal must be 1, 2 or 3")
        self.width, self.height, self.temporal = width, height, temporal
        self.bitrate_bps = bitrate_bps
        self._pattern, self._sync, split, mode = _TEMPORAL[temporal]
        self._position = 0
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = width, height
        codec.bit_rate = bitrate_bps
        codec.pix_fmt = "yuv420p"
        codec.framerate = fractions.Fraction(fps).limit_denominator(1001)
        codec.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        codec.gop_size = 3000  # kf_max_dist: key frames only when asked
        codec.qmin, codec.qmax = 2, 56
        options = {
            "bufsize": str(bitrate_bps), "minrate": str(bitrate_bps), "maxrate": str(bitrate_bps),
            "cpu-used": "-6", "deadline": "realtime", "lag-in-frames": "0",
            "noise-sensitivity": "0", "overshoot-pct": "15", "undershoot-pct": "100",
            "partitions": "0", "static-thresh": "1", "error-resilient": "default",
        }
        if mode:
            kbps = max(1, bitrate_bps // 1000)
            options["ts-parameters"] = ":".join((
                f"ts_number_layers={temporal}",
                "ts_target_bitrate=" + ",".join(str(max(1, round(kbps * s))) for s in split),
                "ts_rate_decimator=" + ",".join(str(2 ** (temporal - 1 - t)) for t in range(temporal)),
                f"ts_periodicity={len(self._pattern)}",
                "ts_layer_id=" + ",".join(str(t) for t in self._pattern),
                f"ts_layering_mode={mode}",
            ))
        codec.options = options
        codec.thread_count = _threads(width * height)
        self._codec = codec

    def encode(self, frame: av.VideoFrame, keyframe: bool = False) -> EncodedFrame | None:
        """Encode one frame (``keyframe``: force a key frame); ``None`` if libvpx dropped it."""
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
            self._position = 0
        position = self._position
        self._position = (position + 1) % len(self._pattern)
        data = b"".join(bytes(p) for p in self._codec.encode(frame))
        if not data:
            return None
        key = not data[0] & 1  # RFC 6386 §9.1: frame tag bit 0 is 0 for key frames
        if key:
            return EncodedFrame(data, True, 0, True)
        return EncodedFrame(data, False, self._pattern[position], self._sync[position])


def packetize_vp8(data: bytes, picture_id: int, tl0picidx: int | None, tid: int | None,
                  layer_sync: bool, max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """Split one VP8 frame into RTP payloads (RFC 7741 §4): every payload starts with the
    extended descriptor: X=1, S=1 on the first, PID 0; I=1 with a 15-bit PictureID (M=1);
    L=1 + TL0PICIDX (8 bit) and T=1 + TID/Y (K=0) when ``tid`` is not ``None``.  Payloads
    (descriptor included) are at most ``max_payload`` bytes and of near-equal size."""
    ext = 0x80 | (0x60 if tid is not None else 0)
    tail = struct.pack("!H", 0x8000 | (picture_id & 0x7FFF))
    if tid is not None:
        tail += bytes(((tl0picidx or 0) & 0xFF, (tid & 3) << 6 | (0x20 if layer_sync else 0)))
    room = max_payload - 2 - len(tail)
    count = max(1, math.ceil(len(data) / room))
    size = math.ceil(len(data) / count)
    first = bytes((0x90, ext)) + tail
    other = bytes((0x80, ext)) + tail
    return [(first if i == 0 else other) + data[i * size:(i + 1) * size] for i in range(count)]


def vp8_key_frame_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from the first RTP payload of a VP8 key frame (RFC 7741 §4.2 descriptor,
    RFC 6386 §9.1 frame header), ``None`` if it is not the start of a key frame."""
    if not payload or not payload[0] & 0x10:
        return None
    pos = 1
    if payload[0] & 0x80:
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    frame = payload[pos:]
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


# --------------------------------------------------------------------------- RTP


_RTP_HEADER = struct.Struct("!BBHII")


def _extension_block(elements: bytes) -> bytes:
    """RFC 8285 §4.2 one-byte-header block around ``elements`` (ID/len bytes + data): the
    0xBEDE profile, the length in 32-bit words and zero padding; ``b""`` for no elements."""
    if not elements:
        return b""
    elements += b"\x00" * (-len(elements) % 4)
    return struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements


class LayerStream:
    """Send state of one simulcast layer (``SimulcastPublisher.layers``, lowest first).

    Read-only for callers: ``rid``, ``width``/``height`` (px), ``ssrc``, ``rtx_ssrc`` (``None``
    without rtx), ``spec`` (:class:`LayerSpec`), ``encoder`` (:class:`Vp8LayerEncoder`), and the
    counters ``packets``/``octets`` (RTP payload bytes, as in SRs), ``frames``, ``key_frames``,
    ``tid_frames`` (frames per TID), ``plis``, ``firs``, ``nacks``, ``retransmits``; ``acked``:
    a receiver report for ``ssrc`` arrived.  Set ``key_requested = True`` to force a key frame
    on this layer's next frame.  The rest (sequence numbers, PictureID, TL0PICIDX, the
    ``HISTORY``-packet NACK history) is internal.
    """

    __slots__ = (
        "spec", "rid", "width", "height", "encoder", "ssrc", "rtx_ssrc", "seq", "rtx_seq",
        "ts_offset", "picture_id", "tl0picidx", "key_requested", "acked",
        "hist_seq", "hist_packet", "hist_offset", "packets", "octets", "frames", "key_frames",
        "tid_frames", "plis", "firs", "nacks", "retransmits", "last_rtp", "last_wall",
        "fir_seq", "interval_octets", "rid_ext", "rtx_ext",
    )

    def __init__(self, spec: LayerSpec, width: int, height: int, encoder: Vp8LayerEncoder,
                 ssrc: int, rtx_ssrc: int | None) -> None:
        self.spec, self.rid, self.width, self.height = spec, spec.rid, width, height
        self.encoder = encoder
        self.ssrc, self.rtx_ssrc = ssrc, rtx_ssrc
        self.seq = random.randrange(1 << 16)
        self.rtx_seq = random.randrange(1 << 16)
        self.ts_offset = random.randrange(1 << 32)
        self.picture_id = random.randrange(1 << 15)
        self.tl0picidx = random.randrange(256)
        self.key_requested = True
        self.acked = False  # a receiver report for this SSRC arrived
        self.hist_seq: list[int] = [-1] * HISTORY
        self.hist_packet: list[bytes] = [b""] * HISTORY
        self.hist_offset: list[int] = [0] * HISTORY
        self.packets = self.octets = self.frames = self.key_frames = 0
        self.tid_frames = [0, 0, 0, 0]
        self.plis = self.firs = self.nacks = self.retransmits = 0
        self.last_rtp: int | None = None
        self.last_wall = 0.0
        self.fir_seq: int | None = None
        self.interval_octets = 0
        self.rid_ext = self.rtx_ext = b""

    def snapshot(self) -> dict[str, Any]:
        return {"rid": self.rid, "ssrc": self.ssrc, "rtx_ssrc": self.rtx_ssrc, "width": self.width,
                "height": self.height, "target_bps": self.spec.bitrate_bps, "packets": self.packets,
                "bytes": self.octets, "frames": self.frames, "key_frames": self.key_frames,
                "tid_frames": self.tid_frames[:self.encoder.temporal], "plis": self.plis,
                "firs": self.firs, "nacks": self.nacks, "retransmits": self.retransmits}


def _abs_send_time(now: float) -> bytes:
    """abs-send-time (24 bit, 6.18 fixed point seconds, webrtc.org experiment)."""
    value = int(now * (1 << 18)) & 0xFFFFFF
    return value.to_bytes(3, "big")


# --------------------------------------------------------------------------- publisher


class SimulcastPublisher:
    """A WHIP publisher sending 1–3 VP8 simulcast layers (+ Opus) from an aiortc peer connection.

    In-process use (tests, benchmarks)::

        publisher = SimulcastPublisher("http://127.0.0.1:8080/whip/room", token="sk_...",
                                       width=1280, height=720, layers=3, temporal=3)
        await publisher.start()          # POST offer, wait for DTLS + first key frames
        ...                              # publisher.stats(), publisher.layers
        await publisher.stop()           # DELETE the WHIP resource, close the connection

    or ``async with SimulcastPublisher(...) as publisher:``.  ``bitrates_bps`` overrides the
    per-layer targets (lowest first); ``audio`` adds the Opus tone; ``always_send_rid`` keeps
    the mid/rid extensions on every packet (default: left off after an RR, as Chrome does);
    ``transport_cc`` offers transport-wide sequence numbers (default, as Chrome does);
    ``pin_loopback`` gathers host candidates on 127.0.0.1 only (default: when the URL's host is
    a loopback name).  ``http``: an aiohttp session to reuse (not closed).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        layers: int = 3,
        temporal: int = 3,
        bitrates_bps: Sequence[int] | None = None,
        audio: bool = True,
        always_send_rid: bool = False,
        transport_cc: bool = True,
        pin_loopback: bool | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        specs = default_layers(layers)
        if bitrates_bps is not None:
            if len(bitrates_bps) != len(specs):
                raise ValueError(f"{len(specs)} bitrates needed, lowest layer first")
            specs = [LayerSpec(s.rid, s.scale_down, int(b)) for s, b in zip(specs, bitrates_bps, strict=True)]
        if temporal not in _TEMPORAL:
            raise ValueError("temporal must be 1, 2 or 3")
        smallest = max(s.scale_down for s in specs)
        if width % (2 * smallest) or height % (2 * smallest) or width // smallest < 112:
            raise ValueError(f"width and height must be multiples of {2 * smallest}, "
                             f"and width / {smallest} >= 112 (the frame code)")
        self.url, self.token = url, token
        self.width, self.height, self.fps, self.temporal = width, height, fps, temporal
        self.specs = specs
        self.audio = audio
        self.always_send_rid = always_send_rid
        self.transport_cc = transport_cc
        if pin_loopback is None:
            pin_loopback = urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")
        self._pin_loopback = pin_loopback
        self._http = http
        self.pc: RTCPeerConnection | None = None
        self.offer: str | None = None  # the munged offer as POSTed
        self.answer: str | None = None
        self.location: str | None = None
        self.simulcast: AnswerSimulcast | None = None
        self.layers: list[LayerStream] = []  # lowest first, the layers actually sent
        self.video_track: PatternVideoTrack | None = None
        self.audio_track: ToneAudioTrack | None = None
        self.encode_ms = 0.0  # last frame's encode time (all layers)
        self._session: whip_client.WhipSession | None = None
        self._sender: aiortc_private.RawRtpSender | None = None
        self._params: aiortc_private.SendParameters | None = None
        self._first_keys: asyncio.Event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._by_ssrc: dict[int, LayerStream] = {}
        self._closed = False
        self._error: BaseException | None = None
        self._twcc_elem = b""  # the transport-cc element's ID/len byte, when answered
        self._twcc_seq = random.randrange(1 << 16)
        self._interval_start = time.monotonic()

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SimulcastPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 15.0) -> None:
        """POST the simulcast offer, connect, and return once every layer sent its first key frame.

        :raises whip_client.WhipError: the POST was refused (not 201).
        :raises TimeoutError: not connected / no key frames within ``timeout`` s.
        :raises ValueError: the answer has no VP8.
        """
        if self._pin_loopback:
            whip_client.pin_loopback()
        self.video_track = PatternVideoTrack(self.width, self.height, self.fps, code="capture_time")
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video = pc.addTransceiver(self.video_track, direction="sendonly")
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType.lower() in ("video/vp8", "video/rtx")])
        aiortc_private.install_forwarding_sender(video.sender, self._on_start, self._on_rtcp)
        if self.audio:
            self.audio_track = ToneAudioTrack()
            pc.addTransceiver(self.audio_track, direction="sendonly")
        try:
            await self._post()
            await asyncio.wait_for(self._first_keys.wait(), timeout)
            if self._error is not None:
                raise self._error
        except BaseException:
            await self.stop()
            raise

    async def _post(self) -> None:
        """Offer (munged for simulcast, :func:`munge_offer`) and POST it: the WHIP exchange
        of :func:`loadtest.whip_client._post_offer`."""
        assert self.pc is not None

        def munge(sdp: str) -> str:
            self.offer = munge_offer(sdp, [s.rid for s in self.specs],
                                     transport_cc_id=TRANSPORT_CC_EXT_ID if self.transport_cc else None)
            return self.offer

        self.location, body, etag = await whip_client._post_offer(
            self.pc, self.url, self.token, self._http, edit_offer=munge)
        self.answer = body
        self.simulcast = parse_answer(body)
        self._session = whip_client.WhipSession(self.pc, self.location, body, etag, token=self.token)

    async def stop(self) -> None:
        """Stop sending, DELETE the WHIP resource (best effort, 10 s) and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._first_keys.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - already reported
                pass
        if self._session is not None:
            try:
                await asyncio.wait_for(self._session.close(self._http), 10)
            except (TimeoutError, aiohttp.ClientError):
                pass
        elif self.pc is not None:
            await self.pc.close()
        for track in (self.video_track, self.audio_track):
            if track is not None:
                track.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState if self.pc is not None else "new"

    # ----------------------------------------------------------------- sending

    def _on_start(self, params: aiortc_private.SendParameters) -> None:
        """aiortc's video sender would start now (DTLS connected): set up the layers."""
        assert self.pc is not None and self.simulcast is not None
        if params.codec.mimeType.lower() != "video/vp8":
            self._error = ValueError(f"answer chose {params.codec.mimeType}, not VP8")
            self._first_keys.set()
            return
        self._params = params
        video = next(t for t in self.pc.getTransceivers() if t.kind == "video")
        dtls = video.sender.transport
        self._sender = aiortc_private.RawRtpSender(dtls)
        if self.simulcast.transport_cc_id is not None:
            self._twcc_elem = bytes(((self.simulcast.transport_cc_id << 4) | 1,))
        accepted = self.simulcast.rids
        specs = [s for s in self.specs if s.rid in accepted] if accepted else self.specs[-1:]
        ssrcs: set[int] = {params.ssrc, params.rtx_ssrc}
        for spec in specs:
            ssrc = rtx = 0
            while not ssrc or ssrc in ssrcs:
                ssrc = random.randrange(1, 1 << 32)
            ssrcs.add(ssrc)
            if params.rtx_payload_type is not None:
                while not rtx or rtx in ssrcs:
                    rtx = random.randrange(1, 1 << 32)
                ssrcs.add(rtx)
            w, h = self.width // spec.scale_down, self.height // spec.scale_down
            encoder = Vp8LayerEncoder(w, h, spec.bitrate_bps, self.temporal, self.fps)
            layer = LayerStream(spec, w, h, encoder, ssrc, rtx or None)
            self._build_extensions(layer)
            self.layers.append(layer)
            self._by_ssrc[ssrc] = layer
            if rtx:
                self._by_ssrc[rtx] = layer
        aiortc_hooks.route_rtcp_to_sender(video.sender, [*self._by_ssrc, 0])  # 0: FIR's media ssrc (RFC 5104 §4.3.1)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="simulcast-vp8")
        self._tasks.append(asyncio.ensure_future(self._video_loop()))
        self._tasks.append(asyncio.ensure_future(self._rtcp_loop()))

    def _build_extensions(self, layer: LayerStream) -> None:
        """Precompute the one-byte extension elements (RFC 8285 §4.2): mid + rid for media
        packets, mid + repaired-rid for RTX (RFC 8852 §3); rid only when simulcast was accepted."""
        assert self._params is not None and self.simulcast is not None
        ext = self._params.extensions
        mid_id = ext.get(MID_URI)
        mid = (self._params.mid or "").encode()
        simulcast = bool(self.simulcast.rids)
        rid_id, rrid_id = self.simulcast.rid_id, self.simulcast.repaired_rid_id
        with_rid: list[tuple[int, bytes]] = []
        rtx: list[tuple[int, bytes]] = []
        if mid_id is not None and mid:
            with_rid.append((mid_id, mid))
            rtx.append((mid_id, mid))
        if simulcast and rid_id is not None:
            with_rid.append((rid_id, layer.rid.encode()))
        if simulcast and rrid_id is not None:
            rtx.append((rrid_id, layer.rid.encode()))
        layer.rid_ext = b"".join(bytes(((i << 4) | (len(v) - 1),)) + v for i, v in with_rid)
        layer.rtx_ext = b"".join(bytes(((i << 4) | (len(v) - 1),)) + v for i, v in rtx)

    def _encode_all(self, frame: av.VideoFrame, keys: list[bool]) -> list[EncodedFrame | None]:
        """Executor thread: scale ``frame`` to every layer and encode it."""
        t0 = time.perf_counter()
        out: list[EncodedFrame | None] = []
        for layer, key in zip(self.layers, keys, strict=True):
            if layer.width == frame.width and layer.height == frame.height:
                scaled = frame
            else:
                scaled = frame.reformat(width=layer.width, height=layer.height, interpolation="AREA")
            scaled.pts, scaled.time_base = frame.pts, frame.time_base
            out.append(layer.encoder.encode(scaled, key))
        self.encode_ms = (time.perf_counter() - t0) * 1000.0
        return out

    async def _video_loop(self) -> None:
        try:
            await self._video_frames()
        except Exception as exc:
            logger.exception("simulcast publisher: video stopped")
            self._error = exc
            self._first_keys.set()
            raise

    async def _video_frames(self) -> None:
        assert self.video_track is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        abs_id = self._params.extensions.get(ABS_SEND_TIME_URI) if self._params else None
        while not self._closed:
            frame = await self.video_track.recv()
            capture = time.time()
            keys = [layer.key_requested for layer in self.layers]
            for layer in self.layers:
                layer.key_requested = False
            encoded = await loop.run_in_executor(self._executor, self._encode_all, frame, keys)
            now = time.time()
            abs_elem = bytes(((abs_id << 4) | 2,)) + _abs_send_time(now) if abs_id else b""
            for layer, enc, key in zip(self.layers, encoded, keys, strict=True):
                if enc is None:
                    if key:
                        layer.key_requested = True
                    continue
                self._send_frame(layer, enc, frame.pts, abs_elem, capture)
            if not self._first_keys.is_set() and all(layer.key_frames for layer in self.layers):
                self._first_keys.set()

    def _send_frame(self, layer: LayerStream, enc: EncodedFrame, pts: int, abs_elem: bytes,
                    capture: float) -> None:
        assert self._sender is not None and self._params is not None
        if enc.tid == 0:
            layer.tl0picidx = (layer.tl0picidx + 1) & 0xFF
        layered = self.temporal > 1
        payloads = packetize_vp8(enc.data, layer.picture_id, layer.tl0picidx if layered else None,
                                 enc.tid if layered else None, enc.layer_sync)
        layer.picture_id = (layer.picture_id + 1) & 0x7FFF
        elements = (layer.rid_ext if (self.always_send_rid or not layer.acked) else b"") + abs_elem
        twcc = self._twcc_elem
        ext = _extension_block(elements)
        timestamp = (layer.ts_offset + pts) & 0xFFFFFFFF
        pt = self._params.codec.payloadType
        last = len(payloads) - 1
        send = self._sender.send_rtp
        for i, payload in enumerate(payloads):
            seq = layer.seq
            layer.seq = (seq + 1) & 0xFFFF
            if twcc:
                ext = _extension_block(elements + twcc + self._next_transport_seq())
            header = _RTP_HEADER.pack(0x90 if ext else 0x80, pt | (0x80 if i == last else 0), seq, timestamp, layer.ssrc)
            packet = header + ext + payload
            slot = seq & (HISTORY - 1)
            layer.hist_seq[slot] = seq
            layer.hist_packet[slot] = packet
            layer.hist_offset[slot] = len(header) + len(ext)
            send(packet)
            layer.packets += 1
            layer.octets += len(payload)
        layer.interval_octets += len(enc.data)
        layer.frames += 1
        layer.tid_frames[enc.tid] += 1
        if enc.keyframe:
            layer.key_frames += 1
        layer.last_rtp, layer.last_wall = timestamp, capture

    def _next_transport_seq(self) -> bytes:
        """The next transport-wide sequence number, 16 bit big-endian (one per video packet
        sent, RTX included; draft-holmer-rmcat-transport-wide-cc-extensions-01 §2)."""
        seq = self._twcc_seq
        self._twcc_seq = (seq + 1) & 0xFFFF
        return seq.to_bytes(2, "big")

    def _retransmit(self, layer: LayerStream, seq: int) -> None:
        """RFC 4588 §4: RTX packet (OSN + original payload, repaired-rid), or the packet again."""
        slot = seq & (HISTORY - 1)
        if layer.hist_seq[slot] != seq or self._sender is None or self._params is None:
            return
        packet = layer.hist_packet[slot]
        rtx_pt = self._params.rtx_payload_type
        if layer.rtx_ssrc is None or rtx_pt is None:
            self._sender.send_rtp(packet)
        else:
            offset = layer.hist_offset[slot]
            twcc = self._twcc_elem
            ext = _extension_block(layer.rtx_ext + (twcc + self._next_transport_seq() if twcc else b""))
            rtx_seq = layer.rtx_seq
            layer.rtx_seq = (rtx_seq + 1) & 0xFFFF
            header = _RTP_HEADER.pack(0x90 if ext else 0x80, (packet[1] & 0x80) | rtx_pt, rtx_seq,
                                      struct.unpack_from("!I", packet, 4)[0], layer.rtx_ssrc)
            self._sender.send_rtp(header + ext + struct.pack("!H", seq) + packet[offset:])
        layer.retransmits += 1

    # ----------------------------------------------------------------- RTCP

    def _on_rtcp(self, packet: AnyRtcpPacket) -> None:
        """RTCP routed to the video sender: NACK, PLI, FIR, receiver reports."""
        if isinstance(packet, RtcpRtpfbPacket):
            layer = self._by_ssrc.get(packet.media_ssrc)
            if packet.fmt == RTCP_RTPFB_NACK and layer is not None and layer.ssrc == packet.media_ssrc:
                layer.nacks += 1
                for seq in packet.lost:
                    self._retransmit(layer, seq & 0xFFFF)
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt == RTCP_PSFB_PLI:
                layer = self._by_ssrc.get(packet.media_ssrc)
                if layer is not None and layer.ssrc == packet.media_ssrc:
                    layer.plis += 1
                    layer.key_requested = True
            elif packet.fmt == RTCP_PSFB_FIR:
                fci = packet.fci
                for pos in range(0, len(fci) - 7, 8):
                    ssrc, fir_seq = struct.unpack_from("!IB", fci, pos)
                    layer = self._by_ssrc.get(ssrc)
                    if layer is not None and layer.ssrc == ssrc and layer.fir_seq != fir_seq:
                        layer.fir_seq = fir_seq  # RFC 5104 §4.3.1.2: a repeated seq nr is no new request
                        layer.firs += 1
                        layer.key_requested = True
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                layer = self._by_ssrc.get(report.ssrc)
                if layer is not None and layer.ssrc == report.ssrc:
                    layer.acked = True

    def sender_report(self, layer: LayerStream, now: float | None = None) -> bytes:
        """Compound RTCP SR + SDES CNAME for ``layer`` (RFC 3550 §6.4.1, §6.5, §6.1)."""
        now = time.time() if now is None else now
        rtp_now = 0
        if layer.last_rtp is not None:
            rtp_now = (layer.last_rtp + round((now - layer.last_wall) * VIDEO_CLOCK_RATE)) & 0xFFFFFFFF
        ntp = now + NTP_EPOCH_OFFSET
        ntp_sec = int(ntp)
        ntp_frac = int((ntp - ntp_sec) * (1 << 32)) & 0xFFFFFFFF
        sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, layer.ssrc, ntp_sec & 0xFFFFFFFF, ntp_frac,
                         rtp_now, layer.packets & 0xFFFFFFFF, layer.octets & 0xFFFFFFFF)
        cname = ((self._params.cname if self._params else None) or "simulcast").encode()[:255]
        chunk = struct.pack("!IBB", layer.ssrc, 1, len(cname)) + cname + b"\x00"
        chunk += b"\x00" * (-len(chunk) % 4)
        sdes = struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk
        return sr + sdes

    async def _rtcp_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(SR_INTERVAL_S * (0.5 + random.random()))  # RFC 3550 §6.3.1 spread
            if self._sender is None:
                continue
            for layer in self.layers:
                if layer.packets:
                    self._sender.send_rtcp(self.sender_report(layer))

    # ----------------------------------------------------------------- progress

    def stats(self) -> dict[str, Any]:
        """Counters: ``state``, ``simulcast`` (rids accepted), ``encode_ms``, ``frames`` (source),
        ``layers``: per layer rid, ssrc, rtx_ssrc, width, height, target_bps, packets, bytes
        (payload), frames, key_frames, tid_frames (frames per TID), plis, firs, nacks, retransmits."""
        return {"state": self.connection_state,
                "simulcast": list(self.simulcast.rids) if self.simulcast else [],
                "encode_ms": round(self.encode_ms, 2),
                "frames": self.video_track.frames_produced if self.video_track else 0,
                "layers": [layer.snapshot() for layer in self.layers]}

    def take_interval_bps(self) -> dict[str, int]:
        """Per rid: encoded VP8 bits per second since the last call (the first call: since the
        start), for per-second progress."""
        now = time.monotonic()
        elapsed = max(1e-3, now - self._interval_start)
        self._interval_start = now
        out = {}
        for layer in self.layers:
            out[layer.rid] = round(layer.interval_octets * 8 / elapsed)
            layer.interval_octets = 0
        return out


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    parser.add_argument("--token", required=True, help="stream key (sent as a Bearer token)")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after N seconds (0 = until Ctrl-C)")
    parser.add_argument("--width", type=int, default=1280, help="top layer width, px (default 1280)")
    parser.add_argument("--height", type=int, default=720, help="top layer height, px (default 720)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    parser.add_argument("--layers", type=int, choices=(1, 2, 3), default=3,
                        help="simulcast layers: 3 = q,h,f (1/4, 1/2, full); 2 = h,f; 1 = f (default 3)")
    parser.add_argument("--temporal", type=int, choices=(1, 2, 3), default=3,
                        help="VP8 temporal layers per simulcast layer: 3 = L1T3, 2 = L1T2, 1 = none (default 3)")
    parser.add_argument("--bitrates", default="",
                        help="comma-separated targets, bits/s, lowest layer first "
                             "(default 150000,500000,2000000)")
    parser.add_argument("--no-audio", action="store_true", help="video only")
    parser.add_argument("--always-send-rid", action="store_true",
                        help="keep mid/rid extensions on every packet (default: off after an RR, like Chrome)")
    parser.add_argument("--json", action="store_true", help="print progress as JSON lines")


async def run(args: argparse.Namespace) -> int:
    """Publish until ``--seconds`` elapse or SIGINT/SIGTERM; DELETE on exit.  Returns the exit status."""
    bitrates = [int(b) for b in args.bitrates.split(",") if b.strip()] or None
    publisher = SimulcastPublisher(
        args.url, args.token, width=args.width, height=args.height, fps=args.fps, layers=args.layers,
        temporal=args.temporal, bitrates_bps=bitrates, audio=not args.no_audio,
        always_send_rid=args.always_send_rid)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await publisher.start()
    except whip_client.WhipError as exc:
        print(f"simulcast-publish: WHIP POST refused: {exc}", file=sys.stderr)
        return 1
    except (TimeoutError, ValueError, ConnectionError, aiohttp.ClientError) as exc:
        print(f"simulcast-publish: {exc!r}", file=sys.stderr)
        return 1
    started = time.monotonic()
    publisher.take_interval_bps()
    status = 0
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            elapsed = time.monotonic() - started
            bps = publisher.take_interval_bps()
            stats = publisher.stats()
            state = stats["state"]
            if args.json:
                line = {"t": time.time(), "elapsed": round(elapsed, 2), **stats}
                for layer in line["layers"]:
                    layer["kbps"] = round(bps.get(layer["rid"], 0) / 1000, 1)
                print(json.dumps(line, separators=(",", ":")), flush=True)
            else:
                parts = [f"[{elapsed:6.1f}s] {state:<10}"]
                for layer in stats["layers"]:
                    parts.append(f"{layer['rid']} {layer['width']}x{layer['height']} "
                                 f"{bps.get(layer['rid'], 0) / 1000:7.1f} kbps")
                print("  ".join(parts), flush=True)
            if state in ("failed", "closed"):
                print(f"simulcast-publish: connection {state}", file=sys.stderr)
                status = 1
                break
            if args.seconds and elapsed >= args.seconds:
                break
    finally:
        await publisher.stop()
    return status


def main(args: argparse.Namespace) -> int:
    return asyncio.run(run(args))


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m loadtest.simulcast_publisher",
                                      description=(__doc__ or "").split("\n\n")[0])
    add_arguments(_parser)
    try:
        raise SystemExit(main(_parser.parse_args()))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
