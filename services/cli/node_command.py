"""`hashex node init` and `hashex node up`: create a node, run it until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from services.cli import exit_codes
from services.cli.node_client import CommandFailed, add_data_dir_option, run_command
from services.core.config import (
    CONFIG_FILE,
    DEFAULT_LISTEN,
    NodeConfig,
    check_listen,
    check_node_id,
    load_config,
    write_config,
)
from services.core.logs import configure_logging
from services.core.signing import create_signing_key
from services.registry.app import start_registry
from services.registry.cases import create_case_key


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser(
        "node",
        help="create and run this agency's node",
        description="Create a node (`init`) and run it (`up`).",
    )
    node_sub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    init = node_sub.add_parser(
        "init",
        help="create a node: configuration, data directory, keys",
        description=(
            "Create a node in --data-dir: node.toml, the case-data key and the Ed25519 signing "
            "key (mode 0600). Re-running with the same node id changes nothing."
        ),
        epilog="example: hashex node init --node-id gb-nca --data-dir ~/hashex/gb-nca",
    )
    init.add_argument("--node-id", required=True, help="this agency's node id, e.g. gb-nca")
    init.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help="registry address, loopback only (default: %(default)s; port 0 picks a free one)",
    )
    add_data_dir_option(init)
    init.set_defaults(func=lambda ns: run_command(_init, ns))
    up = node_sub.add_parser(
        "up",
        help="run the node until Ctrl-C or SIGTERM",
        description=(
            "Run the registry on its loopback address with the embedded PostgreSQL in the data "
            "directory (or DATABASE_URL). Stops cleanly on Ctrl-C or SIGTERM, PostgreSQL included."
        ),
        epilog="example: hashex node up --data-dir ~/hashex/gb-nca",
    )
    add_data_dir_option(up)
    up.set_defaults(func=lambda ns: run_command(_up, ns))

    registry = sub.add_parser(
        "registry",
        help="run the registry service alone (for Kubernetes)",
        description="Run one service of the node on its own; `hashex node up` runs all of them.",
    )
    registry_sub = registry.add_subparsers(
        dest="registry_command", metavar="COMMAND", required=True
    )
    serve = registry_sub.add_parser(
        "serve",
        help="serve the registry until SIGTERM",
        description="Serve the registry of the node in --data-dir (database: DATABASE_URL, else "
        "the embedded PostgreSQL). Stops cleanly on SIGTERM.",
    )
    add_data_dir_option(serve)
    serve.set_defaults(func=lambda ns: run_command(_up, ns))


def _init(ns: argparse.Namespace) -> int:
    node_id = check_node_id(ns.node_id)
    check_listen(ns.listen, allow_non_loopback=False)
    data_dir = ns.data_dir.resolve()
    if (data_dir / CONFIG_FILE).exists():
        existing = load_config(data_dir)
        if existing.node_id != node_id:
            raise CommandFailed(
                exit_codes.BAD_INPUT,
                f"{data_dir} already holds node {existing.node_id!r}; choose another --data-dir",
            )
        print(f"node {node_id} already initialised in {data_dir}; nothing changed")
        return exit_codes.OK
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config_path = write_config(data_dir, node_id=node_id, listen=ns.listen)
    config = load_config(data_dir)
    create_case_key(config.case_key_path)
    signing = create_signing_key(config.signing_keys_dir / "ed25519_1.key")
    print(f"node {node_id} created in {data_dir}")
    print(f"  configuration: {config_path}")
    print(f"  signing key:   {signing.key_id} {signing.public_hex}")
    print(f"start it with:   hashex node up --data-dir {data_dir}")
    return exit_codes.OK


def _up(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    configure_logging(config.log_level)
    asyncio.run(_serve_until_signalled(config))
    return exit_codes.OK


async def _serve_until_signalled(config: NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    running = await start_registry(config)
    print(
        f"node {config.node_id} serving on {running.address} (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await running.stop()
        config.address_file.unlink(missing_ok=True)
