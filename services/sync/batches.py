"""Signed batches of change-log entries: built by the origin for one recipient, verified by the
recipient before anything in them is parsed or applied.

A batch covers a contiguous range of the origin's sequence numbers; entries the sharing policy
withholds leave gaps inside it, so consecutive batches cover consecutive ranges whatever the
policy. Each batch names the digest of the previous batch sent to that recipient, forming a chain
from the recipient's cursor: a replayed, reordered or spliced batch cannot continue it. The
signature covers the exact body bytes, which carry the exact entry bytes; nothing is ever
re-serialised to check a signature.

The signing key of a batch is the newest key activated before its first entry (key 1 from the
start, key n from the seq of the KeyRotation entry that published it), unless that key's file is
gone or the key is revoked: then the newest usable key signs (a newer key may sign older seqs).
A batch ends right after a key rotation, so a receiver has learned a key, from an entry signed
by its predecessor or from the card, before any batch is signed with it. The receiver accepts a
batch only under a key valid for it (services.sync.origin_keys: not retired before the batch
ends, not revoked for it).

Pure: no SQL, no gRPC.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from hashex.v1 import federation_pb2
from services.core.changelog.store import EntryKind, LogRow
from services.core.errors import InvalidArgument
from services.core.signing import (
    BATCH_DOMAIN,
    KEY_ROTATION_DOMAIN,
    PUBLIC_KEY_BYTES,
    NodeSigningKey,
    parse_key_id,
    rotation_message,
    sign_bytes,
    verify_bytes,
)
from services.sync.entries import Change, RevokedKey, RotatedKey, decode_entry, parse_entry
from services.sync.origin_keys import OriginKey, as_origin_keys, published, revoked
from services.sync.policy import SharingPolicy
from services.sync.policy_filter import filter_log_row

DEFAULT_ENTRIES_PER_BATCH = 1_000
MAX_ENTRIES_PER_BATCH = 10_000
# Well under the 16 MiB message limit, whatever the entries.
MAX_BODY_BYTES = 8 * 1024 * 1024


def digest_of(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


@dataclass(frozen=True)
class Cursor:
    """Where a recipient stands in an origin's chain: the last seq applied, the digest of the
    last batch applied (empty before the first), the policy generation it was filtered under,
    and the origin's log chain at that seq as the batch stated it (empty before the first)."""

    seq: int = 0
    digest: bytes = b""
    generation: int = 0
    chain: bytes = b""


@dataclass(frozen=True)
class Checkpoint:
    """The origin's log chain at `seq`, as a batch ending there stated it."""

    seq: int
    chain: bytes


@dataclass(frozen=True)
class ActiveKey:
    """A signing key and the seq of the entry that published it (0 for the first key); `key`
    is None when the key may not sign (its file is gone, or it is revoked)."""

    activated_at: int
    key: NodeSigningKey | None


def key_for(first_seq: int, schedule: Sequence[ActiveKey]) -> NodeSigningKey:
    """The newest key activated before `first_seq`; when that one may not sign, the newest key
    that may (valid for older seqs too)."""
    active = [k for k in schedule if k.activated_at < first_seq]
    if not active:
        raise InvalidArgument(f"no signing key is active before seq {first_seq}")
    chosen = max(active, key=lambda k: k.activated_at).key
    if chosen is not None:
        return chosen
    usable = [k for k in schedule if k.key is not None]
    if not usable:
        raise InvalidArgument("no signing key of this node may sign: every one is gone or revoked")
    newest = max(usable, key=lambda k: k.activated_at).key
    assert newest is not None
    return newest


def entries_per_batch(requested: int) -> int:
    if requested == 0:
        return DEFAULT_ENTRIES_PER_BATCH
    if not 1 <= requested <= MAX_ENTRIES_PER_BATCH:
        raise InvalidArgument(
            f"max_entries_per_batch {requested} must be 1-{MAX_ENTRIES_PER_BATCH} (0: 1,000)"
        )
    return requested


class BatchChain:
    """The sender's side of one Pull: turns consecutive log rows into signed batches addressed
    to `recipient`, filtered by `policy` (None: everything withheld), chained from the request."""

    def __init__(
        self,
        *,
        origin: str,
        recipient: str,
        policy: SharingPolicy | None,
        generation: int,
        previous_digest: bytes,
        previous_chain: bytes,
        schedule: Sequence[ActiveKey],
        max_entries: int = DEFAULT_ENTRIES_PER_BATCH,
    ) -> None:
        """`previous_chain`: this node's log chain at the seq before the first row batched."""
        self._origin = origin
        self._recipient = recipient
        self._policy = policy
        self._generation = generation
        self.schedule = tuple(schedule)
        self._max_entries = max_entries
        self.previous_digest = previous_digest
        self.previous_chain = previous_chain

    def batches(
        self, rows: Sequence[LogRow], origin_last_seq: int
    ) -> list[federation_pb2.SignedBatch]:
        """Signed batches covering exactly the seqs of `rows` (in order), cut at the entry
        limit, the size limit and after each key rotation."""
        signed: list[federation_pb2.SignedBatch] = []
        piece: list[_Filtered] = []
        size = 0
        for row in rows:
            entry = filter_log_row(row, self._policy, recipient=self._recipient)
            cost = len(entry) + 8 if entry is not None else 0
            if piece and (len(piece) >= self._max_entries or size + cost > MAX_BODY_BYTES):
                signed.append(self._sign(piece, origin_last_seq))
                piece, size = [], 0
            piece.append(_Filtered(row, entry))
            size += cost
            if row.kind == EntryKind.KEY_ROTATION:
                signed.append(self._sign(piece, origin_last_seq))
                piece, size = [], 0
        if piece:
            signed.append(self._sign(piece, origin_last_seq))
        return signed

    def _sign(self, piece: Sequence[_Filtered], origin_last_seq: int) -> federation_pb2.SignedBatch:
        first, last = piece[0].row.seq, piece[-1].row.seq
        body = federation_pb2.BatchBody(
            origin=self._origin,
            recipient=self._recipient,
            first_seq=first,
            last_seq=last,
            previous_digest=self.previous_digest,
            policy_generation=self._generation,
            entries=[p.entry for p in piece if p.entry is not None],
            origin_last_seq=max(origin_last_seq, last),
            chain_before=self.previous_chain,
            chain_after=piece[-1].row.chain,
        ).SerializeToString()
        key = key_for(first, self.schedule)
        self.previous_digest = digest_of(body)
        self.previous_chain = piece[-1].row.chain
        return federation_pb2.SignedBatch(
            body=body, key_id=key.key_id, signature=sign_bytes(key, BATCH_DOMAIN, body)
        )


@dataclass(frozen=True)
class _Filtered:
    row: LogRow
    entry: bytes | None


# --- the recipient --------------------------------------------------------------------------


class BatchRejected(Exception):
    """A batch that must not be applied. `reason` is a short code for counting and audit;
    the message says why without quoting the batch."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        # SHA-256 of the rejected body (set by verify_batch), for the audit record.
        self.digest = b""
        # The origin's head as the batch states it, once its signature verified (0 before):
        # the receiver's lag stays true while batches fail.
        self.origin_last_seq = 0


@dataclass(frozen=True)
class QuarantinedEntry:
    """An entry of a verified batch that cannot be applied (invalid against the contract, out
    of order, another origin's record): kept with its reason, never applied, never retried."""

    seq: int  # the seq the entry claims; 0 when it cannot even be decoded
    reason: str
    entry: bytes


@dataclass(frozen=True)
class VerifiedBatch:
    origin: str
    first_seq: int
    last_seq: int
    generation: int
    origin_last_seq: int
    digest: bytes
    changes: tuple[Change, ...]
    # Keys the batch published (each verified by its predecessor), in order.
    new_keys: tuple[RotatedKey, ...]
    # Keys the batch revoked, in order.
    revoked_keys: tuple[RevokedKey, ...] = ()
    # Entries left out of `changes`, with why.
    quarantined: tuple[QuarantinedEntry, ...] = ()
    # The origin's log chain at last_seq (empty from an origin of an older release).
    chain: bytes = b""

    @property
    def cursor(self) -> Cursor:
        """The recipient's cursor once this batch is applied."""
        return Cursor(self.last_seq, self.digest, self.generation, self.chain)


def verify_batch(
    signed: federation_pb2.SignedBatch,
    *,
    origin: str,
    recipient: str,
    cursor: Cursor,
    keys: Mapping[str, OriginKey | bytes],
) -> VerifiedBatch:
    """The batch, verified against the signature, the origin's known keys (`key_id` → key with
    its validity window, or a bare public key) and the recipient's cursor; BatchRejected
    otherwise. The body is parsed only after its signature verified, and the entries only after
    the body's framing checked out."""
    steps = verify_batch_in_steps(
        signed, origin=origin, recipient=recipient, cursor=cursor, keys=keys
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:
            batch: VerifiedBatch = done.value
            return batch


# Entries parsed between two pauses of `verify_batch_in_steps` (well under a millisecond of work).
ENTRIES_PER_STEP = 25


def verify_batch_in_steps(
    signed: federation_pb2.SignedBatch,
    *,
    origin: str,
    recipient: str,
    cursor: Cursor,
    keys: Mapping[str, OriginKey | bytes],
) -> Generator[None, None, VerifiedBatch]:
    """`verify_batch` as a generator that pauses (yields) every ENTRIES_PER_STEP entries and
    returns the batch: a caller on an event loop lets other tasks run at each pause."""
    try:
        return (
            yield from _verify(signed, origin=origin, recipient=recipient, cursor=cursor, keys=keys)
        )
    except BatchRejected as rejected:
        rejected.digest = digest_of(signed.body)
        raise


def _verify(
    signed: federation_pb2.SignedBatch,
    *,
    origin: str,
    recipient: str,
    cursor: Cursor,
    keys: Mapping[str, OriginKey | bytes],
) -> Generator[None, None, VerifiedBatch]:
    known = as_origin_keys(keys)
    signer = known.get(signed.key_id)
    if signer is None:
        raise BatchRejected(
            "unknown_key",
            f"the batch is signed with unknown key {signed.key_id!r}; if {origin} rotated its "
            f"key and deleted the old one, pin its current card (`hashex peer add --replace`)",
        )
    if not verify_bytes(signer.public_key, BATCH_DOMAIN, signed.body, signed.signature):
        raise BatchRejected("bad_signature", "the batch signature does not verify")
    body = federation_pb2.BatchBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError:
        raise BatchRejected("malformed", "the batch body is not a BatchBody") from None
    if body.origin != origin:
        raise BatchRejected("wrong_origin", f"the batch is from {body.origin!r}, not {origin!r}")
    if body.recipient != recipient:
        raise BatchRejected("wrong_recipient", "the batch is addressed to another node")
    try:
        refused = signer.refusal(body.last_seq)
        if refused is not None:
            raise BatchRejected(*refused)
        _check_position(body, cursor)
        changes, new_keys, quarantined = yield from _verified_entries(body, known)
        revocations = tuple(c for c in changes if isinstance(c, RevokedKey))
    except BatchRejected as rejected:
        rejected.origin_last_seq = max(body.origin_last_seq, body.last_seq)
        raise
    return VerifiedBatch(
        origin=origin,
        first_seq=body.first_seq,
        last_seq=body.last_seq,
        generation=body.policy_generation,
        origin_last_seq=max(body.origin_last_seq, body.last_seq),
        digest=digest_of(signed.body),
        changes=changes,
        new_keys=new_keys,
        revoked_keys=revocations,
        quarantined=quarantined,
        chain=bytes(body.chain_after),
    )


def _check_position(body: federation_pb2.BatchBody, cursor: Cursor) -> None:
    if body.last_seq < body.first_seq or body.first_seq == 0:
        raise BatchRejected("malformed", "the batch's seq range is empty or starts at 0")
    if body.policy_generation < cursor.generation:
        raise BatchRejected("replayed", "the batch is of an older policy generation")
    # A newer policy generation re-offers the log from the start.
    expected = 1 if body.policy_generation > cursor.generation else cursor.seq + 1
    if body.first_seq < expected:
        raise BatchRejected(
            "replayed", f"the batch starts at seq {body.first_seq}, already applied"
        )
    if body.first_seq > expected:
        raise BatchRejected(
            "out_of_order", f"the batch starts at seq {body.first_seq}, expected {expected}"
        )
    if body.previous_digest != cursor.digest:
        raise BatchRejected("broken_chain", "the batch does not continue the chain applied so far")
    # The origin's own history: where this batch starts, its log must be the one applied here.
    # (Unknown on either side from an older release: nothing to compare.)
    continues = expected == cursor.seq + 1
    if continues and cursor.chain and body.chain_before and body.chain_before != cursor.chain:
        raise BatchRejected(
            "history_diverged",
            f"the origin's log up to seq {cursor.seq} is not the one applied here: it was "
            "restored from a backup, rewound or forked; run `hashex sync resync "
            f"{body.origin}` once its operator confirms the restore",
        )


def _verified_entries(
    body: federation_pb2.BatchBody, keys: Mapping[str, OriginKey]
) -> Generator[
    None, None, tuple[tuple[Change, ...], tuple[RotatedKey, ...], tuple[QuarantinedEntry, ...]]
]:
    """The batch's changes in order, the keys it publishes, and the entries quarantined: one
    that does not parse or validate, claims a seq out of order or outside the batch, or names
    another origin is set aside, so that no entry, whatever its bytes, halts the origin's
    replication. A key rotation that does not verify still refuses the whole batch: it is the
    origin's signature chain, not a record."""
    known = dict(keys)
    changes: list[Change] = []
    new_keys: list[RotatedKey] = []
    quarantined: list[QuarantinedEntry] = []
    previous = body.first_seq - 1
    for i, data in enumerate(body.entries):
        if i and i % ENTRIES_PER_STEP == 0:
            yield
        try:
            change = parse_entry(data, origin=body.origin)
        except InvalidArgument as error:
            quarantined.append(QuarantinedEntry(_claimed_seq(data), str(error), data))
            continue
        if not previous < change.seq <= body.last_seq:
            reason = (
                f"entry seq {change.seq} is out of order or outside the batch range "
                f"{body.first_seq}-{body.last_seq}"
            )
            quarantined.append(QuarantinedEntry(change.seq, reason, data))
            continue
        previous = change.seq
        if isinstance(change, RotatedKey):
            _check_rotation(change, known)
            known = published(known, change.key_id, change.public_key, change.seq)
            new_keys.append(change)
        if isinstance(change, RevokedKey):
            _check_revocation(change)
            known = revoked(known, change.key_id, change.revoked_from_seq)
        changes.append(change)
    return tuple(changes), tuple(new_keys), tuple(quarantined)


def _claimed_seq(data: bytes) -> int:
    try:
        return int(decode_entry(data).seq)
    except InvalidArgument:
        return 0


def _check_revocation(revocation: RevokedKey) -> None:
    """Like a rotation, part of the origin's signature chain: a malformed one refuses the batch."""
    try:
        parse_key_id(revocation.key_id)
    except InvalidArgument:
        raise BatchRejected(
            "bad_key_revocation", "a key revocation names a malformed key id"
        ) from None
    if revocation.revoked_from_seq < 1:
        raise BatchRejected("bad_key_revocation", "a key revocation must start at seq 1 or later")


def _check_rotation(rotation: RotatedKey, known: Mapping[str, OriginKey]) -> None:
    """A key already known (from the card, which lists the whole key history) needs no
    voucher: so a new peer verifies the whole history even when the origin deleted the old key
    file. A key not known must be vouched for by a known key valid at the rotation's seq."""
    try:
        parse_key_id(rotation.key_id)
    except InvalidArgument:
        raise BatchRejected("bad_key_rotation", "a key rotation names a malformed key id") from None
    if len(rotation.public_key) != PUBLIC_KEY_BYTES:
        raise BatchRejected("bad_key_rotation", "a key rotation carries a malformed public key")
    already = known.get(rotation.key_id)
    if already is not None:
        if already.public_key != rotation.public_key:
            raise BatchRejected("bad_key_rotation", f"key {rotation.key_id} is already another key")
        return
    signer = known.get(rotation.signed_by_key_id)
    message = rotation_message(rotation.key_id, rotation.public_key)
    if (
        signer is None
        or signer.refusal(rotation.seq) is not None
        or not verify_bytes(signer.public_key, KEY_ROTATION_DOMAIN, message, rotation.signature)
    ):
        raise BatchRejected(
            "bad_key_rotation",
            f"key rotation to {rotation.key_id} is not vouched for by a valid key (nor is the "
            "key on the pinned card)",
        )
