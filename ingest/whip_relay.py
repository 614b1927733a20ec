"""An RTMP publisher, republished into relaycast over WHIP: the :class:`~ingest.rtmp_server.MediaSink`
the ingest process gives each ``publish``.

:meth:`WhipRelay.open` offers an H.264 video and an Opus audio track to ``POST /whip`` with
the encoder's stream key as Bearer credential — so the key is checked, a reconnect replaces
the previous session and the room's viewers, ingest health and LL-HLS bridge see an
ordinary WHIP publisher.  Then:

* **H.264 without B-frames** (every composition offset 0) is passed through: each access
  unit becomes one ``av.Packet`` in Annex B form (start codes), the SPS and PPS of the
  latest configuration record put before every IDR picture, its RTP timestamp the FLV
  timestamp × 90 (ms → 90 kHz).  aiortc packetizes it (RFC 6184, packetization-mode 1); no
  decode, no encode (:attr:`WhipRelay.transcoding` stays False).
* **H.264 with B-frames** (a non-zero composition offset: OBS's x264 default ``bframes=2``)
  cannot be forwarded to WebRTC as it is — browsers' WebRTC decoders show frames in the
  order they arrive.  From that frame's key frame on, video is decoded (FFmpeg's H.264
  decoder through PyAV, which reorders) and aiortc encodes the pictures again (H.264
  without B-frames); the log says once "set bframes=0 / profile baseline for lower latency
  and no transcoding".
* **AAC** is decoded and encoded to Opus here (PyAV: 48 kHz stereo, 20 ms, 96 kbit/s,
  libopus complexity 5 — half the cost of aiortc's own encoder at complexity 10); aiortc
  sends the packets.

Media waits in bounded queues (:data:`MAX_QUEUED`); beyond them the oldest is dropped and
counted (``dropped``).  :meth:`close` ends the WHIP session (DELETE) and the peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
from collections import deque
from typing import Any
from urllib.parse import urljoin

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from . import flv
from .rtmp_server import PublishRefused

logger = logging.getLogger(__name__)

MAX_QUEUED = 300
"""Video packets or audio frames waiting for aiortc at most (10 s of 30 fps video)."""
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
_START = b"\x00\x00\x00\x01"
_IDR, _SPS, _PPS, _AUD = 5, 7, 8, 9
BFRAMES_ADVICE = "set bframes=0 / profile baseline for lower latency and no transcoding"
OPUS_RATE = 48000
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
OPUS_BITRATE = 96_000
OPUS_COMPLEXITY = 5
"""libopus complexity (0–10; its default 10 is what aiortc's own encoder uses): 5 costs about
half the CPU, audibly the same for live speech and music at 96 kbit/s stereo."""


def _opus_encoder() -> av.CodecContext:
    """Opus for WebRTC (RFC 7587): 48 kHz stereo, 20 ms frames, 96 kbit/s, complexity 5."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = OPUS_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = OPUS_BITRATE
    codec.time_base = OPUS_TIME_BASE
    codec.options = {"application": "audio", "compression_level": str(OPUS_COMPLEXITY), "frame_duration": "20"}
    return codec


class _QueueTrack(MediaStreamTrack):
    """A track whose ``recv`` returns what :meth:`put` queued (an ``av.Packet`` to pass
    through or an ``av.Frame`` to encode), oldest first; bounded."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, item: Any) -> None:
        if len(self._items) >= MAX_QUEUED:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    async def recv(self) -> Any:
        while not self._items:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class WhipRelay:
    """One RTMP publisher's WHIP session (see the module docstring).  Made by :meth:`open`."""

    def __init__(self, pc: RTCPeerConnection, video: _QueueTrack, audio: _QueueTrack,
                 location: str, key: str, http: aiohttp.ClientSession, peer: str) -> None:
        self.pc = pc
        self.video = video
        self.audio = audio
        self.location = location
        self._key = key
        self._http = http
        self.peer = peer
        self.transcoding = False
        """Video is decoded and encoded again (the source has B-frames)."""
        self.frames_in = 0
        self._config: flv.AvcConfig | None = None
        self._config_record = b""
        self._decoder: av.CodecContext | None = None
        self._waiting_keyframe = False
        self._aac: av.CodecContext | None = None
        self._resampler: av.AudioResampler | None = None
        self._opus: av.CodecContext | None = None
        self._audio_samples = 0
        self._closed = False

    @classmethod
    async def open(cls, whip_url: str, key: str, http: aiohttp.ClientSession, peer: str = "") -> WhipRelay:
        """Publish to ``whip_url`` (``…/whip``: the key's own room) with ``key``.

        :raises PublishRefused: the service refused (401/403: the key — the problem's detail
            is the reason; 404; 409/503: no room for it now) or could not be reached."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video, audio = _QueueTrack("video"), _QueueTrack("audio")
        transceiver = pc.addTransceiver(video, direction="sendonly")
        codecs = RTCRtpSender.getCapabilities("video").codecs
        # H.264, packetization-mode 1 only (RFC 6184 §6.3): what the packets already are.
        transceiver.setCodecPreferences(
            [c for c in codecs if c.mimeType == "video/H264" and c.parameters.get("packetization-mode") == "1"]
            + [c for c in codecs if c.mimeType == "video/rtx"])
        pc.addTransceiver(audio, direction="sendonly")
        location = None
        try:
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
            async with http.post(whip_url, data=pc.localDescription.sdp, headers=headers) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise PublishRefused(_reason(resp.status, body),
                                         "NetStream.Publish.BadName" if resp.status in (401, 403, 404)
                                         else "NetStream.Publish.Failed")
                location = urljoin(whip_url, resp.headers["Location"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except PublishRefused:
            await pc.close()
            raise
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            await pc.close()
            if location is not None:  # created, but its answer was unusable: end it
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.delete(location, headers={"Authorization": f"Bearer {key}"}):
                        pass
            raise PublishRefused(f"the service could not take the stream ({type(exc).__name__})",
                                 "NetStream.Publish.Failed") from None
        return cls(pc, video, audio, location, key, http, peer)

    # ------------------------------------------------------------ MediaSink
    async def on_metadata(self, metadata: dict[str, Any]) -> None:
        pass

    async def on_video(self, timestamp_ms: int, tag: flv.VideoTag) -> None:
        if tag.kind == "config":
            self._config = flv.parse_avc_config(tag.data)
            self._config_record = tag.data
            if self._decoder is not None:
                self._decoder = self._new_decoder()
            return
        if tag.kind != "frame" or self._config is None:
            return
        self.frames_in += 1
        if tag.composition_ms and not self.transcoding:
            self.transcoding = True
            self._decoder = self._new_decoder()
            self._waiting_keyframe = not tag.keyframe
            logger.warning("RTMP %s: the stream has B-frames: transcoding its video for WebRTC; %s",
                           self.peer, BFRAMES_ADVICE)
        if self.transcoding:
            self._decode(timestamp_ms, tag)
        else:
            packet = av.Packet(self._annexb(tag))
            packet.pts = packet.dts = timestamp_ms * 90
            packet.time_base = VIDEO_TIME_BASE
            self.video.put(packet)

    async def on_audio(self, timestamp_ms: int, tag: flv.AudioTag) -> None:
        if tag.kind == "config":
            flv.parse_aac_config(tag.data)  # refuses a malformed one (FlvError)
            self._aac = av.CodecContext.create("aac", "r")
            self._aac.extradata = tag.data
            # 20 ms frames of 48 kHz stereo for the Opus encoder (RFC 7587 §4: 48 kHz RTP clock).
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE,
                                                frame_size=OPUS_RATE // 50)
            self._opus = _opus_encoder()
            return
        if self._aac is None or self._resampler is None or self._opus is None or not tag.data:
            return
        try:
            frames = self._aac.decode(av.Packet(tag.data))
        except av.error.FFmpegError as exc:
            logger.debug("RTMP %s: an AAC frame did not decode: %s", self.peer, exc)
            return
        for frame in frames:
            frame.pts = None  # the resampler counts samples itself
            for out in self._resampler.resample(frame):
                out.pts = self._audio_samples
                out.time_base = OPUS_TIME_BASE
                self._audio_samples += out.samples
                for packet in self._opus.encode(out):
                    packet.time_base = OPUS_TIME_BASE
                    self.audio.put(packet)  # passed to aiortc as it is

    async def close(self, reason: str) -> None:
        """End the WHIP session (DELETE, best effort) and the peer connection."""
        if self._closed:
            return
        self._closed = True
        self.video.stop()
        self.audio.stop()
        try:
            async with self._http.delete(self.location, headers={"Authorization": f"Bearer {self._key}"}):
                pass
        except (aiohttp.ClientError, OSError):
            pass
        await self.pc.close()
        logger.info("RTMP %s: session ended (%s)", self.peer, reason)

    # -------------------------------------------------------------- video
    def _annexb(self, tag: flv.VideoTag) -> bytes:
        """The access unit with start codes; SPS and PPS put before an IDR that lacks them."""
        config = self._config
        assert config is not None
        nalus = [n for n in flv.split_nalus(tag.data, config.length_size) if n[0] & 0x1F != _AUD]
        types = {n[0] & 0x1F for n in nalus}
        if _IDR in types and _SPS not in types:
            nalus = [*config.sps, *config.pps, *nalus]
        return b"".join(_START + n for n in nalus)

    def _new_decoder(self) -> av.CodecContext:
        decoder = av.CodecContext.create("h264", "r")
        # The configuration record as it came is the decoder's extradata (avcC): it then
        # reads the length-prefixed NAL units of the FLV frames as they are.
        decoder.extradata = self._config_record
        return decoder

    def _decode(self, timestamp_ms: int, tag: flv.VideoTag) -> None:
        if self._waiting_keyframe:
            if not tag.keyframe:
                return
            self._waiting_keyframe = False
        decoder = self._decoder
        assert decoder is not None
        packet = av.Packet(tag.data)
        packet.dts = timestamp_ms
        packet.pts = timestamp_ms + tag.composition_ms
        packet.time_base = fractions.Fraction(1, 1000)
        try:
            frames = decoder.decode(packet)
        except av.error.FFmpegError as exc:
            logger.debug("RTMP %s: a video frame did not decode: %s", self.peer, exc)
            return
        for frame in frames:
            if frame.pts is None:
                continue
            frame.pts = frame.pts * 90
            frame.time_base = VIDEO_TIME_BASE
            self.video.put(frame)


def _reason(status: int, body: str) -> str:
    """The refusal's reason as an encoder may show it: the problem's detail (RFC 9457)."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or f"the service answered HTTP {status}")
