"""`make demo`'s overlap flags (docs/linkage.md "Flags (sync)"): each kind arises between the
three agencies, is listed at both agencies involved under one id, and a state set at one agency
reaches the other.

ALREADY_IDENTIFIED and NEW_MATERIAL arise from the seizures already submitted (GB's gb-willow,
victim identified, and US's us-tern share six files). For CONCURRENT_WORK, US starts work on
us-tern's victim and DE files re-shared copies of four us-tern files under de-heron, whose victim
it is working on: four linked media of de-heron's seven pass the linkage thresholds (3 media,
0.2 of the smaller series), and DE's media linking to us-tern are NEW_MATERIAL for US too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.cli.demo_agencies import DE, GB, US, Agency
from services.cli.demo_images import save_images
from services.cli.demo_shell import hashex, quiet, wait_until

FLAG_TIMEOUT_S = 120.0
# Files of US's seizure that GB does not hold.
US_ONLY = range(GB.seeds.stop, US.seeds.stop)


@dataclass(frozen=True)
class Situation:
    """A flag the demo expects, as `hashex flags --json` shows it, at both agencies involved."""

    kind: str  # FlagKind's name in flags.proto
    series: str  # origin/series_id
    other: str  # the other series (origin/series_id), or the agency whose media link
    agencies: tuple[Agency, Agency]

    def matches(self, flag: dict[str, Any]) -> bool:
        if flag["kind"] != self.kind:
            return False
        series = _series_key(flag["series"])
        other = (
            _series_key(flag["other_series"]) if "other_series" in flag else flag["other_agency"]
        )
        if self.kind == "FLAG_KIND_CONCURRENT_WORK":  # a pair, whichever side comes first
            return {series, other} == {self.series, self.other}
        return (series, other) == (self.series, self.other)

    def __str__(self) -> str:
        return f"{self.kind.removeprefix('FLAG_KIND_')} {self.series} ~ {self.other}"


TERN, WILLOW, HERON = (f"{a.node_id}/{a.series}" for a in (US, GB, DE))
ALREADY_IDENTIFIED = Situation("FLAG_KIND_ALREADY_IDENTIFIED", TERN, WILLOW, (US, GB))
GB_MEDIA_IN_TERN = Situation("FLAG_KIND_NEW_MATERIAL", TERN, GB.node_id, (US, GB))
CONCURRENT_WORK = Situation("FLAG_KIND_CONCURRENT_WORK", HERON, TERN, (DE, US))
DE_MEDIA_IN_TERN = Situation("FLAG_KIND_NEW_MATERIAL", TERN, DE.node_id, (US, DE))


def flags_at(data_dir: Path) -> list[dict[str, Any]]:
    """The flags a node holds (`hashex flags --json` on its admin socket); none if it fails."""
    done = quiet("flags", "--json", "--data-dir", data_dir)
    if done.returncode != 0:
        return []
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def wait_for_flags(dirs: dict[str, Path], wanted: list[Situation]) -> dict[Situation, str]:
    """Until each situation is a flag at both its agencies, with the same id at each: the ids."""
    ids: dict[Situation, str] = {}

    def missing() -> str | None:
        held = {a.node_id: flags_at(dirs[a.node_id]) for a in (GB, US, DE)}
        absent = []
        for situation in wanted:
            found = {
                agency.node_id: {f["id"] for f in held[agency.node_id] if situation.matches(f)}
                for agency in situation.agencies
            }
            same = set.intersection(*found.values())
            if len(same) == 1:
                ids[situation] = same.pop()
            else:
                absent.append(f"{situation} (ids by agency: {found})")
        return "; ".join(absent) or None

    wait_until(missing, FLAG_TIMEOUT_S, "the overlap flags did not all arise")
    return ids


def wait_for_state(data_dir: Path, flag_id: str, state: str) -> None:
    def missing() -> str | None:
        states = [f.get("state") for f in flags_at(data_dir) if f["id"] == flag_id]
        wanted = f"FLAG_STATE_VALUE_{state.upper()}"
        return None if states == [wanted] else f"flag {flag_id[:12]} is {states or 'absent'}"

    wait_until(missing, FLAG_TIMEOUT_S, f"the flag's state {state} did not replicate")


def show_overlap_flags(root: Path, dirs: dict[str, Path]) -> None:
    gb, us, de = (dirs[a.node_id] for a in (GB, US, DE))
    print(
        "\n# Each node links media of different agencies (exact hashes, PDQ near matches) and the"
        "\n# series sharing enough of them, and raises overlap flags for its own agency from those"
        "\n# links and the victim statuses it holds. US's us-tern shares six files with GB's"
        "\n# gb-willow, whose victim GB identified. Waiting for the flags (hashex flags --json) ..."
    )
    wait_for_flags(dirs, [ALREADY_IDENTIFIED, GB_MEDIA_IN_TERN])
    print(
        "\n# US is told that GB identified the victim of a series linked to us-tern"
        "\n# (ALREADY_IDENTIFIED) and that GB's media link to us-tern (NEW_MATERIAL):"
    )
    hashex("flags", "--data-dir", us)
    print("\n# GB, the other agency of both, holds the same two flags under the same ids:")
    hashex("flags", "--data-dir", gb)

    print(
        "\n# US's desk starts work on us-tern's victim; DE seizes re-shared (cropped) copies of"
        "\n# four us-tern files and files them under de-heron, whose victim DE is working on:"
    )
    hashex("victim", US.series, "v1", "in_progress", "--data-dir", us)
    more = save_images(root / "de-more", US_ONLY[:4], "cropped")
    hashex("hash", more, "--output", root / "de-more.jsonl", "--quiet")
    hashex(
        "submit", root / "de-more.jsonl", "--category", DE.category, "--series", DE.series,
        "--case-ref", "DE-BKA/2026/0002", "--data-dir", de,
    )  # fmt: skip
    print("\n# Waiting for the flags ...")
    ids = wait_for_flags(dirs, [CONCURRENT_WORK, DE_MEDIA_IN_TERN])
    print(
        "\n# DE: both agencies work on the victim of linked series (CONCURRENT_WORK); de-heron"
        "\n# and us-tern each have media of the other agency linked to them (NEW_MATERIAL):"
    )
    hashex("flags", "--data-dir", de)
    print("\n# US holds the same CONCURRENT_WORK flag, and DE's media in us-tern as NEW_MATERIAL:")
    hashex("flags", "--data-dir", us)

    concurrent = ids[CONCURRENT_WORK]
    print("\n# DE's victim-ID desk (a unit with the victim-id role) acknowledges it ...")
    hashex("unit", "issue", "vid", "--role", "victim-id", "--out", root / "units", "--data-dir", de)
    unit = ("--cert", root / "units" / "vid.pem", "--data-dir", de)
    hashex("flags", "ack", concurrent, *unit)
    wait_for_state(us, concurrent, "acknowledged")
    print("\n# ... and the state reaches US, the flag's other agency:")
    hashex("flags", "--kind", "concurrent-work", "--data-dir", us)
    print("\n# Once the two desks agree who leads, DE resolves it; US sees who did and when:")
    hashex("flags", "resolve", concurrent, *unit)
    wait_for_state(us, concurrent, "resolved")
    hashex("flags", "--kind", "concurrent-work", "--json", "--data-dir", us)


def _series_key(series: dict[str, str]) -> str:
    return f"{series['origin']}/{series['series_id']}"
