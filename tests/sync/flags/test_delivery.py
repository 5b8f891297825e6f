"""WatchFlags' stream on its own: catching up, keep-alives on a fast clock, closing."""

from __future__ import annotations

import asyncio
import contextlib

from services.core.clock import Clock
from services.core.db.pool import Database
from services.sync.flags.delivery import FlagDelivery, Keepalive
from services.sync.flags.store import FlagEventRow
from tests.sync.flags.test_states import raise_flag


async def test_an_idle_watch_gets_keepalives_carrying_the_last_id(database: Database) -> None:
    await raise_flag(database)
    delivery = FlagDelivery(database=database, clock=Clock(rate=1000.0))
    got: list[FlagEventRow | Keepalive] = []
    watch = delivery.watch(after_event=0)
    for _ in range(3):
        got.append(await asyncio.wait_for(anext(watch), 10))
    assert isinstance(got[0], FlagEventRow) and got[0].id == 1
    assert got[1:] == [Keepalive(1), Keepalive(1)]
    await delivery.close()
    with contextlib.suppress(StopAsyncIteration):
        await asyncio.wait_for(anext(watch), 10)
    await watch.aclose()


async def test_a_watch_after_the_last_event_waits(database: Database) -> None:
    await raise_flag(database)
    delivery = FlagDelivery(database=database, clock=Clock(rate=1.0))
    watch = delivery.watch(after_event=1)
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.2)
    assert not pending.done()
    await delivery.close()
    with contextlib.suppress(StopAsyncIteration):
        await asyncio.wait_for(pending, 10)
    await watch.aclose()
