"""`hashex node renew-cert` and the renewal `node init` does: at any time, also when the
certificate expired, saying truthfully what happened, and picked up by a running gateway from
its next connection without a restart."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from services.cli.main import main
from services.cli.node_material import load_ca, node_cert_paths
from services.core import tls
from services.core.audit.store import AuditStore
from services.core.config import load_config
from services.core.trust import TrustStore
from services.gateway.app import start_gateway
from tests.signed_caller import WORKING_ROLES
from tests.store_calls import database_of


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    data_dir = tmp_path / "gb"
    code, _, err = run(
        capsys, "node", "init", "--node-id", "gb-nca", "--data-dir", data_dir,
        "--gateway-listen", "127.0.0.1:0", "--gateway-host", "gw.internal",
    )  # fmt: skip
    assert code == 0, err
    return data_dir


def expiry(path: Path) -> datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def expire_node_certificate(data_dir: Path) -> datetime:
    """Replace tls/node.pem by one that expired 10 days ago (same CA and hosts)."""
    config = load_config(data_dir)
    old = tls.issue_node_certificate(
        load_ca(config),
        dns_names=["localhost", "gw.internal"],
        now=datetime.now(UTC) - timedelta(days=40),
    )
    certificate_path, key_path = node_cert_paths(config)
    tls.replace_certified_key(old, certificate_path=certificate_path, key_path=key_path)
    return expiry(certificate_path)


def test_init_renews_an_expired_certificate_and_says_it_had_expired(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expired = expire_node_certificate(node)
    code, out, _ = run(capsys, "node", "init", "--node-id", "gb-nca", "--data-dir", node)
    assert code == 0
    assert f"renewed: it had expired on {expired:%Y-%m-%d %H:%M} UTC" in out
    assert "before expiry" not in out
    assert expiry(node / "tls" / "node.pem") > datetime.now(UTC) + timedelta(days=29)


def test_renew_cert_renews_at_any_time_and_reports_both_expiries(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = node / "tls" / "node.pem"
    before = expiry(pem)
    code, out, err = run(capsys, "node", "renew-cert", "--data-dir", node)
    assert code == 0, err
    after = expiry(pem)
    assert after >= before
    assert f"the old one would have expired on {before:%Y-%m-%d %H:%M} UTC" in out
    assert f"valid until {after:%Y-%m-%d %H:%M} UTC" in out
    names = x509.load_pem_x509_certificate(pem.read_bytes()).extensions
    sans = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gw.internal" in sans.get_values_for_type(x509.DNSName), "host names are kept"

    expired = expire_node_certificate(node)
    code, out, _ = run(capsys, "node", "renew-cert", "--data-dir", node)
    assert code == 0 and f"the old one had expired on {expired:%Y-%m-%d %H:%M} UTC" in out


def served_certificate(port: int, ca_pem: bytes, client: Path) -> bytes:
    """The DER certificate the gateway presents to a new TLS 1.3 connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=ca_pem.decode())
    context.load_cert_chain(client / "unit.pem", client / "unit.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return der


async def test_a_running_gateway_presents_the_renewed_certificate_without_restart(
    node: Path, db_pool: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expire_node_certificate(node)
    config = load_config(node)
    ca = load_ca(config)
    unit = tls.issue_unit_certificate(ca, unit="desk", roles=WORKING_ROLES)
    client = tmp_path / "client"
    tls.write_certified_key(
        unit, certificate_path=client / "unit.pem", key_path=client / "unit.key"
    )
    certificate_path, key_path = node_cert_paths(config)
    gateway = await start_gateway(
        config,
        [],
        audit=AuditStore(database_of(db_pool)),
        trust=TrustStore(config.peers_dir, ca.certificate_pem, own_node_id="gb-nca"),
        identity=lambda: tls.load_certified_key(
            certificate_path=certificate_path, key_path=key_path
        ),
    )
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            await asyncio.to_thread(served_certificate, gateway.port, ca.certificate_pem, client)
        # What grpc reports for it reaches the user as what it is.
        (client / "ca.pem").write_bytes(ca.certificate_pem)
        code, _, err = await asyncio.to_thread(
            run, capsys, "stats", "--cert", client / "unit.pem",
            "--gateway", f"127.0.0.1:{gateway.port}", "--data-dir", node,
        )  # fmt: skip
        assert code == 3
        assert "presents a certificate that has expired" in err and "renew-cert" in err
        assert "is it running" not in err
        code, _, err = await asyncio.to_thread(
            run, capsys, "node", "renew-cert", "--data-dir", node
        )
        assert code == 0, err
        der = await asyncio.to_thread(served_certificate, gateway.port, ca.certificate_pem, client)
        renewed = x509.load_der_x509_certificate(der)
        assert renewed.not_valid_after_utc == expiry(certificate_path)
        assert renewed.not_valid_after_utc > datetime.now(UTC) + timedelta(days=29)
        config.gateway_address_file.parent.mkdir(parents=True, exist_ok=True)
        config.gateway_address_file.write_text(f"127.0.0.1:{gateway.port}\n")
        _, out, _ = await asyncio.to_thread(run, capsys, "node", "status", "--data-dir", node)
        assert f"node gb-nca: running, gateway 127.0.0.1:{gateway.port}" in out
    finally:
        await gateway.stop(0)
    _, out, _ = run(capsys, "node", "status", "--data-dir", node)
    assert "node gb-nca: not running" in out, "the address file left behind says nothing"


def unit_files(directory: Path, ca: tls.NodeCa, *, now: datetime, ca_pem: bytes = b"") -> Path:
    """desk.pem, desk.key and ca.pem as `hashex unit issue` writes them, issued at `now`."""
    unit = tls.issue_unit_certificate(ca, unit="desk", roles=WORKING_ROLES, now=now)
    pem = directory / "desk.pem"
    tls.write_certified_key(unit, certificate_path=pem, key_path=directory / "desk.key")
    (directory / "ca.pem").write_bytes(ca_pem or ca.certificate_pem)
    return pem


@pytest.mark.parametrize(
    ("issued", "said"),
    [(timedelta(days=-40), "expired on"), (timedelta(days=3), "is not valid before")],
)
def test_an_unusable_unit_certificate_is_named_before_dialing(
    node: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], issued: timedelta, said: str
) -> None:
    ca = load_ca(load_config(node))
    pem = unit_files(tmp_path, ca, now=datetime.now(UTC) + issued)
    # Port 9 (discard) on loopback: nothing there; the command must not even try.
    code, _, err = run(
        capsys, "stats", "--cert", pem, "--gateway", "127.0.0.1:9", "--data-dir", node
    )
    assert code == 2
    assert f"the certificate {pem} {said}" in err
    assert "ask the node's operator for a new one (`hashex unit issue" in err
    assert "is it running" not in err


def test_an_expired_node_ca_file_is_named_before_dialing(
    node: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = load_ca(load_config(node))
    old_ca = tls.create_node_ca(
        node_id="gb-nca", valid_for=timedelta(days=10), now=datetime.now(UTC) - timedelta(days=20)
    )
    pem = unit_files(tmp_path, ca, now=datetime.now(UTC), ca_pem=old_ca.certificate_pem)
    code, _, err = run(
        capsys, "stats", "--cert", pem, "--gateway", "127.0.0.1:9", "--data-dir", node
    )
    assert code == 2 and f"the node's CA certificate {tmp_path / 'ca.pem'} expired on" in err


def test_node_status_warns_seven_days_before_a_certificate_expires(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "node", "status", "--data-dir", node)
    assert code == 0 and "node gb-nca: not running" in out
    assert "WARNING" not in out + err
    assert "signing key ed25519:1: current" in out

    config = load_config(node)
    soon = tls.issue_node_certificate(load_ca(config), now=datetime.now(UTC) - timedelta(days=25))
    certificate_path, key_path = node_cert_paths(config)
    tls.replace_certified_key(soon, certificate_path=certificate_path, key_path=key_path)
    code, out, err = run(capsys, "node", "status", "--data-dir", node)
    assert code == 0
    assert f"WARNING: the node certificate {certificate_path} expires in 4 days" in out
    assert "hashex node renew-cert" in err
    code, out, _ = run(capsys, "node", "status", "--json", "--data-dir", node)
    report = json.loads(out)
    warned = [c["name"] for c in report["certificates"] if c["warning"]]
    assert warned == ["node certificate"]
    assert report["signing_keys"] == [
        {"key_id": "ed25519:1", "state": "current", "revoked_from_seq": 0, "file_present": True}
    ]
