"""Federation under faults: a receiver killed hard in the middle of a batch, a peer down for a
while, a node restarted with its own PostgreSQL, and a connection cut by a proxy in the middle of
a Pull stream. Each test ends with every node converged, each holding exactly what every origin
submitted, once, and with its cursor at the origin's last seq: a batch is applied with its cursor
advance in one transaction, so an interruption anywhere loses and repeats nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hashex.v1 import federation_pb2, registry_pb2
from services.core.peer_card import make_card
from services.core.signing import Keyring
from services.core.trust import pin_card
from tests.federation.harness import Agency, Federation, federation, postgres_processes
from tests.registry.node_harness import md5, pdq, submission
from tests.waiting import wait_for

SUBMIT_BATCH = 1_000
DUPLICATES = "SELECT count(*) - count(DISTINCT (origin, media_id)) FROM media"
STEP_TIMEOUT_S = 30.0


def media_set(prefix: str, count: int, *, seed: int) -> list[registry_pb2.MediaSubmission]:
    rng = random.Random(seed)
    return [
        submission(f"{prefix}-{i:05d}", md5(rng.randbytes(16)), pdq(rng.randbytes(32)))
        for i in range(count)
    ]


def ids(media: Iterable[registry_pb2.MediaSubmission]) -> set[str]:
    return {m.media_id for m in media}


async def submit_all(agency: Agency, media: list[registry_pb2.MediaSubmission]) -> None:
    """Through the node's registry, SUBMIT_BATCH media per request."""
    requests = [
        registry_pb2.SubmitMediaRequest(media=media[i : i + SUBMIT_BATCH])
        for i in range(0, len(media), SUBMIT_BATCH)
    ]
    await agency.registry().SubmitMedia(iter(requests), timeout=120)


async def peer_status(agency: Agency, peer_id: str) -> federation_pb2.PeerSyncStatus:
    (peer,) = [p for p in (await agency.status()).peers if p.peer_id == peer_id]
    return peer


async def assert_nothing_lost(fed: Federation, expected: dict[str, set[str]]) -> None:
    """Every running node holds exactly `expected[origin]` of each origin, each record once, and
    its cursor for each peer is that peer's last seq."""
    up = [a for a in fed.agencies.values() if a.is_up]
    heads = {a.node_id: (await a.status()).local_last_seq for a in up}
    for agency in up:
        for origin, media_ids in expected.items():
            assert await agency.media_ids(origin) == media_ids, (agency.node_id, origin)
        assert await agency.row_count(DUPLICATES) == 0, agency.node_id
        cursors = {p.peer_id: p.cursor_seq for p in (await agency.status()).peers}
        assert cursors == {p: h for p, h in heads.items() if p != agency.node_id}, agency.node_id


async def test_a_pull_killed_mid_batch_resumes_without_loss(pg_server: Any, tmp_path: Path) -> None:
    """The receiver runs as its own process and is SIGKILLed while applying a batch, with
    thousands of the origin's entries still to come. Batches apply in tens of milliseconds, so
    the kill is timed by the test holding a lock on the receiver's media table: the batch's
    transaction (cursor row locked, rows staged) waits on it, and the test waits until it does."""
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server, start=False) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        first, rest = media_set("gb", 1 * SUBMIT_BATCH, seed=1), media_set("gb-r", 4_000, seed=2)
        await gb.start()
        await submit_all(gb, first)
        await us.start_process()
        await fed.converged()
        applied_before = (await peer_status(us, "gb-nca")).cursor_seq
        assert us.database_url is not None
        blocker = await asyncpg.connect(us.database_url)
        try:
            holder = await blocker.execute("BEGIN; LOCK TABLE media IN SHARE MODE")
            assert holder == "LOCK TABLE"
            await submit_all(gb, rest)
            head = (await gb.status()).local_last_seq

            async def batch_waits_on_the_lock() -> bool:
                # pg_locks, not pg_stat_activity: that one is a snapshot frozen for the
                # blocker's whole transaction.
                waiting: int = await blocker.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted "
                    "AND $1 = ANY(pg_blocking_pids(pid))",
                    blocker.get_server_pid(),
                )
                return waiting > 0

            await wait_for(batch_waits_on_the_lock, STEP_TIMEOUT_S, "no batch reached the lock")
            mid_pull = await peer_status(us, "gb-nca")
            assert 0 < mid_pull.cursor_seq == applied_before < head
            await us.kill()
        finally:
            await blocker.close()  # rolls the lock back; the killed batch can never commit
        (cursor,) = await us.fetch("SELECT cursor_seq FROM sync_cursors WHERE peer_id = 'gb-nca'")
        assert cursor["cursor_seq"] == applied_before
        assert await us.media_ids("gb-nca") == ids(first)

        await us.start_process()
        await fed.converged()
        await assert_nothing_lost(fed, {"gb-nca": ids(first) | ids(rest), "us-hsi": set()})


async def test_a_peer_down_for_a_while_is_caught_up_when_back(
    pg_server: Any, tmp_path: Path
) -> None:
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        before, during, after = (media_set(p, 300, seed=s) for s, p in enumerate("bda"))
        await gb.submit(*before)
        await fed.converged()

        await gb.stop()
        puller = us.running.sync.pullers["gb-nca"]

        async def failing_repeatedly() -> bool:
            return puller.state.failures >= 3 and bool((await peer_status(us, "gb-nca")).last_error)

        await wait_for(failing_repeatedly, STEP_TIMEOUT_S, "the receiver did not report gb down")
        await us.submit(*during)

        await gb.start()  # same data directory, same database
        await gb.submit(*after)
        await fed.converged()
        await assert_nothing_lost(fed, {"gb-nca": ids(before) | ids(after), "us-hsi": ids(during)})
        assert not (await peer_status(us, "gb-nca")).last_error


async def test_a_node_restarted_with_its_embedded_postgres(
    pg_server: Any, node_data_dir: Path
) -> None:
    async with federation(
        ["gb-nca", "us-hsi"], node_data_dir, pg_server, embedded=["gb-nca"]
    ) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        pgdata = gb.data_dir / "pg"
        gb_first, us_first = media_set("gb", 200, seed=1), media_set("us", 200, seed=2)
        gb_then, us_then = media_set("gb-2", 200, seed=3), media_set("us-2", 200, seed=4)
        await gb.submit(*gb_first)
        await us.submit(*us_first)
        await fed.converged()
        assert postgres_processes(pgdata)

        await gb.stop()
        assert not postgres_processes(pgdata), "the embedded PostgreSQL outlived its node"
        await gb.start()
        assert postgres_processes(pgdata)
        await gb.submit(*gb_then)
        await us.submit(*us_then)
        await fed.converged()
        await assert_nothing_lost(
            fed,
            {"gb-nca": ids(gb_first) | ids(gb_then), "us-hsi": ids(us_first) | ids(us_then)},
        )
    assert not postgres_processes(pgdata)


class CuttingProxy:
    """A TCP proxy to `target` (TLS passes through untouched) that cuts the first connection
    carrying more than `cut_after_bytes` from the server: it forwards exactly that much, then
    closes both sides. Later connections are forwarded whole."""

    def __init__(self, target: str, *, cut_after_bytes: int) -> None:
        self._host, _, port = target.rpartition(":")
        self._port = int(port)
        self._cut_after_bytes = cut_after_bytes
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.cuts = 0
        self.bytes_after_cut = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, client_in: asyncio.StreamReader, client_out: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        server_out: Any = None
        try:
            server_in, server_out = await asyncio.open_connection(self._host, self._port)
            await asyncio.gather(
                self._pump(client_in, server_out, downstream=False),
                self._pump(server_in, client_out, downstream=True),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            for writer in (client_out, server_out):
                if writer is not None:
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: Any, *, downstream: bool) -> None:
        """Copy until EOF (then close the writer, ending the other direction too) or the cut."""
        forwarded = 0
        try:
            while data := await reader.read(16 * 1024):
                if downstream and self.cuts == 0:
                    room = self._cut_after_bytes - forwarded
                    if len(data) >= room:
                        writer.write(data[:room])
                        await writer.drain()
                        self.cuts += 1
                        return
                elif downstream:
                    self.bytes_after_cut += len(data)
                forwarded += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_a_connection_cut_mid_stream_by_a_proxy(
    pg_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first batch of the receiver's first Pull is ~150 KB: the cut falls inside it."""
    caplog.set_level(logging.WARNING, logger="services.sync.puller")
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server, start=False) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        bulk = media_set("gb", 3 * SUBMIT_BATCH, seed=1)
        await gb.start()
        await submit_all(gb, bulk)
        proxy = CuttingProxy(gb.running.gateway_address, cut_after_bytes=48 * 1024)
        try:
            endpoint = await proxy.start()
            card = make_card(
                node_id=gb.node_id,
                endpoint=endpoint,
                ca_certificate_pem=(gb.config.tls_dir / "ca.pem").read_bytes(),
                keyring=Keyring.load(gb.config.signing_keys_dir),
            )
            pinned = pin_card(us.config.peers_dir, card, own_node_id=us.node_id, replace=True)
            assert pinned.outcome == "replaced"
            await us.start()
            await fed.converged()
            assert proxy.cuts == 1
            failures = [r.getMessage() for r in caplog.records if "from gb-nca" in r.getMessage()]
            assert any("UNAVAILABLE" in f for f in failures), failures  # the cut broke a pull
            # The log came after the cut, over a new connection through the proxy.
            assert proxy.bytes_after_cut > 48 * 1024
            assert (await peer_status(us, "gb-nca")).endpoint == endpoint
            await assert_nothing_lost(fed, {"gb-nca": ids(bulk), "us-hsi": set()})
        finally:
            await us.stop()
            await proxy.close()
