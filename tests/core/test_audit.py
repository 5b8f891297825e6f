"""The audit log: the hash chain (pure), the store on real PostgreSQL, its migration taking over
the table an earlier release created, and `hashex audit verify` finding the first tampered
record."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.cli.main import main as hashex_main
from services.core.audit.chain import AuditEntry, ChainVerifier, seal_all
from services.core.audit.recorder import AuditRecorder
from services.core.audit.refusals import OVERFLOW_CALLER, RefusalWindows
from services.core.audit.store import MIGRATIONS_DIR, AuditQuery, AuditStore, search_statement
from services.core.config import write_config
from services.core.db.location import EmbeddedDatabase
from services.core.db.migrations import apply_migrations
from services.core.db.pool import open_database
from services.core.node_claim import store as node_claim
from tests.store_calls import database_of

T0 = datetime(2026, 11, 2, 9, 30, 0, 123456, tzinfo=UTC)


def _entry(n: int, status: str = "OK") -> AuditEntry:
    return AuditEntry(
        at=T0 + timedelta(seconds=n),
        duration_ms=n,
        caller="spiffe://hashex/node/us-fbi",
        fingerprint="ab" * 32,
        role="peer",
        method="/hashex.v1.Federation/Pull",
        request_messages=1,
        response_messages=n,
        request_digest=hashlib.sha256(str(n).encode()).digest(),
        status=status,
    )


def test_chain_verifies_and_names_the_first_altered_record() -> None:
    records = seal_all([_entry(n) for n in range(5)], after=None)
    verifier = ChainVerifier()
    assert all(verifier.check(r) is None for r in records)
    assert (verifier.count, verifier.last_digest) == (5, records[-1].digest)

    altered = list(records)
    altered[2] = replace(records[2], entry=replace(records[2].entry, status="PERMISSION_DENIED"))
    verifier = ChainVerifier()
    broken = [verifier.check(r) for r in altered][-1]
    assert broken is not None and broken.seq == 3 and "contents" in broken.reason

    verifier = ChainVerifier()
    broken = [verifier.check(r) for r in records[:2] + records[3:]][-1]  # one deleted
    assert broken is not None and broken.seq == 4


async def test_store_appends_a_chain_that_reads_back_identically(db_pool: Any) -> None:
    store = AuditStore(database_of(db_pool))
    recorder = AuditRecorder(store)
    stored = await asyncio.gather(*(recorder.record(_entry(n)) for n in range(50)))
    assert sorted(r.seq for r in stored) == list(range(1, 51))
    read = [r async for r in store.records()]
    assert read == sorted(stored, key=lambda r: r.seq)
    verifier = ChainVerifier()
    assert all(verifier.check(r) is None for r in read)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db_pool.execute("UPDATE audit_log SET status = 'OK' WHERE seq = 1")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db_pool.execute("DELETE FROM audit_log")


async def test_the_audit_migration_takes_over_the_log_an_earlier_release_created(
    empty_database: str, tmp_path: Path
) -> None:
    """Releases before 0.2 created audit_log as migration 1 of the `gateway` component: the
    audit component's first migration finds it, keeps every record and the triggers."""
    then = tmp_path / "then"
    then.mkdir()
    first = MIGRATIONS_DIR / "0001_audit_log.sql"
    (then / first.name).write_bytes(first.read_bytes())
    pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
    try:
        await apply_migrations(pool, then, component="gateway")  # as then
        await pool.executemany(  # records as that release wrote them (no `calls` column)
            "INSERT INTO audit_log VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            [_old_row(r) for r in seal_all([_entry(n) for n in range(3)], after=None)],
        )
        await apply_migrations(pool, MIGRATIONS_DIR)
        versions = await pool.fetch("SELECT component, version FROM schema_version ORDER BY 1, 2")
        assert [tuple(v) for v in versions] == [
            ("audit", 1),
            ("audit", 2),
            ("audit", 3),
            ("gateway", 1),
        ]
        verifier = ChainVerifier()
        assert [verifier.check(r) async for r in AuditStore(database_of(pool)).records()] == [
            None
        ] * 3
        assert [r.seq async for r in AuditStore(database_of(pool)).records()] == [1, 2, 3]
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await pool.execute("DELETE FROM audit_log")
        triggers = await pool.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass"
            " AND NOT tgisinternal"
        )
        assert triggers == 2
    finally:
        await pool.close()


def _old_row(record: Any) -> tuple[Any, ...]:
    e = record.entry
    return (
        record.seq, e.at, e.duration_ms, e.caller, e.fingerprint, e.role, e.method,
        e.request_messages, e.response_messages, e.request_digest, e.status,
        record.previous_digest, record.digest,
    )  # fmt: skip


async def _fill_log(url: str, count: int) -> None:
    """gb-nca's database (claimed, as its first start does) with `count` audit records."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await _as_node_started(pool, "gb-nca")
        await AuditStore(database_of(pool)).append([_entry(n) for n in range(count)])
    finally:
        await pool.close()


async def _as_node_started(pool: Any, node_id: str) -> None:
    """What a node's first start leaves: the database claimed for it, its audit table."""
    await apply_migrations(pool, node_claim.MIGRATIONS_DIR, component=node_claim.COMPONENT)
    await apply_migrations(pool, MIGRATIONS_DIR)
    async with pool.acquire() as conn:
        await node_claim.claim_database(conn, node_id=node_id, case_key_fingerprint=None)


async def _tamper(url: str, seq: int) -> None:
    connection = await asyncpg.connect(url)
    try:  # someone with the power to switch the trigger off
        await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await connection.execute(
            "UPDATE audit_log SET status = 'OK', response_messages = 0 WHERE seq = $1", seq
        )
    finally:
        await connection.close()


def test_audit_verify_passes_then_names_the_tampered_record(
    empty_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_config(tmp_path, node_id="gb-nca", database="external")
    monkeypatch.setenv("DATABASE_URL", empty_database)
    verify = ["audit", "verify", "--data-dir", str(tmp_path)]
    # No node ever ran here: not "intact: 0 records", which would vouch for a log never kept.
    assert hashex_main(verify) == 3
    assert "no node has started on this database yet" in capsys.readouterr().err

    asyncio.run(_fill_log(empty_database, 7))
    assert hashex_main(verify) == 0
    assert "intact: 7 records" in capsys.readouterr().out

    asyncio.run(_tamper(empty_database, 4))
    assert hashex_main(verify) == 1
    error = capsys.readouterr().err
    assert "ALTERED at record 4" in error and "3 records before it are intact" in error

    other = tmp_path / "us-fbi"
    other.mkdir()
    write_config(other, node_id="us-fbi", database="external")
    assert hashex_main(["audit", "verify", "--data-dir", str(other)]) == 3
    assert "this database belongs to node 'gb-nca', not 'us-fbi'" in capsys.readouterr().err


async def test_audit_verify_shares_the_embedded_database_of_a_running_node(
    node_data_dir: Path,
) -> None:
    """The node holds its embedded PostgreSQL; `hashex audit verify` in another process joins
    it, checks, and lets go without stopping it under the node."""
    write_config(node_data_dir, node_id="gb-nca")
    database = await open_database(EmbeddedDatabase(node_data_dir))
    try:
        await _as_node_started(database.pool, "gb-nca")
        await AuditStore(database).append([_entry(n) for n in range(3)])
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        verify = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli.main",
            "audit",
            "verify",
            "--data-dir",
            str(node_data_dir),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(verify.communicate(), timeout=60)
        assert verify.returncode == 0
        assert b"intact: 3 records" in out
        assert await database.pool.fetchval("SELECT count(*) FROM audit_log") == 3
    finally:
        await database.close()


def test_refusal_windows_bound_the_rows_of_many_callers() -> None:
    """Callers beyond the open windows' bound (an unauthenticated caller picks the identity it
    presents) share one overflow window per outcome: the rows stay bounded, the count exact."""
    windows = RefusalWindows(window_s=60.0, max_open=2)
    refused = [
        replace(_entry(n, "PERMISSION_DENIED"), caller=f"spiffe://hashex/node/x{n}")
        for n in range(6)
    ]
    written = [windows.admit(entry, now=0.0).entry for entry in refused]
    assert [e.caller if e else None for e in written] == [
        refused[0].caller, refused[1].caller, OVERFLOW_CALLER, None, None, None,
    ]  # fmt: skip
    assert windows.due(now=59.9) == []
    [overflow] = windows.due(now=60.0)
    assert (overflow.caller, overflow.method, overflow.calls) == (OVERFLOW_CALLER, "*", 3)
    assert windows.admit(refused[0], now=61.0).entry == refused[0]  # a new window


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (AuditQuery(caller="spiffe://hashex/node/us-fbi"), "audit_log_caller_seq_idx"),
        (AuditQuery(method="/hashex.v1.Federation/Pull"), "audit_log_method_seq_idx"),
        (AuditQuery(since=T0, until=T0 + timedelta(hours=1)), "audit_log_at_brin_idx"),
    ],
)
async def test_audit_show_filters_are_served_by_an_index(
    db_pool: Any, query: AuditQuery, index: str
) -> None:
    """Without them a filtered page read the whole log (seq scans are priced out: the test
    table is small enough that the planner would otherwise scan it anyway)."""
    sql, args = search_statement(query)
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
    assert index in plan, plan
