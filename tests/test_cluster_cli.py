"""``relaycast cluster``: the scaled topology as real local processes (redis-server, two
signaling instances, two SFU nodes), started, checked and stopped like a user would."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from common.config import ConfigError
from relaycast import cluster
from relaycast.cli import build_parser, main
from tests.redis_server import REDIS_SERVER

ROOT = Path(__file__).resolve().parents[1]
CHILD_LINE = re.compile(r"^\s+(\S+)\s+pid (\d+)\s+(?:-> )?(\S+)")

needs_redis = pytest.mark.skipif(not os.access(REDIS_SERVER, os.X_OK), reason="redis-server not installed")
needs_postgres = pytest.mark.skipif(cluster.postgres_bin(os.environ) is None,
                                    reason="PostgreSQL binaries not installed")


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no run of free ports found")


def free_port_except(*taken: int) -> int:
    while (port := free_ports(1)) in taken:
        pass
    return port


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Launcher:
    """``python -m relaycast.cli cluster ...`` with its stdout read line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RELAYCAST_REDIS_URL")}
        self.env.update(env or {})
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.children: dict[str, tuple[int, str]] = {}  # name -> (pid, url)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaycast.cli", "cluster", *self.args, cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def wait_line(self, text: str, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), deadline - time.monotonic())
            except TimeoutError:
                break
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            match = CHILD_LINE.match(line)
            if match:
                self.children[match.group(1)] = (int(match.group(2)), match.group(3))
            if text in line:
                return line
        raise AssertionError(f"no {text!r} line within {timeout} s:\n" + "\n".join(self.lines)
                             + "\n--- stderr ---\n" + await self.stderr())

    async def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        if self.proc.returncode is None:
            return "(still running)"
        return (await self.proc.stderr.read()).decode(errors="replace")

    async def finish(self, timeout: float) -> tuple[int, str, str]:
        """(exit status, rest of stdout, stderr) once the launcher exits."""
        assert self.proc is not None
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        return self.proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def kill_all(self) -> None:
        """Cleanup after a failed test: the launcher and every child it printed."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for pid, _ in self.children.values():
            if alive(pid) and ("relaycast.cli" in cmdline(pid) or "redis-server" in cmdline(pid)):
                os.killpg(pid, signal.SIGKILL)


@needs_redis
@needs_postgres
async def test_cluster_starts_serves_and_stops_cleanly(tmp_path: Path) -> None:
    base = free_ports(2)
    redis_port = free_port_except(base, base + 1)
    pg_port = free_port_except(base, base + 1, redis_port)
    launcher = Launcher("--signaling", "2", "--sfu", "2", "--no-hls", "--port", str(base),
                        "--redis-port", str(redis_port), "--postgres-port", str(pg_port),
                        "--log-dir", str(tmp_path), "--ready-timeout", "90")
    await launcher.start()
    try:
        await launcher.wait_line("relaycast cluster ready", 120)
        assert set(launcher.children) == {"postgres", "redis", "signaling-1", "signaling-2", "sfu-1", "sfu-2"}
        assert launcher.children["postgres"][1] == f"postgresql+asyncpg://relaycast@127.0.0.1:{pg_port}/postgres"
        urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
        assert launcher.children["signaling-1"][1] == urls[0]
        assert launcher.children["signaling-2"][1] == urls[1]
        assert launcher.children["redis"][1] == f"redis://127.0.0.1:{redis_port}/0"
        # Every node knows both instances, starting with a different one.
        assert launcher.children["sfu-1"][1] == ",".join(urls)
        assert launcher.children["sfu-2"][1] == ",".join(reversed(urls))
        assert "redis-server" in cmdline(launcher.children["redis"][0])
        assert all("relaycast.cli" in cmdline(pid) for name, (pid, _) in launcher.children.items()
                   if name not in ("redis", "postgres"))
        assert (tmp_path / "sfu-1.log").exists() and (tmp_path / "signaling-2.log").exists()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for url in urls:
                async with http.get(f"{url}/readyz") as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                assert body == {"status": "ready", "nodes": 2, "node_ids": ["sfu-1", "sfu-2"], "redis": "ok"}
                async with http.get(f"{url}/api/rooms") as resp:
                    assert resp.status == 200
                    rooms = (await resp.json())["rooms"]
                assert [r["room"] for r in rooms] == ["demo"]
            # One database: an account made through one instance logs in through the other.
            account = {"username": "cluster_user", "password": "correct horse battery"}
            async with http.post(f"{urls[0]}/api/users/register", json=account) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(f"{urls[1]}/api/users/login", json=account) as resp:
                assert resp.status == 200, await resp.text()

        assert launcher.proc is not None
        launcher.proc.send_signal(signal.SIGTERM)
        status, out, err = await launcher.finish(60)
        assert status == 0, out + err
        assert "relaycast cluster: stopped" in out
        # Reverse order: nodes first, Redis last.
        stops = [line for line in out.splitlines() if "stopping" in line]
        assert stops == ["relaycast cluster: stopping sfu-1, sfu-2",
                         "relaycast cluster: stopping signaling-1, signaling-2",
                         "relaycast cluster: stopping redis",
                         "relaycast cluster: stopping postgres"], out
        left = {name: pid for name, (pid, _) in launcher.children.items() if alive(pid)}
        assert not left, left
        for port in (base, base + 1, redis_port, pg_port):
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
    finally:
        await launcher.kill_all()


@needs_redis
async def test_a_child_that_exits_stops_the_cluster_with_its_log(tmp_path: Path) -> None:
    # A stream key under 16 characters: every `relaycast serve` exits with a configuration error.
    port = free_ports(1)
    redis_port = free_port_except(port)
    launcher = Launcher("--signaling", "1", "--sfu", "1", "--no-hls", "--port", str(port),
                        "--redis-port", str(redis_port), "--log-dir", str(tmp_path),
                        "--postgres-port", str(free_port_except(port, redis_port)),
                        env={"RELAYCAST_STREAM_KEY": "short"})
    await launcher.start()
    try:
        status, out, err = await launcher.finish(90)
        launcher.lines += out.splitlines()
        for line in launcher.lines:
            if match := CHILD_LINE.match(line):
                launcher.children[match.group(1)] = (int(match.group(2)), match.group(3))
        assert status == 1, out + err
        assert "signaling-1" in err and "exited with status 2" in err, err
        assert "RELAYCAST_STREAM_KEY: use at least 16 characters" in err, err  # the child's log tail
        assert "sfu-1" not in launcher.children  # never started
        assert not [pid for pid, _ in launcher.children.values() if alive(pid)]
    finally:
        await launcher.kill_all()


def test_port_in_use_is_refused_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = main(["cluster", "--port", str(port), "--redis-url", "redis://127.0.0.1:1/0"])
    assert status == 2
    assert f"port {port} for signaling-1 is not free" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--sfu", "0"], "argument --sfu: must be between 1 and 64, got 0"),
    (["--signaling", "0"], "argument --signaling: must be between 1 and 32, got 0"),
    (["--signaling", "two"], "argument --signaling: 'two' is not a whole number"),
    (["--port", "70000"], "argument --port: must be between 1 and 65535, got 70000"),
])
def test_bad_flags_exit_2_with_a_clear_message(flags: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["cluster", *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


DB_URL = "postgresql+asyncpg://u@10.0.0.8/relaycast"


def _args(*flags: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["cluster", *flags])


def test_plan_topology_ports_and_shared_settings() -> None:
    children, generated = cluster.plan(_args("--signaling", "3", "--sfu", "4", "--port", "9000",
                                             "--redis-port", "9100"),
                                       {"RELAYCAST_NODE_ID": "x", "RELAYCAST_DATABASE_URL": DB_URL})
    names = [c.name for c in children]
    assert names == ["redis", "signaling-1", "signaling-2", "signaling-3", "hls-1", "sfu-1", "sfu-2", "sfu-3", "sfu-4"]
    ports = {c.name: c.port for c in children}
    assert ports == {"redis": 9100, "signaling-1": 9000, "signaling-2": 9001, "signaling-3": 9002, "hls-1": 9003,
                     "sfu-1": None, "sfu-2": None, "sfu-3": None, "sfu-4": None}
    assert set(generated) == {"RELAYCAST_NODE_SECRET", "RELAYCAST_STREAM_KEY"}
    for child in children:
        for name, value in generated.items():
            assert child.env[name] == value  # every child shares the generated settings
        if child.name != "redis":
            assert child.env["REDIS_URL"] == "redis://127.0.0.1:9100/0"
            assert child.env["RELAYCAST_DATABASE_URL"] == DB_URL  # one shared database
    by_name = {c.name: c for c in children}
    assert by_name["hls-1"].env["RELAYCAST_NODE_ID"] == "hls-1"
    assert "--no-embedded-sfu" not in by_name["hls-1"].argv
    # The bridge's node is never placed on, and runs no SFU worker processes.
    assert by_name["hls-1"].env["RELAYCAST_NODE_ROLE"] == "hls"
    assert by_name["hls-1"].argv[-2:] == ["--workers", "1"]
    assert "RELAYCAST_NODE_ID" not in by_name["signaling-1"].env
    firsts = [by_name[f"sfu-{i}"].argv[by_name[f"sfu-{i}"].argv.index("--signaling") + 1].split(",")[0]
              for i in range(1, 5)]
    assert firsts == ["http://127.0.0.1:9000", "http://127.0.0.1:9001", "http://127.0.0.1:9002",
                      "http://127.0.0.1:9000"]
    for child in children[1:]:  # the relaycast children parse with the real CLI
        assert build_parser().parse_args(child.argv[3:]).command in ("serve", "sfu")


def test_plan_with_external_redis_and_turn() -> None:
    env = {"REDIS_URL": "redis://10.0.0.7:6379/2", "RELAYCAST_STREAM_KEY": "sk_" + "k" * 20,
           "RELAYCAST_DATABASE_URL": DB_URL}
    children, generated = cluster.plan(_args("--turn", "--turn-port", "3479", "--no-hls"), env)
    assert [c.name for c in children] == ["turn", "signaling-1", "signaling-2", "sfu-1", "sfu-2"]
    assert set(generated) == {"RELAYCAST_NODE_SECRET", "RELAYCAST_TURN_SECRET"}
    signaling = children[1]
    assert signaling.env["RELAYCAST_TURN_URLS"] == ("turn:127.0.0.1:3479?transport=udp,"
                                                    "turn:127.0.0.1:3479?transport=tcp")
    assert signaling.env["RELAYCAST_REDIS_URL"] == "redis://10.0.0.7:6379/2"
    assert signaling.env["RELAYCAST_STREAM_KEY"] == env["RELAYCAST_STREAM_KEY"]


@needs_postgres
def test_plan_starts_postgres_first_and_shares_it() -> None:
    children, _ = cluster.plan(_args("--postgres-port", "9200", "--redis-port", "9100"), {})
    assert [c.name for c in children][:2] == ["postgres", "redis"]
    url = "postgresql+asyncpg://relaycast@127.0.0.1:9200/postgres"
    assert children[0].port == 9200 and children[0].url == url
    assert all(c.env["RELAYCAST_DATABASE_URL"] == url for c in children[1:])


def test_plan_without_postgres_shares_one_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "postgres_bin", lambda env: None)
    children, _ = cluster.plan(_args(), {"RELAYCAST_DATA_DIR": "/srv/relaycast"})
    assert "postgres" not in [c.name for c in children]
    assert {c.env["RELAYCAST_DATA_DIR"] for c in children} == {"/srv/relaycast"}
    assert all("RELAYCAST_DATABASE_URL" not in c.env for c in children)


@pytest.mark.parametrize(("flags", "message"), [
    (["--hls-port", "8080"], "signaling-1 and hls-1 would both use port 8080"),
    (["--redis-port", "8081"], "redis and signaling-2 would both use port 8081"),
    (["--port", "65535"], "signaling-2's port 65536 is above 65535"),
    (["--redis-url", "http://x"], "must be a redis://, rediss:// or unix:// URL"),
])
def test_plan_refuses_inconsistent_flags(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        cluster.plan(_args(*flags), {})
