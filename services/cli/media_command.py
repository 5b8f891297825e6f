"""`hashex media set | unlink | restore`: explicit changes of media of this node (UpdateMedia).

A submission only ever adds to a media; what clears a category or a flag, takes a media out of
a series or brings a retracted media back is one of these commands, each a change-log entry that
replicates to peers. Every media named changes, or none does (an unknown id stores nothing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf.field_mask_pb2 import FieldMask

from hashex.v1 import common_pb2, registry_pb2
from services.cli import exit_codes
from services.cli.node_client import add_node_options, registry_stub, run_command
from services.cli.records_command import media_ids_given
from services.cli.submit_command import FLAG_NAMES
from services.core.errors import InvalidArgument
from services.registry.contract import MAX_UPDATE_IDS
from services.registry.model import Category, check_id

MEDIA_TYPES = {"image": common_pb2.MEDIA_TYPE_IMAGE, "video": common_pb2.MEDIA_TYPE_VIDEO}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    media = sub.add_parser(
        "media",
        help="change media of this node explicitly: set or clear fields, unlink, restore",
        description=(
            "Explicit changes of media this node stored: `hashex submit` only adds to a media; "
            "these clear what it cannot. Each media that changes is one change-log entry, "
            "replicated to peers under their policy."
        ),
    )
    media_sub = media.add_subparsers(dest="media_command", metavar="COMMAND", required=True)

    set_ = media_sub.add_parser(
        "set",
        help="set or clear the category, the media type and flags",
        epilog="example: hashex media set sha256:9f86d0... --clear-category --clear-flag "
        "distributed",
    )
    _add_ids(set_)
    category = set_.add_mutually_exclusive_group()
    category.add_argument("--category", help="SCHEME:CODE, e.g. vics-us:1, caid-uk:A")
    category.add_argument("--clear-category", action="store_true", help="no category")
    set_.add_argument("--type", choices=tuple(MEDIA_TYPES), help="the media type")
    set_.add_argument("--flag", action="append", default=[], choices=FLAG_NAMES, help="set")
    set_.add_argument("--clear-flag", action="append", default=[], choices=FLAG_NAMES, help="clear")
    set_.set_defaults(func=lambda ns: run_command(_set, ns))

    unlink = media_sub.add_parser(
        "unlink",
        help="take media out of series of this node",
        epilog="example: hashex media unlink sha256:9f86d0... --series op-lantern",
    )
    _add_ids(unlink)
    unlink.add_argument(
        "--series", action="append", required=True, help="series id (repeat for several)"
    )
    unlink.set_defaults(func=lambda ns: run_command(_unlink, ns))

    restore = media_sub.add_parser(
        "restore",
        help="bring retracted media back: they match again",
        epilog="example: hashex media restore sha256:9f86d0...",
    )
    _add_ids(restore)
    restore.set_defaults(func=lambda ns: run_command(_restore, ns))


def _add_ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("media_ids", nargs="*", metavar="MEDIA_ID")
    parser.add_argument("--file", type=Path, help="a file with one media id per line")
    add_node_options(parser)


def _set(ns: argparse.Namespace) -> int:
    paths: list[str] = []
    values = registry_pb2.MediaUpdate()
    if ns.category:
        category = Category.parse_text(ns.category)
        values.category.CopyFrom(
            common_pb2.Category(
                scheme=common_pb2.CategoryScheme.ValueType(category.scheme), code=category.code
            )
        )
    if ns.category or ns.clear_category:
        paths.append("category")
    if ns.type:
        values.media_type = MEDIA_TYPES[ns.type]
        paths.append("media_type")
    if both := set(ns.flag) & set(ns.clear_flag):
        raise InvalidArgument(f"--flag and --clear-flag both name {', '.join(sorted(both))}")
    for name in ns.flag:
        setattr(values.flags, _field(name), True)
    paths.extend(f"flags.{_field(name)}" for name in dict.fromkeys(ns.flag + ns.clear_flag))
    if not paths:
        raise InvalidArgument(
            "nothing to change: give --category, --clear-category, --type, --flag or --clear-flag"
        )
    return _update(
        ns, registry_pb2.UpdateMediaRequest(values=values, update_mask=FieldMask(paths=paths))
    )


def _unlink(ns: argparse.Namespace) -> int:
    for series_id in ns.series:
        check_id("--series", series_id)
    return _update(ns, registry_pb2.UpdateMediaRequest(leave_series_ids=dict.fromkeys(ns.series)))


def _restore(ns: argparse.Namespace) -> int:
    return _update(ns, registry_pb2.UpdateMediaRequest(restore=True))


def _update(ns: argparse.Namespace, change: registry_pb2.UpdateMediaRequest) -> int:
    """`change` for every media id given, one UpdateMedia call per 1,000 ids; each call changes
    all its media or none."""
    media_ids = media_ids_given(ns)
    changed = unchanged = 0
    with registry_stub(ns) as stub:
        for start in range(0, len(media_ids), MAX_UPDATE_IDS):
            chunk = media_ids[start : start + MAX_UPDATE_IDS]
            message = registry_pb2.UpdateMediaRequest(media_ids=chunk)
            message.MergeFrom(change)
            response = stub.UpdateMedia(message, timeout=ns.timeout)
            changed += response.changed
            unchanged += response.unchanged
    print(f"{changed} media changed, {unchanged} already as asked")
    return exit_codes.OK


def _field(flag_name: str) -> str:
    return flag_name.replace("-", "_")
