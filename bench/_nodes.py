"""What benches that run whole nodes share: the `hashex` command in-process (its output kept off
stdout, which holds the JSON line), `node init` for a set of agencies, scratch directories an
embedded server's user can traverse, and a unit's channel to a node's gateway.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from services.cli.main import main as hashex_main
from services.core import tls
from services.core.caller import UnitRole
from services.core.config import NodeConfig, load_config
from services.gateway.composition import RunningNode

WORKING_ROLES: tuple[UnitRole, ...] = ("analyst", "submitter", "victim-id")


@contextlib.contextmanager
def cli_output_to_stderr() -> Iterator[None]:
    """`hashex` commands print to stdout, which a bench keeps for its JSON line."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def cli(*args: str | Path) -> None:
    with cli_output_to_stderr():
        code = hashex_main([str(a) for a in args])
    if code != 0:
        raise RuntimeError(f"hashex {' '.join(map(str, args))} exited {code}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def node_config(data_dir: Path, database_url: str | None) -> NodeConfig:
    return load_config(data_dir, env={"DATABASE_URL": database_url} if database_url else {})


def init_nodes(root: Path, node_ids: Sequence[str], *, external: bool) -> dict[str, Path]:
    """`hashex node init` for each, and their peer cards in `root` (pinned by the caller);
    `external`: their databases' URLs come as DATABASE_URL (see node_config)."""
    dirs = {}
    database = "external" if external else "embedded"
    for node_id in node_ids:
        data_dir = root / node_id
        cli(
            "node", "init", "--node-id", node_id, "--listen", "127.0.0.1:0",
            "--gateway-listen", f"127.0.0.1:{free_port()}", "--database", database,
            "--data-dir", data_dir,
        )  # fmt: skip
        cli("peer", "card", "--out", root / f"{node_id}.card", "--data-dir", data_dir)
        dirs[node_id] = data_dir
    return dirs


@asynccontextmanager
async def scratch_dir(prefix: str) -> AsyncIterator[Path]:
    """Outside pytest's temporary root, which an embedded server's user may not traverse.
    Removed once more at exit: the embedded server's exit handler, registered later (so run
    earlier), recreates its lock file in the first node's runtime directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o711)  # traversable by the embedded server's user (as root), not listable
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unit_channel(node: RunningNode, config: NodeConfig) -> grpc.aio.Channel:
    """The node's gateway, as one of its units (with every working role) would call it."""
    ca = tls.load_node_ca(
        node_id=config.node_id,
        certificate_path=config.tls_dir / "ca.pem",
        key_path=config.tls_dir / "ca.key",
    )
    identity = tls.issue_unit_certificate(ca, unit="bench", roles=WORKING_ROLES)
    credentials = tls.channel_credentials(identity, trusted_server_cas=[ca.certificate_pem])
    return grpc.aio.secure_channel(node.gateway_address, credentials)
