"""Signed batches, pure: built by the origin, verified by the recipient before anything is
parsed; every tampering, misaddressing, replay, reordering or unknown key is rejected."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from hashex.v1 import federation_pb2
from services.core.changelog.store import EntryKind, LogRow
from services.core.signing import (
    BATCH_DOMAIN,
    KEY_ROTATION_DOMAIN,
    NodeSigningKey,
    rotation_message,
    sign_bytes,
)
from services.sync.batches import (
    ActiveKey,
    BatchChain,
    BatchRejected,
    Cursor,
    VerifiedBatch,
    verify_batch,
)
from services.sync.entries import key_revocation_entry, key_rotation_entry
from services.sync.origin_keys import OriginKey, published, revoked
from services.sync.policy import SharingPolicy
from tests.sync.helpers import (
    CAID_A,
    CAID_B,
    MOMENT,
    ORIGIN,
    RECIPIENT,
    md5,
    media_at,
    media_record,
    pdq,
    series_at,
    series_record,
    sha256,
)

KEY1 = NodeSigningKey("ed25519:1", SigningKey(bytes(range(32))))
KEY2 = NodeSigningKey("ed25519:2", SigningKey(bytes(range(1, 33))))
KNOWN = {KEY1.key_id: KEY1.public_key}
ONLY_A = SharingPolicy(categories=frozenset({"caid-uk:A"}))


def log_of(categories: list[bool]) -> list[LogRow]:
    """Media entries seq 1..n; True: category A (shared under ONLY_A), False: B (withheld)."""
    return [
        LogRow(seq, EntryKind.MEDIA, media_at(seq, media_record(f"m{seq}", category=cat)))
        for seq, shared in enumerate(categories, start=1)
        for cat in [CAID_A if shared else CAID_B]
    ]


def chain(
    policy: SharingPolicy | None = ONLY_A,
    *,
    max_entries: int = 4,
    digest: bytes = b"",
    generation: int = 1,
    schedule: tuple[ActiveKey, ...] = (ActiveKey(0, KEY1),),
    recipient: str = RECIPIENT,
) -> BatchChain:
    return BatchChain(
        origin=ORIGIN,
        recipient=recipient,
        policy=policy,
        generation=generation,
        previous_digest=digest,
        previous_chain=b"",
        schedule=schedule,
        max_entries=max_entries,
    )


def receive(
    batches: list[federation_pb2.SignedBatch], cursor: Cursor, keys: dict[str, bytes] = KNOWN
) -> tuple[Cursor, list[VerifiedBatch]]:
    verified = []
    for signed in batches:
        batch = verify_batch(signed, origin=ORIGIN, recipient=RECIPIENT, cursor=cursor, keys=keys)
        verified.append(batch)
        cursor = batch.cursor
        keys = {**keys, **{k.key_id: k.public_key for k in batch.new_keys}}
    return cursor, verified


@given(
    shared=st.lists(st.booleans(), min_size=1, max_size=40),
    max_entries=st.integers(1, 9),
    split=st.integers(0, 40),
)
def test_batches_round_trip_in_chunks_with_gaps(
    shared: list[bool], max_entries: int, split: int
) -> None:
    log = log_of(shared)
    split = min(split, len(log))
    sender = chain(max_entries=max_entries)
    # The sender reads the log in two chunks, as a servicer does page by page.
    batches = sender.batches(log[:split], len(log)) + sender.batches(log[split:], len(log))
    cursor, verified = receive(batches, Cursor())
    assert cursor.seq == len(log) and cursor.generation == 1
    assert [b.first_seq for b in verified] == [1] + [b.last_seq + 1 for b in verified[:-1]]
    delivered = [c.seq for b in verified for c in b.changes]
    assert delivered == [seq for seq, ok in enumerate(shared, start=1) if ok]
    assert all(b.last_seq - b.first_seq < max_entries for b in verified)
    # The stored bytes travel unchanged.
    body = federation_pb2.BatchBody.FromString(batches[0].body)
    assert all(e in {r.entry for r in log} for e in body.entries)


@given(data=st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    [signed] = chain(max_entries=10).batches(log_of([True, False, True]), 3)
    field = data.draw(st.sampled_from(["body", "signature"]))
    original = getattr(signed, field)
    position = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(original)
    changed[position] ^= flip
    tampered = federation_pb2.SignedBatch()
    tampered.CopyFrom(signed)
    setattr(tampered, field, bytes(changed))
    with pytest.raises(BatchRejected) as rejected:
        receive([tampered], Cursor())
    assert rejected.value.reason == "bad_signature"


def test_no_policy_withholds_everything_but_ranges_advance() -> None:
    batches = chain(None, max_entries=2).batches(log_of([True] * 5), 5)
    cursor, verified = receive(batches, Cursor())
    assert cursor.seq == 5 and all(b.changes == () for b in verified)


def test_a_batch_for_another_recipient_is_rejected() -> None:
    batches = chain(recipient="de-bka").batches(log_of([True]), 1)
    with pytest.raises(BatchRejected) as rejected:
        receive(batches, Cursor())
    assert rejected.value.reason == "wrong_recipient"


def test_a_batch_from_another_origin_is_rejected() -> None:
    [signed] = chain().batches(log_of([True]), 1)
    with pytest.raises(BatchRejected) as rejected:
        verify_batch(signed, origin="de-bka", recipient=RECIPIENT, cursor=Cursor(), keys=KNOWN)
    assert rejected.value.reason == "wrong_origin"


def test_replayed_and_out_of_order_batches_are_rejected() -> None:
    first, second, third = chain(max_entries=1).batches(log_of([True] * 3), 3)
    cursor, _ = receive([first, second], Cursor())
    for replay in (first, second):
        with pytest.raises(BatchRejected) as rejected:
            receive([replay], cursor)
        assert rejected.value.reason == "replayed"
    with pytest.raises(BatchRejected) as rejected:
        receive([third], receive([first], Cursor())[0])
    assert rejected.value.reason == "out_of_order"
    # A batch at the right seq but from another chain does not continue this one.
    [spliced] = chain(max_entries=1, digest=b"x" * 32).batches(log_of([True] * 3)[2:], 3)
    with pytest.raises(BatchRejected) as rejected:
        receive([spliced], cursor)
    assert rejected.value.reason == "broken_chain"


def test_a_newer_policy_generation_restarts_at_one_and_older_is_refused() -> None:
    log = log_of([True, False, True])
    cursor, _ = receive(chain().batches(log, 3), Cursor())
    wider = chain(SharingPolicy(generation=2), generation=2, digest=cursor.digest)
    restarted, verified = receive(wider.batches(log, 3), cursor)
    assert [c.seq for b in verified for c in b.changes] == [1, 2, 3]
    assert restarted.generation == 2
    older = chain(generation=1, digest=restarted.digest).batches(log, 3)
    with pytest.raises(BatchRejected) as rejected:
        receive(older, restarted)
    assert rejected.value.reason == "replayed"


def test_an_unknown_key_is_rejected_and_a_rotation_teaches_the_next_key() -> None:
    signature = sign_bytes(
        KEY1, KEY_ROTATION_DOMAIN, rotation_message(KEY2.key_id, KEY2.public_key)
    )
    rotation = key_rotation_entry(
        3,
        MOMENT,
        key_id=KEY2.key_id,
        public_key=KEY2.public_key,
        signed_by_key_id=KEY1.key_id,
        signature=signature,
    )
    log = log_of([True, True])
    log.append(LogRow(3, EntryKind.KEY_ROTATION, rotation))
    log += log_of([True] * 5)[3:]
    schedule = (ActiveKey(0, KEY1), ActiveKey(3, KEY2))
    batches = chain(max_entries=10, schedule=schedule).batches(log, 5)
    assert [b.key_id for b in batches] == ["ed25519:1", "ed25519:2"]
    cursor, verified = receive(batches, Cursor())
    assert cursor.seq == 5 and [k.key_id for k in verified[0].new_keys] == ["ed25519:2"]
    with pytest.raises(BatchRejected) as rejected:
        receive(batches[1:], verified[0].cursor)  # without having learned key 2
    assert rejected.value.reason == "unknown_key"


def test_a_forged_rotation_is_rejected() -> None:
    forger = SigningKey.generate()
    bad = sign_bytes(
        NodeSigningKey("ed25519:1", forger),
        KEY_ROTATION_DOMAIN,
        rotation_message(KEY2.key_id, KEY2.public_key),
    )
    rotation = key_rotation_entry(
        1,
        MOMENT,
        key_id=KEY2.key_id,
        public_key=KEY2.public_key,
        signed_by_key_id=KEY1.key_id,
        signature=bad,
    )
    batches = chain().batches([LogRow(1, EntryKind.KEY_ROTATION, rotation)], 1)
    with pytest.raises(BatchRejected) as rejected:
        receive(batches, Cursor())
    assert rejected.value.reason == "bad_key_rotation"


def signed_body(entries: list[bytes], *, first: int, last: int) -> federation_pb2.SignedBatch:
    """A batch the origin signed as it stands (its entries whatever they are)."""
    body = federation_pb2.BatchBody(
        origin=ORIGIN,
        recipient=RECIPIENT,
        first_seq=first,
        last_seq=last,
        policy_generation=1,
        entries=entries,
        origin_last_seq=last + 5,
    ).SerializeToString()
    return federation_pb2.SignedBatch(
        body=body, key_id=KEY1.key_id, signature=sign_bytes(KEY1, BATCH_DOMAIN, body)
    )


def test_entries_out_of_the_batch_range_are_quarantined_and_the_rest_kept() -> None:
    entries = [media_at(2, media_record("a")), media_at(1, media_record("b"))]
    cursor, [batch] = receive([signed_body(entries, first=1, last=2)], Cursor(generation=1))
    assert [c.seq for c in batch.changes] == [2]
    [held] = batch.quarantined
    assert (held.seq, held.entry) == (1, entries[1])
    assert "out of order or outside the batch range 1-2" in held.reason
    assert cursor.seq == 2  # the batch is applied and passed, not retried


def test_a_record_claiming_another_origin_is_quarantined() -> None:
    foreign = media_record("m", origin="de-bka")
    log = [
        LogRow(1, EntryKind.MEDIA, media_at(1, foreign)),
        LogRow(2, EntryKind.MEDIA, media_at(2, media_record("own"))),
    ]
    _, [batch] = receive(chain(SharingPolicy()).batches(log, 2), Cursor())
    assert [c.seq for c in batch.changes] == [2]
    [held] = batch.quarantined
    assert held.seq == 1 and "another origin" in held.reason


def test_records_past_the_contract_limits_are_quarantined() -> None:
    """What an older release let through: two SHA-256 values, nine PDQ hashes, 17 series, 101
    victims; and bytes that are no entry at all."""
    many_pdq = tuple(pdq(f"p{i}") for i in range(9))
    entries = [
        media_at(1, media_record("two-sha", sha256("x"), sha256("y"))),
        media_at(2, media_record("many", md5("many"), *many_pdq)),
        media_at(3, media_record("series", series_ids=tuple(f"s{i}" for i in range(17)))),
        series_at(4, series_record("crowded", victims=tuple((f"v{i}", 1, "") for i in range(101)))),
        b"\xff\xffnot an entry",
        media_at(6, media_record("fine")),
    ]
    _, [batch] = receive([signed_body(entries, first=1, last=6)], Cursor(generation=1))
    assert [c.seq for c in batch.changes] == [6]
    reasons = {q.seq: q.reason for q in batch.quarantined}
    assert set(reasons) == {1, 2, 3, 4, 0}
    assert "2 sha256 signals; at most 1 per media" in reasons[1]
    assert "9 pdq signals; at most 8 per media" in reasons[2]
    assert "17 series; at most 16" in reasons[3]
    assert "101 victims; at most 100" in reasons[4]
    assert "not a serialized ChangeEntry" in reasons[0]


def test_a_refused_batch_still_tells_the_origins_head() -> None:
    """Signed by the origin, so its head counts for the lag even though the batch is refused."""
    signed = signed_body([media_at(3, media_record("a"))], first=3, last=3)
    with pytest.raises(BatchRejected) as rejected:
        receive([signed], Cursor(generation=1))
    assert rejected.value.reason == "out_of_order"
    assert rejected.value.origin_last_seq == 8
    forged = federation_pb2.SignedBatch(body=signed.body, key_id=KEY1.key_id, signature=bytes(64))
    with pytest.raises(BatchRejected) as unsigned:
        receive([forged], Cursor(generation=1))
    assert unsigned.value.origin_last_seq == 0  # an unverified body tells nothing


def test_verified_batch_is_frozen() -> None:
    [signed] = chain().batches(log_of([True]), 1)
    _, [batch] = receive([signed], Cursor())
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.last_seq = 9  # type: ignore[misc]


def rotated_log(signature: bytes = b"", signed_by: str = "") -> list[LogRow]:
    """Media 1-2, key 2 published at seq 3 (vouched for by key 1 unless told otherwise), 4-5."""
    rotation = key_rotation_entry(
        3,
        MOMENT,
        key_id=KEY2.key_id,
        public_key=KEY2.public_key,
        signed_by_key_id=signed_by or KEY1.key_id,
        signature=signature
        or sign_bytes(KEY1, KEY_ROTATION_DOMAIN, rotation_message(KEY2.key_id, KEY2.public_key)),
    )
    return [
        *log_of([True, True]),
        LogRow(3, EntryKind.KEY_ROTATION, rotation),
        *log_of([True] * 5)[3:],
    ]


def receive_windowed(
    batches: list[federation_pb2.SignedBatch], keys: dict[str, OriginKey]
) -> list[VerifiedBatch]:
    """As the puller receives: each published key retires the older ones, each revocation
    applies from the next batch on."""
    verified, cursor = [], Cursor()
    for signed in batches:
        batch = verify_batch(signed, origin=ORIGIN, recipient=RECIPIENT, cursor=cursor, keys=keys)
        verified.append(batch)
        cursor = batch.cursor
        for key in batch.new_keys:
            keys = published(keys, key.key_id, key.public_key, key.seq)
        for revocation in batch.revoked_keys:
            keys = revoked(keys, revocation.key_id, revocation.revoked_from_seq)
    return verified


def test_a_retired_key_signs_only_up_to_its_successors_publication() -> None:
    # A sender that goes on signing with key 1 after publishing key 2.
    batches = chain(max_entries=10, schedule=(ActiveKey(0, KEY1),)).batches(rotated_log(), 5)
    assert [b.key_id for b in batches] == ["ed25519:1", "ed25519:1"]
    keys = {KEY1.key_id: OriginKey(KEY1.key_id, KEY1.public_key)}
    with pytest.raises(BatchRejected) as rejected:
        receive_windowed(batches, keys)
    assert rejected.value.reason == "retired_key"
    assert "retired at seq 3 when its successor was published" in str(rejected.value)


def test_a_batch_signed_by_a_revoked_key_is_refused_with_its_reason() -> None:
    batches = chain(max_entries=2, schedule=(ActiveKey(0, KEY1),)).batches(log_of([True] * 5), 5)
    entirely = {KEY1.key_id: OriginKey(KEY1.key_id, KEY1.public_key, revoked_from_seq=1)}
    with pytest.raises(BatchRejected) as rejected:
        receive_windowed(batches, entirely)
    assert rejected.value.reason == "revoked_key"
    assert str(rejected.value) == (
        "the batch (up to seq 2) is signed with key ed25519:1, which its origin revoked entirely"
    )
    from_three = {KEY1.key_id: OriginKey(KEY1.key_id, KEY1.public_key, revoked_from_seq=3)}
    assert len(receive_windowed(batches[:1], from_three)) == 1, "seqs 1-2 were signed before"
    with pytest.raises(BatchRejected, match="revoked from seq 3 on") as rejected:
        receive_windowed(batches[:2], from_three)
    assert rejected.value.reason == "revoked_key"


def test_without_the_old_key_the_new_one_signs_the_whole_history_and_the_card_vouches() -> None:
    # The origin deleted key 1's file (or revoked it): key 2 signs seqs 1-3 too.
    schedule = (ActiveKey(0, None), ActiveKey(3, KEY2))
    batches = chain(max_entries=10, schedule=schedule).batches(rotated_log(), 5)
    assert [b.key_id for b in batches] == ["ed25519:2", "ed25519:2"]
    # A new peer whose card lists key 1 (revoked) and key 2 verifies everything, the rotation
    # to key 2 included (it is on the card).
    card = {
        KEY1.key_id: OriginKey(KEY1.key_id, KEY1.public_key, revoked_from_seq=1),
        KEY2.key_id: OriginKey(KEY2.key_id, KEY2.public_key),
    }
    verified = receive_windowed(batches, card)
    assert [c.seq for b in verified for c in b.changes] == [1, 2, 3, 4, 5]
    # A rotation without a voucher is accepted only for a key on the card.
    unvouched = rotated_log(signature=bytes(64), signed_by="ed25519:1")
    batches = chain(max_entries=10, schedule=schedule).batches(unvouched, 5)
    assert len(receive_windowed(batches, {KEY2.key_id: card[KEY2.key_id]})) == 2
    with pytest.raises(BatchRejected) as rejected:
        receive_windowed(
            chain(max_entries=10, schedule=((ActiveKey(0, KEY1),))).batches(unvouched, 5),
            {KEY1.key_id: OriginKey(KEY1.key_id, KEY1.public_key)},
        )
    assert rejected.value.reason == "bad_key_rotation"


def test_a_revocation_in_the_log_stops_the_key_from_the_next_batch_on() -> None:
    revocation = LogRow(
        3,
        EntryKind.KEY_REVOCATION,
        key_revocation_entry(3, MOMENT, key_id=KEY1.key_id, revoked_from_seq=1),
    )
    log = [*log_of([True, True]), revocation, *log_of([True] * 5)[3:]]
    keys = {
        KEY1.key_id: OriginKey(KEY1.key_id, KEY1.public_key),
        KEY2.key_id: OriginKey(KEY2.key_id, KEY2.public_key),
    }
    by_key2 = chain(max_entries=3, schedule=(ActiveKey(0, KEY2),)).batches(log, 5)
    [first, _] = receive_windowed(by_key2, keys)
    assert [(r.key_id, r.revoked_from_seq) for r in first.revoked_keys] == [("ed25519:1", 1)]
    assert [c.seq for c in first.changes] == [1, 2, 3]
    # A thief of key 1 signs what follows the revocation: refused.
    forged = chain(max_entries=3, schedule=(ActiveKey(0, KEY1),)).batches(log, 5)
    with pytest.raises(BatchRejected) as rejected:
        receive_windowed([by_key2[0], forged[1]], keys)
    assert rejected.value.reason == "revoked_key"


def test_a_malformed_revocation_refuses_the_batch() -> None:
    bad = key_revocation_entry(1, MOMENT, key_id=KEY1.key_id, revoked_from_seq=0)
    batches = chain().batches([LogRow(1, EntryKind.KEY_REVOCATION, bad)], 1)
    with pytest.raises(BatchRejected) as rejected:
        receive(batches, Cursor())
    assert rejected.value.reason == "bad_key_revocation"
