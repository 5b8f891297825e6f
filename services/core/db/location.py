"""Where a node's database lives: chosen once, at `hashex node init`, and recorded in node.toml
as `database = "embedded"` (a PostgreSQL in the data directory's pg/, started by the node) or
`database = "external"` (a server the agency runs; its URL from `DATABASE_URL` or the 0600 file
keys/database-url, never from a file others can read).

No command ever starts an embedded PostgreSQL for a node that chose an external database: a
node without its URL would otherwise run on an empty database of its own and report it as the
truth ("audit log intact: 0 records"). A URL given to a node that chose the embedded database is
refused as well: running the same node on two databases splits its records between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from services.core.errors import FailedPrecondition
from services.core.secretfile import read_secret

DatabaseChoice = Literal["embedded", "external"]
EMBEDDED: DatabaseChoice = "embedded"
EXTERNAL: DatabaseChoice = "external"
# The URL of an external database (it may hold a password), relative to the data directory.
DATABASE_URL_FILE = Path("keys") / "database-url"
DATABASE_URL_ENV = "DATABASE_URL"


@dataclass(frozen=True)
class EmbeddedDatabase:
    """The PostgreSQL in `data_dir / "pg"`, started (or joined) by whoever opens it."""

    data_dir: Path

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pg"


@dataclass(frozen=True)
class ExternalDatabase:
    url: str = field(repr=False)
    # Where the URL came from, for messages: DATABASE_URL, node.toml or keys/database-url.
    source: str


DatabaseLocation = EmbeddedDatabase | ExternalDatabase


def locate_database(
    *,
    choice: DatabaseChoice,
    data_dir: Path,
    config_file: Path,
    url: str | None,
    url_source: str,
) -> DatabaseLocation:
    """The database of the node in `data_dir`, which chose `choice` in `config_file`; `url` is
    the URL given in node.toml or the environment (`url_source` says which). FailedPrecondition,
    naming where the URL is expected or what contradicts the choice, when they do not agree."""
    url_file = data_dir / DATABASE_URL_FILE
    if choice == EMBEDDED:
        if url:
            raise FailedPrecondition(
                f'{config_file} chooses the embedded database (database = "embedded"), but '
                f"{url_source} names a database: unset {DATABASE_URL_ENV} for this node, or, "
                f'to move the node to that database, set database = "external" in {config_file}'
            )
        if url_file.exists():
            raise FailedPrecondition(
                f'{config_file} chooses the embedded database (database = "embedded"), but '
                f"{url_file} names a database: remove {url_file}, or set "
                f'database = "external" in {config_file}'
            )
        return EmbeddedDatabase(data_dir)
    if url:
        return ExternalDatabase(url, source=url_source)
    if not url_file.exists():
        raise FailedPrecondition(
            f'{config_file} chooses an external database (database = "external"), but no URL '
            f"is given: set {DATABASE_URL_ENV}, or write the URL to {url_file} (mode 0600, "
            f"e.g. `hashex node init --database external --database-url-file - "
            f"--data-dir {data_dir}` reading it from stdin); no embedded PostgreSQL is started "
            "for this node"
        )
    text = read_secret(url_file).decode("utf-8", errors="replace").strip()
    if not text:
        raise FailedPrecondition(f"{url_file} is empty: write the database URL into it")
    return ExternalDatabase(text, source=str(url_file))
