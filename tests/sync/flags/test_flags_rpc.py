"""The Flags service through a real node's gateway (mutual TLS, unit roles), with flags raised
by the engine from the linkage read API's test double on the node's database."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from hashex.v1 import flags_pb2, flags_pb2_grpc
from services.sync.flags.engine import EngineSettings, FlagEngine
from services.sync.flags.ids import already_identified_id, concurrent_work_id
from services.sync.flags.reader import SeriesRef
from tests.federation.harness import Agency
from tests.federation.rogue import ORIGIN, RECEIVER
from tests.federation.test_security import lone_node, refusal
from tests.sync.flags.linkage_double import InMemoryLinkage
from tests.sync.flags.test_engine import IDENTIFIED, NOTHING, WORKING, linked

OURS = SeriesRef(1, RECEIVER, "gb-1")
THEIRS = SeriesRef(2, ORIGIN, "us-1")
OTHER = SeriesRef(3, ORIGIN, "us-2")
AI_ID = already_identified_id(OURS, THEIRS)


def flags(node: Agency, *roles: Any) -> flags_pb2_grpc.FlagsStub:
    return flags_pb2_grpc.FlagsStub(node.unit_channel("alice", roles))


async def raise_flags(node: Agency, linkage: InMemoryLinkage) -> None:
    settings = EngineSettings(node_id=RECEIVER)
    engine = FlagEngine(database=node.running.database, reader=linkage, settings=settings)
    await engine.catch_up()


async def test_units_list_and_set_flag_states_by_role(pg_server: Any, tmp_path: Path) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        linkage = InMemoryLinkage(victims={1: NOTHING, 2: IDENTIFIED})
        linkage.link(linked(OURS, THEIRS))
        await raise_flags(node, linkage)

        analyst = flags(node, "analyst")
        listed = await analyst.ListFlags(flags_pb2.ListFlagsRequest())
        [flag] = listed.flags
        assert flag.id == AI_ID and flag.kind == flags_pb2.FLAG_KIND_ALREADY_IDENTIFIED
        assert flag.state == flags_pb2.FLAG_STATE_VALUE_OPEN
        assert (flag.series.origin, flag.other_series.series_id) == (RECEIVER, "us-1")
        assert flag.identified_agency == ORIGIN and flag.identified_desk == "desk-b"
        assert flag.evidence.closest_distance == 4 and not flag.HasField("state_changed_at")
        assert listed.next_page_token == ""

        denied = await refusal(
            analyst.SetFlagState(
                flags_pb2.SetFlagStateRequest(
                    flag_id=AI_ID, state=flags_pb2.FLAG_STATE_VALUE_ACKNOWLEDGED
                )
            )
        )
        assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "victim-id" in (denied.details() or "")
        submitter = flags(node, "submitter")
        denied = await refusal(submitter.ListFlags(flags_pb2.ListFlagsRequest()))
        assert denied.code() is grpc.StatusCode.PERMISSION_DENIED

        victim_id = flags(node, "victim-id")
        answer = await victim_id.SetFlagState(
            flags_pb2.SetFlagStateRequest(flag_id=AI_ID, state=flags_pb2.FLAG_STATE_VALUE_RESOLVED)
        )
        assert answer.flag.state == flags_pb2.FLAG_STATE_VALUE_RESOLVED
        assert answer.flag.state_changed_by_agency == RECEIVER

        bad = [
            (flags_pb2.SetFlagStateRequest(flag_id="zz", state=1), "INVALID_ARGUMENT"),
            (flags_pb2.SetFlagStateRequest(flag_id=AI_ID, state=0), "INVALID_ARGUMENT"),
            (flags_pb2.SetFlagStateRequest(flag_id=AI_ID, state=7), "INVALID_ARGUMENT"),  # type: ignore[arg-type]
            (
                flags_pb2.SetFlagStateRequest(flag_id=AI_ID, state=1, note="n" * 1001),
                "INVALID_ARGUMENT",
            ),
            (flags_pb2.SetFlagStateRequest(flag_id="c" * 64, state=1), "NOT_FOUND"),
        ]
        for request, code in bad:
            error = await refusal(victim_id.SetFlagState(request))
            assert error.code().name == code, (request, error.details())

        resolved = await analyst.ListFlags(
            flags_pb2.ListFlagsRequest(state=flags_pb2.FLAG_STATE_VALUE_RESOLVED)
        )
        assert [f.id for f in resolved.flags] == [AI_ID]
        still_open = await analyst.ListFlags(
            flags_pb2.ListFlagsRequest(state=flags_pb2.FLAG_STATE_VALUE_OPEN)
        )
        assert list(still_open.flags) == []
        for request in (
            flags_pb2.ListFlagsRequest(limit=1001),
            flags_pb2.ListFlagsRequest(page_token="not a token"),
            flags_pb2.ListFlagsRequest(kind=9),  # type: ignore[arg-type]
        ):
            error = await refusal(analyst.ListFlags(request))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_pages_and_a_watch_that_resumes(pg_server: Any, tmp_path: Path) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        linkage = InMemoryLinkage(victims={1: WORKING, 2: WORKING, 3: WORKING})
        linkage.link(linked(OURS, THEIRS))
        linkage.link(linked(OURS, OTHER))
        await raise_flags(node, linkage)
        analyst = flags(node, "analyst")
        first = await analyst.ListFlags(flags_pb2.ListFlagsRequest(limit=1))
        second = await analyst.ListFlags(
            flags_pb2.ListFlagsRequest(limit=1, page_token=first.next_page_token)
        )
        assert second.next_page_token == ""
        assert {first.flags[0].id, second.flags[0].id} == {
            concurrent_work_id(OURS, THEIRS),
            concurrent_work_id(OURS, OTHER),
        }

        stream = analyst.WatchFlags(flags_pb2.WatchFlagsRequest(after_event=0))
        seen = [await stream.read() for _ in range(2)]
        assert [e.event_id for e in seen] == [1, 2]
        assert {e.kind for e in seen} == {flags_pb2.FLAG_EVENT_KIND_RAISED}
        # A change committed while the stream is held open arrives on it.
        victim_id = flags(node, "victim-id")
        await victim_id.SetFlagState(
            flags_pb2.SetFlagStateRequest(flag_id=seen[0].flag.id, state=2)
        )
        third = await asyncio.wait_for(stream.read(), 10)
        assert third.event_id == 3 and third.kind == flags_pb2.FLAG_EVENT_KIND_STATE_CHANGED
        stream.cancel()
        # Resuming after the last id seen repeats nothing.
        resumed = analyst.WatchFlags(flags_pb2.WatchFlagsRequest(after_event=2))
        again = await asyncio.wait_for(resumed.read(), 10)
        assert again.event_id == 3
        resumed.cancel()
