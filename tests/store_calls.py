"""Running a store's operations the way the services' logic does, one transaction per call, so
that tests of a store read as calls of its operations."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.core.db.pool import Database


def database_of(pool: Any) -> Database:
    """The Database the services would hold on a test's pool."""
    return Database(pool=pool, display_url="test database")


class InTransactions:
    """`store.op(...)` runs `op(conn, ...)` of the wrapped store in a transaction of its own
    (a repeatable-read snapshot for operations that stream rows)."""

    def __init__(self, store: Any, database: Database) -> None:
        self.store = store
        self._db = database

    def __getattr__(self, name: str) -> Callable[..., Any]:
        operation = getattr(self.store, name)
        if inspect.isasyncgenfunction(operation):

            async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                async with self._db.transaction(readonly=True, isolation="repeatable_read") as c:
                    async for item in operation(c, *args, **kwargs):
                        yield item

            return stream

        async def call(*args: Any, **kwargs: Any) -> Any:
            async with self._db.transaction() as conn:
                return await operation(conn, *args, **kwargs)

        return call
