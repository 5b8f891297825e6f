"""Replication of N signed media records from one node to another over mutual TLS on loopback
(`hashex`), against the receiver's raw apply rate: COPY of the same rows into an empty set of
the registry's tables (`copy_reference`).

Two real nodes, each created with `hashex node init`, with its own certificates, signing key and
database (an embedded PostgreSQL in its data directory, or a scratch database on --database-url).
The origin runs in this process and is loaded first with N media (md5, sha1, sha256 and PDQ each;
categorised; every tenth in one of 100 series) through `Registry.submit_batch` in batches of
1,000, so its change log is written as in production. The receiver is `start_node` in a separate
process (both cores work: the origin reads, filters and signs while the receiver verifies and
applies). Timing starts when the two nodes pin each other's peer cards and the receiver's sync
service starts its puller; it pulls the whole log through the origin's gateway with the default
settings and sharing policy.

Measured: records/s (N over the time from the puller's start to the commit of the batch that
takes the receiver's cursor to the origin's head), `visible_s` (from that commit until a lookup
of the last media's md5 and a near duplicate of its PDQ hash, through the receiver's gateway with
a unit certificate, finds it), and the time per batch of 1,000 entries. To time batches without
touching the product, the receiver's `SyncStore.apply_batch` and `Registry.index_replicated` are
wrapped on their instances. `--profile` runs cProfile in both processes during replication.

    .venv/bin/python bench/sync.py --n 20000
    .venv/bin/python bench/sync.py              # 1,000,000 media, the issue's size
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import io
import itertools
import multiprocessing
import os
import pstats
import random
import resource
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import nacl
from _common import Result, emit, latency_summary, machine, progress
from _copy_reference import copy_reference
from _corpus import PDQ_QUALITY, Corpus, load, media_id
from _nodes import cli, init_nodes, node_config, scratch_dir, unit_channel

from hashex.v1 import registry_pb2, registry_pb2_grpc
from services.core.algorithms import Algorithm, SignalValue
from services.core.config import NodeConfig
from services.core.db.embedded import start_embedded
from services.core.db.pool import ensure_database
from services.gateway.composition import RunningNode, start_node
from services.registry import convert
from services.registry.model import Category, CategoryScheme, MediaFlags, MediaSubmission

ORIGIN, RECEIVER = "bench-origin", "bench-receiver"
SERIES = 100
IN_SERIES_EVERY = 10
PROBE_FLIPPED_BITS = 5
CATEGORIES = (
    *(Category(CategoryScheme.VICS_US, c) for c in ("1", "2", "3", "4")),
    *(Category(CategoryScheme.CAID_UK, c) for c in ("A", "B", "C")),
    None,  # uncategorised
)
# Functions whose CPU time (cProfile cumulative, this process's main thread) is reported.
RECEIVER_PARTS = {
    "verify_batch": ("services/sync/batches.py", "verify_batch"),
    "  signature (verify_bytes)": ("services/core/signing.py", "verify_bytes"),
    "  parse entries (_verified_entries)": ("services/sync/batches.py", "_verified_entries"),
    "stage_changes": ("services/registry/replicated.py", "stage_changes"),
    "SyncStore.apply_batch (client side)": ("services/sync/store.py", "apply_batch"),
    "  copy_records_to_table": ("asyncpg/connection.py", "copy_records_to_table"),
    "Registry.index_replicated": ("services/registry/registry.py", "index_replicated"),
}
SENDER_PARTS = {
    "SyncStore.read_log": ("services/sync/store.py", "read_log"),
    "BatchChain.batches": ("services/sync/batches.py", "batches"),
    "  filter_log_row": ("services/sync/policy_filter.py", "filter_log_row"),
    "  BatchChain._sign": ("services/sync/batches.py", "_sign"),
    "    sign_bytes": ("services/core/signing.py", "sign_bytes"),
}


# --- the workload -----------------------------------------------------------------------------


def submission(corpus: Corpus, i: int) -> MediaSubmission:
    """Categorised (or not), flagged, every IN_SERIES_EVERY-th in a series: all follow from the
    media's number, so the receiver's process can name the last media without the block."""
    series = (series_id(i),) if i % IN_SERIES_EVERY == 0 else ()
    return MediaSubmission(
        media_id=media_id(i),
        signals=corpus.signals(i),
        category=CATEGORIES[i % len(CATEGORIES)],
        flags=MediaFlags(victim_identified=i % 3 == 0, distributed=i % 4 == 0),
        series_ids=series,
    )


def series_id(i: int) -> str:
    return f"bench-series-{(i // IN_SERIES_EVERY) % SERIES:03d}"


def flip_bits(value: bytes, count: int, rng: random.Random) -> bytes:
    bits = bytearray(value)
    for position in rng.sample(range(len(value) * 8), count):
        bits[position // 8] ^= 1 << (position % 8)
    return bytes(bits)


@dataclass(frozen=True)
class Probe:
    """The last media submitted: its id, its md5, and a near duplicate of its PDQ hash."""

    media_id: str
    md5: bytes
    near_pdq: bytes

    def request(self) -> registry_pb2.LookupRequest:
        signals = [
            SignalValue(Algorithm.MD5, self.md5),
            SignalValue(Algorithm.PDQ, self.near_pdq, PDQ_QUALITY),
        ]
        return registry_pb2.LookupRequest(
            signals=[convert.signal_to_proto(s) for s in signals], pdq_max_distance=31
        )

    def found(self, response: registry_pb2.LookupResponse) -> tuple[bool, bool]:
        """(exact found, near found)."""
        return tuple(  # type: ignore[return-value]
            any(
                m.media.media_id == self.media_id and m.media.origin == ORIGIN
                for m in result.matches
            )
            for result in response.results
        )


# --- measuring helpers ---------------------------------------------------------------------


def cpu_s() -> float:
    """CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of a PostgreSQL server: the postmaster, its reaped backends and its live
    ones (Linux /proc); None when there is no embedded server to look at."""
    if pid is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total = sum(int(f) for f in fields[11:15])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        with suppress(OSError):
            child_fields = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
            total += int(child_fields[11]) + int(child_fields[12])
    return total / ticks


def postmaster_pid(node: RunningNode) -> int | None:
    embedded = node.database.embedded
    return embedded.postmaster_pid if embedded is not None else None


def profile_parts(profile: cProfile.Profile, parts: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Cumulative CPU seconds of named functions. A coroutine's time counts only while it runs,
    not while it awaits, so these are CPU times of this thread, not wall times."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for label, (path, name) in parts.items():
        out[label] = round(
            sum(
                row[3]
                for (filename, _, funcname), row in stats.items()
                if funcname == name and filename.endswith(path)
            ),
            3,
        )
    return out


def profile_text(profile: cProfile.Profile, top: int) -> str:
    buffer = io.StringIO()
    stats = pstats.Stats(profile, stream=buffer)
    stats.sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


# --- the receiver, in its own process -------------------------------------------------------


@dataclass(frozen=True)
class ReceiverSetup:
    data_dir: Path
    database_url: str | None
    # Where the scratch database of the COPY reference is created (None: the embedded server).
    admin_url: str | None


@dataclass(frozen=True)
class Go:
    origin_card: Path
    head_seq: int
    probe: Probe
    timeout_s: float
    profile: bool
    profile_top: int


@dataclass(frozen=True)
class Watch:
    """Poll the receiver's gateway until this media is found; answer when (monotonic)."""

    media_id: str
    md5: bytes


@dataclass
class Timeline:
    """What the wrapped apply and index calls saw, on the monotonic clock (one clock for both
    processes on Linux)."""

    head_seq: int
    started: float = 0.0
    commits: list[float] = field(default_factory=list)
    apply_s: list[float] = field(default_factory=list)
    index_s: list[float] = field(default_factory=list)
    covered_at: float | None = None
    covered: asyncio.Event = field(default_factory=asyncio.Event)
    _next_report: int = 0

    def applied(self, start: float, end: float, last_seq: int) -> None:
        self.commits.append(end)
        self.apply_s.append(end - start)
        if last_seq >= self._next_report:
            rate = last_seq / max(end - self.started, 1e-9)
            progress(f"receiver: cursor at {last_seq:,} of {self.head_seq:,} ({rate:,.0f}/s)")
            self._next_report = last_seq + max(1, self.head_seq // 10)
        if last_seq >= self.head_seq and self.covered_at is None:
            self.covered_at = end
            self.covered.set()


def instrument(node: RunningNode, timeline: Timeline) -> None:
    """Wrap the two calls the puller makes per batch, on these instances only."""
    store, registry = node.sync.store, node.registry
    apply_batch, index_replicated = store.apply_batch, registry.index_replicated

    async def timed_apply(**kwargs: Any) -> Any:
        start = time.monotonic()
        result = await apply_batch(**kwargs)
        timeline.applied(start, time.monotonic(), kwargs["batch"].last_seq)
        return result

    async def timed_index(**kwargs: Any) -> None:
        start = time.monotonic()
        await index_replicated(**kwargs)
        timeline.index_s.append(time.monotonic() - start)

    store.apply_batch = timed_apply  # type: ignore[method-assign]
    registry.index_replicated = timed_index  # type: ignore[method-assign]


def receiver_main(conn: Connection, setup: ReceiverSetup) -> None:
    """Start the node, then serve orders until None (or the bench is gone); stop the node."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_receiver(conn, setup))


async def _receiver(conn: Connection, setup: ReceiverSetup) -> None:
    config = node_config(setup.data_dir, setup.database_url)
    node = await start_node(config)
    try:
        conn.send(("ready", node.gateway_address))
        while True:
            try:
                order = await asyncio.to_thread(conn.recv)
            except EOFError:
                break
            if order is None:
                break
            if isinstance(order, Go):
                conn.send(await replicate(node, config, order))
            elif isinstance(order, Watch):
                conn.send(await watch(node, config, order))
            else:
                conn.send(
                    await copy_reference(node.database, setup.admin_url, ORIGIN, batch_size=order)
                )
    finally:
        await node.stop()
        conn.close()


async def replicate(node: RunningNode, config: NodeConfig, go: Go) -> dict[str, Any]:
    timeline = Timeline(go.head_seq)
    instrument(node, timeline)
    channel = unit_channel(node, config)
    stub = registry_pb2_grpc.RegistryStub(channel)
    profile = cProfile.Profile() if go.profile else None
    pg_pid = postmaster_pid(node)
    cpu_before, pg_before = cpu_s(), tree_cpu_s(pg_pid)
    try:
        # The unit's channel is connected first, and the last media is not there yet.
        if any(go.probe.found(await stub.Lookup(go.probe.request(), timeout=10))):  # type: ignore[misc]
            raise RuntimeError("the receiver found the last media before pulling")
        cli("peer", "add", go.origin_card, "--policy", "share-all", "--data-dir", config.data_dir)
        if profile is not None:
            profile.enable()
        timeline.started = time.monotonic()
        await node.sync.reconcile()
        try:
            await asyncio.wait_for(timeline.covered.wait(), go.timeout_s)
        except TimeoutError:
            state = node.sync.pullers.get(ORIGIN)
            error = state.state.last_error if state else "no puller"
            raise RuntimeError(f"not replicated within {go.timeout_s:.0f} s ({error})") from None
        if profile is not None:
            profile.disable()
        cpu_after, pg_after = cpu_s(), tree_cpu_s(pg_pid)
        exact_at, near_at = await poll_lookup(stub, go.probe, deadline_s=60.0)
    finally:
        await channel.close()
    assert timeline.covered_at is not None
    cursor = await node.sync.store.cursor(ORIGIN)
    out: dict[str, Any] = {
        "started": timeline.started,
        "covered_at": timeline.covered_at,
        "visible_exact_at": exact_at,
        "visible_at": max(exact_at, near_at),
        "cursor_seq": cursor.seq,
        "batches": len(timeline.commits),
        "commits": timeline.commits,
        "apply_s": timeline.apply_s,
        "index_s": timeline.index_s,
        "cpu_s": cpu_after - cpu_before,
        "pg_cpu_s": None if pg_before is None or pg_after is None else pg_after - pg_before,
    }
    if profile is not None:
        out["profile_parts"] = profile_parts(profile, RECEIVER_PARTS)
        out["profile_text"] = profile_text(profile, go.profile_top)
    return out


async def watch(node: RunningNode, config: NodeConfig, order: Watch) -> float:
    """When a lookup through the receiver's gateway first found `order`'s media."""
    request = registry_pb2.LookupRequest(
        signals=[convert.signal_to_proto(SignalValue(Algorithm.MD5, order.md5))]
    )
    channel = unit_channel(node, config)
    try:
        stub = registry_pb2_grpc.RegistryStub(channel)
        give_up = time.monotonic() + 30.0
        while time.monotonic() < give_up:
            response = await stub.Lookup(request, timeout=10)  # type: ignore[misc]
            if any(m.media.media_id == order.media_id for m in response.results[0].matches):
                return time.monotonic()
            await asyncio.sleep(0.001)
    finally:
        await channel.close()
    raise RuntimeError(f"{order.media_id} was not visible at the receiver within 30 s")


async def commit_to_visible(origin: RunningNode, receiver: Receiver, count: int) -> Result:
    """`count` media submitted at the origin one at a time once replication has caught up,
    each timed from its submit's return (its commit is just before) until a lookup at the
    receiver finds it: the latency of a held pull, not of a poll."""
    seconds = []
    for i in range(count):
        media = f"latency-{i}"
        md5 = hashlib.md5(media.encode()).digest()
        receiver.send(Watch(media, md5))
        await asyncio.sleep(0.05)  # the receiver is polling before the commit
        await origin.registry.submit_batch(
            [MediaSubmission(media_id=media, signals=(SignalValue(Algorithm.MD5, md5),))]
        )
        committed = time.monotonic()
        seconds.append(await receiver.reply() - committed)
    return latency_summary(seconds) | {"records": count}


async def poll_lookup(
    stub: registry_pb2_grpc.RegistryStub, probe: Probe, *, deadline_s: float
) -> tuple[float, float]:
    """When the exact and the near query first found the last media (monotonic clock)."""
    request = probe.request()
    exact_at: float | None = None
    near_at: float | None = None
    give_up = time.monotonic() + deadline_s
    while exact_at is None or near_at is None:
        response = await stub.Lookup(request, timeout=10)  # type: ignore[misc]
        now = time.monotonic()
        exact, near = probe.found(response)
        if exact and exact_at is None:
            exact_at = now
        if near and near_at is None:
            near_at = now
        if now > give_up:
            raise RuntimeError(f"the last media was not visible {deadline_s:.0f} s after apply")
        await asyncio.sleep(0.002)
    return exact_at, near_at


# --- the COPY reference (in the receiver's process, on the receiver's server) -------------


class Receiver:
    """The bench's handle on the receiver's process."""

    def __init__(self, setup: ReceiverSetup) -> None:
        self._setup = setup
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=receiver_main, args=(child_conn, setup))
        self._process.start()
        child_conn.close()

    async def ask(self, order: object) -> Any:
        if order is not None:
            self.send(order)
        return await self.reply()

    def send(self, order: object) -> None:
        self._conn.send(order)

    async def reply(self) -> Any:
        try:
            return await asyncio.to_thread(self._conn.recv)
        except EOFError:
            raise RuntimeError(f"the receiver died (exit {self._process.exitcode})") from None

    async def stop(self) -> None:
        """Ask the node to stop; kill the process if it does not, then stop an embedded
        PostgreSQL it left behind (joining it as a new holder and letting go stops it)."""
        if self._process.is_alive():
            with suppress(OSError):
                self._conn.send(None)
            await asyncio.to_thread(self._process.join, 60)
        if self._process.is_alive():
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 10)
        self._conn.close()
        if self._process.exitcode != 0 and self._setup.database_url is None:
            data_dir = self._setup.data_dir
            if (data_dir / "pg" / "postmaster.pid").exists():
                progress("receiver exited uncleanly; stopping its PostgreSQL")
                server = await asyncio.to_thread(
                    start_embedded, data_dir / "pg", runtime_dir=data_dir / "run"
                )
                await asyncio.to_thread(server.stop)


# --- the origin and the run ----------------------------------------------------------------


@asynccontextmanager
async def bench_databases(admin_url: str | None) -> AsyncIterator[dict[str, str | None]]:
    """One database per node: None (embedded servers) or fresh ones on `admin_url`, dropped."""
    if admin_url is None:
        yield {ORIGIN: None, RECEIVER: None}
        return
    names = {
        node: f"hashex_bench_{node.split('-')[1]}_{uuid.uuid4().hex[:8]}"
        for node in (ORIGIN, RECEIVER)
    }
    for name in names.values():
        await ensure_database(admin_url, name)
    try:
        yield {
            node: urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
            for node, name in names.items()
        }
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            for name in names.values():
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def load_origin(node: RunningNode, corpus: Corpus, batch_size: int) -> dict[str, float]:
    """Through the node's registry, so the change log is written as in production."""
    loaded = await load(
        node.registry,
        corpus.n,
        lambda i: submission(corpus, i),
        batch_size=batch_size,
        label="origin: ",
    )
    return {
        "load_s": loaded.seconds,
        "load_per_s": loaded.per_s,
        "load_batch_median_ms": loaded.batch_median_ms,
    }


def make_workload(args: argparse.Namespace) -> tuple[Corpus, Probe]:
    rng = random.Random(args.seed)
    progress(f"generating {args.n:,} media (seed {args.seed})")
    corpus = Corpus.random(args.n, rng)
    last = args.n - 1
    probe = Probe(
        media_id(last),
        corpus.value(last, Algorithm.MD5),
        flip_bits(corpus.value(last, Algorithm.PDQ), PROBE_FLIPPED_BITS, rng),
    )
    return corpus, probe


async def run(
    args: argparse.Namespace,
) -> tuple[dict[str, Result], dict[str, Any], dict[str, Any]]:
    """Everything started here is stopped on the way out, on error, Ctrl-C or SIGTERM alike."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    corpus, probe = make_workload(args)
    facts: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        root = await stack.enter_async_context(scratch_dir("hashex-bench-sync-"))
        urls = await stack.enter_async_context(bench_databases(args.database_url))
        dirs = await asyncio.to_thread(
            init_nodes, root, (ORIGIN, RECEIVER), external=args.database_url is not None
        )
        origin = await start_node(node_config(dirs[ORIGIN], urls[ORIGIN]))
        stack.push_async_callback(origin.stop)
        progress(f"origin up ({origin.database.display_url}); loading {corpus.n:,} media")
        facts |= await load_origin(origin, corpus, args.load_batch_size)
        head = await origin.sync.store.last_seq()
        facts["log_entries"] = head
        progress(f"origin loaded: {facts}")
        receiver = Receiver(ReceiverSetup(dirs[RECEIVER], urls[RECEIVER], args.database_url))
        stack.push_async_callback(receiver.stop)
        status, address = await receiver.ask(None)
        progress(f"receiver {status} (gateway {address}); pinning each other, pulling")
        cli(
            "peer", "add", root / f"{RECEIVER}.card", "--policy", "share-all",
            "--data-dir", dirs[ORIGIN],
        )  # fmt: skip
        profile = cProfile.Profile() if args.profile else None
        pg_pid = postmaster_pid(origin)
        cpu_before, pg_before = cpu_s(), tree_cpu_s(pg_pid)
        if profile is not None:
            profile.enable()
        timeout_s = max(300.0, args.n / 200)
        go = Go(root / f"{ORIGIN}.card", head, probe, timeout_s, args.profile, args.profile_top)
        replicated = await receiver.ask(go)
        if profile is not None:
            profile.disable()
        facts["origin_cpu_s"] = round(cpu_s() - cpu_before, 2)
        pg_after = tree_cpu_s(pg_pid)
        if pg_before is not None and pg_after is not None:
            facts["origin_pg_cpu_s"] = round(pg_after - pg_before, 2)
        if profile is not None:
            replicated["sender_parts"] = profile_parts(profile, SENDER_PARTS)
            replicated["sender_text"] = profile_text(profile, args.profile_top)
        progress(f"replicated; {args.latency_records} single records, commit to visible")
        facts["commit_to_visible"] = await commit_to_visible(origin, receiver, args.latency_records)
        progress(f"commit to visible: {facts['commit_to_visible']}")
        progress("timing the COPY reference on the receiver's server")
        reference = await receiver.ask(args.load_batch_size)
        progress("stopping")
    return summarise(corpus.n, replicated, reference, facts), replicated, facts


def summarise(
    n: int, replicated: dict[str, Any], reference: Result, facts: dict[str, Any]
) -> dict[str, Result]:
    started, covered = replicated["started"], replicated["covered_at"]
    commits = [started, *replicated["commits"]]
    intervals = [b - a for a, b in itertools.pairwise(commits)]
    hashex = latency_summary(intervals)
    replicate_s = covered - started
    hashex |= {
        "per_s": round(n / replicate_s, 1),
        "replicate_s": round(replicate_s, 3),
        "visible_s": round(replicated["visible_at"] - covered, 4),
        "visible_exact_s": round(replicated["visible_exact_at"] - covered, 4),
        "end_to_end_s": round(replicated["visible_at"] - started, 3),
        "batches": replicated["batches"],
        "apply_median_ms": round(statistics.median(replicated["apply_s"]) * 1e3, 2),
        "apply_share": round(sum(replicated["apply_s"]) / replicate_s, 3),
        "index_median_ms": round(statistics.median(replicated["index_s"]) * 1e3, 2),
        "index_share": round(sum(replicated["index_s"]) / replicate_s, 3),
        "receiver_cpu_s": round(replicated["cpu_s"], 2),
        **{k: v for k, v in facts.items() if k not in ("log_entries", "commit_to_visible")},
    }
    if (latency := facts.get("commit_to_visible")) is not None:
        hashex["commit_to_visible_median_ms"] = latency["median_ms"]
        hashex["commit_to_visible_p99_ms"] = latency["p99_ms"]
    if replicated["pg_cpu_s"] is not None:
        hashex["receiver_pg_cpu_s"] = round(replicated["pg_cpu_s"], 2)
    return {"hashex": hashex, "copy_reference": reference}


def report_profile(replicated: dict[str, Any]) -> None:
    if "profile_parts" not in replicated:
        return
    for side, parts, text in (
        ("receiver", "profile_parts", "profile_text"),
        ("sender", "sender_parts", "sender_text"),
    ):
        progress(f"{side} profile (CPU s, main thread, cProfile cumulative):")
        for label, seconds in replicated[parts].items():
            print(f"    {label:<40} {seconds:8.3f}", file=sys.stderr)
        print(replicated[text], file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="media the origin holds")
    parser.add_argument("--load-batch-size", type=int, default=1000, help="media per submit")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile both processes while replicating"
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions printed")
    parser.add_argument(
        "--latency-records", type=int, default=50, help="single records timed commit to visible"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server to use (scratch databases are created on it and dropped); "
        "default: an embedded server in each node's data directory",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.load_batch_size < 1:
        parser.error("need --n >= 1 and --load-batch-size >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results, replicated, facts = asyncio.run(run(args))
    report_profile(replicated)
    one = results["hashex"]
    progress(
        f"hashex: {one['per_s']:,.0f} records/s ({one['median_ms']} ms per batch of 1,000), "
        f"last record visible {one['visible_s']} s after its batch committed; COPY reference "
        f"{results['copy_reference']['per_s']:,.0f} records/s"
    )
    params: dict[str, object] = {k: v for k, v in vars(args).items() if k != "database_url"}
    params |= {
        "database": "external" if args.database_url else "embedded, one server per node",
        "receiver": "separate process (start_node), pulling through the origin's gateway",
        "median_ms": "per batch of 1,000 change-log entries: hashex between successive batch "
        "commits on the receiver (receive, verify, parse, apply, index); copy_reference one "
        "transaction of COPYs for 1,000 media",
        "per_s": "media records per second",
        "visible_s": "from the commit that took the cursor to the origin's head until a lookup "
        "through the receiver's gateway found the last media (exact md5 and near PDQ)",
        "series": SERIES,
        "in_series_every": IN_SERIES_EVERY,
        "log_entries": facts["log_entries"],
        "commit_to_visible_median_ms": "single media submitted at the origin after catch-up, "
        "from the submit's return until a lookup at the receiver's gateway found it (held pull)",
        "targets": {"per_s": 20_000, "visible_s": 5},
    }
    info = machine(
        grpcio=grpc.__version__,
        postgres_driver=f"asyncpg {asyncpg.__version__}",
        pynacl=nacl.__version__,
    )
    emit("sync", params, info, results, "copy_reference")


if __name__ == "__main__":
    main()
