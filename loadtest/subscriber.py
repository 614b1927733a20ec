"""Lightweight WHEP subscribers for ``loadtest fanout``: count RTP, decode only a sample.

A :class:`LightSubscriber` is an aiortc peer connection (``whip_client.view``)
whose receivers do not decode: :func:`sfu.aiortc_private.install_forwarding_receiver`
hands every SRTP-unprotected, RTX-unwrapped RTP packet to a counter while the
connection comes up.  Once connected, the subscriber switches to
:func:`loadtest.aiortc_hooks.install_raw_rtp_receiver` — SRTP unprotect right in the
socket callback, header parsed here, video NACKs (RFC 4585) sent here — because
aiortc's own receive path (~30 µs a packet) would make the subscribers, not the
SFU, the limit on a 2-core machine (``fast=False`` keeps aiortc's path).  Per
stream it keeps

* ``expected`` (extended highest − first sequence number + 1: exactly the packets
  the SFU sent, because a consumer's output sequence numbers are continuous),
  ``received`` (unique), ``late`` (arrived after a newer one: NACK/RTX repairs or
  reordering) and ``duplicates``;
* for video, *complete frames*: every packet from the VP8 start-of-partition
  packet to the marker packet arrived (RFC 7741 §4.2) — the delivered frame rate.

A *sampled* subscriber (``decode=True``) also reassembles complete frames, decodes
them with libvpx (PyAV) and reads the capture time drawn by
:class:`loadtest.sources.PatternVideoTrack` with :func:`loadtest.pattern.read_code`,
giving glass-to-glass latency (decode finished − capture, same machine clock) and
the join time (WHEP POST sent → first decoded frame).

``python -m loadtest.subscriber`` runs a :class:`SubscriberPool` driven by JSON
lines on stdin (one reply line per command on stdout); ``loadtest fanout`` starts
one or more of these processes.  Commands::

    {"cmd": "join", "url": U, "decode": [bool, ...], "concurrency": c, "fast": true,
     "limits": [bits/s or null, ...]}  (limits: viewers behind a user-space rate limit)
    {"cmd": "probe", "url": U, "count": k}  (join time: sequential decoding viewers that leave)
    {"cmd": "wait_media", "timeout": s}
    {"cmd": "snapshot"}
    {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import struct
import sys
import time
from typing import Any

import aiohttp
import av
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import depayload, is_rtx
from aiortc.rtp import RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket, RtpPacket

from sfu import aiortc_private
from sfu.picture_size import vp8_keyframe_size
from sfu.rtp import vp8_is_keyframe_start
from sfu.twcc import TRANSPORT_CC_URI, TwccRecorder

from . import aiortc_hooks, whip_client
from .impair_relay import Impairment, view_through_relay
from .pattern import code_to_capture_time, read_code

logger = logging.getLogger(__name__)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
_RING = 4096  # sequence numbers remembered for duplicate detection
_MAX_OPEN_FRAMES = 48  # incomplete frames tracked per subscriber
_GAP_GIVE_UP_S = 0.5  # a sampled decoder waits this long for a repair before asking for a key frame
_PROBE_SPACING_S = 0.5
_RECEIVE_BUFFER = 1 << 20  # SO_RCVBUF per subscriber socket: rides out scheduling hiccups
FEEDBACK_INTERVAL_S = 0.0625
"""How often a viewer sends transport-cc feedback: what Chromium's watch page sends, measured
(16.0 feedback packets a second, docs/benchmarks.md).  libwebrtc's receiver sizes its
interval so that feedback takes 5 % of *its own* send rate (RemoteEstimatorProxy, clamped to
50–250 ms), which for a receive-only viewer does not follow the stream it receives."""
_RTP = struct.Struct("!HII")  # sequence number, timestamp, SSRC
LIMITED_QUEUE_MS = 100.0  # a rate-limited viewer's bottleneck queue (drop-tail), ms


class SeqCounter:
    """Extended-sequence bookkeeping for one RTP stream (RFC 3550 §A.1 style)."""

    __slots__ = ("first", "highest", "received", "late", "duplicates", "_ring")

    def __init__(self) -> None:
        self.first = -1
        self.highest = -1
        self.received = 0
        self.late = 0
        self.duplicates = 0
        self._ring = [-1] * _RING

    def add(self, seq: int) -> int:
        """Record ``seq`` (16 bits); returns its extended value, or -1 for a duplicate/stale one."""
        highest = self.highest
        if highest < 0:
            ext = self.first = seq
        else:
            delta = (seq - highest) & 0xFFFF
            ext = highest + delta if delta < 0x8000 else highest - (0x10000 - delta)
            if ext < self.first:
                return -1
        slot = ext % _RING
        if self._ring[slot] == ext:
            self.duplicates += 1
            return -1
        self._ring[slot] = ext
        self.received += 1
        if ext > highest:
            self.highest = ext
        else:
            self.late += 1
        return ext

    @property
    def expected(self) -> int:
        return 0 if self.highest < 0 else self.highest - self.first + 1

    def to_json(self) -> dict[str, int]:
        return {"expected": self.expected, "received": self.received, "late": self.late,
                "duplicates": self.duplicates}


class _Frame:
    __slots__ = ("start", "end", "count", "key", "parts")

    def __init__(self) -> None:
        self.start = -1
        self.end = -1
        self.count = 0
        self.key = False
        self.parts: dict[int, bytes] | None = None


class SampleDecoder:
    """libvpx decoder for one sampled subscriber; reads the capture-time code of each picture."""

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libvpx", "r")
        self.decoded = 0
        self.unreadable = 0
        self.errors = 0

    def decode(self, frame: _Frame) -> tuple[bool, int | None]:
        """Decode one complete frame: ``(ok, code of the newest picture or None)``."""
        assert frame.parts is not None
        data = b"".join(depayload(VP8, frame.parts[k]) for k in sorted(frame.parts))
        try:
            pictures = self.codec.decode(av.Packet(data))
        except av.error.FFmpegError:
            self.errors += 1
            return False, None
        code = None
        for picture in pictures:
            self.decoded += 1
            code = read_code(picture)
            if code is None:
                self.unreadable += 1
        return True, code


class LightSubscriber:
    """One WHEP viewer that counts RTP and optionally decodes (see module docstring)."""

    def __init__(self, index: int, decode: bool, limit_bps: int | None = None,
                 transport_cc: bool = True) -> None:
        self.index = index
        self.transport_cc = transport_cc
        """Offer transport-cc and send transport feedback every 62.5 ms, as Chromium does."""
        self.limit_bps = limit_bps
        """Behind a user-space rate limit (:class:`loadtest.impair_relay.ImpairRelay`), bits/s."""
        self.relay: Any = None
        self.keyframe_sizes: list[tuple[float, int, int]] = []  # (time.time(), width, height)
        self.session: whip_client.WhipSession | None = None
        self.video = SeqCounter()
        self.audio = SeqCounter()
        self.frames_complete = 0
        self.keyframes = 0
        self.error: str | None = None
        self.t_post: float | None = None
        self.t_answer: float | None = None
        self.t_connected: float | None = None
        self.t_first_packet: float | None = None
        self.t_first_keyframe: float | None = None
        self.t_first_decoded: float | None = None
        self.decoder = SampleDecoder() if decode else None
        self.latency_ms: list[tuple[float, float]] = []  # (decoded at, glass-to-glass ms)
        self.decoded_event = asyncio.Event()  # set on the first decoded, readable frame
        self.first_video = asyncio.Event()  # set on the first video packet
        self.nacks_sent = 0
        self.plis_sent = 0
        self.fast_path = False
        self._pending: dict[int, tuple[_Frame, float]] = {}  # start seq -> frame waiting for a gap
        self._next_start: int | None = None  # first sequence number of the next decodable frame
        self._waiting_since: float | None = None
        self._last_pli = -1e9
        self._frames: dict[int, _Frame] = {}
        self._pts: dict[int, tuple[str, bool]] = {}
        self._rtcp: aiortc_private.RawRtpSender | None = None
        self._rtcp_ssrc = random.getrandbits(32)
        self._video_ssrc = 0
        # transport-wide congestion control, as a browser does it (answered when offered)
        self._twcc_id = 0
        self._twcc: TwccRecorder | None = None
        self._twcc_task: asyncio.Task[None] | None = None
        self.feedback_sent = 0

    # ------------------------------------------------------------ joining
    async def join(self, url: str, http: aiohttp.ClientSession, timeout: float = 20.0,
                   fast: bool = True) -> None:
        """WHEP POST, install the counting receivers, wait until connected.

        Packets go through aiortc's receive path and
        :func:`~sfu.aiortc_private.install_forwarding_receiver` until the
        connection is up; then (``fast``) straight from the socket.
        """
        self.t_post = time.time()
        if self.limit_bps:
            session, self.relay = await asyncio.wait_for(view_through_relay(
                url, down=Impairment(rate_bps=self.limit_bps, queue_ms=LIMITED_QUEUE_MS), http=http,
                edit_offer=whip_client.offer_transport_cc if self.transport_cc else None, seed=self.index),
                timeout)
        else:
            session = await asyncio.wait_for(
                whip_client.view(url, http=http, transport_cc=self.transport_cc), timeout)
        self.session = session
        match = re.search(r"^a=extmap:(\d+) " + re.escape(TRANSPORT_CC_URI), session.answer, re.MULTILINE)
        if match and 1 <= int(match.group(1)) <= 14:
            self._twcc_id = int(match.group(1))
            self._twcc = TwccRecorder(self._rtcp_ssrc)
        for transceiver in session.pc.getTransceivers():
            if transceiver.kind not in ("audio", "video"):
                continue
            receiver = transceiver.receiver
            if aiortc_private.receiver_has_started(receiver):
                raise RuntimeError("receiver started before the counting hook was installed")
            handler = self._on_video if transceiver.kind == "video" else self._on_audio
            aiortc_private.install_forwarding_receiver(receiver, handler, _ignore_rtcp)
        self.t_answer = time.time()
        await whip_client.wait_connected(session.pc, timeout)
        self.t_connected = time.time()
        if fast:
            for _ in range(100):  # "connected" is set in the same step as DTLS; bounded retry
                if self._start_fast_path():
                    self.fast_path = True
                    break
                await asyncio.sleep(0.01)

    async def _send_feedback(self) -> None:
        """RTCP transport feedback every :data:`FEEDBACK_INTERVAL_S` (Chromium's rate)."""
        recorder = self._twcc
        assert recorder is not None
        while self.session is not None:
            await asyncio.sleep(FEEDBACK_INTERVAL_S)
            if recorder.pending and self._rtcp is not None:
                for packet in recorder.build_feedback():
                    if self._rtcp.send_rtcp(packet):
                        self.feedback_sent += 1

    async def close(self, http: aiohttp.ClientSession) -> None:
        if self._twcc_task is not None:
            self._twcc_task.cancel()
            self._twcc_task = None
        if self.relay is not None:
            relay, self.relay = self.relay, None
            try:
                await relay.close()
            except OSError:
                pass
        if self.session is not None:
            session, self.session = self.session, None
            try:
                await asyncio.wait_for(session.close(http), 10)
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                pass

    @property
    def ready(self) -> bool:
        """Media is flowing: a complete key frame arrived (and, when sampled, one was decoded)."""
        if self.t_first_keyframe is None:
            return False
        return self.decoder is None or self.t_first_decoded is not None

    # ------------------------------------------------------------ packets
    def _on_audio(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self.audio.add(packet.sequence_number)

    def _on_video(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self._video(packet.sequence_number, packet.timestamp, packet.marker, packet.payload)

    def _start_fast_path(self) -> bool:
        """Switch to :func:`loadtest.aiortc_hooks.install_raw_rtp_receiver` once connected."""
        assert self.session is not None
        pts: dict[int, tuple[str, bool]] = {}
        dtls = None
        for transceiver in self.session.pc.getTransceivers():
            if transceiver.kind not in ("audio", "video"):
                continue
            dtls = transceiver.sender.transport
            for codec in aiortc_private.negotiated_codecs(transceiver):
                pts[codec.payloadType] = (transceiver.kind, is_rtx(codec))
        if dtls is None or not aiortc_hooks.install_raw_rtp_receiver(
                dtls, self._on_raw, receive_buffer=_RECEIVE_BUFFER):
            return False
        self._pts = pts
        self._rtcp = aiortc_private.RawRtpSender(dtls)
        if self._twcc is not None and self._twcc_task is None:
            self._twcc_task = asyncio.ensure_future(self._send_feedback())
        return True

    def _on_raw(self, data: bytes, arrival_us: int) -> None:
        """One SRTP-unprotected RTP packet (RFC 3550 §5.1; RTX per RFC 4588 §4) the kernel
        received at ``arrival_us`` (µs, CLOCK_REALTIME)."""
        info = self._pts.get(data[1] & 0x7F)
        if info is None:
            return
        seq, timestamp, ssrc = _RTP.unpack_from(data, 2)
        first = data[0]
        offset = 12 + 4 * (first & 0x0F)
        if first & 0x10:  # header extension
            length = 4 * ((data[offset + 2] << 8) | data[offset + 3])
            if self._twcc is not None and data[offset] == 0xBE and data[offset + 1] == 0xDE:
                self._record_twcc(data, offset + 4, offset + 4 + length, ssrc, arrival_us)
            offset += 4 + length
        end = len(data) - (data[-1] if first & 0x20 else 0)
        kind, rtx = info
        if rtx:
            if end - offset < 2:
                return
            seq = (data[offset] << 8) | data[offset + 1]
            offset += 2
        if kind == "audio":
            self.audio.add(seq)
            return
        if not rtx:
            self._video_ssrc = ssrc
        highest = self.video.highest
        self._video(seq, timestamp, data[1] >> 7, data[offset:end])
        if self._rtcp is not None and highest >= 0 and self.video.highest > highest + 1:
            self._nack(highest + 1, self.video.highest)

    def _record_twcc(self, data: bytes, pos: int, end: int, ssrc: int, arrival_us: int) -> None:
        """Find the transport-wide sequence number among the one-byte-header elements
        (RFC 8285 §4.2) and record its arrival (µs)."""
        wanted = self._twcc_id
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            element, size = byte >> 4, (byte & 0x0F) + 1
            if element == 15:
                return
            if element == wanted and size == 2:
                assert self._twcc is not None
                self._twcc.record((data[pos + 1] << 8) | data[pos + 2], arrival_us, ssrc)
                return
            pos += 1 + size

    def _nack(self, first: int, end: int) -> None:
        """Generic NACK (RFC 4585 §6.2.1) for extended sequence numbers [first, end)."""
        lost = [ext & 0xFFFF for ext in range(first, min(end, first + 128))]
        packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self._rtcp_ssrc, media_ssrc=self._video_ssrc,
                                 lost=lost)
        assert self._rtcp is not None
        self._rtcp.send_rtcp(bytes(packet))
        self.nacks_sent += 1

    def _video(self, seq: int, timestamp: int, marker: int, payload: bytes) -> None:
        ext = self.video.add(seq)
        if ext < 0:
            return
        if self.t_first_packet is None:
            self.t_first_packet = time.time()
            self.first_video.set()
        frames = self._frames
        frame = frames.get(timestamp)
        if frame is None:
            frame = frames[timestamp] = _Frame()
            if self.decoder is not None:
                frame.parts = {}
            while len(frames) > _MAX_OPEN_FRAMES:
                del frames[next(iter(frames))]
        frame.count += 1
        if payload and payload[0] & 0x17 == 0x10:  # S bit set, partition index 0
            frame.start = ext
            frame.key = vp8_is_keyframe_start(payload)
            if frame.key and len(self.keyframe_sizes) < 64:
                size = vp8_keyframe_size(payload)
                if size is not None and (not self.keyframe_sizes or self.keyframe_sizes[-1][1:] != size[:2]):
                    self.keyframe_sizes.append((time.time(), size[0], size[1]))
        if marker:
            frame.end = ext
        if frame.parts is not None:
            frame.parts[ext] = payload
        if frame.start >= 0 and frame.end >= 0 and frame.count == frame.end - frame.start + 1:
            del frames[timestamp]
            self._complete(frame, timestamp)

    def _complete(self, frame: _Frame, timestamp: int) -> None:
        self.frames_complete += 1
        if frame.key:
            self.keyframes += 1
            if self.t_first_keyframe is None:
                self.t_first_keyframe = time.time()
        if self.decoder is not None:
            self._feed_decoder(frame)

    def _feed_decoder(self, frame: _Frame) -> None:
        """A minimal jitter buffer: decode frames in sequence order, never across a gap.

        A frame is decodable when it is a key frame or starts right after the last
        decoded one; later frames wait for the gap to be repaired (NACK/RTX).  When
        it is not repaired within :data:`_GAP_GIVE_UP_S`, or the decoder fails, the
        subscriber waits for a key frame and asks for one (PLI).
        """
        now = time.monotonic()
        pending = self._pending
        if frame.key:
            for start in [s for s in pending if s < frame.start]:
                del pending[start]
        elif self._next_start is None or frame.start > self._next_start:
            if self._next_start is not None:
                pending[frame.start] = (frame, now)
            if now - min((t for _, t in pending.values()), default=now) > _GAP_GIVE_UP_S or (
                    self._next_start is None and now - (self._waiting_since or now) > _GAP_GIVE_UP_S):
                pending.clear()
                self._next_start = None
                self._request_keyframe(now)
            if self._next_start is None and self._waiting_since is None:
                self._waiting_since = now
            return
        elif frame.start < self._next_start:
            return  # already skipped
        self._decode(frame)
        while self._next_start in pending:
            self._decode(pending.pop(self._next_start)[0])

    def _decode(self, frame: _Frame) -> None:
        assert self.decoder is not None
        ok, code = self.decoder.decode(frame)
        if not ok:
            self._next_start = None
            self._waiting_since = time.monotonic()
            return
        self._next_start = frame.end + 1
        self._waiting_since = None
        if code is None:
            return
        now = time.time()
        if self.t_first_decoded is None:
            self.t_first_decoded = now
            self.decoded_event.set()
        self.latency_ms.append((now, (now - code_to_capture_time(code, now)) * 1000.0))

    def _request_keyframe(self, now: float) -> None:
        """PLI (RFC 4585 §6.3.1), at most once a second."""
        if self._rtcp is None or now - self._last_pli < 1.0:
            return
        self._last_pli = now
        self._rtcp.send_rtcp(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self._rtcp_ssrc,
                                                  media_ssrc=self._video_ssrc)))
        self.plis_sent += 1

    # ------------------------------------------------------------- report
    def snapshot(self) -> dict[str, Any]:
        decoder = self.decoder
        return {
            "index": self.index,
            "ok": self.session is not None and self.error is None,
            "error": self.error,
            "state": self.session.pc.connectionState if self.session else "closed",
            "video": self.video.to_json(),
            "audio": self.audio.to_json(),
            "frames": self.frames_complete,
            "keyframes": self.keyframes,
            "decode": decoder is not None,
            "decoded": decoder.decoded if decoder else 0,
            "fast_path": self.fast_path,
            "nacks_sent": self.nacks_sent,
            "plis_sent": self.plis_sent,
            "feedback_sent": self.feedback_sent,
            "limit_bps": self.limit_bps,
            "relay_dropped": 0 if self.relay is None else (
                self.relay.stats.down.lost + self.relay.stats.down.queue_dropped),
            "keyframe_sizes": self.keyframe_sizes,
            "unreadable": decoder.unreadable if decoder else 0,
            "t_post": self.t_post,
            "t_connected": self.t_connected,
            "t_first_packet": self.t_first_packet,
            "t_first_keyframe": self.t_first_keyframe,
            "t_first_decoded": self.t_first_decoded,
        }


def _ignore_rtcp(packet: object) -> None:
    """Sender reports from the SFU are not needed by the counters."""


class SubscriberPool:
    """All subscribers of one process."""

    def __init__(self) -> None:
        self.subscribers: list[LightSubscriber] = []
        self._http: aiohttp.ClientSession | None = None

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def join(self, url: str, decode: list[bool], concurrency: int = 4,
                   fast: bool = True, limits: list[int | None] | None = None,
                   transport_cc: bool = True) -> list[dict[str, Any]]:
        """Add ``len(decode)`` subscribers, at most ``concurrency`` joining at once;
        ``limits[i]`` puts the i-th behind a rate limit (bits/s, a user-space relay)."""
        http = await self._session()
        limit = asyncio.Semaphore(max(1, concurrency))
        limits = limits or [None] * len(decode)
        new = [LightSubscriber(len(self.subscribers) + i, d, lim, transport_cc)
               for i, (d, lim) in enumerate(zip(decode, limits, strict=False))]
        self.subscribers.extend(new)

        async def one(sub: LightSubscriber) -> None:
            async with limit:
                try:
                    await sub.join(url, http, fast=fast)
                except Exception as exc:  # reported, never fatal for the pool
                    sub.error = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(one(s) for s in new))
        return [{"index": s.index, "error": s.error, "t_post": s.t_post,
                 "t_connected": s.t_connected} for s in new]

    async def probe(self, url: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Join time into the running room: ``count`` decoding viewers, one after the other.

        Each probe POSTs WHEP, waits for its first decoded frame (bounded), and
        leaves; probes are :data:`_PROBE_SPACING_S` apart.  Returns ``{t_post, t_connected, t_first_keyframe, t_first_decoded, error}``.
        """
        http = await self._session()
        out = []
        for i in range(count):
            if i:
                # Let the SFU's key-frame throttle window (300 ms) lapse, as for a lone
                # arrival; back-to-back probes would each wait for the throttled PLI.
                await asyncio.sleep(_PROBE_SPACING_S)
            sub = LightSubscriber(-1, decode=True)
            try:
                await sub.join(url, http, timeout)
                await asyncio.wait_for(sub.decoded_event.wait(), timeout)
            except Exception as exc:  # reported per probe
                sub.error = f"{type(exc).__name__}: {exc}"
            out.append({"t_post": sub.t_post, "t_answer": sub.t_answer, "t_connected": sub.t_connected,
                        "t_first_packet": sub.t_first_packet, "t_first_keyframe": sub.t_first_keyframe,
                        "t_first_decoded": sub.t_first_decoded, "error": sub.error})
            await sub.close(http)
        return out

    async def wait_media(self, timeout: float) -> dict[str, int]:
        """Wait (bounded) until every joined subscriber is :attr:`LightSubscriber.ready`."""
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.subscribers if s.error is None]
            waiting = [s for s in live if not s.ready]
            if not waiting or time.monotonic() >= deadline:
                return {"ready": len(live) - len(waiting), "waiting": len(waiting),
                        "failed": len(self.subscribers) - len(live)}
            await asyncio.sleep(0.05)

    def snapshot(self) -> dict[str, Any]:
        """Cumulative counters of every subscriber, plus latency samples new since the last call."""
        times = os.times()
        latency = []
        for s in self.subscribers:
            latency.extend((s.index, t, round(ms, 2)) for t, ms in s.latency_ms)
            s.latency_ms = []
        return {"t": time.time(), "cpu_s": times.user + times.system,
                "subs": [s.snapshot() for s in self.subscribers], "latency": latency}

    async def close(self) -> None:
        if self._http is None:
            return
        http = self._http
        limit = asyncio.Semaphore(16)

        async def one(sub: LightSubscriber) -> None:
            async with limit:
                await sub.close(http)

        await asyncio.gather(*(one(s) for s in self.subscribers))
        await http.close()
        self._http = None


async def serve_stdio(pool: SubscriberPool) -> None:
    """Answer JSON-line commands from stdin until ``quit`` or EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "pid": os.getpid()})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                request = json.loads(line)
                cmd = request.get("cmd")
                if cmd == "join":
                    result: dict[str, Any] = {"joined": await pool.join(
                        request["url"], [bool(d) for d in request["decode"]],
                        int(request.get("concurrency", 4)), bool(request.get("fast", True)),
                        request.get("limits"), bool(request.get("transport_cc", True)))}
                elif cmd == "probe":
                    result = {"probes": await pool.probe(request["url"], int(request.get("count", 1)),
                                                         float(request.get("timeout", 10)))}
                elif cmd == "wait_media":
                    result = await pool.wait_media(float(request.get("timeout", 10)))
                elif cmd == "snapshot":
                    result = pool.snapshot()
                elif cmd == "quit":
                    await pool.close()
                    reply({"ok": True})
                    break
                else:
                    result = {"error": f"unknown command {cmd!r}"}
            except Exception as exc:  # keep the pool alive; the parent sees the error
                logger.exception("subscriber command failed")
                result = {"error": f"{type(exc).__name__}: {exc}"}
            reply(result)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.subscriber",
                                     description="A pool of lightweight WHEP subscribers (JSON lines on stdio).")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--ice-address", default="127.0.0.1",
                        help="the one address to gather ICE candidates on (default 127.0.0.1; a "
                             "network namespace's address when the pool runs inside one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s subscriber[%(process)d] %(levelname)s %(name)s: %(message)s")
    aiortc_private.set_host_addresses([args.ice_address])
    asyncio.run(serve_stdio(SubscriberPool()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
