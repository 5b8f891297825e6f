"""The gateway's pieces on their own: rate limiter, method table, identity checks a live TLS
connection cannot easily produce (TLS 1.2, an expired leaf on a live connection), the current
caller outside the gateway, and the credentials fetcher."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.core import tls
from services.core.caller import Caller, CallerKind, Role, UnitRole, calling_as, current_caller
from services.core.errors import PermissionDenied
from services.core.trust import TrustStore, deny
from services.gateway import authz
from services.gateway.credentials import GatewayCredentials
from services.gateway.identity import CallerVerifier, Unauthenticated
from services.gateway.limits import RateLimiter
from tests.gateway.harness import OWN, FakeClock, Pki, pin_peer


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.try_acquire("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.try_acquire("b")
    clock.now += 0.5
    assert [limiter.try_acquire("a") for _ in range(2)] == [True, False]
    clock.now += 100
    assert sum(limiter.try_acquire("a") for _ in range(5)) == 3


def _caller(role: Role, *unit_roles: UnitRole) -> Caller:
    name = None if role in ("peer", "none") else "desk"
    kind: CallerKind = "unit" if role == "unit" else "operator" if role != "peer" else "node"
    return Caller(OWN, kind, name, role, "f" * 64, frozenset(unit_roles))


def test_method_table_denies_by_default() -> None:
    analyst, submitter = _caller("unit", "analyst"), _caller("unit", "submitter")
    assert authz.is_allowed("/hashex.v1.Registry/Lookup", analyst)
    assert authz.is_allowed("/hashex.v1.Units/FederatedLookup", analyst)
    assert not authz.is_allowed("/hashex.v1.Registry/SubmitMedia", analyst)
    assert authz.is_allowed("/hashex.v1.Registry/SubmitMedia", submitter)
    assert not authz.is_allowed("/hashex.v1.Registry/Lookup", submitter)
    assert not authz.is_allowed("/hashex.v1.Registry/UpdateVictim", submitter)
    assert authz.is_allowed("/hashex.v1.Registry/UpdateVictim", _caller("unit", "victim-id"))
    assert authz.is_allowed("/hashex.v1.Registry/RetractMedia", _caller("unit", "supervisor"))
    # The node's whole own set at once: a supervisor's, not an analyst's or a submitter's.
    assert authz.is_allowed("/hashex.v1.Registry/ExportMedia", _caller("unit", "supervisor"))
    assert not authz.is_allowed("/hashex.v1.Registry/ExportMedia", analyst)
    assert not authz.is_allowed("/hashex.v1.Registry/ExportMedia", submitter)
    assert not authz.is_allowed("/hashex.v1.Units/Other", analyst)
    assert authz.is_allowed("/hashex.v1.Federation/Pull", _caller("peer"))
    assert not authz.is_allowed("/hashex.v1.Federation/Pull", analyst)
    assert authz.is_allowed("/hashex.v1.Admin/GetSyncStatus", _caller("operator"))
    assert not authz.is_allowed("/hashex.v1.Admin/GetSyncStatus", _caller("unit", "supervisor"))
    assert authz.is_allowed("/grpc.health.v1.Health/Check", _caller("none"))
    assert not authz.is_allowed("/hashex.v1.Registry/Lookup", _caller("peer"))
    assert not authz.is_allowed("/hashex.v1.Registry/Lookup", _caller("unit"))
    assert not authz.is_allowed("/hashex.v1.Something/New", _caller("operator"))
    assert not authz.is_allowed("/hashex.v1.Something/New", _caller("admin"))
    assert authz.is_allowed("/hashex.v1.Registry/UpdateVictim", _caller("admin"))


def test_refusals_name_the_role_needed() -> None:
    message = authz.refusal_message("/hashex.v1.Registry/SubmitMedia", _caller("unit", "analyst"))
    assert "unit desk (role analyst)" in message
    assert "needs the role submitter or supervisor" in message
    legacy = authz.refusal_message("/hashex.v1.Registry/Lookup", _caller("unit"))
    assert "carries no role" in legacy and "hashex unit issue desk --role" in legacy


def _auth_context(leaf: tls.CertifiedKey, version: bytes = b"TLSv1.3") -> Mapping[str, list[bytes]]:
    return {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [leaf.certificate_pem],
        "ssl_tls_version": [version],
    }


@pytest.fixture
def verifier_parts(tmp_path: Path, pki: Pki) -> tuple[TrustStore, FakeNow]:
    peers = tmp_path / "peers"
    peers.mkdir()
    pin_peer(peers, pki.peer, tmp_path / "keys")
    return TrustStore(peers, pki.own.certificate_pem, own_node_id=OWN), FakeNow()


class FakeNow:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_identity_needs_tls13_a_certificate_and_a_valid_leaf(
    pki: Pki, verifier_parts: tuple[TrustStore, FakeNow]
) -> None:
    trust, now = verifier_parts
    verifier = CallerVerifier(
        own_node_id=OWN, own_ca_pem=pki.own.certificate_pem, trust=trust, now=now
    )
    operator = tls.issue_operator_certificate(pki.own, name="ops")
    caller = verifier.verify(_auth_context(operator))
    assert (caller.role, caller.kind, caller.name) == ("operator", "operator", "ops")
    assert caller.uri == "spiffe://hashex/node/gb-nca/operator/ops"
    with pytest.raises(Unauthenticated, match=r"TLSv1\.3"):
        verifier.verify(_auth_context(operator, b"TLSv1.2"))
    with pytest.raises(Unauthenticated, match="client certificate is required"):
        verifier.verify({"transport_security_type": [b"insecure"]})
    now.now += timedelta(days=31)  # a connection that outlived its certificate
    with pytest.raises(Unauthenticated, match="expired") as refused:
        verifier.verify(_auth_context(operator))
    assert refused.value.presented.fingerprint == operator.fingerprint
    now.now -= timedelta(days=31)
    # The node's own certificate has no role at its own gateway.
    assert verifier.verify(_auth_context(pki.gateway)).role == "none"


def test_a_denied_peer_ca_refuses_all_its_leaves(
    pki: Pki, verifier_parts: tuple[TrustStore, FakeNow], tmp_path: Path
) -> None:
    trust, now = verifier_parts
    verifier = CallerVerifier(
        own_node_id=OWN, own_ca_pem=pki.own.certificate_pem, trust=trust, now=now
    )
    peer = tls.issue_node_certificate(pki.peer)
    assert verifier.verify(_auth_context(peer)).role == "peer"
    deny(tmp_path / "peers", pki.peer.material.fingerprint, "CA compromised")
    with pytest.raises(Unauthenticated, match="revoked"):
        verifier.verify(_auth_context(peer))


def test_current_caller_is_refused_outside_the_gateway() -> None:
    with pytest.raises(PermissionDenied, match="through the node's gateway"):
        current_caller()
    caller = Caller("us-fbi", "node", None, "peer", "ab" * 32)
    with calling_as(caller):
        assert current_caller() is caller
    with pytest.raises(PermissionDenied):
        current_caller()


class _FlakyTrust:
    def __init__(self, cas: list[bytes]) -> None:
        self.cas = cas
        self.fail = False

    def client_cas(self) -> list[bytes]:
        if self.fail:
            raise OSError("peers directory unreadable")
        return self.cas


def test_credentials_fetcher_reloads_on_change_and_never_raises(pki: Pki) -> None:
    trust = _FlakyTrust([pki.own.certificate_pem])
    credentials = GatewayCredentials(identity=pki.gateway, trust=trust)
    credentials.server_credentials()
    assert credentials.fetch() is None  # nothing changed since start
    trust.cas = [pki.own.certificate_pem, pki.peer.certificate_pem]
    assert credentials.fetch() is not None
    assert credentials.fetch() is None
    trust.fail = True
    assert credentials.fetch() is None  # keeps the last good configuration
