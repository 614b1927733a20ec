"""Finished recordings: listing, retention and VOD playback over HTTP (RFC 8216bis §6.2.1).

:class:`RecordingLibrary` lists the recordings a :class:`~hls_bridge.recording.Recorder`
finished under ``root``, deletes them after the retention period
(:meth:`RecordingLibrary.sweep`) and resolves file paths safely; :func:`create_vod_app`
serves them (mount it at ``/vod``): ``GET /{room}/{id}/index.m3u8`` and
``/{room}/{id}/{rendition}/{index.m3u8|init.mp4|init{n}.mp4|seg{n}.m4s}``.
:class:`RecordingConfig` reads ``RELAYCAST_HLS_RECORD_DIR`` / ``_RETENTION_H``.
See :mod:`hls_bridge.recording` for the on-disk layout.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from common.config import ConfigError
from common.names import is_room_name
from common.problems import HttpProblem, problem_middleware

from .access import ViewAccess, access_middleware
from .origin import INIT_TYPE, MEDIA_TYPE, PLAYLIST_TYPE, media_cors_middleware
from .recording import (
    _FILE_RE,
    MANIFEST_NAME,
    MAX_AGE_S,
    RECORDING_ID_RE,
    RENDITION_RE,
    Recorder,
    RecordingError,
    _iso,
    _parse_iso,
    _utc_now,
)
from .store import PLAYLIST_NAME

__all__ = ["LIBRARY", "RecordingConfig", "RecordingLibrary", "create_vod_app"]

logger = logging.getLogger(__name__)


class RecordingLibrary:
    """The finished recordings under ``root``; deletes them ``retention_s`` after their end.

    - ``url_prefix``: where :func:`create_vod_app` is mounted (for the ``url`` field).
    - ``clock``: UTC wall clock (retention, listing, cache lifetimes).

    Every method but :meth:`recorder` reads the disk: call them from a thread
    (``await asyncio.to_thread(library.list)``); :func:`create_vod_app` does.
    """

    def __init__(
        self,
        root: Path | str,
        retention_s: float,
        *,
        url_prefix: str = "/vod",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if retention_s <= 0:
            raise RecordingError("retention must be positive")
        self.root = Path(root)
        self.retention = timedelta(seconds=retention_s)
        self.url_prefix = url_prefix.rstrip("/")
        self._clock = clock
        self._active: set[tuple[str, str]] = set()
        self._manifests: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def recorder(self, room: str, **kwargs: Any) -> Recorder:
        """A new :class:`Recorder` of ``room`` under this library (not swept while active)."""
        user_done = kwargs.pop("on_done", None)

        def done(recorder: Recorder) -> None:
            with self._lock:
                self._active.discard((recorder.room, recorder.id))
            if user_done is not None:
                user_done(recorder)

        recorder = Recorder(self.root, room, on_done=done, **kwargs)
        with self._lock:
            self._active.add((recorder.room, recorder.id))
        return recorder

    def path(self, room: str, recording_id: str, *parts: str) -> Path | None:
        """``{root}/{room}/{id}/{parts...}``, or None if any component is not a valid name.

        Only room names, recording ids, rendition names and the recording's own file
        names are accepted, and the result is checked to lie under ``root``.
        """
        if not is_room_name(room) or not RECORDING_ID_RE.fullmatch(recording_id):
            return None
        if len(parts) > 2 or any(not isinstance(p, str) for p in parts):
            return None
        if len(parts) == 2 and not RENDITION_RE.fullmatch(parts[0]):
            return None
        if parts and not (_FILE_RE.fullmatch(parts[-1]) or (len(parts) == 1 and parts[0] == MANIFEST_NAME)):
            return None
        path = self.root.joinpath(room, recording_id, *parts)
        root = self.root.resolve()
        return path if path.resolve().is_relative_to(root) else None

    def get(self, room: str, recording_id: str) -> dict[str, Any] | None:
        """The finished, unexpired recording's entry (as in :meth:`list`), else None."""
        entry = self._manifest(room, recording_id)
        if entry is None or self._expires(entry) <= self._clock():
            return None
        return self._entry(entry)

    def list(self, room: str | None = None) -> builtins.list[dict[str, Any]]:
        """Finished, unexpired recordings (of ``room``, or all), newest end first.

        Each: ``room``, ``id``, ``started``, ``ended`` (ISO-8601 UTC), ``duration_s``,
        ``bytes``, ``renditions`` (``name``, ``segments``, ``duration_s``, ``bytes``),
        ``truncated``, ``expires`` and ``url`` (``/vod/{room}/{id}/index.m3u8``).
        """
        if room is not None and not is_room_name(room):
            return []
        now = self._clock()
        entries = []
        for room_name, recording_id in self._recording_dirs(room):
            manifest = self._manifest(room_name, recording_id)
            if manifest is not None and self._expires(manifest) > now:
                entries.append(self._entry(manifest))
        entries.sort(key=lambda e: (e["ended"], e["id"]), reverse=True)
        return entries

    def max_age(self, room: str, recording_id: str) -> int:
        """Seconds a response for this recording may be cached: until it expires (≤ 1 year)."""
        manifest = self._manifest(room, recording_id)
        if manifest is None:
            return 0
        remaining = (self._expires(manifest) - self._clock()).total_seconds()
        return max(0, min(MAX_AGE_S, int(remaining)))

    def sweep(self, now: datetime | None = None) -> int:
        """Delete expired recordings and abandoned unfinished ones; returns how many.

        A finished recording expires ``retention`` after its end; an unfinished one not
        being recorded by this library's recorders ``retention`` after its last write.
        Only directories named like rooms and recording ids are ever touched.
        """
        now = now or self._clock()
        removed = 0
        for room, recording_id in self._recording_dirs(None):
            with self._lock:
                if (room, recording_id) in self._active:
                    continue
            path = self.root / room / recording_id
            manifest = self._manifest(room, recording_id)
            if manifest is not None:
                expired = self._expires(manifest) <= now
            else:
                expired = _last_write(path) + self.retention <= now
            if expired:
                with self._lock:
                    self._manifests.pop((room, recording_id), None)
                shutil.rmtree(path, ignore_errors=True)
                removed += not path.exists()
                logger.info("recording %s of room %r deleted (retention)", recording_id, room)
        for room_dir in self._room_dirs(None):
            with contextlib.suppress(OSError):
                room_dir.rmdir()  # only if empty
        return removed

    async def sweep_forever(self, interval_s: float = 600.0) -> None:
        """Run :meth:`sweep` in a thread every ``interval_s`` seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:
                logger.exception("recording sweep failed")
            await asyncio.sleep(interval_s)

    # -- internals ------------------------------------------------------------------

    def _room_dirs(self, room: str | None) -> builtins.list[Path]:
        if room is not None:
            path = self.root / room
            return [path] if path.is_dir() else []
        try:
            return [p for p in self.root.iterdir() if is_room_name(p.name) and p.is_dir()]
        except OSError:
            return []

    def _recording_dirs(self, room: str | None) -> builtins.list[tuple[str, str]]:
        found = []
        for room_dir in self._room_dirs(room):
            try:
                children = list(room_dir.iterdir())
            except OSError:
                continue
            found += [
                (room_dir.name, p.name)
                for p in children
                if RECORDING_ID_RE.fullmatch(p.name) and p.is_dir()
            ]
        return found

    def _manifest(self, room: str, recording_id: str) -> dict[str, Any] | None:
        """The recording's manifest (cached: it never changes once written), or None."""
        key = (room, recording_id)
        with self._lock:
            cached = self._manifests.get(key)
        if cached is not None:
            return cached
        path = self.path(room, recording_id, MANIFEST_NAME)
        if path is None:
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            valid = (
                isinstance(manifest, dict)
                and manifest.get("room") == room
                and manifest.get("id") == recording_id
                and isinstance(manifest.get("renditions"), list)
                and all(
                    isinstance(r, dict) and isinstance(r.get("name"), str)
                    for r in manifest["renditions"]
                )
            )
            if valid:
                manifest["_ended"] = _parse_iso(manifest["ended"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not valid:
            return None
        with self._lock:
            if len(self._manifests) >= 4096:
                self._manifests.clear()
            self._manifests[key] = manifest
        return manifest

    def _expires(self, manifest: Mapping[str, Any]) -> datetime:
        ended: datetime = manifest["_ended"]
        return ended + self.retention

    def _entry(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        entry = {
            k: copy.deepcopy(v)
            for k, v in manifest.items()
            if not k.startswith("_") and k != "version"
        }
        entry["expires"] = _iso(self._expires(manifest))
        entry["url"] = f"{self.url_prefix}/{manifest['room']}/{manifest['id']}/{PLAYLIST_NAME}"
        return entry


def _last_write(path: Path) -> datetime:
    """Newest mtime of ``path`` and its direct subdirectories (where segments land)."""
    times = []
    with contextlib.suppress(OSError):
        times.append(path.stat().st_mtime)
        for child in path.iterdir():
            with contextlib.suppress(OSError):
                times.append(child.stat().st_mtime)
    return datetime.fromtimestamp(max(times, default=0.0), UTC)


@dataclass(frozen=True)
class RecordingConfig:
    """Recording settings (``RELAYCAST_HLS_RECORD_*``); ``directory`` None = off."""

    directory: Path | None = None
    retention_h: float = 168.0
    sweep_interval_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.retention_h > 0 or not self.sweep_interval_s > 0:
            raise ValueError("retention and sweep interval must be positive")

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    @property
    def retention_s(self) -> float:
        return self.retention_h * 3600.0

    def library(self, **kwargs: Any) -> RecordingLibrary | None:
        """The :class:`RecordingLibrary` (keyword arguments passed on), or None when off."""
        if self.directory is None:
            return None
        return RecordingLibrary(self.directory, self.retention_s, **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> RecordingConfig:
        """``RELAYCAST_HLS_RECORD_DIR`` and ``RELAYCAST_HLS_RECORD_RETENTION_H``; then overrides.

        Raises ConfigError for a retention that is not a positive number.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if directory := env.get("RELAYCAST_HLS_RECORD_DIR", "").strip():
            values["directory"] = Path(directory)
        if text := env.get("RELAYCAST_HLS_RECORD_RETENTION_H", "").strip():
            try:
                values["retention_h"] = float(text)
            except ValueError:
                raise ConfigError(
                    f"RELAYCAST_HLS_RECORD_RETENTION_H={text!r} is not a number"
                ) from None
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(f"RELAYCAST_HLS_RECORD_*: {exc}") from exc


# -- HTTP ---------------------------------------------------------------------------------

LIBRARY = web.AppKey("vod_library", RecordingLibrary)

def _content_type(name: str) -> str:
    if name == PLAYLIST_NAME:
        return PLAYLIST_TYPE
    return INIT_TYPE if name.endswith(".mp4") else MEDIA_TYPE


def create_vod_app(library: RecordingLibrary, access: ViewAccess | None = None) -> web.Application:
    """The VOD sub-application serving ``library``'s finished recordings (mount at ``/vod``).

    Routes (relative to the mount point), GET and HEAD, with Range support:

    - ``/{room}/{id}/index.m3u8`` — multivariant playlist;
    - ``/{room}/{id}/{rendition}/index.m3u8`` — VOD media playlist;
    - ``/{room}/{id}/{rendition}/init.mp4`` (``init{n}.mp4`` after a discontinuity),
      ``seg{msn}.m4s`` — media.

    Responses are cacheable (``immutable``) until the recording expires; anything else
    (unknown, unfinished or expired recordings, bad names) is a 404 problem+json.
    ``access``: who may watch which room's recordings (:mod:`hls_bridge.access`; default:
    everyone).
    """
    middlewares = [media_cors_middleware, problem_middleware]
    if access is not None:
        middlewares.append(access_middleware(access))
    app = web.Application(middlewares=middlewares)
    app[LIBRARY] = library
    app.router.add_get("/{room}/{id}/index.m3u8", _serve)
    app.router.add_get("/{room}/{id}/{rendition}/{name}", _serve)
    return app


def _locate(
    library: RecordingLibrary, room: str, recording_id: str, rendition: str | None, name: str
) -> tuple[Path, int] | None:
    """(file, max-age) of a finished recording's file, or None (worker thread)."""
    if not _FILE_RE.fullmatch(name) or (rendition is None and name != PLAYLIST_NAME):
        return None
    manifest = library._manifest(room, recording_id)
    if manifest is None or library._expires(manifest) <= library._clock():
        return None
    parts = (name,) if rendition is None else (rendition, name)
    if rendition is not None and all(r["name"] != rendition for r in manifest["renditions"]):
        return None
    path = library.path(room, recording_id, *parts)
    if path is None or not path.is_file():
        return None
    return path, library.max_age(room, recording_id)


async def _serve(request: web.Request) -> web.StreamResponse:
    info = request.match_info
    rendition = info.get("rendition")
    name = info.get("name", PLAYLIST_NAME)
    found = await asyncio.to_thread(
        _locate, request.app[LIBRARY], info["room"], info["id"], rendition, name
    )
    if found is None:
        raise HttpProblem(404, detail=f"no recording file at {request.path}")
    path, max_age = found
    content_type = _content_type(name)
    if name == PLAYLIST_NAME:  # small, and a private room's are rewritten (hls_bridge.access)
        return web.Response(body=await asyncio.to_thread(path.read_bytes), content_type=content_type,
                            charset=None, headers={"Cache-Control": f"public, max-age={max_age}, immutable"})
    return web.FileResponse(
        path,
        headers={
            "Content-Type": content_type,
            "Cache-Control": f"public, max-age={max_age}, immutable",
        },
    )
