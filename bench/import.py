"""`hashex import vics` of a VICS 2.0 hash set as a unit runs it: the command in its own process,
through the node's gateway over mutual TLS with a submitter's certificate, into a node (with its
linker running) started here. Two files are imported one after the other, `--small` records and
then `--n` records (different hashes), to show the command's peak memory does not grow with the
file; the node then holds both.

The reference is a COPY of the rows the node then holds (media, signals, series links, series)
into an empty database of the same schema on the same server, 1,000 media per transaction
(bench/_copy_reference.py): what PostgreSQL itself needs to take the rows in.

Records are what a Project VIC national set holds: MD5, SHA1 and PhotoDNA (base64), a US
category, victim-identified and distributed flags on some, a series on one in ten, MediaSize and
DateUpdated (not kept: counted). `median_ms` is milliseconds per 1,000 records for both variants
(for `hashex` the whole import divided by its batches; for the reference its batch median), so
the ratio compares like with like; `per_s` is records per second.

    .venv/bin/python bench/import.py --n 100000 --small 10000
    .venv/bin/python bench/import.py            # 1,000,000 after 100,000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from _common import Result, emit, machine, progress
from _copy_reference import copy_reference
from _nodes import cli, init_nodes, node_config, scratch_dir

from services.gateway.composition import start_node

NODE_ID = "bench-import"
SERIES_EVERY = 10
SERIES = 500
CONTEXT = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Media"


def write_vics(path: Path, n: int, first: int, rng: random.Random) -> int:
    """A VICS 2.0 hash set of `n` media, streamed to `path`; returns its size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        out.write('{"@odata.context": "' + CONTEXT + '", "value": [\n')
        for i in range(first, first + n):
            record: dict[str, Any] = {
                "MediaID": i + 1,
                "Category": rng.randrange(5),
                "MD5": rng.randbytes(16).hex().upper(),
                "SHA1": rng.randbytes(20).hex().upper(),
                "PhotoDNA": base64.b64encode(rng.randbytes(144)).decode(),
                "VictimIdentified": rng.random() < 0.1,
                "OffenderIdentified": False,
                "IsDistributed": rng.random() < 0.3,
                "MediaSize": rng.randrange(10_000, 5_000_000),
                "DateUpdated": "2026-06-07T02:31:49.83Z",
            }
            if i % SERIES_EVERY == 0:
                record["Series"] = f"Bench series {rng.randrange(SERIES)}"
            out.write(("" if i == first else ",\n") + json.dumps(record))
        out.write("\n]}\n")
    return path.stat().st_size


async def run_import(path: Path, unit: Path, data_dir: Path) -> dict[str, float]:
    """The command in its own process; its wall time and peak resident memory (sampled)."""
    start = time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", "import", "vics", str(path),
        "--cert", str(unit), "--data-dir", str(data_dir), "--quiet",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    watched = psutil.Process(child.pid)
    peak = 0
    waiting = asyncio.create_task(child.communicate())
    while not waiting.done():
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        await asyncio.sleep(0.1)
    _, stderr = await waiting
    seconds = time.perf_counter() - start
    text = stderr.decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"hashex import exited {child.returncode}:\n{text}")
    progress(text.strip())
    return {"seconds": seconds, "rss_mib": peak / 2**20}


async def run(args: argparse.Namespace) -> tuple[dict[str, Result], dict[str, Any]]:
    rng = random.Random(args.seed)
    facts: dict[str, Any] = {}
    async with scratch_dir("hashex-bench-import-") as root:
        dirs = await asyncio.to_thread(init_nodes, root, (NODE_ID,), external=False)
        data_dir = dirs[NODE_ID]
        cli("unit", "issue", "bench-unit", "--role", "submitter", "--out", root / "unit",
            "--data-dir", data_dir)  # fmt: skip
        unit = root / "unit" / "bench-unit.pem"
        files = {}
        for label, n, first in (("small", args.small, 0), ("large", args.n, args.small)):
            start = time.perf_counter()
            size = await asyncio.to_thread(write_vics, root / f"{label}.json", n, first, rng)
            files[label] = (root / f"{label}.json", n)
            progress(f"{label}: {n:,} records, {size / 2**20:.0f} MiB in "
                     f"{time.perf_counter() - start:.0f} s")  # fmt: skip
            facts[f"{label}_file_mib"] = round(size / 2**20, 1)
        node = await start_node(node_config(data_dir, None))
        try:
            timed = {}
            for label, (path, n) in files.items():
                progress(f"importing the {label} file ({n:,} records)")
                timed[label] = await run_import(path, unit, data_dir)
                progress(f"{label}: {n / timed[label]['seconds']:,.0f} records/s, "
                         f"peak {timed[label]['rss_mib']:.0f} MiB")  # fmt: skip
            progress("COPY reference")
            reference = await copy_reference(node.database, None, NODE_ID, batch_size=1000)
        finally:
            await node.stop()
    large_n, large = args.n, timed["large"]
    results: dict[str, Result] = {
        "hashex": {
            "median_ms": round(large["seconds"] / large_n * 1000 * 1000, 3),
            "per_s": round(large_n / large["seconds"], 1),
            "total_s": round(large["seconds"], 2),
            "records": large_n,
            "rss_mib": round(large["rss_mib"], 1),
            "rss_mib_small": round(timed["small"]["rss_mib"], 1),
            "small_per_s": round(args.small / timed["small"]["seconds"], 1),
        },
        "copy_reference": reference,
    }
    return results, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records of the large file")
    parser.add_argument("--small", type=int, default=100_000, help="records of the small file")
    parser.add_argument("--seed", type=int, default=20261208)
    args = parser.parse_args()
    results, facts = asyncio.run(run(args))
    params = {"n": args.n, "small": args.small, "seed": args.seed, **facts}
    emit("import", params, machine(psutil=psutil.__version__), results, "copy_reference")


if __name__ == "__main__":
    main()
