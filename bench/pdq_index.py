"""PDQ near-match index: hashex's PdqIndex against brute force and FAISS multi-index hashing.

N random 256-bit hashes plus planted near duplicates (at distances 1-31 from hashes already
in the set); queries are half the planted pairs' originals, half fresh random hashes. For each
variant: build time, resident memory the build added, single-query latency (median, p99), batch
throughput, recall of the planted pairs, and how many answers differ from the reference's
(FAISS flat, an exhaustive scan, so its answers are the truth). Row id = position in the set.

    .venv/bin/python bench/pdq_index.py --n 1000000
    .venv/bin/python bench/pdq_index.py --n 10000000 --flat-queries 200 --skip-faiss-multihash
    .venv/bin/python bench/pdq_index.py --n 2000000 --thresholds 31,48,64

With --thresholds every variant is built once and measured at each threshold in turn; results
are named `<variant>_t<threshold>`, and each carries `vs_reference` (the reference's median at
the same threshold / its own) and `batch_vs_reference` (its batch throughput / the reference's).
The multi-hash layout is defined for 31 only (16 tables, one bit flip) and runs at 31 alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import faiss
import numpy as np
import numpy.typing as npt
from _common import Result, emit, latency_summary, machine, progress, rss_mib

from services.registry.pdq_index import PdqIndex

Answer = frozenset[tuple[int, int]]  # (row id, distance)
Words = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class Workload:
    words: Words  # (rows, 4): row id = position
    queries: Words  # (queries, 4)
    planted: dict[int, int]  # query number -> the near-duplicate row it must find

    @property
    def query_bytes(self) -> npt.NDArray[np.uint8]:
        return self.queries.view(np.uint8).reshape(-1, 32)


def make_workload(n: int, planted: int, queries: int, seed: int) -> Workload:
    """Random hashes; `planted` of them get a copy with 1..31 bits flipped appended."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, size=(n + planted, 4), dtype=np.uint64)
    sources = rng.choice(n, size=planted, replace=False)
    bits = words[n:].view(np.uint8).reshape(planted, 32)
    bits[:] = words[sources].view(np.uint8).reshape(planted, 32)
    for i in range(planted):
        for bit in rng.choice(256, size=1 + i % 31, replace=False):
            bits[i, bit // 8] ^= np.uint8(1 << (bit % 8))
    half = min(queries // 2, planted)
    picked = rng.choice(planted, size=half, replace=False)
    fresh = rng.integers(0, 2**64, size=(queries - half, 4), dtype=np.uint64)
    query_words = np.concatenate([words[sources[picked]], fresh])
    order = rng.permutation(queries)
    wanted = {int(np.flatnonzero(order == i)[0]): n + int(p) for i, p in enumerate(picked)}
    return Workload(words, query_words[order], wanted)


class Variant(ABC):
    """One index under test: build it (`build_s` times the build alone), then answer queries."""

    name = ""
    build_s = 0.0
    threshold = 31  # set by `measure` before any query

    @abstractmethod
    def build(self, work: Workload) -> None: ...

    @abstractmethod
    def query(self, i: int) -> Answer: ...

    @abstractmethod
    def query_all(self) -> list[Answer]: ...

    def index_mib(self) -> float | None:
        return None


class Hashex(Variant):
    name = "hashex"

    def build(self, work: Workload) -> None:
        """Through the registry's own calls: Python bytes in, `add`, then `rebuild`."""
        values = _split(work.words)
        rows = list(range(len(values)))
        self.queries = _split(work.queries)
        self.index = PdqIndex()
        start = time.perf_counter()
        self.index.add(rows, values)
        self.index.rebuild()
        self.build_s = time.perf_counter() - start

    def query(self, i: int) -> Answer:
        hits = self.index.query(self.queries[i], self.threshold)
        return frozenset((h.row_id, h.distance) for h in hits)

    def query_all(self) -> list[Answer]:
        answers = self.index.query_many(self.queries, self.threshold)
        return [frozenset((h.row_id, h.distance) for h in hits) for hits in answers]

    def index_mib(self) -> float:
        return self.index.nbytes / 2**20


class FaissRange(Variant):
    """FAISS range search (its radius is exclusive, hence threshold + 1), flat or multi-hash.

    Single queries run on one OpenMP thread, batches on all: with two, a lone query waits at an
    OpenMP barrier for whichever core is busy elsewhere (17 ms instead of 1.7 ms at 1M on a
    shared machine), and hashex's single queries are single-threaded too.
    """

    def __init__(self, name: str, factory: Callable[[], faiss.IndexBinary], threads: int) -> None:
        self.name = name
        self.factory = factory
        self.threads = threads

    def build(self, work: Workload) -> None:
        data = work.words.view(np.uint8).reshape(-1, 32)
        self.queries = work.query_bytes
        self.index = self.factory()
        start = time.perf_counter()
        self.index.add(data)
        self.build_s = time.perf_counter() - start

    def query(self, i: int) -> Answer:
        faiss.omp_set_num_threads(1)
        return self._answers(self.queries[i : i + 1])[0]

    def query_all(self) -> list[Answer]:
        faiss.omp_set_num_threads(self.threads)
        return self._answers(self.queries)

    def _answers(self, queries: npt.NDArray[np.uint8]) -> list[Answer]:
        limits, distances, ids = self.index.range_search(queries, self.threshold + 1)
        return [
            frozenset(zip(ids[a:b].tolist(), distances[a:b].tolist(), strict=True))
            for a, b in pairwise(limits.tolist())
        ]


class NumpyBrute(Variant):
    name = "numpy_brute"

    def build(self, work: Workload) -> None:
        self.work = work
        start = time.perf_counter()
        self.columns = [work.words[:, j].copy() for j in range(4)]
        self.build_s = time.perf_counter() - start

    def query(self, i: int) -> Answer:
        query = self.work.queries[i]
        dist = np.bitwise_count(self.columns[0] ^ query[0]).astype(np.int64)
        for j in range(1, 4):
            dist += np.bitwise_count(self.columns[j] ^ query[j])
        rows = np.flatnonzero(dist <= self.threshold)
        return frozenset(zip(rows.tolist(), dist[rows].tolist(), strict=True))

    def query_all(self) -> list[Answer]:
        return [self.query(i) for i in range(len(self.work.queries))]


def _split(words: Words) -> list[bytes]:
    raw = words.tobytes()
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def make_multihash() -> faiss.IndexBinary:
    """The layout python-threatexchange uses: 16 tables of 16 bits, one bit flip (31 // 16)."""
    index = faiss.IndexBinaryMultiHash(256, 16, 16)
    index.nflip = 1
    return index


def measure(
    variant: Variant,
    work: Workload,
    single: Sequence[int],
    repeat: int,
    batch: bool,
    thresholds: Sequence[int],
) -> dict[int, tuple[Result, dict[int, Answer]]]:
    """Build once, then at each threshold time single queries (after a short warm-up) and, if
    asked, whole batches. Build time and memory are reported with every threshold's result."""
    progress(f"{variant.name}: building over {len(work.words):,} hashes")
    before = rss_mib()
    variant.build(work)
    built: Result = {"build_s": round(variant.build_s, 3), "rss_mib": round(rss_mib() - before, 1)}
    if (index_mib := variant.index_mib()) is not None:
        built["index_mib"] = round(index_mib, 1)
    return {t: _measure_at(variant, work, single, repeat, batch, t, built) for t in thresholds}


def _measure_at(
    variant: Variant,
    work: Workload,
    single: Sequence[int],
    repeat: int,
    batch: bool,
    threshold: int,
    built: Result,
) -> tuple[Result, dict[int, Answer]]:
    variant.threshold = threshold
    result = dict(built)
    for i in single[:10]:
        variant.query(i)
    progress(f"{variant.name}: {len(single)} single queries at threshold {threshold}")
    answers: dict[int, Answer] = {}
    seconds = []
    for i in single:
        start = time.perf_counter()
        answers[i] = variant.query(i)
        seconds.append(time.perf_counter() - start)
    result |= latency_summary(seconds)
    if batch:
        progress(f"{variant.name}: {repeat} batches of {len(work.queries)}")
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            variant.query_all()
            runs.append(time.perf_counter() - start)
        result["per_s"] = round(len(work.queries) / statistics.median(runs), 1)
    planted = [q for q in single if q in work.planted]
    if planted:
        found = sum(any(row == work.planted[q] for row, _ in answers[q]) for q in planted)
        result["recall"] = found / len(planted)
    return result, answers


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="random hashes in the index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--planted", type=int, default=500, help="near duplicates planted")
    parser.add_argument("--seed", type=int, default=20261101)
    parser.add_argument("--threshold", type=int, default=31)
    parser.add_argument(
        "--thresholds",
        type=_thresholds,
        default=None,
        help="comma-separated thresholds to sweep (0-256), e.g. 31,48,64; overrides --threshold",
    )
    parser.add_argument("--repeat", type=int, default=3, help="batch runs (median is kept)")
    parser.add_argument("--flat-queries", type=int, default=None, help="single queries, flat")
    parser.add_argument("--numpy-queries", type=int, default=100, help="single queries, numpy")
    parser.add_argument("--skip-faiss-flat", action="store_true")
    parser.add_argument("--skip-faiss-multihash", action="store_true")
    parser.add_argument("--skip-numpy", action="store_true")
    return parser.parse_args(argv)


def _thresholds(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or any(not 0 <= v <= 256 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"thresholds must be distinct, 0-256: {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sweep = args.thresholds is not None
    thresholds: list[int] = args.thresholds if sweep else [args.threshold]
    progress(f"generating {args.n:,} hashes + {args.planted} planted, {args.queries} queries")
    work = make_workload(args.n, args.planted, args.queries, args.seed)
    everything = list(range(args.queries))
    threads = faiss.omp_get_max_threads()
    plan: list[tuple[Variant, Sequence[int], bool, list[int]]] = [
        (Hashex(), everything, True, thresholds)
    ]
    if not args.skip_faiss_multihash and 31 in thresholds:
        multihash = FaissRange("faiss_multihash", make_multihash, threads)
        plan.append((multihash, everything, True, [31]))
    if not args.skip_numpy:
        plan.append((NumpyBrute(), everything[: args.numpy_queries], False, thresholds))
    if not args.skip_faiss_flat:
        flat = FaissRange("faiss_flat", lambda: faiss.IndexBinaryFlat(256), threads)
        plan.append((flat, everything[: args.flat_queries], True, thresholds))
    measured = run_all(plan, work, args.repeat)
    results: dict[str, Result] = {}
    references: list[str] = []
    for threshold in thresholds:
        suffix = f"_t{threshold}" if sweep else ""
        at = {name: runs[threshold] for name, runs in measured.items() if threshold in runs}
        reference = next(
            (v for v in ("faiss_flat", "numpy_brute", "faiss_multihash") if v in at), "hashex"
        )
        count_mismatches(at, reference)
        compare_with_reference(at, reference)
        results |= {f"{name}{suffix}": result for name, (result, _) in at.items()}
        references.append(f"{reference}{suffix}")
    params = {k: v for k, v in vars(args).items() if not k.startswith("skip")}
    params |= {"variants": list(results), "faiss_batch_threads": threads}
    info = machine(numpy=np.__version__, faiss=faiss.__version__)
    emit("pdq_index", params, info, results, references[0])


def run_all(
    plan: list[tuple[Variant, Sequence[int], bool, list[int]]], work: Workload, repeat: int
) -> dict[str, dict[int, tuple[Result, dict[int, Answer]]]]:
    measured: dict[str, dict[int, tuple[Result, dict[int, Answer]]]] = {}
    for variant, single, batch, thresholds in plan:
        measured[variant.name] = measure(variant, work, single, repeat, batch, thresholds)
        for threshold, (result, _) in measured[variant.name].items():
            progress(f"{variant.name} at {threshold}: {result}")
        del variant
    return measured


def count_mismatches(at: dict[str, tuple[Result, dict[int, Answer]]], reference: str) -> None:
    """Answers differing from the reference's, on the queries both ran: must be 0 for hashex."""
    truth = at[reference][1]
    for name, (result, given) in at.items():
        if name != reference:
            common = truth.keys() & given.keys()
            result["mismatches"] = sum(truth[q] != given[q] for q in common)


def compare_with_reference(at: dict[str, tuple[Result, dict[int, Answer]]], reference: str) -> None:
    """Each variant's standing against the reference at the same threshold: > 1 is faster."""
    base = at[reference][0]
    for name, (result, _) in at.items():
        if name != reference:
            if result.get("median_ms"):
                result["vs_reference"] = round(base["median_ms"] / result["median_ms"], 3)
            if "per_s" in result and "per_s" in base:
                result["batch_vs_reference"] = round(result["per_s"] / base["per_s"], 3)


if __name__ == "__main__":
    main()
