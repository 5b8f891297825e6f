"""`hashex unit issue|list|revoke`: the client certificates of this node's units and operators.

A unit certificate carries the unit's roles (services.core.tls); the gateway checks them per
method (services.gateway.authz). Every certificate issued is kept in the register
(services.core.issued); issuing a name again revokes what it held, so one name has one valid
certificate. Revocation goes on the deny-list the gateway reads per call (no restart). Each
command works on the data directory, with the node up or down, and can be re-run.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias, cast, get_args

from services.cli import exit_codes
from services.cli.node_client import CommandFailed, add_data_dir_option, run_command
from services.cli.node_material import load_ca
from services.core import tls
from services.core.caller import UNIT_ROLES, UnitRole
from services.core.config import load_config
from services.core.issued import IssuedCertificate, IssuedKind, IssuedRegister, revoke_held
from services.core.trust import DENIED_FILE, deny, read_denied

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_ROLE_HELP = (
    "analyst: look up and read series; submitter: submit, and retract or change what its own "
    "unit submitted; victim-id: set victim status; supervisor: all of it, on any record of the "
    "node"
)


def register(sub: _Sub) -> None:
    unit = sub.add_parser("unit", help="certificates for this node's units and operators")
    unit_sub = unit.add_subparsers(dest="unit_command", metavar="COMMAND", required=True)
    issue = unit_sub.add_parser(
        "issue",
        help="issue a client certificate from the node CA",
        description=(
            "Write NAME.pem, NAME.key (mode 0600) and the node's ca.pem into --out, for a unit "
            "with its roles or, with --operator, an operator (the admin methods). Issuing a "
            "name again revokes the certificates it held. Roles: " + _ROLE_HELP + "."
        ),
        epilog="example: hashex unit issue ceop-desk --role analyst --role submitter "
        "--out ~/hashex-unit --data-dir ~/hashex/gb",
    )
    issue.add_argument("name", help="the unit's (or operator's) name, e.g. ceop-desk")
    issue.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="ROLE",
        help=f"a role of the unit ({', '.join(UNIT_ROLES)}); repeat or separate with commas; "
        "at least one for a unit",
    )
    issue.add_argument("--operator", action="store_true", help="an operator, not a unit")
    issue.add_argument("--out", type=Path, required=True, help="directory to write into")
    issue.add_argument(
        "--days", type=int, default=30, help="validity in days (default: %(default)s)"
    )
    listing = unit_sub.add_parser(
        "list",
        help="the certificates issued: name, role, fingerprint, expiry, revoked",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per certificate")
    revoke = unit_sub.add_parser(
        "revoke",
        help="revoke every certificate a unit (or operator) holds, from the next call on",
    )
    revoke.add_argument("name", help="the unit's (or operator's) name")
    revoke.add_argument("--operator", action="store_true", help="an operator, not a unit")
    revoke.add_argument("--reason", default="revoked by the operator", help="kept in the register")
    for command, body in ((issue, _issue), (listing, _list), (revoke, _revoke)):
        add_data_dir_option(command)
        command.set_defaults(func=lambda ns, body=body: run_command(body, ns))


def _bad(message: str) -> CommandFailed:
    return CommandFailed(exit_codes.BAD_INPUT, message)


def _roles(values: list[str], *, operator: bool) -> tuple[UnitRole, ...]:
    named = [r.strip() for value in values for r in value.split(",") if r.strip()]
    if operator:
        if named:
            raise _bad("an operator has no unit roles; leave out --role with --operator")
        return ()
    if not named:
        raise _bad(f"a unit needs at least one --role: {_ROLE_HELP}")
    unknown = sorted(set(named) - set(get_args(UnitRole)))
    if unknown:
        raise _bad(f"unknown role {', '.join(unknown)}; the roles are {', '.join(UNIT_ROLES)}")
    return tuple(r for r in UNIT_ROLES if r in named)


def _issue(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    if ns.name == "ca":
        raise _bad("the name 'ca' is taken by ca.pem in the output directory; choose another")
    if not 1 <= ns.days <= 397:
        raise _bad("--days must be 1-397 (certificates are short-lived; re-issue to renew)")
    roles = _roles(ns.role, operator=ns.operator)
    ca = load_ca(config)
    valid_for = timedelta(days=ns.days)
    kind: IssuedKind = "operator" if ns.operator else "unit"
    if ns.operator:
        material = tls.issue_operator_certificate(ca, name=ns.name, valid_for=valid_for)
    else:
        material = tls.issue_unit_certificate(ca, unit=ns.name, roles=roles, valid_for=valid_for)
    out: Path = ns.out
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    certificate_path = out / f"{ns.name}.pem"
    certificate = material.certificate
    now = _now_text()
    with IssuedRegister(config.tls_dir).changing() as records:
        replaced = revoke_held(
            records, name=ns.name, kind=kind, at=now, why="replaced by a new certificate"
        )
        for old in replaced:
            deny(config.peers_dir, old.fingerprint, f"{kind} {ns.name} issued again")
        records.append(
            IssuedCertificate(
                name=ns.name,
                kind=kind,
                roles=roles,
                fingerprint=material.fingerprint,
                issued_at=now,
                not_after=certificate.not_valid_after_utc.isoformat(timespec="seconds"),
            )
        )
        tls.replace_certified_key(
            material, certificate_path=certificate_path, key_path=out / f"{ns.name}.key"
        )
        (out / "ca.pem").write_bytes(ca.certificate_pem)
    identity = tls.uri_names(material.certificate_pem)[0]
    print(f"issued {kind} {ns.name} of {config.node_id}: {identity}")
    if roles:
        print(f"  roles:       {', '.join(roles)}")
    print(f"  certificate: {certificate_path} (sha256 {material.fingerprint})")
    print(f"  key:         {out / (ns.name + '.key')} (mode 0600; keep it on the unit's machine)")
    print(f"  node CA:     {out / 'ca.pem'}")
    print(f"  valid until: {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    for old in replaced:
        print(f"  revoked the certificate it held before: sha256 {old.fingerprint}")
    return exit_codes.OK


def _state(record: IssuedCertificate, denied: frozenset[str], now: datetime) -> str:
    if record.revoked_at or record.fingerprint in denied:
        return "revoked"
    return "expired" if record.expired(now) else "valid"


def _list(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    records = IssuedRegister(config.tls_dir).all()
    denied = read_denied(config.peers_dir / DENIED_FILE)
    now = datetime.now(UTC)
    rows = [
        {
            "name": r.name,
            "kind": r.kind,
            "roles": list(r.roles),
            "fingerprint": r.fingerprint,
            "issued_at": r.issued_at,
            "not_after": r.not_after,
            "state": _state(r, denied, now),
            "revoked_at": r.revoked_at,
            "revoked_why": r.revoked_why,
        }
        for r in records
    ]
    if ns.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return exit_codes.OK
    if not rows:
        print(f"no certificates issued by {config.node_id} yet (`hashex unit issue`)")
        return exit_codes.OK
    print(f"{'NAME':<20} {'KIND':<8} {'ROLES':<28} {'STATE':<8} {'EXPIRES':<17} SHA256")
    for row in rows:
        roles = ",".join(cast(list[str], row["roles"])) or "-"
        expires = str(row["not_after"])[:16].replace("T", " ")
        print(
            f"{row['name']:<20} {row['kind']:<8} {roles:<28} {row['state']:<8} {expires:<17} "
            f"{row['fingerprint']}"
        )
    valid = sum(1 for row in rows if row["state"] == "valid")
    print(f"{len(rows)} certificate(s) issued, {valid} valid")
    return exit_codes.OK


def _revoke(ns: argparse.Namespace) -> int:
    config = load_config(ns.data_dir.resolve())
    kind: IssuedKind = "operator" if ns.operator else "unit"
    with IssuedRegister(config.tls_dir).changing() as records:
        if not any(r.name == ns.name and r.kind == kind for r in records):
            raise CommandFailed(
                exit_codes.NOT_FOUND,
                f"no {kind} named {ns.name} was issued by this node (`hashex unit list`); a "
                "certificate from before the register is revoked with `hashex peer revoke --cert`",
            )
        revoked = revoke_held(records, name=ns.name, kind=kind, at=_now_text(), why=ns.reason)
        for record in revoked:
            deny(config.peers_dir, record.fingerprint, f"{kind} {ns.name}: {ns.reason}")
    if not revoked:
        print(f"{kind} {ns.name} holds no certificate that is not revoked; nothing changed")
        return exit_codes.OK
    for record in revoked:
        print(f"revoked {kind} {ns.name}: sha256 {record.fingerprint}")
    print("  the gateway refuses it from the next call on")
    return exit_codes.OK


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
