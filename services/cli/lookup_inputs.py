"""What `hashex lookup` is asked to look up: every argument turned into the hashes to send.

An argument is a hash (`md5:9e10…`), `-` (ALGO:HEX lines on stdin), or a path: a file of ALGO:HEX
lines, a hash file from `hashex hash` (.jsonl, .csv), an image, or a folder (walked recursively
and hashed here exactly as `hashex hash` hashes it: only hashes leave this machine). Everything
is read and checked before anything is sent; every bad argument, line or file is named at once.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from services.cli.hash_command import Skipped, default_jobs, hash_outcomes, shown, walk_directory
from services.cli.hashfile import HashRecord, read_hash_file, record_of_undecodable, record_signals
from services.core.algorithms import SignalValue, parse_signal_text
from services.core.errors import FieldProblem, InvalidArgument
from services.core.filehash import HashOutcome, ImageHashes, NotAnImage, Undecodable, hash_file

# Files hashed for one lookup, over all folders given (a file given by name counts too). A
# seizure larger than this is hashed once with `hashex hash` and its hash file looked up, so a
# mistyped `/` does not start hashing a whole disk.
MAX_FILES = 10_000
HASH_FILE_SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv"}
# `algo:…` with no path separator: meant as a hash, not a file name.
_LOOKS_LIKE_HASH = re.compile(r"[A-Za-z0-9_-]+:[^/\\]*")

Query = tuple[SignalValue, str]


@dataclass
class Gathered:
    queries: list[Query] = field(default_factory=list)
    problems: list[FieldProblem] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    # Of `images`, those named as arguments (not found in a folder): one that is not an image
    # is an error, as it was asked for; in a folder it is skipped, as `hashex hash` skips it.
    named: set[Path] = field(default_factory=set)
    skipped: int = 0
    # Where each item (a file, a hash file's record, a line, a hash argument) ends in `queries`.
    item_ends: list[int] = field(default_factory=list)

    def add_item(self, queries: Iterable[Query]) -> None:
        before = len(self.queries)
        self.queries.extend(queries)
        if len(self.queries) > before:
            self.item_ends.append(len(self.queries))

    def items(self) -> list[list[SignalValue]]:
        starts = [0, *self.item_ends[:-1]]
        return [
            [signal for signal, _ in self.queries[start:end]]
            for start, end in zip(starts, self.item_ends, strict=True)
        ]


def collect_queries(arguments: Sequence[str], *, err: TextIO | None = None) -> list[Query]:
    """Every hash to look up with the label it is shown under; raises InvalidArgument naming
    every problem, before anything is sent."""
    return _collect(arguments, err).queries


def collect_items(
    arguments: Sequence[str], *, err: TextIO | None = None
) -> list[list[SignalValue]]:
    """The hashes of each item given (an image, a hash file's record, a line of a hash list, a
    hash argument), read and checked as collect_queries does."""
    return _collect(arguments, err).items()


def _collect(arguments: Sequence[str], err: TextIO | None) -> Gathered:
    notes = err or sys.stderr
    gathered = Gathered()
    for position, text in enumerate(arguments, start=1):
        _gather(text, position, gathered, notes)
    if len(gathered.images) > MAX_FILES:
        raise InvalidArgument(
            f"{len(gathered.images):,} files to hash, more than the {MAX_FILES:,} one lookup "
            "hashes: run `hashex hash FOLDER --output seizure.jsonl`, then "
            "`hashex lookup seizure.jsonl`"
        )
    _hash_images(gathered, notes)
    if gathered.problems:
        raise InvalidArgument(gathered.problems)
    if not gathered.queries:
        if gathered.skipped:
            raise InvalidArgument(f"nothing to look up: {gathered.skipped} files skipped")
        raise InvalidArgument("no hashes given: pass ALGO:HEX, a file or folder, or - for stdin")
    return gathered


def _gather(text: str, position: int, gathered: Gathered, notes: TextIO) -> None:
    if text == "-":
        lines = sys.stdin.read().splitlines()
        _add_lines("stdin", lines, gathered)
        return
    path = Path(text)
    if path.is_dir():
        _gather_folder(path, gathered, notes)
    elif path.is_file():
        _gather_file(path, gathered)
    elif path.exists():  # a FIFO or device would block or never end
        gathered.problems.append(FieldProblem(shown(text), "not a regular file or folder"))
    elif _LOOKS_LIKE_HASH.fullmatch(text.strip()):
        try:
            signal = parse_signal_text(text)
            gathered.add_item([(signal, signal.text())])
        except InvalidArgument as error:
            gathered.problems.extend(error.within(f"argument {position}").problems)
    else:
        gathered.problems.append(
            FieldProblem(f"argument {position}", f"{shown(text)}: no such file or folder")
        )


def _gather_folder(folder: Path, gathered: Gathered, notes: TextIO) -> None:
    """Its files, as `hashex hash` walks it: sorted, symbolic links reported and not followed."""
    for item in walk_directory(folder, follow_symlinks=False):
        if isinstance(item, Skipped):
            if item.kind == "unreadable":
                gathered.problems.append(FieldProblem(shown(str(item.path)), item.reason))
            else:
                notes.write(f"hashex: skipped {shown(str(item.path))}: {item.reason}\n")
                gathered.skipped += 1
        else:
            gathered.images.append(item)
        if len(gathered.images) > MAX_FILES:
            return  # enough to refuse; walking on would only cost time


def _gather_file(path: Path, gathered: Gathered) -> None:
    label = shown(str(path))
    if path.suffix.lower() in HASH_FILE_SUFFIXES:
        try:
            records = list(read_hash_file(path))
        except InvalidArgument as error:
            gathered.problems.extend(error.within(label).problems)
            return
        for record in records:
            gathered.add_item(
                (signal, f"{Path(record.path).name} {signal.spec.name}")
                for signal in record_signals(record)
            )
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:  # not a hash list: an image, hashed here
        gathered.images.append(path)
        gathered.named.add(path)
        return
    except OSError as error:
        gathered.problems.append(FieldProblem(label, f"cannot read it: {error.strerror or error}"))
        return
    _add_lines(path.name, lines, gathered)


def _add_lines(source: str, lines: Sequence[str], gathered: Gathered) -> None:
    """ALGO:HEX lines (blank lines and # comments skipped), one item each; bad lines are
    problems."""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            signal = parse_signal_text(text)
            gathered.add_item([(signal, signal.text())])
        except InvalidArgument as error:
            gathered.problems.extend(error.within(f"{source} line {number}").problems)


def _hash_images(gathered: Gathered, notes: TextIO) -> None:
    """Exact hashes and PDQ of each file, as `hashex hash` computes them (in parallel for
    folders); an unreadable file is a problem, a file that is not an image is skipped."""
    outcomes: Sequence[HashOutcome]
    if len(gathered.images) == 1:
        outcomes = [hash_file(gathered.images[0])]
    else:
        outcomes = list(hash_outcomes(gathered.images, default_jobs()))
    for path, outcome in zip(gathered.images, outcomes, strict=True):
        label = shown(str(path))
        if isinstance(outcome, ImageHashes):
            record = HashRecord.from_image_hashes(outcome)
        elif isinstance(outcome, Undecodable):
            record = record_of_undecodable(outcome)
            notes.write(f"hashex: {label}: exact hashes only: {outcome.reason}\n")
        elif isinstance(outcome, NotAnImage) and path in gathered.named:
            gathered.problems.append(
                FieldProblem(
                    label,
                    "neither a list of hashes (UTF-8 text, one ALGO:HEX per line), a hash file "
                    "from `hashex hash` (.jsonl, .csv) nor an image",
                )
            )
            continue
        elif isinstance(outcome, NotAnImage):
            gathered.skipped += 1
            notes.write(f"hashex: skipped {label}: not an image\n")
            continue
        else:
            gathered.problems.append(FieldProblem(label, outcome.reason))
            continue
        gathered.add_item(
            (signal, f"{path.name} {signal.spec.name}") for signal in record.signals()
        )
