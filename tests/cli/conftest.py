"""Fixtures of the CLI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.node_process import hashex, postgres_processes


@pytest.fixture
def node_dir(node_data_dir: Path) -> Iterator[Path]:
    """A node's data directory outside pytest's temporary root (see conftest.node_data_dir)."""
    data_dir = node_data_dir / "node"
    done = hashex(
        "node", "init", "--node-id", "cli-test", "--listen", "127.0.0.1:0", "--data-dir", data_dir
    )
    assert done.returncode == 0, done.stderr
    yield data_dir
    for leftover in postgres_processes(data_dir / "pg"):
        leftover.kill()
