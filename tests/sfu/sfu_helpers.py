"""Shared helpers for the SFU tests: publishing the pattern source, reading frame codes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from loadtest import whip_client
from loadtest.pattern import read_code
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from relaycast.service import Service

FRAME_TICKS = 3000  # 90 kHz ticks per frame at 30 fps


class OffsetPatternTrack(PatternVideoTrack):
    """PatternVideoTrack whose counter starts at ``offset`` (tells publishers apart)."""

    def __init__(self, offset: int, width: int = 640, height: int = 360, fps: float = 30) -> None:
        super().__init__(width, height, fps, code="counter", first_code=offset)


def stream_key(svc: Service) -> str:
    assert svc.demo_stream_key
    return svc.demo_stream_key


async def publish_pattern(
    svc: Service, video: PatternVideoTrack | None = None, *, audio: bool = True, chat: bool = False
) -> whip_client.WhipSession:
    """WHIP-publish a 640x360 counter pattern (+ tone) to room ``demo``; waits until connected."""
    tracks: list[MediaStreamTrack] = [video or PatternVideoTrack(640, 360, 30, code="counter")]
    if audio:
        tracks.append(ToneAudioTrack())
    session = await whip_client.publish(f"{svc.url}/whip/demo", stream_key(svc), tracks, chat=chat)
    await whip_client.wait_connected(session.pc)
    return session


def receiver_tracks(pc: RTCPeerConnection) -> dict[str, MediaStreamTrack]:
    """The viewer's remote tracks by kind (the "track" event fires before we could listen)."""
    return {t.kind: t.receiver.track for t in pc.getTransceivers() if t.kind in ("audio", "video")}


@dataclass
class DecodedVideo:
    """Codes read from decoded frames: ``codes[i]`` is ``None`` for an unreadable frame."""

    codes: list[int | None] = field(default_factory=list)
    pts: list[int] = field(default_factory=list)
    first_frame_at: float | None = None  # time.monotonic()

    @property
    def readable(self) -> list[int]:
        return [c for c in self.codes if c is not None]

    def skipped(self) -> int:
        """Frames missing between the first and the last readable code."""
        good = self.readable
        return (good[-1] - good[0] + 1 - len(good)) if good else 0


async def read_frames(
    track: MediaStreamTrack,
    count: int,
    *,
    timeout: float = 20.0,
    into: DecodedVideo | None = None,
    until: Any = None,
) -> DecodedVideo:
    """Decode ``count`` frames (or until ``until(code)`` is true) within ``timeout`` seconds."""
    out = into or DecodedVideo()
    deadline = time.monotonic() + timeout
    n = 0
    while n < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {n} of {count} frames within {timeout} s: {out.codes[-10:]}")
        frame = await asyncio.wait_for(track.recv(), left)
        if out.first_frame_at is None:
            out.first_frame_at = time.monotonic()
        code = read_code(frame)
        out.codes.append(code)
        out.pts.append(frame.pts)
        n += 1
        if until is not None and code is not None and until(code):
            break
    return out
