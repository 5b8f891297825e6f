"""Signed checkpoints of a node's audit log, the outside witnesses that make cutting records off
its end (or rewriting it whole) provable.

With every pull, the origin sends first a checkpoint of its own audit log: record count, head
digest, and its digest at the count of the checkpoint the puller already keeps (the "witness",
asked for in PullRequest.audit_checkpoint_count), Ed25519-signed with its signing key and
addressed to the puller. The puller verifies it against the origin's pinned (and learned) keys
and compares it with the one it keeps:

- a lower count than the one kept: the log was TRUNCATED;
- the same count with another head digest, or a witness digest other than the kept head digest
  (the log was cut and then grew again past the kept count): the log was REWRITTEN.

Otherwise the new checkpoint replaces the kept one. A contradiction is kept with both signed
checkpoints (proof to anyone holding the origin's public key: the origin signed both), logged as
an error, audited on the receiver and shown in `hashex sync status`; replication goes on.

An attacker holding only the origin's database cannot forge a checkpoint; one holding its signing
key can, and nothing here claims otherwise. A checkpoint only witnesses what the origin's log
held when it was sent: records appended and removed between two pulls leave no trace.

Pure: no grpc, no SQL (protobuf messages only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from google.protobuf.message import DecodeError

from hashex.v1 import federation_pb2
from services.core.audit.chain import DIGEST_BYTES
from services.core.signing import NodeSigningKey, sign_bytes, verify_bytes
from services.registry.convert import timestamp

AUDIT_CHECKPOINT_DOMAIN = b"hashex.v1.AuditCheckpoint"
MAX_CHECKPOINT_BYTES = 512
MAX_KEY_ID_CHARS = 32

Kind = Literal["truncated", "rewritten"]


class CheckpointRefused(Exception):
    """A checkpoint that does not verify (signature, size, origin, recipient, digest size)."""


@dataclass(frozen=True)
class HeldCheckpoint:
    """A verified checkpoint, with the signed bytes that prove it."""

    record_count: int
    head_digest: bytes
    body: bytes
    key_id: str
    signature: bytes

    def signed(self) -> federation_pb2.SignedAuditCheckpoint:
        return federation_pb2.SignedAuditCheckpoint(
            body=self.body, key_id=self.key_id, signature=self.signature
        )


@dataclass(frozen=True)
class VerifiedCheckpoint:
    held: HeldCheckpoint
    witness_count: int
    witness_digest: bytes


@dataclass(frozen=True)
class Contradiction:
    kind: Kind
    kept: HeldCheckpoint
    received: HeldCheckpoint

    def describe(self, origin: str) -> str:
        if self.kind == "truncated":
            return (
                f"audit log truncated: {origin} signed {self.received.record_count} records, "
                f"after signing {self.kept.record_count} earlier"
            )
        return (
            f"audit log rewritten: {origin}'s record {self.kept.record_count} is not the one it "
            "signed earlier"
        )


def sign_checkpoint(
    *,
    key: NodeSigningKey,
    origin: str,
    recipient: str,
    record_count: int,
    head_digest: bytes,
    witness_count: int,
    witness_digest: bytes | None,
    at: datetime,
) -> federation_pb2.SignedAuditCheckpoint:
    body = federation_pb2.AuditCheckpoint(
        origin=origin,
        recipient=recipient,
        record_count=record_count,
        head_digest=head_digest,
        made_at=timestamp(at),
        witness_count=witness_count,
        witness_digest=witness_digest or b"",
    ).SerializeToString()
    return federation_pb2.SignedAuditCheckpoint(
        body=body, key_id=key.key_id, signature=sign_bytes(key, AUDIT_CHECKPOINT_DOMAIN, body)
    )


def verify_checkpoint(
    signed: federation_pb2.SignedAuditCheckpoint,
    *,
    origin: str,
    recipient: str,
    keys: dict[str, bytes],
) -> VerifiedCheckpoint:
    """The checkpoint, once its bytes verified under one of `keys`; CheckpointRefused else."""
    if len(signed.body) > MAX_CHECKPOINT_BYTES or len(signed.key_id) > MAX_KEY_ID_CHARS:
        raise CheckpointRefused(f"an audit checkpoint is at most {MAX_CHECKPOINT_BYTES} bytes")
    public_key = keys.get(signed.key_id)
    if public_key is None:
        raise CheckpointRefused(f"audit checkpoint signed by unknown key {signed.key_id!r}")
    if not verify_bytes(public_key, AUDIT_CHECKPOINT_DOMAIN, signed.body, signed.signature):
        raise CheckpointRefused("audit checkpoint signature does not verify")
    body = federation_pb2.AuditCheckpoint()
    try:
        body.ParseFromString(signed.body)
    except DecodeError:
        raise CheckpointRefused("audit checkpoint body does not parse") from None
    if body.origin != origin or body.recipient != recipient:
        raise CheckpointRefused(
            f"audit checkpoint of {body.origin!r} for {body.recipient!r}, not of {origin!r} "
            f"for {recipient!r}"
        )
    if len(body.head_digest) != DIGEST_BYTES or len(body.witness_digest) not in (0, DIGEST_BYTES):
        raise CheckpointRefused("audit checkpoint digests must be 32 bytes")
    held = HeldCheckpoint(
        body.record_count, body.head_digest, signed.body, signed.key_id, signed.signature
    )
    return VerifiedCheckpoint(held, body.witness_count, body.witness_digest)


def contradiction(kept: HeldCheckpoint | None, got: VerifiedCheckpoint) -> Contradiction | None:
    """How `got` contradicts the checkpoint `kept` of the same origin (None: it does not)."""
    if kept is None:
        return None
    received = got.held
    if received.record_count < kept.record_count:
        return Contradiction("truncated", kept, received)
    if received.record_count == kept.record_count and received.head_digest != kept.head_digest:
        return Contradiction("rewritten", kept, received)
    if 0 < kept.record_count == got.witness_count and got.witness_digest != kept.head_digest:
        return Contradiction("rewritten", kept, received)
    return None
