"""Audit records of calls made while the database is down: kept in the local spool (0600,
bounded, drained exactly once) and written in order into the chain when the database returns,
tested on a real node whose embedded PostgreSQL is killed under it (as
tests/registry/test_database_outage.py does)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from hashex.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.core.audit.chain import AuditEntry, ChainVerifier
from services.core.audit.recorder import AuditRecorder
from services.core.audit.spool import SPOOL_FILE, AuditSpool, SpoolFull
from services.core.audit.store import AuditStore
from tests.federation.harness import federation
from tests.gateway.harness import request_digest
from tests.store_calls import database_of
from tests.waiting import wait_for

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
OUTAGE_TIMEOUT_S = 60.0


def _entry(n: int) -> AuditEntry:
    return AuditEntry(
        at=T0 + timedelta(seconds=n),
        duration_ms=n,
        caller="spiffe://hashex/node/gb-nca/unit/alice",
        fingerprint="cd" * 32,
        role="unit",
        method="/hashex.v1.Registry/Lookup",
        request_messages=1,
        response_messages=0,
        request_digest=hashlib.sha256(str(n).encode()).digest(),
        status="UNAVAILABLE",
    )


async def test_a_spool_is_written_into_the_chain_once_and_in_order(
    db_pool: Any, tmp_path: Path
) -> None:
    spool = AuditSpool(tmp_path / SPOOL_FILE)
    spool.append([_entry(1), _entry(2)])
    spool.append([_entry(3)])
    assert stat.S_IMODE((tmp_path / SPOOL_FILE).stat().st_mode) == 0o600
    store = AuditStore(database_of(db_pool))
    with spool.draining() as spooled:  # a crash after the first record's commit
        assert spooled is not None
        await store.append_spooled(
            spooled.entries[:1], spool_id=spooled.spool_id, drained_bytes=spooled.ends[0]
        )
    with (tmp_path / SPOOL_FILE).open("ab") as cut:
        cut.write(b'{"at_us":')  # and a line cut short by a crash while it was written
    recorder = AuditRecorder(store, spool=spool)
    await recorder.drain_spool()
    await recorder.record(_entry(4))
    records = [r async for r in store.records()]
    assert [r.entry for r in records] == [_entry(n) for n in (1, 2, 3, 4)]
    assert not spool.pending()
    verifier = ChainVerifier()
    assert all(verifier.check(r) is None for r in records)


def test_a_full_spool_refuses_the_record_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = AuditSpool(tmp_path / SPOOL_FILE, max_bytes=1_000)
    spool.append([_entry(1)])
    with pytest.raises(SpoolFull):
        spool.append([_entry(n) for n in range(2, 10)])
    with pytest.raises(SpoolFull):
        spool.append([_entry(n) for n in range(2, 10)])
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.ERROR


def _lookup(n: int) -> registry_pb2.LookupRequest:
    return registry_pb2.LookupRequest(
        signals=[common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value=f"{n:032x}")]
    )


async def test_calls_made_while_postgres_is_down_are_audited_in_order(
    pg_server: Any, node_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with federation(["gb-nca"], node_data_dir, pg_server, embedded=["gb-nca"]) as fed:
        agency = fed["gb-nca"]
        registry = registry_pb2_grpc.RegistryStub(agency.unit_channel())
        await registry.Lookup(_lookup(0), timeout=10)
        embedded = agency.running.database.embedded
        assert embedded is not None
        os.kill(embedded.postmaster_pid, signal.SIGKILL)

        during: list[bytes] = []
        counter = iter(range(1, 10_000))

        def spooled() -> bool:
            return any("kept in the spool" in r.getMessage() for r in caplog.records)

        async def calls_met_the_outage() -> bool:
            """Calls until three failed and a record went to the spool. Should the supervisor
            restart PostgreSQL before that (it can take 0.3 s, so two calls may be all that
            failed), kill it again."""
            request = _lookup(next(counter))
            try:
                await registry.Lookup(request, timeout=10)
            except grpc.aio.AioRpcError:
                during.append(request_digest(request.SerializeToString()))
            else:
                if not (len(during) >= 3 and spooled()):
                    assert embedded is not None
                    os.kill(embedded.postmaster_pid, signal.SIGKILL)
            return len(during) >= 3 and spooled()

        await wait_for(calls_met_the_outage, OUTAGE_TIMEOUT_S, "no call met the outage")

        async def all_audited() -> bool:
            try:
                rows = await agency.fetch("SELECT request_digest FROM audit_log ORDER BY seq")
            except Exception:
                return False
            digests = [bytes(r["request_digest"]) for r in rows]
            return all(d in digests for d in during)

        await wait_for(all_audited, OUTAGE_TIMEOUT_S, "the spooled records did not arrive")
        await registry.Lookup(_lookup(0), timeout=10)
        rows = await agency.fetch("SELECT request_digest, status FROM audit_log ORDER BY seq")
        digests = [bytes(r["request_digest"]) for r in rows]
        positions = [digests.index(d) for d in during]
        assert positions == sorted(positions)
        assert "UNAVAILABLE" in {rows[p]["status"] for p in positions}
        assert not (agency.data_dir / SPOOL_FILE).exists()

        verify = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli.main", "audit", "verify",
            "--data-dir", str(agency.data_dir),
            env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(verify.communicate(), timeout=60)
        assert verify.returncode == 0, out
        assert f"intact: {len(rows)} records".encode() in out
