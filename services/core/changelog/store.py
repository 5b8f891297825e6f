"""Every SQL statement on the change log: the entries this node originates, in the order peers
replay them. The only writer of `change_log`; the registry (records) and sync (key rotations)
append through it inside their own transactions, and sync's sender reads pages of it.

Sequence numbers are dense. A writing transaction takes CHANGE_LOG_LOCK first (a
transaction-scoped advisory lock) and numbers its entries max(seq) + 1 onwards in a statement
issued after the lock, so a later seq is never committed before an earlier one and a reader that
sees seq N sees every seq below it. Taking the lock first also serialises this node's writers, so
the state a writer reads back for an entry is exactly the state its transaction leaves.

Each entry commits to the one before it (`chain`: see `link`), so the log's history can be
checked: a peer that holds the chain at some seq detects an origin restored, rewound or forked
below it.

An entry is stored as the exact bytes of a serialized hashex.v1.ChangeEntry; senders pass those
bytes through unchanged (and sign them) instead of re-serialising. This module never parses
them: what an entry holds is its writer's business (services.registry.change_entries,
services.sync.entries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

COMPONENT = "changelog"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed number shared by every writer of the log ("hxlog" in ASCII).
CHANGE_LOG_LOCK = 0x68786C6F67


class EntryKind(IntEnum):
    """The `kind` column: which member of ChangeEntry.change the entry sets."""

    MEDIA = 1
    RETRACTION = 2
    SERIES = 3
    KEY_ROTATION = 4
    KEY_REVOCATION = 5
    FLAG_STATE = 6


@dataclass(frozen=True)
class LogRow:
    """One stored entry as a sender reads it."""

    seq: int
    kind: EntryKind
    entry: bytes
    # The media as it stood before the change (retractions, changes of a held media); for the
    # sender's policy filter only, never sent.
    media_before: bytes | None = None
    # The log's chain digest at this entry (see `link`).
    chain: bytes = b""


_CHAIN_DOMAIN = b"hashex.v1.LogChain\0"


def link(previous: bytes, seq: int, entry: bytes) -> bytes:
    """chain(n) = SHA-256(domain || chain(n-1) || seq as 8 bytes big-endian || SHA-256(entry));
    chain(0) is empty. Migration 0002 computes the same in SQL for entries written before."""
    entry_digest = hashlib.sha256(entry).digest()
    return hashlib.sha256(_CHAIN_DOMAIN + previous + seq.to_bytes(8, "big") + entry_digest).digest()


EntryEncoder = Callable[[int, datetime], bytes]


@dataclass(frozen=True)
class PendingEntry:
    """An entry to append once its seq and time are known: its kind, how to encode it for them,
    and (media changes) the media as it stood before, for the sender's policy filter."""

    kind: EntryKind
    encode: EntryEncoder
    media_before: bytes | None = None


async def lock_change_log(conn: Any) -> None:
    """Take the writers' lock for the rest of the caller's transaction."""
    await conn.execute(_LOCK, CHANGE_LOG_LOCK)


async def append_entries(conn: Any, entries: Sequence[PendingEntry]) -> int:
    """Append `entries` in order (the caller holds the lock); returns the last seq written."""
    head = await conn.fetchrow(_HEAD)
    last, now = int(head["last_seq"]), head["now"]
    if not entries:
        return last
    chain = bytes(head["chain"] or b"")
    records = []
    for seq, entry in enumerate(entries, start=last + 1):
        data = entry.encode(seq, now)
        chain = link(chain, seq, data)
        records.append((seq, now, int(entry.kind), data, entry.media_before, chain))
    await conn.copy_records_to_table("change_log", records=records, columns=_COLUMNS)
    # Delivered at commit (and only then): senders holding a caught-up pull wake up.
    await conn.execute(_NOTIFY)
    return last + len(records)


async def last_seq(conn: Any) -> int:
    """The newest seq written (0 for an empty log)."""
    return int(await conn.fetchval(_LAST_SEQ))


async def chain_at(conn: Any, seq: int) -> bytes | None:
    """The chain digest at `seq` (empty at 0), None when the log does not reach it."""
    if seq == 0:
        return b""
    value = await conn.fetchval(_CHAIN_AT, seq)
    return bytes(value) if value is not None else None


async def read_page(conn: Any, *, after_seq: int, limit: int) -> list[LogRow]:
    """Up to `limit` entries after `after_seq`, in seq order."""
    return [_row(r) for r in await conn.fetch(_READ_PAGE, after_seq, limit)]


async def key_rotations(conn: Any) -> list[LogRow]:
    """Every signing-key rotation entry, in seq order (senders read them at every pull)."""
    return [_row(r) for r in await conn.fetch(_KEY_ROTATIONS)]


async def key_revocations(conn: Any) -> list[LogRow]:
    """Every signing-key revocation entry, in seq order (few: one per key revoked)."""
    return [_row(r) for r in await conn.fetch(_KEY_REVOCATIONS)]


def _row(r: Any) -> LogRow:
    before = r["media_before"]
    return LogRow(
        seq=r["seq"],
        kind=EntryKind(r["kind"]),
        entry=bytes(r["entry"]),
        media_before=bytes(before) if before is not None else None,
        chain=bytes(r["chain"]),
    )


_COLUMNS = ("seq", "changed_at", "kind", "entry", "media_before", "chain")
_LOCK = "SELECT pg_advisory_xact_lock($1)"
# A statement of its own after the lock, so its snapshot sees every entry committed before.
_HEAD = """
SELECT coalesce(max(seq), 0) AS last_seq, now() AS now,
       (SELECT chain FROM change_log ORDER BY seq DESC LIMIT 1) AS chain
FROM change_log
"""
_CHAIN_AT = "SELECT chain FROM change_log WHERE seq = $1"
# The channel LISTENed on by services.sync.log_watcher.
CHANGE_LOG_CHANNEL = "hashex_change_log"
_NOTIFY = f"SELECT pg_notify('{CHANGE_LOG_CHANNEL}', '')"
_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM change_log"
_READ_PAGE = """
SELECT seq, kind, entry, media_before, chain FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2
"""
# The literal 4 (EntryKind.KEY_ROTATION) lets the partial index on key rotations serve it.
_KEY_ROTATIONS = """
SELECT seq, kind, entry, media_before, chain FROM change_log WHERE kind = 4 ORDER BY seq
"""
_KEY_REVOCATIONS = """
SELECT seq, kind, entry, media_before, chain FROM change_log WHERE kind = 5 ORDER BY seq
"""
