"""Every SQL statement of the sync service — its cursors per peer and the keys and key
revocations it learned — as named transactions returning dataclasses; and the transactions that
span owners: applying a peer's batch (the registry's records, through
RegistryStore.apply_replicated, with this service's cursor) and logging key rotations and
revocations (through the core change log).

The sender reads this node's change log; the receiver applies a verified batch of a peer's
entries and advances its cursor in ONE transaction, so an interrupted pull leaves either the
whole batch and the new cursor or neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from services.core.audit import store as audit
from services.core.changelog import store as changelog
from services.core.changelog.store import EntryKind, LogRow, PendingEntry
from services.core.db.pool import Database
from services.core.errors import FailedPrecondition
from services.core.key_history import KeyRecord
from services.core.signing import Keyring
from services.registry.model import PdqEntry
from services.registry.store import MIGRATIONS as RECORD_MIGRATIONS
from services.registry.store import RegistryStore
from services.sync.audit_checkpoints import Contradiction, HeldCheckpoint
from services.sync.batches import ActiveKey, Checkpoint, Cursor, VerifiedBatch
from services.sync.entries import (
    ReplicatedFlagState,
    RevokedKey,
    RotatedKey,
    decode_entry,
    key_revocation_entry,
    key_rotation_entry,
)
from services.sync.flags.states import apply_replicated_states
from services.sync.origin_keys import LearnedKey, LearnedRevocation

COMPONENT = "sync"
# Checkpoints of each origin's chain kept: the newest this many, then one per this many seqs.
CHECKPOINTS_KEPT = 256
CHECKPOINT_SPACING = 4096
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# What sync's statements need, in the order they apply: the registry's tables and the change
# log (it applies records and logs key rotations), its own, and the audit log (rejected
# batches are audited).
MIGRATIONS: tuple[tuple[str, Path], ...] = (
    *RECORD_MIGRATIONS,
    (COMPONENT, MIGRATIONS_DIR),
    (audit.COMPONENT, audit.MIGRATIONS_DIR),
)


@dataclass(frozen=True)
class Applied:
    """What one applied batch changed, for the PDQ index and the status."""

    entries: int
    added: list[PdqEntry]
    removed_rows: list[int]
    # When a resync caught up with this batch, the media it then deleted (the peer no longer
    # holds them); None otherwise.
    swept_media: int | None = None


@dataclass(frozen=True)
class CursorRow:
    peer_id: str
    cursor: Cursor
    peer_last_seq: int
    applied_entries: int
    quarantined_entries: int = 0
    resyncing: bool = False


@dataclass(frozen=True)
class QuarantineRow:
    """One quarantined entry as `hashex sync quarantine` lists it (never its bytes' content)."""

    id: int
    peer_id: str
    seq: int
    reason: str
    entry_bytes: int
    batch_digest: bytes
    quarantined_at: datetime


# The most quarantined entries one listing returns.
MAX_QUARANTINE_LISTED = 1_000


class SyncStore:
    def __init__(self, *, database: Database, records: RegistryStore) -> None:
        """`records`: the registry's store, which applies the replicated records."""
        self._db = database
        self._records = records

    # --- this node's log (sender side) ---

    async def last_seq(self) -> int:
        async with self._db.connection() as conn:
            return await changelog.last_seq(conn)

    async def chain_at(self, seq: int) -> bytes | None:
        async with self._db.connection() as conn:
            return await changelog.chain_at(conn, seq)

    async def read_log(self, *, after_seq: int, limit: int) -> list[LogRow]:
        async with self._db.connection() as conn:
            return await changelog.read_page(conn, after_seq=after_seq, limit=limit)

    async def logged_key_activations(self) -> dict[str, int]:
        """Key id → seq of the KeyRotation entry that published it."""
        async with self._db.connection() as conn:
            rows = await changelog.key_rotations(conn)
        return {decode_entry(r.entry).key_rotation.key_id: r.seq for r in rows}

    async def key_schedule(self, keyring: Keyring) -> list[ActiveKey]:
        """Every key of the history with its activation: the first key from the start, later
        ones from the entry that published them (a key not logged yet signs nothing). A key
        whose file is gone or that is revoked is listed without its secret: it signs nothing,
        the newest usable key signs its seqs instead."""
        activations = await self.logged_key_activations()
        schedule: list[ActiveKey] = []
        for index, record in enumerate(keyring.history):
            activated = 0 if index == 0 else activations.get(record.key_id)
            if activated is None:
                continue
            usable = keyring.has(record.key_id) and not record.revoked_from_seq
            schedule.append(ActiveKey(activated, keyring.by_id(record.key_id) if usable else None))
        return schedule

    async def log_key_rotations(self, keyring: Keyring) -> list[str]:
        """Append a KeyRotation entry for every key of the history beyond the first that the
        log does not hold yet, with the signature its predecessor made at the rotation (none
        when that key's file was gone before the rotation was recorded: receivers then accept
        the key only from the card); returns their ids."""
        async with self._db.transaction() as conn:
            await changelog.lock_change_log(conn)
            rows = await changelog.key_rotations(conn)
            logged = {decode_entry(r.entry).key_rotation.key_id for r in rows}
            pending = [r for r in keyring.history[1:] if r.key_id not in logged]
            await changelog.append_entries(conn, [_rotation_entry(r) for r in pending])
        return [r.key_id for r in pending]

    async def log_key_revocations(self, keyring: Keyring) -> list[str]:
        """Append a KeyRevocation entry for every revoked key of the history whose revocation
        the log does not hold yet (or holds narrower); returns their ids."""
        async with self._db.transaction() as conn:
            await changelog.lock_change_log(conn)
            logged: dict[str, int] = {}
            for row in await changelog.key_revocations(conn):
                revocation = decode_entry(row.entry).key_revocation
                seq = logged.get(revocation.key_id, revocation.revoked_from_seq)
                logged[revocation.key_id] = min(seq, revocation.revoked_from_seq)
            pending = [
                r
                for r in keyring.history
                if r.revoked_from_seq
                and r.revoked_from_seq < logged.get(r.key_id, r.revoked_from_seq + 1)
            ]
            await changelog.append_entries(conn, [_revocation_entry(r) for r in pending])
        return [r.key_id for r in pending]

    # --- peers' logs (receiver side) ---

    async def cursor(self, peer_id: str) -> Cursor:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_CURSOR, peer_id)
        return _cursor(row) if row else Cursor()

    async def cursors(self) -> dict[str, CursorRow]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(_ALL_CURSORS)
        return {
            r["peer_id"]: CursorRow(
                r["peer_id"],
                _cursor(r),
                r["peer_last_seq"],
                r["applied_entries"],
                r["quarantined_entries"],
                r["resyncing"],
            )
            for r in rows
        }

    async def quarantine(
        self, *, peer_id: str | None = None, after_id: int = 0, limit: int = MAX_QUARANTINE_LISTED
    ) -> list[QuarantineRow]:
        """Quarantined entries after `after_id`, oldest first, of one peer or all; at most
        `limit` (capped at MAX_QUARANTINE_LISTED)."""
        limit = max(1, min(limit, MAX_QUARANTINE_LISTED))
        async with self._db.connection() as conn:
            rows = await conn.fetch(_QUARANTINE, peer_id, after_id, limit)
        return [
            QuarantineRow(
                r["id"],
                r["peer_id"],
                r["seq"],
                r["reason"],
                r["entry_bytes"],
                bytes(r["batch_digest"]),
                r["quarantined_at"],
            )
            for r in rows
        ]

    async def record_peer_head(self, peer_id: str, last_seq: int) -> None:
        """What a peer said its head is, from a batch that verified but was not applied."""
        async with self._db.connection() as conn:
            await conn.execute(_ENSURE_CURSOR, peer_id)
            await conn.execute(_PEER_HEAD, peer_id, last_seq)

    async def learned_keys(self, peer_id: str) -> list[LearnedKey]:
        """The keys learned from `peer_id`'s log, in the order they were published."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(_LEARNED_KEYS, peer_id)
        return [LearnedKey(r["key_id"], bytes(r["public_key"]), r["learned_at_seq"]) for r in rows]

    async def learned_revocations(self, peer_id: str) -> list[LearnedRevocation]:
        """The revocations learned from `peer_id`'s log (the widest per key)."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(_LEARNED_REVOCATIONS, peer_id)
        return [LearnedRevocation(r["key_id"], r["revoked_from_seq"]) for r in rows]

    async def apply_batch(self, *, peer_id: str, batch: VerifiedBatch, expected: Cursor) -> Applied:
        """Apply `batch` from `peer_id` and advance the cursor, all or nothing. `expected` is the
        cursor the batch was verified against; FailedPrecondition if it moved meanwhile."""
        changes = [
            c
            for c in batch.changes
            if not isinstance(c, RotatedKey | RevokedKey | ReplicatedFlagState)
        ]
        flag_states = [c for c in batch.changes if isinstance(c, ReplicatedFlagState)]
        async with self._db.transaction() as conn:
            locked = await _locked_cursor(conn, peer_id)
            current, resyncing = _cursor(locked), bool(locked["resyncing"])
            swept: int | None = None
            if current != expected:
                raise FailedPrecondition(f"the cursor for {peer_id} moved while applying a batch")
            applied = await self._records.apply_replicated(conn, origin=peer_id, changes=changes)
            await apply_replicated_states(conn, origin=peer_id, states=flag_states)
            for key in batch.new_keys:
                await conn.execute(_LEARN_KEY, peer_id, key.key_id, key.public_key, key.seq)
            for revocation in batch.revoked_keys:
                await conn.execute(
                    _LEARN_REVOCATION,
                    peer_id,
                    revocation.key_id,
                    revocation.revoked_from_seq,
                    revocation.seq,
                )
            if batch.quarantined:
                await conn.executemany(
                    _QUARANTINE_ENTRY,
                    [(peer_id, q.seq, q.reason, q.entry, batch.digest) for q in batch.quarantined],
                )
            await conn.execute(
                _ADVANCE_CURSOR,
                peer_id,
                batch.last_seq,
                batch.digest,
                batch.generation,
                batch.origin_last_seq,
                len(batch.changes),
                batch.chain,
            )
            if resyncing and batch.last_seq >= batch.origin_last_seq:
                swept = await self._finish_resync(conn, peer_id)
        return Applied(
            entries=len(batch.changes),
            added=applied.added,
            removed_rows=applied.removed_rows,
            swept_media=swept,
        )

    async def finish_resync(self, peer_id: str, origin_last_seq: int) -> int | None:
        """Finish a resync of `peer_id` that has nothing left to pull (the peer's log, as it
        stated on catching up, ends at `origin_last_seq`): needed when no batch comes to finish
        it, as from a peer whose log is now empty. None when no resync was due; else the media
        deleted."""
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_CURSOR, peer_id)
        if row is None or not row["resyncing"]:
            return None  # the common case: read only, nothing locked
        async with self._db.transaction() as conn:
            locked = await _locked_cursor(conn, peer_id)
            if not locked["resyncing"] or locked["cursor_seq"] < origin_last_seq:
                return None
            return await self._finish_resync(conn, peer_id)

    async def _finish_resync(self, conn: Any, peer_id: str) -> int:
        """Caught up: what the peer did not re-send, it no longer holds."""
        swept = await self._records.sweep_unconfirmed(conn, origin=peer_id)
        await conn.execute(_RESYNC_DONE, peer_id)
        return swept

    async def begin_resync(self, peer_id: str) -> list[int]:
        """Restart `peer_id` from seq 1: its records held here are withdrawn (retracted, their
        signals and links dropped, their seq guards cleared) so that everything it re-sends
        applies, and the cursor is reset; the batch that catches up deletes the rest. Returns
        the media rows withdrawn, for the PDQ index. Re-runnable: a resync under way restarts."""
        async with self._db.transaction() as conn:
            await _locked_cursor(conn, peer_id)
            withdrawn = await self._records.begin_resync(conn, origin=peer_id)
            await conn.execute(_RESYNC_START, peer_id)
            await conn.execute(_FORGET_CHECKPOINTS, peer_id)  # the history is learned afresh
        return withdrawn

    async def thin_checkpoints(self, peer_id: str) -> None:
        """Keep the newest CHECKPOINTS_KEPT checkpoints of `peer_id`'s chain, then one per
        CHECKPOINT_SPACING seqs (each batch applied adds one; a puller thins at every pull)."""
        async with self._db.connection() as conn:
            await conn.execute(_THIN_CHECKPOINTS, peer_id, CHECKPOINTS_KEPT, CHECKPOINT_SPACING)

    async def chain_checkpoints(self, peer_id: str) -> list[Checkpoint]:
        """The origin's chain at the ends of batches applied from it, oldest first."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(_CHECKPOINTS, peer_id)
        return [Checkpoint(r["seq"], bytes(r["chain"])) for r in rows]

    # --- peers' audit checkpoints (services.sync.audit_checkpoints) ---

    async def audit_checkpoint(self, origin: str) -> HeldCheckpoint | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(_AUDIT_CHECKPOINT, origin)
        if row is None:
            return None
        return HeldCheckpoint(
            row["record_count"],
            bytes(row["head_digest"]),
            bytes(row["body"]),
            row["key_id"],
            bytes(row["signature"]),
        )

    async def keep_audit_checkpoint(self, origin: str, held: HeldCheckpoint) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                _KEEP_AUDIT_CHECKPOINT, origin, held.record_count, held.head_digest, held.body,
                held.key_id, held.signature,
            )  # fmt: skip

    async def record_audit_contradiction(self, origin: str, found: Contradiction) -> bool:
        """Keep `found` with both signed checkpoints; False when it was kept already."""
        kept, received = found.kept, found.received
        async with self._db.connection() as conn:
            inserted = await conn.fetchval(
                _AUDIT_CONTRADICTION, origin, found.kind, found.describe(origin), kept.body,
                kept.key_id, kept.signature, received.body, received.key_id, received.signature,
            )  # fmt: skip
        return inserted is not None

    async def audit_alarms(self) -> dict[str, str]:
        """Origin → the description of the latest contradiction found in its checkpoints."""
        async with self._db.connection() as conn:
            rows = await conn.fetch(_AUDIT_ALARMS)
        return {r["origin"]: r["description"] for r in rows}


def _revocation_entry(record: KeyRecord) -> PendingEntry:
    return PendingEntry(
        EntryKind.KEY_REVOCATION,
        lambda seq, moment: key_revocation_entry(
            seq, moment, key_id=record.key_id, revoked_from_seq=record.revoked_from_seq
        ),
    )


def _rotation_entry(record: KeyRecord) -> PendingEntry:
    return PendingEntry(
        EntryKind.KEY_ROTATION,
        lambda seq, moment: key_rotation_entry(
            seq,
            moment,
            key_id=record.key_id,
            public_key=record.public_key,
            signed_by_key_id=record.signed_by_key_id,
            signature=record.rotation_signature,
        ),
    )


async def _locked_cursor(conn: Any, peer_id: str) -> Any:
    """`peer_id`'s cursor row, locked for the transaction; created first if there is none (one
    statement when it exists, as for every batch after a peer's first)."""
    locked = await conn.fetchrow(_LOCK_CURSOR, peer_id)
    if locked is None:
        await conn.execute(_ENSURE_CURSOR, peer_id)
        locked = await conn.fetchrow(_LOCK_CURSOR, peer_id)
    return locked


def _cursor(row: Any) -> Cursor:
    return Cursor(
        row["cursor_seq"],
        bytes(row["cursor_digest"]),
        row["policy_generation"],
        bytes(row["cursor_chain"]),
    )


_CURSOR = """
SELECT peer_id, cursor_seq, cursor_digest, policy_generation, cursor_chain, peer_last_seq,
       applied_entries, resyncing
FROM sync_cursors WHERE peer_id = $1
"""

_ALL_CURSORS = """
SELECT c.peer_id, c.cursor_seq, c.cursor_digest, c.policy_generation, c.cursor_chain,
       c.peer_last_seq, c.applied_entries, c.resyncing,
       (SELECT count(*) FROM sync_quarantine q WHERE q.peer_id = c.peer_id) AS quarantined_entries
FROM sync_cursors c ORDER BY c.peer_id
"""

_QUARANTINE = """
SELECT id, peer_id, seq, reason, octet_length(entry) AS entry_bytes, batch_digest, quarantined_at
FROM sync_quarantine WHERE ($1::text IS NULL OR peer_id = $1) AND id > $2
ORDER BY id LIMIT $3
"""

_QUARANTINE_ENTRY = """
INSERT INTO sync_quarantine (peer_id, seq, reason, entry, batch_digest)
VALUES ($1, $2, $3, $4, $5)
"""

_RESYNC_START = """
UPDATE sync_cursors
SET cursor_seq = 0, cursor_digest = '', policy_generation = 0, cursor_chain = '',
    peer_last_seq = 0, resyncing = true, updated_at = now()
WHERE peer_id = $1
"""

_FORGET_CHECKPOINTS = "DELETE FROM sync_chain_checkpoints WHERE peer_id = $1"

_CHECKPOINTS = "SELECT seq, chain FROM sync_chain_checkpoints WHERE peer_id = $1 ORDER BY seq"

_THIN_CHECKPOINTS = """
DELETE FROM sync_chain_checkpoints c
USING (
    SELECT seq, row_number() OVER (ORDER BY seq DESC) AS newest,
           row_number() OVER (PARTITION BY seq / $3 ORDER BY seq DESC) AS in_block
    FROM sync_chain_checkpoints WHERE peer_id = $1
) r
WHERE c.peer_id = $1 AND c.seq = r.seq AND r.newest > $2 AND r.in_block > 1
"""

_RESYNC_DONE = "UPDATE sync_cursors SET resyncing = false WHERE peer_id = $1"

_PEER_HEAD = """
UPDATE sync_cursors SET peer_last_seq = greatest(peer_last_seq, $2) WHERE peer_id = $1
"""

_ENSURE_CURSOR = "INSERT INTO sync_cursors (peer_id) VALUES ($1) ON CONFLICT DO NOTHING"

_LOCK_CURSOR = _CURSOR + " FOR UPDATE"

# The batch's end is also a checkpoint of the origin's chain (services.sync.divergence).
_ADVANCE_CURSOR = """
WITH checkpoint AS (
    INSERT INTO sync_chain_checkpoints (peer_id, seq, chain)
    SELECT $1, $2, $7::bytea WHERE octet_length($7::bytea) = 32
    ON CONFLICT (peer_id, seq) DO UPDATE SET chain = EXCLUDED.chain
)
UPDATE sync_cursors
SET cursor_seq = $2, cursor_digest = $3, policy_generation = $4, cursor_chain = $7,
    peer_last_seq = greatest(peer_last_seq, $5), applied_entries = applied_entries + $6,
    updated_at = now()
WHERE peer_id = $1
"""

_LEARNED_KEYS = """
SELECT key_id, public_key, learned_at_seq FROM sync_peer_keys WHERE peer_id = $1
ORDER BY learned_at_seq
"""

_LEARNED_REVOCATIONS = """
SELECT key_id, revoked_from_seq FROM sync_peer_key_revocations WHERE peer_id = $1 ORDER BY key_id
"""

# A revocation only widens: the smallest seq known stays.
_LEARN_REVOCATION = """
INSERT INTO sync_peer_key_revocations (peer_id, key_id, revoked_from_seq, learned_at_seq)
VALUES ($1, $2, $3, $4)
ON CONFLICT (peer_id, key_id) DO UPDATE SET
    revoked_from_seq = least(sync_peer_key_revocations.revoked_from_seq, EXCLUDED.revoked_from_seq)
"""

_LEARN_KEY = """
INSERT INTO sync_peer_keys (peer_id, key_id, public_key, learned_at_seq) VALUES ($1, $2, $3, $4)
ON CONFLICT (peer_id, key_id) DO NOTHING
"""

_AUDIT_CHECKPOINT = """
SELECT record_count, head_digest, body, key_id, signature FROM sync_audit_checkpoints
WHERE origin = $1
"""

_KEEP_AUDIT_CHECKPOINT = """
INSERT INTO sync_audit_checkpoints (origin, record_count, head_digest, body, key_id, signature)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (origin) DO UPDATE SET record_count = EXCLUDED.record_count,
    head_digest = EXCLUDED.head_digest, body = EXCLUDED.body, key_id = EXCLUDED.key_id,
    signature = EXCLUDED.signature, received_at = now()
"""

_AUDIT_CONTRADICTION = """
INSERT INTO sync_audit_contradictions (origin, kind, description, kept_body, kept_key_id,
    kept_signature, received_body, received_key_id, received_signature)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (origin, kept_body) DO NOTHING
RETURNING id
"""

_AUDIT_ALARMS = """
SELECT DISTINCT ON (origin) origin, description FROM sync_audit_contradictions
ORDER BY origin, id DESC
"""
