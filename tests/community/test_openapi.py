"""The OpenAPI 3.1 document at ``/api/openapi.json`` is kept true by schemathesis run
against a real ``relaycast serve``: every operation, generated valid and invalid input,
no 5xx, every status documented, every JSON response matching its schema."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest
from openapi_spec_validator import validate

from tests.serve_process import ServeProcess

pytestmark = pytest.mark.timeout(600)

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


async def _admin_token(http: aiohttp.ClientSession, serve: ServeProcess) -> str:
    """Log in as the first-run admin whose password ``relaycast serve`` printed."""
    line = await serve.wait_line("admin login:", 5)
    password = line.split("admin login: admin / ", 1)[1].split()[0]
    async with http.post(f"{serve.url}/api/users/login",
                         json={"username": "admin", "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


async def test_openapi_document_is_valid_openapi_31(tmp_path: Path) -> None:
    serve = await ServeProcess(RELAYCAST_DATA_DIR=str(tmp_path)).start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{serve.url}/api/openapi.json") as resp,
        ):
            assert resp.status == 200
            doc = await resp.json()
    finally:
        await serve.stop()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on an invalid document
    paths = doc["paths"]
    for path, methods in {
        "/api/users/register": ["post"],
        "/api/users/login": ["post"],
        "/api/users/{userId}": ["get"],
        "/api/users/logout": ["post"],
        "/api/users/refresh": ["post"],
        "/api/users/me": ["get", "patch"],
        "/api/streams/start": ["post"],
        "/api/streams/{id}/stop": ["post"],
        "/api/streams/{id}": ["get"],
        "/api/streams/search": ["get"],
        "/api/streams": ["get"],
        "/api/categories": ["get"],
        "/api/channels/{name}": ["get", "patch"],
        "/api/channels/{name}/keys": ["get", "post"],
        "/api/channels/{name}/keys/{keyId}": ["delete"],
        "/api/channels/{name}/follow": ["post", "delete"],
        "/api/users/me/following": ["get"],
        "/api/notifications": ["get"],
        "/api/channels/{name}/videos": ["get"],
    }.items():
        for method in methods:
            assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"


async def test_schemathesis_finds_no_5xx_and_no_undocumented_response(tmp_path: Path) -> None:
    serve = await ServeProcess(RELAYCAST_DATA_DIR=str(tmp_path / "data")).start()
    try:
        async with aiohttp.ClientSession() as http:
            # As admin: every operation is reachable (admin-only ones included).
            token = await _admin_token(http, serve)
        report = tmp_path / "report"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{serve.url}/api/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "15",
            "--phases",
            "examples,coverage,fuzzing",
            "--header",
            f"Authorization: Bearer {token}",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--report",
            "ndjson",
            "--report-dir",
            str(report),
            "--seed",
            "1",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its .schemathesis/ cache stays out of the repository
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 540)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-12000:] + "\n--- service log ---\n" + serve.log()[-4000:]
        assert "No issues found" in text or "passed" in text, text[-4000:]
    finally:
        await serve.stop()
    # Nothing the fuzzer did may have crashed the handlers (a logged traceback).
    assert "Traceback" not in serve.log(), serve.log()[-6000:]


def test_document_matches_declared_operations() -> None:
    """Every operation the modules declare is in the document with its statuses."""
    from community.api.openapi import document
    from community.app import api_groups

    groups = api_groups()
    doc = json.loads(json.dumps(document(groups)))
    for group in groups:
        for op in group.operations:
            path = op.path
            assert op.method.lower() in doc["paths"][path], (op.method, path)
            for status in op.responses:
                assert str(status) in doc["paths"][path][op.method.lower()]["responses"]
