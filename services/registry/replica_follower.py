"""Keeps the PDQ index of a registry running on its own (`hashex registry serve`) in step with
records the sync service, in another process, replicates into the shared database.

In one process (`hashex node up`) sync hands each applied batch to the index directly; apart, the
registry polls for media of other origins changed since its last look. `updated_at` is the start
time of the writing transaction, so a transaction that started before a poll may commit after
it: each poll looks back `overlap_s` before the latest change it has seen. Looking at a row twice
is harmless: the index stores each (row, value) once, and a retracted row is dropped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from services.registry.registry import Registry

_log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
DEFAULT_OVERLAP_S = 5.0


class ReplicaFollower:
    def __init__(
        self,
        *,
        registry: Registry,
        since: datetime,
        interval_s: float = DEFAULT_INTERVAL_S,
        overlap_s: float = DEFAULT_OVERLAP_S,
    ) -> None:
        """`since`: a database time at or before the index was loaded."""
        self._registry = registry
        self._latest = since
        self._interval_s = interval_s
        self._overlap = timedelta(seconds=overlap_s)
        self._stop = asyncio.Event()
        self._failing = False

    async def poll_once(self) -> tuple[int, int]:
        """Index what changed since the last look; the numbers of hashes added, rows dropped."""
        added, removed, latest = await self._registry.index_replicated_since(
            self._latest - self._overlap
        )
        if latest is not None and latest > self._latest:
            self._latest = latest
        return added, removed

    async def run(self) -> None:
        """Poll until stopped; failed polls are retried at the next interval, logged once when
        they start failing and once when they work again."""
        while not self._stop.is_set():
            try:
                await self.poll_once()
            except Exception as error:  # the database may be restarting: keep following
                if not self._failing:
                    _log.warning(
                        "following replicated records failed: %s; retrying every %g s",
                        error or type(error).__name__,
                        self._interval_s,
                    )
                self._failing = True
            else:
                if self._failing:
                    _log.info("following replicated records works again")
                self._failing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._interval_s)

    def stop(self) -> None:
        self._stop.set()
