"""Progress of a long run on stderr, so stdout stays clean for the records a pipeline consumes.

On a terminal a bar is redrawn in place; into a log file or pipe a plain line is written now and
then instead (carriage returns would make a log unreadable); with `--quiet` nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TextIO

ProgressMode = Literal["bar", "lines", "off"]

BAR_WIDTH = 24
# A bar redrawn more often than this costs more than it tells; a log line more often is noise.
BAR_INTERVAL_S = 0.1
LINE_INTERVAL_S = 10.0


class _Display:
    """What every progress display shares: a bar redrawn in place on a terminal, a line now and
    then in a log, nothing when off; notes printed on lines of their own. Subclasses say what a
    redraw shows (`_text`) and when one is due at least (`_complete`)."""

    def __init__(
        self, stream: TextIO, mode: ProgressMode, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._mode = mode
        self._clock = clock
        self._started = clock()
        self._last_drawn = self._started
        self._done = 0
        self._drawn_width = 0

    @property
    def done(self) -> int:
        return self._done

    def advance(self, count: int = 1) -> None:
        self._done += count
        now = self._clock()
        if self._mode == "bar":
            if now - self._last_drawn >= BAR_INTERVAL_S or self._complete():
                self._draw(now)
        elif self._mode == "lines" and now - self._last_drawn >= LINE_INTERVAL_S:
            self._draw(now)

    def note(self, message: str) -> None:
        """Print a line of its own (a skipped file) without tearing the bar apart."""
        self._clear()
        self._stream.write(message + "\n")
        if self._mode == "bar" and self._done:
            self._draw(self._clock())
        self._stream.flush()

    def finish(self) -> None:
        """Leave the final bar on its own line, so what follows starts on a clean one."""
        if self._mode == "bar" and self._drawn_width:
            self._draw(self._clock())
            self._stream.write("\n")
            self._drawn_width = 0
            self._stream.flush()

    def _complete(self) -> bool:
        return False

    def _text(self, elapsed_s: float, *, bar: bool) -> str:
        raise NotImplementedError

    def _draw(self, now: float) -> None:
        self._last_drawn = now
        text = self._text(now - self._started, bar=self._mode == "bar")
        if self._mode == "bar":
            padding = " " * max(0, self._drawn_width - len(text))
            self._stream.write("\r" + text + padding)
            self._drawn_width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def _clear(self) -> None:
        if self._drawn_width:
            self._stream.write("\r" + " " * self._drawn_width + "\r")
            self._drawn_width = 0


class Progress(_Display):
    """Counts finished items out of a known total and shows count, rate and time left."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        mode: ProgressMode,
        *,
        unit: str = "files",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream, mode, clock)
        self._total = total
        self._unit = unit

    @staticmethod
    def for_stream(
        total: int,
        stream: TextIO,
        *,
        quiet: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> Progress:
        """The right kind of progress for `stream`: a bar only where a person watches it."""
        return Progress(total, stream, _mode_for(stream, quiet), clock=clock)

    def _complete(self) -> bool:
        return self._done >= self._total

    def _text(self, elapsed_s: float, *, bar: bool) -> str:
        render = render_bar if bar else render_line
        return render(self._done, self._total, elapsed_s, unit=self._unit)


class RecordProgress(_Display):
    """Records handled out of a file read as a stream: their count is not known ahead, the
    bytes read are, so the bar and the time left follow the bytes and the rate counts records."""

    def __init__(
        self,
        size: int,
        position: Callable[[], int] | None,
        stream: TextIO,
        mode: ProgressMode,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream, mode, clock)
        self._size = size
        self._position = position

    @staticmethod
    def for_stream(
        size: int, position: Callable[[], int] | None, stream: TextIO, *, quiet: bool
    ) -> RecordProgress:
        return RecordProgress(size, position, stream, _mode_for(stream, quiet))

    def _text(self, elapsed_s: float, *, bar: bool) -> str:
        fraction = None
        if self._position is not None and self._size:
            fraction = min(1.0, self._position() / self._size)
        return render_records(self._done, fraction, elapsed_s, bar=bar)


def _mode_for(stream: TextIO, quiet: bool) -> ProgressMode:
    return "off" if quiet else "bar" if stream.isatty() else "lines"


def render_records(done: int, fraction: float | None, elapsed_s: float, *, bar: bool) -> str:
    """`[#####...]  35%  350,000 records  52,000.0 records/s  ETA 0:12` on a terminal,
    `progress: 350,000 records (35% of the file), 52,000.0 records/s, ETA 0:12` in a log."""
    rate = done / elapsed_s if done and elapsed_s > 0 else 0.0
    eta = "-"
    if fraction and rate and 0 < fraction < 1:
        eta = format_duration(elapsed_s * (1 - fraction) / fraction)
    elif fraction == 1.0:
        eta = "0:00"
    rate_text = f"{rate:,.1f} records/s" if rate else "- records/s"
    if bar:
        shown = fraction if fraction is not None else 0.0
        filled = round(BAR_WIDTH * shown)
        head = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
        share = f"{shown:4.0%}" if fraction is not None else "   ?"
        return f"{head} {share}  {done:,} records  {rate_text}  ETA {eta}"
    share = f" ({fraction:.0%} of the file)" if fraction is not None else ""
    return f"progress: {done:,} records{share}, {rate_text}, ETA {eta}"


def render_bar(done: int, total: int, elapsed_s: float, *, unit: str = "files") -> str:
    """`[#########...............]  350/1,000  35%  120.0 files/s  ETA 0:05`"""
    fraction = done / total if total else 1.0
    filled = round(BAR_WIDTH * min(fraction, 1.0))
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    rate_eta = _rate_and_eta(done, total, elapsed_s, unit)
    return f"[{bar}] {_counts(done, total)}  {fraction:4.0%}  {rate_eta}"


def render_line(done: int, total: int, elapsed_s: float, *, unit: str = "files") -> str:
    """`progress: 350/1,000 files (35%), 120.0 files/s, ETA 0:05`"""
    fraction = done / total if total else 1.0
    rate_eta = _rate_and_eta(done, total, elapsed_s, unit).replace("  ", ", ")
    return f"progress: {_counts(done, total)} {unit} ({fraction:.0%}), {rate_eta}"


def _counts(done: int, total: int) -> str:
    width = len(f"{total:,}")
    return f"{done:>{width},}/{total:,}"


def _rate_and_eta(done: int, total: int, elapsed_s: float, unit: str) -> str:
    if done == 0 or elapsed_s <= 0:
        return f"- {unit}/s  ETA -"
    rate = done / elapsed_s
    return f"{rate:.1f} {unit}/s  ETA {format_duration((total - done) / rate)}"


def format_duration(seconds: float) -> str:
    """`0:05`, `12:30`, `3:02:07`: hours appear only when needed."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
