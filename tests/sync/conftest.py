"""Fixtures of the sync tests: a registry database with the sync tables too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.core.db.migrations import apply_migrations
from services.registry.store import MIGRATIONS_DIR as REGISTRY_MIGRATIONS
from services.sync.store import SyncStore, migrate


@pytest.fixture
async def sync_pool(db_pool: Any) -> Any:
    """The registry's fresh database (tests/conftest.py) with the sync migrations applied."""
    await migrate(db_pool)
    return db_pool


@pytest.fixture
def sync_store(sync_pool: Any) -> SyncStore:
    return SyncStore(sync_pool)


@pytest.fixture
async def second_pool(pg_server: Any) -> AsyncIterator[Any]:
    """Another fresh database with the registry's migrations: a second node's."""
    name = await pg_server.create_database()
    pool = await asyncpg.create_pool(pg_server.url_of(name), min_size=1, max_size=4)
    try:
        await apply_migrations(pool, REGISTRY_MIGRATIONS)
        yield pool
    finally:
        await pool.close()
        await pg_server.drop_database(name)
