"""VICS files imported into a real node and exported again give back the same hashes,
categories, flags and series, for each version and profile and both document shapes; the file
paths of a case export stay on the node."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.cli.formats.records import ImportedMedia, Position
from services.cli.formats.vics import read_vics
from services.cli.formats.vics_write import write_vics
from services.core.algorithms import Algorithm, SignalValue
from services.registry.model import Category, CategoryScheme, MediaFlags
from tests.cli.node_process import NodeProcess, hashex

PROFILES = {
    "US": CategoryScheme.VICS_US,
    "Default": CategoryScheme.VICS_DEFAULT,
    "UK": CategoryScheme.VICS_UK,
    "CUSTOM": CategoryScheme.VICS_CUSTOM,
}


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _media(rng: random.Random, scheme: CategoryScheme, count: int) -> list[ImportedMedia]:
    media = []
    for i in range(count):
        signals = [SignalValue(Algorithm.MD5, rng.randbytes(16))]
        if i % 2:
            signals.append(SignalValue(Algorithm.SHA1, rng.randbytes(20)))
        if i % 3 == 0:
            signals.append(SignalValue(Algorithm.PHOTODNA, rng.randbytes(144)))
        media.append(
            ImportedMedia(
                position=Position(i + 1),
                signals=tuple(signals),
                category=Category(scheme, str(i % 5)) if i % 4 else None,
                flags=MediaFlags(victim_identified=i % 2 == 0, distributed=i % 3 == 1),
                series_names=(f"Op {scheme.name} {i % 3}",) if i % 5 else (),
                file_paths=(f"C:\\evidence\\{scheme.name}\\{i}.jpg",),
            )
        )
    return media


def _key(media: ImportedMedia) -> tuple[object, ...]:
    return (
        frozenset((s.algorithm, s.value) for s in media.signals),
        media.category,
        media.flags,
        media.series_names[:1],
    )


def test_vics_files_come_back_as_they_went_in(node_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(11)
    at = ("--data-dir", node_dir)
    cases = [("2.0", profile, shape) for profile in PROFILES for shape in ("media", "cases")]
    cases.append(("1.3", None, "media"))
    node = NodeProcess(node_dir)
    try:
        for version, profile, shape in cases:
            scheme = PROFILES[profile] if profile else CategoryScheme.VICS_LEGACY
            written = _media(rng, scheme, 12)
            source = tmp_path / f"{version}-{profile}-{shape}.json"
            with source.open("w", encoding="utf-8") as out:
                write_vics(out, written, version=version, profile=profile, shape=shape)
            done = hashex("import", "vics", source, *at)
            assert done.returncode == 0, done.stderr
            assert "12 records read: 12 imported" in done.stderr

            exported = tmp_path / f"export-{version}-{profile}-{shape}.json"
            options = ["--version", version, "--shape", shape, "--out", exported]
            if profile:
                options += ["--profile", profile]
            out = hashex("export", "vics", *options, *at)
            assert out.returncode == 0, out.stderr
            back = [r for r in read_vics(exported) if isinstance(r, ImportedMedia)]
            in_profile = {
                _key(m) for m in back if m.category is None or m.category.scheme == scheme
            }
            assert {_key(m) for m in written} <= in_profile
            assert "evidence" not in exported.read_text(encoding="utf-8")
    finally:
        node.stop()
