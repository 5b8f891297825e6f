"""Unit roles through a real node's gateway (mutual TLS, real certificates), and the admin socket:
each refusal names the role needed, changes nothing and is in the audit log."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.sdk.trace import TracerProvider

from hashex.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.cli import exit_codes
from services.cli.main import main as hashex_main
from services.core import tls
from services.core.audit.recorder import AuditRecorder
from services.core.audit.store import AuditStore
from services.core.errors import FailedPrecondition
from services.gateway.admin_socket import start_admin_socket
from tests.federation.harness import Agency
from tests.federation.test_security import RECEIVER, audit_log, last_audit_seq, lone_node, refusal
from tests.registry.node_harness import md5, submission
from tests.waiting import wait_for

SUBMIT = "/hashex.v1.Registry/SubmitMedia"
RETRACT = "/hashex.v1.Registry/RetractMedia"


def _stub(node: Agency, unit: str, *roles: Any) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(node.unit_channel(unit, roles))


async def _submit(stub: registry_pb2_grpc.RegistryStub, media_id: str, byte: bytes) -> Any:
    request = registry_pb2.SubmitMediaRequest(media=[submission(media_id, md5(byte * 16))])
    return await stub.SubmitMedia(iter([request]))


async def _audited(node: Agency, since: int, count: int) -> list[dict[str, Any]]:
    """The audit records after `since`, once there are `count` (each is written as its call
    ends, which may be just after the client saw the answer)."""

    async def written() -> bool:
        return len(await audit_log(node, after_seq=since)) >= count

    await wait_for(written, 10.0, f"{count} audit records were not written")
    return await audit_log(node, after_seq=since)


async def _retracted(node: Agency, media_id: str) -> bool:
    rows = await node.fetch(
        "SELECT retracted_at IS NOT NULL AS gone FROM media WHERE origin = $1 AND media_id = $2",
        RECEIVER,
        media_id,
    )
    return bool(rows[0]["gone"])


async def test_a_submitter_changes_only_what_its_own_unit_submitted(
    pg_server: Any, tmp_path: Path
) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        desk_a, desk_b = _stub(node, "desk-a", "submitter"), _stub(node, "desk-b", "submitter")
        await _submit(desk_a, "a1", b"a")
        await _submit(desk_b, "b1", b"b")
        since = await last_audit_seq(node)

        error = await refusal(
            desk_b.RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["a1"]))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "a1 (unit desk-a) not submitted by unit desk-b" in (error.details() or "")
        assert not await _retracted(node, "a1")
        # Resubmitting another unit's media with more signals is a change too: refused whole.
        error = await refusal(_submit(desk_b, "a1", b"c"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        update = registry_pb2.UpdateMediaRequest(
            media_ids=["b1", "a1"],
            values=registry_pb2.MediaUpdate(flags=common_pb2.MediaFlags(distributed=True)),
        )
        update.update_mask.paths.append("flags.distributed")
        error = await refusal(desk_b.UpdateMedia(update))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        refused = await _audited(node, since, 3)
        assert [(r["caller"], r["method"], r["status"]) for r in refused] == [
            (tls.unit_uri(RECEIVER, "desk-b"), RETRACT, "PERMISSION_DENIED"),
            (tls.unit_uri(RECEIVER, "desk-b"), SUBMIT, "PERMISSION_DENIED"),
            (
                tls.unit_uri(RECEIVER, "desk-b"),
                "/hashex.v1.Registry/UpdateMedia",
                "PERMISSION_DENIED",
            ),
        ]

        own = await desk_b.RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["b1"]))
        assert own.retracted == 1 and await _retracted(node, "b1")
        supervisor = _stub(node, "chief", "supervisor")
        done = await supervisor.RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["a1"]))
        assert done.retracted == 1 and await _retracted(node, "a1")
        submitters = await node.fetch(
            "SELECT m.media_id, s.submitted_by FROM media m "
            "JOIN media_submitters s ON s.media_row = m.id ORDER BY m.media_id"
        )
        assert [(r["media_id"], r["submitted_by"]) for r in submitters] == [
            ("a1", "unit:desk-a"),
            ("b1", "unit:desk-b"),
        ]


async def test_each_role_reaches_only_its_methods(pg_server: Any, tmp_path: Path) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        analyst = _stub(node, "reader", "analyst")
        since = await last_audit_seq(node)
        error = await refusal(_submit(analyst, "x1", b"x"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the role submitter or supervisor" in (error.details() or "")
        assert await node.media_ids(RECEIVER) == set()
        [record] = await _audited(node, since, 1)
        assert (record["caller"], record["method"], record["status"]) == (
            tls.unit_uri(RECEIVER, "reader"),
            SUBMIT,
            "PERMISSION_DENIED",
        )
        lookup = registry_pb2.LookupRequest(signals=[md5(b"x" * 16)])
        assert len((await analyst.Lookup(lookup)).results) == 1

        submitter = _stub(node, "uploader", "submitter")
        await _submit(submitter, "x1", b"x")
        error = await refusal(submitter.Lookup(lookup))
        assert "needs the role analyst or supervisor" in (error.details() or "")
        victim = registry_pb2.UpdateVictimRequest(
            series_id="s1", victim_id="v1", status=common_pb2.IDENTIFICATION_STATUS_IDENTIFIED
        )
        await submitter.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id="s1"))
        error = await refusal(submitter.UpdateVictim(victim))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the role victim-id or supervisor" in (error.details() or "")
        answer = await _stub(node, "vid-desk", "victim-id").UpdateVictim(victim)
        assert answer.victim.status == common_pb2.IDENTIFICATION_STATUS_IDENTIFIED


async def test_a_unit_certificate_without_roles_is_told_to_get_a_new_one(
    pg_server: Any, tmp_path: Path
) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        legacy = registry_pb2_grpc.RegistryStub(_legacy_unit_channel(node, "old-desk"))
        error = await refusal(legacy.Lookup(registry_pb2.LookupRequest(signals=[md5(b"o" * 16)])))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "carries no role" in (error.details() or "")
        assert "hashex unit issue old-desk --role" in (error.details() or "")


async def test_the_admin_socket_is_owner_only_audited_and_never_taken_over(
    pg_server: Any, tmp_path: Path
) -> None:
    async with lone_node(tmp_path, pg_server) as node:
        socket_path = node.config.admin_socket_path
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        since = await last_audit_seq(node)
        await node.submit(submission("s1", md5(b"s" * 16)))
        [record] = await _audited(node, since, 1)
        assert (record["caller"], record["role"], record["method"], record["status"]) == (
            tls.operator_uri(RECEIVER, "admin-socket"),
            "admin",
            SUBMIT,
            "OK",
        )
        # A second node on the same data directory must not steal the socket (grpc would
        # replace the file when it binds).
        with pytest.raises(FailedPrecondition, match="already running"):
            await start_admin_socket(
                node.config,
                [],
                recorder=AuditRecorder(AuditStore(node.running.database)),
                tracer_provider=TracerProvider(),
            )
        assert (await node.registry().GetStats(registry_pb2.GetStatsRequest())).media_count == 1


def _legacy_unit_channel(node: Agency, unit: str) -> grpc.aio.Channel:
    """A unit certificate as hashex issued them before units had roles (no OU in the subject),
    signed by the node's CA."""
    config = node.config
    ca = tls.load_node_ca(
        node_id=node.node_id,
        certificate_path=config.tls_dir / "ca.pem",
        key_path=config.tls_dir / "ca.key",
    )
    ca_key = serialization.load_pem_private_key(ca.material.private_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hashex unit {unit}")]))
        .issuer_name(ca.material.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(tls.unit_uri(node.node_id, unit))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    identity = tls.CertifiedKey(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    credentials = tls.channel_credentials(identity, trusted_server_cas=[ca.certificate_pem])
    channel = grpc.aio.secure_channel(node.running.gateway_address, credentials)
    node.channels.append(channel)
    return channel


async def test_the_cli_says_a_refusal_is_a_refusal(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role refusal exits 6 (not 3, "unreachable") with the role named; nothing is stored."""
    async with lone_node(tmp_path, pg_server) as node:
        out = tmp_path / "reader"
        issue = ["unit", "issue", "reader", "--role", "analyst", "--out", str(out)]
        assert await asyncio.to_thread(hashex_main, [*issue, "--data-dir", str(node.data_dir)]) == 0
        gateway = ["--cert", str(out / "reader.pem"), "--gateway", node.running.gateway_address]
        hashes = tmp_path / "hashes.jsonl"
        hashes.write_text(
            json.dumps({"path": "a.jpg", "media_type": "image", "md5": "ab" * 16}) + "\n"
        )
        capsys.readouterr()
        submit = ["submit", str(hashes), *gateway, "--data-dir", str(node.data_dir)]
        code = await asyncio.to_thread(hashex_main, submit)
        refused = capsys.readouterr().err
        assert code == exit_codes.REFUSED, refused
        assert "needs the role submitter or supervisor" in refused
        assert await node.media_ids(RECEIVER) == set()
        lookup = ["lookup", f"md5:{'ab' * 16}", *gateway, "--data-dir", str(node.data_dir)]
        assert await asyncio.to_thread(hashex_main, lookup) == exit_codes.NO_MATCH
