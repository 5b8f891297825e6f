"""Opening a node's database: an asyncpg pool on its external database's URL, or on the embedded
PostgreSQL in the node's data directory (which of the two: services/core/db/location.py); and
the one way the services' logic runs its stores' statements, `Database.transaction()` /
`Database.connection()`, so that a store never opens a transaction of its own and a caller that
needs several owners' writes in one transaction (sync applying a batch) passes the same
connection to each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import asyncpg

from services.core.db.embedded import EmbeddedServer, start_embedded
from services.core.db.health import (
    DatabaseHealth,
    Listener,
    is_connection_failure,
    probe_by_connecting,
)
from services.core.db.location import DatabaseLocation, ExternalDatabase
from services.core.errors import DATABASE_UNREACHABLE, FailedPrecondition, Unavailable

_log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "hashex"
_CLOSE_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 30.0
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


_PROBE_TIMEOUT_S = 5.0
_PROBE_INTERVAL_S = 5.0


@dataclass
class Database:
    """The pool the stores share, the embedded server to stop with it (if one was started), and
    whether it can be reached (`health`): a statement that fails for a connection reason is
    reported there and raised as Unavailable, so every caller answers UNAVAILABLE, never a
    server error, and the outage is logged once."""

    pool: Any
    # Where the pool points, safe to log: the password is masked.
    display_url: str
    embedded: EmbeddedServer | None = field(default=None, repr=False)
    # The unmasked URL, for the health probe's own connections; None: probe through the pool.
    url: str | None = field(default=None, repr=False)
    health: DatabaseHealth = field(init=False, repr=False)
    _watch: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        embedded = self.embedded
        self.health = DatabaseHealth(
            probe=(
                probe_by_connecting(self.url, timeout_s=_PROBE_TIMEOUT_S)
                if self.url
                else self._probe_through_pool
            ),
            interval_s=_PROBE_INTERVAL_S,
            restart=(
                (lambda: asyncio.to_thread(embedded.restart_if_stopped))
                if embedded is not None
                else None
            ),
        )

    def watch(self, listeners: Sequence[Listener]) -> asyncio.Task[None]:
        """Start probing the database (restarting a dead embedded server), telling `listeners`
        of each change; the task ends with EmbeddedServerLost when the embedded server cannot
        be restarted (the service must stop). `close()` ends it."""
        for listener in listeners:
            self.health.add_listener(listener)
        if self._watch is None:
            self._watch = asyncio.create_task(self.health.run(), name="database-health")
        return self._watch

    async def watched_until_lost(self) -> None:
        """Wait while the database is watched; raise what ended the watch (EmbeddedServerLost).
        Returns at once when nothing watches it."""
        if self._watch is not None:
            await asyncio.shield(self._watch)

    async def _probe_through_pool(self) -> None:
        await self.pool.fetchval("SELECT 1", timeout=_PROBE_TIMEOUT_S)

    @asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, isolation: str | None = None
    ) -> AsyncIterator[Any]:
        """A connection inside one transaction, committed when the block ends normally and rolled
        back when it raises. `isolation` is asyncpg's name ("repeatable_read", ...; None: the
        server's default, read committed)."""
        async with (
            self._reporting_outages(),
            self.pool.acquire() as conn,
            conn.transaction(isolation=isolation, readonly=readonly),
        ):
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection for statements that each stand alone (reads that need no snapshot)."""
        async with self._reporting_outages(), self.pool.acquire() as conn:
            yield conn

    @asynccontextmanager
    async def _reporting_outages(self) -> AsyncIterator[None]:
        """A connection failure raised inside becomes Unavailable, reported to `health`."""
        try:
            yield
        except Exception as error:
            if not is_connection_failure(error):
                raise
            self.health.report_failure(error)
            raise Unavailable(DATABASE_UNREACHABLE) from error
        self.health.report_success()

    async def close(self) -> None:
        """Stop watching, close the pool (forcibly if connections stay busy), then stop the
        embedded server."""
        self.health.stop()
        if self._watch is not None:
            with contextlib.suppress(Exception):  # a lost server was reported when it happened
                await self._watch
        try:
            await asyncio.wait_for(self.pool.close(), timeout=_CLOSE_TIMEOUT_S)
        except TimeoutError:
            _log.warning("database connections still busy at close; terminating them")
            self.pool.terminate()
        finally:
            if self.embedded is not None:
                await asyncio.to_thread(self.embedded.stop)
        _log.info("database %s closed", self.display_url)


async def open_database(
    location: DatabaseLocation, *, min_size: int = 1, max_size: int = 10
) -> Database:
    """A pool on the external database's URL, or on database `hashex` of the embedded server in
    `data_dir / "pg"` (started, and the database created, as needed). Only an EmbeddedDatabase
    ever starts a server: see services/core/db/location.py."""
    if isinstance(location, ExternalDatabase):
        url = location.url
        _log.info("opening the node's external database (URL from %s)", location.source)
        pool = await _create_pool(url, min_size=min_size, max_size=max_size)
        return Database(pool=pool, display_url=mask_database_url(url), url=url)
    data_dir = location.data_dir
    server = await asyncio.to_thread(start_embedded, location.pgdata, runtime_dir=data_dir / "run")
    try:
        await ensure_database(server.uri(), EMBEDDED_DATABASE)
        url = server.uri(EMBEDDED_DATABASE)
        pool = await _create_pool(url, min_size=min_size, max_size=max_size)
    except BaseException:
        await asyncio.to_thread(server.stop)
        raise
    return Database(pool=pool, display_url=url, embedded=server, url=url)


async def ensure_database(admin_url: str, name: str) -> bool:
    """Create database `name` through `admin_url` unless it exists; True when it was created."""
    connection = await _connect(admin_url)
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await connection.execute(f"CREATE DATABASE {_quote_identifier(name)}")
        except asyncpg.DuplicateDatabaseError:
            return False  # another process created it meanwhile
        _log.info("created database %s", name)
        return True
    finally:
        await connection.close()


def mask_database_url(url: str) -> str:
    """`url` with any password replaced by `***`, in URL or `key=value` form."""
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    head, authority, tail = _split_authority(url)
    user, sep, password = authority.rpartition("@")[0].partition(":")
    if sep and password:
        authority = f"{user}:***@{authority.rpartition('@')[2]}"
    return head + authority + _QUERY_PASSWORD.sub(r"\1***", tail)


async def _create_pool(url: str, *, min_size: int, max_size: int) -> Any:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=_CONNECT_TIMEOUT_S,
            server_settings={"application_name": "hashex"},
        )
    except ValueError as exc:
        raise FailedPrecondition(_malformed(url, exc)) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unavailable(_cannot_connect(url, exc)) from exc
    _log.info("database pool open on %s", mask_database_url(url))
    return pool


async def _connect(url: str) -> Any:
    try:
        return await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT_S)
    except ValueError as exc:
        raise FailedPrecondition(_malformed(url, exc)) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unavailable(_cannot_connect(url, exc)) from exc


def _cannot_connect(url: str, exc: BaseException) -> str:
    return f"cannot connect to the database at {mask_database_url(url)}: {_scrubbed(url, exc)}"


def _malformed(url: str, exc: BaseException) -> str:
    return f"the database URL {mask_database_url(url)} is malformed: {_scrubbed(url, exc)}"


def _scrubbed(url: str, exc: BaseException) -> str:
    """The error's text with the URL's password blanked, should a driver ever echo it."""
    text = str(exc) or type(exc).__name__
    for secret in _passwords(url):
        text = text.replace(secret, "***")
    return text


def has_password(url: str) -> bool:
    """Whether `url` carries a password (in URL or `key=value` form)."""
    return bool(_passwords(url))


def _passwords(url: str) -> list[str]:
    if "://" not in url:
        found = [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(url)]
    else:
        _, authority, tail = _split_authority(url)
        found = [authority.rpartition("@")[0].partition(":")[2]]
        found += [m.group(2) for m in _QUERY_PASSWORD.finditer(tail)]
    return [p for secret in found if secret for p in {secret, unquote(secret)}]


def _split_authority(url: str) -> tuple[str, str, str]:
    """`scheme://`, the authority (`user:password@host:port`) and the rest of a URL."""
    scheme, sep, rest = url.partition("://")
    ends = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
    end = min(ends, default=len(rest))
    return scheme + sep, rest[:end], rest[end:]


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
