"""Waking the senders of held pulls when this node's change log grows.

Every transaction that appends to the change log notifies CHANGE_LOG_CHANNEL (delivered by
PostgreSQL at commit, from whichever process wrote: a separate registry included). One
connection per sync service LISTENs; each notification wakes every waiting sender, which then
reads the log's head itself. A sender also wakes after its timeout (the keep-alive interval), so
a lost listening connection only slows replication to that interval: the next wait listens
again, and the loss and the recovery are logged once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from services.core.changelog.store import CHANGE_LOG_CHANNEL
from services.core.db.pool import Database

_log = logging.getLogger(__name__)


class LogWatcher:
    def __init__(self, database: Database, *, channel: str = CHANGE_LOG_CHANNEL) -> None:
        """`channel`: the notifications that wake waiters (the flags' events use their own)."""
        self._db = database
        self._channel = channel
        self._changed = asyncio.Event()
        self._conn: Any = None
        self._closed = False
        self._failing = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def ticket(self) -> asyncio.Event:
        """Take this before reading the log's head: `wait(ticket)` then returns at once if the
        log grew since, so no commit between the read and the wait is missed."""
        await self._listen()
        return self._changed

    async def wait(self, ticket: asyncio.Event, timeout_s: float) -> None:
        """Until the log may have grown since `ticket` was taken, the watcher closes, or
        `timeout_s` passes, whichever comes first."""
        if self._closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ticket.wait(), timeout=timeout_s)

    async def close(self) -> None:
        """Wake every waiter for good (held pulls end) and release the listening connection."""
        self._closed = True
        self._wake()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.remove_listener(self._channel, self._notified)
            with contextlib.suppress(Exception):
                await self._db.pool.release(conn)

    async def _listen(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        if self._conn is not None:  # lost with the database: hand its pool slot back
            lost, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await self._db.pool.release(lost)
        try:
            conn = await self._db.pool.acquire()
            await conn.add_listener(self._channel, self._notified)
        except Exception as error:  # the database is away: waits time out instead
            if not self._failing:
                _log.warning("cannot listen for change-log growth (%s); polling meanwhile", error)
            self._failing = True
            return
        if self._failing:
            _log.info("listening for change-log growth again")
        self._failing = False
        self._conn = conn

    def _notified(self, *_: object) -> None:
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
