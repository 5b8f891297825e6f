"""The database layer: the embedded server really starts, keeps data and really stops (also when a
previous owner was killed); the migration runner applies, skips and refuses as it should."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.core.db.embedded import (
    HANDLE_PIDS_FILE,
    clear_dead_handle_pids,
    is_process_alive,
    start_embedded,
)
from services.core.db.location import EmbeddedDatabase, ExternalDatabase
from services.core.db.migrations import apply_migrations, load_migrations
from services.core.db.pool import mask_database_url, open_database
from services.core.errors import FailedPrecondition, Unavailable
from services.registry.store import MIGRATIONS_DIR as REGISTRY_MIGRATIONS

# Started in a child process that is then killed: it holds the server and waits forever.
_OWNER = """
import sys
from pathlib import Path
from services.core.db.embedded import start_embedded
server = start_embedded(Path(sys.argv[1]), runtime_dir=Path(sys.argv[2]))
print(server.postmaster_pid, flush=True)
sys.stdin.read()
"""


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


async def test_embedded_database_survives_a_restart_and_stops_fully(node_data_dir: Path) -> None:
    database = await open_database(EmbeddedDatabase(node_data_dir))
    assert database.embedded is not None
    first_pid = database.embedded.postmaster_pid
    await database.pool.execute(
        "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')"
    )
    await database.close()
    assert not is_process_alive(first_pid)
    assert json.loads((node_data_dir / "pg" / HANDLE_PIDS_FILE).read_text()) == []

    database = await open_database(EmbeddedDatabase(node_data_dir))
    try:
        assert database.embedded is not None
        assert database.embedded.postmaster_pid != first_pid
        assert await database.pool.fetchval("SELECT v FROM kept") == "still here"
        assert await database.pool.fetchval("SELECT current_database()") == "hashex"
    finally:
        await database.close()
    assert not is_process_alive(database.embedded.postmaster_pid)


async def test_a_server_left_by_a_killed_owner_is_reused_and_stopped(node_data_dir: Path) -> None:
    pgdata, runtime = node_data_dir / "pg", node_data_dir / "run"
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OWNER,
        str(pgdata),
        str(runtime),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert owner.stdout is not None
    orphan_pid = int(await asyncio.wait_for(owner.stdout.readline(), timeout=120))
    try:
        owner.send_signal(signal.SIGKILL)
        await owner.wait()
        assert is_process_alive(orphan_pid)
        assert owner.pid in json.loads((pgdata / HANDLE_PIDS_FILE).read_text())

        server = await asyncio.to_thread(start_embedded, pgdata, runtime_dir=runtime)
        try:
            assert server.postmaster_pid == orphan_pid
            assert json.loads((pgdata / HANDLE_PIDS_FILE).read_text()) == [os.getpid()]
        finally:
            await asyncio.to_thread(server.stop)
        assert not is_process_alive(orphan_pid)
    finally:
        if is_process_alive(orphan_pid):  # the test failed: leave no server behind
            os.kill(orphan_pid, signal.SIGQUIT)


def test_only_dead_pids_are_cleared(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / HANDLE_PIDS_FILE).write_text(json.dumps([dead.pid, os.getpid()]))
    assert clear_dead_handle_pids(tmp_path) == [os.getpid()]
    assert json.loads((tmp_path / HANDLE_PIDS_FILE).read_text()) == [os.getpid()]


async def test_an_unreachable_database_is_unavailable_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://hashex:s3cret-pw@127.0.0.1:1/hashex"
    with pytest.raises(Unavailable) as raised:
        await open_database(ExternalDatabase(url, source="a test"))
    assert "s3cret-pw" not in str(raised.value)
    assert "hashex:***@127.0.0.1:1" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p%40ss@db:5432/x", "postgresql://u:***@db:5432/x"),
        (
            "postgresql://u@db/x?password=pw&sslmode=require",
            "postgresql://u@db/x?password=***&sslmode=require",
        ),
        ("host=db user=u password='a b' dbname=x", "host=db user=u password=*** dbname=x"),
        (
            "postgresql://postgres:@/hashex?host=/tmp/pg",
            "postgresql://postgres:@/hashex?host=/tmp/pg",
        ),
        ("postgresql:///x?host=/tmp/pg", "postgresql:///x?host=/tmp/pg"),
    ],
)
def test_database_urls_are_masked(url: str, masked: str) -> None:
    assert mask_database_url(url) == masked


_REGISTRY_VERSIONS = len(list(REGISTRY_MIGRATIONS.glob("*.sql")))


async def test_migrations_apply_to_an_empty_database(pool: Any) -> None:
    assert await apply_migrations(pool, REGISTRY_MIGRATIONS) == _REGISTRY_VERSIONS
    tables = {
        r["tablename"]
        for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    expected = {"media", "signals", "series", "media_series", "victims", "case_records"}
    local = {"change_log", "schema_version", "media_submitters", "series_clusters"}
    local |= {"media_links", "media_link_truncated", "series_links", "linkage_events"}
    local |= {"linkage_pending_media", "linkage_pending_series"}
    assert expected | local == tables
    row = await pool.fetchrow("SELECT * FROM schema_version WHERE version = 1")
    file = REGISTRY_MIGRATIONS / "0001_initial.sql"
    assert (row["component"], row["version"], row["name"]) == ("registry", 1, "initial")
    assert row["checksum"] == hashlib.sha256(file.read_bytes()).hexdigest()


async def test_rerunning_migrations_changes_nothing(pool: Any) -> None:
    await apply_migrations(pool, REGISTRY_MIGRATIONS)
    before = await pool.fetch("SELECT * FROM schema_version")
    assert await apply_migrations(pool, REGISTRY_MIGRATIONS) == _REGISTRY_VERSIONS
    assert await pool.fetch("SELECT * FROM schema_version") == before


async def test_concurrent_runners_apply_each_migration_once(pool: Any, tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "svc" / "migrations",
        {"0001_a.sql": "CREATE TABLE a (x int);", "0002_b.sql": "CREATE TABLE b (x int);"},
    )
    versions = await asyncio.gather(*(apply_migrations(pool, directory) for _ in range(3)))
    assert versions == [2, 2, 2]
    assert await pool.fetchval("SELECT count(*) FROM schema_version WHERE component = 'svc'") == 2


async def test_a_newer_database_is_refused(pool: Any, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "svc" / "migrations", {"0001_a.sql": "SELECT 1;"})
    await apply_migrations(pool, directory)
    await pool.execute(
        "INSERT INTO schema_version (component, version, name, checksum) "
        "VALUES ('svc', 2, 'future', 'x')"
    )
    with pytest.raises(FailedPrecondition, match="at version 2, newer than this program knows"):
        await apply_migrations(pool, directory)


async def test_an_applied_file_that_changed_is_refused(pool: Any, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "svc" / "migrations", {"0001_a.sql": "SELECT 1;"})
    await apply_migrations(pool, directory)
    write_migrations(directory, {"0001_a.sql": "SELECT 2;", "0002_b.sql": "SELECT 3;"})
    with pytest.raises(FailedPrecondition, match=r"0001_a\.sql was changed after it was applied"):
        await apply_migrations(pool, directory)
    assert await pool.fetchval("SELECT max(version) FROM schema_version") == 1


async def test_a_failing_migration_applies_nothing_and_names_its_file(
    pool: Any, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "svc" / "migrations",
        {
            "0001_a.sql": "CREATE TABLE a (x int);",
            "0002_b.sql": "CREATE TABLE b (x int); SELECT no_such_function();",
        },
    )
    with pytest.raises(FailedPrecondition) as refused:
        await apply_migrations(pool, directory)
    assert str(refused.value) == (
        "svc migration 0002_b.sql failed on this database (function no_such_function() does "
        "not exist); nothing was applied"
    )
    assert isinstance(refused.value.__cause__, asyncpg.UndefinedFunctionError)
    assert await pool.fetchval("SELECT to_regclass('schema_version')") is None
    assert await pool.fetchval("SELECT to_regclass('a')") is None


async def test_components_are_numbered_independently(pool: Any, tmp_path: Path) -> None:
    one = write_migrations(tmp_path / "one" / "migrations", {"0001_a.sql": "SELECT 1;"})
    two = write_migrations(tmp_path / "two" / "migrations", {"0001_b.sql": "SELECT 2;"})
    assert await apply_migrations(pool, one) == 1
    assert await apply_migrations(pool, two) == 1


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"0001_a.sql": "", "0003_c.sql": ""}, "without gaps"),
        ({"1_a.sql": ""}, "must be named NNNN_name.sql"),
        ({"0001_a.sql": "", "0001_b.sql": ""}, "two migration files have number 0001"),
    ],
)
def test_misnumbered_migrations_are_refused(
    tmp_path: Path, files: dict[str, str], problem: str
) -> None:
    with pytest.raises(FailedPrecondition, match=problem):
        load_migrations(write_migrations(tmp_path / "m", files))
