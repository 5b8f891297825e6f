"""Whole nodes federated on loopback for tests: each agency is created with the real `hashex node
init`, exchanges signed peer cards with `hashex peer card` / `peer add`, and runs as a real node
(registry, sync, gateway on mutual TLS) on its own database of the session's PostgreSQL.

Nodes pull fast here (short interval and backoff, small batches) so that tests converge in
seconds; `converged` polls the nodes' own sync status with a deadline, never a fixed sleep.
A node runs in the test's process (`Agency.start`) or as its own `hashex node up` process
(`Agency.start_process`), for tests that must kill it hard.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil

from hashex.v1 import (
    federation_pb2,
    federation_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.cli.main import main as hashex_main
from services.core import tls
from services.core.caller import UnitRole
from services.core.clock import SYSTEM_CLOCK, Clock
from services.core.config import NodeConfig, load_config
from services.gateway.admin_socket import socket_target
from services.gateway.composition import RunningNode, start_node
from services.sync.policy import SharingPolicy, save_policy
from tests.signed_caller import WORKING_ROLES
from tests.waiting import wait_for

CONVERGE_TIMEOUT_S = 60.0
FAST_SYNC = (
    "pull_interval_s = 0.1\npull_backoff_max_s = 0.5\nshutdown_grace_s = 1.0\n"
    "pull_keepalive_s = 0.2\n"
)
PROCESS_START_TIMEOUT_S = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli(*args: str | Path) -> None:
    code = hashex_main([str(a) for a in args])
    assert code == 0, f"hashex {' '.join(map(str, args))} exited {code}"


@dataclass
class Agency:
    node_id: str
    data_dir: Path
    # None: the embedded PostgreSQL in the data directory.
    database_url: str | None
    node: RunningNode | None = None
    process: NodeProcess | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # What an in-process node's replication timers run on.
    clock: Clock = SYSTEM_CLOCK

    @property
    def config(self) -> NodeConfig:
        env = {"DATABASE_URL": self.database_url} if self.database_url else {}
        return load_config(self.data_dir, env=env)

    @property
    def running(self) -> RunningNode:
        assert self.node is not None, f"{self.node_id} is not running"
        return self.node

    @property
    def is_up(self) -> bool:
        return self.node is not None or self.process is not None

    @property
    def address(self) -> str:
        """The loopback port of the node, in this process or its own."""
        if self.process is not None:
            return self.process.address
        return self.running.address

    async def start(self) -> None:
        self.node = await start_node(self.config, clock=self.clock)

    async def start_process(self) -> None:
        """Run the node as `hashex node up` in a process of its own; returns once it serves."""
        assert not self.is_up, f"{self.node_id} is already running"
        self.process = NodeProcess(self.data_dir, self.database_url)
        await self.process.serving()

    async def kill(self) -> None:
        """SIGKILL the node's process: nothing of it gets to clean up."""
        await self._close_channels()
        if self.process is not None:
            process, self.process = self.process, None
            await process.stop(signal.SIGKILL)

    async def stop(self) -> None:
        await self._close_channels()
        if self.node is not None:
            node, self.node = self.node, None
            await node.stop()
        if self.process is not None:
            process, self.process = self.process, None
            await process.stop(signal.SIGTERM)

    async def _close_channels(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels.clear()

    def local_channel(self) -> grpc.aio.Channel:
        """The node's admin socket (the operator's own commands)."""
        channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        return channel

    def registry(self) -> registry_pb2_grpc.RegistryStub:
        return registry_pb2_grpc.RegistryStub(self.local_channel())

    def admin(self) -> federation_pb2_grpc.AdminStub:
        return federation_pb2_grpc.AdminStub(self.local_channel())

    def unit_channel(
        self, unit: str = "alice", roles: Sequence[UnitRole] = WORKING_ROLES
    ) -> grpc.aio.Channel:
        """The gateway, over mutual TLS, as a unit of this node with `roles`."""
        config = self.config
        ca = tls.load_node_ca(
            node_id=self.node_id,
            certificate_path=config.tls_dir / "ca.pem",
            key_path=config.tls_dir / "ca.key",
        )
        identity = tls.issue_unit_certificate(ca, unit=unit, roles=roles)
        credentials = tls.channel_credentials(identity, trusted_server_cas=[ca.certificate_pem])
        channel = grpc.aio.secure_channel(self.running.gateway_address, credentials)
        self.channels.append(channel)
        return channel

    def set_policy(self, peer_id: str, policy: SharingPolicy) -> None:
        save_policy(self.config.policy_dir, peer_id, policy)

    async def submit(self, *media: registry_pb2.MediaSubmission) -> None:
        request = registry_pb2.SubmitMediaRequest(media=list(media))
        await self.registry().SubmitMedia(iter([request]))

    async def media_ids(self, origin: str) -> set[str]:
        """Media of `origin` this node holds that lookups can find."""
        rows = await self.fetch(
            "SELECT media_id FROM media WHERE origin = $1 AND retracted_at IS NULL", origin
        )
        return {r["media_id"] for r in rows}

    async def algorithms_of(self, origin: str, media_id: str) -> set[int]:
        rows = await self.fetch(
            "SELECT s.algorithm FROM signals s JOIN media m ON m.id = s.media_row "
            "WHERE m.origin = $1 AND m.media_id = $2",
            origin,
            media_id,
        )
        return {r["algorithm"] for r in rows}

    async def victims_of(self, origin: str, series_id: str) -> list[tuple[str, int, str]]:
        rows = await self.fetch(
            "SELECT v.victim_id, v.status, v.responsible_desk FROM victims v "
            "JOIN series s ON s.id = v.series_row WHERE s.origin = $1 AND s.series_id = $2 "
            "ORDER BY v.victim_id",
            origin,
            series_id,
        )
        return [(r["victim_id"], r["status"], r["responsible_desk"]) for r in rows]

    async def row_count(self, sql: str, *args: Any) -> int:
        rows = await self.fetch(sql, *args)
        value: int = rows[0][0]
        return value

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of the node's database: through its pool when it runs here, else directly (a
        node in its own process, or one that is stopped, on the session's server)."""
        if self.node is not None:
            rows: list[Any] = await self.node.database.pool.fetch(sql, *args)
            return rows
        assert self.database_url, f"{self.node_id}'s embedded PostgreSQL runs only with the node"
        connection = await asyncpg.connect(self.database_url)
        try:
            rows = await connection.fetch(sql, *args)
            return rows
        finally:
            await connection.close()

    async def status(self) -> federation_pb2.GetSyncStatusResponse:
        response: federation_pb2.GetSyncStatusResponse = await self.admin().GetSyncStatus(
            federation_pb2.GetSyncStatusRequest(), timeout=10
        )
        return response


@dataclass
class Federation:
    agencies: dict[str, Agency]
    root: Path

    def __getitem__(self, node_id: str) -> Agency:
        return self.agencies[node_id]

    async def converged(self, timeout_s: float = CONVERGE_TIMEOUT_S) -> None:
        """Until every running node has applied everything every running peer logged."""
        await wait_for(self._is_converged, timeout_s, "nodes did not converge")

    async def _is_converged(self) -> bool:
        running = [a for a in self.agencies.values() if a.is_up]
        heads = {a.node_id: (await a.status()).local_last_seq for a in running}
        for agency in running:
            status = await agency.status()
            cursors = {p.peer_id: p for p in status.peers}
            for peer_id, head in heads.items():
                if peer_id == agency.node_id:
                    continue
                peer = cursors.get(peer_id)
                if peer is None or peer.peer_last_seq < head or peer.lag:
                    return False
                if not peer.HasField("last_success_at") or peer.last_error:
                    return False
        return True


class NodeProcess:
    """`hashex node up` in a process of its own, on the database the agency's in-process node
    would use; its output goes to a log file (an unread pipe would block it once full)."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        if database_url:
            env["DATABASE_URL"] = database_url
        self.log_path = data_dir / "run" / f"node-{time.monotonic_ns()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.address = ""
        self._data_dir = data_dir
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "node", "up", "--data-dir", data_dir],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=REPO_ROOT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def serving(self) -> None:
        """Wait until the node announces it serves; its address is then its admin socket. The
        announcement is the command's own line, printed after the address files are written
        (the gateway logs its own "serving on" before they are)."""

        async def announced() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the node exited before serving:\n{self.log}")
            return "Ctrl-C to stop" in self.log

        try:
            await wait_for(announced, PROCESS_START_TIMEOUT_S, "the node did not start serving")
        except BaseException:
            await self.stop(signal.SIGKILL)
            raise
        self.address = socket_target(self._data_dir / "run" / "admin.sock")

    async def stop(self, signum: int) -> int:
        """Send `signum` and reap the process (killing it if it will not go within 30 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return await asyncio.to_thread(self.process.wait, 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return await asyncio.to_thread(self.process.wait, 10)


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """The postgres processes serving the data directory `pgdata` (an embedded server)."""
    where = str(pgdata.resolve())
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and where in " ".join(cmdline):
            found.append(process)
    return found


def init_agency(
    data_dir: Path, node_id: str, *, extra_config: str = FAST_SYNC, database: str = "external"
) -> None:
    """`hashex node init` for an agency whose database is `database` (external: its URL comes
    from DATABASE_URL, as the Agency gives it)."""
    cli(
        "node", "init", "--node-id", node_id, "--listen", "127.0.0.1:0",
        "--gateway-listen", f"127.0.0.1:{free_port()}", "--database", database,
        "--data-dir", data_dir,
    )  # fmt: skip
    with (data_dir / "node.toml").open("a", encoding="utf-8") as config:
        config.write(extra_config)


def pin_each_other(agencies: Sequence[Agency], root: Path) -> None:
    for agency in agencies:
        cli("peer", "card", "--out", root / f"{agency.node_id}.card", "--data-dir", agency.data_dir)
    for agency in agencies:
        for other in agencies:
            if other is not agency:
                cli(
                    "peer", "add", root / f"{other.node_id}.card", "--policy", "share-all",
                    "--data-dir", agency.data_dir,
                )  # fmt: skip


@asynccontextmanager
async def federation(
    node_ids: Sequence[str],
    root: Path,
    pg: Any,
    *,
    embedded: Sequence[str] = (),
    start: bool = True,
    sync_config: str = FAST_SYNC,
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[Federation]:
    """Agencies `node_ids`, pinned to each other with the default policy, started unless
    `start` is False. Those in `embedded` run their own PostgreSQL in their data directory
    (`root` must then be outside pytest's tmp_path: see tests/conftest.py). `sync_config` is
    appended to each node.toml; `clock` times the in-process nodes' replication."""
    databases: list[str] = []
    agencies: dict[str, Agency] = {}
    for node_id in node_ids:
        url = None
        if node_id not in embedded:
            name = await pg.create_database()
            databases.append(name)
            url = pg.url_of(name)
        data_dir = root / node_id
        database = "embedded" if url is None else "external"
        init_agency(data_dir, node_id, extra_config=sync_config, database=database)
        agencies[node_id] = Agency(node_id, data_dir, url, clock=clock)
    pin_each_other(list(agencies.values()), root)
    fed = Federation(agencies, root)
    try:
        if start:
            for agency in agencies.values():
                await agency.start()
        yield fed
    finally:
        for agency in agencies.values():
            with suppress(Exception):
                await agency.stop()
        for name in databases:
            await pg.drop_database(name)
