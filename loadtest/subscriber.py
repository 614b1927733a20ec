"""Lightweight WHEP subscribers for ``loadtest fanout``: count RTP, decode only a sample.

A :class:`LightSubscriber` is an aiortc peer connection (``whip_client.view``)
whose receivers do not decode: :func:`sfu.aiortc_private.install_forwarding_receiver`
hands every SRTP-unprotected, RTX-unwrapped RTP packet to a counter, and aiortc
still sends receiver reports and NACKs.  Per stream it keeps

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

    {"cmd": "join", "url": U, "count": k, "decode": [bool, ...], "concurrency": c}
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
import sys
import time
from typing import Any

import aiohttp
import av
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import depayload
from aiortc.rtp import RtpPacket

from sfu import aiortc_private
from sfu.rtp import vp8_is_keyframe_start

from . import whip_client
from .pattern import code_to_capture_time, read_code

logger = logging.getLogger(__name__)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
_RING = 4096  # sequence numbers remembered for duplicate detection
_MAX_OPEN_FRAMES = 48  # incomplete frames tracked per subscriber


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
    """libvpx decoder for one sampled subscriber; reads the capture-time code of each frame."""

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libvpx", "r")
        self.started = False
        self.last_timestamp = -1
        self.decoded = 0
        self.unreadable = 0
        self.errors = 0

    def decode(self, frame: _Frame, timestamp: int) -> int | None:
        """Decode one complete frame; returns the code read from the newest picture, if any."""
        if not self.started:
            if not frame.key:
                return None
            self.started = True
        elif ((timestamp - self.last_timestamp) & 0xFFFFFFFF) >= 0x80000000:
            return None  # older than what was already decoded (completed late by RTX)
        self.last_timestamp = timestamp
        assert frame.parts is not None
        data = b"".join(depayload(VP8, frame.parts[k]) for k in sorted(frame.parts))
        try:
            pictures = self.codec.decode(av.Packet(data))
        except av.error.FFmpegError:
            self.errors += 1
            self.started = False  # wait for the next key frame
            return None
        code = None
        for picture in pictures:
            self.decoded += 1
            code = read_code(picture)
            if code is None:
                self.unreadable += 1
        return code


class LightSubscriber:
    """One WHEP viewer that counts RTP and optionally decodes (see module docstring)."""

    def __init__(self, index: int, decode: bool) -> None:
        self.index = index
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
        self._frames: dict[int, _Frame] = {}

    # ------------------------------------------------------------ joining
    async def join(self, url: str, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        """WHEP POST, install the counting receivers, wait until connected."""
        self.t_post = time.time()
        session = await asyncio.wait_for(whip_client.view(url, http=http), timeout)
        self.session = session
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

    async def close(self, http: aiohttp.ClientSession) -> None:
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
        ext = self.video.add(packet.sequence_number)
        if ext < 0:
            return
        if self.t_first_packet is None:
            self.t_first_packet = time.time()
        frames = self._frames
        timestamp = packet.timestamp
        frame = frames.get(timestamp)
        if frame is None:
            frame = frames[timestamp] = _Frame()
            if self.decoder is not None:
                frame.parts = {}
            while len(frames) > _MAX_OPEN_FRAMES:
                del frames[next(iter(frames))]
        payload = packet.payload
        frame.count += 1
        if payload and payload[0] & 0x17 == 0x10:  # S bit set, partition index 0
            frame.start = ext
            frame.key = vp8_is_keyframe_start(payload)
        if packet.marker:
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
        if self.decoder is None:
            return
        code = self.decoder.decode(frame, timestamp)
        if code is None:
            return
        now = time.time()
        if self.t_first_decoded is None:
            self.t_first_decoded = now
        self.latency_ms.append((now, (now - code_to_capture_time(code, now)) * 1000.0))

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

    async def join(self, url: str, decode: list[bool], concurrency: int = 4) -> list[dict[str, Any]]:
        """Add ``len(decode)`` subscribers, at most ``concurrency`` joining at once."""
        http = await self._session()
        limit = asyncio.Semaphore(max(1, concurrency))
        new = [LightSubscriber(len(self.subscribers) + i, d) for i, d in enumerate(decode)]
        self.subscribers.extend(new)

        async def one(sub: LightSubscriber) -> None:
            async with limit:
                try:
                    await sub.join(url, http)
                except Exception as exc:  # reported, never fatal for the pool
                    sub.error = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(one(s) for s in new))
        return [{"index": s.index, "error": s.error, "t_post": s.t_post,
                 "t_connected": s.t_connected} for s in new]

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
                        int(request.get("concurrency", 4)))}
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s subscriber[%(process)d] %(levelname)s %(name)s: %(message)s")
    whip_client.pin_loopback()
    asyncio.run(serve_stdio(SubscriberPool()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
