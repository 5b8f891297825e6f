"""The sync status an operator sees (`hashex sync status`): per peer, the stored cursor joined
with what the running puller knows (last success, last error, rejections since start)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.core.peer_card import PeerCard
from services.sync.origin_keys import KeyStatus, LearnedKey, LearnedRevocation, key_statuses
from services.sync.puller import PeerState
from services.sync.store import CursorRow


@dataclass(frozen=True)
class PeerSyncStatus:
    peer_id: str
    endpoint: str
    cursor_seq: int
    peer_last_seq: int
    lag: int
    last_success_at: datetime | None
    last_error: str
    last_error_at: datetime | None
    applied_entries: int
    rejected_batches: int
    quarantined_entries: int
    resyncing: bool
    # The latest contradiction found in the peer's audit checkpoints ("" when none).
    audit_alarm: str = ""
    # Its signing keys as this node knows them (card and log), oldest first.
    signing_keys: tuple[KeyStatus, ...] = ()


@dataclass(frozen=True)
class SyncStatus:
    node_id: str
    local_last_seq: int
    peers: tuple[PeerSyncStatus, ...]


def combine(
    *,
    node_id: str,
    local_last_seq: int,
    cards: Mapping[str, PeerCard],
    cursors: Mapping[str, CursorRow],
    states: Mapping[str, PeerState],
    learned: Mapping[str, Sequence[LearnedKey]],
    revocations: Mapping[str, Sequence[LearnedRevocation]],
    audit_alarms: Mapping[str, str] | None = None,
) -> SyncStatus:
    """One row per pinned peer (and per peer still holding a cursor), sorted by id."""
    peers = []
    for peer_id in sorted(set(cards) | set(cursors) | set(audit_alarms or {})):
        card, row, state = cards.get(peer_id), cursors.get(peer_id), states.get(peer_id)
        cursor_seq = row.cursor.seq if row else 0
        peer_last = max(row.peer_last_seq if row else 0, state.peer_last_seq if state else 0)
        peers.append(
            PeerSyncStatus(
                peer_id=peer_id,
                endpoint=card.endpoint if card else "(no longer pinned)",
                cursor_seq=cursor_seq,
                peer_last_seq=peer_last,
                lag=max(peer_last - cursor_seq, 0),
                last_success_at=state.last_success_at if state else None,
                last_error=state.last_error if state else "",
                last_error_at=state.last_error_at if state else None,
                applied_entries=row.applied_entries if row else 0,
                rejected_batches=state.rejected_batches if state else 0,
                quarantined_entries=row.quarantined_entries if row else 0,
                resyncing=row.resyncing if row else False,
                audit_alarm=(audit_alarms or {}).get(peer_id, ""),
                signing_keys=tuple(
                    key_statuses(
                        card.signing_keys if card else (),
                        learned.get(peer_id, ()),
                        revocations.get(peer_id, ()),
                    )
                ),
            )
        )
    return SyncStatus(node_id=node_id, local_last_seq=local_last_seq, peers=tuple(peers))
