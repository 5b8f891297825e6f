"""The limits the contract states (proto/hashex/v1/*.proto comments) and the checks that keep
every stored record within them.

A record is checked twice: as submitted (convert.py, field by field) and as it will stand once
merged with what is stored (store.py, inside the writing transaction), since a submission only
adds to a stored media. A record within these limits yields a change-log entry that every
peer's receiver accepts; a record past them would be refused by every peer. Pure: no SQL.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.core.algorithms import ALGORITHMS, Algorithm, SignalValue

MAX_MEDIA_PER_BATCH = 1000
MAX_SIGNALS_PER_MEDIA = 16
# At most one signal per algorithm, except PDQ (video frames).
MAX_PDQ_PER_MEDIA = 8
MAX_SERIES_PER_MEDIA = 16
MAX_VICTIMS_PER_SERIES = 100
MAX_LOOKUP_SIGNALS = 10_000
MAX_RETRACT_IDS = 10_000
MAX_UPDATE_IDS = 1_000
MAX_PDQ_DISTANCE = 64
DEFAULT_MAX_MATCHES = 100
MAX_MATCHES_PER_SIGNAL = 1_000
# A lookup answer fits the 4 MiB that gRPC clients accept by default, whatever the language:
# past this many bytes of matches, results are cut and say so (`truncated`, `response_full`).
MAX_RESPONSE_BYTES = 3 * 1024 * 1024


def per_algorithm_limit(algorithm: Algorithm) -> int:
    return MAX_PDQ_PER_MEDIA if ALGORITHMS[algorithm].perceptual else 1


def signal_set_problems(signals: Iterable[SignalValue]) -> list[str]:
    """What makes this set of a media's signals (distinct values) break the limits."""
    counts: dict[Algorithm, int] = {}
    total = 0
    for signal in signals:
        counts[signal.algorithm] = counts.get(signal.algorithm, 0) + 1
        total += 1
    problems = [
        f"{count} {ALGORITHMS[algorithm].name} signals; at most {limit} per media"
        for algorithm, count in sorted(counts.items())
        if count > (limit := per_algorithm_limit(algorithm))
    ]
    if total > MAX_SIGNALS_PER_MEDIA:
        problems.append(f"{total} signals; at most {MAX_SIGNALS_PER_MEDIA} per media")
    return problems


def merge_problems(
    media_id: str,
    *,
    stored_signals: Iterable[SignalValue],
    added_signals: Iterable[SignalValue],
    stored_series: Iterable[str],
    added_series: Iterable[str],
) -> list[tuple[str, str]]:
    """(field, problem) pairs for a submission that would take a stored media past the limits
    once merged: signals and series are the union of stored and submitted ones."""
    stored = {(s.algorithm, s.value): s for s in stored_signals}
    merged = dict(stored)
    for signal in added_signals:
        merged.setdefault((signal.algorithm, signal.value), signal)
    problems: list[tuple[str, str]] = []
    if len(merged) > len(stored):
        for problem in signal_set_problems(merged.values()):
            problems.append(
                (
                    "signals",
                    f"media {media_id!r} already holds {len(stored)} signals; adding these would "
                    f"make {problem}",
                )
            )
    series = set(stored_series)
    joined = series | set(added_series)
    if len(joined) > MAX_SERIES_PER_MEDIA:
        problems.append(
            (
                "series_ids",
                f"media {media_id!r} already belongs to {len(series)} series; adding these would "
                f"make {len(joined)}, at most {MAX_SERIES_PER_MEDIA}",
            )
        )
    return problems
