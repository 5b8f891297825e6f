"""`hashex dedup` as a unit runs it: a folder and a series reported through the node's admin
socket, in both output formats, and bad input refused before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli import exit_codes
from services.cli.demo_images import synthetic_image
from tests.cli.node_process import NodeProcess, hashex


def test_bad_input_is_refused_before_the_node_is_asked(tmp_path: Path) -> None:
    at = ("--data-dir", tmp_path / "no-node")
    both = hashex("dedup", "md5:" + "0" * 32, "--series", "s1", *at)
    neither = hashex("dedup", *at)
    far = hashex("dedup", "md5:" + "0" * 32, "--max-distance", "32", *at)
    for done, says in ((both, "either"), (neither, "either"), (far, "0-31")):
        assert done.returncode == exit_codes.BAD_INPUT and says in done.stderr
        assert "Traceback" not in done.stderr


def test_a_folder_and_a_series_are_reported(node_dir: Path, tmp_path: Path) -> None:
    seized = tmp_path / "seized"
    seized.mkdir()
    for number in range(3):
        synthetic_image(number).save(seized / f"{number}.png")
    hashes = tmp_path / "known.jsonl"
    known = tmp_path / "known"
    known.mkdir()
    synthetic_image(0).save(known / "0.png")
    assert hashex("hash", known, "--output", hashes, "--quiet").returncode == 0
    at = ("--data-dir", node_dir)
    node = NodeProcess(node_dir)
    try:
        assert hashex("submit", hashes, "--series", "S-1", *at).returncode == 0
        report = hashex("dedup", seized, "--format", "json", *at)
        assert report.returncode == exit_codes.OK, report.stderr
        counts = json.loads(report.stdout)
        assert (counts["items"], counts["exact_items"], counts["new_items"]) == (3, 1, 2)
        [cluster] = counts["clusters"]
        assert [s["series_id"] for s in cluster["series"]] == ["S-1"]
        assert counts["origins"] == [{"origin": "cli-test", "exact_items": 1, "near_items": 0}]

        table = hashex("dedup", seized, *at)
        assert table.returncode == exit_codes.OK
        assert "known exact           1" in table.stdout and "cli-test/S-1" in table.stdout

        # Its own series: matches of its own origin are left out, so the item is new.
        series = hashex("dedup", "--series", "S-1", "--format", "json", *at)
        assert series.returncode == exit_codes.OK, series.stderr
        assert (json.loads(series.stdout)["items"], json.loads(series.stdout)["new_items"]) == (
            1,
            1,
        )
        missing = hashex("dedup", "--series", "nope", *at)
        assert missing.returncode == exit_codes.NOT_FOUND and "nope" in missing.stderr
    finally:
        assert node.stop() == 0
