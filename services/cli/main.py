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
        dedup_command,
        export_command,
        flags_command,
        hash_command,
        import_command,
        linkage_command,
        lookup_command,
        media_command,
        node_command,
        policy_command,
        records_command,
        service_command,
        submit_command,
        sync_command,
        trust_command,
        unit_command,
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
    import_command.register(sub)
    export_command.register(sub)
    lookup_command.register(sub)
    dedup_command.register(sub)
    linkage_command.register(sub)
    flags_command.register(sub)
    records_command.register(sub)
    media_command.register(sub)
    audit_command.register(sub)
    unit_command.register(sub)
    trust_command.register(sub)
    policy_command.register(sub)
    sync_command.register(sub)
    service_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            parser = build_parser()
            ns = parser.parse_args(argv)
            code: int = ns.func(ns)
        finally:
            if not sys.stdout.closed:
                sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError:
        _discard_stdout()
        return exit_codes.OUTPUT_CLOSED
    return code


def _discard_stdout() -> None:
    """The reader went away (`| head`): what is still buffered goes nowhere, so the flush at
    exit does not fail again with a traceback."""
    try:
        fileno = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
