"""In-memory LL-HLS media store: what the origin serves (draft-pantos-hls-rfc8216bis).

A :class:`RenditionStore` owns one rendition's :class:`~hls_bridge.model.MediaPlaylist`
plus the bytes of its init segment, parts and segments, each written once and served
from memory.  Retention follows §6.2.2: a part that leaves the playlist stays fetchable
for ``grace`` seconds (3 target durations by default), a segment likewise after it
slides out of the window; after that both answer 404.

Every change (part, segment, end) wakes the coroutines blocked in
:meth:`RenditionStore.wait_until` (blocking playlist reload, preload-hinted parts).

Resource names are relative to the media playlist at ``{rendition}/index.m3u8``:
``init.mp4``, ``seg{msn}.m4s``, ``part{msn}.{part}.m4s``; an init segment that replaces
another after :meth:`RenditionStore.discontinuity` is ``init.mp4?v={version}``
(:func:`init_uri`, version 1, 2, …), so a cache that keeps ``init.mp4`` as immutable
never serves the old bytes for the new one.  A :class:`RoomStore` groups
renditions and the multivariant playlist (``index.m3u8``), which names each rendition's
playlist under the store's :attr:`RoomStore.stream_id` (``{stream_id}/v0/index.m3u8``):
a new stream of the same room gets new media URLs.

A :class:`StoreRecorder` (e.g. :class:`hls_bridge.recording.Recorder`) set on a
:class:`RoomStore` is told, on the event loop, about every init segment, closed
segment, multivariant playlist and the end of the stream; its exceptions are logged and
never reach the live path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from hls_bridge.errors import HlsBridgeError
from hls_bridge.model import MediaPlaylist, Part, Segment, ServerControl
from hls_bridge.playlist import (
    AudioRendition,
    VariantStream,
    render,
    render_multivariant,
    rendition_report,
)

__all__ = [
    "INIT_URI",
    "PLAYLIST_NAME",
    "RenditionStore",
    "RoomStore",
    "StoreError",
    "StoreRecorder",
    "init_uri",
    "new_stream_id",
    "part_uri",
    "segment_uri",
]

logger = logging.getLogger(__name__)

PLAYLIST_NAME = "index.m3u8"
INIT_URI = "init.mp4"


def segment_uri(msn: int) -> str:
    """URI of segment ``msn``, relative to its media playlist."""
    return f"seg{msn}.m4s"


def init_uri(version: int) -> str:
    """URI of a rendition's init segment ``version`` (0 = the first), relative to its
    media playlist: ``init.mp4``, then ``init.mp4?v=1``, ``init.mp4?v=2``, …"""
    return INIT_URI if version == 0 else f"{INIT_URI}?v={version}"


def part_uri(msn: int, part: int) -> str:
    """URI of part ``part`` of segment ``msn``, relative to its media playlist."""
    return f"part{msn}.{part}.m4s"


STREAM_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def new_stream_id() -> str:
    """A fresh stream id: ``s`` + UTC time in ms (base 36) + 32 random bits (hex)."""
    millis = int(time.time() * 1000)
    digits = ""
    while millis:
        millis, digit = divmod(millis, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
    return f"s{digits}{secrets.token_hex(4)}"


class StoreError(HlsBridgeError):
    """A store call that would rewrite published media or name an unknown rendition."""


class StoreRecorder(Protocol):
    """Told about what a :class:`RoomStore` publishes (called on the event loop).

    Implementations must return quickly (hand disk I/O to a thread); an exception is
    logged by the store and otherwise ignored.  ``on_end`` is called once.
    """

    def on_init(self, rendition: str, data: bytes) -> None:
        """Rendition ``rendition``'s init segment was set, or replaced after a
        discontinuity: the segments closed from now on use it."""

    def on_segment(self, rendition: str, segment: Segment, data: bytes) -> None:
        """Segment ``segment.msn`` (``seg{msn}.m4s``, ``segment.duration`` seconds,
        ``segment.program_date_time``) was closed; ``data`` is its body.
        ``segment.discontinuity`` marks the first segment after
        :meth:`RenditionStore.discontinuity` (RFC 8216bis §4.4.4.3)."""

    def on_variants(
        self, text: str, variants: Sequence[VariantStream], audio: Sequence[AudioRendition]
    ) -> None:
        """The multivariant playlist was set: its text and what it was rendered from."""

    def on_end(self) -> None:
        """The room's stream ended (:meth:`RoomStore.end`)."""


def _tell(recorder: StoreRecorder | None, method: str, *args: Any) -> None:
    """Call ``recorder.method(*args)``; a failing recorder never breaks the live store."""
    if recorder is None:
        return
    try:
        getattr(recorder, method)(*args)
    except Exception:
        logger.exception("HLS recorder %s failed", method)


class RenditionStore:
    """One rendition's playlist and media bytes, kept in memory.

    - ``target_duration``/``part_target``/``window_segments``/``server_control``/
      ``first_msn``: passed to :class:`MediaPlaylist` (use one ``server_control`` for
      every rendition of a room, §4.4.3.8).
    - ``discontinuity_sequence``: EXT-X-DISCONTINUITY-SEQUENCE of the first segment
      (§4.4.3.3; see :meth:`RoomStore.add_rendition`'s ``align_with``).
    - ``grace``: seconds a part (segment) stays fetchable after leaving the playlist
      (the window); default 3 × target duration (§6.2.2).  A replaced init segment
      stays fetchable while a retained part or segment still uses it.
    - ``clock``: monotonic seconds, replaceable in tests.
    """

    def __init__(
        self,
        name: str,
        *,
        target_duration: int,
        part_target: float,
        window_segments: int = 12,
        server_control: ServerControl | None = None,
        first_msn: int = 0,
        discontinuity_sequence: int = 0,
        grace: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name or "/" in name:
            raise StoreError(f"bad rendition name {name!r}")
        self.name = name
        self.playlist = MediaPlaylist(
            target_duration=target_duration,
            part_target=part_target,
            init_uri=INIT_URI,
            window_segments=window_segments,
            server_control=server_control,
            first_msn=first_msn,
            discontinuity_sequence=discontinuity_sequence,
        )
        self.grace = 3.0 * target_duration if grace is None else float(grace)
        self._clock = clock
        self._init: bytes | None = None
        self._inits: dict[int, bytes] = {}
        """Init segments by version, the current one and older ones still in use."""
        self._init_first_msn: dict[int, int] = {}
        """MSN of the first segment published with each init version."""
        self._init_version = 0
        self._init_replaceable = False
        self._parts: dict[int, list[bytes]] = {}
        self._segments: dict[int, bytes] = {}
        self._part_expiry: dict[int, float] = {}
        self._segment_expiry: dict[int, float] = {}
        self._changed = asyncio.Event()
        self._waiters = 0
        self.version = 0
        """Bumped on every change; lets callers cache rendered text."""
        self.recorder: StoreRecorder | None = None
        """Told about the init segment and closed segments (set by :class:`RoomStore`)."""

    # -- writing -------------------------------------------------------------------

    def set_init(self, data: bytes) -> None:
        """Store the init segment (the Media Initialization Section, RFC 8216bis §4.4.4.5).

        Written once; the same bytes again are accepted and change nothing.  Different
        bytes are accepted only as the first call after :meth:`discontinuity` (before
        the next part): they become version ``n + 1`` at ``init.mp4?v={n+1}``
        (:func:`init_uri`), named by an EXT-X-MAP before the next segment.  Raises
        StoreError otherwise.
        """
        data = bytes(data)
        if self._init == data:
            return
        if self._init is not None:
            if not self._init_replaceable:
                raise StoreError(f"{self.name}: the init segment is already written")
            self._init_version += 1
        self._init = data
        self._inits[self._init_version] = data
        self._init_first_msn[self._init_version] = self.playlist.next_msn
        self._init_replaceable = False
        self.playlist.init_uri = init_uri(self._init_version)
        self._notify()
        _tell(self.recorder, "on_init", self.name, data)

    def discontinuity(self) -> None:
        """Start a new Discontinuity Sequence (EXT-X-DISCONTINUITY, RFC 8216bis §4.4.4.3).

        Closes the in-progress segment if it has parts (a short segment; an in-progress
        segment without parts is just the preload hint and stays the next one), marks
        the next segment with EXT-X-DISCONTINUITY and lets the next :meth:`set_init`
        replace the init segment.  Use it when the encoding parameters, the encoder or
        the timeline change.  Raises PlaylistStateError after :meth:`end`.
        """
        if self.playlist.pending_parts:
            self.close_segment()
        self.playlist.discontinuity()
        self._init_replaceable = True
        self._notify()

    def publish_part(
        self, data: bytes, duration: float, independent: bool, *,
        program_date_time: datetime | None = None,
    ) -> Part:
        """Append a finished part (a CMAF chunk, ``duration`` seconds) to the in-progress
        segment; ``program_date_time`` (with a segment's first part) dates the segment.

        The playlist's preload hint then names the next part of the same segment.
        Raises PlaylistStateError (see :meth:`MediaPlaylist.add_part`).
        """
        pl = self.playlist
        msn, index = pl.next_msn, len(pl.pending_parts)
        self._init_replaceable = False
        part = pl.add_part(
            duration, part_uri(msn, index), independent, hint=part_uri(msn, index + 1),
            program_date_time=program_date_time,
        )
        self._parts.setdefault(msn, []).append(bytes(data))
        self._changed_state()
        return part

    def close_segment(self, program_date_time: datetime | None = None) -> Segment:
        """Close the in-progress segment; its body is the concatenation of its parts.

        Call it right after publishing the segment's last part, without awaiting in
        between (see :class:`MediaPlaylist`).  The preload hint moves to the next
        segment's first part.
        """
        pl = self.playlist
        msn = pl.next_msn
        segment = pl.close_segment(segment_uri(msn), program_date_time, hint=part_uri(msn + 1, 0))
        body = self._segments[msn] = b"".join(self._parts.get(msn, ()))
        self._changed_state()
        _tell(self.recorder, "on_segment", self.name, segment, body)
        return segment

    def end(self) -> None:
        """Mark the stream ended (EXT-X-ENDLIST); wakes every waiter.  A segment in progress
        (the transcoder stopped between two segment boundaries) is closed first: players may
        already have its parts, and the last segment of a playlist may be shorter than the
        target duration (RFC 8216bis §4.4.3.1)."""
        if self.playlist.pending_parts and not self.playlist.ended:
            self.close_segment()
        self.playlist.end()
        self._changed_state()

    # -- reading -------------------------------------------------------------------

    @property
    def init(self) -> bytes | None:
        """The current init segment, or None before :meth:`set_init`."""
        return self._init

    @property
    def init_version(self) -> int:
        """Version of the current init segment (0 = the first; see :func:`init_uri`)."""
        return self._init_version

    def init_segment(self, version: int) -> bytes | None:
        """Bytes of init segment ``version`` (``init.mp4?v={version}``), or None if
        unknown or no longer used by any retained part or segment."""
        return self._inits.get(version)

    def part(self, msn: int, index: int) -> bytes | None:
        """Bytes of a part, or None if unknown, not yet published or expired."""
        if self._expired(self._part_expiry, msn):
            return None
        parts = self._parts.get(msn)
        if parts is None or not 0 <= index < len(parts):
            return None
        return parts[index]

    def segment(self, msn: int) -> bytes | None:
        """Bytes of a closed segment, or None if unknown, still open or expired."""
        if self._expired(self._segment_expiry, msn):
            return None
        return self._segments.get(msn)

    @property
    def has_media(self) -> bool:
        """True once a part has been published: the playlist lists a part and a preload
        hint, the first revision a player can use (§4.4.5.3)."""
        return self.playlist.last_msn_part() is not None

    def is_hinted(self, msn: int, index: int) -> bool:
        """True if that part is the next one to be published (the preload hint, §4.4.5.3)."""
        pl = self.playlist
        return not pl.ended and msn == pl.next_msn and index == len(pl.pending_parts)

    @property
    def waiters(self) -> int:
        """How many coroutines are blocked in :meth:`wait_until` right now."""
        return self._waiters

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every change.

        Returns False if it still does not hold after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiters += 1
        try:
            while not predicate():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return predicate()
            return True
        finally:
            self._waiters -= 1

    # -- internals -----------------------------------------------------------------

    def _expired(self, expiry: dict[int, float], msn: int) -> bool:
        deadline = expiry.get(msn)
        return deadline is not None and deadline <= self._clock()

    def _changed_state(self) -> None:
        self._retain()
        self._notify()

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _retain(self) -> None:
        """Start the grace period of unlisted parts and segments; drop expired ones."""
        now = self._clock()
        pl = self.playlist
        listed_from = pl.parts_listed_from()
        for msn in self._parts:
            if msn < listed_from:
                self._part_expiry.setdefault(msn, now + self.grace)
        first = pl.media_sequence
        for msn in self._segments:
            if msn < first:
                self._segment_expiry.setdefault(msn, now + self.grace)
        for msn, deadline in list(self._part_expiry.items()):
            if deadline <= now:
                del self._part_expiry[msn]
                self._parts.pop(msn, None)
        for msn, deadline in list(self._segment_expiry.items()):
            if deadline <= now:
                del self._segment_expiry[msn]
                self._segments.pop(msn, None)
        oldest = min(self._parts.keys() | self._segments.keys(), default=pl.next_msn)
        for version in [v for v in self._inits if v < self._init_version]:
            if self._init_first_msn[version + 1] <= oldest:
                del self._inits[version]
                del self._init_first_msn[version]


class RoomStore:
    """A room's renditions and its multivariant playlist.

    All renditions share one :class:`ServerControl` (§4.4.3.8), made from the first
    rendition's targets unless given.

    ``recorder`` (optional, also settable later through :attr:`recorder`) is told about
    every init segment, closed segment, the multivariant playlist and the end; see
    :class:`StoreRecorder`.
    """

    def __init__(
        self,
        server_control: ServerControl | None = None,
        *,
        recorder: StoreRecorder | None = None,
        stream_id: str | None = None,
    ) -> None:
        self.stream_id = stream_id if stream_id is not None else new_stream_id()
        """Path segment naming this stream's media (``/hls/{room}/{stream_id}/v0/…``): a
        room's next stream gets new URLs, so media cached as immutable by a CDN never
        outlives the stream it belongs to."""
        if not STREAM_ID_RE.fullmatch(self.stream_id):
            raise StoreError(f"bad stream id {self.stream_id!r}")
        self.server_control = server_control
        self.renditions: dict[str, RenditionStore] = {}
        self.multivariant: str | None = None
        """Multivariant playlist text, or None until :meth:`set_variants`."""
        self.ended = False
        """True after :meth:`end`."""
        self._variants: tuple[Sequence[VariantStream], Sequence[AudioRendition]] | None = None
        self._recorder: StoreRecorder | None = None
        self.recorder = recorder

    @property
    def recorder(self) -> StoreRecorder | None:
        """The :class:`StoreRecorder`, or None (the default: nothing is recorded)."""
        return self._recorder

    @recorder.setter
    def recorder(self, recorder: StoreRecorder | None) -> None:
        """Attach (or detach with None) a recorder.

        A recorder attached mid-stream is first told the init segments and the
        multivariant playlist already set; it records from the next closed segment.
        """
        self._recorder = recorder
        for store in self.renditions.values():
            store.recorder = recorder
            if store.init is not None:
                _tell(recorder, "on_init", store.name, store.init)
        if self._variants is not None and self.multivariant is not None:
            _tell(recorder, "on_variants", self.multivariant, *self._variants)
        if self.ended:
            _tell(recorder, "on_end")

    def add_rendition(
        self, name: str, *, target_duration: int, part_target: float, reuse: bool = False,
        align_with: str | None = None, **kwargs: Any,
    ) -> RenditionStore:
        """Create rendition ``name`` (other keyword arguments as for :class:`RenditionStore`).

        ``reuse=True``: an existing rendition ``name`` is returned as it is (e.g. to a
        restarted transcoder, after :meth:`RenditionStore.discontinuity`); without it an
        existing name raises StoreError.  ``align_with``: a rendition added mid-stream
        starts at that rendition's next MSN and Discontinuity Sequence Number, so the
        same media has the same numbers in every variant (RFC 8216bis §6.2.4,
        §4.4.3.3); StoreError if it does not exist.
        """
        existing = self.renditions.get(name)
        if existing is not None:
            if reuse:
                return existing
            raise StoreError(f"rendition {name!r} already exists")
        if align_with is not None:
            leader = self.renditions.get(align_with)
            if leader is None:
                raise StoreError(f"no rendition {align_with!r} to align {name!r} with")
            kwargs["first_msn"] = leader.playlist.next_msn
            kwargs["discontinuity_sequence"] = leader.playlist.next_discontinuity_sequence
        if self.server_control is None:
            self.server_control = ServerControl.for_targets(target_duration, part_target)
        kwargs.setdefault("server_control", self.server_control)
        store = RenditionStore(
            name, target_duration=target_duration, part_target=part_target, **kwargs
        )
        store.recorder = self._recorder
        self.renditions[name] = store
        return store

    def set_variants(
        self, variants: Sequence[VariantStream], audio: Sequence[AudioRendition] = ()
    ) -> None:
        """Write the multivariant playlist.  ``variants``/``audio`` URIs are relative to
        the stream folder (``v0/index.m3u8``); the playlist names them under
        :attr:`stream_id` (``{stream_id}/v0/index.m3u8``)."""
        prefix = f"{self.stream_id}/"
        self.multivariant = render_multivariant(
            [dataclasses.replace(v, uri=prefix + v.uri) for v in variants],
            [dataclasses.replace(a, uri=prefix + a.uri) for a in audio],
        )
        self._variants = (tuple(variants), tuple(audio))
        _tell(self._recorder, "on_variants", self.multivariant, *self._variants)

    def render_media(self, name: str, *, skip: bool = False) -> str:
        """Rendition ``name``'s playlist text with reports of the other renditions."""
        store = self.renditions.get(name)
        if store is None:
            raise StoreError(f"no rendition {name!r}")
        reports = [
            rendition_report(other.playlist, f"../{other_name}/{PLAYLIST_NAME}")
            for other_name, other in self.renditions.items()
            if other_name != name
        ]
        return render(store.playlist, skip=skip, rendition_reports=reports)

    def end_rendition(self, name: str) -> None:
        """End rendition ``name`` alone (EXT-X-ENDLIST), e.g. a rung the ladder no longer
        has; closes its in-progress segment first.  StoreError if it does not exist."""
        store = self.renditions.get(name)
        if store is None:
            raise StoreError(f"no rendition {name!r}")
        if store.playlist.ended:
            return
        if store.playlist.pending_parts:
            store.close_segment()
        store.end()

    def end(self) -> None:
        """End every rendition (EXT-X-ENDLIST; a segment in progress is closed first); the
        recorder is told once, even if a rendition fails to end."""
        try:
            for store in self.renditions.values():
                if not store.playlist.ended:
                    store.end()
        finally:
            if not self.ended:
                self.ended = True
                _tell(self._recorder, "on_end")
