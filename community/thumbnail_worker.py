"""The thumbnail worker process: ``python -m community.thumbnail_worker --fd N --parent PID``.

Started by :class:`community.thumbnail_process.ThumbnailProcess` with one end of a socket
pair (``--fd``, see :mod:`community.thumbnail_link`) at a lower CPU priority than its
parent, it asks the kernel to end it when its parent dies
(:func:`common.parent_death.die_with_parent`), then serves captures until the link
closes.  For each capture (CAPTURE, then that capture's VIDEO packets) it

1. reassembles the RTP packets into frames, waiting for a key frame
   (:class:`hls_bridge.ingest.FrameAssembler`: RFC 3550 §5.1 timestamp + marker);
2. depacketizes the key frame (aiortc: RFC 7741 VP8, RFC 6184 H.264) and decodes it with
   a fresh PyAV decoder (flushed, so H.264 needs no following frame);
3. scales it to the requested width with OpenCV (``INTER_AREA``, aspect kept, never
   enlarged) and encodes a baseline JPEG (``cv2.imencode``, quality 1..100);
4. answers IMAGE (or FAILED) and forgets the capture.

One thread does all of it (OpenCV and the decoder are single-threaded here), so the
process costs at most one core, at its low priority, and its CPU time per thumbnail is
what IMAGE reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import av
import cv2
import numpy as np
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import depayload

from common.child_main import start_child
from hls_bridge.ingest import FrameAssembler
from sfu.direct import MediaPacket

from . import thumbnail_link as link
from .thumbnail_link import ThumbnailError

logger = logging.getLogger("community.thumbnail_process")

DECODERS = {"video/vp8": "vp8", "video/h264": "h264"}
"""The codecs the SFU forwards (``sfu.negotiation.FORWARDABLE``) → PyAV decoder names."""
MAX_CAPTURES = 64
"""Captures open at once; a CAPTURE beyond this fails at once."""
MAX_WIDTH = 3840


def decode_keyframe(codec: RTCRtpCodecParameters, payloads: Iterable[bytes]) -> av.VideoFrame:
    """Depacketize and decode one key frame with a fresh decoder.

    :param payloads: the frame's RTP payloads in sequence order.
    :raises ThumbnailError: the codec is not VP8/H.264 or the data does not decode.
    """
    name = DECODERS.get(codec.mimeType.lower())
    if name is None:
        raise ThumbnailError(f"no decoder for {codec.mimeType}")
    data = b"".join(depayload(codec, payload) for payload in payloads)
    context = av.CodecContext.create(name, "r")
    context.thread_count = 1
    try:
        frames = list(context.decode(av.Packet(data)))
        frames += context.decode(None)  # flush: the frame is out even with a reorder delay
    except av.FFmpegError as exc:
        raise ThumbnailError(f"{name} decode failed: {exc}") from None
    frames = [f for f in frames if isinstance(f, av.VideoFrame)]
    if not frames:
        raise ThumbnailError(f"{name}: the key frame decoded to no picture")
    return frames[0]


def encode_jpeg(frame: av.VideoFrame, width: int, quality: int) -> tuple[bytes, int, int]:
    """``(jpeg, width, height)``: ``frame`` scaled to ``width`` px wide (aspect kept, never
    enlarged; OpenCV ``INTER_AREA``) and JPEG-encoded with OpenCV at ``quality`` (1..100).

    :raises ThumbnailError: OpenCV could not encode it.
    """
    bgr: np.ndarray = frame.to_ndarray(format="bgr24")
    height, source_width = bgr.shape[:2]
    target_w = max(1, min(width, source_width))
    target_h = max(1, round(height * target_w / source_width))
    if (target_w, target_h) != (source_width, height):
        bgr = cv2.resize(bgr, (target_w, target_h), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ThumbnailError("JPEG encoding failed")
    return jpeg.tobytes(), target_w, target_h


@dataclass
class Capture:
    """One open capture in the worker: its assembler and the CPU spent on it so far."""

    request: link.CaptureRequest
    codec: RTCRtpCodecParameters
    assembler: FrameAssembler
    cpu_s: float = 0.0
    attempts: int = 0


class Worker:
    """The worker's state: open captures by id; ``handle`` one message, get replies."""

    def __init__(self) -> None:
        self.captures: dict[int, Capture] = {}
        self.images = 0
        self.failures = 0

    def handle(self, kind: bytes, body: bytes) -> list[bytes]:
        """Framed replies to one message.  :raises LinkClosed: a malformed message."""
        if kind == link.VIDEO:
            capture_id, media = link.decode_video(body)
            capture = self.captures.get(capture_id)
            if capture is None:
                return []  # finished or cancelled: packets still in flight
            started = time.thread_time()
            replies = self._push(capture, media, started)
            capture.cpu_s += time.thread_time() - started
            return replies
        if kind == link.CAPTURE:
            return self._open(link.decode_capture(body))
        if kind == link.CANCEL:
            self.captures.pop(link.decode_id(body), None)
            return []
        raise link.LinkClosed(f"unexpected message type {kind!r}")

    def _open(self, request: link.CaptureRequest) -> list[bytes]:
        track = request.track
        mime = str(track.get("mime_type", ""))
        if mime.lower() not in DECODERS:
            return self._fail(request.capture, f"no decoder for {mime or 'an unnamed codec'}")
        if len(self.captures) >= MAX_CAPTURES:
            return self._fail(request.capture, f"{MAX_CAPTURES} captures already open")
        if not 1 <= request.width <= MAX_WIDTH or not 1 <= request.quality <= 100:
            return self._fail(request.capture, "width or quality out of range")
        codec = RTCRtpCodecParameters(mimeType=mime, clockRate=int(track.get("clock_rate") or 90000),
                                      channels=track.get("channels"),
                                      parameters=dict(track.get("parameters") or {}))
        self.captures[request.capture] = Capture(
            request, codec, FrameAssembler(mime, codec.clockRate, max_delay=0.5))
        return []

    def _push(self, capture: Capture, media: MediaPacket, started: float) -> list[bytes]:
        """Feed one packet; on a decodable key frame, the IMAGE (``started``: the thread
        time when this packet's handling began, for the capture's CPU total)."""
        for encoded in capture.assembler.push(media):
            if not encoded.keyframe:
                continue
            capture.attempts += 1
            request = capture.request
            try:
                frame = decode_keyframe(capture.codec, encoded.payloads)
                jpeg, width, height = encode_jpeg(frame, request.width, request.quality)
            except ThumbnailError as exc:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("capture %d: %s", request.capture, exc)
                if capture.attempts >= 3:
                    del self.captures[request.capture]
                    return self._fail(request.capture, str(exc))
                capture.assembler.resync()  # try the next key frame
                continue
            del self.captures[request.capture]
            self.images += 1
            cpu_us = int((capture.cpu_s + time.thread_time() - started) * 1e6)
            return [link.image(link.Image(request.capture, width, height, cpu_us, jpeg))]
        return []

    def _fail(self, capture_id: int, reason: str) -> list[bytes]:
        self.failures += 1
        return [link.failed(capture_id, reason)]


async def run(fd: int) -> int:
    """Serve captures on the link at ``fd`` until it closes; the exit status."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=link.MAX_FRAME)
    worker = Worker()
    logger.info("thumbnail worker started (pid %d, nice %d)", os.getpid(), os.nice(0))
    try:
        while True:
            kind, body = await link.read_frame(reader)
            replies = worker.handle(kind, body)
            for reply in replies:
                writer.write(reply)
            if replies:
                await writer.drain()
    except (link.LinkClosed, ConnectionError):
        pass
    finally:
        writer.close()
    logger.info("thumbnail worker exits: %d images, %d failures", worker.images, worker.failures)
    return 0


def main(argv: list[str] | None = None) -> int:
    # The parent stops the worker by closing the link.
    args = start_child("python -m community.thumbnail_worker", "the capturer's process id", argv)
    cv2.setNumThreads(1)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args.fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
