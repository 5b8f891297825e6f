"""The change-log entries the registry writes for its records: each carries the full state of the
record after the change, as a serialized hashex.v1.ChangeEntry (the core change log stores and
serves the bytes; receivers parse them in services.sync.entries).

Entries are built as PendingEntry values whose bytes are made once the log has given them a seq
and a time, inside the writing transaction. Pure: no SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

from hashex.v1 import federation_pb2
from services.core.changelog.store import EntryEncoder, EntryKind, PendingEntry
from services.registry.convert import media_to_proto, series_to_proto, timestamp
from services.registry.model import MediaRecord, SeriesRecord

T = TypeVar("T")


def media_entry(seq: int, changed_at: datetime, media: MediaRecord) -> bytes:
    return federation_pb2.ChangeEntry(
        seq=seq, changed_at=timestamp(changed_at), media=media_to_proto(media)
    ).SerializeToString()


def retraction_entry(seq: int, changed_at: datetime, media_id: str) -> bytes:
    return federation_pb2.ChangeEntry(
        seq=seq,
        changed_at=timestamp(changed_at),
        retraction=federation_pb2.MediaRetraction(media_id=media_id),
    ).SerializeToString()


def series_entry(seq: int, changed_at: datetime, series: SeriesRecord) -> bytes:
    message = series_to_proto(series)
    message.ClearField("media_count")  # a count of the origin's store; meaningless elsewhere
    return federation_pb2.ChangeEntry(
        seq=seq, changed_at=timestamp(changed_at), series=message
    ).SerializeToString()


def media_changes(
    records: Sequence[MediaRecord], before: Mapping[str, MediaRecord]
) -> list[PendingEntry]:
    """Media states to log; a media the node held before carries that earlier state too, so a
    sender can withdraw the record from a peer that may no longer see it."""
    return [
        PendingEntry(
            EntryKind.MEDIA,
            _encoder(media_entry, r),
            media_before=_serialized(before[r.media_id]) if r.media_id in before else None,
        )
        for r in records
    ]


def retractions(records: Sequence[MediaRecord]) -> list[PendingEntry]:
    """Retractions of these media, each carrying the media as it stood (a sender withholds the
    retraction of a media the peer was never allowed to see: its id may be a hash)."""
    return [
        PendingEntry(
            EntryKind.RETRACTION,
            _encoder(retraction_entry, r.media_id),
            media_before=_serialized(r),
        )
        for r in records
    ]


def series_change(record: SeriesRecord) -> PendingEntry:
    return PendingEntry(EntryKind.SERIES, _encoder(series_entry, record))


def new_series(origin: str, series_ids: Sequence[str]) -> list[PendingEntry]:
    """Entries for series a submission created implicitly (unnamed, without victims); their
    time is the entry's own."""

    def encoder(series_id: str) -> EntryEncoder:
        def encode(seq: int, moment: datetime) -> bytes:
            return series_entry(seq, moment, SeriesRecord(origin, series_id, "", (), 0, moment))

        return encode

    return [PendingEntry(EntryKind.SERIES, encoder(sid)) for sid in sorted(series_ids)]


def _encoder(build: Callable[[int, datetime, T], bytes], subject: T) -> EntryEncoder:
    """`build` bound to one record: the entry's bytes once its seq and time are known."""
    return lambda seq, moment: build(seq, moment, subject)


def _serialized(record: MediaRecord) -> bytes:
    return media_to_proto(record).SerializeToString()
