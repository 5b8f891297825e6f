"""`hashex policy show|set`: what this node shares with each pinned peer (services.sync.policy
holds the policy itself). Both work on the data directory, node up or down; the running node
re-reads policies by itself.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

from services.cli import exit_codes
from services.cli.node_client import CommandFailed, add_data_dir_option, run_command
from services.cli.trust_command import node_config, trust_store
from services.core.config import check_node_id
from services.registry.model import check_id
from services.sync.policy import (
    DEFAULT_POLICY,
    SharingPolicy,
    load_policy,
    parse_algorithms,
    parse_categories,
    render_policy,
    save_policy,
)

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: _Sub) -> None:
    policy = sub.add_parser("policy", help="show and set what this node shares with a peer")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    show = policy_sub.add_parser("show", help="print a peer's sharing policy")
    show.add_argument("peer_id", help="the peer's node id")
    add_data_dir_option(show)
    show.set_defaults(func=lambda ns: run_command(_policy_show, ns))
    change = policy_sub.add_parser(
        "set",
        help="change a peer's sharing policy",
        description="Change only the settings given; the rest stay. A change bumps the "
        "policy generation, so entries a wider policy now allows are offered again.",
        epilog="example: hashex policy set us-fbi --categories vics-us:1,vics-us:2 --no-desk",
    )
    change.add_argument("peer_id", help="the peer's node id")
    change.add_argument(
        "--categories",
        nargs="+",
        metavar="CATEGORY",
        help="'all', 'uncategorised' or SCHEME:CODE (vics-us:0-4, caid-uk:A-C, "
        "interpol-baseline:yes/no); space- or comma-separated",
    )
    change.add_argument(
        "--algorithms", nargs="+", metavar="ALGORITHM", help="'all' or md5, sha1, sha256, ..."
    )
    change.add_argument(
        "--victim-status",
        dest="victim_status",
        action=argparse.BooleanOptionalAction,
        help="disclose victim identification status",
    )
    change.add_argument(
        "--desk",
        action=argparse.BooleanOptionalAction,
        help="disclose the responsible victim-ID desk",
    )
    change.add_argument(
        "--embargo", action="append", default=[], metavar="SERIES", help="embargo a series"
    )
    change.add_argument(
        "--lift-embargo", action="append", default=[], metavar="SERIES", help="lift an embargo"
    )
    add_data_dir_option(change)
    change.set_defaults(func=lambda ns: run_command(_policy_set, ns))


def _policy_show(ns: argparse.Namespace) -> int:
    config = node_config(ns)
    peer_id = check_node_id(ns.peer_id)
    policy = load_policy(config.policy_dir, peer_id)
    if policy is None:
        pinned = peer_id in trust_store(config).peers()
        if not pinned:
            raise _bad(f"{peer_id} is not a pinned peer and has no policy")
        print(f"# no sharing policy for {peer_id}: nothing is shared with it")
        return exit_codes.OK
    print(f"# {peer_id}")
    print(render_policy(policy), end="")
    return exit_codes.OK


def _policy_set(ns: argparse.Namespace) -> int:
    config = node_config(ns)
    peer_id = check_node_id(ns.peer_id)
    if peer_id not in trust_store(config).peers():
        raise _bad(f"{peer_id} is not a pinned peer; add its card first (`hashex peer add`)")
    existing = load_policy(config.policy_dir, peer_id)
    saved = save_policy(config.policy_dir, peer_id, _changed(existing or DEFAULT_POLICY, ns))
    if saved == existing:
        print(f"policy for {peer_id} unchanged (generation {saved.generation})")
    else:
        print(f"policy for {peer_id} saved as generation {saved.generation}:")
    print(render_policy(saved), end="")
    return exit_codes.OK


def _changed(policy: SharingPolicy, ns: argparse.Namespace) -> SharingPolicy:
    categories = policy.categories
    if ns.categories is not None:
        categories = parse_categories(_split(ns.categories))
    algorithms = policy.algorithms
    if ns.algorithms is not None:
        algorithms = parse_algorithms(_split(ns.algorithms))
    embargo = {check_id("series id", s) for s in _split(ns.embargo)}
    lift = {check_id("series id", s) for s in _split(ns.lift_embargo)}
    if embargo & lift:
        raise _bad(f"series {', '.join(sorted(embargo & lift))} both embargoed and lifted")
    return SharingPolicy(
        categories=categories,
        algorithms=algorithms,
        disclose_victim_status=policy.disclose_victim_status
        if ns.victim_status is None
        else ns.victim_status,
        disclose_desk=policy.disclose_desk if ns.desk is None else ns.desk,
        embargoed_series=(policy.embargoed_series | embargo) - lift,
        generation=policy.generation,
    )


def _split(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _bad(message: str) -> CommandFailed:
    return CommandFailed(exit_codes.BAD_INPUT, message)
