"""Building blocks shared by the sync tests: media and series records, entries, batches."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from services.core.algorithms import Algorithm, SignalValue
from services.registry.change_entries import media_entry, retraction_entry, series_entry
from services.registry.model import (
    Category,
    CategoryScheme,
    IdentificationStatus,
    MediaFlags,
    MediaRecord,
    MediaType,
    SeriesRecord,
    VictimRecord,
)
from services.sync.batches import Cursor, VerifiedBatch, digest_of
from services.sync.entries import parse_entry

NO_FLAGS = MediaFlags()
ORIGIN = "gb-nca"
RECIPIENT = "us-fbi"
MOMENT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def md5(seed: str) -> SignalValue:
    return SignalValue(Algorithm.MD5, hashlib.md5(seed.encode()).digest())


def sha1(seed: str) -> SignalValue:
    return SignalValue(Algorithm.SHA1, hashlib.sha1(seed.encode()).digest())


def sha256(seed: str) -> SignalValue:
    return SignalValue(Algorithm.SHA256, hashlib.sha256(seed.encode()).digest())


def pdq(seed: str, quality: int | None = 90) -> SignalValue:
    return SignalValue(Algorithm.PDQ, hashlib.sha256(b"pdq" + seed.encode()).digest(), quality)


def media_record(
    media_id: str,
    *signals: SignalValue,
    category: Category | None = None,
    series_ids: tuple[str, ...] = (),
    flags: MediaFlags = NO_FLAGS,
    origin: str = ORIGIN,
) -> MediaRecord:
    return MediaRecord(
        row_id=0,
        origin=origin,
        media_id=media_id,
        signals=signals or (md5(media_id),),
        media_type=MediaType.IMAGE,
        category=category,
        flags=flags,
        series_ids=series_ids,
        first_seen=MOMENT,
    )


def series_record(
    series_id: str, name: str = "", victims: tuple[tuple[str, int, str], ...] = ()
) -> SeriesRecord:
    return SeriesRecord(
        origin=ORIGIN,
        series_id=series_id,
        name=name,
        victims=tuple(
            VictimRecord(v, IdentificationStatus(status), desk, MOMENT)
            for v, status, desk in victims
        ),
        media_count=0,
        updated_at=MOMENT,
    )


CAID_A = Category(CategoryScheme.CAID_UK, "A")
CAID_B = Category(CategoryScheme.CAID_UK, "B")


def media_at(seq: int, record: MediaRecord) -> bytes:
    return media_entry(seq, MOMENT, record)


def retraction_at(seq: int, media_id: str) -> bytes:
    return retraction_entry(seq, MOMENT, media_id)


def series_at(seq: int, record: SeriesRecord) -> bytes:
    return series_entry(seq, MOMENT, record)


def verified(
    entries: list[bytes], *, first: int, last: int, generation: int = 1, tag: bytes = b""
) -> VerifiedBatch:
    """A batch as verify_batch would hand it over (for store tests that skip signing)."""
    return VerifiedBatch(
        origin=ORIGIN,
        first_seq=first,
        last_seq=last,
        generation=generation,
        origin_last_seq=last,
        digest=digest_of(b"%d-%d-%d" % (first, last, generation) + tag),
        changes=tuple(parse_entry(e, origin=ORIGIN) for e in entries),
        new_keys=(),
    )


def after(batch: VerifiedBatch) -> Cursor:
    return batch.cursor
