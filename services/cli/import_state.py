"""Where an interrupted import resumes: after every batch the node has stored, the number of
records of the file already handled and the counts so far are written to a small state file, so
that running the same command again skips them and sends nothing twice.

The state lives under $XDG_STATE_HOME/hashex/imports (else ~/.local/state/hashex/imports), never
beside the file (an evidence folder may be read-only), named by a digest of the file's absolute
path, format and node. It holds no hash and no case data: the path, the file's size, mtime and a
digest of its first 64 KiB (so a changed file is never resumed into), and counts. It is written
atomically (a temporary file renamed over it) and removed when the import completes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

_HEAD_BYTES = 64 * 1024
_VERSION = 1


@dataclass
class ImportCounts:
    """What an import did, record by record of the file."""

    # Records met in the file (good or bad).
    read: int = 0
    # Stored for the first time.
    imported: int = 0
    # Already stored (or earlier in the file) and changed by this record: merged.
    merged: int = 0
    # Already stored exactly as this record says: nothing to do.
    duplicate: int = 0
    # Already stored and retracted: left as they are.
    retracted: int = 0
    # Not stored: malformed or refused, each reported with its position.
    rejected: int = 0
    # Fields the file holds that hashex does not keep, by name.
    unused_fields: dict[str, int] = field(default_factory=dict)

    def add_unused(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.unused_fields[name] = self.unused_fields.get(name, 0) + 1


@dataclass(frozen=True)
class FileIdentity:
    path: str
    size: int
    mtime_ns: int
    head_sha256: str

    @staticmethod
    def of(path: Path) -> FileIdentity:
        stat = path.stat()
        with path.open("rb") as stream:
            head = hashlib.sha256(stream.read(_HEAD_BYTES)).hexdigest()
        return FileIdentity(str(path.resolve()), stat.st_size, stat.st_mtime_ns, head)


@dataclass(frozen=True)
class ImportState:
    identity: FileIdentity
    # Records of the file handled (stored, merged, duplicate or rejected): resume after them.
    records_done: int
    counts: ImportCounts


class StateFile:
    """The resume point of one import (one file, one format, one node)."""

    def __init__(self, identity: FileIdentity, kind: str, node: str, directory: Path) -> None:
        self._identity = identity
        key = hashlib.sha256(f"{identity.path}\0{kind}\0{node}".encode()).hexdigest()[:32]
        self.path = directory / f"{key}.json"

    @staticmethod
    def default_directory() -> Path:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "hashex" / "imports"

    def load(self) -> tuple[ImportState | None, str]:
        """The saved state if it belongs to this very file, and a note when one was found but
        cannot be used (the file changed since)."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, ""
        except (OSError, ValueError):
            return None, f"the saved import state {self.path} is unreadable; starting over"
        try:
            identity = FileIdentity(**saved["identity"])
            unused = {str(k): int(v) for k, v in saved["counts"].pop("unused_fields", {}).items()}
            counts = ImportCounts(**saved["counts"], unused_fields=unused)
            state = ImportState(identity, int(saved["records_done"]), counts)
        except (KeyError, TypeError, ValueError):
            return None, f"the saved import state {self.path} is not one this hashex wrote"
        if saved.get("version") != _VERSION:
            return None, f"the saved import state {self.path} is of another version"
        if state.identity != self._identity:
            return None, "the file changed since the interrupted import; starting over"
        return state, ""

    def save(self, records_done: int, counts: ImportCounts) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "version": _VERSION,
            "identity": asdict(self._identity),
            "records_done": records_done,
            "counts": asdict(counts),
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(body, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
