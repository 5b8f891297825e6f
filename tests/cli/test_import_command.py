"""`hashex import` against a real `node up` process: exact counts for both ICSE header shapes
and for hash lists, bad records reported with their position while the rest is stored, --strict
storing nothing, re-imports stored once, and an import killed midway resuming to the exact
total without storing anything twice."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.node_process import HASHEX, NodeProcess, hashex


def _md5(seed: str) -> str:
    return hashlib.md5(seed.encode()).hexdigest()


def _sha1(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


SHORT = (
    "MD5;SHA1;PhotoDNA;Image ID;Is distributed;Victim identified;Offender identified;"
    "Series name;Number of submissions;File Available;Media Type;Baseline"
)
LONG = SHORT + ";ZZ40;Lace;Investigation name;Agency"


def _short_rows() -> list[str]:
    return [
        f"{_md5('a').upper()};{_sha1('a')};;101;Y;N;N;Op Lantern 2019;3;Y;Image;Y",
        f"{_md5('b')};;;102;N;True;N;;1;N;Video;N",
        f"{_md5('c')[:31]};;;103;Y;N;N;;1;N;Image;Y",  # one hex digit short: rejected
        f"{_md5('d')};;;104;N;N;maybe;;1;N;Image;",  # not a yes/no: rejected
    ]


def _long_rows() -> list[str]:
    return [
        f"{_md5('e')};{_sha1('e')};;201;N;N;Y;op-lantern;1;Y;Image;Y;zz;la;OP-7;NCA",
        f"{_md5('f')};;;202;N;N;N;;1;N;Image;N;;;;",
    ]


def _stats(node_dir: Path) -> dict[str, object]:
    done = hashex("stats", "--data-dir", node_dir)
    assert done.returncode == 0, done.stderr
    stats: dict[str, object] = json.loads(done.stdout)
    return stats


def _lookup(node_dir: Path, signal_text: str) -> list[dict[str, object]]:
    found = hashex("lookup", signal_text, "--format", "json", "--data-dir", node_dir)
    assert found.returncode in (0, 1), found.stderr
    [result] = [json.loads(line) for line in found.stdout.splitlines()]
    matches: list[dict[str, object]] = result["matches"]
    return matches


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_icse_and_hash_lists_import_with_exact_counts(node_dir: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("\n".join([SHORT, *_short_rows()]) + "\n", encoding="utf-8-sig")
    long = tmp_path / "long.csv"
    long.write_text("\n".join([LONG, *_long_rows()]) + "\n", encoding="utf-8")
    plain = tmp_path / "list.txt"
    plain.write_text("# seized\n" + "\n".join(_md5(f"l{i}") for i in range(5)) + "\nxyz\n")
    strict = tmp_path / "strict.txt"
    strict.write_text(f"{_md5('s1')}\n{_md5('s2')}\nnot-a-hash\n")
    at = ("--data-dir", node_dir)

    node = NodeProcess(node_dir)
    try:
        done = hashex("import", "icse", short, *at)
        assert done.returncode == 7, done.stderr  # some rejected, the others stored
        assert "4 records read: 2 imported, 0 merged" in done.stderr
        assert "2 rejected" in done.stderr
        assert "rejected record 3 (line 4): MD5: md5 needs 32 hex characters, got 31" in done.stderr
        assert "rejected record 4 (line 5): Offender identified" in done.stderr
        [match] = _lookup(node_dir, f"md5:{_md5('a')}")
        assert match["category"] == "interpol-baseline:yes"
        assert match["flags"] == {
            "victim_identified": False,
            "offender_identified": False,
            "distributed": True,
            "self_generated": False,
        }
        [series] = match["series"]  # type: ignore[misc]
        assert series["series_id"].startswith("Op-Lantern-2019-")
        assert series["name"] == "Op Lantern 2019"
        [video] = _lookup(node_dir, f"md5:{_md5('b')}")
        assert (video["media_type"], video["category"]) == ("video", "interpol-baseline:no")

        done = hashex("import", "icse", long, *at)
        assert done.returncode == 0, done.stderr
        assert "2 records read: 2 imported" in done.stderr
        assert "ZZ40 (1)" in done.stderr and "Lace (1)" in done.stderr

        again = hashex("import", "icse", short, *at)
        assert "4 records read: 0 imported, 0 merged into media already stored, 2 duplicates" in (
            again.stderr
        )

        done = hashex(
            "import", "list", plain, "--category", "vics-us:1", "--series", "op-list", *at
        )
        assert done.returncode == 7, done.stderr
        assert "6 records read: 5 imported" in done.stderr and "1 rejected" in done.stderr
        [listed] = _lookup(node_dir, f"md5:{_md5('l3')}")
        assert listed["category"] == "vics-us:1"

        before = _stats(node_dir)["media_count"]
        refused = hashex("import", "list", strict, "--strict", *at)
        assert refused.returncode == 2
        assert "record 3 (line 3)" in refused.stderr and "nothing was stored" in refused.stderr
        assert _stats(node_dir)["media_count"] == before
        assert _lookup(node_dir, f"md5:{_md5('s1')}") == []
    finally:
        node.stop()


def _state_files(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "state" / "hashex" / "imports").glob("*.json"))


def test_an_interrupted_import_resumes_without_storing_twice(
    node_dir: Path, tmp_path: Path
) -> None:
    total = 6000
    listed = tmp_path / "national.txt"
    listed.write_text("".join(f"{_md5(f'n{i}')}\n" for i in range(total)))
    at = ("--data-dir", str(node_dir))
    node = NodeProcess(node_dir)
    try:
        first = subprocess.Popen(
            [*HASHEX, "import", "list", str(listed), "--batch-size", "20", *at],
            stderr=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        deadline = time.monotonic() + 60
        done_before = 0
        while time.monotonic() < deadline and first.poll() is None:
            states = _state_files(tmp_path)
            if states:
                done_before = json.loads(states[0].read_text())["records_done"]
                if done_before >= 400:
                    break
            time.sleep(0.05)
        assert first.poll() is None, "the import finished before it could be interrupted"
        first.send_signal(signal.SIGKILL)  # as a crash would: no clean-up at all
        first.wait(timeout=30)
        stored_then = _stats(node_dir)["media_count"]
        assert isinstance(stored_then, int) and 0 < stored_then < total

        second = hashex("import", "list", listed, *at)
        assert second.returncode == 0, second.stderr
        assert "resuming the import" in second.stderr
        # The batch in flight when it was killed is sent again: stored once, counted a duplicate.
        assert f"{total:,} records read" in second.stderr, second.stderr
        assert _stats(node_dir)["media_count"] == total
        assert _state_files(tmp_path) == []  # a finished import leaves no state behind
    finally:
        node.stop()


def test_a_vics_file_that_breaks_off_keeps_what_came_before(node_dir: Path, tmp_path: Path) -> None:
    context = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/UK/$metadata#Media"
    records = [f'{{"MD5": "{_md5(f"t{i}")}", "Category": "2"}}' for i in range(3)]
    whole = '{"@odata.context": "' + context + '", "value": [\n' + ",\n".join(records) + "\n]}"
    broken = tmp_path / "broken.json"
    broken.write_text(whole[: whole.rindex("}") - 30])  # the third record cut off
    wrong_root = tmp_path / "wrong.json"
    wrong_root.write_text('{"odata.context": "x", "value": []}')
    at = ("--data-dir", node_dir)
    node = NodeProcess(node_dir)
    try:
        strict = hashex("import", "vics", broken, "--strict", *at)
        assert strict.returncode == 2 and "nothing was stored" in strict.stderr, strict.stderr
        assert _lookup(node_dir, f"md5:{_md5('t0')}") == []

        done = hashex("import", "vics", broken, *at)
        assert done.returncode == 7, done.stderr
        assert "2 records read: 2 imported" in done.stderr
        assert "line 4" in done.stderr  # where the file broke off
        [match] = _lookup(node_dir, f"md5:{_md5('t1')}")
        assert match["category"] == "vics-uk:2"

        refused = hashex("import", "vics", wrong_root, *at)
        assert refused.returncode == 2
        assert "not a VICS file" in refused.stderr, refused.stderr
    finally:
        node.stop()


def test_a_record_the_node_refuses_is_rejected_and_the_rest_of_its_batch_stored(
    node_dir: Path, tmp_path: Path
) -> None:
    """A media already holding 8 PDQ hashes cannot take a ninth: the node refuses that media
    (naming it in its BadRequest), the import reports it and stores the others."""
    context = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Media"

    def pdq(n: int) -> dict[str, str]:
        return {"HashName": "PDQ", "HashValue": hashlib.sha256(f"p{n}".encode()).hexdigest()}

    def document(records: list[dict[str, object]]) -> str:
        return json.dumps({"@odata.context": context, "value": records})

    first = tmp_path / "first.json"
    first.write_text(
        document([{"MD5": _md5("full"), "AlternativeHashes": [pdq(n) for n in range(8)]}])
    )
    second = tmp_path / "second.json"
    second.write_text(
        document(
            [
                {"MD5": _md5("other-1")},
                {"MD5": _md5("full"), "AlternativeHashes": [pdq(99)]},
                {"MD5": _md5("other-2"), "Category": 1},
            ]
        )
    )
    at = ("--data-dir", node_dir)
    node = NodeProcess(node_dir)
    try:
        assert hashex("import", "vics", first, *at).returncode == 0
        done = hashex("import", "vics", second, *at)
        assert done.returncode == 7, done.stderr
        assert "rejected record 2 (line 1, column" in done.stderr
        assert "refused by the node" in done.stderr and "at most 8" in done.stderr
        assert "3 records read: 2 imported, 0 merged" in done.stderr
        assert _lookup(node_dir, f"md5:{_md5('other-2')}")[0]["category"] == "vics-us:1"

        # Two records of one MD5 are one media: the second merges into the first.
        twice = tmp_path / "twice.json"
        twice.write_text(
            document(
                [
                    {"MD5": _md5("twice"), "Category": 2},
                    {
                        "MD5": _md5("twice").upper(),
                        "Series": "Op Twice",
                        "VictimIdentified": "true",
                    },
                ]
            )
        )
        done = hashex("import", "vics", twice, *at)
        assert done.returncode == 0, done.stderr
        assert "2 records read: 1 imported, 1 merged" in done.stderr
        [merged] = _lookup(node_dir, f"md5:{_md5('twice')}")
        assert merged["category"] == "vics-us:2"
        assert merged["flags"]["victim_identified"] is True  # type: ignore[index]
        assert [s["name"] for s in merged["series"]] == ["Op Twice"]  # type: ignore[attr-defined]

        # --strict stops at the refusal; its batch was refused whole, so nothing was stored.
        strict = hashex("import", "vics", second, "--strict", "--restart", *at)
        assert strict.returncode == 2, strict.stderr
        assert "rejected by the node" in strict.stderr and "0 stored" in strict.stderr
    finally:
        node.stop()
