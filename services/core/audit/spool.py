"""The local spool of audit records made while the database is down: a file in the node's data
directory (0600), appended to and fsync'd before the call it records is answered, and written
into the hash chain, in order, when the database returns (services.core.audit.recorder).

Format: one JSON document per line. The first line names the spool (`{"spool_id": ...}`, random),
each further line is one entry. The store notes how many bytes of a spool are in the chain in
the same transaction as the records (`audit_spool_drained`), so a crash after that commit but
before the file is removed writes nothing twice; the file is removed once fully drained.

Bounded: at most `max_bytes`; an entry that would go beyond is refused (SpoolFull), logged once
per outage as an error, and its call answered as one that could not be audited.

A lock file beside the spool (flock) keeps two processes on one data directory (a node and a
`hashex` command, or the standalone services) from interleaving lines or draining at once.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.audit.chain import AuditEntry, from_micros, micros

_log = logging.getLogger(__name__)

SPOOL_FILE = "audit-spool.jsonl"
# About 40,000 records of ~400 bytes: hours of a busy gateway's calls.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class SpoolFull(Exception):
    """The spool holds `max_bytes` already; the record was not kept."""


@dataclass(frozen=True)
class Spooled:
    """The entries of a spool after what is already drained, and where the file ends."""

    spool_id: str
    entries: list[AuditEntry]
    # Where each entry's line ends in the file (bytes from its start).
    ends: list[int]

    @property
    def end(self) -> int:
        return self.ends[-1] if self.ends else 0


class AuditSpool:
    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._max_bytes = max_bytes
        self._full_reported = False

    def append(self, entries: list[AuditEntry]) -> None:
        """Add `entries` at the end, durably (fsync) before returning."""
        with self._locked():
            size = self.path.stat().st_size if self.path.exists() else 0
            lines = b"" if size else _line({"spool_id": secrets.token_hex(16)})
            lines += b"".join(_line(_to_json(e)) for e in entries)
            if size + len(lines) > self._max_bytes:
                if not self._full_reported:
                    _log.error(
                        "audit spool %s is full (%d bytes): records of calls made while the "
                        "database is down are LOST until it returns",
                        self.path,
                        self._max_bytes,
                    )
                    self._full_reported = True
                raise SpoolFull(f"the audit spool holds {self._max_bytes} bytes already")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, lines)
                os.fsync(fd)
            finally:
                os.close(fd)
            if not size:
                _fsync_directory(self.path.parent)

    def pending(self) -> bool:
        return self.path.exists()

    @contextlib.contextmanager
    def draining(self) -> Iterator[Spooled | None]:
        """The spool's entries, under the lock; the caller writes them to the chain (from
        `drained` bytes on) and calls `remove` when that committed."""
        with self._locked():
            if not self.path.exists():
                yield None
                return
            data = self.path.read_bytes()
            if b"\n" not in data:  # even the header was cut short: nothing was spooled
                self.path.unlink()
                yield None
                return
            lines = data.split(b"\n")
            header = json.loads(lines[0])
            end = len(lines[0]) + 1
            entries: list[AuditEntry] = []
            offsets: list[int] = []
            for line in lines[1:-1]:  # the last piece: empty, or a line cut short by a crash
                end += len(line) + 1
                entries.append(_from_json(json.loads(line)))
                offsets.append(end)
            yield Spooled(str(header["spool_id"]), entries, offsets)

    def remove(self) -> None:
        """Called under `draining`, once every entry is in the chain."""
        self.path.unlink(missing_ok=True)
        self._full_reported = False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def entries_after(spooled: Spooled, drained_bytes: int) -> list[AuditEntry]:
    """The entries of `spooled` not yet in the chain, given that its first `drained_bytes` are
    (entries are appended whole, so drained parts end on a line boundary)."""
    return [e for e, end in zip(spooled.entries, spooled.ends, strict=True) if end > drained_bytes]


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def _to_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at_us": micros(entry.at),
        "duration_ms": entry.duration_ms,
        "caller": entry.caller,
        "fingerprint": entry.fingerprint,
        "role": entry.role,
        "method": entry.method,
        "request_messages": entry.request_messages,
        "response_messages": entry.response_messages,
        "request_digest": base64.b64encode(entry.request_digest).decode("ascii"),
        "status": entry.status,
        "calls": entry.calls,
    }


def _from_json(document: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        at=from_micros(int(document["at_us"])),
        duration_ms=int(document["duration_ms"]),
        caller=str(document["caller"]),
        fingerprint=str(document["fingerprint"]),
        role=str(document["role"]),
        method=str(document["method"]),
        request_messages=int(document["request_messages"]),
        response_messages=int(document["response_messages"]),
        request_digest=base64.b64decode(document["request_digest"]),
        status=str(document["status"]),
        calls=int(document["calls"]),
    )


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
