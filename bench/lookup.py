"""End-to-end lookups against a node holding N media: over gRPC with mutual TLS on loopback
(`hashex`), over plaintext gRPC (`grpc_plaintext`), and in process (`in_process`, the reference).

Each media has md5, sha1, sha256 and a PDQ hash (quality 90), loaded in process through
`Registry.submit_batch` (COPY batches of 1,000, as the store does). Exact batches ask half stored
md5/sha256 hashes and half unknown ones; near batches ask half planted near duplicates of stored
PDQ hashes (1-31 bits flipped) and half random PDQ hashes. `in_process` is `Registry.lookup` on
domain signals plus the conversion of its results to protobuf: what a gRPC call adds on top of
that (validation, serialisation, HTTP/2, TLS, interceptors, the client) is the overhead.

The gRPC client runs in its own process, as a unit's would, so client and server do not share
one interpreter lock. Every batch is first run once in process (untimed) so that every variant
finds PostgreSQL's cache equally warm; variants then take turns, a round of batches each.

    .venv/bin/python bench/lookup.py --n 100000
    .venv/bin/python bench/lookup.py            # 1,000,000 media
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from _common import Result, emit, latency_summary, machine, progress

from hashex.v1 import registry_pb2, registry_pb2_grpc
from services.core import tls
from services.core.algorithms import Algorithm, SignalValue
from services.core.config import NodeConfig
from services.core.db.pool import Database, ensure_database, open_database
from services.core.server import RunningServer, build_server
from services.core.telemetry import setup_telemetry
from services.registry import convert
from services.registry.app import open_registry
from services.registry.cases import create_case_key
from services.registry.model import MediaSubmission
from services.registry.registry import Registry
from services.registry.servicer import RegistryServicer

NODE_ID = "bench-node"
PDQ_QUALITY = 90
MAX_DISTANCE = 31
MAX_MATCHES = 100
KINDS = ("exact", "near")
TRANSPORTS = ("in_process", "grpc_plaintext", "hashex")
CALL_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Bytes of one media in the corpus: md5, sha1, sha256, pdq.
_LAYOUT = ((Algorithm.MD5, 16), (Algorithm.SHA1, 20), (Algorithm.SHA256, 32), (Algorithm.PDQ, 32))
_MEDIA_BYTES = sum(size for _, size in _LAYOUT)


# --- the workload -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """N media as one block of random bytes (100 per media), so 1M media cost 100 MB, not
    four million Python objects held for the whole run."""

    data: bytes
    n: int

    def value(self, i: int, algorithm: Algorithm) -> bytes:
        offset = i * _MEDIA_BYTES
        for candidate, size in _LAYOUT:
            if candidate == algorithm:
                return self.data[offset : offset + size]
            offset += size
        raise ValueError(algorithm)

    def submission(self, i: int) -> MediaSubmission:
        signals = tuple(
            SignalValue(a, self.value(i, a), PDQ_QUALITY if a == Algorithm.PDQ else None)
            for a, _ in _LAYOUT
        )
        return MediaSubmission(media_id=media_id(i), signals=signals)


def media_id(i: int) -> str:
    return f"bench-{i:08d}"


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


def exact_batch(corpus: Corpus, rng: random.Random, size: int) -> Batch:
    """Half stored md5/sha256 hashes of distinct media, half unknown ones, shuffled."""
    hits = rng.sample(range(corpus.n), size // 2)
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
        "grpc_plaintext": grpc.insecure_channel(setup.addresses["grpc_plaintext"], options),
        "hashex": grpc.secure_channel(setup.addresses["hashex"], credentials, options),
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
    database = await open_database(database_url=config.database_url, data_dir=config.data_dir)
    try:
        yield database
    finally:
        await database.close()


async def serve(
    stack: AsyncExitStack, registry: Registry, node_ca: tls.NodeCa
) -> dict[str, RunningServer]:
    """The registry behind two servers from the one builder: plaintext, and mutual TLS with the
    node's certificate, trusting units of its own CA."""
    telemetry = setup_telemetry(service="hashex-registry", node_id=NODE_ID, env={})
    stack.callback(telemetry.shutdown)
    identity = tls.issue_node_certificate(node_ca)
    credentials = {
        "grpc_plaintext": None,
        "hashex": tls.server_credentials(identity, trusted_client_cas=[node_ca.certificate_pem]),
    }
    servers: dict[str, RunningServer] = {}
    for transport, server_credentials in credentials.items():
        servers[transport] = await build_server(
            listen="127.0.0.1:0",
            services=[RegistryServicer(registry, default_max_distance=MAX_DISTANCE).binding()],
            tracer_provider=telemetry.tracer_provider,
            credentials=server_credentials,
            max_message_bytes=MAX_MESSAGE_BYTES,
        )
        stack.push_async_callback(servers[transport].stop, 0)
    return servers


async def load(registry: Registry, corpus: Corpus, batch_size: int) -> dict[str, float]:
    """Submit every media in batches; the wall time includes building the submissions."""
    seconds: list[float] = []
    started = time.perf_counter()
    step = max(1, corpus.n // 10)
    for first in range(0, corpus.n, batch_size):
        batch = [corpus.submission(i) for i in range(first, min(first + batch_size, corpus.n))]
        start = time.perf_counter()
        counts = await registry.submit_batch(batch)
        seconds.append(time.perf_counter() - start)
        if counts.created != len(batch):
            raise RuntimeError(f"batch at {first} created {counts.created} of {len(batch)} media")
        if (first + len(batch)) // step != first // step:
            progress(f"loaded {first + len(batch):,} media")
    total = time.perf_counter() - started
    summary = latency_summary(seconds)
    return {
        "load_s": round(total, 2),
        "per_s": round(corpus.n / total, 1),
        "batch_median_ms": summary["median_ms"],
        "batch_p99_ms": summary["p99_ms"],
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
            response = registry_pb2.LookupResponse(
                results=[convert.lookup_result_to_proto(r) for r in results]
            )
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

    def add(self, timings: Timings) -> None:
        self.seconds += timings[0]
        self.hits += timings[1]
        self.wall_s += timings[2]


async def measure(
    kind: str, batches: list[Batch], registry: Registry, client: Client, args: argparse.Namespace
) -> dict[str, Result]:
    """Every variant on the same batches, one at a time, then `--in-flight` at a time (in
    process and `hashex` only). Variants take turns by round, who goes first rotating, so that
    drift on a shared machine spreads over all of them."""
    progress(f"{kind}: warming up (every batch once in process, {args.warmup} per gRPC variant)")
    await in_process(registry, batches)
    for transport in TRANSPORTS[1:]:
        await client.run((transport, kind, range(min(args.warmup, len(batches))), 1))
    plan = [(t, 1) for t in TRANSPORTS]
    if args.in_flight > 1:
        plan += [("in_process", args.in_flight), ("hashex", args.in_flight)]
    tallies = {step: Tally() for step in plan}
    size = -(-len(batches) // args.rounds)
    for r, first in enumerate(range(0, len(batches), size)):
        numbers = range(first, min(first + size, len(batches)))
        for transport, in_flight in plan[r % len(plan) :] + plan[: r % len(plan)]:
            if transport == "in_process":
                timings = await in_process(registry, [batches[i] for i in numbers], in_flight)
            else:
                timings = await client.run((transport, kind, numbers, in_flight))
            tallies[transport, in_flight].add(timings)
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


# --- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="media the node holds")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per variant")
    parser.add_argument("--batch-size", type=int, default=1000, help="hashes per lookup")
    parser.add_argument("--load-batch-size", type=int, default=1000, help="media per submit")
    parser.add_argument("--rounds", type=int, default=5, help="turns the variants take")
    parser.add_argument("--warmup", type=int, default=3, help="untimed gRPC batches first")
    parser.add_argument(
        "--in-flight", type=int, default=4, help="calls at once in the throughput runs (1: none)"
    )
    parser.add_argument("--seed", type=int, default=20261101)
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server to use (a scratch database is created on it and dropped); "
        "default: an embedded server in a temporary directory",
    )
    args = parser.parse_args(argv)
    if args.n < args.batch_size // 2 or args.batches < 1 or args.rounds < 1:
        parser.error("need --n >= --batch-size / 2, --batches >= 1 and --rounds >= 1")
    return args


def make_workload(args: argparse.Namespace) -> tuple[Corpus, dict[str, list[Batch]]]:
    rng = random.Random(args.seed)
    progress(f"generating {args.n:,} media and {args.batches} batches of each kind")
    corpus = Corpus(rng.randbytes(args.n * _MEDIA_BYTES), args.n)
    batches = {
        "exact": [exact_batch(corpus, rng, args.batch_size) for _ in range(args.batches)],
        "near": [near_batch(corpus, rng, args.batch_size) for _ in range(args.batches)],
    }
    return corpus, batches


async def prepare_node(
    stack: AsyncExitStack, args: argparse.Namespace, corpus: Corpus
) -> tuple[Registry, dict[str, float]]:
    """A registry holding the corpus, reopened after the load as a restarted node would be
    (its PDQ index then is one segment, the layout queries are fastest on)."""
    directory = await stack.enter_async_context(scratch_dir())
    url = await stack.enter_async_context(bench_database(args.database_url))
    config = NodeConfig(node_id=NODE_ID, data_dir=directory, database_url=url)
    create_case_key(config.case_key_path)
    database = await stack.enter_async_context(opened_database(config))
    progress(f"database: {database.display_url}; loading {corpus.n:,} media")
    facts = await load(await open_registry(config, database), corpus, args.load_batch_size)
    progress(f"loaded: {facts}")
    facts["vacuum_analyze_s"] = await vacuum_analyze(database)
    start = time.perf_counter()
    registry = await open_registry(config, database)
    facts["index_load_s"] = round(time.perf_counter() - start, 2)
    progress(
        f"vacuum + analyze {facts['vacuum_analyze_s']} s, index load {facts['index_load_s']} s"
    )
    return registry, facts


async def run(args: argparse.Namespace) -> tuple[dict[str, Result], dict[str, float]]:
    """Everything started here is stopped on the way out, on error, Ctrl-C or SIGTERM alike."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    corpus, batches = make_workload(args)
    async with AsyncExitStack() as stack:
        registry, load_facts = await prepare_node(stack, args, corpus)
        node_ca = tls.create_node_ca(node_id=NODE_ID)
        servers = await serve(stack, registry, node_ca)
        client = Client(
            ClientSetup(
                addresses={t: f"127.0.0.1:{s.port}" for t, s in servers.items()},
                server_ca_pem=node_ca.certificate_pem,
                unit=tls.issue_unit_certificate(node_ca, unit="bench"),
                requests={k: [(b.request, b.expected) for b in v] for k, v in batches.items()},
            )
        )
        stack.callback(client.stop)
        results: dict[str, Result] = {}
        for kind in KINDS:
            results |= await measure(kind, batches[kind], registry, client, args)
        progress("stopping")
    add_overheads(results)
    return results, load_facts


def report(results: dict[str, Result], in_flight: int) -> None:
    """The two figures the targets are about, on stderr for the reader."""
    for kind in KINDS:
        one = results[f"hashex_{kind}"]
        line = (
            f"{kind}: hashex {one['median_ms']} ms/batch, {one['per_s']:,.0f} hashes/s, "
            f"gRPC+TLS overhead {one['overhead_pct']} % over in process"
        )
        many = results.get(variant_name("hashex", kind, in_flight))
        if many is not None and in_flight > 1:
            line += (
                f"; {in_flight} in flight: {many['per_s']:,.0f} hashes/s, "
                f"{many['throughput_overhead_pct']} % more time per hash than in process"
            )
        progress(line)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results, load_facts = asyncio.run(run(args))
    report(results, args.in_flight)
    params: dict[str, object] = {k: v for k, v in vars(args).items() if k != "database_url"}
    params |= {
        "database": "external" if args.database_url else "embedded",
        "client": "separate process, sync grpc channel, threads for --in-flight",
        "near_reference": "in_process_near",
        "overhead_pct": "variant median / in-process median of the same kind - 1",
        "targets": {"hashex_exact_per_s": 100_000, "overhead_pct": 30},
        "load": load_facts,
    }
    info = machine(grpcio=grpc.__version__, postgres_driver=f"asyncpg {asyncpg.__version__}")
    emit("lookup", params, info, results, "in_process_exact")


if __name__ == "__main__":
    main()
