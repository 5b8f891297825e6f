"""`hashex linkage rebuild` beside a running node: it relinks, changes nothing that was right,
and can be re-run."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli import exit_codes
from tests.cli.node_process import NodeProcess, hashex


def test_rebuild_beside_a_running_node_changes_nothing_and_reruns(
    node_dir: Path, tmp_path: Path
) -> None:
    hashes = tmp_path / "h.csv"
    rows = [f"{name}.png,image,{digit * 32}" for name, digit in (("a", "1"), ("b", "2"))]
    hashes.write_text("path,media_type,md5\n" + "\n".join(rows) + "\n", encoding="utf-8")
    at = ("--data-dir", node_dir)
    node = NodeProcess(node_dir)
    try:
        assert hashex("submit", hashes, "--series", "S-1", *at).returncode == 0
        # The first may take the submission's queued series from the node's own linker.
        first = hashex("linkage", "rebuild", "--json", *at)
        assert first.returncode == exit_codes.OK, first.stderr
        assert json.loads(first.stdout)["media"] == 2
        again = hashex("linkage", "rebuild", "--json", *at)
        # One origin only: nothing links, so no series changes.
        assert json.loads(again.stdout) == {"media": 2, "events": 0}
    finally:
        assert node.stop() == 0


def test_rebuild_without_a_node_says_so(tmp_path: Path) -> None:
    done = hashex("linkage", "rebuild", "--data-dir", tmp_path / "none")
    assert done.returncode != exit_codes.OK and "Traceback" not in done.stderr
