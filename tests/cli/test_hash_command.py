"""`hashex hash` end to end on a generated exhibit folder: records, order, skips and exit codes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from services.cli import exit_codes, hash_command
from services.cli.hashfile import HashRecord, read_hash_file
from services.cli.main import main
from services.core.filehash import HashOutcome, ImageHashes, hash_file
from tests.core.test_filehash import draw_test_image

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"


@pytest.fixture
def exhibit(tmp_path: Path) -> Path:
    """A seized folder: images at two depths, a text file, an empty file and an outside link."""
    root = tmp_path / "exhibit"
    (root / "DCIM" / "100APPLE").mkdir(parents=True)
    (root / "docs").mkdir()
    for i, name in enumerate(["b.png", "a.jpg", "c.gif"]):
        draw_test_image(i).save(root / name)
    for i in range(6):
        draw_test_image(10 + i).save(root / "DCIM" / "100APPLE" / f"IMG_{i:04}.JPG", quality=90)
    (root / "docs" / "notes.txt").write_text("exhibit 7 listing\n")
    (root / "docs" / "empty.bin").write_bytes(b"")
    outside = tmp_path / "outside.png"
    draw_test_image(99).save(outside)
    (root / "link.png").symlink_to(outside)
    return root


EXPECTED_ORDER = [
    "DCIM/100APPLE/IMG_0000.JPG",
    "DCIM/100APPLE/IMG_0001.JPG",
    "DCIM/100APPLE/IMG_0002.JPG",
    "DCIM/100APPLE/IMG_0003.JPG",
    "DCIM/100APPLE/IMG_0004.JPG",
    "DCIM/100APPLE/IMG_0005.JPG",
    "a.jpg",
    "b.png",
    "c.gif",
]


def hashex(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["hash", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def relative(records: list[HashRecord], root: Path) -> list[str]:
    return [Path(r.path).relative_to(root).as_posix() for r in records]


def test_folder_is_hashed_in_sorted_order_with_skips_reported(
    exhibit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = exhibit.parent / "exhibit.jsonl"
    code, out, err = hashex([str(exhibit), "-o", str(output), "-j", "1"], capsys)

    assert code == exit_codes.OK
    assert out == ""
    records = list(read_hash_file(output))
    assert relative(records, exhibit) == EXPECTED_ORDER
    for record in records:
        direct = hash_file(Path(record.path))
        assert isinstance(direct, ImageHashes)
        assert record == HashRecord.from_image_hashes(direct)
        assert record.pdq_quality is not None and record.pdq_quality >= 50
    assert err.splitlines() == [
        f"skipped {exhibit / 'link.png'}: symbolic link, not followed (see --follow-symlinks)",
        f"skipped {exhibit / 'docs' / 'empty.bin'}: not an image",
        f"skipped {exhibit / 'docs' / 'notes.txt'}: not an image",
        err.splitlines()[-1],
    ]
    assert err.splitlines()[-1].startswith("hashed 9, skipped 3 (1 link, 2 not an image) in ")


def test_a_damaged_image_gets_its_exact_hashes_marked_as_not_decoded(
    exhibit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated JPEG is still evidence: md5, sha1 and sha256 need no decoding."""
    whole = (exhibit / "a.jpg").read_bytes()
    cut = exhibit / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 3])
    output = exhibit.parent / "cut.jsonl"
    code, _, err = hashex([str(cut), "-o", str(output)], capsys)
    assert code == exit_codes.OK
    [record] = list(read_hash_file(output))
    assert record.sha256 == hashlib.sha256(cut.read_bytes()).hexdigest()
    assert (record.pdq, record.pdq_quality) == (None, None)
    assert record.note is not None and record.note.startswith("not decoded, no pdq: damaged")
    assert f"exact hashes only for {cut}: damaged image" in err
    assert err.splitlines()[-1].startswith("hashed 1 (1 not decoded: exact hashes only), skipped 0")


def test_stdout_gets_only_records_and_the_format_can_be_csv(
    exhibit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = hashex(
        [str(exhibit / "docs"), str(exhibit / "a.jpg"), "--format", "csv"], capsys
    )
    assert code == exit_codes.OK
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [row["path"] for row in rows] == [str(exhibit / "a.jpg")]
    assert "notes.txt: not an image" in err


def test_two_processes_give_the_same_output_as_one(
    exhibit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code_one, one, _ = hashex([str(exhibit), "-j", "1", "-q"], capsys)
    code_two, two, err = hashex([str(exhibit), "-j", "2", "-q"], capsys)
    assert code_one == code_two == exit_codes.OK
    assert one == two
    assert len(one.splitlines()) == len(EXPECTED_ORDER)
    assert "hashed" not in err  # --quiet: no summary, skipped files are still listed
    assert "notes.txt: not an image" in err


def test_following_symlinks_hashes_the_target_and_reports_dangling_links(
    exhibit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (exhibit / "docs" / "gone.jpg").symlink_to(exhibit / "deleted.jpg")
    (exhibit / "docs" / "loop").symlink_to(exhibit)
    code, out, err = hashex([str(exhibit / "docs"), str(exhibit / "link.png"), "-j", "1"], capsys)
    assert code == exit_codes.OK
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(exhibit / "link.png")]
    assert f"skipped {exhibit / 'docs' / 'loop'}: symbolic link, not followed" in err

    code, out, err = hashex([str(exhibit / "docs"), "--follow-symlinks", "-j", "1"], capsys)
    assert code == exit_codes.OK
    assert f"skipped {exhibit / 'docs' / 'gone.jpg'}: unreadable: No such file or directory" in err
    followed = [Path(json.loads(line)["path"]) for line in out.splitlines()]
    assert exhibit / "docs" / "loop" / "link.png" in followed
    assert len(followed) == len(EXPECTED_ORDER) + 1
    assert "symbolic link loop" in err


def test_special_files_are_reported_not_waited_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "pipe")
    code, out, err = hashex([str(tmp_path), "-j", "1"], capsys)
    assert code == exit_codes.OK
    assert out == ""
    assert f"skipped {tmp_path / 'pipe'}: unreadable: not a regular file" in err


def test_missing_path_is_bad_input_and_nothing_is_written(
    exhibit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = exhibit.parent / "out.jsonl"
    missing = exhibit / "no-such-folder"
    code, out, err = hashex([str(exhibit), str(missing), "-o", str(output)], capsys)
    assert code == exit_codes.BAD_INPUT
    assert out == ""
    assert err == f"hashex hash: {missing} does not exist\n"
    assert not output.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "csv", "-o", "{tmp}/h.jsonl"], "--format csv does not match --output"),
        (["-o", "{tmp}"], "is a folder"),
        (["-o", "{tmp}/absent/h.csv"], "does not exist"),
    ],
)
def test_unusable_output_is_bad_input(
    exhibit: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    filled = [a.format(tmp=exhibit.parent) for a in args]
    code, out, err = hashex([str(exhibit / "a.jpg"), *filled], capsys)
    assert code == exit_codes.BAD_INPUT
    assert out == ""
    assert message in err


def test_csv_is_chosen_from_the_output_extension(
    exhibit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = exhibit.parent / "h.csv"
    assert hashex([str(exhibit / "a.jpg"), "-o", str(output)], capsys)[0] == exit_codes.OK
    assert output.read_text().startswith("path,size_bytes,media_type,")


def test_interrupted_run_leaves_no_partial_file(
    exhibit: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    output = exhibit.parent / "out.jsonl"
    output.write_text("previous run\n")

    def interrupted(paths: Sequence[Path], jobs: int) -> Iterator[HashOutcome]:
        yield hash_file(paths[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(hash_command, "hash_outcomes", interrupted)
    code, _, err = hashex([str(exhibit), "-o", str(output)], capsys)
    assert code == hash_command.INTERRUPTED
    assert "interrupted" in err
    assert output.read_text() == "previous run\n"
    assert sorted(p.name for p in exhibit.parent.iterdir()) == [
        "exhibit",
        "out.jsonl",
        "outside.png",
    ]


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hash", "--help"])
    assert exited.value.code == 0
    assert "hashex hash /mnt/exhibit-07 --output exhibit-07.jsonl" in capsys.readouterr().out


def test_bad_jobs_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hash", ".", "--jobs", "0"])
    assert exited.value.code == exit_codes.BAD_INPUT
    assert "must be at least 1" in capsys.readouterr().err


def test_jobs_default_to_the_cpus_available() -> None:
    assert hash_command.default_jobs() == len(os.sched_getaffinity(0))


def test_file_names_cannot_drive_the_terminal() -> None:
    assert hash_command.shown("evil\x1b[2J\n.jpg") == "evil\\x1b[2J\\n.jpg"
    assert hash_command.shown("bad-\udcff.jpg") == "bad-\\udcff.jpg"
    assert hash_command.shown("ok/写真.jpg") == "ok/写真.jpg"


def test_installed_command_runs_in_a_subprocess(exhibit: Path) -> None:
    """The real entry point, default jobs (a process per CPU), CSV on stdout."""
    result = subprocess.run(
        [str(PYTHON), "-m", "services.cli.main", "hash", str(exhibit), "--format", "csv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == exit_codes.OK, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert [Path(r["path"]).relative_to(exhibit).as_posix() for r in rows] == EXPECTED_ORDER
    assert "hashed 9, skipped 3" in result.stderr
    assert "\r" not in result.stderr  # not a terminal: no bar
