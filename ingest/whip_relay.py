"""An RTMP or SRT publisher, republished into relaycast over WHIP: the sink the ingest process
gives each RTMP ``publish`` (:class:`~ingest.rtmp_server.MediaSink`) and each SRT caller
(:class:`~ingest.srt_server.TsSink`).

:meth:`WhipRelay.open` offers an H.264 video and an Opus audio track to ``POST /whip`` (the
key's own room) or ``POST /whip/{channel}`` with the encoder's stream key as Bearer credential
— so the key is checked, a reconnect replaces the previous session and the room's viewers,
ingest health and LL-HLS bridge see an ordinary WHIP publisher.  Both protocols come down
to H.264 access units (FLV's length-prefixed NAL units, MPEG-TS's Annex B byte stream) with
a decode and a presentation time in 90 kHz ticks; then:

* **H.264 without B-frames** (pts = dts on every access unit) is passed through: each access
  unit's NAL units (access unit delimiters dropped; the latest SPS and PPS — FLV's
  configuration record, or in-band ones — put before every IDR picture that lacks them) are
  packetized (RFC 6184, packetization-mode 1) with the pts as RTP timestamp and sent at
  once; no decode, no encode (:attr:`WhipRelay.transcoding` stays False).
* **H.264 with B-frames** (pts ≠ dts: OBS's x264 default ``bframes=2``) cannot be
  forwarded to WebRTC as it is — browsers' WebRTC decoders show frames in the order they
  arrive.  From that frame's key frame on, video is decoded (FFmpeg's H.264 decoder through
  PyAV, which reorders) and encoded again (libx264: constrained baseline, no B-frames,
  ``zerolatency``, :data:`TRANSCODE_BITRATE`; a key frame when the SFU asks with a PLI) in a
  worker thread, at most :data:`MAX_TRANSCODING` frames behind; the log says once "set
  bframes=0 / profile baseline for lower latency and no transcoding".
* **AAC** (FLV's raw frames after an AudioSpecificConfig, or MPEG-TS's ADTS frames) is
  decoded and encoded to Opus here (:mod:`ingest.aac_to_opus`: 48 kHz, 20 ms, libopus
  complexity 5 — half the cost of aiortc's own encoder at complexity 10).  **Opus** (MPEG-TS)
  is passed through.  The encoder's **AAC-LC** is also sent as it is, in a third section of
  the session (MP4A-LATM, :mod:`common.latm`; RTP timestamps count its samples in 90 kHz
  ticks; up to four frames a packet): the SFU forwards it only to the LL-HLS bridge, which publishes it instead of
  encoding AAC again.  AAC other than LC (HE-AAC) is only converted to Opus.

Packets go out through :class:`~ingest.rtp_sender.RtpStream` (RTP built here, NACK/RTX, PLI,
sender reports), not aiortc's sender loop: aiortc only negotiates and runs ICE, DTLS and
SRTP.  Frames that arrive before the peer connection is up wait, bounded
(:data:`~ingest.rtp_sender.MAX_PENDING`, the oldest dropped and counted).
:attr:`WhipRelay.dropped_frames` counts the video frames that did not reach viewers intact —
dropped while waiting or behind the transcoder, arrived damaged (SRT: packets lost beyond
retransmission), undecodable or skipped until a key frame when transcoding — and the relay
reports the total to the service for the broadcaster's ingest health (``PATCH`` of its WHIP
session with ``{"dropped_frames": N}``: relaycast's extension, docs/whip-whep.md) at once
and then whenever it changed, checked every :data:`REPORT_INTERVAL_S`.  :meth:`close` ends
the WHIP session (DELETE) and the peer connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import json
import logging
import random
from typing import Any
from urllib.parse import urljoin

import aiohttp
import av
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType

from common import latm
from common.h264 import iter_nal_units
from sfu import aiortc_private, pause_resume

from . import flv
from .aac_to_opus import OPUS_RATE, AacToOpus
from .rtmp_server import PublishRefused
from .rtp_sender import PAYLOAD_MAX, RtpStream, packetize_h264

logger = logging.getLogger(__name__)

MAX_TRANSCODING = 30
"""Video frames waiting for the transcoder at most (1 s of 30 fps); beyond, frames are
skipped until the next key frame (and counted)."""
TRANSCODE_BITRATE = 2_500_000
"""bps of the transcoded video (VBV 1 s): the start bitrate the SFU gives WHIP publishers."""
TRANSCODE_GOP = 60
"""Frames between the transcoder's key frames (2 s at 30 fps)."""
SENDER_REPORT_INTERVAL_S = 1.0
"""Mean seconds between RTCP sender reports (randomized ±50 %, RFC 3550 §6.3.1)."""
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
_START = b"\x00\x00\x00\x01"
_IDR, _SPS, _PPS, _AUD = 5, 7, 8, 9
BFRAMES_ADVICE = "set bframes=0 / profile baseline for lower latency and no transcoding"
CLOSE_TIMEOUT_S = 5.0
"""The WHIP session's DELETE and the peer connection's close take at most this long each, s."""
REPORT_INTERVAL_S = 2.0
"""How often the relay checks whether its dropped-frame count changed (then reports it)."""


def _h264_encoder(width: int, height: int) -> VideoCodecContext:
    """The transcoder's encoder: H.264 constrained baseline (no B-frames), ``zerolatency``,
    :data:`TRANSCODE_BITRATE`, a key frame every :data:`TRANSCODE_GOP` frames; 90 kHz pts."""
    codec = av.CodecContext.create("libx264", "w")
    assert isinstance(codec, VideoCodecContext)
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.framerate = fractions.Fraction(30, 1)
    codec.time_base = VIDEO_TIME_BASE
    codec.bit_rate = TRANSCODE_BITRATE
    codec.gop_size = TRANSCODE_GOP
    codec.max_b_frames = 0
    kbps = TRANSCODE_BITRATE // 1000
    codec.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline",
                     "x264-params": f"vbv-maxrate={kbps}:vbv-bufsize={kbps}"}
    return codec


def _raw_sender(transceiver: RTCRtpTransceiver, stream: RtpStream) -> None:
    """Make the transceiver's sender a raw endpoint whose packets ``stream`` builds."""
    sender = transceiver.sender

    def started(params: aiortc_private.SendParameters) -> None:
        stream.start(params, aiortc_private.RawRtpSender(sender.transport))

    aiortc_private.install_forwarding_sender(sender, started, stream.on_rtcp)


class WhipRelay:
    """One RTMP or SRT publisher's WHIP session (see the module docstring).  Made by :meth:`open`."""

    def __init__(self, pc: RTCPeerConnection, video: RtpStream, audio: RtpStream, aac: RtpStream | None,
                 location: str, key: str, http: aiohttp.ClientSession, peer: str) -> None:
        self.pc = pc
        self.video = video
        self.audio = audio
        self.aac = aac
        """The encoder's AAC-LC for the LL-HLS tier (MP4A-LATM, 90 kHz); None when the
        service refused that section (an SFU from before it)."""
        self._aac_config: latm.AacConfig | None = None
        self._aac_samples = 0
        self._aac_refused = False
        self._aac_waiting: list[bytes] = []
        """Elements for the AAC section's next packet, from :attr:`_aac_waiting_ts` on."""
        self._aac_waiting_ts = 0
        self._aac_waiting_config: latm.AacConfig | None = None
        video.on_keyframe_request = self._keyframe_requested
        self.location = location
        self._key = key
        self._http = http
        self.peer = peer
        self.transcoding = False
        """Video is decoded and encoded again (the source has B-frames)."""
        self.frames_in = 0
        self._length_size: int | None = None
        """FLV: bytes of each NAL unit's length prefix (from the configuration record)."""
        self._sps: list[bytes] = []
        self._pps: list[bytes] = []
        """The latest SPS and PPS NAL units (configuration record or in-band)."""
        self._decoder: VideoCodecContext | None = None
        self._encoder: VideoCodecContext | None = None
        self._waiting_keyframe = False
        self._keyframe_wanted = False
        self._transcoder: concurrent.futures.ThreadPoolExecutor | None = None
        self._transcoding_frames = 0
        """Video frames handed to the transcoder thread and not yet back."""
        self._to_opus: AacToOpus | None = None
        self.opus_paused = False
        """The SFU paused the Opus stream (RFC 7728: no one takes it): not encoded, not sent."""
        self.opus_pauses = 0
        self._audio_samples = 0
        """48 kHz samples of Opus passed through (MPEG-TS) before the next packet."""
        self.damaged_frames = 0
        """Video frames that arrived damaged, or did not decode or were skipped when transcoding."""
        self._advice_task: asyncio.Task[None] | None = None
        self._closed = False
        loop = asyncio.get_running_loop()
        self._reporting = loop.create_task(self._report_drops())
        self._sender_reports = loop.create_task(self._send_reports())

    @classmethod
    async def open(cls, whip_url: str, key: str, http: aiohttp.ClientSession, peer: str = "") -> WhipRelay:
        """Publish to ``whip_url`` (``…/whip``: the key's own room; ``…/whip/{channel}``) with ``key``.

        An offer with the AAC section that the service answers 422 (an SFU node from before
        that section, during a rolling deploy) is made again without it, once: the stream
        goes live, and the LL-HLS tier encodes its AAC from the Opus.

        :raises PublishRefused: the service refused (401/403: the key — the problem's detail
            is the reason; 404; 409/503: no room for it now; 422; ``status`` says which) or
            could not be reached (``status`` None)."""
        try:
            return await cls._open(whip_url, key, http, peer, aac_section=True)
        except PublishRefused as exc:
            if exc.status != 422:
                raise
            logger.warning("%s: the service refused the AAC section (%s); publishing without it",
                           peer, exc.description)
        return await cls._open(whip_url, key, http, peer, aac_section=False)

    @classmethod
    async def _open(cls, whip_url: str, key: str, http: aiohttp.ClientSession, peer: str, *,
                    aac_section: bool) -> WhipRelay:
        # max-bundle: two audio sections (Opus, AAC) must share the one transport (sfu.participant)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        video, audio = RtpStream("video", 90000), RtpStream("audio", OPUS_RATE)
        transceiver = pc.addTransceiver("video", direction="sendonly")
        codecs = RTCRtpSender.getCapabilities("video").codecs
        # H.264, packetization-mode 1 only (RFC 6184 §6.3): what the packets already are.
        transceiver.setCodecPreferences(
            [c for c in codecs if c.mimeType == "video/H264" and c.parameters.get("packetization-mode") == "1"]
            + [c for c in codecs if c.mimeType == "video/rtx"])
        _raw_sender(transceiver, video)
        audio_transceiver = pc.addTransceiver("audio", direction="sendonly")
        audio_transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"])
        _raw_sender(audio_transceiver, audio)
        aac = None
        if aac_section:
            aac = RtpStream("audio", latm.CLOCK_RATE, marker=True)
            aiortc_private.add_latm_capability()
            aac_transceiver = pc.addTransceiver("audio", direction="sendonly")
            aac_transceiver.setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == latm.MIME_TYPE])
            _raw_sender(aac_transceiver, aac)
        location = None
        try:
            offer = await pc.createOffer()
            # RFC 7728: the SFU may pause the Opus while no one takes it (then it is not encoded).
            opus = aiortc_private.negotiated_codecs(audio_transceiver)[0]
            sdp = pause_resume.offer_pause(offer.sdp, pc.getTransceivers().index(audio_transceiver),
                                           opus.payloadType or 0)
            await pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
            async with http.post(whip_url, data=pc.localDescription.sdp, headers=headers) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise PublishRefused(_reason(resp.status, body),
                                         "NetStream.Publish.BadName" if resp.status in (401, 403, 404)
                                         else "NetStream.Publish.Failed", resp.status)
                location = urljoin(whip_url, resp.headers["Location"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except PublishRefused:
            await pc.close()
            raise
        except asyncio.CancelledError:  # the caller gave up (an SRT handshake that timed out)
            asyncio.get_running_loop().create_task(_discard(pc, location, key, http))
            raise
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            await pc.close()
            if location is not None:  # created, but its answer was unusable: end it
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.delete(location, headers={"Authorization": f"Bearer {key}"}):
                        pass
            raise PublishRefused(f"the service could not take the stream ({type(exc).__name__})",
                                 "NetStream.Publish.Failed") from None
        relay = cls(pc, video, audio, aac, location, key, http, peer)
        for transport in {id(t.sender.transport): t.sender.transport for t in pc.getTransceivers()}.values():
            aiortc_private.install_pause_resume_listener(transport, relay._on_pause_resume)
        return relay

    # ------------------------------------------------------------ MediaSink
    async def on_metadata(self, metadata: dict[str, Any]) -> None:
        pass

    async def on_video(self, timestamp_ms: int, tag: flv.VideoTag) -> None:
        """An FLV video tag at its RTMP timestamp (the decode time, ms)."""
        if tag.kind == "config":
            config = flv.parse_avc_config(tag.data)
            self._length_size = config.length_size
            self._sps, self._pps = list(config.sps), list(config.pps)
            return
        if tag.kind != "frame" or self._length_size is None:
            return
        dts = timestamp_ms * 90
        self.video_access_unit(flv.split_nalus(tag.data, self._length_size), dts + tag.composition_ms * 90, dts)

    async def on_audio(self, timestamp_ms: int, tag: flv.AudioTag) -> None:
        """An FLV audio tag (AAC: its AudioSpecificConfig, then raw frames)."""
        if tag.kind == "config":
            flv.parse_aac_config(tag.data)  # refuses a malformed one (FlvError)
            self._open_aac(tag.data)
            try:
                self._aac_config = latm.AacConfig.from_asc(tag.data)
            except latm.LatmError as exc:
                self._aac_config = None
                logger.info("%s: %s: the LL-HLS tier gets AAC encoded from the Opus", self.peer, exc)
        elif self._to_opus is not None:
            self.aac_frame(tag.data)
            if self._aac_config is not None:
                self._send_aac(self._aac_config, tag.data)

    def on_ts_video(self, data: bytes, pts: int, dts: int, corrupt: bool = False) -> None:
        """An MPEG-TS H.264 access unit (Annex B) with its pts and dts (90 kHz ticks);
        ``corrupt``: some of its transport packets were lost (still passed on, counted)."""
        self.damaged_frames += corrupt
        self.video_access_unit(list(iter_nal_units(data)), pts, dts)

    def on_ts_audio(self, codec: str, data: bytes, duration: int) -> None:
        """An MPEG-TS audio packet: ``codec`` ``"aac"`` (an ADTS frame) or ``"opus"`` (one
        Opus packet, passed through), ``duration`` in 48 kHz samples (Opus)."""
        if codec == "aac":
            if self._to_opus is None:
                self._open_aac(None)  # ADTS headers carry the configuration
            self.aac_frame(data)
            try:
                config, raw = latm.parse_adts(data)
            except latm.LatmError as exc:
                if not self._aac_refused:
                    self._aac_refused = True
                    logger.info("%s: %s: the LL-HLS tier gets AAC encoded from the Opus", self.peer, exc)
            else:
                self._send_aac(config, raw)
        elif codec == "opus" and data:
            if not self.opus_paused:
                self.audio.send([data], self._audio_samples)
            self._audio_samples += duration

    # -------------------------------------------------------------- video
    def video_access_unit(self, nalus: list[bytes], pts: int, dts: int) -> None:
        """One H.264 access unit's NAL units (no start codes or length prefixes) with its
        presentation and decode times (90 kHz ticks): passed through, or decoded for the
        encoder once a reordered frame (pts ≠ dts) was seen."""
        nalus = [n for n in nalus if n and n[0] & 0x1F != _AUD]
        types = {n[0] & 0x1F for n in nalus}
        if _SPS in types:
            self._sps = [n for n in nalus if n[0] & 0x1F == _SPS]
        if _PPS in types:
            self._pps = [n for n in nalus if n[0] & 0x1F == _PPS]
        if _IDR in types and _SPS not in types:
            nalus = [*self._sps, *self._pps, *nalus]
        if not nalus:
            return
        self.frames_in += 1
        keyframe = _IDR in types
        if pts != dts and not self.transcoding:
            self.transcoding = True
            decoder = av.CodecContext.create("h264", "r")
            assert isinstance(decoder, VideoCodecContext)
            self._decoder = decoder
            self._waiting_keyframe = not keyframe
            logger.warning("%s: the stream has B-frames: transcoding its video for WebRTC; %s",
                           self.peer, BFRAMES_ADVICE)
            self._advice_task = asyncio.get_running_loop().create_task(self._advise(BFRAMES_ADVICE))
        if self.transcoding:
            packet = av.Packet(b"".join(_START + n for n in nalus))
            packet.pts, packet.dts = pts, dts
            packet.time_base = VIDEO_TIME_BASE
            self._transcode(packet, keyframe)
        else:
            self.video.send(packetize_h264(nalus), pts)

    @property
    def dropped_frames(self) -> int:
        """Video frames that did not reach viewers intact (see the module docstring)."""
        return self.video.dropped + self.damaged_frames

    def _keyframe_requested(self) -> None:
        """The SFU asked for a key frame (PLI): the transcoder's next frame is one (a
        passed-through stream has them when the encoder makes them)."""
        self._keyframe_wanted = True

    async def _advise(self, advice: str) -> None:
        """Tell the service what the encoder should change, for the broadcaster's studio page."""
        await self._ingest_patch({"advice": advice})

    async def _report_drops(self) -> None:
        """Report :attr:`dropped_frames` at once (0: the studio then shows it is counted) and
        whenever it changed, until the relay closes."""
        reported = None
        while not self._closed:
            if self.dropped_frames != reported:
                reported = self.dropped_frames
                await self._ingest_patch({"dropped_frames": reported})
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def _send_reports(self) -> None:
        """RTCP sender reports for both streams (RFC 3550 §6.4.1) until the relay closes."""
        while not self._closed:
            await asyncio.sleep(SENDER_REPORT_INTERVAL_S * random.uniform(0.5, 1.5))  # noqa: S311
            self.video.send_sender_report()
            self.audio.send_sender_report()
            if self.aac is not None:
                self.aac.send_sender_report()

    async def _ingest_patch(self, body: dict[str, Any]) -> None:
        """``PATCH`` of the WHIP session with ``body`` (relaycast's extension for the
        broadcaster's ingest health, docs/whip-whep.md); best effort, at most 5 s."""
        headers = {"Authorization": f"Bearer {self._key}"}
        try:
            async with self._http.patch(self.location, json=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status != 204:
                    logger.info("%s: the service did not take %s (HTTP %d)", self.peer, sorted(body), resp.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.info("%s: %s did not reach the service: %s", self.peer, sorted(body), type(exc).__name__)

    def _transcode(self, packet: av.Packet, keyframe: bool) -> None:
        """Hand an access unit to the transcoder thread (skipping to the next key frame when
        it is :data:`MAX_TRANSCODING` frames behind); what it encodes is sent in order."""
        if self._waiting_keyframe or self._transcoding_frames >= MAX_TRANSCODING:
            if not keyframe:
                self._waiting_keyframe = True
                self.damaged_frames += 1
                return
            self._waiting_keyframe = False
        if self._transcoder is None:
            self._transcoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="relay-transcode")
        force_keyframe, self._keyframe_wanted = self._keyframe_wanted, False
        self._transcoding_frames += 1
        future = asyncio.get_running_loop().run_in_executor(
            self._transcoder, self._decode_and_encode, packet, force_keyframe)
        future.add_done_callback(self._transcoded)

    def _decode_and_encode(self, packet: av.Packet, force_keyframe: bool) -> tuple[list[tuple[av.Packet, int]], bool]:
        """In the transcoder thread: ``([(encoded packet, pts)], whether it decoded)``."""
        decoder = self._decoder
        assert decoder is not None
        try:
            frames = decoder.decode(packet)
        except av.error.FFmpegError as exc:
            logger.debug("%s: a video frame did not decode: %s", self.peer, exc)
            return [], False
        out: list[tuple[av.Packet, int]] = []
        for frame in frames:
            if frame.pts is None:
                continue
            encoder = self._encoder
            if encoder is None or (encoder.width, encoder.height) != (frame.width, frame.height):
                encoder = self._encoder = _h264_encoder(frame.width, frame.height)
            frame.time_base = VIDEO_TIME_BASE
            frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
            force_keyframe = False
            out.extend((p, p.pts if p.pts is not None else frame.pts) for p in encoder.encode(frame))
        return out, True

    def _transcoded(self, future: asyncio.Future[tuple[list[tuple[av.Packet, int]], bool]]) -> None:
        self._transcoding_frames -= 1
        if future.cancelled() or self._closed:
            return
        error = future.exception()
        if error is not None:
            self.damaged_frames += 1
            logger.warning("%s: the transcoder failed on a frame: %r", self.peer, error)
            return
        encoded, decoded = future.result()
        self.damaged_frames += not decoded
        for packet, pts in encoded:
            self.video.send(packetize_h264(list(iter_nal_units(bytes(packet)))), pts)

    # -------------------------------------------------------------- audio
    def _on_pause_resume(self, packet: bytes) -> None:
        """RTCP PAUSE-RESUME from the SFU (RFC 7728 §8) for the Opus stream: PAUSE is
        answered PAUSED with the last sequence number sent (§8.3) and stops the Opus
        encode; RESUME starts it again at the next AAC frame (the RTP timestamps go on
        from where they would have been)."""
        try:
            messages = pause_resume.parse(packet)
        except ValueError:
            return
        ssrc = self.audio.ssrc
        for message in messages:
            if message.target_ssrc != ssrc or ssrc is None:
                continue
            if message.type == pause_resume.PAUSE:
                if not self.opus_paused:
                    self.opus_paused = True
                    self.opus_pauses += 1
                    logger.info("%s: no one takes the Opus: not encoding it (RFC 7728 PAUSE)", self.peer)
                self.audio.send_rtcp(pause_resume.build(ssrc, [pause_resume.PauseMessage(
                    ssrc, pause_resume.PAUSED, message.pause_id, self.audio.last_seq.to_bytes(4, "big"))]))
            elif message.type == pause_resume.RESUME and self.opus_paused:
                self.opus_paused = False
                logger.info("%s: encoding the Opus again (RFC 7728 RESUME)", self.peer)

    def _open_aac(self, config: bytes | None) -> None:
        """The AAC → Opus transcode (``config``: the AudioSpecificConfig; None for ADTS frames)."""
        self._to_opus = AacToOpus(config, self.peer)

    def _send_aac(self, config: latm.AacConfig, raw: bytes) -> None:
        """One raw AAC-LC frame for the AAC section, stamped with the samples sent before it
        (90 kHz ticks).  Elements of one configuration wait to share a packet, up to
        :data:`~common.latm.FRAMES_PER_PACKET` or :data:`PAYLOAD_MAX` bytes (RFC 6416 §6.1:
        the packet's timestamp is its first frame's); one over the payload limit goes alone
        in several packets."""
        if not raw or self.aac is None:
            return
        element = latm.audio_mux_element(config, raw)
        timestamp = self._aac_samples * latm.CLOCK_RATE // config.sample_rate
        self._aac_samples += latm.FRAME_SAMPLES
        waiting = self._aac_waiting
        if waiting and (config != self._aac_waiting_config
                        or sum(map(len, waiting)) + len(element) > PAYLOAD_MAX):
            self._flush_aac()
        if len(element) > PAYLOAD_MAX:
            limit = PAYLOAD_MAX
            self.aac.send([element[i:i + limit] for i in range(0, len(element), limit)], timestamp)
            return
        if not waiting:
            self._aac_waiting_ts, self._aac_waiting_config = timestamp, config
        waiting.append(element)
        if len(waiting) >= latm.FRAMES_PER_PACKET:
            self._flush_aac()

    def _flush_aac(self) -> None:
        if self._aac_waiting and self.aac is not None:
            self.aac.send([b"".join(self._aac_waiting)], self._aac_waiting_ts)
        self._aac_waiting.clear()

    def aac_frame(self, data: bytes) -> None:
        """One AAC frame (raw after a configuration, or ADTS), decoded and encoded to Opus."""
        if self._to_opus is None or not data:
            return
        if self.opus_paused:
            self._to_opus.skip()
            return
        for payload, pts in self._to_opus.push(data):
            self.audio.send([payload], pts)

    async def close(self, reason: str) -> None:
        """End the WHIP session (DELETE, best effort) and the peer connection, each within
        :data:`CLOSE_TIMEOUT_S`."""
        if self._closed:
            return
        self._closed = True
        self._reporting.cancel()
        self._sender_reports.cancel()
        if self._transcoder is not None:
            self._transcoder.shutdown(wait=False, cancel_futures=True)
        try:
            async with self._http.delete(self.location, headers={"Authorization": f"Bearer {self._key}"},
                                         timeout=aiohttp.ClientTimeout(total=CLOSE_TIMEOUT_S)):
                pass
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        try:  # aiortc's close can wait for ever on a sender whose task died
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.pc.close()
        except TimeoutError:
            logger.warning("%s: the peer connection did not close in %.0f s; abandoned", self.peer, CLOSE_TIMEOUT_S)
        logger.info("%s: session ended (%s)", self.peer, reason)


async def _discard(pc: RTCPeerConnection, location: str | None, key: str, http: aiohttp.ClientSession) -> None:
    """Close a peer connection and end the WHIP session it may have created (each bounded
    by :data:`CLOSE_TIMEOUT_S`): what an opening cancelled half-way leaves behind."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await pc.close()
    if location is not None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with http.delete(location, headers={"Authorization": f"Bearer {key}"},
                                   timeout=aiohttp.ClientTimeout(total=CLOSE_TIMEOUT_S)):
                pass


def _reason(status: int, body: str) -> str:
    """The refusal's reason as an encoder may show it: the problem's detail (RFC 9457)."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or f"the service answered HTTP {status}")
