"""The evidence rules of series linkage: thresholds, and clusters that do not depend on the
order links are found in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.errors import InvalidArgument
from services.registry.linkage.evidence import (
    LinkageSettings,
    MediaLink,
    clusters,
    pair_evidence,
)

SETTINGS = LinkageSettings()


def test_one_stray_near_match_never_links_two_series() -> None:
    # Series 1 holds media 10-19, series 2 media 20-29; one near pair between them.
    series_of = {m: {1} for m in range(10, 20)} | {m: {2} for m in range(20, 30)}
    [evidence] = pair_evidence([MediaLink(10, 20, False, 12)], series_of).values()
    assert (evidence.linked_media, evidence.exact_media, evidence.near_media) == (1, 0, 1)
    assert not evidence.passes(10, 10, SETTINGS)


def test_both_thresholds_are_needed() -> None:
    series_of = {m: {1} for m in range(100)} | {m: {2} for m in range(100, 200)}
    links = [MediaLink(m, m + 100, m % 2 == 0, None if m % 2 == 0 else 7) for m in range(3)]
    evidence = pair_evidence(links, series_of)[(1, 2)]
    assert (evidence.linked_media, evidence.exact_media, evidence.closest_distance) == (3, 2, 7)
    assert evidence.near_media == 1
    assert not evidence.passes(100, 100, SETTINGS)  # 3 media, but 3 % of the smaller series
    assert evidence.passes(15, 100, SETTINGS)  # 3 of 15 is 20 %
    assert not evidence.passes(16, 100, SETTINGS)
    assert not pair_evidence(links[:2], series_of)[(1, 2)].passes(2, 2, SETTINGS)  # 2 < 3


def test_media_linked_many_times_count_once_on_each_side() -> None:
    series_of = {1: {10}, 2: {20}, 3: {20}, 4: {20}}
    links = [MediaLink(1, 2, True, None), MediaLink(1, 3, True, None), MediaLink(1, 4, False, 3)]
    evidence = pair_evidence(links, series_of)[(10, 20)]
    assert (evidence.linked_low, evidence.linked_high, evidence.linked_media) == (1, 3, 1)
    assert (evidence.exact_media, evidence.near_media) == (1, 0)


def test_a_media_in_two_series_links_neither_to_itself() -> None:
    series_of = {1: {10, 11}, 2: {20}}
    evidence = pair_evidence([MediaLink(1, 2, True, None)], series_of)
    assert set(evidence) == {(10, 20), (11, 20)}


def test_bad_settings_are_refused_naming_the_setting() -> None:
    for values, named in (
        ({"min_linked_media": 0}, "min_linked_media"),
        ({"min_linked_fraction": 0.0}, "min_linked_fraction"),
        ({"min_linked_fraction": 1.5}, "min_linked_fraction"),
        ({"pdq_max_distance": 32}, "pdq_max_distance"),
    ):
        with pytest.raises(InvalidArgument, match=named):
            LinkageSettings(**values)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MediaLink(2, 1, True, None)
    with pytest.raises(ValueError):
        MediaLink(1, 2, False, None)


def test_clusters_are_components_named_by_their_smallest_series() -> None:
    assert clusters([(5, 9), (9, 2), (7, 8)]) == {2: 2, 5: 2, 9: 2, 7: 7, 8: 7}
    assert clusters([]) == {}


pairs = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(lambda p: p[0] != p[1]),
    max_size=60,
)


@given(pairs, st.randoms(use_true_random=False))
def test_clusters_do_not_depend_on_the_order_links_are_found(
    found: list[tuple[int, int]], rng: random.Random
) -> None:
    shuffled = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in found]
    rng.shuffle(shuffled)
    assert clusters(shuffled) == clusters(found)
    for row, cluster_id in clusters(found).items():
        assert cluster_id <= row


@given(pairs)
def test_clusters_partition_exactly_the_connected_series(found: list[tuple[int, int]]) -> None:
    assigned = clusters(found)
    assert set(assigned) == {row for pair in found for row in pair}
    for a, b in found:
        assert assigned[a] == assigned[b]
    # A cluster is connected: every member reaches its cluster id through the pairs.
    neighbours: dict[int, set[int]] = {}
    for a, b in found:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    for row, cluster_id in assigned.items():
        seen, todo = {row}, [row]
        while todo:
            for nxt in neighbours[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert cluster_id == min(seen)
