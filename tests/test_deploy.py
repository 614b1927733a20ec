"""docker-compose.yml stays consistent with the CLI the tests run (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from signaling.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_run_real_cli_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services, "no services"
    parser = build_parser()
    for name, service in services.items():
        command = service["command"]
        assert command[0] == "relaycast", name
        args = parser.parse_args(command[1:])  # exits (SystemExit) on an unknown flag
        assert args.command in ("serve", "sfu"), name
        dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
        assert dockerfile.exists(), dockerfile


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for package in ("sfu", "signaling", "turn", "hls_bridge", "loadtest", "web"):
        assert f"COPY {package} {package}" in text, package

