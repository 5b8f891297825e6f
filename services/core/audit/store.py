"""Every SQL statement on the audit log: appending to it and reading it back.

Appends from every process sharing the database (gateways, pullers recording rejected batches)
serialise on one transaction-scoped advisory lock, so each new record reads the true last record
and extends the chain from it; two appenders can never both claim the same seq or fork the chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from services.core.audit.chain import AuditEntry, AuditRecord, seal_all
from services.core.db.pool import Database

COMPONENT = "audit"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed number shared by every appender ("hxaudit" in ASCII).
_APPEND_LOCK_KEY = 0x68786175646974
_PAGE = 5_000

_COLUMNS = (
    "seq, at, duration_ms, caller, fingerprint, role, method, request_messages, "
    "response_messages, request_digest, status, previous_digest, digest"
)
_LAST_RECORD = f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1"  # noqa: S608
_INSERT = (
    f"INSERT INTO audit_log ({_COLUMNS}) "  # noqa: S608
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
)
_PAGE_AFTER = f"SELECT {_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"  # noqa: S608


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
    )
    return AuditRecord(
        seq=int(row["seq"]),
        entry=entry,
        previous_digest=bytes(row["previous_digest"]),
        digest=bytes(row["digest"]),
    )
