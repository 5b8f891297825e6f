"""Who is calling, decided from the verified client certificate alone (never from metadata).

TLS has already checked that the leaf chains to *some* CA this gateway trusts (its own or a
pinned peer's). That is not enough: peer A's CA could mint a certificate naming node B. So each
call also checks that the leaf was issued by the one CA pinned for the node id in its URI SAN,
that it is valid now (a connection may outlive its certificate), that neither the leaf nor that
CA is on the deny-list (revocation without restart; grpcio checks no CRLs), and that the
connection is TLS 1.3 (grpcio Python cannot set a minimum version on the server).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from services.core import tls
from services.core.caller import Caller, Role, UnitRole
from services.core.errors import InvalidArgument

REQUIRED_TLS_VERSION = "TLSv1.3"
_SPIFFE_SCHEME = "spiffe://hashex/"


class PinnedPeer(Protocol):
    """What the gateway needs of a pinned peer card."""

    @property
    def ca_certificate_pem(self) -> bytes: ...


class TrustSource(Protocol):
    """The part of services.core.trust.TrustStore the gateway uses; cheap to call per call."""

    def peers(self) -> Mapping[str, PinnedPeer]: ...

    def denied(self) -> frozenset[str]: ...

    def client_cas(self) -> list[bytes]: ...


@dataclass(frozen=True)
class Presented:
    """What a refused caller presented, for the audit record: its URI SAN and fingerprint (empty
    when there was no certificate at all)."""

    uri: str = ""
    fingerprint: str = ""


class Unauthenticated(Exception):
    """The caller's certificate does not establish an identity here. The message is safe to
    send: it names what to fix, not what the gateway trusts."""

    def __init__(self, message: str, presented: Presented) -> None:
        super().__init__(message)
        self.presented = presented


@dataclass(frozen=True)
class _Leaf:
    uri: str
    node_id: str
    kind: tls.IdentityKind
    name: str | None
    fingerprint: str
    not_before: datetime
    not_after: datetime
    unit_roles: frozenset[UnitRole]


class CallerVerifier:
    """Turns a call's auth context into a Caller, or raises Unauthenticated."""

    def __init__(
        self,
        *,
        own_node_id: str,
        own_ca_pem: bytes,
        trust: TrustSource,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._own_node_id = own_node_id
        self._own_ca_pem = own_ca_pem
        self._own_ca_fingerprint = tls.certificate_fingerprint(own_ca_pem)
        self._trust = trust
        self._now = now

    def verify(self, auth_context: Mapping[str, Iterable[bytes]]) -> Caller:
        leaf_pem = _single(auth_context, "x509_pem_cert")
        if leaf_pem is None or _single(auth_context, "transport_security_type") != b"ssl":
            raise Unauthenticated("a client certificate is required (mutual TLS)", Presented())
        try:
            leaf = _parse_leaf(leaf_pem)
        except (InvalidArgument, ValueError) as error:
            message = str(error) if isinstance(error, InvalidArgument) else "unreadable"
            raise Unauthenticated(
                message, Presented(fingerprint=_fingerprint_of(leaf_pem))
            ) from None
        presented = Presented(leaf.uri, leaf.fingerprint)
        version = _single(auth_context, "ssl_tls_version")
        if version != REQUIRED_TLS_VERSION.encode():
            raise Unauthenticated(f"the gateway accepts {REQUIRED_TLS_VERSION} only", presented)
        ca_pem = self._ca_for(leaf.node_id)
        if ca_pem is None or not _issued_by(leaf_pem, ca_pem):
            raise Unauthenticated(
                f"the certificate for {leaf.uri} is not issued by the CA this node pinned for "
                f"{leaf.node_id}; use a certificate from that node's own CA",
                presented,
            )
        now = self._now()
        if not leaf.not_before <= now <= leaf.not_after:
            raise Unauthenticated("the client certificate is expired or not yet valid", presented)
        denied = self._trust.denied()
        ca_fingerprint = (
            self._own_ca_fingerprint if ca_pem == self._own_ca_pem else _fingerprint_of(ca_pem)
        )
        if leaf.fingerprint in denied or ca_fingerprint in denied:
            raise Unauthenticated(
                "the client certificate has been revoked; ask the node's operator for a new one",
                presented,
            )
        return Caller(
            node_id=leaf.node_id,
            kind=leaf.kind,
            name=leaf.name,
            role=self._role_of(leaf),
            fingerprint=leaf.fingerprint,
            unit_roles=leaf.unit_roles if leaf.kind == "unit" else frozenset(),
        )

    def _ca_for(self, node_id: str) -> bytes | None:
        if node_id == self._own_node_id:
            return self._own_ca_pem
        peer = self._trust.peers().get(node_id)
        return peer.ca_certificate_pem if peer is not None else None

    def _role_of(self, leaf: _Leaf) -> Role:
        if leaf.node_id == self._own_node_id:
            if leaf.kind == "unit":
                return "unit"
            if leaf.kind == "operator":
                return "operator"
            return "none"  # the node's own certificate has no business with its own gateway
        return "peer" if leaf.kind == "node" else "none"


def _single(auth_context: Mapping[str, Iterable[bytes]], key: str) -> bytes | None:
    values = list(auth_context.get(key) or ())
    return bytes(values[0]) if len(values) == 1 else None


# Parsing and the signature check are pure functions of the PEM bytes; long-lived callers make
# many calls with the same certificate, so both are cached (bounded). Revocation, validity and
# the pinned CA are still checked on every call.
@functools.lru_cache(maxsize=1024)
def _parse_leaf(leaf_pem: bytes) -> _Leaf:
    certificate = x509.load_pem_x509_certificate(leaf_pem)
    uris = [u for u in tls.uri_names(leaf_pem) if u.startswith(_SPIFFE_SCHEME)]
    if len(uris) != 1:
        raise InvalidArgument("the client certificate must carry exactly one hashex URI SAN")
    node_id, kind, name = tls.parse_identity(uris[0])
    return _Leaf(
        uri=uris[0],
        node_id=node_id,
        kind=kind,
        name=name,
        fingerprint=tls.certificate_fingerprint(leaf_pem),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        unit_roles=tls.unit_roles_of(certificate) if kind == "unit" else frozenset(),
    )


@functools.lru_cache(maxsize=1024)
def _issued_by(leaf_pem: bytes, ca_pem: bytes) -> bool:
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@functools.lru_cache(maxsize=256)
def _fingerprint_of(pem: bytes) -> str:
    try:
        return tls.certificate_fingerprint(pem)
    except ValueError:
        return ""
