"""Fixtures of the CLI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.main import main
from tests.cli.node_process import hashex, postgres_processes


@pytest.fixture
def node_dir(node_data_dir: Path) -> Iterator[Path]:
    """A node's data directory outside pytest's temporary root (see conftest.node_data_dir)."""
    data_dir = node_data_dir / "node"
    # Port 0: runs beside other suites (and other nodes) on the same machine never collide.
    done = hashex(
        "node", "init", "--node-id", "cli-test", "--listen", "127.0.0.1:0",
        "--gateway-listen", "127.0.0.1:0", "--data-dir", data_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    yield data_dir
    for leftover in postgres_processes(data_dir / "pg"):
        leftover.kill()


class Run:
    """`hashex ARGS...` in-process: (exit code, stdout, stderr); keeps everything printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.seen: list[str] = []

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = self.capsys.readouterr()
        self.seen.append(captured.out + captured.err)
        return code, captured.out, captured.err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


@pytest.fixture
def gb(tmp_path: Path, run: Run) -> Path:
    data_dir = tmp_path / "gb"
    code, _, err = run(
        "node", "init", "--node-id", "gb-nca", "--data-dir", data_dir,
        "--gateway-listen", "0.0.0.0:7443", "--gateway-endpoint", "hashex.nca.example:7443",
        "--gateway-host", "10.1.2.3", "--gateway-host", "gw.internal",
    )  # fmt: skip
    assert code == 0, err
    return data_dir


@pytest.fixture
def us(tmp_path: Path, run: Run) -> Path:
    data_dir = tmp_path / "us"
    code, _, err = run(
        "node", "init", "--node-id", "us-fbi", "--data-dir", data_dir,
        "--gateway-endpoint", "127.0.0.1:8443",
    )  # fmt: skip
    assert code == 0, err
    return data_dir
