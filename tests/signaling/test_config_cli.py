"""Configuration validation and the ``relaycast`` console script."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from common.config import ConfigError
from sfu.config import SfuConfig
from signaling.config import IceServer, SignalingConfig


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAYCAST_PORT": "http"}, "RELAYCAST_PORT"),
        ({"RELAYCAST_PORT": "70000"}, "RELAYCAST_PORT"),
        ({"RELAYCAST_DEMO_ROOM": "no spaces allowed"}, "RELAYCAST_DEMO_ROOM"),
        ({"RELAYCAST_DEMO_ROOM": "demo\n"}, "RELAYCAST_DEMO_ROOM"),
        ({"RELAYCAST_STREAM_KEY": "short"}, "RELAYCAST_STREAM_KEY"),
        ({"RELAYCAST_ICE_GATHER": "not-an-ip"}, "RELAYCAST_ICE_GATHER"),
        ({"RELAYCAST_ICE_SERVERS": "http://example.invalid"}, "RELAYCAST_ICE_SERVERS"),
        ({"RELAYCAST_CHAT_RATE": "0"}, "RELAYCAST_CHAT_RATE"),
        ({"RELAYCAST_NODE_SECRET": "tiny"}, "RELAYCAST_NODE_SECRET"),
    ],
)
def test_bad_environment_is_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SignalingConfig.from_env(env)


def test_defaults_and_loopback_gathering() -> None:
    config = SignalingConfig.from_env({})
    assert (config.host, config.port, config.demo_room) == ("127.0.0.1", 8080, "demo")
    assert config.embedded_sfu
    # Serving on loopback: ICE host candidates are gathered on loopback too.
    assert config.sfu.ice_gather == ("127.0.0.1",)
    assert SignalingConfig.from_env({"RELAYCAST_HOST": "0.0.0.0"}).sfu.ice_gather == ()
    assert SfuConfig.from_env({"RELAYCAST_ICE_GATHER": "127.0.0.1, ::1"}).ice_gather == ("127.0.0.1", "::1")


def test_ice_server_parsing() -> None:
    server = IceServer.parse("turn:127.0.0.1:3478?transport=udp|alice|s3cret")
    assert server.to_json() == {
        "urls": ["turn:127.0.0.1:3478?transport=udp"], "username": "alice", "credential": "s3cret"
    }
    assert IceServer.parse("stun:127.0.0.1:3478").to_json() == {"urls": ["stun:127.0.0.1:3478"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "relaycast.cli", "--help"], capture_output=True, text=True, check=True)
    assert "serve" in out.stdout and "sfu" in out.stdout


def test_cli_reports_bad_config_clearly() -> None:
    env = {**os.environ, "RELAYCAST_PORT": "nope"}
    out = subprocess.run([sys.executable, "-m", "relaycast.cli", "serve"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert "configuration error" in out.stderr and "RELAYCAST_PORT" in out.stderr


def test_serve_prints_urls_and_key_then_stops_on_sigterm() -> None:
    port = _free_port()
    key = "sk_cli_test_key_0123456789"
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaycast.cli", "serve", "--port", str(port), "--stream-key", key],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "stream key" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/broadcast/demo" in text
        assert f"http://127.0.0.1:{port}/whip/demo" in text
        assert key in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
        err = proc.stderr.read()
    assert rc == 0
    assert key not in err, "the stream key must never be logged"
