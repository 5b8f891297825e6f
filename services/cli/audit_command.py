"""`hashex audit verify`: recompute the node's audit hash chain and say whether it is intact;
with `--against-peers`, also prove it against the checkpoints its peers keep of it
(services.cli.audit_witnesses). `hashex audit show`: read it (services.cli.audit_show).

They read the node's database directly (the one chosen at `hashex node init`: external, or
the embedded PostgreSQL in the data directory), not through the gateway: the check must not
depend on the service it checks. With the embedded database it may run while the node is up:
the embedded server is shared between processes on the same data directory (each process holds
it; the last to let go stops it). They never start an embedded server for a node that chose an
external database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from services.cli import audit_show, exit_codes
from services.cli.audit_witnesses import (
    CONTRADICTED,
    DEFAULT_TIMEOUT_S,
    PeerWitness,
    ask_peers,
)
from services.cli.node_client import add_data_dir_option, run_command
from services.core.audit.chain import ChainBreak, ChainVerifier
from services.core.audit.store import AuditStore
from services.core.config import NodeConfig, load_config
from services.core.db.pool import open_database
from services.core.node_claim.store import check_claimed_by

# The check ran and found the log altered (as `lookup` uses 1 for "ran, found nothing").
LOG_ALTERED = 1
# --against-peers: the log is intact as far as it was checked, but some peer did not witness
# it (unreachable, refused, keeps no checkpoint, or none is pinned): the code `lookup --peers`
# uses for "incomplete".
NOT_WITNESSED = exit_codes.INCOMPLETE


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
            "exit codes: 0 intact (with --against-peers: and every pinned peer's checkpoint "
            "agrees); 1 altered (the first record that does not fit is named, or a peer's "
            "signed checkpoint shows records cut or rewritten); 3 the database could not be "
            "read; 5 --against-peers: some peer did not witness the log (unreachable, refused, "
            "no checkpoint kept yet)"
        ),
    )
    add_data_dir_option(verify)
    verify.add_argument(
        "--against-peers",
        action="store_true",
        help="also ask every pinned peer for the signed checkpoint of this log it keeps and "
        "check the log against it (a log cut short is caught this way)",
    )
    verify.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for each peer (default %(default)s)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=lambda ns: run_command(_verify, ns))
    show = audit_sub.add_parser(
        "show",
        help="list audit records (newest first, filtered)",
        description=(
            "List the node's audit records, newest first: who called which method with what "
            "outcome, when (refusals aggregated per caller and minute show their count of "
            "calls). Reads the node's database directly."
        ),
        epilog="exit codes: 0 listed (also when nothing matches); 2 bad option; 3 database "
        "unreadable",
    )
    add_data_dir_option(show)
    audit_show.add_arguments(show)
    show.set_defaults(func=lambda ns: run_command(audit_show.show, ns))


def _verify(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    verifier, broken, witnesses = asyncio.run(
        _check(config, against_peers=ns.against_peers, timeout_s=ns.timeout)
    )
    if ns.json:
        sys.stdout.write(json.dumps(_json(verifier, broken, witnesses), indent=2) + "\n")
    if broken is not None:
        print(
            f"audit log ALTERED at record {broken.seq}: {broken.reason} "
            f"({verifier.count} records before it are intact)",
            file=sys.stderr,
        )
        return LOG_ALTERED
    if not ns.json:
        print(
            f"audit log intact: {verifier.count} records, last digest {verifier.last_digest.hex()}"
        )
    if witnesses is None:
        return exit_codes.OK
    return _report_witnesses(witnesses, quiet=ns.json)


def _report_witnesses(witnesses: list[PeerWitness], *, quiet: bool) -> int:
    if not quiet:
        for w in witnesses:
            print(f"  {w.peer_id}: {w.outcome.replace('_', ' ')}: {w.detail}")
    contradicted = [w for w in witnesses if w.outcome in CONTRADICTED]
    if contradicted:
        names = ", ".join(f"{w.peer_id} ({w.outcome})" for w in contradicted)
        print(f"audit log ALTERED: contradicted by the checkpoints of {names}", file=sys.stderr)
        return LOG_ALTERED
    missing = [w.peer_id for w in witnesses if w.outcome != "intact"]
    if not witnesses:
        print("no pinned peers: nothing outside this node witnesses its log", file=sys.stderr)
        return NOT_WITNESSED
    if missing:
        print(
            f"not witnessed by {', '.join(missing)}: the log is intact only as far as the other "
            "peers' checkpoints reach",
            file=sys.stderr,
        )
        return NOT_WITNESSED
    return exit_codes.OK


def _json(
    verifier: ChainVerifier, broken: ChainBreak | None, witnesses: list[PeerWitness] | None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "intact": broken is None,
        "records": verifier.count,
        "last_digest": verifier.last_digest.hex(),
        "broken_at": broken.seq if broken else None,
    }
    if witnesses is not None:
        document["peers"] = [
            {
                "peer_id": w.peer_id,
                "outcome": w.outcome,
                "detail": w.detail,
                "record_count": w.record_count,
            }
            for w in witnesses
        ]
    return document


async def _check(
    config: NodeConfig, *, against_peers: bool, timeout_s: float
) -> tuple[ChainVerifier, ChainBreak | None, list[PeerWitness] | None]:
    """The chain recomputed (stopping at the first break); then, when asked and intact, each
    pinned peer's witness of it. Only on a database its node claimed."""
    database = await open_database(config.database_location(), max_size=2)
    try:
        async with database.connection() as conn:
            await check_claimed_by(conn, node_id=config.node_id)
        store = AuditStore(database)
        verifier = ChainVerifier()
        broken = await _recompute(store, verifier)
        if broken is not None or not against_peers:
            return verifier, broken, None
        return verifier, None, await ask_peers(config, store, timeout_s=timeout_s)
    finally:
        await database.close()


async def _recompute(store: AuditStore, verifier: ChainVerifier) -> ChainBreak | None:
    if not await store.exists():
        return None
    async for record in store.records():
        broken = verifier.check(record)
        if broken is not None:
            return broken
    return None
