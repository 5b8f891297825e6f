"""The sharing policy at the source: what leaves for a peer, entry by entry and match by match."""

from __future__ import annotations

from datetime import UTC, datetime

from hashex.v1 import common_pb2, federation_pb2, registry_pb2
from services.core.changelog.store import EntryKind, LogRow
from services.registry import convert
from services.registry.model import MediaFlags
from services.sync.entries import flag_state_entry
from services.sync.policy import SharingPolicy
from services.sync.policy_filter import filter_log_row, filter_lookup
from tests.sync.helpers import (
    CAID_A,
    CAID_B,
    ORIGIN,
    md5,
    media_at,
    media_record,
    pdq,
    retraction_at,
    series_at,
    series_record,
)

EVERYTHING = SharingPolicy(disclose_desk=True)
PEER = "de-bka"


def media_row(seq: int = 1, **fields: object) -> LogRow:
    return LogRow(seq, EntryKind.MEDIA, media_at(seq, media_record("m", **fields)))  # type: ignore[arg-type]


def parsed(data: bytes | None) -> federation_pb2.ChangeEntry:
    assert data is not None
    return federation_pb2.ChangeEntry.FromString(data)


def test_no_policy_shares_nothing_but_key_rotations() -> None:
    assert filter_log_row(media_row(), None, recipient=PEER) is None
    rotation = LogRow(1, EntryKind.KEY_ROTATION, b"k")
    assert (
        filter_log_row(rotation, None, recipient=PEER) is rotation.entry
    )  # later batches need the key


def test_an_open_policy_passes_the_stored_bytes() -> None:
    row = media_row(category=CAID_A, series_ids=("s",), flags=MediaFlags(victim_identified=True))
    assert filter_log_row(row, EVERYTHING, recipient=PEER) is row.entry


def test_categories_including_uncategorised() -> None:
    only_a = SharingPolicy(categories=frozenset({"caid-uk:A"}))
    assert filter_log_row(media_row(category=CAID_A), only_a, recipient=PEER) is not None
    assert filter_log_row(media_row(category=CAID_B), only_a, recipient=PEER) is None
    assert filter_log_row(media_row(), only_a, recipient=PEER) is None
    with_none = SharingPolicy(categories=frozenset({"uncategorised"}))
    assert filter_log_row(media_row(), with_none, recipient=PEER) is not None


def test_disallowed_algorithms_are_stripped_and_a_media_left_bare_withheld() -> None:
    pdq_only = SharingPolicy(algorithms=frozenset({"pdq"}))
    both = LogRow(1, EntryKind.MEDIA, media_at(1, media_record("m", md5("m"), pdq("m"))))
    entry = parsed(filter_log_row(both, pdq_only, recipient=PEER))
    assert [s.algorithm for s in entry.media.signals] == [common_pb2.HASH_ALGORITHM_PDQ]
    assert filter_log_row(media_row(), pdq_only, recipient=PEER) is None  # md5 only


def test_embargoed_series_withhold_their_media_and_themselves() -> None:
    embargo = SharingPolicy(embargoed_series=frozenset({"op"}))
    assert filter_log_row(media_row(series_ids=("other", "op")), embargo, recipient=PEER) is None
    assert filter_log_row(media_row(series_ids=("other",)), embargo, recipient=PEER) is not None
    row = LogRow(2, EntryKind.SERIES, series_at(2, series_record("op", "secret")))
    assert filter_log_row(row, embargo, recipient=PEER) is None


def test_victim_status_and_desk_redaction() -> None:
    row = LogRow(
        1, EntryKind.SERIES, series_at(1, series_record("s", "x", (("v1", 3, "GB desk"),)))
    )
    no_desk = parsed(filter_log_row(row, SharingPolicy(), recipient=PEER))
    assert [(v.victim_id, v.status, v.responsible_desk) for v in no_desk.series.victims] == [
        ("v1", common_pb2.IDENTIFICATION_STATUS_IDENTIFIED, "")
    ]
    hidden = SharingPolicy(disclose_victim_status=False, disclose_desk=True)
    assert list(parsed(filter_log_row(row, hidden, recipient=PEER)).series.victims) == []
    flagged = media_row(flags=MediaFlags(victim_identified=True, distributed=True))
    flags = parsed(filter_log_row(flagged, hidden, recipient=PEER)).media.flags
    assert (flags.victim_identified, flags.distributed) == (False, True)


def test_a_retraction_follows_the_media_it_retracts() -> None:
    only_a = SharingPolicy(categories=frozenset({"caid-uk:A"}))
    for category, shared in ((CAID_A, True), (CAID_B, False)):
        before = convert.media_to_proto(media_record("m", category=category)).SerializeToString()
        row = LogRow(2, EntryKind.RETRACTION, retraction_at(2, "m"), media_before=before)
        assert (filter_log_row(row, only_a, recipient=PEER) is not None) is shared


def test_lookup_answers_only_own_allowed_matches() -> None:
    own = convert.media_to_proto(media_record("m", md5("m"), pdq("m"), category=CAID_A))
    restricted = convert.media_to_proto(media_record("r", category=CAID_B))
    foreign = convert.media_to_proto(media_record("f", origin="de-bka"))

    def match(media: common_pb2.Media, signal: common_pb2.Signal) -> registry_pb2.Match:
        return registry_pb2.Match(
            kind=registry_pb2.MATCH_KIND_EXACT, matched_signal=signal, media=media
        )

    response = registry_pb2.LookupResponse(
        results=[
            registry_pb2.LookupResult(
                index=0,
                matches=[
                    match(own, own.signals[0]),
                    match(restricted, restricted.signals[0]),
                    match(foreign, foreign.signals[0]),
                ],
            ),
            registry_pb2.LookupResult(index=1, matches=[match(own, own.signals[1])]),
        ]
    )
    md5_only = SharingPolicy(algorithms=frozenset({"md5"}), categories=frozenset({"caid-uk:A"}))
    answer = filter_lookup(response, md5_only, origin=ORIGIN)
    [kept] = answer.results[0].matches
    assert kept.media.media_id == "m" and len(kept.media.signals) == 1
    assert list(answer.results[1].matches) == []  # matched on PDQ, which may not leave
    assert all(not r.matches for r in filter_lookup(response, None, origin=ORIGIN).results)


def test_a_media_moved_out_of_what_the_peer_may_see_is_withdrawn() -> None:
    only_a = SharingPolicy(categories=frozenset({"caid-uk:A"}))
    before_a = convert.media_to_proto(media_record("m", category=CAID_A)).SerializeToString()
    before_b = convert.media_to_proto(media_record("m", category=CAID_B)).SerializeToString()
    moved = LogRow(7, EntryKind.MEDIA, media_at(7, media_record("m", category=CAID_B)), before_a)
    entry = parsed(filter_log_row(moved, only_a, recipient=PEER))
    assert entry.WhichOneof("change") == "retraction"
    assert (entry.seq, entry.retraction.media_id) == (7, "m")
    # Never allowed before, or never held: nothing at all (not even its media id) leaves.
    hidden = LogRow(7, EntryKind.MEDIA, moved.entry, before_b)
    assert filter_log_row(hidden, only_a, recipient=PEER) is None
    assert filter_log_row(LogRow(7, EntryKind.MEDIA, moved.entry), only_a, recipient=PEER) is None
    # Still allowed: the new state itself travels.
    assert (
        filter_log_row(
            LogRow(7, EntryKind.MEDIA, media_row(7, category=CAID_A).entry, before_a),
            only_a,
            recipient=PEER,
        )
        is not None
    )


def flag_state_row(told_to: str) -> LogRow:
    entry = flag_state_entry(1, datetime(2026, 1, 2, tzinfo=UTC), flag_id="a" * 64, state=2)
    return LogRow(1, EntryKind.FLAG_STATE, entry, media_before=told_to.encode())


def test_a_flag_state_goes_only_to_the_flags_other_agency() -> None:
    row = flag_state_row(PEER)
    assert filter_log_row(row, EVERYTHING, recipient=PEER) is row.entry
    assert filter_log_row(row, EVERYTHING, recipient="fr-pn") is None
    assert filter_log_row(row, None, recipient=PEER) is None
