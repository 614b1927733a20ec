"""Publish with FFmpeg's own WHIP muxer (libavformat ``whip``, through PyAV).

FFmpeg's muxer is a third-party WHIP client with its own ICE, DTLS and RTP
code (FFmpeg 8.1 ``libavformat/whip.c``), so it exercises relaycast against an
implementation that shares nothing with aiortc.  What it does and needs:

* Offer: H.264 (PT 106, packetization-mode=1, profile-level-id taken from the
  encoder's SPS, RTX PT 105 + ``a=rtcp-fb:106 nack``) and Opus (PT 111, only
  48 kHz stereo); ``a=setup:passive`` (FFmpeg is the DTLS server; the
  ``whip_flags=dtls_active`` option flips that), no ICE candidates.
* Answer: needs ``a=ice-ufrag``, ``a=ice-pwd``, ``a=fingerprint`` and a UDP
  ``typ host`` candidate; FFmpeg dials the *first* such candidate only and
  sends STUN binding requests with USE-CANDIDATE to it (it is the controlling
  side; the SFU learns FFmpeg's address as a peer-reflexive candidate).
* After the handshake FFmpeg no longer answers STUN binding requests; it sends
  its own consent checks every 5 s instead (the SFU counts those as consent:
  ``sfu.aiortc_private.accept_peer_consent_checks``).
* H.264 must have no B-frames (the muxer refuses ``video_delay > 0``); Annex B
  with SPS/PPS as global extradata is re-sent by the muxer before every IDR.
  FFmpeg answers NACKs with RTX from its RTP history (the RTX SSRC is only in
  ``a=ssrc-group:FID``) but ignores PLI, so a viewer that joins waits for the
  next periodic key frame (``gop``).
* DTLS certificate: FFmpeg builds that use GnuTLS (the PyAV wheels do)
  generate an ECDSA **P-224** certificate.  RFC 8827 §6.5 mandates P-256,
  and OpenSSL 4 (what aiortc's DTLS runs on here) no longer knows P-224 as a
  TLS group, so the handshake dies with ``illegal_parameter`` whichever side is
  the DTLS client.  :func:`publish_with_ffmpeg` therefore hands the muxer a
  P-256 certificate through its ``cert_file``/``key_file`` options (the
  upstream fix, ossrs/ffmpeg-webrtc#70, makes GnuTLS builds use P-256 too).
  With the ``ffmpeg`` CLI: ``-cert_file cert.pem -key_file key.pem``.

PyAV keeps the GIL while FFmpeg runs the WHIP handshake (HTTP POST, ICE,
DTLS) inside ``avformat_write_header``, and while it DELETEs the session on
close, so the muxer must not share a process with the asyncio server it
talks to: the handshake would starve that server's event loop.
:func:`publish_with_ffmpeg` is blocking and fine in a thread of a process that
does not serve WHIP itself; :class:`FfmpegWhipProcess` runs it in a child
process for asyncio callers (the tests).  CLI::

    python -m loadtest.ffmpeg_whip http://127.0.0.1:8080/whip/demo --token KEY --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import fractions
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from .pattern import MAX_VALUE, MovingBackground, capture_time_code, draw_code_yuv420

logger = logging.getLogger(__name__)

__all__ = [
    "TOKEN_ENV",
    "FfmpegWhipProcess",
    "FfmpegWhipStats",
    "main",
    "make_dtls_certificate",
    "publish_with_ffmpeg",
]

AUDIO_RATE = 48_000  # Hz; FFmpeg's WHIP muxer accepts Opus at 48 kHz stereo only
AUDIO_FRAME = 960  # samples per channel per Opus frame (20 ms)
TOKEN_ENV = "RELAYCAST_WHIP_TOKEN"  # the CLI reads the bearer token from here when --token is absent

CodeMode = Literal["counter", "capture_time"]


@dataclass
class FfmpegWhipStats:
    """What one :func:`publish_with_ffmpeg` run did.

    ``connect_s``: seconds from the start until FFmpeg's WHIP handshake (HTTP
    POST, ICE, DTLS, SRTP) finished, ``None`` if it never did.  ``video_frames``
    / ``audio_frames``: frames handed to the encoders; ``video_packets`` /
    ``audio_packets`` / ``bytes``: encoded packets muxed (before RTP
    packetization).  ``first_code`` / ``last_code``: codes drawn into the first
    and last video frames.  ``error``: why the run ended early (``None`` when it
    ran its course or was stopped).
    """

    connect_s: float | None = None
    video_frames: int = 0
    audio_frames: int = 0
    video_packets: int = 0
    audio_packets: int = 0
    bytes: int = 0
    first_code: int | None = None
    last_code: int | None = None
    duration_s: float = 0.0
    error: str | None = None


def make_dtls_certificate(directory: str | Path) -> tuple[str, str]:
    """Write a self-signed ECDSA P-256 certificate and key (PEM) into ``directory``.

    :returns: ``(cert_file, key_file)`` paths for the muxer's ``cert_file`` /
        ``key_file`` options.  Valid from one hour ago for 30 days.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from relaycast.dev_certificate import certificate_builder

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relaycast-ffmpeg-whip")])
    now = datetime.datetime.now(datetime.UTC)
    cert = certificate_builder(name, name, key.public_key(), now - datetime.timedelta(hours=1),
                               now + datetime.timedelta(days=30)).sign(key, hashes.SHA256())
    cert_file, key_file = Path(directory) / "dtls-cert.pem", Path(directory) / "dtls-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return str(cert_file), str(key_file)


def _video_frame(background: MovingBackground, index: int, code: int) -> av.VideoFrame:
    frame = av.VideoFrame(background.width, background.height, "yuv420p")
    y, u, v = (
        np.frombuffer(memoryview(p), dtype=np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        for p in frame.planes
    )
    background.render_into(y, u, v, index)
    draw_code_yuv420(y, code)
    return frame


def _audio_frame(first_sample: int, frequency: float = 440.0, amplitude: float = 0.25) -> av.AudioFrame:
    """20 ms of a sine tone, packed s16 stereo, pts in samples (1/48000)."""
    t = (first_sample + np.arange(AUDIO_FRAME, dtype=np.float64)) * (frequency / AUDIO_RATE)
    pcm = (np.sin(2 * math.pi * np.mod(t, 1.0)) * (amplitude * 32767)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    frame.pts = first_sample
    frame.time_base = fractions.Fraction(1, AUDIO_RATE)
    return frame


def publish_with_ffmpeg(
    url: str,
    token: str | None,
    seconds: float,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    code: CodeMode = "counter",
    *,
    stop: threading.Event | None = None,
    connected: threading.Event | None = None,
    bitrate: int = 800_000,
    gop: int | None = None,
    audio: bool = True,
    handshake_timeout_ms: int = 10_000,
    pkt_size: int = 1200,
    dtls_cert: tuple[str, str] | None = None,
    ffmpeg_certificate: bool = False,
    dtls_active: bool = False,
    on_connected: Callable[[FfmpegWhipStats], None] | None = None,
    on_progress: Callable[[FfmpegWhipStats], None] | None = None,
) -> FfmpegWhipStats:
    """WHIP-publish ``seconds`` of coded video and a 440 Hz tone to ``url`` with FFmpeg.

    Blocks; see the module notes before running it in a thread.  Video:
    ``width x height`` yuv420p at ``fps``, libx264 veryfast/zerolatency,
    baseline profile, no B-frames, a key frame every ``gop`` frames (default
    ``2 * fps``), ``bitrate`` bps; each frame carries a :mod:`loadtest.pattern`
    code (``"counter"``: frame index 0, 1, ...; ``"capture_time"``: wall-clock
    ms when the frame was built).  Audio (unless ``audio=False``): libopus
    48 kHz stereo, 20 ms frames.  Frames are paced in real time.

    ``token`` is sent as ``Authorization: Bearer <token>``.  The DTLS
    certificate is ``dtls_cert`` (``(cert_file, key_file)``), else a fresh
    P-256 one, else — with ``ffmpeg_certificate=True`` — FFmpeg's own.
    ``dtls_active`` makes FFmpeg the DTLS client (``a=setup:active``).
    ``connected`` is set and ``on_connected(stats)`` runs once the handshake is
    done; ``on_progress(stats)`` runs about once a second (callbacks run in
    this thread); setting ``stop`` ends the run within one frame interval.
    FFmpeg errors (HTTP refusal, handshake timeout, lost session) end the run
    and land in :attr:`FfmpegWhipStats.error`; they are not raised.
    """
    if width % 2 or height % 2:
        raise ValueError("width and height must be even (yuv420p)")
    if fps <= 0 or seconds <= 0:
        raise ValueError("fps and seconds must be positive")
    stop = stop or threading.Event()
    stats = FfmpegWhipStats()
    started = time.monotonic()
    options = {"handshake_timeout": str(handshake_timeout_ms), "pkt_size": str(pkt_size)}
    if token:
        options["authorization"] = token
    if dtls_active:
        options["whip_flags"] = "dtls_active"

    def handshake_done(st: FfmpegWhipStats) -> None:
        if connected is not None:
            connected.set()
        if on_connected is not None:
            on_connected(st)

    with tempfile.TemporaryDirectory(prefix="ffmpeg-whip-") as tmp:
        if dtls_cert is None and not ffmpeg_certificate:
            dtls_cert = make_dtls_certificate(tmp)
        if dtls_cert is not None:
            options["cert_file"], options["key_file"] = dtls_cert
        try:
            container = av.open(url, "w", format="whip", container_options=options)
        except av.FFmpegError as exc:
            stats.error = f"open: {_first_line(exc)}"
            return stats
        try:
            _run(container, stats, started, seconds, width, height, fps, code, stop,
                 bitrate, gop or 2 * fps, audio, handshake_done, on_progress)
        except av.FFmpegError as exc:
            stats.error = f"{type(exc).__name__}: {_first_line(exc)}"
            logger.warning("FFmpeg WHIP publisher stopped: %s", stats.error)
        finally:
            stats.duration_s = time.monotonic() - started
            try:
                container.close()  # the muxer DELETEs its WHIP session here
            except av.FFmpegError as exc:
                logger.debug("closing the WHIP muxer: %s", exc)
    return stats


def _first_line(exc: BaseException) -> str:
    """FFmpeg's messages can end with a multi-line "last error log" (the whole SDP offer)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _run(
    container: Any,
    stats: FfmpegWhipStats,
    started: float,
    seconds: float,
    width: int,
    height: int,
    fps: int,
    code_mode: CodeMode,
    stop: threading.Event,
    bitrate: int,
    gop: int,
    audio: bool,
    on_connected: Callable[[FfmpegWhipStats], None],
    on_progress: Callable[[FfmpegWhipStats], None] | None,
) -> None:
    video = container.add_stream(
        "libx264", rate=fps, options={"preset": "veryfast", "tune": "zerolatency", "profile": "baseline"}
    )
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.bit_rate = bitrate
    # Frames keep this time base: the muxer switches video.time_base to 1/90000
    # when the header is written, and frames stamped with that would all get pts 0.
    frame_time_base = fractions.Fraction(1, fps)
    video.time_base = frame_time_base
    video.codec_context.gop_size = gop
    video.codec_context.max_b_frames = 0  # the muxer refuses B-frames
    astream = None
    if audio:
        astream = container.add_stream("libopus", rate=AUDIO_RATE, layout="stereo")
        astream.bit_rate = 64_000
        astream.time_base = fractions.Fraction(1, AUDIO_RATE)

    container.start_encoding()  # the whole WHIP handshake: POST, ICE, DTLS, SRTP
    stats.connect_s = time.monotonic() - started
    on_connected(stats)

    background = MovingBackground(width, height)
    clock0 = time.monotonic()
    next_progress = clock0 + 1.0
    v_index = a_sample = 0
    v_total = max(1, int(seconds * fps))
    a_total = int(seconds * AUDIO_RATE) if astream is not None else 0
    while not stop.is_set() and (v_index < v_total or a_sample < a_total):
        t_video = v_index / fps if v_index < v_total else math.inf
        t_audio = a_sample / AUDIO_RATE if a_sample < a_total else math.inf
        delay = clock0 + min(t_video, t_audio) - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        if t_video <= t_audio:
            value = capture_time_code(time.time()) if code_mode == "capture_time" else v_index & MAX_VALUE
            frame = _video_frame(background, v_index, value)
            frame.pts, frame.time_base = v_index, frame_time_base
            packets = video.encode(frame)
            stats.video_frames = v_index = v_index + 1
            if stats.first_code is None:
                stats.first_code = value
            stats.last_code = value
            stats.video_packets += len(packets)
        else:
            assert astream is not None
            packets = astream.encode(_audio_frame(a_sample))
            a_sample += AUDIO_FRAME
            stats.audio_frames += 1
            stats.audio_packets += len(packets)
        stats.bytes += sum(p.size for p in packets)
        container.mux(packets)
        if on_progress is not None and time.monotonic() >= next_progress:
            next_progress += 1.0
            on_progress(stats)


# ------------------------------------------------------------------ child process


class FfmpegWhipProcess:
    """FFmpeg's WHIP muxer in a child process, for asyncio callers.

    Runs ``python -m loadtest.ffmpeg_whip URL --json ...`` (the token travels in
    the :data:`TOKEN_ENV` environment variable, never on the command line) and
    follows its JSON-lines progress on stdout.  Use :meth:`start`, then
    :meth:`wait_connected`, then :meth:`stop` or :meth:`wait`.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stats = FfmpegWhipStats()
        self.stderr_tail: deque[str] = deque(maxlen=40)
        loop = asyncio.get_running_loop()
        self._connected: asyncio.Future[float] = loop.create_future()
        self._readers = [
            asyncio.ensure_future(self._read_stdout()),
            asyncio.ensure_future(self._read_stderr()),
        ]

    @classmethod
    async def start(
        cls,
        url: str,
        token: str | None,
        seconds: float,
        width: int = 640,
        height: int = 360,
        fps: int = 30,
        code: CodeMode = "counter",
        *,
        args: Sequence[str] = (),
    ) -> FfmpegWhipProcess:
        """Spawn the publisher; ``args`` are extra CLI flags (e.g. ``["--gop", "30"]``)."""
        env = dict(os.environ)
        env.pop(TOKEN_ENV, None)
        if token:
            env[TOKEN_ENV] = token
        command = [
            sys.executable, "-m", "loadtest.ffmpeg_whip", url, "--json",
            "--seconds", str(seconds), "--width", str(width), "--height", str(height),
            "--fps", str(fps), "--code", code, *args,
        ]
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            fields = {f.name for f in dataclasses.fields(FfmpegWhipStats)}
            self.stats = FfmpegWhipStats(**{k: v for k, v in event.items() if k in fields})
            if event.get("event") == "connected" and not self._connected.done():
                self._connected.set_result(float(event["connect_s"]))
        if not self._connected.done():
            self._connected.set_exception(
                ConnectionError(f"FFmpeg WHIP publisher exited before connecting: {self.stats.error}; "
                                + " | ".join(self.stderr_tail))
            )

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.stderr_tail.append(raw.decode(errors="replace").rstrip())

    async def wait_connected(self, timeout: float = 30.0) -> float:
        """Seconds FFmpeg took to connect; raises if it exits or times out first."""
        return await asyncio.wait_for(asyncio.shield(self._connected), timeout)

    async def wait(self, timeout: float = 60.0) -> FfmpegWhipStats:
        """Wait for the child to finish on its own; return its final stats."""
        await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._connected.done() and not self._connected.cancelled():
            self._connected.exception()  # retrieved: a failed start is reported by wait_connected
        return self.stats

    async def stop(self, timeout: float = 15.0) -> FfmpegWhipStats:
        """SIGTERM (FFmpeg closes the muxer and DELETEs the session), SIGKILL after ``timeout``."""
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.wait(5.0)
        finally:
            if not self._connected.done():
                self._connected.cancel()
            for reader in self._readers:
                reader.cancel()


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest.ffmpeg_whip URL --token KEY --seconds N``."""
    parser = argparse.ArgumentParser(description="Publish a coded test pattern with FFmpeg's WHIP muxer.")
    parser.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"stream key / bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=int, default=800_000, help="video bits per second")
    parser.add_argument("--gop", type=int, default=None, help="frames between key frames (default 2*fps)")
    parser.add_argument("--code", choices=("counter", "capture_time"), default="counter")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--dtls-active", action="store_true", help="FFmpeg is the DTLS client")
    parser.add_argument("--ffmpeg-certificate", action="store_true",
                        help="let FFmpeg generate its DTLS certificate (P-224 on GnuTLS builds)")
    parser.add_argument("--cert-file", help="DTLS certificate (PEM); needs --key-file")
    parser.add_argument("--key-file", help="DTLS private key (PEM)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout (for FfmpegWhipProcess)")
    parser.add_argument("-v", "--verbose", action="store_true", help="FFmpeg verbose log on stderr")
    args = parser.parse_args(argv)
    if bool(args.cert_file) != bool(args.key_file):
        parser.error("--cert-file and --key-file go together")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    av.logging.set_level(av.logging.VERBOSE if args.verbose else av.logging.ERROR)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    t0 = time.monotonic()

    def emit(event: str, stats: FfmpegWhipStats) -> None:
        if args.json:
            print(json.dumps({"event": event, **dataclasses.asdict(stats)}), flush=True)
        elif event == "connected":
            print(f"connected in {(stats.connect_s or 0) * 1000:.0f} ms", flush=True)
        elif event == "progress":
            kbps = stats.bytes * 8 / 1000 / max(1e-3, time.monotonic() - t0)
            print(f"video {stats.video_frames} frames, audio {stats.audio_frames} frames, "
                  f"{kbps:.0f} kb/s, last code {stats.last_code}", flush=True)

    stats = publish_with_ffmpeg(
        args.url, args.token, args.seconds, args.width, args.height, args.fps, args.code,
        stop=stop, bitrate=args.bitrate, gop=args.gop, audio=not args.no_audio,
        dtls_cert=(args.cert_file, args.key_file) if args.cert_file else None,
        ffmpeg_certificate=args.ffmpeg_certificate, dtls_active=args.dtls_active,
        on_connected=lambda st: emit("connected", st), on_progress=lambda st: emit("progress", st),
    )
    if args.json:
        emit("done", stats)
    else:
        connect = f"{stats.connect_s * 1000:.0f} ms" if stats.connect_s is not None else "never"
        print(f"done: handshake {connect}, {stats.video_frames} video / {stats.audio_frames} audio frames, "
              f"{stats.bytes} bytes in {stats.duration_s:.1f} s" + (f", error: {stats.error}" if stats.error else ""))
    return 1 if stats.error else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
