"""gRPC face of the overlap flags (Flags service): converts, calls, maps errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from hashex.v1 import flags_pb2, flags_pb2_grpc
from services.core.caller import current_caller
from services.core.errors import InvalidArgument
from services.core.rpc_status import handles_errors, handles_stream_errors
from services.core.server import ServiceBinding
from services.registry import convert
from services.sync.flags.delivery import FlagDelivery, Keepalive
from services.sync.flags.ids import FlagKind
from services.sync.flags.states import FlagStates
from services.sync.flags.store import EventKind, FlagEventRow, FlagState, StoredFlag

SERVICE_NAME = flags_pb2.DESCRIPTOR.services_by_name["Flags"].full_name
MAX_NOTE_CHARS = 1_000

_KIND_TO_PB = {
    FlagKind.ALREADY_IDENTIFIED: flags_pb2.FLAG_KIND_ALREADY_IDENTIFIED,
    FlagKind.CONCURRENT_WORK: flags_pb2.FLAG_KIND_CONCURRENT_WORK,
    FlagKind.NEW_MATERIAL: flags_pb2.FLAG_KIND_NEW_MATERIAL,
}
_KIND_OF_PB = {int(v): k for k, v in _KIND_TO_PB.items()}
_EVENT_TO_PB = {
    EventKind.RAISED: flags_pb2.FLAG_EVENT_KIND_RAISED,
    EventKind.EVIDENCE_CHANGED: flags_pb2.FLAG_EVENT_KIND_EVIDENCE_CHANGED,
    EventKind.STATE_CHANGED: flags_pb2.FLAG_EVENT_KIND_STATE_CHANGED,
}


def flag_message(stored: StoredFlag) -> flags_pb2.Flag:
    flag = stored.flag
    message = flags_pb2.Flag(
        id=flag.id,
        kind=_KIND_TO_PB[flag.kind],
        state=int(stored.state),  # type: ignore[arg-type]
        series=flags_pb2.SeriesKey(origin=flag.series.origin, series_id=flag.series.series_id),
        other_agency=flag.other_agency,
        evidence=flags_pb2.FlagEvidence(
            linked_media=flag.evidence.linked_media,
            exact_media=flag.evidence.exact_media,
            near_media=flag.evidence.near_media,
            closest_distance=flag.evidence.closest_distance,
        ),
        raised_at=convert.timestamp(stored.raised_at),
    )
    if flag.other_series is not None:
        message.other_series.origin = flag.other_series.origin
        message.other_series.series_id = flag.other_series.series_id
    if flag.identified_agency is not None:
        message.identified_agency = flag.identified_agency
    if flag.identified_desk is not None:
        message.identified_desk = flag.identified_desk
    if flag.identified_since is not None:
        message.identified_since.CopyFrom(convert.timestamp(flag.identified_since))
    if stored.state_change is not None:
        message.state_changed_at.CopyFrom(convert.timestamp(stored.state_change.changed_at))
        message.state_changed_by_agency = stored.state_change.changed_by
    return message


def event_message(event: FlagEventRow | Keepalive) -> flags_pb2.FlagEvent:
    if isinstance(event, Keepalive):
        return flags_pb2.FlagEvent(
            event_id=event.after_event, kind=flags_pb2.FLAG_EVENT_KIND_KEEPALIVE
        )
    return flags_pb2.FlagEvent(
        event_id=event.id, kind=_EVENT_TO_PB[event.kind], flag=flag_message(event.flag)
    )


def _kind_filter(number: int) -> FlagKind | None:
    if number == 0:
        return None
    kind = _KIND_OF_PB.get(number)
    if kind is None:
        raise InvalidArgument(f"kind: {number} is not a flag kind")
    return kind


def _state_filter(number: int) -> FlagState | None:
    if number == 0:
        return None
    try:
        return FlagState(number)
    except ValueError:
        raise InvalidArgument(f"state: {number} is not a flag state") from None


class FlagsServicer(flags_pb2_grpc.FlagsServicer):
    def __init__(self, *, delivery: FlagDelivery, states: FlagStates) -> None:
        self._delivery = delivery
        self._states = states

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            SERVICE_NAME,
            lambda server: flags_pb2_grpc.add_FlagsServicer_to_server(self, server),
        )

    @handles_errors
    async def ListFlags(
        self, request: flags_pb2.ListFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> flags_pb2.ListFlagsResponse:
        page = await self._delivery.list_flags(
            kind=_kind_filter(request.kind),
            state=_state_filter(request.state),
            limit=request.limit,
            page_token=request.page_token,
        )
        return flags_pb2.ListFlagsResponse(
            flags=[flag_message(f) for f in page.flags], next_page_token=page.next_page_token
        )

    @handles_stream_errors
    async def WatchFlags(
        self, request: flags_pb2.WatchFlagsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[flags_pb2.FlagEvent]:
        async for event in self._delivery.watch(after_event=request.after_event):
            yield event_message(event)

    @handles_errors
    async def SetFlagState(
        self, request: flags_pb2.SetFlagStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> flags_pb2.SetFlagStateResponse:
        if len(request.note) > MAX_NOTE_CHARS:
            raise InvalidArgument(f"note: at most {MAX_NOTE_CHARS} characters")
        caller = current_caller()
        stored = await self._states.set_state(
            flag_id=request.flag_id,
            state=request.state,
            caller=caller.writer,
            note=request.note if request.HasField("note") else None,
        )
        return flags_pb2.SetFlagStateResponse(flag=flag_message(stored))
