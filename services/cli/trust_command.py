"""`hashex peer ...`: the operator's trust decisions about peers (what is shared with each:
services.cli.policy_command; units' certificates: services.cli.unit_command).

All of them work on the node's data directory, so they run with the node up or down; the running
node re-reads peers, the deny-list and policies by itself. Every command can be re-run: doing
again what is already done says so and changes nothing. No command prints a private key.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from pathlib import Path
from typing import TypeAlias

from hashex.v1 import federation_pb2, federation_pb2_grpc
from services.cli import exit_codes
from services.cli.node_client import (
    CommandFailed,
    add_data_dir_option,
    node_channel,
    run_command,
)
from services.cli.node_material import ca_paths
from services.core import tls
from services.core.config import NodeConfig, check_node_id, load_config
from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.signing import Keyring
from services.core.trust import (
    TrustStore,
    check_endpoint,
    deny,
    make_card,
    parse_fingerprint,
    pin_card,
    read_card,
    unpin,
)
from services.sync.origin_keys import KeyStatus, key_statuses
from services.sync.policy import (
    DEFAULT_POLICY,
    load_policy,
    save_policy,
)

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# `peer add --policy`: what a new peer receives. share-all saves DEFAULT_POLICY; share-nothing
# saves none, which is what "nothing shared" is.
_POLICY_CHOICES = ("share-all", "share-nothing")
# How long `peer list` waits for the running node's view of the peers' keys.
_ASK_NODE_S = 10.0
_PROTO_KEY_STATES = {
    "current": federation_pb2.PeerSigningKey.STATE_CURRENT,
    "retired": federation_pb2.PeerSigningKey.STATE_RETIRED,
    "revoked": federation_pb2.PeerSigningKey.STATE_REVOKED,
}


def register(sub: _Sub) -> None:
    peer = sub.add_parser("peer", help="exchange cards with peer nodes, pin, remove, revoke")
    peer_sub = peer.add_subparsers(dest="peer_command", metavar="COMMAND", required=True)
    card = peer_sub.add_parser(
        "card",
        help="write this node's signed peer card",
        description="Write this node's card (id, gateway endpoint, CA certificate, public "
        "signing keys), signed by its current key, for the operators of peer nodes.",
    )
    card.add_argument("--out", type=Path, required=True, help="the card file to write")
    card.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="the address peers dial (default: gateway_endpoint in node.toml, else the "
        "gateway's listen address)",
    )
    add = peer_sub.add_parser(
        "add",
        help="pin a peer's card",
        description="Verify a peer's card and pin it. A peer without a sharing policy needs "
        "an explicit --policy choice; an existing policy is kept (change it with `hashex "
        "policy set`). Confirm the printed CA fingerprint with the peer's operator out of band.",
        epilog="example: hashex peer add us-fbi.card --policy share-nothing, then "
        "hashex policy set us-fbi --categories vics-us:1",
    )
    add.add_argument("card", type=Path, help="the card file received from the peer")
    add.add_argument(
        "--policy",
        choices=_POLICY_CHOICES,
        help="what a new peer receives: share-all (every category and algorithm, victim "
        "status disclosed, desk withheld) or share-nothing (no policy saved: nothing leaves "
        "until `hashex policy set`); required when the peer has no policy yet",
    )
    add.add_argument(
        "--replace", action="store_true", help="replace a different card pinned for that peer"
    )
    listing = peer_sub.add_parser("list", help="list pinned peers")
    listing.add_argument("--json", action="store_true", help="one JSON object per peer")
    remove = peer_sub.add_parser("remove", help="unpin a peer (its policy file is kept)")
    remove.add_argument("peer_id", help="the peer's node id")
    revoke = peer_sub.add_parser(
        "revoke",
        help="deny a certificate from the next connection on",
        description="Put a certificate's SHA-256 fingerprint on the deny-list; the gateway "
        "refuses it from the next connection, without a restart.",
    )
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("fingerprint", nargs="?", help="SHA-256 fingerprint (hex, colons ok)")
    target.add_argument("--cert", type=Path, help="the certificate (PEM) to revoke")
    revoke.add_argument("--reason", default="revoked by the operator", help="kept as a comment")
    for command, body in ((card, _card), (add, _add), (listing, _list), (remove, _remove)):
        add_data_dir_option(command)
        command.set_defaults(func=lambda ns, body=body: run_command(body, ns))
    add_data_dir_option(revoke)
    revoke.set_defaults(func=lambda ns: run_command(_revoke, ns))


def node_config(ns: argparse.Namespace) -> NodeConfig:
    return load_config(ns.data_dir.resolve())


def trust_store(config: NodeConfig) -> TrustStore:
    ca_path = ca_paths(config)[0]
    own_ca = ca_path.read_bytes() if ca_path.exists() else b""
    return TrustStore(config.peers_dir, own_ca, own_node_id=config.node_id)


def _bad(message: str) -> CommandFailed:
    return CommandFailed(exit_codes.BAD_INPUT, message)


def _card(ns: argparse.Namespace) -> int:
    config = node_config(ns)
    endpoint = ns.endpoint or config.gateway_endpoint or _listened(config)
    try:
        check_endpoint(endpoint)
    except InvalidArgument as error:
        raise _bad(f"{error}; pass --endpoint or set gateway_endpoint in node.toml") from None
    if _unspecified(endpoint.rpartition(":")[0].strip("[]")):
        raise _bad(f"{endpoint} is a wildcard listen address peers cannot dial; pass --endpoint")
    ca_path = ca_paths(config)[0]
    try:
        ca_pem = ca_path.read_bytes()
    except FileNotFoundError:
        raise FailedPrecondition(f"{ca_path} is missing; run `hashex node init`") from None
    keyring = Keyring.load(config.signing_keys_dir)
    data = make_card(
        node_id=config.node_id, endpoint=endpoint, ca_certificate_pem=ca_pem, keyring=keyring
    )
    ns.out.write_bytes(data)
    keys = ", ".join(k.key_id for k in keyring.all())
    print(f"wrote the card of {config.node_id} to {ns.out}")
    print(f"  endpoint: {endpoint}")
    print(f"  CA:       sha256 {tls.certificate_fingerprint(ca_pem)}")
    print(f"  keys:     {keys}")
    print("send it to the peer's operator and read them the CA fingerprint by another channel")
    return exit_codes.OK


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _listened(config: NodeConfig) -> str:
    """The gateway's listen address; with port 0, the one the running node actually bound."""
    if config.gateway_listen.endswith(":0") and config.gateway_address_file.exists():
        return config.gateway_address_file.read_text(encoding="utf-8").strip()
    return config.gateway_listen


def _add(ns: argparse.Namespace) -> int:
    config = node_config(ns)
    try:
        data = ns.card.read_bytes()
    except OSError as error:
        raise _bad(f"cannot read card file {ns.card}: {error.strerror}") from None
    peer_id = read_card(data).node_id
    existing = load_policy(config.policy_dir, peer_id)
    if existing is None and ns.policy is None and peer_id != config.node_id:
        raise _bad(
            f"choose what {peer_id} receives: --policy share-all (every category and algorithm, "
            "victim status disclosed, desk withheld) or --policy share-nothing (nothing until "
            f"`hashex policy set {peer_id} ...`); nothing was pinned"
        )
    try:
        result = pin_card(config.peers_dir, data, own_node_id=config.node_id, replace=ns.replace)
    except FailedPrecondition as error:
        raise _bad(str(error)) from None
    card = result.card
    verb = {"pinned": "pinned", "replaced": "replaced the card of", "unchanged": "already pinned"}
    print(f"{verb[result.outcome]} peer {card.node_id} at {card.endpoint}")
    print(f"  CA:   sha256 {card.ca_fingerprint}  <- confirm with {card.node_id}'s operator")
    keys = ", ".join(map(_shown_key, key_statuses(card.signing_keys, ())))
    print(f"  keys: {keys}")
    if existing is not None:
        ignored = f" (--policy {ns.policy} not applied)" if ns.policy else ""
        print(
            f"  policy: the existing one, generation {existing.generation}, is kept{ignored}; "
            f"see `hashex policy show {card.node_id}`, change it with `hashex policy set`"
        )
    elif ns.policy == "share-all":
        save_policy(config.policy_dir, card.node_id, DEFAULT_POLICY)
        print(
            "  policy: share-all (every category and algorithm, victim status disclosed, desk "
            f"withheld); narrow it with `hashex policy set {card.node_id} ...`"
        )
    else:
        print(
            f"  policy: share-nothing; nothing leaves for {card.node_id} until "
            f"`hashex policy set {card.node_id} ...`"
        )
    return exit_codes.OK


def _list(ns: argparse.Namespace) -> int:
    config = node_config(ns)
    store = trust_store(config)
    peers = store.peers()
    denied = store.denied()
    known = _keys_known_to_the_running_node(ns, config)
    for peer_id, card in sorted(peers.items()):
        policy = load_policy(config.policy_dir, peer_id)
        keys = (known or {}).get(peer_id) or key_statuses(card.signing_keys, ())
        row = {
            "node_id": peer_id,
            "endpoint": card.endpoint,
            "ca_sha256": card.ca_fingerprint,
            "keys": [
                {
                    "key_id": k.key_id,
                    "state": k.state,
                    "retired_at_seq": k.retired_at_seq,
                    "revoked_from_seq": k.revoked_from_seq,
                    "on_card": k.on_card,
                    "from_log": k.from_log,
                }
                for k in keys
            ],
            "policy_generation": policy.generation if policy else None,
            "ca_denied": card.ca_fingerprint in denied,
        }
        if ns.json:
            print(json.dumps(row))
            continue
        shown = f"generation {policy.generation}" if policy else "none (nothing shared)"
        print(f"{peer_id}  {card.endpoint}")
        print(f"  CA sha256 {card.ca_fingerprint}{'  (DENIED)' if row['ca_denied'] else ''}")
        print(f"  keys {', '.join(map(_shown_key, keys))}; policy {shown}")
    if not ns.json:
        print(f"{len(peers)} peer(s) pinned; {len(denied)} certificate fingerprint(s) denied")
        if known is None:
            print(
                "keys as the pinned cards list them; with the node running, those peers rotated "
                "to since are shown too"
            )
    return exit_codes.OK


def _keys_known_to_the_running_node(
    ns: argparse.Namespace, config: NodeConfig
) -> dict[str, list[KeyStatus]] | None:
    """Each peer's keys as the running node knows them (card and log), or None when the node
    is not running or does not answer (the cards alone are shown then)."""
    if not config.admin_socket_path.is_socket():
        return None
    local = argparse.Namespace(data_dir=ns.data_dir, node=None, cert=None, gateway=None)
    try:
        with node_channel(local) as channel:
            response = federation_pb2_grpc.AdminStub(channel).GetSyncStatus(
                federation_pb2.GetSyncStatusRequest(), timeout=_ASK_NODE_S
            )
    except CommandFailed:
        return None
    states = {v: k for k, v in _PROTO_KEY_STATES.items()}
    return {
        p.peer_id: [
            KeyStatus(
                k.key_id,
                states.get(k.state, "current"),
                k.retired_at_seq,
                k.revoked_from_seq,
                k.on_card,
                k.from_log,
            )
            for k in p.signing_keys
        ]
        for p in response.peers
    }


def _shown_key(key: KeyStatus) -> str:
    if key.state == "revoked":
        seq = key.revoked_from_seq
        state = "revoked entirely" if seq == 1 else f"revoked from seq {seq}"
    elif key.state == "retired" and key.retired_at_seq:
        state = f"retired at seq {key.retired_at_seq}"
    else:
        state = key.state
    if not key.on_card:
        state += ", learned from its log"
    return f"{key.key_id} ({state})"


def _remove(ns: argparse.Namespace) -> int:
    config = node_config(ns)
    peer_id = check_node_id(ns.peer_id)
    if not unpin(config.peers_dir, peer_id):
        print(f"peer {peer_id} was not pinned; nothing changed")
        return exit_codes.OK
    print(f"removed peer {peer_id}: its connections are refused from the next one on")
    print(f"  its sharing policy file is kept; re-adding {peer_id} uses it again")
    return exit_codes.OK


def _revoke(ns: argparse.Namespace) -> int:
    config = node_config(ns)
    if ns.cert:
        try:
            fingerprint = tls.certificate_fingerprint(ns.cert.read_bytes())
        except OSError as error:
            raise _bad(f"cannot read {ns.cert}: {error.strerror}") from None
        except ValueError:
            raise _bad(f"{ns.cert} is not a PEM certificate") from None
    else:
        fingerprint = parse_fingerprint(ns.fingerprint)
    if not deny(config.peers_dir, fingerprint, ns.reason):
        print(f"sha256 {fingerprint} is already revoked; nothing changed")
        return exit_codes.OK
    print(f"revoked sha256 {fingerprint}: the gateway refuses it from the next connection on")
    return exit_codes.OK
