"""The demo's reading of `hashex flags --json`: which listed flag is the situation it waits for."""

from __future__ import annotations

from typing import Any

from services.cli.demo_flags import ALREADY_IDENTIFIED, CONCURRENT_WORK, DE_MEDIA_IN_TERN


def listed(kind: str, series: str, other: str) -> dict[str, Any]:
    origin, series_id = series.split("/")
    flag: dict[str, Any] = {
        "id": "a" * 64,
        "kind": f"FLAG_KIND_{kind}",
        "series": {"origin": origin, "series_id": series_id},
    }
    if "/" in other:
        other_origin, other_id = other.split("/")
        flag["other_series"] = {"origin": other_origin, "series_id": other_id}
        flag["other_agency"] = other_origin
    else:
        flag["other_agency"] = other
    return flag


def test_a_situation_matches_its_kind_and_sides_only() -> None:
    assert ALREADY_IDENTIFIED.matches(
        listed("ALREADY_IDENTIFIED", "us-hsi/us-tern", "gb-nca/gb-willow")
    )
    assert not ALREADY_IDENTIFIED.matches(
        listed("ALREADY_IDENTIFIED", "gb-nca/gb-willow", "us-hsi/us-tern")
    )
    assert not ALREADY_IDENTIFIED.matches(
        listed("CONCURRENT_WORK", "us-hsi/us-tern", "gb-nca/gb-willow")
    )
    assert DE_MEDIA_IN_TERN.matches(listed("NEW_MATERIAL", "us-hsi/us-tern", "de-bka"))
    assert not DE_MEDIA_IN_TERN.matches(listed("NEW_MATERIAL", "us-hsi/us-tern", "gb-nca"))


def test_concurrent_work_matches_its_pair_in_either_order() -> None:
    for pair in (("de-bka/de-heron", "us-hsi/us-tern"), ("us-hsi/us-tern", "de-bka/de-heron")):
        assert CONCURRENT_WORK.matches(listed("CONCURRENT_WORK", *pair))
    assert not CONCURRENT_WORK.matches(
        listed("CONCURRENT_WORK", "de-bka/de-heron", "gb-nca/gb-willow")
    )
