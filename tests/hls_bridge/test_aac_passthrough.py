"""The audio rendition made of the encoder's own AAC: AacTap reassembles MP4A-LATM elements
from RTP packets (gaps and wrap included), and LadderTranscoder packages the frames it is
fed as ``a0`` sample for sample — a lost frame filled with encoded silence, an overlapping
one dropped, a configuration change raising PassthroughLost."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from common import latm
from hls_bridge.aac_tap import AacFrame, AacTap, LatmProbe
from hls_bridge.encoders import choose_encoder
from hls_bridge.ladder import parse_ladder
from hls_bridge.store import RoomStore
from hls_bridge.transcoder import LadderTranscoder, PassthroughLost
from sfu.producer import MediaPacket
from tests.hls_bridge.test_passthrough import source
from tests.hls_bridge.test_transcoder import rendition_file

TICKS = 1920  # one 1,024-sample frame at 48 kHz in 90 kHz ticks


def aac_source(count: int, layout: str = "stereo") -> tuple[latm.AacConfig, list[bytes]]:
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, layout, "fltp"
    encoder.time_base = fractions.Fraction(1, 48000)
    encoder.bit_rate = 96_000
    encoder.open()
    frames: list[bytes] = []
    index = 0
    while len(frames) < count:
        tone = (np.sin(np.arange(1024) * 0.05 + index) * 0.3).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone[None, :], encoder.layout.nb_channels, 0),
                                           format="fltp", layout=layout)
        frame.sample_rate, frame.pts = 48000, index * 1024
        frames += [bytes(p) for p in encoder.encode(frame)]
        index += 1
    return latm.AacConfig.from_asc(bytes(encoder.extradata)), frames[:count]


class FakeSource:
    """A track source for AacTap (unit test): remembers its consumers."""

    kind = "audio"

    def __init__(self) -> None:
        self.sinks: list[object] = []

    def add_consumer(self, sink: object) -> None:
        self.sinks.append(sink)

    def remove_consumer(self, sink: object) -> None:
        self.sinks.remove(sink)


def packets(config: latm.AacConfig, frames: list[bytes], *, seq: int = 0, ts: int = 0, size: int = 100):
    """RTP packets of the frames' elements, ``size`` bytes of payload each (a marker ends
    each element)."""
    out = []
    for index, frame in enumerate(frames):
        element = latm.audio_mux_element(config, frame)
        pieces = [element[i:i + size] for i in range(0, len(element), size)]
        for n, piece in enumerate(pieces):
            out.append(MediaPacket(seq & 0xFFFF, (ts + index * TICKS) & 0xFFFFFFFF, int(n == len(pieces) - 1),
                                   piece, False, None))
            seq += 1
    return out


async def test_the_tap_reassembles_elements_across_timestamp_wrap_and_drops_broken_ones() -> None:
    config, frames = aac_source(6)
    source_track = FakeSource()
    tap = AacTap(source_track)  # type: ignore[arg-type]
    probe = LatmProbe()
    source_track.add_consumer(probe)
    sent = packets(config, frames, seq=65530, ts=0xFFFFFFFF - 2 * TICKS)
    lost = next(i for i, p in enumerate(sent) if p.timestamp == sent[-1].timestamp - 2 * TICKS and not p.marker)
    for index, packet in enumerate(sent):
        if index != lost:  # a middle packet of the fifth element never arrives
            for sink in list(source_track.sinks):
                sink.forward(packet)  # type: ignore[attr-defined]
    assert probe.found.result() == config
    tap.close()
    got = [frame async for frame in tap.frames()]
    assert [f.data for f in got] == frames[:3] + frames[4:]
    assert [f.pts for f in got] == [0, TICKS, 2 * TICKS, 4 * TICKS, 5 * TICKS]  # across the wrap
    assert tap.dropped == 1 and tap.frames_decoded == 5 and source_track.sinks == [probe]


async def test_a_packet_of_several_elements_gives_each_frame_its_own_time() -> None:
    config, frames = aac_source(9)
    source_track = FakeSource()
    tap = AacTap(source_track)  # type: ignore[arg-type]
    groups = [frames[0:4], frames[4:8], frames[8:9]]  # as the relay sends them: four at most
    for index, group in enumerate(groups):
        payload = b"".join(latm.audio_mux_element(config, frame) for frame in group)
        tap.forward(MediaPacket(index, 1000 + 4 * index * TICKS, 1, payload, False, None))
    tap.close()
    got = [frame async for frame in tap.frames()]
    assert [f.data for f in got] == frames
    assert [f.pts for f in got] == [n * TICKS for n in range(9)]
    assert tap.dropped == 0 and tap.frames_decoded == 9


async def _frames(items: list[AacFrame]) -> AsyncIterator[AacFrame]:
    for item in items:
        yield item


async def transcode_aac(items: list[AacFrame], config: latm.AacConfig) -> tuple[RoomStore, LadderTranscoder]:
    room = RoomStore()
    transcoder = LadderTranscoder(room, parse_ladder("240p"), encoder_choice=choose_encoder(["libx264"]),
                                  aac_passthrough=config.asc)
    video = [frame for _, frame in source(426, 240, 60, gop=30)]

    async def both() -> AsyncIterator[object]:
        for index, item in enumerate(items):  # ~1.4 video frames per AAC frame
            yield item
            for frame in video[round(index * 1.4):round((index + 1) * 1.4)]:
                yield frame

    try:
        await asyncio.wait_for(transcoder.run(both()), 60)  # type: ignore[arg-type]
    finally:
        transcoder.close()
    return room, transcoder


async def test_a0_is_the_sources_aac_with_gaps_filled_and_overlaps_dropped(tmp_path: Path) -> None:
    config, frames = aac_source(45)
    items = [AacFrame(data, index * TICKS, config) for index, data in enumerate(frames)]
    del items[20]  # one frame lost: filled with silence
    items.insert(30, AacFrame(frames[29], 29 * TICKS, config))  # one frame twice: dropped
    room, transcoder = await transcode_aac(items, config)
    assert transcoder.stats.audio_filled_samples == 1024 and transcoder.stats.audio_dropped_samples == 1024
    with av.open(str(rendition_file(tmp_path, room, "a0"))) as container:
        stream = container.streams.audio[0]
        assert (stream.sample_rate, stream.channels) == (48000, 2)
        samples = [bytes(p) for p in container.demux(audio=0) if p.size]
    assert len(samples) == 45
    assert samples[:20] == frames[:20] and samples[21:] == frames[21:]
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = config.asc
    silent = [f.to_ndarray() for f in decoder.decode(av.Packet(samples[20]))]
    assert samples[20] not in frames and all(np.abs(a).max() < 1e-3 for a in silent)
    assert room.multivariant is not None and "mp4a.40.2" in room.multivariant


async def test_a_new_aac_configuration_ends_the_passthrough() -> None:
    config, frames = aac_source(10)
    mono, mono_frames = aac_source(2, "mono")
    items = [AacFrame(data, index * TICKS, config) for index, data in enumerate(frames)]
    items.append(AacFrame(mono_frames[1], 10 * TICKS, mono))
    with pytest.raises(PassthroughLost, match="1 channels"):
        await transcode_aac(items, config)
