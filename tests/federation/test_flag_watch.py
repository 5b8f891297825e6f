"""A unit of us-hsi follows WatchFlags across two cuts, as a client is meant to: it keeps the id
of the last event it saw and resumes after it. Its stream is cancelled in the middle of the
backlog, then cut again when its node restarts, while flags arise and the other agencies change
their states. Every event the node appended must reach it exactly once and in order, and what
the events last said of each flag must be what ListFlags shows.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import suppress
from pathlib import Path
from typing import Any

import grpc

from hashex.v1 import flags_pb2
from tests.federation.flag_material import (
    AI,
    CW,
    DE,
    EXPECTED,
    GB,
    NM_OAK_GB,
    NM_PINE_DE,
    US,
    FlagMaterial,
    flag_ids,
    flags_stub,
    set_flag_state,
)
from tests.federation.harness import Agency, federation
from tests.waiting import wait_for

ACKNOWLEDGED = flags_pb2.FLAG_STATE_VALUE_ACKNOWLEDGED
RESOLVED = flags_pb2.FLAG_STATE_VALUE_RESOLVED
STATE_CHANGED = flags_pb2.FLAG_EVENT_KIND_STATE_CHANGED


class FlagWatcher:
    """Every event received over all of its streams, keep-alives aside; `after` is the cursor a
    resumed stream starts from (a keep-alive carries the last real event's id)."""

    def __init__(self) -> None:
        self.events: list[flags_pb2.FlagEvent] = []
        self.after = 0
        self._call: Any = None
        self._reading: asyncio.Task[None] | None = None

    async def take(self, node: Agency, count: int) -> None:
        """Read `count` events, then cancel the stream."""
        call = flags_stub(node).WatchFlags(flags_pb2.WatchFlagsRequest(after_event=self.after))
        while len(self.events) < count:
            self._record(await asyncio.wait_for(call.read(), 30))
        call.cancel()

    def follow(self, node: Agency) -> None:
        """Keep reading in the background until cut."""
        self._call = flags_stub(node).WatchFlags(
            flags_pb2.WatchFlagsRequest(after_event=self.after)
        )
        self._reading = asyncio.create_task(self._read(self._call))

    async def ended(self) -> None:
        """Wait for the stream to end, whoever ended it (a cancel here, a node that stopped)."""
        assert self._reading is not None
        with suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._reading
        self._reading = None

    async def cut(self) -> None:
        self._call.cancel()
        await self.ended()

    def last_copies(self) -> dict[str, flags_pb2.Flag]:
        """Each flag as its latest event carried it."""
        return {e.flag.id: e.flag for e in self.events}

    def saw(self, flag_id: str, kind: int) -> bool:
        self.assert_dense()
        return any(e.flag.id == flag_id and e.kind == kind for e in self.events)

    def assert_dense(self) -> None:
        """Fails at once (not at a deadline) on an event missed or received twice."""
        ids = [e.event_id for e in self.events]
        assert ids == list(range(1, len(ids) + 1)), f"event ids received: {ids}"

    async def _read(self, call: Any) -> None:
        async for event in call:
            self._record(event)

    def _record(self, event: flags_pb2.FlagEvent) -> None:
        self.after = event.event_id
        if event.kind != flags_pb2.FLAG_EVENT_KIND_KEEPALIVE:
            self.events.append(event)


async def last_event_id(node: Agency) -> int:
    return await node.row_count("SELECT coalesce(max(id), 0) FROM flag_events")


async def test_a_watch_resumed_after_cuts_delivers_every_event_once_in_order(
    pg_server: Any, tmp_path: Path
) -> None:
    material = FlagMaterial.drawn(random.Random(13))
    async with federation([GB, US, DE], tmp_path, pg_server) as fed:
        gb, us, de = fed[GB], fed[US], fed[DE]
        await material.submit_willow_and_oak(gb, us)
        await material.submit_pine(us)

        async def first_flags() -> bool:
            return set(await flag_ids(us)) == {AI, NM_OAK_GB} and AI in await flag_ids(gb)

        await wait_for(first_flags, 60, "us-hsi's first two flags")
        await fed.converged()  # de-bka holds us-pine before us-hsi goes down
        watcher = FlagWatcher()

        # Cut 1: cancelled after the first event of a backlog of at least two.
        await watcher.take(us, 1)
        assert watcher.after == 1 and await last_event_id(us) >= 2

        # Held open: a state set at gb-nca arrives as it is applied.
        watcher.follow(us)
        await set_flag_state(gb, AI, ACKNOWLEDGED)

        async def acknowledgement_seen() -> bool:
            return watcher.saw(AI, STATE_CHANGED)

        await wait_for(acknowledgement_seen, 60, "gb-nca's acknowledgement on us-hsi's watch")

        # Cut 2: us-hsi restarts. Meanwhile de-fir arrives at de-bka, which raises its flags
        # and acknowledges one; gb-nca resolves the flag it acknowledged.
        await us.stop()
        await watcher.ended()
        await material.submit_fir(de)
        await material.submit_seizure(gb)

        async def raised_at_de() -> bool:
            return CW in await flag_ids(de)

        await wait_for(raised_at_de, 60, "CONCURRENT_WORK at de-bka")
        await set_flag_state(de, CW, ACKNOWLEDGED)
        await set_flag_state(gb, AI, RESOLVED)
        await us.start()

        async def raised_while_cut() -> bool:
            return CW in await flag_ids(us)

        await wait_for(raised_while_cut, 60, "CONCURRENT_WORK at us-hsi")
        assert await last_event_id(us) > watcher.after  # a backlog to catch up on
        seen_before_resume = len(watcher.events)
        watcher.follow(us)
        await set_flag_state(de, NM_PINE_DE, RESOLVED)

        async def caught_up() -> bool:
            watcher.assert_dense()
            listed = await flag_ids(us)
            states = {i: listed[i].state for i in (AI, CW, NM_PINE_DE) if i in listed}
            return (
                set(listed) == EXPECTED[US]
                and states == {AI: RESOLVED, CW: ACKNOWLEDGED, NM_PINE_DE: RESOLVED}
                and watcher.last_copies() == listed
                and watcher.after == await last_event_id(us)
            )

        await wait_for(caught_up, 60, "the watch showing what ListFlags shows")
        await watcher.cut()

        rows = await us.fetch("SELECT id, flag_id, kind FROM flag_events ORDER BY id")
        appended = [(r["id"], r["flag_id"], r["kind"]) for r in rows if r["id"] <= watcher.after]
        delivered = [(e.event_id, e.flag.id, int(e.kind)) for e in watcher.events]
        assert delivered == appended  # none missed, none twice, in id order
        assert [e.event_id for e in watcher.events] == list(range(1, watcher.after + 1))
        raised = [e.flag.id for e in watcher.events if e.kind == flags_pb2.FLAG_EVENT_KIND_RAISED]
        assert sorted(raised) == sorted(EXPECTED[US])  # each raised once
        assert len(watcher.events) > seen_before_resume
        last = watcher.last_copies()
        assert last[AI].state_changed_by_agency == GB
        assert last[CW].state_changed_by_agency == DE
