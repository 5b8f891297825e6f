"""The hashex command as a unit uses it: a real `node up` process with its own embedded
PostgreSQL, hash → submit → lookup, exit codes, a clean stop on SIGTERM with no PostgreSQL left
behind, and a restart that keeps every record."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from services.cli.demo_images import cropped, resized, synthetic_image
from tests.cli.node_process import NodeProcess, hashex, postgres_processes


def test_node_init_is_rerunnable_and_keys_are_private(node_dir: Path) -> None:
    again = hashex("node", "init", "--node-id", "cli-test", "--data-dir", node_dir)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    other = hashex("node", "init", "--node-id", "other", "--data-dir", node_dir)
    assert other.returncode == 2 and "already holds node 'cli-test'" in other.stderr
    for key in ("case.key", "signing/ed25519_1.key"):
        assert (node_dir / "keys" / key).stat().st_mode & 0o777 == 0o600


def test_hash_submit_lookup_stop_restart(node_dir: Path, tmp_path: Path) -> None:
    seized = tmp_path / "seized"
    seized.mkdir()
    for seed in range(6):
        synthetic_image(seed).save(seized / f"{seed}.png")
    later = tmp_path / "later"
    later.mkdir()
    resized(synthetic_image(0)).save(later / "resized.jpg", quality=50)
    cropped(synthetic_image(1)).save(later / "cropped.jpg", quality=50)
    synthetic_image(99).save(later / "unrelated.png")
    assert hashex("hash", seized, "--output", tmp_path / "a.jsonl", "--quiet").returncode == 0
    assert (
        hashex(
            "hash", later, "--output", tmp_path / "b.csv", "--format", "csv", "--quiet"
        ).returncode
        == 0
    )
    secret = "NCA/2026/SECRET-CASE-77"

    node = NodeProcess(node_dir)
    try:
        node_args = ("--data-dir", node_dir)
        done = hashex(
            "submit",
            tmp_path / "a.jsonl",
            "--category",
            "caid-uk:b",
            "--case-ref",
            secret,
            *node_args,
        )
        assert done.returncode == 0, done.stderr
        assert "submitted 6 media: 6 new" in done.stderr
        again = hashex(
            "submit",
            tmp_path / "a.jsonl",
            "--case-ref",
            secret,
            "--category",
            "caid-uk:B",
            *node_args,
        )
        assert "6 already stored" in again.stderr

        found = hashex("lookup", "--file", tmp_path / "b.csv", "--format", "json", *node_args)
        assert found.returncode == 0, found.stderr
        results = [json.loads(line) for line in found.stdout.splitlines()]
        near = [m for r in results for m in r["matches"] if m["kind"] == "near"]
        assert len({m["media_id"] for m in near}) == 2
        assert all(m["category"] == "caid-uk:B" and m["origin"] == "cli-test" for m in near)
        assert secret not in found.stdout

        first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
        exact = hashex("lookup", f"sha1:{first['sha1'].upper()}", *node_args)
        assert exact.returncode == 0 and "exact" in exact.stdout
        missing = hashex("lookup", "md5:" + "0" * 32, *node_args)
        assert missing.returncode == 1
        bad = hashex("lookup", "md5:1234", "sha3:00", *node_args)
        assert bad.returncode == 2
        assert "argument 1: md5 needs 32 hex characters, got 4" in bad.stderr
        assert "argument 2: unknown algorithm 'sha3'" in bad.stderr

        # An image itself, as a newcomer tries first: hashed here, its hashes looked up.
        image = hashex("lookup", "--file", later / "resized.jpg", "--format", "json", *node_args)
        assert image.returncode == 0, image.stderr
        asked = [json.loads(line) for line in image.stdout.splitlines()]
        assert [a["label"].split()[-1] for a in asked] == ["md5", "sha1", "sha256", "pdq"]
        assert [m["kind"] for a in asked for m in a["matches"]] == ["near"]
        (tmp_path / "noise.bin").write_bytes(bytes(range(128, 256)) * 8)
        noise = hashex("lookup", "--file", tmp_path / "noise.bin", *node_args)
        assert noise.returncode == 2 and "Traceback" not in noise.stderr
        assert "neither a list of hashes" in noise.stderr

        # A hash list on stdin (`--file -`), bad lines named by their line.
        listed = f"# from another tool\nsha1:{first['sha1']}\n"
        piped = hashex("lookup", "--file", "-", *node_args, stdin_text=listed)
        assert piped.returncode == 0 and "exact" in piped.stdout, piped.stderr
        piped = hashex("lookup", "--file", "-", *node_args, stdin_text=listed + "md5:12\n")
        assert piped.returncode == 2 and "stdin line 3: md5 needs 32" in piped.stderr
    finally:
        assert node.stop() == 0
    assert not postgres_processes(node_dir / "pg")
    assert secret not in "".join(node.log)

    unreachable = hashex("lookup", "md5:" + "0" * 32, "--data-dir", node_dir)
    assert unreachable.returncode == 3 and "not running" in unreachable.stderr

    restarted = NodeProcess(node_dir)
    try:
        stats = hashex("stats", "--data-dir", node_dir)
        assert json.loads(stats.stdout)["media_count"] == 6
        found = hashex("lookup", "--file", tmp_path / "b.csv", "--data-dir", node_dir)
        assert found.returncode == 0 and "near" in found.stdout
    finally:
        assert restarted.stop(signal.SIGINT) == 0
    assert not postgres_processes(node_dir / "pg")


def test_node_killed_hard_leaves_postgres_that_the_next_start_reclaims(node_dir: Path) -> None:
    node = NodeProcess(node_dir)
    node.process.kill()
    node.process.communicate(timeout=30)
    assert postgres_processes(node_dir / "pg"), "the embedded server outlives a SIGKILLed owner"
    restarted = NodeProcess(node_dir)
    assert restarted.stop() == 0
    assert not postgres_processes(node_dir / "pg")


def test_bad_submit_file_sends_nothing(node_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good_line = json.dumps({"path": "a.jpg", "md5": "0" * 32})
    bad.write_text(good_line + "\n" + json.dumps({"path": "b.jpg", "md5": "xyz"}) + "\n")
    env_dir = ("--data-dir", node_dir)
    done = hashex("submit", bad, *env_dir)
    assert done.returncode == 2
    assert "line 2" in done.stderr
    assert os.environ.get("HASHEX_NODE") is None
