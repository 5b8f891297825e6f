"""The `hashex` command.

Exit codes shared by every subcommand (see `services.cli.exit_codes`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from services.cli import exit_codes

# The node starts PostgreSQL's tools as subprocesses; gRPC's fork handlers are not needed for
# that and only log noise. Must be set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def build_parser() -> argparse.ArgumentParser:
    from services.cli import (
        audit_command,
        hash_command,
        lookup_command,
        media_command,
        node_command,
        records_command,
        service_command,
        submit_command,
        sync_command,
        trust_command,
    )

    parser = argparse.ArgumentParser(
        prog="hashex",
        description=(
            "hashex: federated exchange of image hashes and victim-identification status. "
            "Hash seized material locally, submit hashes with case metadata to your node, "
            "and look hashes up."
        ),
        epilog=exit_codes.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    node_command.register(sub)
    hash_command.register(sub)
    submit_command.register(sub)
    lookup_command.register(sub)
    records_command.register(sub)
    media_command.register(sub)
    audit_command.register(sub)
    trust_command.register(sub)
    sync_command.register(sub)
    service_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    code: int = ns.func(ns)
    return code


if __name__ == "__main__":
    sys.exit(main())
