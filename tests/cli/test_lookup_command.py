"""`hashex lookup` as a unit runs it: paths, folders and stdin hashed here, bad input refused
before anything is sent, and exit code 5 (never 1, "no match") when a peer asked did not answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hashex.v1 import federation_pb2
from services.cli import exit_codes
from services.cli.demo_images import synthetic_image
from services.cli.lookup_command import PeerTally
from services.cli.lookup_inputs import MAX_FILES
from tests.cli.node_process import NodeProcess, hashex
from tests.federation.harness import free_port

ABSENT = "md5:" + "0" * 32


def test_bad_paths_are_refused_before_the_node_is_asked(tmp_path: Path) -> None:
    """No node runs here: each case fails on its input alone, exit 2, no traceback."""
    at = ("--data-dir", tmp_path / "no-node")
    missing = hashex("lookup", tmp_path / "nowhere.jpg", ABSENT, *at)
    assert missing.returncode == exit_codes.BAD_INPUT
    assert "nowhere.jpg: no such file or folder" in missing.stderr

    exhibit = tmp_path / "exhibit"
    exhibit.mkdir()
    synthetic_image(1).save(exhibit / "a.png")
    os.mkfifo(exhibit / "planted-fifo")
    unreadable = hashex("lookup", exhibit, *at)
    assert unreadable.returncode == exit_codes.BAD_INPUT, unreadable.stderr
    assert "planted-fifo: not a regular file" in unreadable.stderr
    named_fifo = hashex("lookup", exhibit / "planted-fifo", *at)
    assert named_fifo.returncode == exit_codes.BAD_INPUT
    assert "not a regular file or folder" in named_fifo.stderr

    huge = tmp_path / "disk"
    huge.mkdir()
    for number in range(MAX_FILES + 1):
        (huge / f"{number}.bin").touch()
    too_many = hashex("lookup", huge, *at)
    assert too_many.returncode == exit_codes.BAD_INPUT
    assert f"more than the {MAX_FILES:,} one lookup hashes" in too_many.stderr

    only_text = tmp_path / "notes"
    only_text.mkdir()
    (only_text / "readme.bin").write_bytes(bytes(range(128, 256)))
    nothing = hashex("lookup", only_text, *at)
    assert nothing.returncode == exit_codes.BAD_INPUT
    assert "skipped" in nothing.stderr and "nothing to look up" in nothing.stderr
    for done in (missing, unreadable, named_fifo, too_many, nothing):
        assert "Traceback" not in done.stderr


def test_folders_images_and_stdin_and_a_peer_that_did_not_answer(
    node_dir: Path, tmp_path: Path
) -> None:
    seized = tmp_path / "seized"
    (seized / "sub").mkdir(parents=True)
    synthetic_image(0).save(seized / "0.png")
    synthetic_image(1).save(seized / "sub" / "1.png")
    (seized / "sub" / "notes.txt").write_bytes(bytes(range(128, 256)))
    hashes = tmp_path / "seized.jsonl"
    assert hashex("hash", seized, "--output", hashes, "--quiet").returncode == 0
    first = json.loads(hashes.read_text().splitlines()[0])

    # A peer pinned whose gateway is not running: its connection is refused.
    peer_dir = tmp_path / "peer"
    made = hashex(
        "node", "init", "--node-id", "us-fbi", "--gateway-listen", f"127.0.0.1:{free_port()}",
        "--data-dir", peer_dir,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    card = tmp_path / "us-fbi.card"
    assert hashex("peer", "card", "--out", card, "--data-dir", peer_dir).returncode == 0
    added = hashex("peer", "add", card, "--policy", "share-all", "--data-dir", node_dir)
    assert added.returncode == 0

    at = ("--data-dir", node_dir)
    node = NodeProcess(node_dir)
    try:
        assert hashex("submit", hashes, *at).returncode == 0

        # A folder is walked and hashed here; what is not an image is skipped and said.
        folder = hashex("lookup", seized, "--format", "json", *at)
        assert folder.returncode == exit_codes.OK, folder.stderr
        results = [json.loads(line) for line in folder.stdout.splitlines()]
        assert len(results) == 8 and all(r["matches"] for r in results)
        assert "skipped" in folder.stderr and "notes.txt: not an image" in folder.stderr

        # `-` reads ALGO:HEX lines from stdin, beside a hash and an image given by name.
        piped = hashex(
            "lookup", "-", ABSENT, seized / "0.png", *at, stdin_text=f"sha1:{first['sha1']}\n"
        )
        assert piped.returncode == exit_codes.OK, piped.stderr
        assert "5 of 6 hashes matched" in piped.stderr

        # Nothing matched and the peer could not be asked: incomplete, not "no match".
        asked = hashex("lookup", ABSENT, "--peers", "--format", "json", *at)
        assert asked.returncode == exit_codes.INCOMPLETE, asked.stderr
        *lines, last = asked.stdout.splitlines()
        assert [json.loads(line)["matches"] for line in lines] == [[]]
        [peer] = json.loads(last)["peers"]
        assert (peer["peer_id"], peer["outcome"], peer["asked"]) == ("us-fbi", "unreachable", 1)
        assert peer["error"].startswith("UNAVAILABLE")
        assert "incomplete: peer us-fbi unreachable" in asked.stderr

        # A match with the peer down: the match prints, and the result is still incomplete
        # for the hash that found nothing.
        mixed = hashex("lookup", f"sha1:{first['sha1']}", ABSENT, "--peers", *at)
        assert mixed.returncode == exit_codes.INCOMPLETE and "exact" in mixed.stdout

        # Everything matched in the store: the peer had nothing to be asked, complete.
        matched = hashex("lookup", f"sha1:{first['sha1']}", "--peers", "--format", "json", *at)
        assert matched.returncode == exit_codes.OK, matched.stderr
        [peer] = json.loads(matched.stdout.splitlines()[-1])["peers"]
        assert (peer["outcome"], peer["asked"]) == ("not_asked", 0)

        assert hashex("lookup", ABSENT, *at).returncode == exit_codes.NO_MATCH
    finally:
        assert node.stop() == 0


def test_a_peer_that_failed_one_batch_leaves_the_lookup_incomplete() -> None:
    """Batches of 1,000 hashes are asked one by one; a failure in any batch is what is kept."""
    answered = federation_pb2.PEER_LOOKUP_OUTCOME_ANSWERED
    timed_out = federation_pb2.PEER_LOOKUP_OUTCOME_TIMED_OUT
    not_asked = federation_pb2.PEER_LOOKUP_OUTCOME_NOT_ASKED
    tally = PeerTally()
    tally.add([federation_pb2.PeerOutcome(peer_id="us-fbi", asked=0, outcome=not_asked)])
    tally.add([federation_pb2.PeerOutcome(peer_id="us-fbi", asked=3, outcome=answered)])
    assert tally.complete()
    tally.add(
        [federation_pb2.PeerOutcome(peer_id="us-fbi", asked=2, outcome=timed_out, error="slow")]
    )
    tally.add([federation_pb2.PeerOutcome(peer_id="us-fbi", asked=4, outcome=answered)])
    assert not tally.complete()
    assert tally.as_json() == [
        {"peer_id": "us-fbi", "asked": 9, "error": "slow", "outcome": "timed_out"}
    ]
    assert tally.unanswered() == [
        "incomplete: peer us-fbi timed out (slow): its 9 hashes unchecked there"
    ]
