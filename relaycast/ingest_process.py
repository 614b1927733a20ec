"""The RTMP/SRT ingest process beside the service: its settings from the environment
(:class:`IngestConfig`) and its supervision (:class:`IngestProcess`: started at nice
:data:`INGEST_NICE`, restarted after a crash).  What it does: :mod:`ingest.main`,
docs/ingest.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from common.child_main import spawn_child
from common.config import ConfigError, env_number
from ingest.main import IngestSettings

logger = logging.getLogger(__name__)

INGEST_NICE = 5
"""The ingest process runs below forwarding (it decodes AAC, and transcodes B-frame video)
but above the LL-HLS transcoder (nice 19): its passthrough feeds the interactive tier."""
START_TIMEOUT_S = 20.0
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_S = 60.0


@dataclass(frozen=True)
class IngestConfig:
    """``RELAYCAST_RTMP_PORT`` (default 1935; ``off`` for no ingest process; 0 any free port),
    ``RELAYCAST_RTMP_HOST`` (default the service's host; SRT listens there too),
    ``RELAYCAST_RTMPS_PORT`` for RTMPS with the service's certificate (``--tls-cert``/
    ``--tls-key``, ``--self-signed``, or ``RELAYCAST_TLS_CERT`` and ``RELAYCAST_TLS_KEY``),
    ``RELAYCAST_SRT_PORT`` (UDP, default 9000; ``off``; 0 any free port)
    ``RELAYCAST_SRT_PASSPHRASE`` (10–79 characters: every SRT caller must encrypt with
    it; default none) and ``RELAYCAST_SRT_LATENCY_MS`` (the receiver's latency, 20–8000 ms;
    default libsrt's 120)."""

    rtmp_port: int | None = 1935
    rtmp_host: str = "127.0.0.1"
    rtmps_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    srt_port: int | None = 9000
    srt_passphrase: str | None = None
    srt_latency_ms: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], host: str, tls_cert: str | None = None,
                 tls_key: str | None = None) -> IngestConfig:
        """``tls_cert``/``tls_key``: the service's certificate and key files (PEM), which
        RTMPS uses; else ``RELAYCAST_TLS_CERT``/``_KEY``.

        :raises ConfigError: a port that is not a number in 0..65535, RTMPS without
        both a certificate and a key, an SRT passphrase outside 10–79 characters, an SRT
        latency outside 20–8000 ms."""
        port = _optional_port(env, "RELAYCAST_RTMP_PORT", "1935")
        raw_tls = env.get("RELAYCAST_RTMPS_PORT", "").strip()
        rtmps = _port(raw_tls, "RELAYCAST_RTMPS_PORT") if raw_tls else None
        cert = tls_cert or env.get("RELAYCAST_TLS_CERT") or None
        key = tls_key or env.get("RELAYCAST_TLS_KEY") or None
        if rtmps is not None and not (cert and key):
            raise ConfigError("RELAYCAST_RTMPS_PORT needs a certificate: --tls-cert and --tls-key, "
                              "--self-signed, or RELAYCAST_TLS_CERT and RELAYCAST_TLS_KEY")
        srt = _optional_port(env, "RELAYCAST_SRT_PORT", "9000")
        passphrase = env.get("RELAYCAST_SRT_PASSPHRASE") or None
        if passphrase is not None and not 10 <= len(passphrase) <= 79:
            raise ConfigError("RELAYCAST_SRT_PASSPHRASE must have 10 to 79 characters (SRT's limits)")
        latency = None
        if "RELAYCAST_SRT_LATENCY_MS" in env:
            latency = int(env_number(env, "RELAYCAST_SRT_LATENCY_MS", 120, 20, 8000, integer=True))
        return cls(port, env.get("RELAYCAST_RTMP_HOST", host), rtmps, cert, key, srt, passphrase, latency)

    def settings(self, whip_url: str) -> IngestSettings:
        assert self.rtmp_port is not None
        return IngestSettings(whip_url, self.rtmp_host, self.rtmp_port, ("127.0.0.1",), self.rtmps_port,
                              self.tls_cert, self.tls_key, self.srt_port, self.srt_passphrase, self.srt_latency_ms)


def _optional_port(env: Mapping[str, str], name: str, default: str) -> int | None:
    raw = env.get(name, default).strip().lower()
    return None if raw in ("off", "no", "false", "") else _port(raw, name)


def _port(raw: str, name: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a port number (or 'off')") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: {port} is outside 0..65535")
    return port


class IngestError(Exception):
    """The ingest process could not start or listen (the message says why)."""


class IngestProcess:
    """``python -m ingest.main`` for one service (see the module docstring).

    :ivar rtmp_port: the port it listens on (known after :meth:`start`); ``rtmps_port`` and
        ``srt_port`` likewise (None when off, or for SRT when it could not listen:
        ``srt_error`` says why).
    :ivar restarts: restarts attempted after a crash (counted once each attempt is over).
    """

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.rtmp_port: int | None = None
        self.rtmps_port: int | None = None
        self.srt_port: int | None = None
        self.srt_error: str | None = None
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        """Start it and wait until it listens.  :raises IngestError: it could not."""
        await self._launch()
        self._watch = asyncio.create_task(self._supervise(), name="ingest-supervisor")

    async def _launch(self) -> None:
        proc, ours = await spawn_child("ingest.main", nice=INGEST_NICE)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._proc, self._writer = proc, writer
        writer.write((self.settings.to_json() + "\n").encode())
        try:
            line = await asyncio.wait_for(reader.readline(), START_TIMEOUT_S)
            answer = json.loads(line) if line else {"error": "it exited at start"}
        except (TimeoutError, ValueError) as exc:
            answer = {"error": f"no answer ({type(exc).__name__})"}
        if "error" in answer:
            await self._stop_process()
            raise IngestError(f"ingest: {answer['error']}")
        self.rtmp_port, self.rtmps_port = answer["rtmp_port"], answer.get("rtmps_port")
        self.srt_port, self.srt_error = answer.get("srt_port"), answer.get("srt_error")
        if self.srt_error:
            logger.warning("%s; the service goes on without SRT ingest", self.srt_error)
        # A restart listens where the first start did (port 0 asked for any).
        self.settings = replace(self.settings, rtmp_port=self.rtmp_port, rtmps_port=self.rtmps_port,
                                srt_port=self.srt_port if self.srt_port is not None else self.settings.srt_port)

    async def _supervise(self) -> None:
        """Restart the process when it dies (not when the service closes it); a restart that
        fails is tried again, 1 s, 2 s, 5 s, 10 s, then every 30 s later (1 s again once one
        has run for :data:`STABLE_S`)."""
        failures = 0
        while not self._closing:
            proc = self._proc
            if proc is not None:
                started = asyncio.get_running_loop().time()
                status = await proc.wait()
                if self._closing:
                    return
                logger.error("ingest process %d exited with status %s", proc.pid, status)
                if asyncio.get_running_loop().time() - started > STABLE_S:
                    failures = 0  # it had run well: the next restart is quick again
            await asyncio.sleep(RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)])
            failures += 1
            try:
                await self._launch()
            except (IngestError, OSError) as exc:
                logger.error("restarting it failed: %s", exc)
                self._proc = None
            self.restarts += 1  # after the attempt: a restarted process listens already

    async def _stop_process(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5.0)  # it ends when its link closes
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def close(self) -> None:
        """Stop it: its RTMP and SRT sessions end, their WHIP sessions are deleted."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._stop_process()

