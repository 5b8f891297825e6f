"""Where an interrupted import resumes: the state is kept for the very file only, and a state
that cannot be trusted is said so and ignored, never half-used."""

from __future__ import annotations

import os
from pathlib import Path

from services.cli.import_state import FileIdentity, ImportCounts, StateFile


def _state(file: Path, directory: Path) -> StateFile:
    return StateFile(FileIdentity.of(file), "vics", "unix:/x/admin.sock", directory)


def test_a_saved_state_resumes_only_the_same_file(tmp_path: Path) -> None:
    file = tmp_path / "set.json"
    file.write_text("x" * 100)
    state = _state(file, tmp_path / "state")
    counts = ImportCounts(read=40, imported=30, rejected=2, unused_fields={"Tags": 3})
    state.save(40, counts)
    assert not (tmp_path / "state").stat().st_mode & 0o077  # the owner's only

    loaded, note = _state(file, tmp_path / "state").load()
    assert note == "" and loaded is not None
    assert (loaded.records_done, loaded.counts) == (40, counts)

    file.write_text("y" * 100)  # same size, new content and time
    os.utime(file, ns=(1, 1))
    loaded, note = _state(file, tmp_path / "state").load()
    assert loaded is None and "changed since" in note

    other = StateFile(FileIdentity.of(file), "icse", "unix:/x/admin.sock", tmp_path / "state")
    assert other.path != state.path  # another format, or another node: another state


def test_an_unreadable_state_is_said_and_ignored(tmp_path: Path) -> None:
    file = tmp_path / "set.csv"
    file.write_text("MD5\n")
    state = _state(file, tmp_path)
    state.path.write_text("{not json")
    loaded, note = state.load()
    assert loaded is None and "unreadable" in note
    state.path.write_text('{"version": 1, "identity": {}}')
    loaded, note = state.load()
    assert loaded is None and "not one this hashex wrote" in note
    state.remove()
    state.remove()  # removing twice is fine: a finished import leaves nothing
    assert state.load() == (None, "")
