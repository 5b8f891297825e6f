"""Fixtures of the sync tests: a registry database with the sync tables too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.core.db.migrations import apply_migration_plan
from services.registry.store import RegistryStore
from services.sync.store import MIGRATIONS, SyncStore
from tests.store_calls import database_of
from tests.sync.helpers import RECIPIENT


@pytest.fixture
async def sync_pool(db_pool: Any) -> Any:
    """The fresh, fully migrated database of tests/conftest.py."""
    return db_pool


@pytest.fixture
def sync_store(sync_pool: Any) -> SyncStore:
    """Sync's store of the receiving node (us-fbi): replicated records go to its registry."""
    return SyncStore(database=database_of(sync_pool), records=RegistryStore(node_id=RECIPIENT))


@pytest.fixture
async def second_pool(pg_server: Any) -> AsyncIterator[Any]:
    """Another fresh, fully migrated database: a second node's."""
    name = await pg_server.create_database()
    pool = await asyncpg.create_pool(pg_server.url_of(name), min_size=1, max_size=4)
    try:
        await apply_migration_plan(pool, MIGRATIONS)
        yield pool
    finally:
        await pool.close()
        await pg_server.drop_database(name)
