"""Recording of LL-HLS streams as VOD presentations (RFC 8216bis §4.4.3.5, §6.2.1).

A :class:`Recorder` attached to a :class:`~hls_bridge.store.RoomStore` keeps every
init segment and closed segment of every rendition on disk, under
``{root}/{room}/{recording_id}/{rendition}/`` with the live names (``init.mp4``,
``seg{msn}.m4s``); an init segment that replaced another after a discontinuity
(`RenditionStore.discontinuity`) is ``init1.mp4``, ``init2.mp4``, … in the order
received.  When the stream ends it writes, each atomically (tmp + rename):

- ``{rendition}/index.m3u8``: a VOD media playlist (``EXT-X-PLAYLIST-TYPE:VOD``,
  ``EXT-X-MAP``, ``EXT-X-PROGRAM-DATE-TIME`` on the first segment, one ``EXTINF`` per
  segment, ``EXT-X-ENDLIST``; RFC 8216bis §4.4.3.5, §4.4.3.4); a live discontinuity is
  kept as ``EXT-X-DISCONTINUITY`` (§4.4.4.3) followed by the segment's
  ``EXT-X-PROGRAM-DATE-TIME`` and, where the init segment changed, a new ``EXT-X-MAP``
  (§4.4.4.5);
- ``index.m3u8``: the multivariant playlist, rendered like the live one (identical to it
  when every rendition was recorded; the same relative URIs ``v0/index.m3u8`` work
  because the rendition folders keep their names);
- ``recording.json``: the manifest, written last; a recording is finished (listed,
  served) exactly when it exists.

Every variant of a VOD presents the same content (§6.2.4): all recorded renditions
are trimmed to start at the same MSN (the live store numbers a rendition added
mid-stream from the MSN of the others, see `RoomStore.add_rendition`), and a rendition
that started more than `MAX_LATE_START_S` after the first one is left out.

A recording without any segment is deleted instead.  All disk I/O runs in one ordered
writer thread per recorder, never on the event loop.  A disk error is logged once and
stops the recording; the segments already written are still published (manifest
``"truncated": true``) and the live stream is never affected.

:class:`~hls_bridge.vod.RecordingLibrary` lists finished recordings, deletes them after
the retention period and resolves file paths safely; :func:`~hls_bridge.vod.create_vod_app`
serves them over HTTP (mount it at ``/vod``).

Wiring (the service)::

    config = RecordingConfig.from_env()
    library = config.library()                  # None when recording is off
    recorder = library.recorder(room) if library else None
    store = RoomStore(recorder=recorder)        # one recording per RoomStore
    ...                                         # store.end() finishes the recording
    if recorder: await recorder.finish()        # optional: wait until it is listed
    app.add_subapp("/vod", create_vod_app(library))
    task = asyncio.create_task(library.sweep_forever(config.sweep_interval_s))
    await asyncio.to_thread(library.list, room) # the JSON API (reads the disk)

A recording holds what the store received: for a complete VOD the bridge must run for
the whole time the room is published (not only while HLS viewers ask for it), and a
bridge restarted for the same stream starts a new recording.

Environment (:meth:`RecordingConfig.from_env`):

- ``RELAYCAST_HLS_RECORD_DIR``: directory of the recordings; unset or empty = recording
  off.
- ``RELAYCAST_HLS_RECORD_RETENTION_H``: hours a finished recording is kept after its end
  (default 168 = one week); also bounds the ``Cache-Control`` max-age of VOD responses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.names import ROOM_RE, is_room_name

from .errors import HlsBridgeError
from .model import Segment
from .playlist import AudioRendition, VariantStream, render_multivariant
from .store import INIT_URI, PLAYLIST_NAME, segment_uri

__all__ = [
    "MANIFEST_NAME",
    "MAX_LATE_START_S",
    "RECORDING_ID_RE",
    "Recorder",
    "RecordingError",
    "init_file_name",
    "new_recording_id",
    "render_vod_playlist",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "recording.json"
MANIFEST_VERSION = 1
VOD_VERSION = 7
"""EXT-X-VERSION of the VOD media playlists: fMP4 (EXT-X-MAP) needs 6–7, nothing more."""
RECORDING_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
RENDITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_FILE_RE = re.compile(r"^(index\.m3u8|init(?:[1-9]\d{0,5})?\.mp4|seg\d{1,12}\.m4s)$")
MAX_AGE_S = 31_536_000
MAX_LATE_START_S = 30.0
"""A rendition whose recording starts more than this many seconds after the first
rendition's is left out of the VOD (the others are trimmed to its start otherwise)."""


def init_file_name(index: int) -> str:
    """File name of a recorded rendition's ``index``-th init segment (0: ``init.mp4``,
    then ``init1.mp4``, ``init2.mp4``, …)."""
    return INIT_URI if index == 0 else f"init{index}.mp4"


class RecordingError(HlsBridgeError, ValueError):
    """Bad recording settings or a bad room / recording name."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _num(value: float) -> str:
    """decimal-floating-point with at most 5 decimals, as the live playlists write it."""
    text = f"{value:.5f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def new_recording_id(now: datetime | None = None) -> str:
    """``20261121T120000Z-1a2b3c4d``: UTC start second (sorts by time) + 32 random bits."""
    now = (now or _utc_now()).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def check_room(room: str) -> str:
    """``room`` if it is a valid room name (`common.names.is_room_name`: no path tricks)."""
    if not is_room_name(room):
        raise RecordingError(f"room name {room!r} must match {ROOM_RE.pattern}")
    return room


@dataclass(frozen=True, slots=True)
class RecordedSegment:
    """One segment on disk: ``duration`` in seconds, ``size`` in bytes; ``discontinuity``
    as in the live playlist (§4.4.4.3); ``init``: the file name of its init segment
    (None: the playlist's default)."""

    msn: int
    duration: float
    program_date_time: datetime | None
    size: int
    independent: bool
    discontinuity: bool = False
    init: str | None = None


def render_vod_playlist(segments: Sequence[RecordedSegment], init_uri: str = INIT_URI) -> str:
    """A VOD media playlist over ``segments`` (RFC 8216bis §4.4.3), ending with a newline.

    EXT-X-TARGETDURATION is the largest EXTINF rounded to the nearest integer (at
    least 1, §4.4.3.1); EXT-X-INDEPENDENT-SEGMENTS is written when every segment starts
    with an independent sample.  EXT-X-MAP names the first segment's ``init`` (default
    ``init_uri``); a later segment with ``discontinuity`` gets EXT-X-DISCONTINUITY
    (§4.4.4.3) and its EXT-X-PROGRAM-DATE-TIME, and a new EXT-X-MAP wherever ``init``
    changes (§4.4.4.5).  Raises ValueError for an empty list.
    """
    if not segments:
        raise ValueError("a VOD playlist needs at least one segment")
    target = max(1, max(round(s.duration) for s in segments))
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{VOD_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        f"#EXT-X-MEDIA-SEQUENCE:{segments[0].msn}",
    ]
    if all(s.independent for s in segments):
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    current = segments[0].init or init_uri
    lines.append(f'#EXT-X-MAP:URI="{current}"')
    for index, segment in enumerate(segments):
        discontinuity = index > 0 and segment.discontinuity
        if discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if (segment.init or init_uri) != current:
            current = segment.init or init_uri
            lines.append(f'#EXT-X-MAP:URI="{current}"')
        if segment.program_date_time is not None and (index == 0 or discontinuity):
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_iso(segment.program_date_time)}")
        lines.append(f"#EXTINF:{_num(segment.duration)},")
        lines.append(segment_uri(segment.msn))
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _recorded_multivariant(
    variants: Sequence[VariantStream], audio: Sequence[AudioRendition], recorded: set[str]
) -> str | None:
    """The multivariant playlist restricted to ``recorded`` renditions (None if no variant).

    A variant whose audio group lost every rendition loses its AUDIO attribute and the
    ``mp4a`` codec.  With everything recorded this is the live text, byte for byte.
    """

    def rendition(uri: str) -> str:
        return uri.split("/", 1)[0]

    kept_audio = [a for a in audio if rendition(a.uri) in recorded]
    groups = {a.group_id for a in kept_audio}
    kept = []
    for v in variants:
        if rendition(v.uri) not in recorded:
            continue
        if v.audio is not None and v.audio not in groups:
            codecs = ",".join(c for c in v.codecs.split(",") if not c.startswith("mp4a"))
            v = replace(v, audio=None, codecs=codecs)
        kept.append(v)
    return render_multivariant(kept, kept_audio) if kept else None


def _common_start(tracks: dict[str, _Track]) -> dict[str, _Track]:
    """``tracks`` trimmed to one first MSN (the latest first MSN among them), without
    those starting more than `MAX_LATE_START_S` after the earliest one (§6.2.4)."""
    if not tracks:
        return tracks
    earliest = min(tracks.values(), key=lambda t: t.segments[0].msn)
    kept = {}
    for name, track in tracks.items():
        lead = sum(
            s.duration for s in earliest.segments if s.msn < track.segments[0].msn
        )
        if lead <= MAX_LATE_START_S:
            kept[name] = track
    start = max(t.segments[0].msn for t in kept.values())
    trimmed = {}
    for name, track in kept.items():
        segments = [s for s in track.segments if s.msn >= start]
        if segments:
            trimmed[name] = _Track(
                track.init, segments, sum(s.size for s in segments)
            )
    return trimmed


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove_tree(path: Path) -> None:
    """Best-effort removal of a recording directory and of its room directory if empty."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


@dataclass
class _Track:
    """One rendition's state in the writer thread."""

    init: bool = False
    segments: list[RecordedSegment] = field(default_factory=list)
    bytes: int = 0


class Recorder:
    """Records one stream of ``room`` under ``{root}/{room}/{id}/``; a `StoreRecorder`.

    - ``clock``: UTC wall clock (``started``/``ended`` when no PDT is known, the id).
    - ``max_pending_bytes``: bytes queued for the writer thread beyond which the disk is
      considered too slow and the recording stops (as on a disk error).
    - ``on_done``: called (in the writer thread) with the recorder once it is finished
      or discarded.

    The ``on_*`` methods are called by the store on the event loop and only queue work.
    Raises RecordingError for an invalid room name.
    """

    def __init__(
        self,
        root: Path | str,
        room: str,
        *,
        recording_id: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
        max_pending_bytes: int = 64 << 20,
        on_done: Callable[[Recorder], None] | None = None,
    ) -> None:
        self.room = check_room(room)
        self._clock = clock
        self.created = clock()
        self.id = recording_id or new_recording_id(self.created)
        if not RECORDING_ID_RE.fullmatch(self.id):
            raise RecordingError(f"bad recording id {self.id!r}")
        self.directory = Path(root) / self.room / self.id
        self.max_pending_bytes = max_pending_bytes
        self.error: BaseException | None = None
        """The disk error (or back-log overflow) that stopped the recording, if any."""
        self.manifest: dict[str, Any] | None = None
        """The published manifest once finished; None before, or if discarded."""
        self._on_done = on_done
        self._tracks: dict[str, _Track] = {}
        self._inits: dict[str, tuple[int, str]] = {}
        """Per rendition (event loop): how many init segments so far, the current file."""
        self._variants: tuple[Sequence[VariantStream], Sequence[AudioRendition]] | None = None
        self._stopped = False  # no more writes are queued (error or end)
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"hls-record-{self.room}")
        self._finished: concurrent.futures.Future[dict[str, Any] | None] | None = None

    # -- StoreRecorder (event loop) -------------------------------------------------

    def on_init(self, rendition: str, data: bytes) -> None:
        if RENDITION_RE.fullmatch(rendition):
            count = self._inits[rendition][0] if rendition in self._inits else 0
            name = init_file_name(count)
            self._inits[rendition] = (count + 1, name)
            self._submit(self._write_init, rendition, data, name, size=len(data))
        else:
            logger.warning("not recording rendition %r of room %r: bad name", rendition, self.room)

    def on_segment(self, rendition: str, segment: Segment, data: bytes) -> None:
        if not RENDITION_RE.fullmatch(rendition):
            return
        recorded = RecordedSegment(
            segment.msn, segment.duration, segment.program_date_time, len(data),
            bool(segment.parts) and segment.parts[0].independent,
            discontinuity=segment.discontinuity,
            init=self._inits[rendition][1] if rendition in self._inits else None,
        )
        self._submit(self._write_segment, rendition, recorded, data, size=len(data))

    def on_variants(
        self, text: str, variants: Sequence[VariantStream], audio: Sequence[AudioRendition]
    ) -> None:
        self._variants = (tuple(variants), tuple(audio))

    def on_end(self) -> None:
        """Stop recording and publish (or discard) in the writer thread; idempotent."""
        if self._finished is not None:
            return
        self._stopped = True
        ended = self._clock()
        self._finished = self._executor.submit(self._finalize, ended)
        self._executor.shutdown(wait=False)

    # -- public ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the recording was published or discarded."""
        return self._finished is not None and self._finished.done()

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or the recording finished)."""
        if self._finished is not None:
            await asyncio.wrap_future(self._finished)
        else:
            await asyncio.wrap_future(self._executor.submit(lambda: None))

    async def finish(self) -> dict[str, Any] | None:
        """End the recording if the store has not, wait for every write, return the manifest.

        None when nothing was published (no segment, or the disk failed from the start).
        """
        self.on_end()
        assert self._finished is not None
        return await asyncio.wrap_future(self._finished)

    # -- writer thread --------------------------------------------------------------

    def _submit(self, fn: Callable[..., None], *args: Any, size: int) -> None:
        if self._stopped:
            return
        with self._lock:
            if self._pending + size > self.max_pending_bytes:
                overflow = True
            else:
                overflow = False
                self._pending += size
        if overflow:
            self._fail(OSError(f"more than {self.max_pending_bytes} bytes waiting for the disk"))
            return
        try:
            self._executor.submit(self._run, fn, size, *args)
        except RuntimeError:  # shut down by on_end from another thread
            with self._lock:
                self._pending -= size

    def _run(self, fn: Callable[..., None], size: int, *args: Any) -> None:
        try:
            if self.error is None:
                fn(*args)
        except Exception as exc:
            self._fail(exc)
        finally:
            with self._lock:
                self._pending -= size

    def _fail(self, exc: BaseException) -> None:
        if self.error is not None:
            return
        self.error = exc
        self._stopped = True
        logger.error(
            "recording %s of room %r stopped: %s", self.id, self.room, exc,
            extra={"room": self.room, "recording": self.id},
        )

    def _track_dir(self, rendition: str) -> Path:
        path = self.directory / rendition
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_init(self, rendition: str, data: bytes, name: str) -> None:
        (self._track_dir(rendition) / name).write_bytes(data)
        self._tracks.setdefault(rendition, _Track()).init = True

    def _write_segment(self, rendition: str, segment: RecordedSegment, data: bytes) -> None:
        (self._track_dir(rendition) / segment_uri(segment.msn)).write_bytes(data)
        track = self._tracks.setdefault(rendition, _Track())
        track.segments.append(segment)
        track.bytes += segment.size

    def _finalize(self, ended: datetime) -> dict[str, Any] | None:
        try:
            manifest = self._publish(ended)
        except Exception as exc:
            self._fail(exc)
            manifest = None
        if manifest is None:
            _remove_tree(self.directory)
        self.manifest = manifest
        if self._on_done is not None:
            try:
                self._on_done(self)
            except Exception:
                logger.exception("recording on_done callback failed")
        return manifest

    def _publish(self, ended: datetime) -> dict[str, Any] | None:
        tracks = _common_start({n: t for n, t in self._tracks.items() if t.init and t.segments})
        multivariant = None
        if tracks and self._variants is not None:
            multivariant = _recorded_multivariant(*self._variants, set(tracks))
        if multivariant is None:
            logger.info(
                "recording %s of room %r has nothing playable; discarded", self.id, self.room,
                extra={"room": self.room, "recording": self.id},
            )
            return None
        for name, track in tracks.items():
            _write_atomic(self.directory / name / PLAYLIST_NAME, render_vod_playlist(track.segments))
        _write_atomic(self.directory / PLAYLIST_NAME, multivariant)
        pdts = [t.segments[0].program_date_time for t in tracks.values()]
        known = [p for p in pdts if p is not None]
        started = min(known) if known else self.created
        renditions: list[dict[str, Any]] = [
            {
                "name": name,
                "segments": len(track.segments),
                "duration_s": round(sum(s.duration for s in track.segments), 3),
                "bytes": track.bytes,
            }
            for name, track in sorted(tracks.items())
        ]
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "room": self.room,
            "id": self.id,
            "started": _iso(started),
            "ended": _iso(max(ended, started)),
            "duration_s": max(r["duration_s"] for r in renditions),
            "bytes": sum(r["bytes"] for r in renditions),
            "renditions": renditions,
            "truncated": self.error is not None,
        }
        if self.error is not None:
            manifest["error"] = str(self.error)
        _write_atomic(self.directory / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
        logger.info(
            "recording %s of room %r published: %.1f s, %d bytes",
            self.id, self.room, manifest["duration_s"], manifest["bytes"],
            extra={"room": self.room, "recording": self.id},
        )
        return manifest
