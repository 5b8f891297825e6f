"""The change log's hash chain: every entry commits to the one before it, as written and as the
upgrade computes it for entries written before; batches carry it, and a receiver refuses a batch
whose start is not the history it applied."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hashex.v1 import federation_pb2
from services.core.changelog import store as changelog
from services.core.changelog.store import EntryKind, LogRow, PendingEntry, link
from services.core.db.migrations import apply_migration_plan
from services.core.signing import BATCH_DOMAIN, sign_bytes
from services.registry.store import MIGRATIONS as RECORD_MIGRATIONS
from services.sync.batches import BatchRejected, Cursor
from services.sync.policy import SharingPolicy
from tests.sync.helpers import ORIGIN, RECIPIENT, media_at, media_record
from tests.sync.test_batches import KEY1, chain, receive


def folded(entries: list[bytes]) -> list[bytes]:
    chains, previous = [], b""
    for seq, entry in enumerate(entries, start=1):
        previous = link(previous, seq, entry)
        chains.append(previous)
    return chains


async def append(conn: Any, entries: list[bytes]) -> None:
    async with conn.transaction():
        await changelog.lock_change_log(conn)
        await changelog.append_entries(
            conn,
            [PendingEntry(EntryKind.MEDIA, lambda seq, at, data=data: data) for data in entries],
        )


async def test_each_appended_entry_commits_to_the_one_before(db_pool: Any) -> None:
    entries = [b"first", b"second", b"third"]
    async with db_pool.acquire() as conn:
        await append(conn, entries[:2])
        await append(conn, entries[2:])  # a later transaction continues the chain
        rows = await changelog.read_page(conn, after_seq=0, limit=10)
        assert [r.chain for r in rows] == folded(entries)
        assert await changelog.chain_at(conn, 0) == b""
        assert await changelog.chain_at(conn, 2) == folded(entries)[1]
        assert await changelog.chain_at(conn, 4) is None
    assert len({r.chain for r in rows}) == 3
    assert link(b"", 1, b"first") != link(b"", 2, b"first") != link(b"x", 1, b"first")


async def test_the_upgrade_chains_entries_written_before_exactly_as_appends_do(
    empty_database: str, tmp_path: Path
) -> None:
    """A database of the release before: the change log without its chain column."""
    older = [(name, tmp_path / name) for name, _ in RECORD_MIGRATIONS]
    for (_, directory), (_, source) in zip(older, RECORD_MIGRATIONS, strict=True):
        shutil.copytree(source, directory)
    for later in sorted((tmp_path / "changelog").glob("*.sql"))[1:]:  # 0002_chain.sql on
        later.unlink()
    pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=2)
    try:
        await apply_migration_plan(pool, older)
        entries = [media_at(seq, media_record(f"m{seq}")) for seq in range(1, 6)]
        await pool.executemany(
            "INSERT INTO change_log (seq, changed_at, kind, entry) VALUES ($1, now(), 1, $2)",
            list(enumerate(entries, start=1)),
        )
        await apply_migration_plan(pool, RECORD_MIGRATIONS)
        async with pool.acquire() as conn:
            rows = await changelog.read_page(conn, after_seq=0, limit=10)
            assert [r.chain for r in rows] == folded(entries)
            await append(conn, [b"after the upgrade"])
            assert await changelog.chain_at(conn, 6) == link(
                rows[-1].chain, 6, b"after the upgrade"
            )
    finally:
        await pool.close()


def log_rows(entries: list[bytes], start: int = 1, previous: bytes = b"") -> list[LogRow]:
    rows = []
    for seq, entry in enumerate(entries, start=start):
        previous = link(previous, seq, entry)
        rows.append(LogRow(seq, EntryKind.MEDIA, entry, chain=previous))
    return rows


def test_batches_carry_the_chain_at_both_ends_and_the_cursor_keeps_it() -> None:
    rows = log_rows([media_at(s, media_record(f"m{s}")) for s in range(1, 6)])
    cursor, batches = receive(chain(SharingPolicy(), max_entries=2).batches(rows, 5), Cursor())
    assert [b.chain for b in batches] == [rows[1].chain, rows[3].chain, rows[4].chain]
    assert cursor.chain == rows[4].chain


def test_a_batch_that_does_not_continue_the_history_applied_is_refused() -> None:
    """The origin was restored to seq 2 and logged new entries 3-4: the receiver, which applied
    an older 3-4, is offered 5 chained from the new 4."""
    old = log_rows([media_at(s, media_record(f"m{s}")) for s in range(1, 5)])
    cursor, _ = receive(chain(SharingPolicy()).batches(old, 4), Cursor())
    new = log_rows([media_at(s, media_record(f"new{s}")) for s in (3, 4)], 3, old[1].chain)
    following = log_rows([media_at(5, media_record("m5"))], 5, new[-1].chain)
    sender = chain(SharingPolicy(), digest=cursor.digest)
    sender.previous_chain = new[-1].chain
    with pytest.raises(BatchRejected) as refused:
        receive(sender.batches(following, 5), cursor)
    assert refused.value.reason == "history_diverged"
    assert "log up to seq 4 is not the one applied here" in str(refused.value)
    assert f"hashex sync resync {ORIGIN}" in str(refused.value)


def test_an_origin_of_an_older_release_without_a_chain_is_still_accepted() -> None:
    body = federation_pb2.BatchBody(
        origin=ORIGIN,
        recipient=RECIPIENT,
        first_seq=1,
        last_seq=1,
        policy_generation=1,
        entries=[media_at(1, media_record("a"))],
    ).SerializeToString()
    signed = federation_pb2.SignedBatch(
        body=body, key_id=KEY1.key_id, signature=sign_bytes(KEY1, BATCH_DOMAIN, body)
    )
    cursor, [batch] = receive([signed], Cursor(generation=1))
    assert batch.chain == b"" and cursor.seq == 1
