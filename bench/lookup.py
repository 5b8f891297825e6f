"""End-to-end lookups against a node holding N media: through the node's gateway over mutual
TLS on loopback (`hashex`), through the registry's own mutual-TLS server without the gateway
(`registry_mtls`), and in process (`in_process`, the reference).

`hashex` is the path a unit's call takes: `start_gateway` fronting the `RegistryServicer`, with a
node CA, the gateway's node certificate, a unit certificate for the client, a `TrustStore` on an
empty peers directory and the audit log in the node's database, so every call is authenticated,
authorised, rate-limited (limits set far above what the bench asks, so it is never throttled)
and recorded. `registry_mtls` is the same servicer behind `build_server` with plain mTLS server
credentials: the difference between the two is what the gateway adds per call.
`gateway_no_audit` is a diagnostic: a second gateway whose audit store writes nothing (records
are still sealed), so `hashex` - `gateway_no_audit` is the audit log's database transaction.

Each media has md5, sha1, sha256 and a PDQ hash (quality 90), loaded in process through
`Registry.submit_batch` (COPY batches of 1,000, as the store does). Exact batches ask half stored
md5/sha256 hashes and half unknown ones; near batches ask half planted near duplicates of stored
PDQ hashes (1-31 bits flipped) and half random PDQ hashes. `in_process` is `Registry.lookup` on
domain signals plus the conversion of its results to protobuf: what a gRPC call adds on top of
that (validation, serialisation, HTTP/2, TLS, interceptors, the gateway, the client) is the
overhead. `single` calls ask one stored md5 each: their latency is almost all fixed per-call cost,
so `hashex_single` - `registry_mtls_single` is the gateway's cost per call. With `--series-size S`
the first S media belong to one series (what `hashex submit --series` makes of a seizure):
`exact_series` batches then ask hashes of those, `exact` batches hashes of the others, so
`series_cost` (exact_series median / exact median, per transport) is what a large series adds
to a lookup (target <= 1.3). The audit log's
append is also timed on its own (one at a time and `--in-flight` at once), and the bench counts
the audit transactions the gateway makes per call, and checks at the end that the log holds one
record for every call made through the gateway.

The gRPC client runs in its own process, as a unit's would, so client and server do not share
one interpreter lock. Every batch is first run once in process (untimed) so that every variant
finds PostgreSQL's cache equally warm; variants then take turns, a round of batches each.

    .venv/bin/python bench/lookup.py --n 100000
    .venv/bin/python bench/lookup.py            # 1,000,000 media
    .venv/bin/python bench/lookup.py --series-size 200000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from _common import Result, emit, latency_summary, machine, progress
from _corpus import PDQ_QUALITY, Corpus, load, media_id

from hashex.v1 import registry_pb2, registry_pb2_grpc
from services.core import tls
from services.core.algorithms import Algorithm, SignalValue
from services.core.audit.chain import AuditEntry, AuditRecord, seal_all
from services.core.audit.store import AuditStore
from services.core.config import NodeConfig
from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database, ensure_database, open_database
from services.core.server import RunningServer, build_server
from services.core.telemetry import setup_telemetry
from services.core.trust import TrustStore
from services.gateway.app import RunningGateway, start_gateway
from services.registry import convert
from services.registry.app import open_registry
from services.registry.cases import create_case_key
from services.registry.model import MediaSubmission
from services.registry.registry import Registry
from services.registry.servicer import RegistryServicer
from services.sync.store import MIGRATIONS as NODE_MIGRATIONS

WORKING_ROLES = ("analyst", "submitter", "victim-id")

NODE_ID = "bench-node"
MAX_DISTANCE = 31
MAX_MATCHES = 100
KINDS = ("exact", "near", "single")
TRANSPORTS = ("in_process", "registry_mtls", "gateway_no_audit", "hashex")
# Far above the bench's call rate (a few hundred calls/s at most), so the limiter never refuses.
RATE_LIMIT_PER_S = 1_000_000.0
RATE_LIMIT_BURST = 1_000_000
AUDIT_PROBE_RECORDS = 400
CALL_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


# --- the workload -----------------------------------------------------------------------------


SERIES_ID = "bench-series"


def submission(corpus: Corpus, i: int, series_size: int) -> MediaSubmission:
    series = (SERIES_ID,) if i < series_size else ()
    return MediaSubmission(media_id=media_id(i), signals=corpus.signals(i), series_ids=series)


@dataclass(frozen=True)
class Batch:
    """One lookup, as domain signals (in process) and as the serialised request (gRPC), with
    the media each planted query must find."""

    signals: tuple[SignalValue, ...]
    request: bytes
    expected: dict[int, str]


def make_batch(signals: list[SignalValue], expected: dict[int, str]) -> Batch:
    request = registry_pb2.LookupRequest(signals=[convert.signal_to_proto(s) for s in signals])
    return Batch(tuple(signals), request.SerializeToString(), expected)


def exact_batch(corpus: Corpus, rng: random.Random, size: int, media: range) -> Batch:
    """Half stored md5/sha256 hashes of distinct media among `media`, half unknown ones,
    shuffled."""
    hits = rng.sample(media, size // 2)
    queries: list[tuple[SignalValue, str | None]] = []
    for i in hits:
        algorithm = rng.choice((Algorithm.MD5, Algorithm.SHA256))
        queries.append((SignalValue(algorithm, corpus.value(i, algorithm)), media_id(i)))
    for _ in range(size - len(hits)):
        algorithm = rng.choice((Algorithm.MD5, Algorithm.SHA256))
        queries.append(
            (SignalValue(algorithm, rng.randbytes(16 if algorithm == Algorithm.MD5 else 32)), None)
        )
    return _shuffled(queries, rng)


def single_batch(corpus: Corpus, rng: random.Random) -> Batch:
    """One stored md5: a call whose cost is almost all per-call overhead."""
    i = rng.randrange(corpus.n)
    return make_batch(
        [SignalValue(Algorithm.MD5, corpus.value(i, Algorithm.MD5))], {0: media_id(i)}
    )


def near_batch(corpus: Corpus, rng: random.Random, size: int) -> Batch:
    """Half stored PDQ hashes with 1-31 bits flipped, half random PDQ hashes, shuffled."""
    queries: list[tuple[SignalValue, str | None]] = []
    for i in rng.sample(range(corpus.n), size // 2):
        near = flip_bits(corpus.value(i, Algorithm.PDQ), rng.randint(1, MAX_DISTANCE), rng)
        queries.append((SignalValue(Algorithm.PDQ, near, PDQ_QUALITY), media_id(i)))
    for _ in range(size - size // 2):
        queries.append((SignalValue(Algorithm.PDQ, rng.randbytes(32), PDQ_QUALITY), None))
    return _shuffled(queries, rng)


def _shuffled(queries: list[tuple[SignalValue, str | None]], rng: random.Random) -> Batch:
    rng.shuffle(queries)
    expected = {pos: media for pos, (_, media) in enumerate(queries) if media is not None}
    return make_batch([signal for signal, _ in queries], expected)


def flip_bits(value: bytes, count: int, rng: random.Random) -> bytes:
    bits = bytearray(value)
    for position in rng.sample(range(len(value) * 8), count):
        bits[position // 8] ^= 1 << (position % 8)
    return bytes(bits)


def found(response: registry_pb2.LookupResponse, expected: dict[int, str]) -> int:
    """How many planted queries found the media they were made from."""
    results = response.results
    return sum(
        any(m.media.media_id == media for m in results[pos].matches)
        for pos, media in expected.items()
    )


# --- the gRPC client, in its own process -------------------------------------------------------


@dataclass(frozen=True)
class ClientSetup:
    """Everything the client process needs, picklable: where to call, with which certificate,
    and every batch's request (sent once; each order then names batches by number)."""

    addresses: dict[str, str]
    server_ca_pem: bytes
    unit: tls.CertifiedKey
    requests: dict[str, list[tuple[bytes, dict[int, str]]]]


Order = tuple[str, str, Sequence[int], int]  # transport, kind, batch numbers, calls in flight
Timings = tuple[list[float], int, float]  # seconds per batch, planted queries found, wall seconds


def client_main(conn: Connection, setup: ClientSetup) -> None:
    """Serve orders from the bench until it sends None: time each batch, count what it found.
    Ctrl-C is left to the bench, which stops this process after its calls end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    credentials = tls.channel_credentials(setup.unit, trusted_server_cas=[setup.server_ca_pem])
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    channels = {
        name: grpc.secure_channel(address, credentials, options)
        for name, address in setup.addresses.items()
    }
    stubs = {name: registry_pb2_grpc.RegistryStub(ch) for name, ch in channels.items()}
    requests = {
        kind: [(registry_pb2.LookupRequest.FromString(raw), want) for raw, want in batches]
        for kind, batches in setup.requests.items()
    }
    try:
        while (order := conn.recv()) is not None:
            transport, kind, numbers, in_flight = order
            batches = [requests[kind][i] for i in numbers]
            conn.send(_timed_calls(stubs[transport], batches, in_flight))
    finally:
        for channel in channels.values():
            channel.close()


def _timed_calls(
    stub: registry_pb2_grpc.RegistryStub,
    batches: Sequence[tuple[registry_pb2.LookupRequest, dict[int, str]]],
    in_flight: int,
) -> Timings:
    """One call per batch, `in_flight` at a time (threads: the sync stub is thread-safe and its
    calls release the interpreter lock while they wait)."""

    def call(batch: tuple[registry_pb2.LookupRequest, dict[int, str]]) -> tuple[float, int]:
        request, expected = batch
        start = time.perf_counter()
        response = stub.Lookup(request, timeout=CALL_TIMEOUT_S)
        return time.perf_counter() - start, found(response, expected)

    if in_flight <= 1:
        return _timings([call(batch) for batch in batches], None)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        outcomes = list(pool.map(call, batches))
    return _timings(outcomes, time.perf_counter() - started)


def _timings(outcomes: Sequence[tuple[float, int]], wall_s: float | None) -> Timings:
    """Wall time None: one call at a time, whose wall time is the sum of the calls' (checking
    the answers between calls is left out)."""
    seconds = [s for s, _ in outcomes]
    return seconds, sum(h for _, h in outcomes), sum(seconds) if wall_s is None else wall_s


class Client:
    """The bench's handle on the client process; waits for it off the event loop, which must
    keep serving the calls the client makes meanwhile."""

    def __init__(self, setup: ClientSetup) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=client_main, args=(child_conn, setup), daemon=True)
        self._process.start()
        child_conn.close()

    async def run(self, order: Order) -> Timings:
        self._conn.send(order)
        try:
            timings: Timings = await asyncio.to_thread(self._conn.recv)
        except EOFError:
            raise RuntimeError(f"the client process died (exit {self._process.exitcode})") from None
        return timings

    def stop(self) -> None:
        if self._process.is_alive():
            with suppress(OSError):
                self._conn.send(None)
            self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        self._conn.close()


# --- the node ----------------------------------------------------------------------------------


@asynccontextmanager
async def scratch_dir() -> AsyncIterator[Path]:
    """Outside pytest's temporary root: as root, the embedded server's user must traverse every
    parent of its data directory, and pytest resets its root to 0700 when a run starts."""
    path = Path(tempfile.mkdtemp(prefix="hashex-bench-lookup-"))
    os.chmod(path, 0o711)  # traversable by the embedded server's user (as root), not listable
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def bench_database(admin_url: str | None) -> AsyncIterator[str | None]:
    """None (the embedded server), or a fresh database on the given server, dropped after: the
    bench never writes a million rows into a database someone else uses."""
    if admin_url is None:
        yield None
        return
    name = f"hashex_bench_{uuid.uuid4().hex[:12]}"
    await ensure_database(admin_url, name)
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def opened_database(config: NodeConfig) -> AsyncIterator[Database]:
    database = await open_database(config.database_location())
    try:
        yield database
    finally:
        await database.close()


@dataclass
class Node:
    """What the bench holds of the node: its registry, database and certificate authority."""

    config: NodeConfig
    database: Database
    registry: Registry
    ca: tls.NodeCa


async def serve(stack: AsyncExitStack, node: Node) -> tuple[dict[str, RunningServer], AuditCounter]:
    """The registry behind its own mutual-TLS server (`registry_mtls`) and behind the node's
    gateway (`hashex`), both with a node certificate of the node's CA, both trusting its units."""
    telemetry = setup_telemetry(service="hashex-registry", node_id=NODE_ID, env={})
    stack.callback(telemetry.shutdown)
    servicer = RegistryServicer(node.registry, default_max_distance=MAX_DISTANCE)
    identity = tls.issue_node_certificate(node.ca)
    direct = await build_server(
        listen="127.0.0.1:0",
        services=[servicer.binding()],
        tracer_provider=telemetry.tracer_provider,
        credentials=tls.server_credentials(identity, trusted_client_cas=[node.ca.certificate_pem]),
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    stack.push_async_callback(direct.stop, 0)
    node.config.peers_dir.mkdir(parents=True, exist_ok=True)
    trust = TrustStore(node.config.peers_dir, node.ca.certificate_pem, own_node_id=NODE_ID)
    gateway = await start_gateway(
        gateway_config(node.config),
        [servicer.binding()],
        audit=AuditStore(node.database),
        trust=trust,
        identity=tls.issue_node_certificate(node.ca),
        own_ca_pem=node.ca.certificate_pem,
        tracer_provider=telemetry.tracer_provider,
    )
    stack.push_async_callback(gateway.stop, 0)
    unaudited = await start_gateway(
        gateway_config(node.config),
        [servicer.binding()],
        audit=AuditStore(node.database),
        trust=trust,
        identity=tls.issue_node_certificate(node.ca),
        own_ca_pem=node.ca.certificate_pem,
        tracer_provider=telemetry.tracer_provider,
    )
    stack.push_async_callback(unaudited.stop, 0)
    skip_audit_transaction(unaudited)
    servers = {
        "registry_mtls": direct,
        "gateway_no_audit": unaudited.server,
        "hashex": gateway.server,
    }
    return servers, AuditCounter(gateway, node.database.pool)


def skip_audit_transaction(gateway: RunningGateway) -> None:
    """A diagnostic only, never a node's configuration: this gateway's recorder seals its
    records but its store writes nothing, so the variant costs everything but the database
    transaction of the audit log (`hashex` - `gateway_no_audit` is that transaction's share)."""

    async def sealed_only(entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        return seal_all(list(entries), after=None)

    gateway.audit.append = sealed_only  # type: ignore[method-assign]


def gateway_config(config: NodeConfig) -> NodeConfig:
    """The node's settings with a free loopback port and rate limits the bench never reaches;
    size limits and deadlines stay the node's defaults."""
    return replace(
        config,
        gateway_listen="127.0.0.1:0",
        rate_limit_hashes_per_s=RATE_LIMIT_PER_S,
        rate_limit_hashes_burst=RATE_LIMIT_BURST,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )


class AuditCounter:
    """Counts the audit log's append transactions (the recorder groups the records of calls that
    finish together into one), by wrapping the gateway's store; records are stored unchanged."""

    def __init__(self, gateway: RunningGateway, pool: Any) -> None:
        self.gateway = gateway
        self._pool = pool
        self.transactions = 0
        self.records = 0
        store = gateway.audit
        append = store.append

        async def counted(entries: Sequence[AuditEntry]) -> list[AuditRecord]:
            self.transactions += 1
            self.records += len(entries)
            return await append(entries)

        store.append = counted  # type: ignore[method-assign]

    async def stored(self) -> int:
        """Records in the audit log now."""
        return int(await self._pool.fetchval("SELECT count(*) FROM audit_log"))


async def load_corpus(
    registry: Registry, corpus: Corpus, batch_size: int, series_size: int
) -> dict[str, float]:
    loaded = await load(
        registry, corpus.n, lambda i: submission(corpus, i, series_size), batch_size=batch_size
    )
    return {
        "load_s": loaded.seconds,
        "per_s": loaded.per_s,
        "batch_median_ms": loaded.batch_median_ms,
        "batch_p99_ms": loaded.batch_p99_ms,
    }


async def vacuum_analyze(database: Database) -> float:
    """After a bulk load, as autovacuum would soon do: statistics for the planner, and the
    visibility map that lets exact lookups answer from the signals index alone."""
    start = time.perf_counter()
    await database.pool.execute("VACUUM (ANALYZE)")
    return round(time.perf_counter() - start, 2)


# --- measuring ---------------------------------------------------------------------------------


async def in_process(registry: Registry, batches: Sequence[Batch], in_flight: int = 1) -> Timings:
    """The reference: `Registry.lookup` and the conversion of its answer, `in_flight` batches
    at a time (tasks on the one event loop, as the server runs its calls)."""
    gate = asyncio.Semaphore(in_flight)

    async def call(batch: Batch) -> tuple[float, int]:
        async with gate:
            start = time.perf_counter()
            results = await registry.lookup(
                batch.signals, max_distance=MAX_DISTANCE, max_matches=MAX_MATCHES
            )
            response = convert.lookup_response_to_proto(results)
            return time.perf_counter() - start, found(response, batch.expected)

    if in_flight <= 1:
        return _timings([await call(batch) for batch in batches], None)
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(call(batch) for batch in batches))
    return _timings(outcomes, time.perf_counter() - started)


@dataclass
class Tally:
    """What one variant gathered over the rounds."""

    seconds: list[float] = field(default_factory=list)
    hits: int = 0
    wall_s: float = 0.0
    audit_transactions: int | None = None

    def add(self, timings: Timings) -> None:
        self.seconds += timings[0]
        self.hits += timings[1]
        self.wall_s += timings[2]


@dataclass
class Bench:
    """The running parts every measurement uses."""

    registry: Registry
    client: Client
    audit: AuditCounter
    gateway_calls: int = 0

    async def run(self, tally: Tally, order: Order) -> None:
        """One order to the client, into `tally`; through the gateway, with the audit log's
        transactions it caused."""
        transport, _, numbers, _ = order
        before = self.audit.transactions
        tally.add(await self.client.run(order))
        if transport == "hashex":
            self.gateway_calls += len(numbers)
            spent = self.audit.transactions - before
            tally.audit_transactions = (tally.audit_transactions or 0) + spent


async def measure(
    kind: str, batches: list[Batch], bench: Bench, args: argparse.Namespace
) -> dict[str, Result]:
    """Every variant on the same batches, one at a time, then `--in-flight` at a time. Variants
    take turns by round, who goes first rotating, so that drift on a shared machine spreads over
    all of them."""
    progress(f"{kind}: warming up (every batch once in process, {args.warmup} per gRPC variant)")
    await in_process(bench.registry, batches)
    for transport in TRANSPORTS[1:]:
        await bench.run(Tally(), (transport, kind, range(min(args.warmup, len(batches))), 1))
    plan = [(t, 1) for t in TRANSPORTS]
    if args.in_flight > 1:
        plan += [(t, args.in_flight) for t in TRANSPORTS]
    tallies = {step: Tally() for step in plan}
    size = -(-len(batches) // args.rounds)
    for r, first in enumerate(range(0, len(batches), size)):
        numbers = range(first, min(first + size, len(batches)))
        for transport, in_flight in plan[r % len(plan) :] + plan[: r % len(plan)]:
            tally = tallies[transport, in_flight]
            if transport == "in_process":
                selected = [batches[i] for i in numbers]
                tally.add(await in_process(bench.registry, selected, in_flight))
            else:
                await bench.run(tally, (transport, kind, numbers, in_flight))
        progress(f"{kind}: round {r + 1} done")
    planted = sum(len(b.expected) for b in batches)
    queries = len(batches[0].signals)
    return {
        variant_name(transport, kind, in_flight): summarise(tally, planted, queries)
        for (transport, in_flight), tally in tallies.items()
    }


def variant_name(transport: str, kind: str, in_flight: int) -> str:
    return f"{transport}_{kind}" + (f"_inflight{in_flight}" if in_flight > 1 else "")


def summarise(tally: Tally, planted: int, queries: int) -> Result:
    """Latency per batch; per_s is hashes over the time taken (the sum of the latencies for one
    batch at a time: the median's reciprocal would hide the slow batches)."""
    result = latency_summary(tally.seconds)
    result["per_s"] = round(queries * len(tally.seconds) / tally.wall_s, 1)
    result["recall"] = round(tally.hits / planted, 4)
    if tally.audit_transactions is not None:
        result["audit_txn_per_call"] = round(tally.audit_transactions / len(tally.seconds), 3)
    return result


def add_overheads(results: dict[str, Result]) -> None:
    """What gRPC costs over the in-process call, in % of the latter's median (target <= 30 %),
    and for `--in-flight` runs also in % of its throughput."""
    for name, result in results.items():
        transport = next(t for t in TRANSPORTS if name.startswith(t))
        if transport == "in_process":
            continue
        base = results["in_process" + name.removeprefix(transport)]
        result["overhead_pct"] = round((result["median_ms"] / base["median_ms"] - 1) * 100, 1)
        if "_inflight" in name:
            result["throughput_overhead_pct"] = round(
                (base["per_s"] / result["per_s"] - 1) * 100, 1
            )
        if transport == "hashex":  # what the gateway adds to the registry's own mTLS server
            direct = results["registry_mtls" + name.removeprefix(transport)]
            result["gateway_ms"] = round(result["median_ms"] - direct["median_ms"], 3)
            unaudited = results["gateway_no_audit" + name.removeprefix(transport)]
            result["audit_ms"] = round(result["median_ms"] - unaudited["median_ms"], 3)
            if "_inflight" in name:
                result["gateway_throughput_pct"] = round(
                    (direct["per_s"] / result["per_s"] - 1) * 100, 1
                )


def series_costs(results: dict[str, Result]) -> dict[str, float]:
    """Per transport, the median of a lookup whose hits all lie in one large series over the
    same lookup of media in no series (target <= 1.3); empty without --series-size."""
    return {
        transport: round(
            results[f"{transport}_exact_series"]["median_ms"]
            / results[f"{transport}_exact"]["median_ms"],
            3,
        )
        for transport in TRANSPORTS
        if f"{transport}_exact_series" in results
    }


async def audit_probe(audit: AuditCounter, in_flight: int, count: int) -> dict[str, float]:
    """The audit log's append alone, as the gateway makes it (`RunningGateway.record`, the same
    recorder and chain): `count` records one at a time, then `count` with `in_flight` at once."""
    entry = AuditEntry(
        at=datetime.now(UTC),
        duration_ms=0,
        caller=tls.unit_uri(NODE_ID, "bench"),
        fingerprint="0" * 64,
        role="unit",
        method="/hashex.bench/AuditProbe",
        request_messages=1,
        response_messages=1,
        request_digest=bytes(32),
        status="OK",
    )
    gate = asyncio.Semaphore(in_flight)

    async def append() -> float:
        async with gate:
            start = time.perf_counter()
            await audit.gateway.record(entry)
            return time.perf_counter() - start

    one = [await append() for _ in range(count)]
    before = audit.transactions
    started = time.perf_counter()
    many = await asyncio.gather(*(append() for _ in range(count)))
    wall_s = time.perf_counter() - started
    one_at_a_time = latency_summary(one)
    concurrent = latency_summary(many)
    return {
        "records": 2 * count,
        "median_ms": one_at_a_time["median_ms"],
        "p99_ms": one_at_a_time["p99_ms"],
        f"inflight{in_flight}_median_ms": concurrent["median_ms"],
        f"inflight{in_flight}_per_s": round(count / wall_s, 1),
        f"inflight{in_flight}_records_per_txn": round(count / (audit.transactions - before), 2),
    }


# --- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="media the node holds")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per variant")
    parser.add_argument(
        "--single-calls", type=int, default=200, help="timed one-hash calls per variant"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="hashes per lookup")
    parser.add_argument("--load-batch-size", type=int, default=1000, help="media per submit")
    parser.add_argument("--rounds", type=int, default=5, help="turns the variants take")
    parser.add_argument("--warmup", type=int, default=3, help="untimed gRPC batches first")
    parser.add_argument(
        "--in-flight", type=int, default=4, help="calls at once in the throughput runs (1: none)"
    )
    parser.add_argument(
        "--series-size", type=int, default=0, help="media 0..S-1 in one series (0: none)"
    )
    parser.add_argument("--seed", type=int, default=20261101)
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server to use (a scratch database is created on it and dropped); "
        "default: an embedded server in a temporary directory",
    )
    args = parser.parse_args(argv)
    if args.n < args.batch_size // 2 or min(args.batches, args.single_calls, args.rounds) < 1:
        parser.error("need --n >= --batch-size / 2 and --batches, --single-calls, --rounds >= 1")
    half = args.batch_size // 2
    if args.series_size and not (half <= args.series_size <= args.n - half):
        parser.error("--series-size must leave --batch-size / 2 media in and out of the series")
    return args


def make_workload(args: argparse.Namespace) -> tuple[Corpus, dict[str, list[Batch]]]:
    rng = random.Random(args.seed)
    progress(
        f"generating {args.n:,} media, {args.batches} exact and near batches, "
        f"{args.single_calls} single calls"
    )
    corpus = Corpus.random(args.n, rng)
    outside = range(args.series_size, args.n)
    batches = {
        "exact": [exact_batch(corpus, rng, args.batch_size, outside) for _ in range(args.batches)],
        "near": [near_batch(corpus, rng, args.batch_size) for _ in range(args.batches)],
        "single": [single_batch(corpus, rng) for _ in range(args.single_calls)],
    }
    if args.series_size:
        inside = range(args.series_size)
        batches["exact_series"] = [
            exact_batch(corpus, rng, args.batch_size, inside) for _ in range(args.batches)
        ]
    return corpus, batches


async def prepare_node(
    stack: AsyncExitStack, args: argparse.Namespace, corpus: Corpus
) -> tuple[Node, dict[str, float]]:
    """A registry holding the corpus, reopened after the load as a restarted node would be
    (its PDQ index then is one segment, the layout queries are fastest on)."""
    directory = await stack.enter_async_context(scratch_dir())
    url = await stack.enter_async_context(bench_database(args.database_url))
    config = NodeConfig(
        node_id=NODE_ID,
        data_dir=directory,
        database="embedded" if url is None else "external",
        database_url=url,
        database_url_source="--database-url" if url else "",
    )
    create_case_key(config.case_key_path)
    database = await stack.enter_async_context(opened_database(config))
    progress(f"database: {database.display_url}; loading {corpus.n:,} media")
    await apply_migration_plan(database.pool, NODE_MIGRATIONS)
    facts = await load_corpus(
        await open_registry(config, database), corpus, args.load_batch_size, args.series_size
    )
    progress(f"loaded: {facts}")
    facts["vacuum_analyze_s"] = await vacuum_analyze(database)
    start = time.perf_counter()
    registry = await open_registry(config, database)
    facts["index_load_s"] = round(time.perf_counter() - start, 2)
    progress(
        f"vacuum + analyze {facts['vacuum_analyze_s']} s, index load {facts['index_load_s']} s"
    )
    return Node(config, database, registry, tls.create_node_ca(node_id=NODE_ID)), facts


async def run(args: argparse.Namespace) -> tuple[dict[str, Result], dict[str, object]]:
    """Everything started here is stopped on the way out, on error, Ctrl-C or SIGTERM alike."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    corpus, batches = make_workload(args)
    async with AsyncExitStack() as stack:
        node, load_facts = await prepare_node(stack, args, corpus)
        servers, audit = await serve(stack, node)
        client = Client(
            ClientSetup(
                addresses={t: f"127.0.0.1:{s.port}" for t, s in servers.items()},
                server_ca_pem=node.ca.certificate_pem,
                unit=tls.issue_unit_certificate(node.ca, unit="bench", roles=WORKING_ROLES),
                requests={k: [(b.request, b.expected) for b in v] for k, v in batches.items()},
            )
        )
        stack.callback(client.stop)
        bench = Bench(node.registry, client, audit)
        results: dict[str, Result] = {}
        for kind, kind_batches in batches.items():
            results |= await measure(kind, kind_batches, bench, args)
        progress(
            f"audit: timing {AUDIT_PROBE_RECORDS} appends alone, then {args.in_flight} at once"
        )
        probe = await audit_probe(audit, max(1, args.in_flight), AUDIT_PROBE_RECORDS // 2)
        stored = await audit.stored()
        expected = bench.gateway_calls + int(probe["records"])
        if stored != expected or audit.records != expected:
            raise RuntimeError(
                f"the audit log holds {stored} records ({audit.records} appended) for "
                f"{expected} gateway calls and probe records"
            )
        progress(f"audit log: {stored:,} records, one per call; append alone: {probe}")
        progress("stopping")
    add_overheads(results)
    facts: dict[str, object] = {
        "series_cost": series_costs(results),
        "load": load_facts,
        "audit_append": probe,
        "audit_records_checked": stored,
    }
    return results, facts


def report(results: dict[str, Result], in_flight: int) -> None:
    """The two figures the targets are about, and the gateway's cost, on stderr for the
    reader."""
    for kind in KINDS:
        one = results[f"hashex_{kind}"]
        line = (
            f"{kind}: hashex {one['median_ms']} ms/call, {one['per_s']:,.0f} hashes/s, "
            f"overhead {one['overhead_pct']} % over in process, gateway +{one['gateway_ms']} ms "
            f"(audit transaction {one['audit_ms']} ms)"
        )
        many = results.get(variant_name("hashex", kind, in_flight))
        if many is not None and in_flight > 1:
            line += (
                f"; {in_flight} in flight: {many['per_s']:,.0f} hashes/s, "
                f"{many['throughput_overhead_pct']} % more time per hash than in process"
            )
        progress(line)
    if costs := series_costs(results):
        progress(f"one large series over none (median ratio, target <= 1.3): {costs}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results, facts = asyncio.run(run(args))
    report(results, args.in_flight)
    params: dict[str, object] = {k: v for k, v in vars(args).items() if k != "database_url"}
    params |= {
        "database": "external" if args.database_url else "embedded",
        "client": "separate process, sync grpc channel, threads for --in-flight",
        "hashex": "through start_gateway (mTLS, identity, authz, rate limit, audit record)",
        "registry_mtls": "the registry's own build_server with mTLS, no gateway",
        "gateway_no_audit": "diagnostic: the gateway with its audit store writing nothing",
        "gateway_rate_limit": {"per_s": RATE_LIMIT_PER_S, "burst": RATE_LIMIT_BURST},
        "near_reference": "in_process_near",
        "overhead_pct": "variant median / in-process median of the same kind - 1",
        "gateway_ms": "hashex median - registry_mtls median of the same kind",
        "audit_ms": "hashex median - gateway_no_audit median of the same kind",
        "targets": {"hashex_exact_per_s": 100_000, "overhead_pct": 30},
        **facts,
    }
    info = machine(grpcio=grpc.__version__, postgres_driver=f"asyncpg {asyncpg.__version__}")
    emit("lookup", params, info, results, "in_process_exact")


if __name__ == "__main__":
    main()
