"""Resubmitting never erases, and `hashex media`, `series set` and `victim` change only what
they are told to: the commands as a unit runs them against a real `node up` process."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli.demo_images import synthetic_image
from tests.cli.node_process import NodeProcess, hashex


def _lookup(node_dir: Path, sha1: str) -> dict[str, object]:
    found = hashex("lookup", f"sha1:{sha1}", "--format", "json", "--data-dir", node_dir)
    assert found.returncode == 0, found.stderr
    [result] = [json.loads(line) for line in found.stdout.splitlines()]
    [match] = result["matches"]
    assert isinstance(match, dict)
    return match


def _series(match: dict[str, object]) -> list[str]:
    series = match["series"]
    assert isinstance(series, list)
    return [s["series_id"] for s in series]


def test_resubmission_keeps_what_it_omits_and_media_commands_change_explicitly(
    node_dir: Path, tmp_path: Path
) -> None:
    exhibit = tmp_path / "exhibit-7"
    exhibit.mkdir()
    for seed in range(3):
        synthetic_image(seed).save(exhibit / f"{seed}.png")
    hashes = tmp_path / "exhibit-7.jsonl"
    assert hashex("hash", exhibit, "--output", hashes, "--quiet").returncode == 0
    sha1 = json.loads(hashes.read_text().splitlines()[0])["sha1"]
    media_id = f"sha256:{json.loads(hashes.read_text().splitlines()[0])['sha256']}"
    at = ("--data-dir", node_dir)

    node = NodeProcess(node_dir)
    try:
        first = hashex("submit", hashes, "--category", "caid-uk:A", "--series", "op-1", *at)
        assert first.returncode == 0, first.stderr
        again = hashex("submit", hashes, *at)  # no --category, no --series
        assert "0 updated, 3 already stored" in again.stderr
        second = hashex("submit", hashes, "--series", "op-2", *at)
        assert "3 updated" in second.stderr
        match = _lookup(node_dir, sha1)
        assert (match["category"], _series(match)) == ("caid-uk:A", ["op-1", "op-2"])

        unlinked = hashex("media", "unlink", media_id, "--series", "op-1", *at)
        assert unlinked.returncode == 0 and "1 media changed" in unlinked.stdout
        cleared = hashex("media", "set", media_id, "--clear-category", *at)
        assert cleared.returncode == 0, cleared.stderr
        match = _lookup(node_dir, sha1)
        assert (match["category"], _series(match)) == ("", ["op-2"])

        assert hashex("retract", media_id, *at).returncode == 0
        twice = hashex("retract", media_id, *at)  # already done: said so, still success
        assert twice.returncode == 0 and "1 already retracted; 0 unknown" in twice.stdout
        # Not a media id of this node (a hash given by mistake): nothing retracted, exit 4.
        mistaken = hashex("retract", f"sha1:{sha1}", *at)
        assert mistaken.returncode == 4 and "0 already retracted; 1 unknown" in mistaken.stdout
        assert "not media of this node" in mistaken.stderr
        resubmitted = hashex("submit", hashes, *at)
        assert "1 of them had been retracted" in resubmitted.stderr
        assert hashex("lookup", f"sha1:{sha1}", *at).returncode == 1
        restored = hashex("media", "restore", media_id, *at)
        assert restored.returncode == 0 and "1 media changed" in restored.stdout
        assert hashex("lookup", f"sha1:{sha1}", *at).returncode == 0

        unknown = hashex("media", "restore", "sha256:" + "0" * 64, *at)
        assert unknown.returncode == 4 and "not found" in unknown.stderr
        nothing = hashex("media", "set", media_id, *at)
        assert nothing.returncode == 2 and "nothing to change" in nothing.stderr

        assert hashex("series", "set", "op-2", "--name", "Operation Two", *at).returncode == 0
        assert hashex("series", "set", "op-2", *at).returncode == 0  # keeps the name
        shown = json.loads(hashex("series", "show", "op-2", *at).stdout)
        assert shown["name"] == "Operation Two"
        victim = hashex("victim", "op-2", "v1", "identified", "--desk", "GB desk", *at)
        assert victim.returncode == 0 and "GB desk" in victim.stdout
        kept = hashex("victim", "op-2", "v1", "safeguarded", *at)
        assert "safeguarded (GB desk)" in kept.stdout
        cleared_desk = hashex("victim", "op-2", "v1", "--clear-desk", *at)
        assert "safeguarded (no desk)" in cleared_desk.stdout
    finally:
        assert node.stop() == 0
