"""`hashex audit verify`: recompute the gateway's audit hash chain and say whether it is intact.

It reads the node's database directly (the one chosen at `hashex node init`: external, or the
embedded PostgreSQL in the data directory), not through the gateway: the check must not depend
on the service it checks. With the embedded database it may run while the node is up: the
embedded server is shared between processes on the same data directory (each process holds it;
the last to let go stops it). It never starts an embedded server for a node that chose an
external database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.cli import exit_codes
from services.cli.node_client import add_data_dir_option, run_command
from services.core.audit.chain import ChainBreak, ChainVerifier
from services.core.audit.store import AuditStore
from services.core.config import load_config
from services.core.db.location import DatabaseLocation
from services.core.db.pool import open_database
from services.core.node_claim.store import check_claimed_by

# The check ran and found the log altered (as `lookup` uses 1 for "ran, found nothing").
LOG_ALTERED = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser(
        "audit",
        help="check the gateway's audit log",
        description="Commands on the gateway's append-only, hash-chained audit log.",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="recompute the audit log's hash chain",
        description=(
            "Recompute the hash chain of every audit record in the node's database "
            "(the one its node.toml chooses: external, or embedded in --data-dir; the node may be "
            "running). "
            "Prints the record count and the last digest when intact: keep them elsewhere, so "
            "that records cut off the end can be noticed later too."
        ),
        epilog=(
            "exit codes: 0 intact; 1 altered (the first record that does not fit is named); "
            "3 the database could not be read"
        ),
    )
    add_data_dir_option(verify)
    verify.set_defaults(func=lambda ns: run_command(_verify, ns))


def _verify(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    verifier, broken = asyncio.run(_check(config.database_location(), node_id=config.node_id))
    if broken is not None:
        print(
            f"audit log ALTERED at record {broken.seq}: {broken.reason} "
            f"({verifier.count} records before it are intact)",
            file=sys.stderr,
        )
        return LOG_ALTERED
    print(f"audit log intact: {verifier.count} records, last digest {verifier.last_digest.hex()}")
    return exit_codes.OK


async def _check(
    location: DatabaseLocation, *, node_id: str
) -> tuple[ChainVerifier, ChainBreak | None]:
    database = await open_database(location, max_size=2)
    try:
        async with database.connection() as conn:
            await check_claimed_by(conn, node_id=node_id)
        store = AuditStore(database)
        verifier = ChainVerifier()
        if not await store.exists():
            return verifier, None
        async for record in store.records():
            broken = verifier.check(record)
            if broken is not None:
                return verifier, broken
        return verifier, None
    finally:
        await database.close()
