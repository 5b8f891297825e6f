"""PDQ near-match index: hashex's PdqIndex against brute force and FAISS multi-index hashing.

N random 256-bit hashes plus planted near duplicates (at distances 1-31 from hashes already
in the set); queries are half the planted pairs' originals, half fresh random hashes. For each
variant: build time, resident memory the build added, single-query latency (median, p99), batch
throughput, recall of the planted pairs, and how many answers differ from the reference's
(FAISS flat, an exhaustive scan, so its answers are the truth). Row id = position in the set.

    .venv/bin/python bench/pdq_index.py --n 1000000
    .venv/bin/python bench/pdq_index.py --n 10000000 --flat-queries 200 --skip-faiss-multihash
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
    threshold: int

    @property
    def query_bytes(self) -> npt.NDArray[np.uint8]:
        return self.queries.view(np.uint8).reshape(-1, 32)


def make_workload(n: int, planted: int, queries: int, seed: int, threshold: int) -> Workload:
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
    return Workload(words, query_words[order], wanted, threshold)


class Variant(ABC):
    """One index under test: build it (`build_s` times the build alone), then answer queries."""

    name = ""
    build_s = 0.0

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
        self.threshold = work.threshold
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
        self.radius = work.threshold + 1
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
        limits, distances, ids = self.index.range_search(queries, self.radius)
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
        rows = np.flatnonzero(dist <= self.work.threshold)
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
    variant: Variant, work: Workload, single: Sequence[int], repeat: int, batch: bool
) -> tuple[Result, dict[int, Answer]]:
    """Build, then time single queries (after a short warm-up) and, if asked, whole batches."""
    progress(f"{variant.name}: building over {len(work.words):,} hashes")
    before = rss_mib()
    variant.build(work)
    result: Result = {"build_s": round(variant.build_s, 3), "rss_mib": round(rss_mib() - before, 1)}
    if (index_mib := variant.index_mib()) is not None:
        result["index_mib"] = round(index_mib, 1)
    for i in single[:10]:
        variant.query(i)
    progress(f"{variant.name}: {len(single)} single queries")
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
    parser.add_argument("--repeat", type=int, default=3, help="batch runs (median is kept)")
    parser.add_argument("--flat-queries", type=int, default=None, help="single queries, flat")
    parser.add_argument("--numpy-queries", type=int, default=100, help="single queries, numpy")
    parser.add_argument("--skip-faiss-flat", action="store_true")
    parser.add_argument("--skip-faiss-multihash", action="store_true")
    parser.add_argument("--skip-numpy", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    progress(f"generating {args.n:,} hashes + {args.planted} planted, {args.queries} queries")
    work = make_workload(args.n, args.planted, args.queries, args.seed, args.threshold)
    everything = list(range(args.queries))
    threads = faiss.omp_get_max_threads()
    plan: list[tuple[Variant, Sequence[int], bool]] = [(Hashex(), everything, True)]
    if not args.skip_faiss_multihash:
        plan.append((FaissRange("faiss_multihash", make_multihash, threads), everything, True))
    if not args.skip_numpy:
        plan.append((NumpyBrute(), everything[: args.numpy_queries], False))
    if not args.skip_faiss_flat:
        flat = FaissRange("faiss_flat", lambda: faiss.IndexBinaryFlat(256), threads)
        plan.append((flat, everything[: args.flat_queries], True))
    results, answers = run_all(plan, work, args.repeat)
    reference = next(
        (v for v in ("faiss_flat", "numpy_brute", "faiss_multihash") if v in results), "hashex"
    )
    count_mismatches(results, answers, reference)
    params = {k: v for k, v in vars(args).items() if not k.startswith("skip")}
    params |= {"variants": list(results), "faiss_batch_threads": threads}
    info = machine(numpy=np.__version__, faiss=faiss.__version__)
    emit("pdq_index", params, info, results, reference)


def run_all(
    plan: list[tuple[Variant, Sequence[int], bool]], work: Workload, repeat: int
) -> tuple[dict[str, Result], dict[str, dict[int, Answer]]]:
    results: dict[str, Result] = {}
    answers: dict[str, dict[int, Answer]] = {}
    for variant, single, batch in plan:
        results[variant.name], answers[variant.name] = measure(variant, work, single, repeat, batch)
        progress(f"{variant.name}: {results[variant.name]}")
        del variant
    return results, answers


def count_mismatches(
    results: dict[str, Result], answers: dict[str, dict[int, Answer]], reference: str
) -> None:
    """Answers differing from the reference's, on the queries both ran: must be 0 for hashex."""
    truth = answers[reference]
    for name, given in answers.items():
        if name != reference:
            common = truth.keys() & given.keys()
            results[name]["mismatches"] = sum(truth[q] != given[q] for q in common)


if __name__ == "__main__":
    main()
