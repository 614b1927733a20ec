"""docker-compose.yml (the scaled topology) stays consistent with the CLI the tests run,
with itself and with its header comment.  No Docker engine needed; ``docker compose
config`` runs only where Docker Compose is installed."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from common.client_address import parse_trusted_proxies
from loadtest.nginx_edge import render_template
from relaycast.cli import build_parser
from sfu.protocol import SOCKETIO_PATH as NODE_SOCKETIO_PATH
from turn import cli as turn_cli
from turn.config import DEFAULT_PORT as TURN_DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_PATH = ROOT / "docker-compose.yml"
COMPOSE_TEXT = COMPOSE_PATH.read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
REQUIRED = {"RELAYCAST_NODE_SECRET", "RELAYCAST_STREAM_KEY", "RELAYCAST_TURN_SECRET", "RELAYCAST_TURN_URLS",
            "RELAYCAST_DB_PASSWORD"}


def _header() -> str:
    lines = []
    for line in COMPOSE_TEXT.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


def relaycast_services() -> dict[str, argparse.Namespace]:
    """Services that run the relaycast image -> their parsed command."""
    parser = build_parser()
    out = {}
    for name, service in SERVICES.items():
        if "build" in service or str(service.get("image", "")).startswith("relaycast"):
            command = service["command"]
            assert command[0] == "relaycast", name
            out[name] = parser.parse_args(command[1:])  # exits (SystemExit) on an unknown flag
    return out


def serve_ports() -> dict[int, str]:
    return {args.port: name for name, args in relaycast_services().items() if args.command == "serve"}


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_compose_services_run_real_cli_commands() -> None:
    parsed = relaycast_services()
    assert {args.command for args in parsed.values()} == {"serve", "sfu"}
    for name, args in parsed.items():
        assert args.command in ("serve", "sfu", "turn", "cluster"), name
        build = SERVICES[name]["build"]
        dockerfile = ROOT / build["context"] / build["dockerfile"]
        assert dockerfile.exists(), dockerfile
        if args.command == "serve":
            assert args.host == "0.0.0.0" and args.port, name
    kinds = sorted("hls" if not a.no_embedded_sfu else "signaling" for a in parsed.values() if a.command == "serve")
    assert kinds == ["hls", "signaling", "signaling"]
    assert sum(a.command == "sfu" for a in parsed.values()) == 2
    images = {name: s.get("image", "") for name, s in SERVICES.items() if name not in parsed}
    assert images == {"redis": "redis:7-alpine", "coturn": "coturn/coturn:4.6", "edge": "nginx:1.27",
                      "postgres": "postgres:15"}


def test_sfu_signaling_urls_point_at_serve_services() -> None:
    ports = serve_ports()
    firsts = []
    for name, args in relaycast_services().items():
        if args.command != "sfu":
            continue
        urls = args.signaling.split(",")
        for url in urls:
            parts = urlsplit(url)
            assert parts.scheme == "http" and parts.hostname == "127.0.0.1", (name, url)
            assert parts.port in ports, (name, url)
        # every node knows every signaling-only instance
        signaling_ports = {p for p, s in ports.items() if "--no-embedded-sfu" in SERVICES[s]["command"]}
        assert {urlsplit(u).port for u in urls} == signaling_ports, name
        firsts.append(urls[0])
    assert len(set(firsts)) == len(firsts), "the nodes should start with different instances"


def host_ports() -> dict[str, list[int]]:
    """Service -> the TCP/UDP ports it listens on (UDP ICE ports are random)."""
    ports: dict[str, list[int]] = {}
    for name, args in relaycast_services().items():
        ports[name] = [args.port] if args.command == "serve" else []
    ports["redis"] = [int(flag(SERVICES["redis"]["command"], "--port") or 6379)]
    # postgres -c name=value settings
    settings = dict(a.split("=", 1) for a in SERVICES["postgres"]["command"] if "=" in a)
    assert settings["listen_addresses"] == "127.0.0.1"
    ports["postgres"] = [int(settings.get("port", 5432))]
    ports["edge"] = [int(str(SERVICES["edge"]["environment"][name]).rsplit(":", 1)[-1])
                     for name in ("EDGE_LISTEN", "EDGE_TLS_LISTEN")]
    # coturn listens where its rendered config says: the documented render command sets no
    # --port, so turn.config's default.
    assert "--port" not in render_command(), "update the coturn port below"
    ports["coturn"] = [TURN_DEFAULT_PORT]
    return ports


def test_host_network_ports_are_distinct_and_listed_in_the_header() -> None:
    header = _header()
    assert all(service.get("network_mode") == "host" for service in SERVICES.values())
    ports = host_ports()
    assert set(ports) == set(SERVICES)
    flat = [p for listed in ports.values() for p in listed]
    assert len(flat) == len(set(flat)), ports
    for name, listed in ports.items():
        for port in listed:
            assert re.search(rf"^\s*{port}/(tcp|udp)", header, re.MULTILINE), (name, port)


def test_redis_urls_point_at_the_redis_service() -> None:
    command = SERVICES["redis"]["command"]
    port = int(flag(command, "--port") or 6379)
    binds = (flag(command, "--bind") or "0.0.0.0").split()
    assert "--save" in command and "--appendonly" in command
    for name, args in relaycast_services().items():
        env = SERVICES[name].get("environment") or {}
        urls = [u for u in (getattr(args, "redis_url", None), env.get("REDIS_URL"), env.get("RELAYCAST_REDIS_URL")) if u]
        if args.command == "sfu":  # nodes reach chat and state through signaling only
            assert not urls, f"{name} does not use Redis"
            continue
        assert urls, f"{name} has no Redis URL"  # serve: Redis mode
        for url in urls:
            parts = urlsplit(url)
            assert parts.scheme == "redis" and parts.port == port, (name, url)
            assert parts.hostname in binds or binds == ["0.0.0.0"], (name, url)


def test_environment_is_shared_and_every_variable_is_documented() -> None:
    header = _header()
    body = "\n".join(line for line in COMPOSE_TEXT.splitlines() if not line.lstrip().startswith("#"))
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", body))
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", body))
    assert required == REQUIRED
    for name in referenced:
        assert name in header, f"{name} is not documented in the header comment"
    node_ids = []
    for name, args in relaycast_services().items():
        env = SERVICES[name]["environment"]
        assert env["RELAYCAST_NODE_SECRET"].startswith("${RELAYCAST_NODE_SECRET:?"), name
        if args.command == "serve":
            for var in REQUIRED - {"RELAYCAST_DB_PASSWORD"}:
                assert env[var].startswith(f"${{{var}:?"), (name, var)
            # One PostgreSQL shared by every instance, its password from the environment.
            url = env["RELAYCAST_DATABASE_URL"]
            assert url.startswith("postgresql+asyncpg://relaycast:${RELAYCAST_DB_PASSWORD:?"), name
            assert url.endswith("@127.0.0.1:5432/relaycast"), name
            if not args.no_embedded_sfu:
                node_ids.append(env["RELAYCAST_NODE_ID"])
        else:
            node_ids.append(args.node_id)
    assert len(set(node_ids)) == len(node_ids) == 3, node_ids


def rendered_edge() -> str:
    """The edge's nginx configuration as the container has it: its templates rendered with
    its environment, each ``include`` of a mounted file replaced by that file."""
    edge = SERVICES["edge"]
    env = {k: str(v) for k, v in edge["environment"].items()}
    mounts = {}
    for volume in edge["volumes"]:
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
            mounts[target] = ROOT / source
    templates = [path for target, path in mounts.items() if target.startswith("/etc/nginx/templates/")]
    text = "\n".join(render_template(path.read_text(), env) for path in templates)
    return re.sub(r"^\s*include (\S+);", lambda m: mounts[m.group(1)].read_text(), text, flags=re.MULTILINE)


def test_edge_terminates_tls_with_the_mounted_certificate_and_redirects_http() -> None:
    edge = SERVICES["edge"]
    env = {k: str(v) for k, v in edge["environment"].items()}
    rendered = rendered_edge()
    assert f"listen {env['EDGE_TLS_LISTEN']} ssl;" in rendered and env["EDGE_TLS_LISTEN"] == "443"
    certs = next(v for v in edge["volumes"] if isinstance(v, dict))
    assert certs["target"] == "/etc/nginx/certs" and certs["read_only"] is True
    assert env["EDGE_TLS_CERT"].startswith("/etc/nginx/certs/") and env["EDGE_TLS_KEY"].startswith("/etc/nginx/certs/")
    assert "return 308 https://$host$request_uri;" in rendered  # plain HTTP goes to HTTPS
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in rendered and '"max-age=31536000"' in rendered


def test_edge_renders_the_template_against_the_hls_origin() -> None:
    edge = SERVICES["edge"]
    source, target, *_ = edge["volumes"][0].split(":")
    template = ROOT / source
    assert template.exists(), template
    assert target.startswith("/etc/nginx/templates/") and target.endswith(".conf.template")
    env = {k: str(v) for k, v in edge["environment"].items()}
    rendered = rendered_edge()  # KeyError names a placeholder without a value
    assert f"server {env['RELAYCAST_ORIGIN']};" in rendered
    host, port = env["RELAYCAST_ORIGIN"].rsplit(":", 1)
    assert host == "127.0.0.1"
    origin = serve_ports()[int(port)]
    assert "--no-embedded-sfu" not in SERVICES[origin]["command"], "only a serve with an embedded SFU serves /hls/"
    assert env["EDGE_CACHE_DIR"] in edge["tmpfs"]


def test_edge_denies_the_node_endpoint_and_its_origin_trusts_it() -> None:
    """SFU nodes reach signaling directly (their /sfu-link/ Socket.IO path is denied at the
    edge), and the origin behind the edge reads the client address the edge forwards, or
    every page through the edge would share one per-address limit."""
    edge = SERVICES["edge"]
    env = {k: str(v) for k, v in edge["environment"].items()}
    rendered = rendered_edge()
    block = re.search(rf"location \^~ /{re.escape(NODE_SOCKETIO_PATH)} \{{([^}}]*)\}}", rendered)
    assert block and "deny all;" in block.group(1), "the edge must deny the SFU nodes' Socket.IO path"
    edge_port = int(env["EDGE_LISTEN"].rsplit(":", 1)[-1])
    for name, args in relaycast_services().items():
        if args.command == "sfu":
            assert all(urlsplit(u).port != edge_port for u in args.signaling.split(",")), name
    host, port = env["RELAYCAST_ORIGIN"].rsplit(":", 1)
    origin = SERVICES[serve_ports()[int(port)]]
    proxies = parse_trusted_proxies(str(origin["environment"].get("RELAYCAST_TRUSTED_PROXIES", "")))
    assert any(ipaddress.ip_address(host) in net for net in proxies), "the origin must trust the edge"


def render_command() -> list[str]:
    """The `relaycast turn --print-config --production ...` command of the header, as argv."""
    header = _header().replace("\\\n", " ")
    match = re.search(r"relaycast turn --print-config --production[^\n]*", header)
    assert match, "the header does not say how to render the coturn config"
    text = re.sub(r"\[[^]]*\]", "", match.group(0))  # optional parts
    return shlex.split(text)[2:]


def test_coturn_config_is_rendered_by_the_documented_command(tmp_path: Path) -> None:
    volume = SERVICES["coturn"]["volumes"][0]
    assert volume["type"] == "bind" and volume["read_only"] is True
    assert SERVICES["coturn"]["command"] == ["-c", volume["target"]]
    source = volume["source"]
    argv = render_command()
    assert argv[argv.index("-o") + 1] == source.removeprefix("./")
    assert (ROOT / source).exists() or f"-o {source.removeprefix('./')}" in _header().replace("\\\n", " ")
    # Run the documented command (HOST_ADDRESS filled in, output to a temporary file).
    argv = [str(tmp_path / "turnserver.conf") if a == source.removeprefix("./") else a for a in argv]
    argv = ["10.0.0.5" if a == "HOST_ADDRESS" else a for a in argv]
    args = build_parser().parse_args(["turn", *argv])
    assert turn_cli.main(args, env={"RELAYCAST_TURN_SECRET": "s" * 32}) == 0
    config = (tmp_path / "turnserver.conf").read_text()
    assert f"listening-port={TURN_DEFAULT_PORT}" in config
    assert "allowed-peer-ip=10.0.0.5" in config and "min-port=61000" in config
    assert "static-auth-secret=" + "s" * 32 in config
    assert (tmp_path / "turnserver.conf").stat().st_mode & 0o777 == 0o600


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert set(packages) >= {"sfu", "signaling", "turn", "hls_bridge", "loadtest", "web"}
    for package in packages:
        assert f"COPY {package} {package}" in text, package


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _compose_available(), reason="docker compose is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    env = {**os.environ, **{name: "x" * 32 for name in REQUIRED},
           "RELAYCAST_TURN_URLS": "turn:turn.example.org:3478?transport=udp"}
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE_PATH), "config", "-q"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    missing = {k: v for k, v in env.items() if k != "RELAYCAST_STREAM_KEY"}
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE_PATH), "config", "-q"], cwd=ROOT, env=missing,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "RELAYCAST_STREAM_KEY" in done.stderr
