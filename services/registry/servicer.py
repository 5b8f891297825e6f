"""gRPC face of the registry: converts protobuf ⇄ domain, calls the Registry, maps errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from hashex.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.core.caller import current_caller
from services.core.errors import FieldProblem, HashexError, InvalidArgument
from services.core.rpc_status import handles_errors, handles_stream_errors
from services.core.server import ServiceBinding
from services.registry import convert
from services.registry.dedup_convert import SeriesAsked, dedup_from_proto, dedup_response_to_proto
from services.registry.dedup_report import DedupReporter
from services.registry.model import SubmitCounts, Writer, check_id, check_text
from services.registry.registry import Registry

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, registry: Registry, *, default_max_distance: int = 31) -> None:
        self._registry = registry
        self._default_max_distance = default_max_distance
        self._dedup = DedupReporter(registry=registry, database=registry.database)

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            SERVICE_NAME,
            lambda server: registry_pb2_grpc.add_RegistryServicer_to_server(self, server),
        )

    @handles_errors
    async def SubmitMedia(
        self, request_iterator: AsyncIterator[registry_pb2.SubmitMediaRequest], context: Context
    ) -> registry_pb2.SubmitMediaResponse:
        total = SubmitCounts()
        batch_number = 0
        async for request in request_iterator:
            try:
                batch = convert.submit_batch_from_proto(request)
                total += await self._registry.submit_batch(batch, writer=_writer())
            except InvalidArgument as error:
                raise _rejected_batch(error, batch_number, total) from None
            except HashexError as error:
                raise _failed_batch(error, batch_number, total) from None
            batch_number += 1
        return registry_pb2.SubmitMediaResponse(
            received=total.received,
            created=total.created,
            updated=total.updated,
            unchanged=total.unchanged,
            retracted=total.retracted,
        )

    @handles_errors
    async def Lookup(
        self, request: registry_pb2.LookupRequest, context: Context
    ) -> registry_pb2.LookupResponse:
        return await self.answer_lookup(request)

    async def answer_lookup(
        self, request: registry_pb2.LookupRequest, *, origin: str | None = None
    ) -> registry_pb2.LookupResponse:
        """Lookup without a call context, for federated lookups (which start from this one) and
        peers' live lookups (`origin`: only that node's records)."""
        signals, distance, max_matches = convert.lookup_from_proto(
            request, default_max_distance=self._default_max_distance
        )
        results = await self._registry.lookup(
            signals, max_distance=distance, max_matches=max_matches, origin=origin
        )
        return convert.lookup_response_to_proto(results)

    @handles_stream_errors
    async def ExportMedia(
        self, request: registry_pb2.ExportMediaRequest, context: Context
    ) -> AsyncIterator[registry_pb2.ExportMediaResponse]:
        after, page_size = convert.export_from_proto(request)
        while True:
            media, names = await self._registry.export_page(after_media_id=after, limit=page_size)
            if not media:
                return
            yield registry_pb2.ExportMediaResponse(
                media=[convert.media_to_proto(m) for m in media], series_names=names
            )
            if len(media) < page_size:
                return
            after = media[-1].media_id

    @handles_stream_errors
    async def LookupStream(
        self, request_iterator: AsyncIterator[registry_pb2.LookupStreamRequest], context: Context
    ) -> AsyncIterator[registry_pb2.LookupStreamResponse]:
        async for request in request_iterator:
            try:
                check_text("batch_id", request.batch_id, 128)
                response = await self.answer_lookup(request.lookup)
            except InvalidArgument as error:
                raise error.within(f"batch {request.batch_id!r}: lookup") from None
            yield registry_pb2.LookupStreamResponse(batch_id=request.batch_id, lookup=response)

    @handles_errors
    async def RetractMedia(
        self, request: registry_pb2.RetractMediaRequest, context: Context
    ) -> registry_pb2.RetractMediaResponse:
        media_ids = convert.retract_from_proto(request)
        counts = await self._registry.retract(media_ids, writer=_writer())
        return registry_pb2.RetractMediaResponse(
            retracted=counts.retracted,
            not_found=counts.not_found,
            already_retracted=counts.already_retracted,
        )

    @handles_errors
    async def UpdateMedia(
        self, request: registry_pb2.UpdateMediaRequest, context: Context
    ) -> registry_pb2.UpdateMediaResponse:
        media_ids, change = convert.media_change_from_proto(request)
        outcome = await self._registry.update_media(media_ids, change, writer=_writer())
        return convert.media_changed_to_proto(outcome)

    @handles_errors
    async def GetSeries(
        self, request: registry_pb2.GetSeriesRequest, context: Context
    ) -> registry_pb2.GetSeriesResponse:
        if request.origin:
            _checked("origin", check_id, "origin", request.origin)
        _checked("series_id", check_id, "series id", request.series_id)
        series = await self._registry.get_series(origin=request.origin, series_id=request.series_id)
        return registry_pb2.GetSeriesResponse(series=convert.series_to_proto(series))

    @handles_errors
    async def UpsertSeries(
        self, request: registry_pb2.UpsertSeriesRequest, context: Context
    ) -> registry_pb2.UpsertSeriesResponse:
        _checked("series_id", check_id, "series id", request.series_id)
        name = convert.series_name_from_proto(request)
        series, created = await self._registry.upsert_series(series_id=request.series_id, name=name)
        return registry_pb2.UpsertSeriesResponse(
            series=convert.series_to_proto(series), created=created
        )

    @handles_errors
    async def UpdateVictim(
        self, request: registry_pb2.UpdateVictimRequest, context: Context
    ) -> registry_pb2.UpdateVictimResponse:
        _checked("series_id", check_id, "series id", request.series_id)
        _checked("victim_id", check_id, "victim id", request.victim_id)
        status, desk = convert.victim_update_from_proto(request)
        victim, created = await self._registry.update_victim(
            series_id=request.series_id,
            victim_id=request.victim_id,
            status=status,
            responsible_desk=desk,
        )
        return registry_pb2.UpdateVictimResponse(
            victim=convert.victim_to_proto(victim), created=created
        )

    @handles_errors
    async def Dedup(
        self, request: registry_pb2.DedupRequest, context: Context
    ) -> registry_pb2.DedupResponse:
        asked, distance = dedup_from_proto(request, node_id=self._registry.node_id)
        if isinstance(asked, SeriesAsked):
            report = await self._dedup.report_series(
                origin=asked.origin,
                series_id=asked.series_id,
                page_token=asked.page_token,
                max_distance=distance,
            )
        else:
            report = await self._dedup.report_items(asked, max_distance=distance)
        return dedup_response_to_proto(report)

    @handles_errors
    async def GetStats(
        self, request: registry_pb2.GetStatsRequest, context: Context
    ) -> registry_pb2.GetStatsResponse:
        stats = await self._registry.stats()
        return registry_pb2.GetStatsResponse(
            node_id=stats.node_id,
            media_count=stats.media_count,
            retracted_count=stats.retracted_count,
            signal_counts=[
                registry_pb2.AlgorithmCount(
                    algorithm=common_pb2.HashAlgorithm.ValueType(algorithm), count=count
                )
                for algorithm, count in sorted(stats.signal_counts.items())
            ],
            series_count=stats.series_count,
            victim_counts=[
                registry_pb2.StatusCount(
                    status=common_pb2.IdentificationStatus.ValueType(status), count=count
                )
                for status, count in sorted(stats.victim_counts.items())
            ],
            pdq_index_size=stats.pdq_index_size,
            schema_version=stats.schema_version,
            started_at=convert.timestamp(stats.started_at),
        )


def _writer() -> Writer:
    """The verified caller of the call in progress as a writer. PermissionDenied without one:
    every write comes through the gateway or the node's admin socket, which name their caller
    (the internal port of a registry run apart refuses calls without a forwarded caller)."""
    caller = current_caller()
    return Writer(caller.writer, any_media=caller.changes_any_record)


def _checked(field: str, check: Callable[..., object], *args: str) -> None:
    try:
        check(*args)
    except InvalidArgument as error:
        raise error.within(field) from None


def _failed_batch(error: HashexError, number: int, stored: SubmitCounts) -> HashexError:
    """The same error, saying that batch `number` stored nothing and what the ones before did
    (a client whose stream failed must know what to send again)."""
    done = (
        f"the {number} batches before it were stored ({stored.received} media)"
        if number
        else "no batch of this stream was stored"
    )
    return type(error)(f"{error}; batch {number} stored nothing and {done}")


def _rejected_batch(error: InvalidArgument, number: int, stored: SubmitCounts) -> InvalidArgument:
    """The batch's problems addressed `batch[n].…`, saying what earlier batches stored."""
    problems = list(error.within(f"batch[{number}]").problems)
    if number:
        summary = (
            f"batch {number} was rejected and stored nothing; the {number} batches before it "
            f"were stored ({stored.received} media)"
        )
        problems.insert(0, FieldProblem("", summary))
    return InvalidArgument(problems)
