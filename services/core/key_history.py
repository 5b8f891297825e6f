"""The public history of the node's signing keys: every key it ever had, the signature by which
each key vouched for its successor, and revocations, in `keys/signing/history.json`.

It is kept apart from the secret key files so that deleting an old key file (the natural step
after a rotation, or after a compromise) loses nothing peers need: the card still lists the old
public key, and the KeyRotation entry for its successor still carries the signature made when
the rotation happened (`hashex node rotate-key` signs it with the key it retires, at once).

A key's validity window, as receivers apply it (services.sync.origin_keys):
- from the start of the log up to the seq of the KeyRotation entry that published its
  successor: rotating RETIRES the previous key, which stays valid for the batches it signed
  (a newer key may sign older seqs too: an origin whose old key file is gone does so);
- the current (newest) key is valid for every seq;
- a REVOKED key (compromise) signs nothing from `revoked_from_seq` on (1: revoked entirely).
  Revocation only ever widens, and the current key cannot be revoked (rotate first). The sync
  service publishes each revocation as a KeyRevocation entry of the change log (peers learn it
  at their next pull); the card carries it to new peers.

The file holds public data only (no secret), one line of canonical JSON, replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.core.errors import FailedPrecondition

HISTORY_FILE = "history.json"
HISTORY_FORMAT = "hashex.v1.KeyHistory"
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


@dataclass(frozen=True)
class KeyRecord:
    """One key of the node as peers may learn it."""

    key_id: str
    public_key: bytes
    # The key that vouched for this one and its signature over rotation_message (empty for the
    # first key, or for a key whose predecessor's file was gone before it was recorded).
    signed_by_key_id: str = ""
    rotation_signature: bytes = b""
    # 0: not revoked; n: signs nothing from seq n on (1: revoked entirely).
    revoked_from_seq: int = 0

    def revoked(self, from_seq: int) -> KeyRecord:
        return replace(self, revoked_from_seq=from_seq)


def history_path(keys_dir: Path) -> Path:
    return keys_dir / HISTORY_FILE


def read_history(keys_dir: Path) -> tuple[KeyRecord, ...]:
    """The recorded keys, oldest first (empty when the file does not exist yet: a node made by
    an older release, whose history is then derived from its key files)."""
    path = history_path(keys_dir)
    try:
        raw = json.loads(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        return ()
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FailedPrecondition(f"{path} is not the node's key history (not JSON)") from None
    if not isinstance(raw, dict) or raw.get("format") != HISTORY_FORMAT:
        raise FailedPrecondition(f"{path} is not a {HISTORY_FORMAT} file")
    keys = raw.get("keys")
    if not isinstance(keys, list):
        raise FailedPrecondition(f"{path} lists no keys")
    return tuple(_record(item, path) for item in keys)


def write_history(keys_dir: Path, records: tuple[KeyRecord, ...]) -> None:
    """Replace the history file (readers see the old file or the new one, never a part)."""
    document = {
        "format": HISTORY_FORMAT,
        "keys": [
            {
                "key_id": r.key_id,
                "public_key": r.public_key.hex(),
                "revoked_from_seq": r.revoked_from_seq,
                "rotation_signature": r.rotation_signature.hex(),
                "signed_by_key_id": r.signed_by_key_id,
            }
            for r in records
        ],
    }
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = history_path(keys_dir)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")
    os.replace(temporary, path)


def _record(item: Any, path: Path) -> KeyRecord:
    fields = {"key_id", "public_key", "revoked_from_seq", "rotation_signature", "signed_by_key_id"}
    if not isinstance(item, dict) or set(item) != fields:
        raise FailedPrecondition(f"{path} holds a key entry with other fields than {fields}")
    texts = [item[name] for name in ("key_id", "public_key", "rotation_signature")]
    revoked = item["revoked_from_seq"]
    if (
        not all(isinstance(t, str) for t in [*texts, item["signed_by_key_id"]])
        or not all(_HEX.fullmatch(t) for t in texts[1:])
        or len(texts[1]) != 64
        or not isinstance(revoked, int)
        or revoked < 0
    ):
        raise FailedPrecondition(f"{path} holds a malformed entry for key {item.get('key_id')!r}")
    return KeyRecord(
        key_id=texts[0],
        public_key=bytes.fromhex(texts[1]),
        signed_by_key_id=item["signed_by_key_id"],
        rotation_signature=bytes.fromhex(texts[2]),
        revoked_from_seq=revoked,
    )
