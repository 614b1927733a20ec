"""``relaycast turn``: the development coturn in the foreground and ``--print-config``.

Run as ``python -m relaycast.cli`` from the checkout, the code under test.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.turn.turn_probe import TurnProbe
from turn.credentials import mint
from turn.server import find_turnserver, free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cli-turn-secret-" + "w" * 10


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaycast.cli", "turn", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, **(env or {})},
    )


def test_print_config_production_and_development(tmp_path: Path) -> None:
    env = {"RELAYCAST_TURN_SECRET": SECRET}
    prod = _cli("--print-config", "--production", "--listening-ip", "0.0.0.0", "--external-ip", "203.0.113.9",
                "--allowed-peer-ip", "10.0.0.7,10.0.0.8", "--user-quota", "5", env=env)
    assert prod.returncode == 0, prod.stderr
    lines = prod.stdout.splitlines()
    assert {"use-auth-secret", f"static-auth-secret={SECRET}", "user-quota=5", "external-ip=203.0.113.9",
            "allowed-peer-ip=10.0.0.7", "allowed-peer-ip=10.0.0.8", "listening-ip=0.0.0.0",
            "denied-peer-ip=127.0.0.0-127.255.255.255"} <= set(lines)
    assert "allow-loopback-peers" not in lines
    dev = _cli("--print-config", "--port", "3479", env=env)
    assert dev.returncode == 0, dev.stderr
    assert {"listening-ip=127.0.0.1", "allow-loopback-peers", "listening-port=3479"} <= set(dev.stdout.splitlines())
    out = tmp_path / "turnserver.conf"
    written = _cli("--print-config", "--production", "-o", str(out), env=env)
    assert written.returncode == 0 and written.stdout == ""
    assert out.stat().st_mode & 0o777 == 0o600 and f"static-auth-secret={SECRET}" in out.read_text()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--print-config", "--production"), {"RELAYCAST_TURN_SECRET": ""}, "RELAYCAST_TURN_SECRET is required"),
        (("--print-config",), {"RELAYCAST_TURN_SECRET": "short"}, "at least 16"),
        (("--print-config", "--port", "99999"), {"RELAYCAST_TURN_SECRET": SECRET}, "listening port"),
        (("--print-config", "--production", "--allowed-peer-ip", "127.0.0.1"), {"RELAYCAST_TURN_SECRET": SECRET},
         "'127.0.0.1' overlaps the denied network 127.0.0.0/8 (loopback"),
        (("--print-config", "--production", "--allowed-peer-ip", "10.0.0.7,126.0.0.0-128.0.0.0"),
         {"RELAYCAST_TURN_SECRET": SECRET}, "'126.0.0.0-128.0.0.0' overlaps the denied network 127.0.0.0/8"),
        (("--print-config", "--production", "--allowed-peer-ip", "::ffff:127.0.0.1"),
         {"RELAYCAST_TURN_SECRET": SECRET}, "stands for the IPv4 address 127.0.0.1 in 127.0.0.0/8 (loopback)"),
        (("--print-config", "--production", "--allowed-peer-ip", "169.254.169.254"),
         {"RELAYCAST_TURN_SECRET": SECRET}, "'169.254.169.254' overlaps the denied network 169.254.0.0/16"),
        (("--production",), {"RELAYCAST_TURN_SECRET": SECRET}, "go with --print-config"),
        (("--listening-ip", "0.0.0.0"), {"RELAYCAST_TURN_SECRET": SECRET}, "production options"),
    ],
)
def test_bad_turn_arguments_exit_2_with_a_message(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    result = _cli(*args, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.skipif(find_turnserver() is None, reason="coturn's turnserver is not installed")
@pytest.mark.timeout(60)
async def test_relaycast_turn_runs_coturn_in_the_foreground_until_sigterm() -> None:
    port = free_port(avoid=range(61000, 65536))
    env = {**os.environ, "RELAYCAST_TURN_SECRET": SECRET}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaycast.cli", "turn", "--port", str(port), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output = ""
    try:
        while "RELAYCAST_TURN_SECRET=" not in output:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, f"relaycast turn exited early:\n{output}"
            output += line.decode()
        assert f"RELAYCAST_TURN_URLS=turn:127.0.0.1:{port}?transport=udp,turn:127.0.0.1:{port}?transport=tcp" in output
        assert SECRET not in output  # the secret came from the environment: not echoed
        coturn_pid = int(re.search(r"pid (\d+)", output).group(1))
        credential = mint(SECRET, "cli", 600)
        async with TurnProbe(("127.0.0.1", port)) as client:
            await client.allocate(credential.username, credential.password)
            await client.create_permission("127.0.0.1")  # development: loopback peers allowed
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, output + rest.decode()
        with pytest.raises(ProcessLookupError):  # coturn went with it
            os.kill(coturn_pid, 0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
