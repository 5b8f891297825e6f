"""`hashex unit issue|list|revoke` in-process on a real data directory (no node running)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from cryptography import x509

from services.core import tls
from services.core.trust import TrustStore
from tests.cli.conftest import Run


def _pem(out_dir: Path, name: str) -> bytes:
    return (out_dir / f"{name}.pem").read_bytes()


def test_a_unit_certificate_carries_its_roles(gb: Path, run: Run, tmp_path: Path) -> None:
    out_dir = tmp_path / "unit"
    code, out, err = run(
        "unit", "issue", "ceop-desk", "--role", "analyst,submitter", "--role", "victim-id",
        "--out", out_dir, "--data-dir", gb,
    )  # fmt: skip
    assert code == 0, err
    assert "spiffe://hashex/node/gb-nca/unit/ceop-desk" in out
    assert "roles:       analyst, submitter, victim-id" in out
    assert stat.S_IMODE((out_dir / "ceop-desk.key").stat().st_mode) == 0o600
    assert (out_dir / "ca.pem").read_bytes() == (gb / "tls" / "ca.pem").read_bytes()
    certificate = x509.load_pem_x509_certificate(_pem(out_dir, "ceop-desk"))
    assert tls.unit_roles_of(certificate) == {"analyst", "submitter", "victim-id"}
    code, out, _ = run("unit", "issue", "alice", "--operator", "--out", out_dir, "--data-dir", gb)
    assert code == 0 and "spiffe://hashex/node/gb-nca/operator/alice" in out


def test_bad_unit_requests_are_refused_and_issue_nothing(
    gb: Path, run: Run, tmp_path: Path
) -> None:
    out_dir = tmp_path / "unit"
    refused = {
        ("desk",): "needs at least one --role",
        ("desk", "--role", "boss"): "unknown role boss",
        ("desk", "--role", "analyst", "--operator"): "an operator has no unit roles",
        ("a/b", "--role", "analyst"): "unit name",
        ("ca", "--role", "analyst"): "taken by ca.pem",
    }
    for args, message in refused.items():
        code, _, err = run("unit", "issue", *args, "--out", out_dir, "--data-dir", gb)
        assert code == 2 and message in err, (args, err)
    assert not out_dir.exists() or not list(out_dir.glob("*.pem"))
    code, out, _ = run("unit", "list", "--data-dir", gb)
    assert code == 0 and "no certificates issued" in out
    (gb / "tls" / "ca.key").chmod(0o640)
    code, _, err = run(
        "unit", "issue", "desk2", "--role", "analyst", "--out", out_dir, "--data-dir", gb
    )
    assert code == 3 and "accessible to group or others" in err


def test_issuing_a_name_again_revokes_what_it_held(gb: Path, run: Run, tmp_path: Path) -> None:
    out_dir = tmp_path / "unit"
    issue = ("unit", "issue", "ceop-desk", "--out", out_dir, "--data-dir", gb)
    assert run(*issue, "--role", "analyst")[0] == 0
    first = tls.certificate_fingerprint(_pem(out_dir, "ceop-desk"))
    code, out, _ = run(*issue, "--role", "submitter")
    second = tls.certificate_fingerprint(_pem(out_dir, "ceop-desk"))
    assert code == 0 and second != first
    assert f"revoked the certificate it held before: sha256 {first}" in out
    assert TrustStore(gb / "peers", b"").denied() == {first}
    code, out, _ = run("unit", "list", "--json", "--data-dir", gb)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["name"], r["roles"], r["state"]) for r in rows] == [
        ("ceop-desk", ["analyst"], "revoked"),
        ("ceop-desk", ["submitter"], "valid"),
    ]
    assert (
        rows[0]["fingerprint"] == first
        and rows[0]["revoked_why"] == "replaced by a new certificate"
    )
    assert rows[1]["not_after"] and rows[1]["revoked_at"] == ""


def test_revoke_by_name_denies_every_certificate_it_holds(
    gb: Path, run: Run, tmp_path: Path
) -> None:
    out_dir = tmp_path / "unit"
    run("unit", "issue", "ceop-desk", "--role", "analyst", "--out", out_dir, "--data-dir", gb)
    run("unit", "issue", "ops", "--operator", "--out", out_dir, "--data-dir", gb)
    fingerprint = tls.certificate_fingerprint(_pem(out_dir, "ceop-desk"))
    code, out, _ = run("unit", "revoke", "ceop-desk", "--reason", "laptop lost", "--data-dir", gb)
    assert code == 0 and f"revoked unit ceop-desk: sha256 {fingerprint}" in out
    assert TrustStore(gb / "peers", b"").denied() == {fingerprint}
    code, out, _ = run("unit", "revoke", "ceop-desk", "--data-dir", gb)
    assert code == 0 and "nothing changed" in out
    code, _, err = run("unit", "revoke", "nobody", "--data-dir", gb)
    assert code == 4 and "no unit named nobody" in err
    code, _, err = run("unit", "revoke", "ops", "--data-dir", gb)
    assert code == 4, "an operator is revoked with --operator, never by a unit's name"
    code, out, _ = run("unit", "list", "--data-dir", gb)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "ROLES", "STATE", "EXPIRES", "SHA256"]
    assert "ceop-desk" in lines[1] and "revoked" in lines[1] and fingerprint in lines[1]
    assert "ops" in lines[2] and "valid" in lines[2]
    assert lines[-1] == "2 certificate(s) issued, 1 valid"
