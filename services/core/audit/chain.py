"""The audit record of one gateway call (or of an event such as a rejected batch) and the hash
chain that makes the log tamper-evident.

A record says who called (identity URI, certificate fingerprint, role), what (method), how much
(request and response message counts), a SHA-256 digest of the request bytes — never the hashes
or case data asked about — the outcome (status code name), when and for how long. Each record's
digest covers its canonical bytes and the previous record's digest, so editing, deleting or
reordering any record breaks the chain from there on; `ChainVerifier` recomputes it and names the
first record that does not fit. Cutting records off the end leaves a shorter valid chain: the
node's peers hold signed checkpoints of its log (count and head digest,
services.sync.audit_checkpoints) to contradict it.

A record may stand for several calls (`calls`): refusals of one caller within a window are
aggregated (services.core.audit.refusals), so that a flood of refused calls costs a bounded
number of rows. `calls` is part of the canonical bytes only when it is not 1, so records written
before aggregation existed keep their digests.

Pure: no grpc, no SQL.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DOMAIN = b"hashex.v1.AuditRecord\0"
GENESIS_DIGEST = bytes(32)
DIGEST_BYTES = 32
# Client-chosen text (an unknown method name) is cut to this length before it is recorded.
MAX_TEXT = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class AuditEntry:
    """One call as the gateway saw it, before it takes its place in the chain."""

    at: datetime
    duration_ms: int
    caller: str
    fingerprint: str
    role: str
    method: str
    request_messages: int
    response_messages: int
    request_digest: bytes
    status: str
    # How many calls this record stands for (more than 1: refusals aggregated in a window; the
    # request digest is then SHA-256 over the calls' request digests, in order).
    calls: int = 1

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("audit times must be timezone-aware")
        if len(self.request_digest) != DIGEST_BYTES:
            raise ValueError("request_digest must be a SHA-256 digest")
        if self.calls < 1:
            raise ValueError("an audit record stands for at least one call")


@dataclass(frozen=True)
class AuditRecord:
    """An entry at position `seq` (from 1, without gaps) of the chain."""

    seq: int
    entry: AuditEntry
    previous_digest: bytes
    digest: bytes


def canonical_bytes(seq: int, entry: AuditEntry) -> bytes:
    """The exact bytes a record's digest covers: sorted-key compact JSON, times as integer
    microseconds since the epoch (what PostgreSQL stores, so a read-back record hashes the same).
    """
    document = {
        "seq": seq,
        "at_us": micros(entry.at),
        "duration_ms": entry.duration_ms,
        "caller": entry.caller,
        "fingerprint": entry.fingerprint,
        "role": entry.role,
        "method": entry.method,
        "request_messages": entry.request_messages,
        "response_messages": entry.response_messages,
        "request_digest": entry.request_digest.hex(),
        "status": entry.status,
    }
    if entry.calls != 1:
        document["calls"] = entry.calls
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def record_digest(seq: int, entry: AuditEntry, previous_digest: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + previous_digest + canonical_bytes(seq, entry)).digest()


def seal(entry: AuditEntry, *, after: AuditRecord | None) -> AuditRecord:
    """`entry` as the record following `after` (None: the first record of the log)."""
    seq = 1 if after is None else after.seq + 1
    previous = GENESIS_DIGEST if after is None else after.digest
    return AuditRecord(seq, entry, previous, record_digest(seq, entry, previous))


def seal_all(entries: list[AuditEntry], *, after: AuditRecord | None) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for entry in entries:
        after = seal(entry, after=after)
        records.append(after)
    return records


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: str


class ChainVerifier:
    """Feed records in seq order; the first one that does not continue the chain is reported
    (and verification stops there: every later record depends on it)."""

    def __init__(self) -> None:
        self.count = 0
        self.last_digest = GENESIS_DIGEST
        self.broken: ChainBreak | None = None

    def check(self, record: AuditRecord) -> ChainBreak | None:
        if self.broken is not None:
            return self.broken
        expected_seq = self.count + 1
        if record.seq != expected_seq:
            self.broken = ChainBreak(record.seq, f"expected record {expected_seq} here")
        elif record.previous_digest != self.last_digest:
            self.broken = ChainBreak(record.seq, "does not follow the record before it")
        elif record.digest != record_digest(record.seq, record.entry, record.previous_digest):
            self.broken = ChainBreak(record.seq, "its contents do not match its digest")
        else:
            self.count += 1
            self.last_digest = record.digest
        return self.broken


class RequestDigest:
    """SHA-256 over a call's request messages, each preceded by its length (8 bytes, big
    endian), so two streams with the same concatenated bytes but different message boundaries
    differ. An operator holding a suspect request can show it was (or was not) the one sent."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, message: bytes) -> None:
        self._hash.update(struct.pack(">Q", len(message)))
        self._hash.update(message)
        self.count += 1

    def digest(self) -> bytes:
        return self._hash.digest()


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (the canonical form's and the spool's time)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
