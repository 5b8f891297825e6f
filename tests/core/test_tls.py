"""Mutual TLS with the node CA's certificates: a real grpc.aio server from `build_server` on
loopback, real handshakes, and the identity a handler sees."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from services.core import tls
from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.server import RunningServer, ServiceBinding, build_server
from tests.signed_caller import WORKING_ROLES

WHOAMI = "/hashex.test.Whoami/Get"
CALL_TIMEOUT_S = 10.0


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    """Echo what the TLS layer verified: the client's SANs, then its leaf certificate."""
    auth = context.auth_context()
    sans = b",".join(auth.get("x509_subject_alternative_name", []))
    leaf = b"".join(auth.get("x509_pem_cert", []))
    return sans + b"\n" + leaf


def _whoami_binding() -> ServiceBinding:
    handler = grpc.method_handlers_generic_handler(
        "hashex.test.Whoami", {"Get": grpc.unary_unary_rpc_method_handler(_whoami)}
    )
    return ServiceBinding(
        "hashex.test.Whoami", lambda server: server.add_generic_rpc_handlers((handler,))
    )


@pytest.fixture(scope="module")
def node_ca() -> tls.NodeCa:
    return tls.create_node_ca(node_id="gb-nca")


@pytest.fixture
async def server(node_ca: tls.NodeCa) -> AsyncIterator[RunningServer]:
    identity = tls.issue_node_certificate(node_ca)
    running = await build_server(
        listen="127.0.0.1:0",
        services=[_whoami_binding()],
        tracer_provider=TracerProvider(),
        credentials=tls.server_credentials(identity, trusted_client_cas=[node_ca.certificate_pem]),
    )
    try:
        yield running
    finally:
        await running.stop(0)


async def _health(port: int, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        return int(response.status)


async def _refused(port: int, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _health(port, credentials)
    code: grpc.StatusCode = refused.value.code()
    return code


async def test_unit_of_the_node_is_served_and_seen_by_its_uri(
    server: RunningServer, node_ca: tls.NodeCa
) -> None:
    unit = tls.issue_unit_certificate(node_ca, unit="ceop-desk", roles=WORKING_ROLES)
    credentials = tls.channel_credentials(unit, trusted_server_cas=[node_ca.certificate_pem])
    assert await _health(server.port, credentials) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        whoami = channel.unary_unary(WHOAMI, request_serializer=None, response_deserializer=None)
        reply: bytes = await whoami(b"", timeout=CALL_TIMEOUT_S)
    sans, _, leaf = reply.partition(b"\n")
    assert sans.decode() == "spiffe://hashex/node/gb-nca/unit/ceop-desk"
    assert tls.certificate_fingerprint(leaf) == unit.fingerprint


async def test_client_without_certificate_is_refused(
    server: RunningServer, node_ca: tls.NodeCa
) -> None:
    credentials = tls.channel_credentials(None, trusted_server_cas=[node_ca.certificate_pem])
    assert await _refused(server.port, credentials) == grpc.StatusCode.UNAVAILABLE


async def test_client_certified_by_another_ca_is_refused(
    server: RunningServer, node_ca: tls.NodeCa
) -> None:
    stranger = tls.issue_unit_certificate(
        tls.create_node_ca(node_id="xx-rogue"), unit="ceop-desk", roles=WORKING_ROLES
    )
    credentials = tls.channel_credentials(stranger, trusted_server_cas=[node_ca.certificate_pem])
    assert await _refused(server.port, credentials) == grpc.StatusCode.UNAVAILABLE


async def test_expired_client_certificate_is_refused(
    server: RunningServer, node_ca: tls.NodeCa
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=60)
    expired = tls.issue_unit_certificate(
        node_ca, unit="old-desk", roles=WORKING_ROLES, now=long_ago
    )
    credentials = tls.channel_credentials(expired, trusted_server_cas=[node_ca.certificate_pem])
    assert await _refused(server.port, credentials) == grpc.StatusCode.UNAVAILABLE


async def test_client_refuses_a_server_it_does_not_trust(
    server: RunningServer, node_ca: tls.NodeCa
) -> None:
    other = tls.create_node_ca(node_id="fr-ocrvp")
    unit = tls.issue_unit_certificate(node_ca, unit="ceop-desk", roles=WORKING_ROLES)
    credentials = tls.channel_credentials(unit, trusted_server_cas=[other.certificate_pem])
    assert await _refused(server.port, credentials) == grpc.StatusCode.UNAVAILABLE


def test_certificates_carry_identity_usages_and_short_validity(node_ca: tls.NodeCa) -> None:
    node = tls.issue_node_certificate(node_ca).certificate
    unit = tls.issue_unit_certificate(node_ca, unit="ceop-desk", roles=WORKING_ROLES).certificate
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://hashex/node/gb-nca"
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    unit_usages = unit.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(unit_usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for leaf in (node, unit):
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=5)
    ca = node_ca.material.certificate
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=5 * 365)


def test_leaf_never_outlives_its_ca() -> None:
    ca = tls.create_node_ca(node_id="gb-nca", valid_for=timedelta(days=3))
    leaf = tls.issue_unit_certificate(ca, unit="ceop-desk", roles=WORKING_ROLES).certificate
    assert leaf.not_valid_after_utc == ca.material.certificate.not_valid_after_utc


def test_unit_names_are_one_path_segment(node_ca: tls.NodeCa) -> None:
    with pytest.raises(InvalidArgument, match="unit name"):
        tls.issue_unit_certificate(node_ca, unit="desk/../../other-node", roles=WORKING_ROLES)


def test_files_round_trip_with_private_keys_0600(tmp_path: Path, node_ca: tls.NodeCa) -> None:
    unit = tls.issue_unit_certificate(node_ca, unit="ceop-desk", roles=WORKING_ROLES)
    paths = {"certificate_path": tmp_path / "ca.crt", "key_path": tmp_path / "keys" / "ca.key"}
    tls.write_certified_key(node_ca.material, **paths)
    tls.write_certified_key(unit, certificate_path=tmp_path / "u.crt", key_path=tmp_path / "u.key")
    for key in (paths["key_path"], tmp_path / "u.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert tls.load_node_ca(node_id="gb-nca", **paths) == node_ca
    loaded = tls.load_certified_key(
        certificate_path=tmp_path / "u.crt", key_path=tmp_path / "u.key"
    )
    assert loaded == unit
    assert tls.uri_names(loaded.certificate_pem) == ("spiffe://hashex/node/gb-nca/unit/ceop-desk",)
    with pytest.raises(FailedPrecondition, match="not a CA"):
        tls.load_node_ca(
            node_id="gb-nca", certificate_path=tmp_path / "u.crt", key_path=tmp_path / "u.key"
        )


def test_loading_refuses_open_keys_and_mismatched_pairs(
    tmp_path: Path, node_ca: tls.NodeCa
) -> None:
    unit = tls.issue_unit_certificate(node_ca, unit="ceop-desk", roles=WORKING_ROLES)
    tls.write_certified_key(unit, certificate_path=tmp_path / "u.crt", key_path=tmp_path / "u.key")
    with pytest.raises(FailedPrecondition, match="does not belong"):
        tls.load_certified_key(
            certificate_path=tmp_path / "u.crt", key_path=_ca_key(tmp_path, node_ca)
        )
    (tmp_path / "u.key").chmod(0o644)
    with pytest.raises(FailedPrecondition, match="accessible to group or others"):
        tls.load_certified_key(certificate_path=tmp_path / "u.crt", key_path=tmp_path / "u.key")


def _ca_key(directory: Path, ca: tls.NodeCa) -> Path:
    tls.write_certified_key(
        ca.material, certificate_path=directory / "ca.crt", key_path=directory / "ca.key"
    )
    return directory / "ca.key"


def test_fingerprint_is_sha256_of_der(node_ca: tls.NodeCa) -> None:
    der = node_ca.material.certificate.public_bytes(Encoding.DER)
    assert tls.certificate_fingerprint(node_ca.certificate_pem) == hashlib.sha256(der).hexdigest()
    assert node_ca.material.fingerprint == hashlib.sha256(der).hexdigest()


NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)
NODE_IDS = st.from_regex(r"[a-z][a-z0-9-]{1,62}", fullmatch=True)


@given(node_id=NODE_IDS, name=NAMES)
def test_identities_round_trip(node_id: str, name: str) -> None:
    assert tls.parse_identity(tls.node_uri(node_id)) == (node_id, "node", None)
    assert tls.parse_identity(tls.unit_uri(node_id, name)) == (node_id, "unit", name)
    assert tls.parse_identity(tls.operator_uri(node_id, name)) == (node_id, "operator", name)


@given(
    uri=st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda tail: "spiffe://hashex/node/" + tail,
            st.text(alphabet="abcgn-/.unitoperator0\n%A", max_size=40),
        ),
    )
)
def test_any_other_identity_is_refused(uri: str) -> None:
    """Whatever parses is exactly what the builders produce; everything else is refused."""
    try:
        node_id, kind, name = tls.parse_identity(uri)
    except InvalidArgument:
        return
    rebuilt = {
        "node": lambda: tls.node_uri(node_id),
        "unit": lambda: tls.unit_uri(node_id, name or ""),
        "operator": lambda: tls.operator_uri(node_id, name or ""),
    }[kind]()
    assert rebuilt == uri


def test_parse_identity_refuses_near_misses() -> None:
    for uri in (
        "spiffe://hashex/node/gb-nca/",
        "spiffe://hashex/node/gb-nca/unit/",
        "spiffe://hashex/node/gb-nca/admin/alice",
        "spiffe://hashex/node/gb-nca/unit/a/b",
        "spiffe://hashex/node/GB-NCA",
        "spiffe://other/node/gb-nca",
        "spiffe://hashex/node/gb-nca\n",
        "spiffe://hashex/node/gb-nca/unit/..",
    ):
        with pytest.raises(InvalidArgument):
            tls.parse_identity(uri)


def test_operator_certificate_is_a_client_certificate_under_its_own_path(
    node_ca: tls.NodeCa,
) -> None:
    operator = tls.issue_operator_certificate(node_ca, name="alice")
    assert tls.uri_names(operator.certificate_pem) == (
        "spiffe://hashex/node/gb-nca/operator/alice",
    )
    usages = operator.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usages.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(InvalidArgument, match="operator name"):
        tls.issue_operator_certificate(node_ca, name="a/b")


def test_every_issued_chain_passes_a_strict_rfc5280_verifier() -> None:
    """pyca/cryptography's verifier enforces RFC 5280 as browsers and sslyze do: among others, a
    subjectAltName marked critical with a non-empty subject is refused (section 4.2.1.6)."""
    ca = tls.create_node_ca(node_id="gb-nca")
    ca_certificate = x509.load_pem_x509_certificate(ca.material.certificate_pem)
    store = verification.Store([ca_certificate])
    now = datetime.now(UTC)
    builder = verification.PolicyBuilder().store(store).time(now)

    node = tls.issue_node_certificate(
        ca, dns_names=["localhost", "gb-nca.example"], ip_addresses=["127.0.0.1"]
    )
    leaf = x509.load_pem_x509_certificate(node.certificate_pem)
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = builder.build_server_verifier(name).verify(leaf, [])
        assert chain[-1] == ca_certificate
    clients = [
        tls.issue_unit_certificate(ca, unit="cyber-desk", roles=WORKING_ROLES),
        tls.issue_operator_certificate(ca, name="ops"),
        node,  # it calls peers' gateways too
    ]
    for material in clients:
        verified = builder.build_client_verifier().verify(
            x509.load_pem_x509_certificate(material.certificate_pem), []
        )
        assert verified.chain[-1] == ca_certificate
