"""Every playlist revision of a 60 s stream through a strict third-party LL-HLS parser.

The real `LadderTranscoder` (libx264, AAC, CMAF packaging) writes a real `RoomStore`
from synthetic frames as fast as it can encode them: no running event loop, so each
frame's store updates are applied at once and every store change is one revision.
After every frame that changed the store, each rendition's media playlist (full and,
when the server offers it, the ``_HLS_skip=YES`` delta update, RFC 8216bis §6.2.5.1)
and the multivariant playlist are rendered as the origin would serve them and handed
to npm ``hls-parser`` 0.16 in strict mode (one ``node`` process for all of them) and to
the in-house checker.  The audio input loses one 20 ms frame in 25 (as a full tap queue
or the network would): segment boundaries must stay within one AAC frame of the video's
for the whole stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest

from hls_bridge.encoders import choose_encoder
from hls_bridge.ladder import Rung
from hls_bridge.model import Segment
from hls_bridge.playlist import AudioRendition, VariantStream, skipped_segment_count
from hls_bridge.store import RoomStore
from hls_bridge.transcoder import AUDIO_RENDITION, LadderTranscoder
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from tests.hls_bridge.llhls_checker import check_media, check_multivariant

CHECKER = Path(__file__).with_name("hls_strict_check.js")
SECONDS = 60
FPS = 30
AAC_FRAME_S = 1024 / 48_000
LOST_AUDIO_EVERY = 25


@dataclass(frozen=True)
class Revision:
    name: str
    kind: str  # "media" or "multivariant"
    text: str


def strict_problems(revisions: list[Revision]) -> list[str]:
    """``name: error`` for every revision npm hls-parser (strictMode) rejects."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the strict hls-parser check needs it")
    payload = json.dumps([r.__dict__ for r in revisions])
    result = subprocess.run(
        [node, str(CHECKER)], input=payload, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [a["name"] for a in answers] == [r.name for r in revisions]
    return [f"{a['name']}: {a['error']}" for a in answers if a["error"]]


class SegmentLog:
    """A `StoreRecorder` keeping every closed segment of every rendition."""

    def __init__(self) -> None:
        self.segments: dict[str, list[Segment]] = {}

    def on_init(self, rendition: str, data: bytes) -> None:
        pass

    def on_segment(self, rendition: str, segment: Segment, data: bytes) -> None:
        self.segments.setdefault(rendition, []).append(segment)

    def on_variants(self, text: str, variants: list[VariantStream],
                    audio: list[AudioRendition]) -> None:
        pass

    def on_end(self) -> None:
        pass


def stream_frames(seconds: int) -> list[av.VideoFrame | av.AudioFrame]:
    """``seconds`` of 320x180 video and 20 ms stereo audio frames in media-time order;
    every `LOST_AUDIO_EVERY`-th audio frame is missing (its timestamp gap remains)."""
    video = PatternVideoTrack(320, 180, FPS, code="counter")
    tone = ToneAudioTrack(channels=2)
    items: list[tuple[Fraction, int, av.VideoFrame | av.AudioFrame]] = []
    for i in range(seconds * FPS):
        frame = video.make_frame(i, i)
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90_000)
        items.append((Fraction(i, FPS), 0, frame))
    per_frame = tone.samples_per_frame
    for i in range(seconds * tone.sample_rate // per_frame):
        if i % LOST_AUDIO_EVERY == LOST_AUDIO_EVERY - 1:
            continue
        items.append((Fraction(i * per_frame, tone.sample_rate), 1, tone.make_frame(i * per_frame)))
    items.sort(key=lambda item: item[:2])
    return [frame for _, _, frame in items]


def snapshot(room: RoomStore, seen: dict[str, int], revisions: list[Revision],
             label: str) -> None:
    """Render what the origin would serve now, if anything changed since the last call.

    A rendition without a part is not served (the origin holds the request until its
    first part exists), so it is left out.
    """
    for name, store in room.renditions.items():
        if seen.get(name) == store.version or not store.has_media:
            continue
        seen[name] = store.version
        full = room.render_media(name)
        revisions.append(Revision(f"{label} {name}", "media", full))
        if skipped_segment_count(store.playlist):
            revisions.append(
                Revision(f"{label} {name} _HLS_skip", "media", room.render_media(name, skip=True))
            )
    if room.multivariant is not None and seen.get("") is None:
        seen[""] = 1
        revisions.append(Revision(f"{label} multivariant", "multivariant", room.multivariant))


def test_every_revision_of_a_60s_stream_passes_strict_hls_parser() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the strict hls-parser check needs it")
    log = SegmentLog()
    room = RoomStore(recorder=log)
    transcoder = LadderTranscoder(
        room, [Rung("180p", 180, 300_000), Rung("120p", 120, 150_000)],
        fps=FPS, encoder_choice=choose_encoder(["libx264"]), parallel_rungs=False,
    )
    revisions: list[Revision] = []
    seen: dict[str, int] = {}
    shapes: set[tuple[str, int]] = set()
    try:
        for index, frame in enumerate(stream_frames(SECONDS)):
            transcoder.feed(frame)
            snapshot(room, seen, revisions, f"frame {index}")
            for name, store in room.renditions.items():
                shapes.add((name, len(store.playlist.pending_parts)))
        transcoder.end()
        snapshot(room, seen, revisions, "end")
    finally:
        transcoder.close()

    # The revisions cover every part position (0 = right after a segment closed) of
    # every rendition, over the whole stream, and delta updates.
    assert {(n, k) for n in ("v0", "v1", AUDIO_RENDITION) for k in range(5)} <= shapes
    assert all(len(log.segments[n]) >= SECONDS for n in ("v0", "v1", AUDIO_RENDITION))
    assert any(r.name.endswith("_HLS_skip") for r in revisions)
    full = [r for r in revisions if r.kind == "media" and not r.name.endswith("_HLS_skip")]
    assert len(full) >= 3 * 5 * SECONDS  # one per part of each rendition

    for revision in revisions:
        if revision.kind == "media":
            check_media(revision.text)
        else:
            check_multivariant(revision.text)
    problems = strict_problems(revisions)
    assert not problems, f"{len(problems)} of {len(revisions)} revisions rejected:\n" + "\n".join(
        problems[:10]
    )

    # Audio segment k ends at the first AAC frame boundary at or after video segment k's
    # end, all stream long, even with 4 % of the audio input lost.
    video_ends, audio_ends = [], []
    for name, ends in (("v0", video_ends), (AUDIO_RENDITION, audio_ends)):
        total = 0.0
        for segment in log.segments[name]:
            total += segment.duration
            ends.append(total)
    assert video_ends[:SECONDS] == pytest.approx([k + 1.0 for k in range(SECONDS)], abs=1e-6)
    for k in range(SECONDS):
        assert -1e-6 <= audio_ends[k] - video_ends[k] < AAC_FRAME_S, (k, audio_ends[k])
    # The segments are dated alike: their PROGRAM-DATE-TIMEs differ by under an AAC frame.
    audio_pdts = [s.program_date_time for s in log.segments[AUDIO_RENDITION][:SECONDS]]
    video_pdts = [s.program_date_time for s in log.segments["v0"][:SECONDS]]
    for audio_pdt, video_pdt in zip(audio_pdts, video_pdts, strict=True):
        assert audio_pdt is not None and video_pdt is not None
        assert abs((audio_pdt - video_pdt).total_seconds()) < AAC_FRAME_S
    # Every lost 20 ms frame but the stream's last one (no later frame shows that gap)
    # was filled with 960 samples of silence.
    lost = SECONDS * 50 // LOST_AUDIO_EVERY
    assert transcoder.stats.audio_filled_samples == 960 * (lost - 1)
