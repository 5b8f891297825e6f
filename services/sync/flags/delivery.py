"""Delivering flags to units: ListFlags' pages and WatchFlags' stream (docs/linkage.md
"Delivery"). No gRPC here: the servicer converts.

A watch reads the events after its cursor in id order; when none is left it waits for the
next commit's notification or the keep-alive interval, whichever comes first. Event ids commit
in order (services/sync/flags/store.py), so reading `id > cursor` again after a wake-up misses
nothing and repeats nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.core.clock import SYSTEM_CLOCK, Clock
from services.core.db.pool import Database
from services.core.errors import InvalidArgument
from services.sync.flags import store
from services.sync.flags.ids import FlagKind
from services.sync.flags.store import FlagEventRow, FlagState, StoredFlag
from services.sync.log_watcher import LogWatcher

# A watcher that saw nothing for this long is sent a keep-alive (the clock's seconds).
KEEPALIVE_S = 30.0
# Events read per statement while catching up.
EVENTS_PER_READ = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FlagPage:
    flags: list[StoredFlag]
    # Empty on the last page.
    next_page_token: str


@dataclass(frozen=True)
class Keepalive:
    """Nothing happened for KEEPALIVE_S; `after_event` is the last event id sent."""

    after_event: int


def page_limit(requested: int) -> int:
    if requested == 0:
        return store.DEFAULT_FLAGS_LISTED
    if not 1 <= requested <= store.MAX_FLAGS_LISTED:
        raise InvalidArgument(
            f"limit: {requested} must be 1-{store.MAX_FLAGS_LISTED} "
            f"(0: {store.DEFAULT_FLAGS_LISTED})"
        )
    return requested


def encode_page_key(flag: StoredFlag) -> str:
    micros = (flag.raised_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{flag.flag.id}".encode()).decode()


def decode_page_key(token: str) -> tuple[datetime, str]:
    try:
        micros, flag_id = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        return _EPOCH + timedelta(microseconds=int(micros)), flag_id
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise InvalidArgument("page_token: not a token this node gave out") from None


class FlagDelivery:
    def __init__(self, *, database: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = database
        self._clock = clock
        self._watcher = LogWatcher(database, channel=store.FLAG_EVENTS_CHANNEL)

    async def list_flags(
        self,
        *,
        kind: FlagKind | None,
        state: FlagState | None,
        limit: int,
        page_token: str,
    ) -> FlagPage:
        size = page_limit(limit)
        after = decode_page_key(page_token) if page_token else None
        async with self._db.connection() as conn:
            flags = await store.list_flags(
                conn, kind=kind, state=state, limit=size + 1, after=after
            )
        more = len(flags) > size
        flags = flags[:size]
        return FlagPage(flags, encode_page_key(flags[-1]) if more else "")

    async def watch(self, *, after_event: int) -> AsyncIterator[FlagEventRow | Keepalive]:
        """Events after `after_event`, then new ones as they commit, with keep-alives; ends
        only when the caller stops iterating (or the service closes the watcher)."""
        cursor = after_event
        while not self._watcher.closed:
            ticket = await self._watcher.ticket()
            async with self._db.connection() as conn:
                rows = await store.events_after(conn, after_event=cursor, limit=EVENTS_PER_READ)
            for row in rows:
                cursor = row.id
                yield row
            if len(rows) == EVENTS_PER_READ:
                continue
            started = self._clock.monotonic()
            await self._watcher.wait(ticket, self._clock.real_s(KEEPALIVE_S))
            if self._clock.monotonic() - started >= KEEPALIVE_S and not self._watcher.closed:
                yield Keepalive(cursor)

    async def close(self) -> None:
        """End every watch (the service is stopping) and release the listening connection."""
        await self._watcher.close()
