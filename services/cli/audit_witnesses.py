"""`hashex audit verify --against-peers`: prove this node's audit log against the checkpoints
its peers keep of it.

Design: every pull a peer makes from this node starts with a checkpoint of this node's audit log
(record count and head digest), signed with this node's key; the peer keeps the latest one
(services.sync.audit_checkpoints). Here the node first recomputes its own chain, then asks each
pinned peer, over mutual TLS with the node's own certificate (as its pullers call), for the
checkpoint it keeps (Federation.GetAuditCheckpoint), verifies that checkpoint's signature with
the node's own public keys, and checks that its log still has that many records and that its
record at that count has the signed head digest (the chain commits to every record before it).

Per peer the outcome is one of: `intact` (the log agrees with what the peer witnessed),
`truncated` / `rewritten` (it does not: the signed checkpoint is the proof), `no_checkpoint` (the
peer keeps none yet), `invalid` (what the peer keeps does not verify as this node's), `refused`
(the peer answered with an error) or `unreachable`. Only `intact` counts as a witness; anything
else is reported as what it is, never as intact.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from hashex.v1 import federation_pb2
from services.core import tls
from services.core.audit.store import AuditStore
from services.core.config import NodeConfig
from services.core.signing import Keyring
from services.core.trust import TrustStore
from services.sync.audit_checkpoints import CheckpointRefused, verify_checkpoint
from services.sync.peer_client import PeerClients

Outcome = Literal[
    "intact", "truncated", "rewritten", "no_checkpoint", "invalid", "refused", "unreachable"
]
CONTRADICTED: frozenset[Outcome] = frozenset({"truncated", "rewritten"})
DEFAULT_TIMEOUT_S = 10.0
# gRPC codes that mean the peer was not reached (or its gateway refused this node's
# certificate at the handshake, which grpcio reports as UNAVAILABLE too).
_UNREACHED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class PeerWitness:
    peer_id: str
    outcome: Outcome
    detail: str
    record_count: int = 0


async def ask_peers(
    config: NodeConfig, store: AuditStore, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[PeerWitness]:
    """Each pinned peer's witness of this node's audit log (in peer id order)."""
    own_ca_pem = (config.tls_dir / "ca.pem").read_bytes()
    trust = TrustStore(config.peers_dir, own_ca_pem, own_node_id=config.node_id)
    keys = {k.key_id: k.public_key for k in Keyring.load(config.signing_keys_dir).all()}
    clients = PeerClients(
        trust=trust,
        identity=lambda: tls.load_certified_key(
            certificate_path=config.tls_dir / "node.pem", key_path=config.tls_dir / "node.key"
        ),
    )
    try:
        peer_ids = clients.peer_ids()
        answers = await asyncio.gather(*(_ask(clients, peer_id, timeout_s) for peer_id in peer_ids))
        return [
            await _judge(config.node_id, peer_id, answer, keys, store)
            for peer_id, answer in zip(peer_ids, answers, strict=True)
        ]
    finally:
        await clients.close()


async def _ask(clients: PeerClients, peer_id: str, timeout_s: float) -> Any:
    """The peer's answer, or the gRPC error it ended with."""
    try:
        return await clients.stub(peer_id).GetAuditCheckpoint(
            federation_pb2.GetAuditCheckpointRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as error:
        return error


async def _judge(
    node_id: str, peer_id: str, answer: Any, keys: dict[str, bytes], store: AuditStore
) -> PeerWitness:
    if isinstance(answer, grpc.aio.AioRpcError):
        outcome: Outcome = "unreachable" if answer.code() in _UNREACHED else "refused"
        return PeerWitness(peer_id, outcome, f"{answer.code().name}: {answer.details()}")
    if not answer.held:
        return PeerWitness(peer_id, "no_checkpoint", "keeps no checkpoint of this node's log yet")
    try:
        verified = verify_checkpoint(
            answer.checkpoint, origin=node_id, recipient=peer_id, keys=keys
        )
    except CheckpointRefused as refused:
        return PeerWitness(peer_id, "invalid", str(refused))
    count, digest = verified.held.record_count, verified.held.head_digest
    own = await store.digest_at(count)
    if own is None:
        head = await store.head()
        return PeerWitness(
            peer_id,
            "truncated",
            f"this node signed {count} records for it; the log now holds {head.count}",
            count,
        )
    if own != digest:
        return PeerWitness(
            peer_id,
            "rewritten",
            f"record {count} is not the one this node signed for it",
            count,
        )
    return PeerWitness(peer_id, "intact", f"agrees with its checkpoint at {count} records", count)
