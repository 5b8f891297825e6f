"""`hashex node status`: what an operator checks on the node's machine, read from its data
directory (the node may be up or down): whether it runs, its certificates' expiry with a warning
from services.core.cert_expiry.WARN_BEFORE ahead, and its signing keys."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli import exit_codes
from services.cli.node_client import add_data_dir_option, run_command
from services.core.cert_expiry import certificate_states, node_certificates
from services.core.config import NodeConfig, load_config
from services.core.signing import Keyring

# How long `node status` waits for the gateway to accept a connection.
_CONNECT_S = 2.0


def register(node_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = node_sub.add_parser(
        "status",
        help="whether the node runs, certificate expiry, signing keys",
        description=(
            "Show, from the data directory, whether the node runs (its gateway accepts "
            "connections at the address it wrote), "
            "when its node CA and node certificate expire (WARNING from 7 days before), and "
            "its signing keys (current, retired, revoked, file deleted). Exit 0 whatever it "
            "shows; a warning is printed on stderr too."
        ),
        epilog="example: hashex node status --data-dir ~/hashex/gb-nca",
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    add_data_dir_option(status)
    status.set_defaults(func=lambda ns: run_command(_status, ns))


def _status(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    report = node_report(config, datetime.now(UTC))
    if ns.json:
        print(json.dumps(report))
    else:
        _print(report)
    return exit_codes.OK


def node_report(config: NodeConfig, now: datetime) -> dict[str, Any]:
    states = certificate_states(node_certificates(config), now)
    gateway = _read(config.gateway_address_file)
    keyring = Keyring.load(config.signing_keys_dir)
    return {
        "node_id": config.node_id,
        "running": _answers(gateway),
        "gateway": gateway,
        "certificates": [
            {
                "name": s.certificate.name,
                "path": str(s.certificate.path),
                "not_after": s.not_after.strftime("%Y-%m-%dT%H:%M:%SZ") if s.not_after else None,
                "warning": s.problem,
            }
            for s in states
        ],
        "signing_keys": [
            {
                "key_id": record.key_id,
                "state": (
                    "revoked"
                    if record.revoked_from_seq
                    else "current"
                    if record.key_id == keyring.current.key_id
                    else "retired"
                ),
                "revoked_from_seq": record.revoked_from_seq,
                "file_present": keyring.has(record.key_id),
            }
            for record in keyring.history
        ],
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _answers(address: str | None) -> bool:
    """Whether something accepts connections at the gateway address the node wrote (a node
    that was killed leaves the file behind)."""
    if not address:
        return False
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_S):
            return True
    except (OSError, ValueError):
        return False


def _print(report: dict[str, Any]) -> None:
    running = f"running, gateway {report['gateway']}" if report["running"] else "not running"
    print(f"node {report['node_id']}: {running}")
    warnings = []
    for certificate in report["certificates"]:
        until = certificate["not_after"] or "unreadable"
        print(f"  {certificate['name']}: valid until {until}")
        if certificate["warning"]:
            warnings.append(certificate["warning"])
            print(f"    WARNING: {certificate['warning']}")
    for key in report["signing_keys"]:
        state = key["state"]
        if state == "revoked":
            seq = key["revoked_from_seq"]
            state = "revoked entirely" if seq == 1 else f"revoked from seq {seq}"
        deleted = "" if key["file_present"] else ", key file deleted"
        print(f"  signing key {key['key_id']}: {state}{deleted}")
    for warning in warnings:
        print(f"hashex: WARNING: {warning}", file=sys.stderr)
