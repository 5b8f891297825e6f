"""An upgrade over all of a node's components applies whole or not at all: every refusal comes
before anything is applied, a failing migration leaves every component as it was, and a role
that may not create tables is told so in one line."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from services.core.db.migrations import apply_migration_plan
from services.core.errors import FailedPrecondition
from tests.core.test_db import write_migrations


@pytest.fixture
async def plain_role(empty_database: str) -> AsyncIterator[str]:
    """A login role with no privilege beyond PUBLIC's: on PostgreSQL 15 and later that includes
    no CREATE on schema public. No password: the session's server trusts local connections."""
    name = f"plain_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(empty_database)
    try:
        try:
            await admin.execute(f'CREATE ROLE "{name}" LOGIN')
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("the test server's role may not create roles")
        yield name
        await admin.execute(f'DROP OWNED BY "{name}"')
        await admin.execute(f'DROP ROLE "{name}"')
    finally:
        await admin.close()


def url_as(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}:@{parts.netloc.rpartition('@')[2]}"))


def components(tmp_path: Path, **files: dict[str, str]) -> list[tuple[str, Path]]:
    return [
        (name, write_migrations(tmp_path / name / "migrations", migrations))
        for name, migrations in files.items()
    ]


async def recorded(pool: Any) -> list[tuple[str, int]]:
    if await pool.fetchval("SELECT to_regclass('schema_version')") is None:
        return []
    rows = await pool.fetch("SELECT component, version FROM schema_version ORDER BY 1, 2")
    return [(row["component"], row["version"]) for row in rows]


KEY_TABLE = "CREATE TABLE a_key (x int PRIMARY KEY);"


async def test_a_plan_applies_every_component_and_again_changes_nothing(
    pool: Any, tmp_path: Path
) -> None:
    plan = components(
        tmp_path,
        alpha={"0001_a.sql": "CREATE TABLE a (x int);", "0002_a.sql": "ALTER TABLE a ADD y int;"},
        beta={"0001_b.sql": "CREATE TABLE b (x int REFERENCES a_key (x));"},
    )
    plan.insert(0, ("base", write_migrations(tmp_path / "base", {"0001_k.sql": KEY_TABLE})))
    assert await apply_migration_plan(pool, plan) == {"base": 1, "alpha": 2, "beta": 1}
    before = await pool.fetch("SELECT * FROM schema_version ORDER BY component, version")
    assert await apply_migration_plan(pool, plan) == {"base": 1, "alpha": 2, "beta": 1}
    assert await pool.fetch("SELECT * FROM schema_version ORDER BY component, version") == before
    assert await recorded(pool) == [("alpha", 1), ("alpha", 2), ("base", 1), ("beta", 1)]


async def test_a_component_newer_than_the_code_refuses_before_any_is_applied(
    pool: Any, tmp_path: Path
) -> None:
    plan = components(
        tmp_path, alpha={"0001_a.sql": "CREATE TABLE a (x int);"}, beta={"0001_b.sql": "SELECT 1;"}
    )
    await apply_migration_plan(pool, plan[1:])  # beta at version 1, alpha never applied
    await pool.execute(
        "INSERT INTO schema_version (component, version, name, checksum) "
        "VALUES ('beta', 2, 'future', 'x')"
    )
    with pytest.raises(FailedPrecondition) as refused:
        await apply_migration_plan(pool, plan)
    assert str(refused.value) == (
        "the database's beta schema is at version 2, newer than this program knows (1); run a "
        "hashex release that includes it; nothing was applied"
    )
    assert await pool.fetchval("SELECT to_regclass('a')") is None
    assert await recorded(pool) == [("beta", 1), ("beta", 2)]


async def test_an_edited_migration_refuses_before_any_is_applied(pool: Any, tmp_path: Path) -> None:
    plan = components(tmp_path, alpha={"0001_a.sql": "SELECT 1;"}, beta={"0001_b.sql": "SELECT 2;"})
    await apply_migration_plan(pool, plan)
    write_migrations(plan[0][1], {"0002_a.sql": "CREATE TABLE a2 (x int);"})
    write_migrations(plan[1][1], {"0001_b.sql": "SELECT 3;"})
    with pytest.raises(FailedPrecondition, match=r"beta migration 0001_b\.sql was changed"):
        await apply_migration_plan(pool, plan)
    assert await pool.fetchval("SELECT to_regclass('a2')") is None
    assert await recorded(pool) == [("alpha", 1), ("beta", 1)]


async def test_a_failing_migration_leaves_every_component_untouched(
    pool: Any, tmp_path: Path
) -> None:
    plan = components(
        tmp_path,
        alpha={"0001_a.sql": "CREATE TABLE a (x int);"},
        beta={"0001_b.sql": "CREATE TABLE b (x int); INSERT INTO b VALUES ('not a number');"},
    )
    with pytest.raises(FailedPrecondition) as refused:
        await apply_migration_plan(pool, plan)
    assert str(refused.value).startswith("beta migration 0001_b.sql failed on this database (")
    assert str(refused.value).endswith("); nothing was applied")
    for table in ("a", "b", "schema_version"):
        assert await pool.fetchval("SELECT to_regclass($1)", table) is None


async def test_a_role_without_create_is_told_in_one_line_how_to_grant_it(
    pool: Any, empty_database: str, plain_role: str, tmp_path: Path
) -> None:
    plan = components(tmp_path, alpha={"0001_a.sql": "CREATE TABLE a (x int);"})
    as_role = await asyncpg.create_pool(url_as(empty_database, plain_role), min_size=1, max_size=1)
    try:
        with pytest.raises(FailedPrecondition) as refused:
            await apply_migration_plan(as_role, plan)
        assert "\n" not in str(refused.value)
        assert str(refused.value).startswith(
            f"database role {plain_role} lacks the CREATE privilege on schema public, which "
            f"applying migrations needs; grant it as pg_database_owner with: GRANT CREATE ON "
            f'SCHEMA "public" TO "{plain_role}";'
        )
        assert await recorded(pool) == []

        await pool.execute(f'GRANT CREATE ON SCHEMA public TO "{plain_role}"')  # as told
        assert await apply_migration_plan(as_role, plan) == {"alpha": 1}
    finally:
        await as_role.close()


async def test_a_privilege_refused_while_applying_is_one_line_and_applies_nothing(
    pool: Any, empty_database: str, plain_role: str, tmp_path: Path
) -> None:
    await pool.execute(
        f'CREATE TABLE theirs (x int); GRANT CREATE ON SCHEMA public TO "{plain_role}"'
    )
    plan = components(
        tmp_path,
        alpha={"0001_a.sql": "CREATE TABLE a (x int);"},
        beta={"0001_b.sql": "ALTER TABLE theirs ADD y int;"},
    )
    as_role = await asyncpg.create_pool(url_as(empty_database, plain_role), min_size=1, max_size=1)
    try:
        with pytest.raises(FailedPrecondition) as refused:
            await apply_migration_plan(as_role, plan)
    finally:
        await as_role.close()
    assert str(refused.value).startswith(
        f"database role {plain_role} may not apply beta migration 0001_b.sql: must be owner of "
        "table theirs; run migrations as the role that owns schema"
    )
    assert "\n" not in str(refused.value)
    assert await pool.fetchval("SELECT to_regclass('a')") is None
    assert await recorded(pool) == []


async def test_nothing_to_apply_needs_no_create_privilege(
    pool: Any, empty_database: str, plain_role: str, tmp_path: Path
) -> None:
    plan = components(tmp_path, alpha={"0001_a.sql": "CREATE TABLE a (x int);"})
    await apply_migration_plan(pool, plan)
    await pool.execute(f'GRANT SELECT ON schema_version TO "{plain_role}"')
    as_role = await asyncpg.create_pool(url_as(empty_database, plain_role), min_size=1, max_size=1)
    try:
        assert await apply_migration_plan(as_role, plan) == {"alpha": 1}
    finally:
        await as_role.close()


def test_a_component_listed_twice_is_refused(tmp_path: Path) -> None:
    plan = components(tmp_path, alpha={"0001_a.sql": "SELECT 1;"})
    with pytest.raises(FailedPrecondition, match="component alpha is listed twice"):
        asyncio.run(apply_migration_plan(None, plan * 2))
