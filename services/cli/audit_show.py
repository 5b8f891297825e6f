"""`hashex audit show`: the node's audit records, newest first, filtered by caller, method,
outcome and time, as a table or JSON; at most `--limit` (default 50, at most 10,000) per run,
with a note when more match (narrow the filters, or page back with `--before SEQ`). Times
without a zone are UTC.

Like `audit verify`, it reads the node's database directly, not through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from services.cli import exit_codes
from services.core.audit.chain import AuditRecord
from services.core.audit.store import (
    DEFAULT_SHOW_LIMIT,
    MAX_SHOW_LIMIT,
    AuditQuery,
    AuditStore,
)
from services.core.config import NodeConfig, load_config
from services.core.db.pool import open_database
from services.core.errors import InvalidArgument
from services.core.node_claim.store import check_claimed_by


def add_arguments(show: argparse.ArgumentParser) -> None:
    show.add_argument("--caller", help="only this caller (its identity URI, as shown)")
    show.add_argument("--method", help="only this method (e.g. /hashex.v1.Registry/Lookup)")
    show.add_argument(
        "--outcome", help="only this outcome (ok, permission_denied, resource_exhausted, ...)"
    )
    show.add_argument("--since", help="only records at or after this time (ISO 8601)")
    show.add_argument("--until", help="only records before this time (ISO 8601)")
    show.add_argument("--before", type=int, metavar="SEQ", help="only records before this seq")
    show.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_SHOW_LIMIT,
        help=f"at most this many records, newest first (default %(default)s, at most "
        f"{MAX_SHOW_LIMIT})",
    )
    show.add_argument("--json", action="store_true", help="print the records as JSON")


def query_of(ns: argparse.Namespace) -> AuditQuery:
    if not 1 <= ns.limit <= MAX_SHOW_LIMIT:
        raise InvalidArgument(f"--limit must be between 1 and {MAX_SHOW_LIMIT}, not {ns.limit}")
    return AuditQuery(
        # One more than shown: whether more match.
        limit=ns.limit + 1 if ns.limit < MAX_SHOW_LIMIT else ns.limit,
        caller=ns.caller,
        method=ns.method,
        status=ns.outcome.upper() if ns.outcome else None,
        since=_moment("--since", ns.since),
        until=_moment("--until", ns.until),
        before_seq=ns.before,
    )


def show(ns: argparse.Namespace) -> int:
    query = query_of(ns)
    config = load_config(ns.data_dir.resolve())
    found = asyncio.run(_search(config, query))
    records, more = found[: ns.limit], len(found) > ns.limit
    if ns.json:
        document = {
            "order": "newest_first",
            "count": len(records),
            "more": more,
            "records": [record_json(r) for r in records],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render(records, more=more))
    return exit_codes.OK


def record_json(record: AuditRecord) -> dict[str, Any]:
    e = record.entry
    return {
        "seq": record.seq,
        "at": _iso(e.at),
        "caller": e.caller,
        "fingerprint": e.fingerprint,
        "role": e.role,
        "method": e.method,
        "outcome": e.status.lower(),
        "calls": e.calls,
        "duration_ms": e.duration_ms,
        "request_messages": e.request_messages,
        "response_messages": e.response_messages,
        "request_digest": e.request_digest.hex(),
        "digest": record.digest.hex(),
    }


def render(records: list[AuditRecord], *, more: bool) -> str:
    if not records:
        return "no audit records match\n"
    header = ("SEQ", "AT", "CALLER", "METHOD", "OUTCOME", "CALLS", "MS", "IN", "OUT")
    rows = [header] + [
        (
            str(r.seq),
            _iso(r.entry.at),
            r.entry.caller or "(none)",
            r.entry.method,
            r.entry.status.lower(),
            str(r.entry.calls),
            str(r.entry.duration_ms),
            str(r.entry.request_messages),
            str(r.entry.response_messages),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("(newest first)")
    if more:
        lines.append(
            f"more records match: narrow the filters, or page on with --before {records[-1].seq}"
        )
    return "\n".join(lines) + "\n"


async def _search(config: NodeConfig, query: AuditQuery) -> list[AuditRecord]:
    """Only on a database its node claimed (never another node's log, never an empty one)."""
    database = await open_database(config.database_location(), max_size=2)
    try:
        async with database.connection() as conn:
            await check_claimed_by(conn, node_id=config.node_id)
        store = AuditStore(database)
        if not await store.exists():
            return []
        return await store.search(query)
    finally:
        await database.close()


def _moment(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-11-02T09:30:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
