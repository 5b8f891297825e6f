"""`hashex hash`: hash a seized folder on this machine and write one record per image.

Nothing is sent anywhere: the output is a file (or stdout) that `hashex submit` and `hashex lookup`
read later. A run over a million files must not stop for one bad file, so files that are not
images or cannot be read are reported on stderr and counted, and the run goes on.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TextIO

from services.cli import exit_codes
from services.cli.hashfile import (
    ENCODING,
    ERRORS,
    FORMATS,
    HashFileFormat,
    HashRecord,
    RecordWriter,
    format_for_path,
    record_of_undecodable,
    record_writer,
)
from services.cli.progress import Progress
from services.core.filehash import HashOutcome, ImageHashes, NotAnImage, Undecodable, hash_file

EXAMPLES = """examples:
  hashex hash /mnt/exhibit-07 --output exhibit-07.jsonl
  hashex hash photos/ phone-dump/DCIM --format csv --jobs 4 > hashes.csv

Records go to stdout unless --output is given; --output is written to a temporary file renamed
into place at the end, so an interrupted run leaves no partial file. Progress, skipped files and
the summary go to stderr. Symbolic links inside folders are reported and not followed unless
--follow-symlinks is given (a link on a mounted exhibit may point into this workstation)."""

# Below this many files a worker pool costs more to start than it saves.
_MIN_FILES_FOR_POOL = 8
INTERRUPTED = 130


@dataclass(frozen=True)
class Skipped:
    """A path met while walking that will not be hashed, and why (said as `skipped PATH: why`)."""

    path: Path
    reason: str
    # Counted under this name in the summary.
    kind: str


@dataclass
class Tally:
    hashed: int = 0
    # Of those hashed, images that could not be decoded (exact hashes only).
    not_decoded: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, kind: str) -> None:
        self.skipped += 1
        self.reasons[kind] = self.reasons.get(kind, 0) + 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "hash",
        help="hash files and folders locally (no image leaves this machine)",
        description=(
            "Hash image files and folders on this machine: MD5, SHA-1 and SHA-256 of each\n"
            "file's bytes and the PDQ perceptual hash of its pixels. Folders are walked\n"
            "recursively in sorted order, so the same input always gives the same output.\n"
            "Nothing is sent anywhere: submit or look up the output afterwards."
        ),
        epilog=EXAMPLES + "\n\n" + exit_codes.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or folder")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: from the --output extension, else jsonl)",
    )
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here, not stdout")
    parser.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=default_jobs(),
        metavar="N",
        help="processes hashing in parallel (default: CPUs available, here %(default)s)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress and no summary on stderr"
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow symbolic links inside folders (links given as PATH are always followed)",
    )
    parser.set_defaults(func=run)


def default_jobs() -> int:
    """CPUs this process may use (a container's limit, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(ns: argparse.Namespace) -> int:
    err: TextIO = sys.stderr
    fmt = _checked_setup(ns, err)
    if fmt is None:
        return exit_codes.BAD_INPUT
    started = time.monotonic()
    tally = Tally()
    progress: Progress | None = None
    lost = "no output file written" if ns.output else "the output on stdout is incomplete"
    try:
        paths = _collect_files(ns.paths, ns.follow_symlinks, err, tally)
        progress = Progress.for_stream(len(paths), err, quiet=ns.quiet)
        with _output(ns.output) as out:
            _hash_and_write(paths, ns.jobs, record_writer(fmt, out), progress, tally)
    except KeyboardInterrupt:
        return _failed(progress, err, f"interrupted; {lost}", INTERRUPTED)
    except BrokenProcessPool:
        problem = "a worker process died (a file may have crashed the image decoder)"
        hint = "run again with --jobs 1 to find the file"
        return _failed(progress, err, f"{problem}; {lost}; {hint}", exit_codes.BAD_INPUT)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the command's own exit code says so
    except OSError as exc:
        problem = f"cannot write {shown(str(ns.output or 'stdout'))}: {exc.strerror or exc}"
        return _failed(progress, err, problem, exit_codes.BAD_INPUT)
    progress.finish()
    if not ns.quiet:
        err.write(_summary(tally, time.monotonic() - started) + "\n")
    return exit_codes.OK


def _failed(progress: Progress | None, err: TextIO, message: str, code: int) -> int:
    if progress is not None:
        progress.finish()
    err.write(f"hashex hash: {message}\n")
    return code


def _checked_setup(ns: argparse.Namespace, err: TextIO) -> HashFileFormat | None:
    """The output format, or None after saying on stderr what is wrong with the request."""
    problems = [f"{shown(str(p))} does not exist" for p in ns.paths if not p.exists()]
    implied = format_for_path(ns.output) if ns.output else None
    fmt: HashFileFormat = ns.format or implied or "jsonl"
    if implied and implied != fmt:
        problems.append(
            f"--format {fmt} does not match --output {shown(str(ns.output))}; "
            "hashex submit reads the format from the extension"
        )
    if ns.output is not None:
        if ns.output.is_dir():
            problems.append(f"--output {shown(str(ns.output))} is a folder")
        elif not ns.output.absolute().parent.is_dir():
            problems.append(f"--output folder {shown(str(ns.output.parent))} does not exist")
    for problem in problems:
        err.write(f"hashex hash: {problem}\n")
    return None if problems else fmt


def _collect_files(
    roots: Sequence[Path], follow_symlinks: bool, err: TextIO, tally: Tally
) -> list[Path]:
    """Every file to hash, in the order given and sorted within folders; skips said as found."""
    paths: list[Path] = []
    for root in roots:
        found = walk_directory(root, follow_symlinks) if root.is_dir() else iter([root])
        for item in found:
            if isinstance(item, Skipped):
                err.write(f"skipped {shown(str(item.path))}: {item.reason}\n")
                tally.skip(item.kind)
            else:
                paths.append(item)
    return paths


def walk_directory(top: Path, follow_symlinks: bool) -> Iterator[Path | Skipped]:
    """Files under `top`, depth first, entries sorted by name at every level.

    An explicit stack instead of recursion: a crafted exhibit may nest folders deeper than
    Python's recursion limit. Folders already visited are skipped, which breaks link cycles.
    """
    visited: set[tuple[int, int]] = set()
    stack: list[Iterator[os.DirEntry[str]]] = []
    listing = _list_folder(top, visited)
    if isinstance(listing, Skipped):
        yield listing
        return
    stack.append(listing)
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path = Path(entry.path)
        if entry.is_symlink() and not follow_symlinks:
            yield Skipped(path, "symbolic link, not followed (see --follow-symlinks)", "link")
        elif entry.is_dir(follow_symlinks=follow_symlinks):
            listing = _list_folder(path, visited)
            if isinstance(listing, Skipped):
                yield listing
            else:
                stack.append(listing)
        else:
            # Special files and dangling links are reported by hash_file with the OS's reason.
            yield path


def _list_folder(
    folder: Path, visited: set[tuple[int, int]]
) -> Iterator[os.DirEntry[str]] | Skipped:
    try:
        status = folder.stat()
        key = (status.st_dev, status.st_ino)
        if key in visited:
            return Skipped(folder, "folder already visited (a symbolic link loop)", "link")
        visited.add(key)
        with os.scandir(folder) as entries:
            return iter(sorted(entries, key=lambda entry: entry.name))
    except OSError as exc:
        return Skipped(folder, f"unreadable: {exc.strerror or exc}", "unreadable")


def _hash_and_write(
    paths: Sequence[Path],
    jobs: int,
    writer: RecordWriter,
    progress: Progress,
    tally: Tally,
) -> None:
    for outcome in hash_outcomes(paths, jobs):
        if isinstance(outcome, ImageHashes):
            writer.write(HashRecord.from_image_hashes(outcome))
            tally.hashed += 1
        elif isinstance(outcome, Undecodable):
            writer.write(record_of_undecodable(outcome))
            progress.note(f"exact hashes only for {shown(str(outcome.path))}: {outcome.reason}")
            tally.hashed += 1
            tally.not_decoded += 1
        elif isinstance(outcome, NotAnImage):
            progress.note(f"skipped {shown(str(outcome.path))}: not an image")
            tally.skip("not an image")
        else:
            progress.note(f"skipped {shown(str(outcome.path))}: unreadable: {outcome.reason}")
            tally.skip("unreadable")
        progress.advance()


def hash_outcomes(paths: Sequence[Path], jobs: int) -> Iterator[HashOutcome]:
    """Outcomes in the order of `paths`, hashed by `jobs` processes.

    Processes, not threads: PDQ and decoding hold the GIL. They are spawned rather than forked so
    that a worker inherits nothing of this process (open files, threads, locks). On an early exit
    (Ctrl-C) the queued work is cancelled instead of finished.
    """
    if jobs == 1 or len(paths) < _MIN_FILES_FOR_POOL:
        yield from map(hash_file, paths)
        return
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=_leave_interrupts_to_parent
    )
    try:
        chunk = max(1, min(64, len(paths) // (jobs * 8)))
        yield from pool.map(hash_file, paths, chunksize=chunk)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _leave_interrupts_to_parent() -> None:
    """Ctrl-C reaches every process of the terminal's group; only the parent should act on it,
    cancelling queued work and shutting the pool down in order, rather than each worker dying
    mid-task and leaving the pool's bookkeeping to hang."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _output(target: Path | None) -> Iterator[TextIO]:
    """stdout, or a temporary file beside `target` renamed onto it only once complete."""
    if target is None:
        with _stdout() as out:
            yield out
        return
    fd, temporary = tempfile.mkstemp(dir=target.absolute().parent, prefix=f".{target.name}.")
    try:
        with open(fd, "w", encoding=ENCODING, errors=ERRORS, newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextmanager
def _stdout() -> Iterator[TextIO]:
    """stdout with the hash file's encoding, whatever the locale says."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        yield sys.stdout
        return
    sys.stdout.flush()
    out = io.TextIOWrapper(buffer, encoding=ENCODING, errors=ERRORS, newline="")
    try:
        yield out
    finally:
        try:
            out.flush()
        finally:
            out.detach()  # even when the flush failed: closing it would close stdout too


def _summary(tally: Tally, seconds: float) -> str:
    text = f"hashed {tally.hashed:,}"
    if tally.not_decoded:
        text += f" ({tally.not_decoded:,} not decoded: exact hashes only)"
    text += f", skipped {tally.skipped:,}"
    if tally.reasons:
        text += " (" + ", ".join(f"{n:,} {kind}" for kind, n in sorted(tally.reasons.items())) + ")"
    return text + f" in {seconds:.1f} s"


def shown(text: str) -> str:
    """`text` safe to print: a file name on a seized disk may hold escape sequences that would
    rewrite the investigator's terminal, or bytes that are not valid text."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
