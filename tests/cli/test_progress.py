"""Progress on stderr: a bar on a terminal, occasional lines in a log, nothing when quiet."""

from __future__ import annotations

import io

import pytest

from services.cli.progress import (
    Progress,
    RecordProgress,
    format_duration,
    render_bar,
    render_line,
    render_records,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_count_rate_and_time_left() -> None:
    assert render_bar(250, 1000, 5.0) == (
        "[######..................]   250/1,000   25%  50.0 files/s  ETA 0:15"
    )
    assert render_bar(0, 10, 0.0) == "[........................]  0/10    0%  - files/s  ETA -"
    assert render_bar(0, 0, 0.0).startswith("[########################] 0/0  100%")


def test_log_line_says_the_same_in_words() -> None:
    assert render_line(250, 1000, 5.0) == (
        "progress:   250/1,000 files (25%), 50.0 files/s, ETA 0:15"
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (4.6, "0:05"), (750, "12:30"), (10927, "3:02:07")]
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_mode_follows_the_stream() -> None:
    clock = FakeClock()
    terminal, log = Terminal(), io.StringIO()
    for progress, stream in (
        (Progress.for_stream(3, terminal, quiet=False, clock=clock), terminal),
        (Progress.for_stream(3, log, quiet=False, clock=clock), log),
        (Progress.for_stream(3, Terminal(), quiet=True, clock=clock), None),
    ):
        clock.now += 20
        progress.advance(3)
        progress.finish()
        if stream is not None:
            assert "3/3" in stream.getvalue()
    assert terminal.getvalue().startswith("\r[") and terminal.getvalue().endswith("\n")
    assert log.getvalue() == "progress: 3/3 files (100%), 0.1 files/s, ETA 0:00\n"


def test_bar_is_redrawn_at_most_every_tenth_of_a_second() -> None:
    clock, terminal = FakeClock(), Terminal()
    progress = Progress(100, terminal, "bar", clock=clock)
    for _ in range(10):
        progress.advance()
    clock.now += 0.1
    progress.advance()
    assert terminal.getvalue().count("\r") == 1
    assert " 11/100 " in terminal.getvalue()


def test_log_lines_are_written_every_ten_seconds_only() -> None:
    clock, log = FakeClock(), io.StringIO()
    progress = Progress(1000, log, "lines", clock=clock)
    for _ in range(240):
        clock.now += 0.125
        progress.advance()
    progress.finish()
    assert log.getvalue().count("\n") == 3


def test_notes_clear_the_bar_and_redraw_it_below() -> None:
    clock, terminal = FakeClock(), Terminal()
    progress = Progress(2, terminal, "bar", clock=clock)
    clock.now += 1
    progress.advance()
    bar = terminal.getvalue()
    progress.note("skipped a.txt: not an image")
    after = terminal.getvalue()[len(bar) :]
    assert after.startswith("\r" + " " * (len(bar) - 1) + "\rskipped a.txt: not an image\n\r[")


def test_quiet_writes_nothing_but_notes() -> None:
    terminal = Terminal()
    progress = Progress(2, terminal, "off", clock=FakeClock())
    progress.advance(2)
    progress.note("skipped b: not an image")
    progress.finish()
    assert terminal.getvalue() == "skipped b: not an image\n"


def test_an_import_shows_records_their_rate_and_time_left_from_the_bytes_read() -> None:
    assert render_records(50_000, 0.25, 2.0, bar=True) == (
        "[######..................]  25%  50,000 records  25,000.0 records/s  ETA 0:06"
    )
    assert render_records(50_000, 0.25, 2.0, bar=False) == (
        "progress: 50,000 records (25% of the file), 25,000.0 records/s, ETA 0:06"
    )
    assert render_records(0, None, 0.0, bar=False) == "progress: 0 records, - records/s, ETA -"


def test_an_import_logs_a_line_now_and_then() -> None:
    clock, out, read = FakeClock(), io.StringIO(), [0]
    progress = RecordProgress(1000, lambda: read[0], out, "lines", clock=clock)
    clock.now += 1
    read[0] = 100
    progress.advance(10)
    assert out.getvalue() == ""  # too soon for a log line
    clock.now += 10
    read[0] = 500
    progress.advance(40)
    assert out.getvalue() == "progress: 50 records (50% of the file), 4.5 records/s, ETA 0:11\n"
