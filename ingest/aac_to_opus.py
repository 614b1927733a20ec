"""AAC → Opus for the relay's WebRTC audio (RFC 7587): the one transcode a passed-through
RTMP or SRT stream needs, so its cost is most of what such an ingest costs beyond the
packets themselves.

:class:`AacToOpus` decodes AAC (FFmpeg's decoder through PyAV: planar float), cuts the
samples into 20 ms frames and encodes them with libopus (48 kHz, 48 kbit/s a channel,
complexity :data:`OPUS_COMPLEXITY`).  48 kHz mono or stereo — what encoders send — is only
interleaved (numpy) into the encoder's frames: FFmpeg's resampler, a filter graph, cost about
as much as the Opus encode itself per frame in the live ingest process.  Other rates and
layouts (44.1 kHz, 5.1) go through that resampler to 48 kHz stereo.  A mono source stays
mono, as browsers send their microphones: every Opus decoder plays both (RFC 7587 §7.1, the
``stereo`` parameter only states a receiver's preference).
"""

from __future__ import annotations

import fractions
import logging

import av
from av.audio.codeccontext import AudioCodecContext

logger = logging.getLogger(__name__)

OPUS_RATE = 48000
"""Hz, the Opus RTP clock (RFC 7587 §4.1)."""
OPUS_FRAME = OPUS_RATE // 50
"""Samples a channel in one 20 ms Opus frame."""
OPUS_BITRATE_PER_CHANNEL = 48_000
"""bps a channel: 96 kbit/s stereo, 48 kbit/s mono."""
OPUS_COMPLEXITY = 5
"""libopus complexity (0–10; its default 10 is what aiortc's own encoder uses): 5 costs about
half the CPU, audibly the same for live speech and music at these bitrates."""
_TIME_BASE = fractions.Fraction(1, OPUS_RATE)


def opus_encoder(channels: int) -> AudioCodecContext:
    """libopus for WebRTC: 48 kHz, ``channels`` (1 or 2) of interleaved 32-bit float,
    20 ms frames, :data:`OPUS_BITRATE_PER_CHANNEL` a channel, :data:`OPUS_COMPLEXITY`."""
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, AudioCodecContext)
    codec.sample_rate = OPUS_RATE
    codec.layout = "stereo" if channels == 2 else "mono"
    codec.format = "flt"
    codec.bit_rate = OPUS_BITRATE_PER_CHANNEL * channels
    codec.time_base = _TIME_BASE
    codec.options = {"application": "audio", "compression_level": str(OPUS_COMPLEXITY), "frame_duration": "20"}
    return codec


class AacToOpus:
    """One stream's AAC → Opus (see the module docstring).

    :param config: the AudioSpecificConfig (FLV's sequence header); None when each frame
        carries its own (ADTS).
    :param peer: who sends it, for the log."""

    def __init__(self, config: bytes | None, peer: str = "") -> None:
        self._decoder = av.CodecContext.create("aac", "r")
        if config is not None:
            self._decoder.extradata = config
        self._peer = peer
        self._resampler: av.AudioResampler | None = None
        self._encoder: AudioCodecContext | None = None
        self.channels = 0
        """Channels of the Opus being encoded (1 or 2; 0 before the first frame)."""
        self._pcm = bytearray()
        """Interleaved float samples waiting to fill a 20 ms frame."""
        self._samples = 0
        """Samples a channel handed to the encoder so far: the next frame's pts."""
        self._rate = OPUS_RATE
        """The AAC's sample rate (Hz), from its last decoded frame."""

    def push(self, data: bytes) -> list[tuple[bytes, int]]:
        """One AAC frame → the Opus packets it completes, each with its pts (48 kHz samples
        from the stream's start).  A frame that does not decode gives nothing (logged)."""
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.error.FFmpegError as exc:
            logger.debug("%s: an AAC frame did not decode: %s", self._peer, exc)
            return []
        packets: list[tuple[bytes, int]] = []
        for frame in frames:
            for pcm in self._frames(frame):
                assert self._encoder is not None
                pcm.pts = self._samples
                pcm.time_base = _TIME_BASE
                self._samples += OPUS_FRAME
                packets.extend((bytes(p), p.pts) for p in self._encoder.encode(pcm) if p.pts is not None)
        return packets

    def skip(self) -> None:
        """One AAC frame not encoded (the stream is paused: no one takes the Opus): its
        1,024 samples still count, so the next packet's pts is where it would have been."""
        self._samples += round(1024 * OPUS_RATE / self._rate)
        self._pcm.clear()

    def _frames(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        """A decoded frame's samples cut into the encoder's 20 ms frames."""
        self._rate = frame.sample_rate
        channels = len(frame.layout.channels)
        direct = frame.sample_rate == OPUS_RATE and channels <= 2 and frame.format.name == "fltp"
        if not direct:
            channels = 2
        if self._encoder is None or channels != self.channels:
            self._encoder, self.channels = opus_encoder(channels), channels
            self._pcm.clear()
        if direct:
            self._pcm += frame.to_ndarray().T.tobytes()  # (channels, n) planar → interleaved
        else:
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="flt", layout="stereo", rate=OPUS_RATE)
            frame.pts = None  # the resampler counts samples itself
            for resampled in self._resampler.resample(frame):
                self._pcm += resampled.to_ndarray().tobytes()  # packed: (1, 2 n)
        size = OPUS_FRAME * channels * 4
        layout = "stereo" if channels == 2 else "mono"
        out = []
        while len(self._pcm) >= size:
            pcm = av.AudioFrame(format="flt", layout=layout, samples=OPUS_FRAME)
            pcm.planes[0].update(bytes(self._pcm[:size]))
            pcm.sample_rate = OPUS_RATE
            del self._pcm[:size]
            out.append(pcm)
        return out
