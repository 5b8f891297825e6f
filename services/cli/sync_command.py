"""`hashex sync status`: per peer, how far this node has replicated its log, the lag, and the
last error; `hashex sync quarantine`: the peers' entries this node set aside; `hashex sync
resync`. Each asks the node's Admin service (GetSyncStatus, ListQuarantine, ResyncPeer): with
--cert through the gateway; else at --node; else, when the services run apart, at the address
`hashex sync run` wrote into the data directory (run/sync.addr); else on the node's own port
(`hashex node up` serves Admin there)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from hashex.v1 import federation_pb2, federation_pb2_grpc
from services.cli import exit_codes
from services.cli.json_output import write_json
from services.cli.node_client import (
    CommandFailed,
    add_node_options,
    node_address,
    node_channel,
    run_command,
)
from services.core.config import NodeConfig

M = TypeVar("M", bound=Message)


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
    quarantine = sync_sub.add_parser(
        "quarantine",
        help="entries of peers' batches this node could not apply",
        description=(
            "List the entries of peers' verified batches that this node set aside instead of "
            "applying (invalid against the contract, out of order, another origin's record), "
            "oldest first. The rest of each batch applied; these are never retried."
        ),
        epilog="example: hashex sync quarantine --peer us-hsi --data-dir ~/hashex/gb-nca",
    )
    quarantine.add_argument("--peer", default="", help="only this peer's entries")
    quarantine.add_argument(
        "--after", type=int, default=0, metavar="ID", help="entries after this id (to page on)"
    )
    quarantine.add_argument(
        "--limit", type=_limit, default=100, help="at most this many (1-1000, default 100)"
    )
    quarantine.add_argument("--json", action="store_true", help="print the entries as JSON")
    add_node_options(quarantine)
    quarantine.set_defaults(func=lambda ns: run_command(_quarantine, ns))
    resync = sync_sub.add_parser(
        "resync",
        help="re-pull a peer's log from the start (after it was restored or forked)",
        description=(
            "Re-pull PEER's change log from seq 1, after `hashex sync status` reports that its "
            "history diverged (it was restored from a backup, or its log forked). Its records "
            "held here leave lookups at once and come back as the pull re-applies them; those "
            "it no longer sends are deleted once the pull has caught up. Re-runnable."
        ),
        epilog="example: hashex sync resync us-hsi --data-dir ~/hashex/gb-nca",
    )
    resync.add_argument("peer", metavar="PEER", help="the peer's node id")
    add_node_options(resync)
    resync.set_defaults(func=lambda ns: run_command(_resync, ns))


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be 1-1000, not {value}")
    return value


def _status(ns: argparse.Namespace) -> int:
    request = federation_pb2.GetSyncStatusRequest()
    response = _ask(ns, lambda stub: stub.GetSyncStatus(request, timeout=ns.timeout))
    _print(ns, response, render)
    return exit_codes.OK


def _quarantine(ns: argparse.Namespace) -> int:
    request = federation_pb2.ListQuarantineRequest(
        peer_id=ns.peer, after_id=max(ns.after, 0), limit=ns.limit
    )
    response = _ask(ns, lambda stub: stub.ListQuarantine(request, timeout=ns.timeout))
    _print(ns, response, render_quarantine)
    return exit_codes.OK


def _resync(ns: argparse.Namespace) -> int:
    request = federation_pb2.ResyncPeerRequest(peer_id=ns.peer)
    response = _ask(ns, lambda stub: stub.ResyncPeer(request, timeout=ns.timeout))
    print(
        f"resync of {ns.peer} started: {response.withdrawn_media} of its media withdrawn until "
        "they are pulled again; follow it with `hashex sync status`"
    )
    return exit_codes.OK


def _ask(ns: argparse.Namespace, call: Callable[[federation_pb2_grpc.AdminStub], M]) -> M:
    """One Admin call, where the node's sync service answers it (see the module docstring)."""
    towards = _towards_sync(ns)
    with node_channel(towards) as channel:
        try:
            return call(federation_pb2_grpc.AdminStub(channel))
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise CommandFailed(exit_codes.NODE_ERROR, _no_admin_at(towards)) from None
            raise


def _towards_sync(ns: argparse.Namespace) -> argparse.Namespace:
    """`ns` unless the node's services run apart (`hashex sync run` announced its address) and
    the command was not told where to go: then the sync service's internal port serves only
    callers its gateway signed, so the way in is the gateway with an operator certificate."""
    if ns.node or getattr(ns, "cert", None):
        return ns
    announced = NodeConfig(node_id="unknown", data_dir=ns.data_dir).sync_address_file
    try:
        address = announced.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ns
    raise CommandFailed(
        exit_codes.BAD_INPUT,
        f"the node's services run apart (sync at {address}, which serves only calls its "
        "gateway forwards): ask through the gateway with --cert OPERATOR.pem (an operator "
        "certificate: `hashex unit issue NAME --operator --out DIR`)",
    )


def _no_admin_at(ns: argparse.Namespace) -> str:
    where = "the gateway" if getattr(ns, "cert", None) else node_address(ns)
    return (
        f"{where} does not serve the node's Admin service (do its services run apart?): "
        "give --cert OPERATOR.pem to ask through the node's gateway"
    )


def _print(ns: argparse.Namespace, response: M, text: Callable[[M], str]) -> None:
    if ns.json:
        write_json(response, sys.stdout)
    else:
        sys.stdout.write(text(response))


def render_quarantine(response: federation_pb2.ListQuarantineResponse) -> str:
    if not response.entries:
        return "no quarantined entries\n"
    header = ("ID", "PEER", "SEQ", "BYTES", "QUARANTINED", "REASON")
    rows = [header] + [
        (
            str(e.id),
            e.peer_id,
            str(e.seq) if e.seq else "?",
            str(e.entry_bytes),
            _when(e.quarantined_at),
            e.reason,
        )
        for e in response.entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]) for r in rows
    ]
    if response.more:
        lines.append(f"more entries follow: --after {response.entries[-1].id}")
    return "\n".join(lines) + "\n"


def render(response: federation_pb2.GetSyncStatusResponse) -> str:
    lines = [f"node {response.node_id}: local log at seq {response.local_last_seq}"]
    if not response.peers:
        lines.append("no pinned peers")
    header = (
        "PEER",
        "ENDPOINT",
        "CURSOR",
        "PEER-LAST",
        "LAG",
        "APPLIED",
        "REJECTED",
        "QUARANTINED",
        "LAST OK",
    )
    rows = [header] + [
        (
            p.peer_id,
            p.endpoint,
            str(p.cursor_seq),
            str(p.peer_last_seq),
            str(p.lag),
            str(p.applied_entries),
            str(p.rejected_batches),
            str(p.quarantined_entries),
            _when(p.last_success_at if p.HasField("last_success_at") else None),
        )
        for p in response.peers
    ]
    if response.peers:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for p in response.peers:
        if p.signing_keys:
            lines.append(f"{p.peer_id}: keys {', '.join(map(shown_key, p.signing_keys))}")
        if p.resyncing:
            lines.append(f"{p.peer_id}: resync under way (its log is pulled again from seq 1)")
        if p.audit_alarm:
            lines.append(f"{p.peer_id}: ALARM {p.audit_alarm}")
        if p.last_error:
            when = _when(p.last_error_at if p.HasField("last_error_at") else None)
            lines.append(f"{p.peer_id}: last error at {when}: {p.last_error}")
    return "\n".join(lines) + "\n"


def shown_key(key: federation_pb2.PeerSigningKey) -> str:
    """`ed25519:2 (current)`, `ed25519:1 (retired at seq 40)`, `... (revoked entirely)`; a key
    known only from the peer's log (rotated to after its card was pinned) says so."""
    if key.state == federation_pb2.PeerSigningKey.STATE_REVOKED:
        seq = key.revoked_from_seq
        state = "revoked entirely" if seq == 1 else f"revoked from seq {seq}"
    elif key.state == federation_pb2.PeerSigningKey.STATE_RETIRED:
        state = f"retired at seq {key.retired_at_seq}" if key.retired_at_seq else "retired"
    else:
        state = "current"
    if not key.on_card:
        state += ", learned from its log"
    return f"{key.key_id} ({state})"


def _when(stamp: Timestamp | None) -> str:
    if stamp is None:
        return "never"
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
