"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest


@pytest.fixture
async def pool(empty_database: str) -> AsyncIterator[Any]:
    """A small pool on a new, empty database (no migrations applied)."""
    pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=3)
    try:
        yield pool
    finally:
        await pool.close()
