"""`hashex audit show`: filtered, bounded, newest first; a table or JSON in the one style (snake
case, short lowercase outcomes, numbers as numbers, zero counts present); bad options exit 2
with one line, never a traceback."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.cli.main import main as hashex_main
from services.core.audit.chain import AuditEntry
from services.core.audit.store import MIGRATIONS_DIR, AuditStore
from services.core.config import write_config
from services.core.db.migrations import apply_migrations
from services.core.node_claim import store as node_claim
from tests.store_calls import database_of

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ALICE = "spiffe://hashex/node/gb-nca/unit/alice"
BOB = "spiffe://hashex/node/gb-nca/unit/bob"
LOOKUP = "/hashex.v1.Registry/Lookup"


def _entry(n: int, caller: str, status: str = "OK", calls: int = 1) -> AuditEntry:
    return AuditEntry(
        at=T0 + timedelta(minutes=n),
        duration_ms=0,
        caller=caller,
        fingerprint="ab" * 32,
        role="unit",
        method=LOOKUP,
        request_messages=1,
        response_messages=0,
        request_digest=hashlib.sha256(str(n).encode()).digest(),
        status=status,
        calls=calls,
    )


async def _fill(url: str) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        # What the node's first start leaves: the database claimed for it, its audit table.
        await apply_migrations(pool, node_claim.MIGRATIONS_DIR, component=node_claim.COMPONENT)
        async with pool.acquire() as conn:
            await node_claim.claim_database(conn, node_id="gb-nca", case_key_fingerprint=None)
        await apply_migrations(pool, MIGRATIONS_DIR)
        entries = [_entry(n, ALICE if n % 2 else BOB) for n in range(10)]
        entries[7] = replace(entries[7], status="PERMISSION_DENIED", calls=40)
        await AuditStore(database_of(pool)).append(entries)
    finally:
        await pool.close()


@pytest.fixture
def node(empty_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_config(tmp_path, node_id="gb-nca", database="external")
    monkeypatch.setenv("DATABASE_URL", empty_database)
    asyncio.run(_fill(empty_database))
    return tmp_path


def _show(node: Path, *args: str) -> list[str]:
    return ["audit", "show", "--data-dir", str(node), *args]


def test_show_filters_bounds_and_orders_newest_first(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hashex_main(_show(node, "--caller", ALICE, "--limit", "3", "--json")) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["order"], shown["count"], shown["more"]) == ("newest_first", 3, True)
    assert [r["seq"] for r in shown["records"]] == [10, 8, 6]
    first = shown["records"][0]
    assert first["caller"] == ALICE and first["response_messages"] == 0  # zero counts present
    assert (shown["records"][1]["outcome"], shown["records"][1]["calls"]) == (
        "permission_denied",
        40,
    )

    assert hashex_main(_show(node, "--outcome", "permission_denied", "--json")) == 0
    assert [r["seq"] for r in json.loads(capsys.readouterr().out)["records"]] == [8]

    since, until = (T0 + timedelta(minutes=2)).isoformat(), (T0 + timedelta(minutes=4)).isoformat()
    assert hashex_main(_show(node, "--since", since, "--until", until, "--json")) == 0
    assert [r["seq"] for r in json.loads(capsys.readouterr().out)["records"]] == [4, 3]

    assert hashex_main(_show(node, "--before", "3")) == 0
    table = capsys.readouterr().out.splitlines()
    header = ["SEQ", "AT", "CALLER", "METHOD", "OUTCOME", "CALLS", "MS", "IN", "OUT"]
    assert table[0].split() == header
    assert [line.split()[0] for line in table[1:3]] == ["2", "1"]
    assert table[-1] == "(newest first)"


def test_show_refuses_bad_options_in_one_line(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hashex_main(_show(node, "--limit", "0")) == 2
    assert "--limit must be between 1 and 10000" in capsys.readouterr().err
    assert hashex_main(_show(node, "--since", "yesterday")) == 2
    error = capsys.readouterr().err
    assert "is not an ISO 8601 time" in error and "Traceback" not in error
