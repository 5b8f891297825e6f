"""The register of client certificates this node's CA issued (`tls/issued.json`): what
`hashex unit list` shows and `hashex unit revoke NAME` finds by name.

Revocation itself is the deny-list (`peers/denied.txt`, services.core.trust), which the gateway
reads per call; the register says which fingerprints a name was given, so revoking a name (or
issuing it again, which revokes what it had) denies every certificate it still holds. Each
change takes an exclusive lock and rewrites the file atomically, so two commands run at once
never lose a record. Certificates issued before the register existed are not in it; the
deny-list (`hashex peer revoke --cert`) still revokes them.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from services.core.errors import FailedPrecondition

REGISTER_FILE = "issued.json"
IssuedKind = Literal["unit", "operator"]


@dataclass(frozen=True)
class IssuedCertificate:
    name: str
    kind: IssuedKind
    roles: tuple[str, ...]
    fingerprint: str
    issued_at: str  # ISO 8601, UTC
    not_after: str
    # When it was revoked (by `unit revoke` or by issuing the name again); "" while it is not.
    revoked_at: str = ""
    revoked_why: str = ""

    def expired(self, now: datetime) -> bool:
        return datetime.fromisoformat(self.not_after) <= now


class IssuedRegister:
    def __init__(self, tls_dir: Path) -> None:
        self._path = tls_dir / REGISTER_FILE
        self._lock_path = tls_dir / f".{REGISTER_FILE}.lock"

    def all(self) -> list[IssuedCertificate]:
        """Every certificate in the register, in the order issued."""
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except ValueError:
            raise FailedPrecondition(
                f"{self._path} is not valid JSON; restore it from a backup"
            ) from None
        return [_record(item) for item in raw.get("certificates", [])]

    @contextmanager
    def changing(self) -> Iterator[list[IssuedCertificate]]:
        """The records, under an exclusive lock, written back (atomically) when the block ends
        without an error."""
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.all()
            yield records
            staged = self._path.with_name(f".{REGISTER_FILE}.new")
            staged.write_text(
                json.dumps({"certificates": [asdict(r) for r in records]}, indent=1) + "\n",
                encoding="utf-8",
            )
            os.replace(staged, self._path)


def revoke_held(
    records: list[IssuedCertificate], *, name: str, kind: IssuedKind, at: str, why: str
) -> list[IssuedCertificate]:
    """Mark every certificate `name` holds (not yet revoked) revoked, in place; the ones marked."""
    marked = []
    for index, record in enumerate(records):
        if record.name == name and record.kind == kind and not record.revoked_at:
            records[index] = replace(record, revoked_at=at, revoked_why=why)
            marked.append(records[index])
    return marked


def _record(item: Any) -> IssuedCertificate:
    try:
        return IssuedCertificate(**{**item, "roles": tuple(item.get("roles", ()))})
    except TypeError:
        raise FailedPrecondition(f"a record in {REGISTER_FILE} is malformed: {item!r}") from None
