"""A small forward-only migration runner: numbered `.sql` files, one transaction each.

Files are named `NNNN_name.sql`, numbered from 0001 without gaps. Each service keeps its own
numbering (its *component*, by default the name of the package holding the directory, e.g.
`registry` for `services/registry/migrations`), so services sharing one database do not collide.
The `schema_version` table records what was applied with a SHA-256 of each file; a database
newer than the files, or a file edited after it was applied, is refused rather than guessed at.
Concurrent starters serialise on a PostgreSQL advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


async def apply_migrations(pool: Any, directory: Path, *, component: str | None = None) -> int:
    """Bring the database up to the newest migration in `directory`; return its version."""
    migrations = load_migrations(directory)
    component = component or directory.parent.name
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            await connection.execute(_CREATE_VERSION_TABLE)
            applied = await _applied_checksums(connection, component)
            _check_applied(component, applied, migrations)
            for migration in migrations:
                if migration.version not in applied:
                    await _apply_one(connection, component, migration)
        finally:
            if not connection.is_closed():
                await connection.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return len(migrations)


async def apply_migration_plan(pool: Any, sources: Sequence[tuple[str, Path]]) -> int:
    """Apply the migrations of every (component, directory) in order; the version of the
    first."""
    versions = [
        await apply_migrations(pool, directory, component=component)
        for component, directory in sources
    ]
    return versions[0]


async def schema_version(connection: Any, component: str) -> int:
    """The newest version of `component` applied to the database (0 for none)."""
    version = await connection.fetchval(
        "SELECT coalesce(max(version), 0) FROM schema_version WHERE component = $1", component
    )
    return int(version)


async def _applied_checksums(connection: Any, component: str) -> dict[int, str]:
    rows = await connection.fetch(
        "SELECT version, checksum FROM schema_version WHERE component = $1", component
    )
    return {int(row["version"]): str(row["checksum"]) for row in rows}


def _check_applied(component: str, applied: dict[int, str], migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    newest = max(applied, default=0)
    if newest > len(migrations):
        raise FailedPrecondition(
            f"the database's {component} schema is at version {newest}, newer than this "
            f"program knows ({len(migrations)}); run a hashex release that includes it"
        )
    for version, checksum in sorted(applied.items()):
        if known[version].checksum != checksum:
            raise FailedPrecondition(
                f"{component} migration {known[version].file_name} was changed after it was "
                "applied to this database; restore the original file and put the change in "
                "a new numbered migration"
            )


async def _apply_one(connection: Any, component: str, migration: Migration) -> None:
    async with connection.transaction():
        await connection.execute(migration.sql)
        await connection.execute(
            "INSERT INTO schema_version (component, version, name, checksum) "
            "VALUES ($1, $2, $3, $4)",
            component,
            migration.version,
            migration.name,
            migration.checksum,
        )
    _log.info("applied %s migration %s", component, migration.file_name)
