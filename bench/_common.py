"""What every bench shares: machine facts, resident memory, latency summaries, and the one JSON
line of output that BENCHMARKS.md defines (ratios are computed here, so no bench gets them
backwards).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence

Result = dict[str, float]


def progress(message: str) -> None:
    """Human-readable progress goes to stderr; stdout is kept for the JSON line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine(**libraries: str) -> dict[str, object]:
    """Facts that make numbers from different machines comparable, plus library versions."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        **libraries,
    }


def rss_mib() -> float:
    """Resident memory now (Linux), after handing freed heap back to the OS so that growth is
    not hidden by memory an earlier step freed but the allocator kept."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None
    if trim is not None:
        trim(0)
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(samples: Sequence[float], share: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation between two."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(share / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> Result:
    return {
        "median_ms": round(percentile(seconds, 50) * 1e3, 4),
        "p99_ms": round(percentile(seconds, 99) * 1e3, 4),
    }


def emit(
    bench: str,
    params: Mapping[str, object],
    machine_info: Mapping[str, object],
    results: Mapping[str, Result],
    reference: str,
) -> None:
    """Print the single JSON line, last on stdout, with ratio = reference median / variant's."""
    ratios: dict[str, float] = {}
    base = results.get(reference, {}).get("median_ms")
    for variant, result in results.items():
        median = result.get("median_ms")
        if base is not None and median:
            ratios[variant] = round(base / median, 3)
    line = {
        "bench": bench,
        "params": dict(params),
        "machine": dict(machine_info),
        "results": {k: dict(v) for k, v in results.items()},
        "reference": reference,
        "ratios": ratios,
    }
    print(json.dumps(line), flush=True)
