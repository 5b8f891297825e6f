"""`hashex linkage rebuild`: relink every media and series of the node from scratch.

Reads and writes the node's database directly, as `hashex audit` does (the node may be running:
its linker and this one take turns chunk by chunk under the linker's advisory lock). The result
equals what the incremental linker computed; a series gets a linkage event only where the
rebuild changed something, so overlap flags are never raised again by it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from services.cli import exit_codes
from services.cli.node_client import add_data_dir_option, run_command
from services.core.config import load_config
from services.core.db.pool import open_database
from services.core.node_claim.store import check_claimed_by
from services.registry.app import open_registry
from services.registry.linkage.linker import DrainCounts, Linker
from services.registry.linkage.running import linkage_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    linkage = sub.add_parser(
        "linkage",
        help="the node's media and series linkage",
        description="Commands on the series linkage the node computes over what it holds.",
    )
    linkage_sub = linkage.add_subparsers(dest="linkage_command", metavar="COMMAND", required=True)
    rebuild = linkage_sub.add_parser(
        "rebuild",
        help="recompute every link, series pair and cluster from scratch",
        description=(
            "Relink every media of the node's database (the node may be running) and recompute "
            "series pairs and clusters; safe to re-run. Changes nothing where the linkage was "
            "already right, and raises no overlap flag twice."
        ),
    )
    add_data_dir_option(rebuild)
    rebuild.add_argument("--json", action="store_true", help="print the counts as JSON")
    rebuild.set_defaults(func=lambda ns: run_command(_rebuild, ns))


def _rebuild(ns: argparse.Namespace) -> int:
    counts = asyncio.run(_run(ns))
    if ns.json:
        sys.stdout.write(json.dumps({"media": counts.media, "events": counts.events}) + "\n")
    else:
        print(f"relinked {counts.media} media; {counts.events} series changed")
    return exit_codes.OK


async def _run(ns: argparse.Namespace) -> DrainCounts:
    config = load_config(ns.data_dir.resolve())
    database = await open_database(config.database_location(), max_size=2)
    try:
        async with database.connection() as conn:
            await check_claimed_by(conn, node_id=config.node_id)
        registry = await open_registry(config, database)
        linker = Linker(
            database=database,
            index=registry.index,
            node_id=config.node_id,
            settings=linkage_settings(config),
        )
        return await linker.rebuild()
    finally:
        await database.close()
