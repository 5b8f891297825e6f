"""`hashex node init` and `hashex node up`: create a node, run it until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli import exit_codes, node_status
from services.cli.node_client import CommandFailed, add_data_dir_option, run_command
from services.cli.node_material import (
    check_host,
    ensure_node_material,
    node_cert_paths,
    renew_node_certificate,
)
from services.core.config import (
    CONFIG_FILE,
    DEFAULT_GATEWAY_LISTEN,
    DEFAULT_LISTEN,
    NodeConfig,
    check_listen,
    check_node_id,
    load_config,
    write_config,
)
from services.core.db.location import DATABASE_URL_FILE, EMBEDDED, EXTERNAL
from services.core.db.pool import Database, mask_database_url
from services.core.logs import configure_logging
from services.core.secretfile import read_secret, write_secret
from services.core.signing import revoke, rotate
from services.core.trust import check_endpoint
from services.gateway.composition import start_node
from services.registry.app import start_registry


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
            "Create a node in --data-dir: node.toml, the case-data key, the Ed25519 signing key, "
            "the node CA (tls/ca.pem) and the node's gateway certificate (tls/node.pem); keys "
            "are mode 0600. Re-running with the same node id creates only what is missing (and "
            "renews the node certificate when it is near expiry or expired, or lacks a "
            "--gateway-host; `hashex node renew-cert` renews it at any time)."
        ),
        epilog="example: hashex node init --node-id gb-nca --data-dir ~/hashex/gb-nca",
    )
    init.add_argument("--node-id", required=True, help="this agency's node id, e.g. gb-nca")
    init.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help="the registry's internal address when it runs apart (`hashex registry serve`; "
        "default: %(default)s; port 0 picks a free one). `node up` serves its own commands on "
        "the admin socket run/admin.sock instead",
    )
    init.add_argument(
        "--gateway-listen",
        default=DEFAULT_GATEWAY_LISTEN,
        help="gateway address (mutual TLS; default: %(default)s)",
    )
    init.add_argument(
        "--gateway-endpoint",
        metavar="HOST:PORT",
        default="",
        help="the address peers and units dial, written into the peer card (default: the "
        "gateway listen address); its host is added to the gateway certificate",
    )
    init.add_argument(
        "--gateway-host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="another DNS name or IP address for the gateway certificate (repeatable)",
    )
    init.add_argument(
        "--database",
        choices=[EMBEDDED, EXTERNAL],
        default=None,
        help="where the node's database lives, chosen once: embedded (default: a PostgreSQL "
        "in the data directory, started by the node) or external (your server; its URL from "
        "DATABASE_URL or keys/database-url)",
    )
    init.add_argument(
        "--database-url-file",
        metavar="PATH",
        type=Path,
        help="with --database external: copy the database URL (it may hold the password) from "
        "PATH, or stdin for -, into keys/database-url (mode 0600)",
    )
    add_data_dir_option(init)
    init.set_defaults(func=lambda ns: run_command(_init, ns))
    rotate_key = node_sub.add_parser(
        "rotate-key",
        help="add a new signing key version",
        description=(
            "Create the next Ed25519 signing key (ed25519:<n+1>), which signs from now on and "
            "retires the previous one (still valid for what it signed). The rotation is signed "
            "by the previous key at once and recorded in keys/signing/history.json; the node "
            "publishes it to its peers in its change log. The old key file may be deleted "
            "afterwards: new peers verify the whole history from the card."
        ),
        epilog="example: hashex node rotate-key --data-dir ~/hashex/gb-nca",
    )
    add_data_dir_option(rotate_key)
    rotate_key.set_defaults(func=lambda ns: run_command(_rotate_key, ns))
    renew_cert = node_sub.add_parser(
        "renew-cert",
        help="renew the node's gateway certificate now (also when expired)",
        description=(
            "Issue tls/node.pem afresh from the node CA (valid 30 days), with the same host "
            "names, whatever the state of the current one. A running node needs no restart: "
            "the gateway presents the new certificate from its next connection on, the sync "
            "service from its next channel to a peer."
        ),
        epilog="example: hashex node renew-cert --data-dir ~/hashex/gb-nca",
    )
    add_data_dir_option(renew_cert)
    renew_cert.set_defaults(func=lambda ns: run_command(_renew_cert, ns))
    revoke_key = node_sub.add_parser(
        "revoke-key",
        help="revoke a compromised old signing key",
        description=(
            "Mark an old signing key revoked (after a compromise): this node signs nothing more "
            "with it and publishes the revocation in its change log; peers learn it at their "
            "next pull (new peers from the card) and refuse every batch it signs for seqs of "
            "this node's log from --from-seq on (--entirely: all). The current key cannot be "
            "revoked: run `hashex node rotate-key` first."
        ),
        epilog="example: hashex node revoke-key ed25519:1 --entirely --data-dir ~/hashex/gb-nca",
    )
    revoke_key.add_argument("key_id", help="the key to revoke, e.g. ed25519:1")
    scope = revoke_key.add_mutually_exclusive_group(required=True)
    scope.add_argument("--entirely", action="store_true", help="revoke for every seq")
    scope.add_argument(
        "--from-seq", type=int, metavar="SEQ", help="revoke from this seq of the log on"
    )
    add_data_dir_option(revoke_key)
    revoke_key.set_defaults(func=lambda ns: run_command(_revoke_key, ns))
    node_status.register(node_sub)
    up = node_sub.add_parser(
        "up",
        help="run the node until Ctrl-C or SIGTERM",
        description=(
            "Run the whole node in one process: the registry, the sync service (pulling from "
            "every pinned peer) and the gateway (mutual TLS on gateway_listen, the port peers "
            "and units use), plus the admin socket run/admin.sock (owner only) for this "
            "machine's own `hashex` commands, every call checked and audited, on the database "
            "node.toml chooses (the embedded PostgreSQL in the data directory, or an external "
            "one). Stops cleanly on Ctrl-C or SIGTERM, PostgreSQL included."
        ),
        epilog="example: hashex node up --data-dir ~/hashex/gb-nca",
    )
    add_data_dir_option(up)
    up.set_defaults(func=lambda ns: run_command(lambda n: _up(n, _serve_node), ns))

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
        description="Serve the registry of the node in --data-dir (on the database its node.toml "
        "chooses). Stops cleanly on SIGTERM.",
    )
    add_data_dir_option(serve)
    serve.set_defaults(func=lambda ns: run_command(lambda n: _up(n, _serve_registry), ns))


def _init(ns: argparse.Namespace) -> int:
    node_id = check_node_id(ns.node_id)
    check_listen(ns.listen)
    check_listen(ns.gateway_listen)
    if ns.gateway_endpoint:
        check_endpoint(ns.gateway_endpoint)
    hosts = [check_host(host) for host in ns.gateway_host]
    data_dir = ns.data_dir.resolve()
    created_config = not (data_dir / CONFIG_FILE).exists()
    url_for_embedded = ns.database == EMBEDDED or (created_config and ns.database is None)
    if ns.database_url_file is not None and url_for_embedded:
        raise CommandFailed(
            exit_codes.BAD_INPUT, "--database-url-file is for --database external only"
        )
    database_url = _read_database_url(ns.database_url_file)
    if created_config:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_config(
            data_dir,
            node_id=node_id,
            listen=ns.listen,
            gateway_listen=ns.gateway_listen,
            gateway_endpoint=ns.gateway_endpoint,
            database=ns.database or EMBEDDED,
        )
    config = load_config(data_dir)
    if config.node_id != node_id:
        raise CommandFailed(
            exit_codes.BAD_INPUT,
            f"{data_dir} already holds node {config.node_id!r}; choose another --data-dir",
        )
    if ns.database is not None and ns.database != config.database:
        raise CommandFailed(
            exit_codes.BAD_INPUT,
            f"node {node_id} chose the {config.database} database when it was created; it is "
            f"chosen once (to move the node, migrate its data and edit database in "
            f"{config.config_file})",
        )
    if database_url is not None and config.database != EXTERNAL:
        raise CommandFailed(
            exit_codes.BAD_INPUT,
            f"node {node_id} uses the embedded database: --database-url-file is for external",
        )
    done = ensure_node_material(config, gateway_hosts=hosts)
    if database_url is not None:
        done.append(_store_database_url(config, database_url))
    if not created_config and not done:
        print(f"node {node_id} already initialised in {data_dir}; nothing changed")
        return exit_codes.OK
    print(f"node {node_id} {'created' if created_config else 'completed'} in {data_dir}")
    if created_config:
        print(f"  configuration: {data_dir / CONFIG_FILE}")
        print(f"  database:      {_database_line(config, url_stored=database_url is not None)}")
    for line in done:
        print(f"  {line}")
    print(f"start it with:   hashex node up --data-dir {data_dir}")
    print(f"peer card:       hashex peer card --out {node_id}.card --data-dir {data_dir}")
    return exit_codes.OK


def _read_database_url(path: Path | None) -> str | None:
    """The URL in `path` (stdin for -), checked non-empty; None without --database-url-file."""
    if path is None:
        return None
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandFailed(
            exit_codes.BAD_INPUT, f"cannot read --database-url-file {path}: {exc}"
        ) from None
    url = text.strip()
    if not url or "\n" in url:
        raise CommandFailed(
            exit_codes.BAD_INPUT, f"--database-url-file {path} must hold one database URL"
        )
    return url


def _store_database_url(config: NodeConfig, url: str) -> str:
    """Write `url` to keys/database-url (0600); an existing, different one is never replaced."""
    path = config.data_dir / DATABASE_URL_FILE
    if path.exists():
        if read_secret(path).decode("utf-8", errors="replace").strip() == url:
            return f"database URL:  {path} (unchanged)"
        raise CommandFailed(
            exit_codes.BAD_INPUT,
            f"{path} already holds another database URL; remove it first to replace it",
        )
    write_secret(path, url.encode("utf-8") + b"\n")
    return f"database URL:  {path} ({mask_database_url(url)}, mode 0600)"


def _database_line(config: NodeConfig, *, url_stored: bool) -> str:
    if config.database == EMBEDDED:
        return f"embedded PostgreSQL in {config.data_dir / 'pg'} (started by the node)"
    if url_stored:
        return f"external, URL in {config.data_dir / DATABASE_URL_FILE}"
    return (
        f"external: give its URL in DATABASE_URL or {config.data_dir / DATABASE_URL_FILE} "
        "(mode 0600) before starting the node"
    )


def _rotate_key(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    key = rotate(config.signing_keys_dir)
    print(f"new signing key {key.key_id} {key.public_hex} (now current; the previous one retired)")
    print(
        "a running node publishes it to its peers within seconds, signed by the previous key; "
        "new peers need a fresh card (`hashex peer card`). Delete an old key file only once "
        "every peer pulled past the rotation (`hashex sync status`), or send them the new card."
    )
    return exit_codes.OK


def _renew_cert(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    now = datetime.now(UTC)
    renewal = renew_node_certificate(config, now=now)
    old = renewal.old_expiry
    if old is None:
        before = "there was no readable certificate"
    elif old <= now:
        before = f"the old one had expired on {old:%Y-%m-%d %H:%M} UTC"
    else:
        before = f"the old one would have expired on {old:%Y-%m-%d %H:%M} UTC"
    print(
        f"renewed the node certificate {node_cert_paths(config)[0]}: valid until "
        f"{renewal.new_expiry:%Y-%m-%d %H:%M} UTC ({before})"
    )
    print("a running node presents it from its next connection on; no restart needed")
    return exit_codes.OK


def _revoke_key(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    from_seq = 1 if ns.entirely else ns.from_seq
    record, changed = revoke(config.signing_keys_dir, ns.key_id, from_seq=from_seq)
    scope = "entirely" if record.revoked_from_seq == 1 else f"from seq {record.revoked_from_seq} on"
    if not changed:
        print(f"{record.key_id} was already revoked {scope}; nothing changed")
        return exit_codes.OK
    print(f"{record.key_id} revoked {scope}: this node signs nothing more with it")
    print(
        "a running node publishes the revocation in its log within seconds; peers learn it "
        "at their next pull, new peers from the card (`hashex peer card`)"
    )
    return exit_codes.OK


def _up(ns: argparse.Namespace, serve: Callable[[NodeConfig], Coroutine[Any, Any, None]]) -> int:
    config = load_config(ns.data_dir.resolve())
    configure_logging(config.log_level)
    asyncio.run(serve(config))
    return exit_codes.OK


async def _serve_node(config: NodeConfig) -> None:
    stop = stop_on_signal()
    node = await start_node(config)
    print(
        f"node {config.node_id} serving on {node.address} (admin socket) and gateway "
        f"{node.gateway_address} (mutual TLS); Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    try:
        await until_stopped(stop, node.database)
    finally:
        await node.stop()


async def _serve_registry(config: NodeConfig) -> None:
    stop = stop_on_signal()
    running = await start_registry(config, follow_replicas=True)
    print(
        f"registry of {config.node_id} serving on {running.address} (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    try:
        await until_stopped(stop, running.database)
    finally:
        await running.stop()
        config.address_file.unlink(missing_ok=True)


async def until_stopped(stop: asyncio.Event, database: Database) -> None:
    """Return on Ctrl-C or SIGTERM; raise when the node's database is lost for good (its
    embedded PostgreSQL cannot be restarted), so the service stops and exits non-zero and its
    service manager starts it again."""
    stopping = asyncio.ensure_future(stop.wait())
    watching = asyncio.ensure_future(database.watched_until_lost())
    try:
        done, _ = await asyncio.wait({stopping, watching}, return_when=asyncio.FIRST_COMPLETED)
        if watching in done and not stopping.done():
            watching.result()  # raises what ended the watch
            await stopping  # nothing watches this database: wait for the signal alone
    finally:
        stopping.cancel()
        watching.cancel()


def stop_on_signal() -> asyncio.Event:
    """Set on Ctrl-C or SIGTERM: what every long-running service command waits for."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
