"""A room's transcoder process: ``python -m hls_bridge.transcoder_main --fd N --parent PID``.

Started by :class:`hls_bridge.transcoder_process.TranscoderProcess` with one end of a
socket pair (``--fd``, see :mod:`hls_bridge.media_link`) and a lower CPU priority than
its parent (so that forwarding wins when CPU runs short), it asks the kernel to end it
when its parent dies (:func:`common.parent_death.die_with_parent`), then:

1. reads CONFIG, and makes one :class:`LinkedTrack` per published track — the same face
   as :class:`sfu.direct.TrackTap`, fed by the link's VIDEO/AUDIO frames, its key-frame
   requests sent back as KEYFRAME frames;
2. runs the unchanged ingest (:class:`~hls_bridge.ingest.ProducerTap`: reassembly, PyAV
   decode) and :class:`~hls_bridge.transcoder.LadderTranscoder` in this process, writing
   into a :class:`StoreProxy` whose calls go back as STORE frames;
3. on END, or when the link closes, ends the taps, lets the transcoder flush and end the
   renditions, sends DONE and exits 0; when the source stops fitting the top rendition's
   passthrough (:class:`~hls_bridge.transcoder.PassthroughLost`) it exits with
   :data:`~hls_bridge.transcoder.PASSTHROUGH_LOST_STATUS` without DONE (the bridge
   restarts it without passthrough).

CONFIG also carries ``segment_frames`` (the segment length in frames, when set by the
bridge: the source's key-frame interval), ``passthrough`` (``{"bitrate": bits/s}`` or
null) and ``aac_passthrough`` (``{"asc": hex}``, the source's AudioSpecificConfig, with an
``aac`` track instead of ``audio``: ``a0`` is the encoder's AAC; or null).

Every second it sends a REPORT: ``{"worker_s": transcoder-thread seconds, "media_s":
media seconds transcoded, "dropped_frames", "repeated_frames", "decoded": {kind: frames},
"tap_dropped": {kind: frames}, "renditions": [name, ...]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import socket
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpCodecParameters

from common.child_main import start_child
from sfu.direct import MediaPacket, PacketSink

from . import media_link as link
from .aac_tap import AacTap
from .encoders import EncoderChoice
from .errors import PASSTHROUGH_LOST_STATUS
from .ingest import ProducerTap, merge_frames
from .ladder import parse_ladder
from .transcoder import LadderTranscoder, PassthroughLost

logger = logging.getLogger("hls_bridge.transcoder_process")

REPORT_INTERVAL_S = 1.0


class LinkedTrack:
    """One published track as the transcoder process sees it (a ``TrackSource``)."""

    def __init__(self, kind: str, codec: RTCRtpCodecParameters,
                 request_keyframe: Callable[[str], None]) -> None:
        self.kind = kind
        self.codec = codec
        self.closed = False
        self._sinks: list[PacketSink] = []
        self._request = request_keyframe

    def add_consumer(self, sink: PacketSink) -> None:
        if sink not in self._sinks:
            self._sinks.append(sink)

    def remove_consumer(self, sink: PacketSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def request_keyframe(self) -> None:
        self._request(self.kind)

    def deliver(self, media: MediaPacket) -> None:
        for sink in list(self._sinks):
            sink.forward(media)


class _Remote:
    """Calls on a store object in the bridge process: ``proxy.method(*args, **kwargs)``
    sends ``(target, method, args, kwargs)``; nothing comes back."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], target: str | None) -> None:
        self._send = send
        self._target = target

    def __getattr__(self, method: str) -> Callable[..., None]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> None:
            self._send((self._target, method, args, kwargs))

        return call


class StoreProxy(_Remote):
    """The :class:`~hls_bridge.store.RoomStore` face the transcoder writes to."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__(send, None)
        self.renditions: dict[str, _Remote] = {}

    def add_rendition(self, name: str, **kwargs: Any) -> _Remote:
        self._send((None, "add_rendition", (name,), kwargs))
        rendition = self.renditions[name] = _Remote(self._send, name)
        return rendition


class _Link:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._calls: list[tuple[Any, ...]] = []

    def send(self, kind: bytes, body: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(link.frame(kind, body))

    def store_call(self, call: tuple[Any, ...]) -> None:
        """Queue one store call; the calls made in one event-loop callback go out as one
        STORE frame, applied together on the other side (the transcoder applies a
        segment's last part and its ``close_segment`` in one callback: no playlist may be
        served between them)."""
        if not self._calls:
            asyncio.get_running_loop().call_soon(self.flush_store)
        self._calls.append(call)

    def flush_store(self) -> None:
        calls, self._calls = self._calls, []
        if calls:
            self.send(link.STORE, pickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL))

    def keyframe(self, kind: str) -> None:
        self.send(link.KEYFRAME, kind.encode())


async def run(fd: int) -> int:
    """Transcode what the link at ``fd`` carries (see the module docstring); exit status."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=link.MAX_FRAME)
    out = _Link(writer)
    kind, body = await link.read_frame(reader)
    if kind != link.CONFIG:
        raise link.LinkClosed(f"expected CONFIG, got {kind!r}")
    config = json.loads(body)
    tracks = {
        kind: LinkedTrack(kind, RTCRtpCodecParameters(
            mimeType=t["mime_type"], clockRate=t["clock_rate"], channels=t.get("channels"),
            parameters=t.get("parameters") or {}), out.keyframe)
        for kind, t in config["tracks"].items()
    }
    store = StoreProxy(out.store_call)
    encoder = config["encoder"]
    transcoder = LadderTranscoder(
        store,  # type: ignore[arg-type]
        parse_ladder(config["ladder"]),
        fps=config["fps"], segment_s=config["segment_s"], part_s=config["part_s"],
        encoder_choice=EncoderChoice(encoder["name"], encoder["options"]),
        audio="audio" in tracks or "aac" in tracks,
        reuse_renditions=bool(config.get("min_rungs")),
        min_rungs=int(config.get("min_rungs") or 0),
        segment_frames=config.get("segment_frames"),
        passthrough=bool(config.get("passthrough")),
        passthrough_bitrate=(config.get("passthrough") or {}).get("bitrate"),
        aac_passthrough=bytes.fromhex(config["aac_passthrough"]["asc"]) if config.get("aac_passthrough") else None,
    )
    taps: dict[str, ProducerTap | AacTap] = {
        kind: AacTap(track) if kind == "aac" else ProducerTap(track, max_queue=16 if kind == "audio" else 8)
        for kind, track in tracks.items()}
    logger.info("transcoder for room %r started (pid %d, encoder %s)", config["room"],
                os.getpid(), encoder["name"])

    async def read_media() -> None:
        by_type = {link.MEDIA_TYPES[k]: t for k, t in tracks.items()}
        try:
            while True:
                kind, body = await link.read_frame(reader)
                track = by_type.get(kind)
                if track is not None:
                    track.deliver(link.decode_media(body))
                elif kind == link.END:
                    return
        except link.LinkClosed:
            return
        finally:
            for track in tracks.values():
                track.closed = True
            for tap in taps.values():
                tap.close()

    async def report() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            stats = transcoder.stats
            out.send(link.REPORT, json.dumps({
                "worker_s": round(transcoder.worker_seconds, 3),
                "media_s": round(float(stats.video_slots / transcoder.fps), 3),
                "dropped_frames": stats.dropped_frames,
                "repeated_frames": stats.repeated_frames,
                "decoded": {k: t.frames_decoded for k, t in taps.items()},
                "tap_dropped": {k: t.dropped for k, t in taps.items()},
                "renditions": sorted(store.renditions),
            }).encode())

    reading = asyncio.create_task(read_media())
    reporting = asyncio.create_task(report())
    try:
        await transcoder.run(merge_frames(list(taps.values())))
    except PassthroughLost as exc:
        # Not DONE: the renditions go on, continued by a transcoder without passthrough.
        logger.warning("room %r: passthrough ends (%s); the top rendition will be encoded", config["room"], exc)
        out.flush_store()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        return PASSTHROUGH_LOST_STATUS
    finally:
        reporting.cancel()
        reading.cancel()
        for tap in taps.values():
            tap.close()
        await asyncio.to_thread(transcoder.close)
    out.flush_store()
    out.send(link.DONE)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    # The parent stops the transcoder with END, then SIGTERM.
    args = start_child("python -m hls_bridge.transcoder_main", "the bridge's process id", argv)
    try:
        return asyncio.run(run(args.fd))
    except link.LinkClosed as exc:
        logger.warning("transcoder link closed before it was configured: %s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
