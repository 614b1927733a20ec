"""The ingest process beside a real service: started at a lower priority, RTMP from Debian's
ffmpeg goes live in the service's room, a crash is followed by a restart on the same ports,
an RTMP port in use leaves the service running without ingest, an SRT port in use leaves it
with RTMP, and its settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket

import pytest

from common.config import ConfigError
from relaycast.ingest_process import INGEST_NICE, IngestConfig
from relaycast.service import Service
from tests.polling import wait_for
from tests.services import STREAM_KEY, make_config

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


def test_settings_from_the_environment() -> None:
    assert IngestConfig.from_env({}, "0.0.0.0") == IngestConfig(1935, "0.0.0.0")
    assert IngestConfig.from_env({"RELAYCAST_RTMP_PORT": "off"}, "h").rtmp_port is None
    assert IngestConfig.from_env({"RELAYCAST_RTMP_PORT": "0", "RELAYCAST_RTMP_HOST": "::1"}, "h") == \
        IngestConfig(0, "::1")
    for bad in ("x", "70000", "-1"):
        with pytest.raises(ConfigError, match="RELAYCAST_RTMP_PORT"):
            IngestConfig.from_env({"RELAYCAST_RTMP_PORT": bad}, "h")
    with pytest.raises(ConfigError, match="TLS_CERT"):
        IngestConfig.from_env({"RELAYCAST_RTMPS_PORT": "443"}, "h")
    served = IngestConfig.from_env({"RELAYCAST_RTMPS_PORT": "443"}, "h", "/c.pem", "/k.pem")  # --tls-cert
    assert (served.rtmps_port, served.tls_cert, served.tls_key) == (443, "/c.pem", "/k.pem")
    assert IngestConfig.from_env({}, "h").srt_port == 9000
    assert IngestConfig.from_env({"RELAYCAST_SRT_PORT": "off"}, "h").srt_port is None
    srt = IngestConfig.from_env({"RELAYCAST_SRT_PORT": "0", "RELAYCAST_SRT_PASSPHRASE": "p" * 10}, "h")
    assert (srt.srt_port, srt.srt_passphrase) == (0, "p" * 10)
    with pytest.raises(ConfigError, match="RELAYCAST_SRT_PORT"):
        IngestConfig.from_env({"RELAYCAST_SRT_PORT": "udp"}, "h")
    for bad in ("short", "p" * 80):
        with pytest.raises(ConfigError, match="10 to 79"):
            IngestConfig.from_env({"RELAYCAST_SRT_PASSPHRASE": bad}, "h")
    assert IngestConfig.from_env({"RELAYCAST_SRT_LATENCY_MS": "40"}, "h").srt_latency_ms == 40
    for bad in ("5", "fast"):
        with pytest.raises(ConfigError, match="RELAYCAST_SRT_LATENCY_MS"):
            IngestConfig.from_env({"RELAYCAST_SRT_LATENCY_MS": bad}, "h")


def _live(service: Service) -> bool:
    router = service.worker.routers.get("demo") if service.worker else None
    return router is not None and router.producers.get("video") is not None


def _producer(service: Service) -> object | None:
    router = service.worker.routers.get("demo") if service.worker else None
    return None if router is None else router.producers.get("video")


async def _publish(port: int, seconds: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "30", "-c:a", "aac",
        "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{STREAM_KEY}", stderr=asyncio.subprocess.DEVNULL)


@needs_ffmpeg
async def test_rtmp_goes_live_through_the_ingest_process_which_is_restarted_after_a_crash() -> None:
    async with Service(make_config(), ingest=IngestConfig(rtmp_port=0, srt_port=0)) as service:
        ingest = service.ingest
        assert ingest is not None and ingest.rtmp_port and ingest.srt_port and ingest.pid
        assert os.getpriority(os.PRIO_PROCESS, ingest.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + INGEST_NICE)
        proc = await _publish(ingest.rtmp_port, 30)
        await wait_for(lambda: _live(service), 15, lambda: "the RTMP stream live in room demo")
        first_pid, port, srt_port = ingest.pid, ingest.rtmp_port, ingest.srt_port
        before = _producer(service)
        os.kill(first_pid, signal.SIGKILL)  # the ingest process crashes: the stream ends ...
        await proc.wait()
        await wait_for(lambda: ingest.restarts == 1 and ingest.pid != first_pid and ingest.rtmp_port == port,
                       15, lambda: "the ingest process restarted")
        assert ingest.srt_port == srt_port
        proc = await _publish(port, 4)  # ... and the encoder's reconnect replaces the dead session
        await wait_for(lambda: _producer(service) not in (None, before), 15, lambda: "the RTMP stream live again")
        await proc.wait()


async def test_a_port_in_use_leaves_the_service_up_without_rtmp(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            async with Service(make_config(), ingest=IngestConfig(rtmp_port=port, srt_port=0)) as service:
                assert service.ingest is None and service.url
        assert "RTMP and SRT ingest are off" in caplog.text and "in use" in caplog.text


async def test_an_srt_port_in_use_leaves_rtmp_up(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING):
            async with Service(make_config(), ingest=IngestConfig(rtmp_port=0, srt_port=port)) as service:
                ingest = service.ingest
                assert ingest is not None and ingest.rtmp_port and ingest.srt_port is None
                assert ingest.srt_error and "SRT cannot listen" in ingest.srt_error
        assert "without SRT ingest" in caplog.text
