"""Which unit submitted each media of this node, and the check that a submitter changes only its
own (table `media_submitters`, migration 0007: local, never federated). Statements run in the
caller's transaction, after the change log is locked, so no write slips between check and change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.core.errors import PermissionDenied
from services.registry.model import Writer

# How many refused ids a message names (the rest are counted).
_NAMED = 5

OWNERS_OF = """
SELECT m.media_id, ms.submitted_by
FROM media m LEFT JOIN media_submitters ms ON ms.media_row = m.id
WHERE m.origin = $1 AND m.media_id = ANY($2::text[])
ORDER BY m.media_id
"""


async def check_may_change(
    conn: Any, *, origin: str, media_ids: Sequence[str], writer: Writer
) -> None:
    """PermissionDenied when any of `media_ids` held by this node was submitted by someone other
    than `writer` and the writer may not change others' media. Ids not held pass (the caller
    decides what an unknown id means)."""
    if writer.any_media or not media_ids:
        return
    rows = await conn.fetch(OWNERS_OF, origin, list(media_ids))
    others = [(r["media_id"], r["submitted_by"]) for r in rows if r["submitted_by"] != writer.name]
    if not others:
        return
    named = ", ".join(f"{media_id} ({_who(by)})" for media_id, by in others[:_NAMED]) + (
        f" and {len(others) - _NAMED} more" if len(others) > _NAMED else ""
    )
    raise PermissionDenied(
        f"media {named} not submitted by {_who(writer.name)}: a submitter changes only what its "
        "own unit submitted; ask a supervisor. Nothing was changed"
    )


async def remember_submitter(conn: Any, *, media_rows: Sequence[int], writer: Writer) -> None:
    """Record `writer` as the submitter of media rows just created (in this transaction: none
    has a submitter yet, so they are copied in)."""
    if media_rows:
        await conn.copy_records_to_table(
            "media_submitters",
            records=[(row, writer.name) for row in media_rows],
            columns=("media_row", "submitted_by"),
        )


def _who(submitted_by: str | None) -> str:
    if submitted_by is None:
        return "submitted before units had roles"
    kind, _, name = submitted_by.partition(":")
    return f"{kind} {name}" if name else submitted_by
