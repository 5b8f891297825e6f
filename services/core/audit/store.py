"""Every SQL statement on the audit log: appending to it and reading it back.

Appends from every process sharing the database (gateways, pullers recording rejected batches)
serialise on one transaction-scoped advisory lock, so each new record reads the true last record
and extends the chain from it; two appenders can never both claim the same seq or fork the chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from services.core.audit.chain import GENESIS_DIGEST, AuditEntry, AuditRecord, seal_all
from services.core.db.pool import Database

COMPONENT = "audit"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed number shared by every appender ("hxaudit" in ASCII).
_APPEND_LOCK_KEY = 0x68786175646974
_PAGE = 5_000

_COLUMNS = (
    "seq, at, duration_ms, caller, fingerprint, role, method, request_messages, "
    "response_messages, request_digest, status, previous_digest, digest, calls"
)
_LAST_RECORD = f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1"  # noqa: S608
_INSERT = (
    f"INSERT INTO audit_log ({_COLUMNS}) "  # noqa: S608
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
_PAGE_AFTER = f"SELECT {_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"  # noqa: S608

# `hashex audit show` returns at most this many records per call (and MAX_SHOW_LIMIT at most).
DEFAULT_SHOW_LIMIT = 50
MAX_SHOW_LIMIT = 10_000


@dataclass(frozen=True)
class AuditHead:
    count: int
    digest: bytes


@dataclass(frozen=True)
class AuditQuery:
    """Filters of `hashex audit show`, each None for "any"; times as [since, until), seqs
    below before_seq."""

    limit: int = DEFAULT_SHOW_LIMIT
    caller: str | None = None
    method: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_seq: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_SHOW_LIMIT:
            raise ValueError(f"the limit must be between 1 and {MAX_SHOW_LIMIT}")


class AuditStore:
    """The audit log's named transactions on the node's database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Chain `entries` after the current last record and store them, in one transaction."""
        if not entries:
            return []
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _APPEND_LOCK_KEY)
            last = await conn.fetchrow(_LAST_RECORD)
            records = seal_all(list(entries), after=_record(last) if last else None)
            await conn.executemany(_INSERT, [_row(r) for r in records])
        return records

    async def append_spooled(
        self, entries: Sequence[AuditEntry], *, spool_id: str, drained_bytes: int
    ) -> list[AuditRecord]:
        """Chain entries read from spool file `spool_id` and note, in the same transaction, that
        its first `drained_bytes` are in the chain (a spool drained twice writes nothing twice)."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _APPEND_LOCK_KEY)
            last = await conn.fetchrow(_LAST_RECORD)
            records = seal_all(list(entries), after=_record(last) if last else None)
            if records:
                await conn.executemany(_INSERT, [_row(r) for r in records])
            await conn.execute(
                "INSERT INTO audit_spool_drained (spool_id, drained_bytes) VALUES ($1, $2) "
                "ON CONFLICT (spool_id) DO UPDATE SET drained_bytes = EXCLUDED.drained_bytes",
                spool_id,
                drained_bytes,
            )
        return records

    async def spool_drained_bytes(self, spool_id: str) -> int:
        """How much of spool file `spool_id` is already in the chain (0: none of it)."""
        async with self._db.connection() as conn:
            drained = await conn.fetchval(
                "SELECT drained_bytes FROM audit_spool_drained WHERE spool_id = $1", spool_id
            )
        return int(drained or 0)

    async def head(self) -> AuditHead:
        """The record count and the last record's digest (genesis for an empty log): what a
        signed checkpoint states. seq has no gaps, so the last seq is the count."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow("SELECT seq, digest FROM audit_log ORDER BY seq DESC LIMIT 1")
        if row is None:
            return AuditHead(0, GENESIS_DIGEST)
        return AuditHead(int(row["seq"]), bytes(row["digest"]))

    async def digest_at(self, seq: int) -> bytes | None:
        """The digest of record `seq` (genesis for 0); None when the log has no such record."""
        if seq == 0:
            return GENESIS_DIGEST
        async with self._db.connection() as conn:
            found = await conn.fetchval("SELECT digest FROM audit_log WHERE seq = $1", seq)
        return None if found is None else bytes(found)

    async def search(self, query: AuditQuery) -> list[AuditRecord]:
        """Records matching `query`, newest first, at most `query.limit` of them."""
        sql, args = search_statement(query)
        async with self._db.connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [_record(row) for row in rows]

    async def records(self, *, after_seq: int = 0) -> AsyncIterator[AuditRecord]:
        """Every record after `after_seq` in order, a page at a time (the log may be large)."""
        while True:
            async with self._db.connection() as conn:
                rows = await conn.fetch(_PAGE_AFTER, after_seq, _PAGE)
            for row in rows:
                yield _record(row)
            if len(rows) < _PAGE:
                return
            after_seq = int(rows[-1]["seq"])

    async def exists(self) -> bool:
        """False when nothing was ever audited on this database (no audit table yet)."""
        async with self._db.connection() as conn:
            found = await conn.fetchval("SELECT to_regclass('audit_log') IS NOT NULL")
        return bool(found)


def _row(record: AuditRecord) -> tuple[Any, ...]:
    e = record.entry
    return (
        record.seq,
        e.at,
        e.duration_ms,
        e.caller,
        e.fingerprint,
        e.role,
        e.method,
        e.request_messages,
        e.response_messages,
        e.request_digest,
        e.status,
        record.previous_digest,
        record.digest,
        e.calls,
    )


def _record(row: Any) -> AuditRecord:
    entry = AuditEntry(
        at=row["at"],
        duration_ms=int(row["duration_ms"]),
        caller=str(row["caller"]),
        fingerprint=str(row["fingerprint"]),
        role=str(row["role"]),
        method=str(row["method"]),
        request_messages=int(row["request_messages"]),
        response_messages=int(row["response_messages"]),
        request_digest=bytes(row["request_digest"]),
        status=str(row["status"]),
        calls=int(row["calls"]),
    )
    return AuditRecord(
        seq=int(row["seq"]),
        entry=entry,
        previous_digest=bytes(row["previous_digest"]),
        digest=bytes(row["digest"]),
    )


def search_statement(query: AuditQuery) -> tuple[str, list[Any]]:
    """The statement `search` runs and its arguments (the filters given, newest first; the
    migration 0003 indexes serve each filter)."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("caller", query.caller),
        ("method", query.method),
        ("status", query.status),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if query.since is not None:
        args.append(query.since)
        where.append(f"at >= ${len(args)}")
    if query.until is not None:
        args.append(query.until)
        where.append(f"at < ${len(args)}")
    if query.before_seq is not None:
        args.append(query.before_seq)
        where.append(f"seq < ${len(args)}")
    args.append(query.limit)
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    sql = (
        f"SELECT {_COLUMNS} FROM audit_log {condition}"  # noqa: S608  # columns are ours
        f"ORDER BY seq DESC LIMIT ${len(args)}"
    )
    return sql, args
