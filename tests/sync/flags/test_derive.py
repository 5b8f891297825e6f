"""Flag ids and derivation: pure logic (docs/linkage.md "Flags (sync)")."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.sync.flags.derive import Evidence, decide, flags_of_link, new_material_flags
from services.sync.flags.ids import FlagKind, concurrent_work_id, new_material_id
from services.sync.flags.reader import MediaEvidence, SeriesLink, SeriesRef, VictimSummary

X = SeriesRef(1, "nl", "x")
Y = SeriesRef(2, "de", "y")
SINCE = datetime(2026, 1, 2, tzinfo=UTC)
IDENTIFIED = VictimSummary(SINCE, False, False, ("desk-b",))
WORKING = VictimSummary(None, True, False, ())
NOTHING = VictimSummary(None, False, True, ())

names = st.text(alphabet="abcdefgh0123", min_size=1, max_size=6)
refs = st.builds(SeriesRef, st.integers(1, 100), names, names)


def link(linked: bool = True) -> SeriesLink:
    return SeriesLink(X, Y, linked, 5, 2, 3, 4, 1)


@given(refs, refs)
def test_concurrent_work_id_is_order_independent(a: SeriesRef, b: SeriesRef) -> None:
    assert concurrent_work_id(a, b) == concurrent_work_id(b, a)


@given(refs, names, names)
def test_distinct_situations_have_distinct_ids(x: SeriesRef, s: str, t: str) -> None:
    if s != t:
        assert new_material_id(x, s) != new_material_id(x, t)
    ids = {new_material_id(x, s), concurrent_work_id(x, SeriesRef(0, s, t))}
    assert len(ids) == 2
    assert all(len(i) == 64 and i == i.lower() for i in ids)


def test_already_identified_is_told_to_the_unidentified_side() -> None:
    [flag] = flags_of_link(link(), {1: NOTHING, 2: IDENTIFIED})
    assert flag.kind is FlagKind.ALREADY_IDENTIFIED
    assert flag.series == X and flag.other_agency == "de"
    assert flag.identified_desk == "desk-b" and flag.identified_since == SINCE
    assert flag.evidence == Evidence(5, 2, 3, 4)


def test_no_victim_status_raises_no_already_identified() -> None:
    assert flags_of_link(link(), {}) == []
    assert flags_of_link(link(), {1: NOTHING, 2: NOTHING}) == []


def test_unlinked_pair_raises_nothing() -> None:
    assert flags_of_link(link(linked=False), {1: WORKING, 2: IDENTIFIED}) == []


def test_concurrent_work_when_both_in_progress() -> None:
    [flag] = flags_of_link(link(), {1: WORKING, 2: WORKING})
    assert flag.kind is FlagKind.CONCURRENT_WORK
    assert flag.id == concurrent_work_id(Y, X)


def test_new_material_needs_evidence_and_no_identified_victim() -> None:
    by_origin = {
        "de": MediaEvidence(3, 0, 10),
        "fr": MediaEvidence(1, 1, None),
        "be": MediaEvidence(2, 0, 5),
        "nl": MediaEvidence(9, 9, 0),
    }
    flags = new_material_flags(X, NOTHING, by_origin, min_linked_media=3)
    assert [f.other_agency for f in flags] == ["de", "fr"]
    assert all(f.kind is FlagKind.NEW_MATERIAL for f in flags)
    assert new_material_flags(X, IDENTIFIED, by_origin, min_linked_media=3) == []


def test_raised_once_evidence_updated_only_when_changed() -> None:
    [flag] = flags_of_link(link(), {1: NOTHING, 2: IDENTIFIED})
    assert decide(flag, None).raise_new
    same = decide(flag, flag.evidence)
    assert not same.raise_new and not same.evidence_changed
    changed = decide(flag, Evidence(6, 2, 4, 4))
    assert not changed.raise_new and changed.evidence_changed
