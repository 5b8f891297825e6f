"""`hashex sync status`: per peer, how far this node has replicated its log, the lag, and the
last error; asked of the running node on its loopback port (Admin.GetSyncStatus)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from hashex.v1 import federation_pb2, federation_pb2_grpc
from services.cli import exit_codes
from services.cli.node_client import (
    MAX_MESSAGE_BYTES,
    add_node_options,
    node_address,
    rpc_failure,
    run_command,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sync = sub.add_parser("sync", help="replication from peers")
    sync_sub = sync.add_subparsers(dest="sync_command", metavar="COMMAND", required=True)
    status = sync_sub.add_parser(
        "status",
        help="per peer: cursor, lag, last success, last error",
        description="Show how far this node has pulled each peer's change log.",
        epilog="example: hashex sync status --data-dir ~/hashex/gb-nca",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    add_node_options(status)
    status.set_defaults(func=lambda ns: run_command(_status, ns))


def _status(ns: argparse.Namespace) -> int:
    address = node_address(ns)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            response = federation_pb2_grpc.AdminStub(channel).GetSyncStatus(
                federation_pb2.GetSyncStatusRequest(), timeout=ns.timeout
            )
        except grpc.RpcError as error:
            raise rpc_failure(error, address) from None
    if ns.json:
        json.dump(
            MessageToDict(response, always_print_fields_with_no_presence=True),
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(response))
    return exit_codes.OK


def render(response: federation_pb2.GetSyncStatusResponse) -> str:
    lines = [f"node {response.node_id}: local log at seq {response.local_last_seq}"]
    if not response.peers:
        lines.append("no pinned peers")
    header = ("PEER", "ENDPOINT", "CURSOR", "PEER-LAST", "LAG", "APPLIED", "REJECTED", "LAST OK")
    rows = [header] + [
        (
            p.peer_id,
            p.endpoint,
            str(p.cursor_seq),
            str(p.peer_last_seq),
            str(p.lag),
            str(p.applied_entries),
            str(p.rejected_batches),
            _when(p.last_success_at if p.HasField("last_success_at") else None),
        )
        for p in response.peers
    ]
    if response.peers:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for p in response.peers:
        if p.last_error:
            when = _when(p.last_error_at if p.HasField("last_error_at") else None)
            lines.append(f"{p.peer_id}: last error at {when}: {p.last_error}")
    return "\n".join(lines) + "\n"


def _when(stamp: Timestamp | None) -> str:
    if stamp is None:
        return "never"
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
