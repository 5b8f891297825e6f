"""A small forward-only migration runner: numbered `.sql` files, applied as one upgrade.

Files are named `NNNN_name.sql`, numbered from 0001 without gaps. Each service keeps its own
numbering (its *component*, by default the name of the package holding the directory, e.g.
`registry` for `services/registry/migrations`), so services sharing one database do not collide.
The `schema_version` table records what was applied with a SHA-256 of each file; a database
newer than the files, or a file edited after it was applied, is refused rather than guessed at.

A node's services share one database, so an upgrade is one plan over all their components
(`apply_migration_plan`): every component's files and the database's record are checked first
and any refusal comes before anything is applied; then every pending migration of every
component runs in one transaction (PostgreSQL DDL is transactional), so an upgrade applies whole
or not at all; a migration therefore must not manage transactions itself (no BEGIN/COMMIT, no
CREATE INDEX CONCURRENTLY). A role that may not create objects is told so in one line before
the transaction. Concurrent starters serialise on a PostgreSQL advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from services.core.db.health import is_connection_failure
from services.core.errors import FailedPrecondition

_log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Any fixed number: every runner in the database takes the same lock ("hashex" in ASCII).
_ADVISORY_LOCK_KEY = 0x686173686578

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    component  text        NOT NULL,
    version    integer     NOT NULL CHECK (version > 0),
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations in `directory` in order, or FailedPrecondition if they are misnumbered."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise FailedPrecondition(
                f"migration file {path.name} must be named NNNN_name.sql (lowercase, digits, _)"
            )
        data = path.read_bytes()
        version = int(match.group(1))
        if version in found:
            raise FailedPrecondition(f"two migration files have number {version:04d}")
        found[version] = Migration(
            version, match.group(2), data.decode("utf-8"), hashlib.sha256(data).hexdigest()
        )
    expected = list(range(1, len(found) + 1))
    if sorted(found) != expected:
        raise FailedPrecondition(
            f"migrations in {directory} must be numbered 0001 to {len(found):04d} without gaps"
        )
    return [found[v] for v in expected]


@dataclass(frozen=True)
class _Pending:
    component: str
    migration: Migration


async def apply_migration_plan(pool: Any, sources: Sequence[tuple[str, Path]]) -> dict[str, int]:
    """Bring every `(component, directory)` of `sources` up to its newest migration, in order,
    all in one transaction; return each component's version. Refuses (FailedPrecondition, one
    line) before applying anything when any component's files or record are wrong."""
    plan = _load_plan(sources)
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            pending = await _pending_migrations(connection, plan)
            if pending:
                await _check_privileges(connection)
                await _apply_all(connection, pending)
        finally:
            if not connection.is_closed():
                await connection.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return {component: len(migrations) for component, migrations in plan.items()}


async def apply_migrations(pool: Any, directory: Path, *, component: str | None = None) -> int:
    """Bring one component up to the newest migration in `directory`; return its version.
    A one-component `apply_migration_plan`: a node applies all of its components as one plan."""
    name = component or directory.parent.name
    return (await apply_migration_plan(pool, [(name, directory)]))[name]


async def schema_version(connection: Any, component: str) -> int:
    """The newest version of `component` applied to the database (0 for none)."""
    version = await connection.fetchval(
        "SELECT coalesce(max(version), 0) FROM schema_version WHERE component = $1", component
    )
    return int(version)


def _load_plan(sources: Sequence[tuple[str, Path]]) -> dict[str, list[Migration]]:
    plan: dict[str, list[Migration]] = {}
    for component, directory in sources:
        if component in plan:
            raise FailedPrecondition(f"migration component {component} is listed twice")
        plan[component] = load_migrations(directory)
    return plan


async def _pending_migrations(connection: Any, plan: dict[str, list[Migration]]) -> list[_Pending]:
    """What the plan would apply, in order, after checking every component against the record;
    reading the record creates nothing (a database already up to date needs no CREATE)."""
    try:
        recorded = await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        problems: list[str] = []
        pending: list[_Pending] = []
        for component, migrations in plan.items():
            applied = await _applied_checksums(connection, component) if recorded else {}
            problems += _problems_with(component, applied, migrations)
            pending += [_Pending(component, m) for m in migrations if m.version not in applied]
    except asyncpg.InsufficientPrivilegeError as exc:
        raise FailedPrecondition(await _privilege_refusal(connection, exc)) from exc
    if problems:
        raise FailedPrecondition("; ".join(problems) + "; nothing was applied")
    return pending


async def _check_privileges(connection: Any) -> None:
    """Creating tables, indexes and functions needs CREATE on the schema they land in."""
    row = await connection.fetchrow(
        "SELECT current_user AS role, current_schema() AS schema, "
        "coalesce(has_schema_privilege(current_schema(), 'CREATE'), false) AS may_create, "
        "(SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = current_schema()) "
        "AS owner"
    )
    if row["schema"] is None:
        raise FailedPrecondition(
            f"database role {row['role']} has no schema to create the node's tables in (its "
            "search_path names none that exists); set search_path or create the schema"
        )
    if not row["may_create"]:
        raise FailedPrecondition(
            f"database role {row['role']} lacks the CREATE privilege on schema {row['schema']}, "
            f"which applying migrations needs; grant it as {row['owner']} with: GRANT CREATE ON "
            f"SCHEMA {_quoted(row['schema'])} TO {_quoted(row['role'])}; or run the node as that "
            "schema's owner; nothing was applied"
        )


async def _apply_all(connection: Any, pending: list[_Pending]) -> None:
    current: _Pending | None = None
    try:
        async with connection.transaction():
            await connection.execute(_CREATE_VERSION_TABLE)
            for current in pending:
                await connection.execute(current.migration.sql)
                await connection.execute(
                    "INSERT INTO schema_version (component, version, name, checksum) "
                    "VALUES ($1, $2, $3, $4)",
                    current.component,
                    current.migration.version,
                    current.migration.name,
                    current.migration.checksum,
                )
    except asyncpg.InsufficientPrivilegeError as exc:
        raise FailedPrecondition(await _privilege_refusal(connection, exc, current)) from exc
    except asyncpg.PostgresError as exc:
        if is_connection_failure(exc) or current is None:
            raise
        raise FailedPrecondition(
            f"{current.component} migration {current.migration.file_name} failed on this "
            f"database ({_one_line(exc)}); nothing was applied"
        ) from exc
    for done in pending:
        _log.info("applied %s migration %s", done.component, done.migration.file_name)


async def _privilege_refusal(
    connection: Any, exc: BaseException, pending: _Pending | None = None
) -> str:
    """One line naming the role, what the server refused, and how to put it right."""
    what = (
        f"{pending.component} migration {pending.migration.file_name}"
        if pending is not None
        else "the node's migrations (reading schema_version)"
    )
    row = await connection.fetchrow("SELECT current_user AS role, current_schema() AS schema")
    role, schema = _quoted(row["role"]), _quoted(row["schema"] or "public")
    return (
        f"database role {row['role']} may not apply {what}: {_one_line(exc)}; run migrations as "
        f"the role that owns schema {schema} and the node's tables, or grant {role} what the "
        f"server names (to create tables: GRANT CREATE ON SCHEMA {schema} TO {role}); "
        "nothing was applied"
    )


async def _applied_checksums(connection: Any, component: str) -> dict[int, str]:
    rows = await connection.fetch(
        "SELECT version, checksum FROM schema_version WHERE component = $1", component
    )
    return {int(row["version"]): str(row["checksum"]) for row in rows}


def _problems_with(
    component: str, applied: dict[int, str], migrations: list[Migration]
) -> list[str]:
    known = {m.version: m for m in migrations}
    newest = max(applied, default=0)
    if newest > len(migrations):
        return [
            f"the database's {component} schema is at version {newest}, newer than this "
            f"program knows ({len(migrations)}); run a hashex release that includes it"
        ]
    return [
        f"{component} migration {known[version].file_name} was changed after it was "
        "applied to this database; restore the original file and put the change in "
        "a new numbered migration"
        for version, checksum in sorted(applied.items())
        if known[version].checksum != checksum
    ]


def _one_line(exc: BaseException) -> str:
    """The server's primary message (its detail and hint are for a developer, not this line)."""
    text = getattr(exc, "message", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
