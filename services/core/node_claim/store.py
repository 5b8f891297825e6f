"""The node a database belongs to: claimed by the first node that starts on it, checked by every
start after that (`hashex node up`, `registry serve`, `sync run`, `gateway serve`) and by
`hashex audit verify`, which reports only on a log its node kept.

A node started on another node's database would serve that node's records and offer its change
log as its own to every peer. `claim_database` refuses it with one line naming both nodes, and
refuses a database whose case data was sealed with another case-data key (a fingerprint of the
key is kept, never the key). Processes that hold no case key (a separate sync or gateway) check
the node id only; the first claim without a fingerprint is completed by the registry's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.errors import FailedPrecondition

COMPONENT = "node"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_log = logging.getLogger(__name__)

_READ = "SELECT node_id, case_key_fingerprint FROM node_claim WHERE only_row FOR UPDATE"
_READ_ONLY = "SELECT node_id, case_key_fingerprint FROM node_claim WHERE only_row"
_TABLE_EXISTS = "SELECT to_regclass('node_claim') IS NOT NULL"
_CLAIM = "INSERT INTO node_claim (node_id, case_key_fingerprint) VALUES ($1, $2)"
_COMPLETE = "UPDATE node_claim SET case_key_fingerprint = $1 WHERE only_row"


@dataclass(frozen=True)
class NodeClaim:
    node_id: str
    case_key_fingerprint: str


class WrongDatabase(FailedPrecondition):
    """The database belongs to another node, or to this node with another case-data key."""


async def claim_database(conn: Any, *, node_id: str, case_key_fingerprint: str | None) -> NodeClaim:
    """Claim the database for `node_id` or check that it is claimed by it; WrongDatabase
    otherwise. `case_key_fingerprint` None: the caller holds no case key (checked by id only).
    Takes its own transaction (or joins the caller's)."""
    async with conn.transaction():
        row = await conn.fetchrow(_READ)
        if row is None:
            fingerprint = case_key_fingerprint or ""
            await conn.execute(_CLAIM, node_id, fingerprint)
            _log.info("this database now belongs to node %s", node_id)
            return NodeClaim(node_id, fingerprint)
        claim = NodeClaim(row["node_id"], row["case_key_fingerprint"])
        if claim.node_id != node_id:
            raise WrongDatabase(
                f"this database belongs to node {claim.node_id!r}, not {node_id!r}: give node "
                f"{node_id!r} its own database (an external one of its own, or the embedded "
                "one in its data directory)"
            )
        if case_key_fingerprint is None:
            return claim
        if not claim.case_key_fingerprint:
            await conn.execute(_COMPLETE, case_key_fingerprint)
            return NodeClaim(node_id, case_key_fingerprint)
        if claim.case_key_fingerprint != case_key_fingerprint:
            raise WrongDatabase(
                f"node {node_id!r}'s case-data key (fingerprint {case_key_fingerprint}) is not "
                f"the one this database's case data was sealed with ({claim.case_key_fingerprint}"
                "): restore keys/case.key from the node's backup"
            )
        return claim


async def check_claimed_by(conn: Any, *, node_id: str) -> NodeClaim:
    """For a command that only reads the node's database (`hashex audit verify`): the claim, if
    `node_id` holds it; WrongDatabase when another node does or none ever started on it (what
    such a database holds is not this node's, and reporting on it would mislead)."""
    row = await conn.fetchrow(_READ_ONLY) if await conn.fetchval(_TABLE_EXISTS) else None
    if row is None:
        raise WrongDatabase(
            f"no node has started on this database yet, so it holds nothing of node {node_id!r}:"
            f" check the node's database URL, or start the node first"
        )
    claim = NodeClaim(row["node_id"], row["case_key_fingerprint"])
    if claim.node_id != node_id:
        raise WrongDatabase(
            f"this database belongs to node {claim.node_id!r}, not {node_id!r}: check the "
            "node's database URL"
        )
    return claim
