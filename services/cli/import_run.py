"""The import loop: records read from a file go to the node in batches, one SubmitMedia call per
batch (each stored in one transaction, with its own deadline), and the resume point is saved
after each batch the node has stored.

A record the node refuses (it would take a stored media past the contract's limits) is named by
the node's BadRequest detail (`batch[0].media[17]...`): it is counted as rejected with its
position in the file and the rest of its batch is sent again. With `strict`, the first refusal
ends the import instead. While the node stores a batch the next one is read and checked, so
reading the file costs no time of its own.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hashex.v1 import registry_pb2, registry_pb2_grpc
from services.cli import exit_codes
from services.cli.formats.records import FormatError, Position, ReadRecord, Rejected
from services.cli.import_batches import Defaults, Prepared, prepare
from services.cli.import_state import ImportCounts, StateFile
from services.cli.node_client import CommandFailed
from services.core.errors import InvalidArgument

# Batches at the node at once: while one is written, the next is received and checked.
IN_FLIGHT = 2
_MEDIA_FIELD = re.compile(r"^batch\[0\]\.media\[(\d+)\](?:\.(.*))?$")


@dataclass
class ImportOptions:
    defaults: Defaults
    batch_size: int
    timeout_s: float
    strict: bool = False


@dataclass
class _InFlight:
    future: grpc.Future[registry_pb2.SubmitMediaResponse]
    batch: list[Prepared]
    # The number of its last record in the file.
    last_record: int
    # The counts as they stand once this batch is stored: those of the records up to
    # `last_record` (the state saved after it must not count records read since).
    counts: ImportCounts


@dataclass
class ImportRun:
    """One pass over a file's records, `skip` of them already handled by an earlier run."""

    stub: registry_pb2_grpc.RegistryStub
    options: ImportOptions
    state: StateFile | None
    reject: Callable[[Position, str], None]
    advance: Callable[[int], None]
    counts: ImportCounts = field(default_factory=ImportCounts)
    skip: int = 0
    _named: set[str] = field(default_factory=set)
    _advanced: int = 0
    # Batches the node is storing, oldest first.
    _in_flight: list[_InFlight] = field(default_factory=list)

    def run(self, records: Iterator[ReadRecord]) -> ImportCounts:
        """Send every record after the first `skip`; the counts include the earlier run's."""
        batch: list[Prepared] = []
        ids: set[str] = set()
        number = 0
        try:
            for record in records:
                number += 1
                if number <= self.skip:
                    continue
                self.counts.read += 1
                prepared = self._prepared(record)
                if prepared is not None:
                    if prepared.media_id in ids:
                        # A media twice in one batch is refused: the second goes in the next
                        # batch, sent once the first is stored, and merges into it.
                        self._send(batch, number - 1)
                        self._settle_all()
                        batch, ids = [], set()
                    batch.append(prepared)
                    ids.add(prepared.media_id)
                if len(batch) >= self.options.batch_size:
                    self._send(batch, number)
                    batch, ids = [], set()
        except FormatError:
            # The records read before the file went wrong are stored all the same.
            self._finish(batch, number)
            raise
        self._finish(batch, number)
        return self.counts

    def _finish(self, batch: list[Prepared], number: int) -> None:
        if batch:
            self._send(batch, number)
        self._settle_all()
        if number > self.skip + self._advanced:  # rejected records after the last batch
            self.advance(number - self.skip - self._advanced)
            self._advanced = number - self.skip
            if self.state is not None:
                self.state.save(number, self.counts)

    def _prepared(self, record: ReadRecord) -> Prepared | None:
        if isinstance(record, Rejected):
            self._rejected(record.position, record.reason)
            return None
        try:
            prepared = prepare(record, self.options.defaults)
        except InvalidArgument as error:
            self._rejected(record.position, str(error))
            return None
        self.counts.add_unused(record.unused_fields)
        return prepared

    def _rejected(self, position: Position, reason: str) -> None:
        self.counts.rejected += 1
        self.reject(position, reason)

    def _send(self, batch: list[Prepared], last_record: int) -> None:
        """Start storing `batch`, with at most IN_FLIGHT batches at the node at once."""
        while len(self._in_flight) >= IN_FLIGHT:
            self._settle()
        self._name_series(batch)
        future = self._submit(batch)
        self._in_flight.append(_InFlight(future, batch, last_record, copy.deepcopy(self.counts)))

    def _submit(self, batch: list[Prepared]) -> grpc.Future[registry_pb2.SubmitMediaResponse]:
        return self.stub.SubmitMedia.future(
            iter([registry_pb2.SubmitMediaRequest(media=[p.message for p in batch])]),
            timeout=self.options.timeout_s,
        )

    def _settle_all(self) -> None:
        while self._in_flight:
            self._settle()

    def _settle(self) -> None:
        """Wait for the oldest batch in flight; count it and save the resume point after it
        (batches are settled in file order, whatever order the node stored them in)."""
        if not self._in_flight:
            return
        oldest = self._in_flight.pop(0)
        future, batch, last_record = oldest.future, oldest.batch, oldest.last_record
        # The counts the state saved after this batch holds, and those of the batches after it,
        # which were sent before this one was counted.
        snapshots = [oldest.counts, *(later.counts for later in self._in_flight)]
        while True:
            try:
                response = future.result()
                break
            except grpc.RpcError as error:
                refused = _refused_media(error)
                if refused is None or self.options.strict or not batch:
                    raise
                batch = self._drop_refused(batch, refused, snapshots)
                if not batch:
                    response = registry_pb2.SubmitMediaResponse()
                    break
                future = self._submit(batch)
        for counts in (self.counts, *snapshots):
            counts.imported += response.created
            counts.merged += response.updated
            counts.duplicate += response.unchanged
            counts.retracted += response.retracted
        self.advance(last_record - self.skip - self._advanced)
        self._advanced = last_record - self.skip
        if self.state is not None:
            self.state.save(last_record, oldest.counts)

    def _drop_refused(
        self, batch: list[Prepared], refused: dict[int, str], snapshots: list[ImportCounts]
    ) -> list[Prepared]:
        """Count the records the node refused as rejected, in the live counts and in those the
        states saved after this batch and the later ones hold."""
        for index in sorted(refused):
            if index < len(batch):
                for counts in snapshots:
                    counts.rejected += 1
                self._rejected(
                    batch[index].record.position, f"refused by the node: {refused[index]}"
                )
        return [p for i, p in enumerate(batch) if i not in refused]

    def _name_series(self, batch: list[Prepared]) -> None:
        """Give the series this batch creates the names the file gives them (once per run)."""
        for prepared in batch:
            for series_id, name in prepared.series_names.items():
                if series_id in self._named:
                    continue
                self.stub.UpsertSeries(
                    registry_pb2.UpsertSeriesRequest(series_id=series_id, name=name[:200]),
                    timeout=self.options.timeout_s,
                )
                self._named.add(series_id)


def _refused_media(error: grpc.RpcError) -> dict[int, str] | None:
    """The media of the batch the node refused, by index, when every problem names one."""
    if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    status = rpc_status.from_call(error)
    if status is None:
        return None
    refused: dict[int, str] = {}
    for detail in status.details:
        if not detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            continue
        bad_request = error_details_pb2.BadRequest()
        detail.Unpack(bad_request)
        for violation in bad_request.field_violations:
            if not violation.field:
                continue  # the summary line ("batch 3 was rejected ...")
            match = _MEDIA_FIELD.match(violation.field)
            if match is None:
                return None
            where = f"{match.group(2)}: " if match.group(2) else ""
            refused.setdefault(int(match.group(1)), where + violation.description)
    return refused or None


def interrupted(
    counts: ImportCounts, state: StateFile | None, why: str, exit_code: int = exit_codes.NODE_ERROR
) -> CommandFailed:
    """Why the import stopped, what it stored, and how to go on (`exit_code`: the failure's
    own, so a refusal stays a refusal)."""
    stored = counts.imported + counts.merged + counts.duplicate
    resume = (
        "; run the same command again to resume after the last stored batch"
        if state is not None and state.path.exists()
        else ""
    )
    return CommandFailed(
        exit_code,
        f"{why}; {counts.read:,} records read and {stored:,} stored before it stopped{resume}",
    )
