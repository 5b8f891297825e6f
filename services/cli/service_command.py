"""`hashex sync run` and `hashex gateway serve`: the node's services run apart (Kubernetes), next
to `hashex registry serve`. `hashex node up` runs the same three in one process.

    registry serve   Registry on `listen` (internal, plaintext)
    sync run         Federation, Admin and Units on --listen (internal, plaintext), pullers
                     (services/sync/standalone.py)
    gateway serve    the node's public port (mutual TLS); forwards Registry to --registry and
                     Units, Federation, Admin to --sync as raw bytes, the verified caller in
                     MAC'd headers (services/gateway/standalone.py)

All three open the same database, the node's external one (`hashex node init --database
external`; its URL from DATABASE_URL or keys/database-url): the embedded PostgreSQL belongs to
one process, `hashex node up`. They share keys/internal.key.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.cli import exit_codes
from services.cli.node_client import add_data_dir_option, run_command
from services.cli.node_command import stop_on_signal, until_stopped
from services.core.config import NodeConfig, load_config
from services.core.logs import configure_logging
from services.gateway.standalone import RunningGatewayService, start_gateway_service
from services.sync.standalone import DEFAULT_SYNC_LISTEN, RunningSyncService, start_sync_service


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sync_sub = _subcommands(sub, "sync", "replication from peers")
    run = sync_sub.add_parser(
        "run",
        help="run the sync service alone until SIGTERM (for Kubernetes)",
        description=(
            "Run the node's sync service on its own: pull from every pinned peer, and serve "
            "Federation, Admin and Units on an internal plaintext port (loopback unless "
            "allow_plaintext_non_loopback = true) for `hashex gateway serve` to forward to. "
            "Database: the node's (node.toml chooses it). Needs keys/internal.key (shared with "
            "the gateway)."
        ),
        epilog="example: hashex sync run --data-dir /data --registry registry:7700",
    )
    add_data_dir_option(run)
    run.add_argument("--listen", default=DEFAULT_SYNC_LISTEN, help="default: %(default)s")
    run.add_argument(
        "--registry", required=True, metavar="HOST:PORT", help="the registry service's address"
    )
    run.set_defaults(func=lambda ns: run_command(_run_sync, ns))
    gateway_sub = _subcommands(sub, "gateway", "the node's public port")
    serve = gateway_sub.add_parser(
        "serve",
        help="run the gateway alone until SIGTERM (for Kubernetes)",
        description=(
            "Run the node's gateway on its own (mutual TLS on gateway_listen), forwarding "
            "Registry to --registry and Units, Federation and Admin to --sync. Database (for "
            "the audit log): the node's (node.toml chooses it). Needs keys/internal.key (shared "
            "with sync)."
        ),
        epilog="example: hashex gateway serve --data-dir /data --registry registry:7700 "
        "--sync sync:7701",
    )
    add_data_dir_option(serve)
    serve.add_argument("--registry", required=True, metavar="HOST:PORT")
    serve.add_argument("--sync", required=True, metavar="HOST:PORT")
    serve.set_defaults(func=lambda ns: run_command(_serve_gateway, ns))


def _subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The subcommands of `hashex NAME`, joining those another module registered under it."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help_text)
        return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError(f"`hashex {name}` has no subcommands to join")


def _run_sync(ns: argparse.Namespace) -> int:
    config = _config(ns)

    async def serve() -> None:
        stop = stop_on_signal()
        running = await start_sync_service(config, registry_address=ns.registry, listen=ns.listen)
        await _until(stop, f"sync of {config.node_id} serving on {running.address}", running)

    asyncio.run(serve())
    return exit_codes.OK


def _serve_gateway(ns: argparse.Namespace) -> int:
    config = _config(ns)

    async def serve() -> None:
        stop = stop_on_signal()
        running = await start_gateway_service(
            config, registry_address=ns.registry, sync_address=ns.sync
        )
        banner = f"gateway of {config.node_id} serving on {running.address} (mutual TLS)"
        await _until(stop, banner, running)

    asyncio.run(serve())
    return exit_codes.OK


def _config(ns: argparse.Namespace) -> NodeConfig:
    config = load_config(ns.data_dir.resolve())
    configure_logging(config.log_level)
    return config


async def _until(
    stop: asyncio.Event, banner: str, running: RunningSyncService | RunningGatewayService
) -> None:
    print(f"{banner} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        await until_stopped(stop, running.database)
    finally:
        await running.stop()
