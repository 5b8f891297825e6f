"""An origin's signing keys as a receiver knows them, and which batches each may sign.

A receiver learns keys from two places: the origin's pinned card (its key history, with
revocations; confirmed out of band by the operators) and the KeyRotation entries of the
origin's log (each vouched for by its predecessor, or already on the card). A key is valid for a
batch (services.core.key_history states the windows) when:
- it is not retired before the batch ends: a key whose successor was published at seq R (the
  KeyRotation entry's seq) signs only batches ending at or before R;
- it is not revoked for the batch: a key revoked from seq S signs only batches ending before S
  (S = 1: nothing at all).
A newer key may sign older seqs (an origin whose old key file is gone does), so there is no
lower bound. Revocations reach a receiver two ways: the KeyRevocation entries of the origin's
log (in a batch signed by a valid key, so a receiver that pinned the card long before learns it
at its next pull) and the card a new peer pins. The widest revocation known applies.

Pure: no SQL, no gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from services.core.peer_card import PeerKey
from services.core.signing import parse_key_id


@dataclass(frozen=True)
class OriginKey:
    key_id: str
    public_key: bytes
    # The seq of the KeyRotation entry that published the next key (0: none known yet).
    retired_at_seq: int = 0
    # 0: not revoked; n: signs nothing from seq n on.
    revoked_from_seq: int = 0

    def refusal(self, last_seq: int) -> tuple[str, str] | None:
        """(reason code, message) when this key may not sign a batch ending at `last_seq`."""
        if self.revoked_from_seq and last_seq >= self.revoked_from_seq:
            scope = (
                "entirely" if self.revoked_from_seq == 1 else f"from seq {self.revoked_from_seq} on"
            )
            return (
                "revoked_key",
                f"the batch (up to seq {last_seq}) is signed with key {self.key_id}, which its "
                f"origin revoked {scope}",
            )
        if self.retired_at_seq and last_seq > self.retired_at_seq:
            return (
                "retired_key",
                f"the batch (up to seq {last_seq}) is signed with key {self.key_id}, retired at "
                f"seq {self.retired_at_seq} when its successor was published",
            )
        return None


@dataclass(frozen=True)
class LearnedKey:
    """A key learned from the origin's log: the seq of the KeyRotation entry that published it."""

    key_id: str
    public_key: bytes
    learned_at_seq: int


@dataclass(frozen=True)
class LearnedRevocation:
    """A revocation learned from the origin's log."""

    key_id: str
    revoked_from_seq: int


def origin_keys(
    card_keys: Sequence[PeerKey],
    learned: Iterable[LearnedKey],
    revocations: Iterable[LearnedRevocation] = (),
) -> dict[str, OriginKey]:
    """Every key of the origin known here, with its window. The card's public key wins over a
    learned one of the same id (the batch that tried to publish another key for an id on the
    card was refused anyway)."""
    keys: dict[str, OriginKey] = {}
    from_log = sorted(learned, key=lambda k: k.learned_at_seq)
    for key in from_log:
        keys[key.key_id] = OriginKey(key.key_id, key.public_key)
    for card_key in card_keys:
        keys[card_key.key_id] = OriginKey(
            card_key.key_id, card_key.public_key, 0, card_key.revoked_from_seq
        )
    for key in from_log:
        keys = retired_by(keys, key.key_id, key.learned_at_seq)
    for revocation in revocations:
        keys = revoked(keys, revocation.key_id, revocation.revoked_from_seq)
    return keys


def revoked(keys: Mapping[str, OriginKey], key_id: str, from_seq: int) -> dict[str, OriginKey]:
    """`keys` with `key_id` revoked from `from_seq` on, unless it already is from earlier (a
    revocation only widens); a key not known here is left alone (it verifies nothing anyway)."""
    changed = dict(keys)
    key = changed.get(key_id)
    if key is not None and not 0 < key.revoked_from_seq <= from_seq:
        changed[key_id] = replace(key, revoked_from_seq=from_seq)
    return changed


def published(
    keys: Mapping[str, OriginKey], key_id: str, public_key: bytes, seq: int
) -> dict[str, OriginKey]:
    """`keys` once the KeyRotation entry at `seq` published `key_id` (kept as it is when already
    known, e.g. from the card): every older key not retired yet is retired at `seq`."""
    added = dict(keys)
    added.setdefault(key_id, OriginKey(key_id, public_key))
    return retired_by(added, key_id, seq)


def retired_by(keys: Mapping[str, OriginKey], new_key_id: str, seq: int) -> dict[str, OriginKey]:
    """Every key of `keys` older than `new_key_id` and not retired yet, retired at `seq`."""
    version = parse_key_id(new_key_id)
    return {
        key_id: (
            replace(key, retired_at_seq=seq)
            if not key.retired_at_seq and parse_key_id(key_id) < version
            else key
        )
        for key_id, key in keys.items()
    }


@dataclass(frozen=True)
class KeyStatus:
    """One key of an origin as `hashex sync status` and `hashex peer list` show it."""

    key_id: str
    state: str  # "current", "retired" or "revoked"
    retired_at_seq: int
    revoked_from_seq: int
    on_card: bool
    from_log: bool


def key_statuses(
    card_keys: Sequence[PeerKey],
    learned: Sequence[LearnedKey],
    revocations: Sequence[LearnedRevocation] = (),
) -> list[KeyStatus]:
    """Every key known of the origin, oldest first: the newest is current unless revoked."""
    keys = origin_keys(card_keys, learned, revocations)
    on_card = {k.key_id for k in card_keys}
    from_log = {k.key_id for k in learned}
    ordered = sorted(keys.values(), key=lambda k: parse_key_id(k.key_id))
    newest = max((parse_key_id(k.key_id) for k in ordered), default=0)
    statuses = []
    for key in ordered:
        state = (
            "revoked"
            if key.revoked_from_seq
            else "current"
            if parse_key_id(key.key_id) == newest
            else "retired"
        )
        statuses.append(
            KeyStatus(
                key.key_id,
                state,
                key.retired_at_seq,
                key.revoked_from_seq,
                key.key_id in on_card,
                key.key_id in from_log,
            )
        )
    return statuses


def as_origin_keys(keys: Mapping[str, OriginKey | bytes]) -> dict[str, OriginKey]:
    """Plain public keys (`key_id` → 32 bytes) as keys with no window limits."""
    return {
        key_id: key if isinstance(key, OriginKey) else OriginKey(key_id, key)
        for key_id, key in keys.items()
    }
