"""X.509 material for mutual TLS between nodes and units: a node CA, the leaf certificates it
issues, PEM files, and the grpcio credentials built from them.

Identity lives in the URI SAN (`spiffe://hashex/node/<id>`, `…/unit/<name>`), never in the
subject, so the gateway identifies callers by one field. A unit's roles (what it may do, not who
it is) are Organizational Unit attributes of its subject, one per role, `hashex-role:<role>` (as
Kubernetes reads group membership from a client certificate's subject); `unit_roles_of` refuses
any other OU value rather than guess. Keys are ECDSA P-256: grpcio's BoringSSL accepts
them for TLS 1.3 client and server authentication everywhere, and every tool an operator may use
to inspect a certificate understands them. grpcio checks no CRL or OCSP, so leaves are short-lived
(30 days by default) and revocation is a deny-list of fingerprints checked per call.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.core.caller import UNIT_ROLES, UnitRole
from services.core.config import check_node_id
from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.secretfile import read_secret, write_secret

DEFAULT_CA_VALIDITY = timedelta(days=5 * 365)
DEFAULT_LEAF_VALIDITY = timedelta(days=30)
DEFAULT_SERVER_DNS = ("localhost",)
DEFAULT_SERVER_IPS = ("127.0.0.1", "::1")
# Back-dating absorbs small clock differences between the issuer and whoever verifies.
_CLOCK_SKEW = timedelta(minutes=5)
_SPIFFE_PREFIX = "spiffe://hashex/node/"
_UNIT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_IDENTITY_PATTERN = re.compile(
    r"spiffe://hashex/node/(?P<node>[^/]+)(?:/(?P<kind>unit|operator)/(?P<name>[^/]+))?"
)

IdentityKind = Literal["node", "unit", "operator"]
ROLE_PREFIX = "hashex-role:"


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate and its private key, both PEM; the key is kept out of repr and logs."""

    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate_pem)


@dataclass(frozen=True)
class NodeCa:
    """A node's certificate authority: it signs the node's own certificate and its units'."""

    node_id: str
    material: CertifiedKey

    @property
    def certificate_pem(self) -> bytes:
        """What clients and peers trust (and pin) for this node."""
        return self.material.certificate_pem


def node_uri(node_id: str) -> str:
    return f"{_SPIFFE_PREFIX}{check_node_id(node_id)}"


def unit_uri(node_id: str, unit: str) -> str:
    """Unit names are one URI path segment, so no name can pose as another node's path."""
    return f"{node_uri(node_id)}/unit/{_check_name(unit, 'unit')}"


def operator_uri(node_id: str, name: str) -> str:
    """An operator of the node: same name rules as units, a different path so the gateway can
    never mistake one role for the other."""
    return f"{node_uri(node_id)}/operator/{_check_name(name, 'operator')}"


def parse_identity(uri: str) -> tuple[str, IdentityKind, str | None]:
    """(node id, kind, name or None for a node) of a hashex URI SAN; InvalidArgument for any
    URI that `node_uri`, `unit_uri` or `operator_uri` would not produce, so the gateway never
    guesses at a half-valid identity."""
    match = _IDENTITY_PATTERN.fullmatch(uri)
    if not match:
        raise InvalidArgument(
            f"identity {uri!r} is not spiffe://hashex/node/<id>[/unit|/operator/<name>]"
        )
    node_id = check_node_id(match.group("node"))
    kind = match.group("kind")
    name = match.group("name")
    if kind == "unit":
        return node_id, "unit", _check_name(name, "unit")
    if kind == "operator":
        return node_id, "operator", _check_name(name, "operator")
    return node_id, "node", None


def _check_name(name: str, role: str) -> str:
    if not _UNIT_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"{role} name {name!r} must be 1-63 characters: letters, digits and . _ -, "
            "starting with a letter or digit"
        )
    return name


def create_node_ca(
    *, node_id: str, valid_for: timedelta = DEFAULT_CA_VALIDITY, now: datetime | None = None
) -> NodeCa:
    """A self-signed CA that may sign leaves only (path length 0), so a stolen leaf key cannot
    mint further identities."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"hashex node CA {check_node_id(node_id)}")
    start = (now or datetime.now(UTC)) - _CLOCK_SKEW
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _CLOCK_SKEW + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return NodeCa(node_id, CertifiedKey(_pem(certificate), _key_pem(key)))


def issue_node_certificate(
    ca: NodeCa,
    *,
    dns_names: Sequence[str] = DEFAULT_SERVER_DNS,
    ip_addresses: Sequence[str] = DEFAULT_SERVER_IPS,
    valid_for: timedelta = DEFAULT_LEAF_VALIDITY,
    now: datetime | None = None,
) -> CertifiedKey:
    """The node's own certificate. It serves (server auth, with the host names clients dial)
    and also calls peers' gateways when pulling (client auth), under the same identity."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(ca.node_id))]
    names += [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, f"hashex node {ca.node_id}", names, usages, valid_for, now)


def issue_unit_certificate(
    ca: NodeCa,
    *,
    unit: str,
    roles: Sequence[UnitRole],
    valid_for: timedelta = DEFAULT_LEAF_VALIDITY,
    now: datetime | None = None,
) -> CertifiedKey:
    """A client certificate for one police unit of the CA's node (client auth only), carrying
    its roles (at least one)."""
    if not roles:
        raise InvalidArgument(f"a unit needs at least one role: {', '.join(UNIT_ROLES)}")
    unknown = sorted(set(roles) - set(UNIT_ROLES))
    if unknown:
        raise InvalidArgument(
            f"unknown role(s) {', '.join(unknown)}; the roles are {', '.join(UNIT_ROLES)}"
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(unit_uri(ca.node_id, unit))]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    role_names = [ROLE_PREFIX + r for r in UNIT_ROLES if r in roles]
    common_name = f"hashex unit {unit} of {ca.node_id}"
    return _issue(ca, common_name, names, usages, valid_for, now, units=role_names)


def unit_roles_of(certificate: x509.Certificate) -> frozenset[UnitRole]:
    """The roles a unit certificate carries (empty for one issued before roles existed);
    InvalidArgument for an OU attribute that names no known role."""
    roles: set[UnitRole] = set()
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = attribute.value if isinstance(attribute.value, str) else ""
        role = value.removeprefix(ROLE_PREFIX)
        matched = [r for r in UNIT_ROLES if r == role]
        if not value.startswith(ROLE_PREFIX) or not matched:
            raise InvalidArgument(
                f"the certificate names an unknown role {value!r}; the roles are "
                f"{', '.join(UNIT_ROLES)}"
            )
        roles.add(matched[0])
    return frozenset(roles)


def issue_operator_certificate(
    ca: NodeCa,
    *,
    name: str,
    valid_for: timedelta = DEFAULT_LEAF_VALIDITY,
    now: datetime | None = None,
) -> CertifiedKey:
    """A client certificate for an operator of the CA's node (the admin methods; client auth)."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(operator_uri(ca.node_id, name))]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, f"hashex operator {name} of {ca.node_id}", names, usages, valid_for, now)


def _issue(
    ca: NodeCa,
    common_name: str,
    names: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    valid_for: timedelta,
    now: datetime | None,
    *,
    units: Sequence[str] = (),
) -> CertifiedKey:
    """Sign a leaf; it never outlives its CA (a verifier would reject the excess anyway).
    `units`: Organizational Unit values of the subject (a unit's roles)."""
    ca_certificate = ca.material.certificate
    ca_key = serialization.load_pem_private_key(ca.material.private_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise FailedPrecondition("the node CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now or datetime.now(UTC)) - _CLOCK_SKEW
    end = min(start + _CLOCK_SKEW + valid_for, ca_certificate.not_valid_after_utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, units))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        # Not critical: the subject is not empty (RFC 5280 4.2.1.6; strict verifiers refuse it).
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertifiedKey(_pem(certificate), _key_pem(key))


def write_certified_key(material: CertifiedKey, *, certificate_path: Path, key_path: Path) -> None:
    """Write the key (0600, never over an existing file) before the certificate, so a refused
    overwrite leaves both files as they were."""
    write_secret(key_path, material.private_key_pem)
    certificate_path.write_bytes(material.certificate_pem)


def replace_certified_key(
    material: CertifiedKey, *, certificate_path: Path, key_path: Path
) -> None:
    """Write a pair over an existing one (renewal, re-issue), each file by an atomic rename and
    the key 0600 from its first byte. A reader between the two renames sees a mismatched pair,
    which `load_certified_key` refuses, so a re-read simply retries."""
    staged_key = key_path.with_name(f".{key_path.name}.new")
    staged_certificate = certificate_path.with_name(f".{certificate_path.name}.new")
    staged_key.unlink(missing_ok=True)
    write_secret(staged_key, material.private_key_pem)
    staged_certificate.write_bytes(material.certificate_pem)
    os.replace(staged_key, key_path)
    os.replace(staged_certificate, certificate_path)


def load_certified_key(*, certificate_path: Path, key_path: Path) -> CertifiedKey:
    """Read a pair back; refuses a key readable by others or one that is not the certificate's."""
    key_pem = read_secret(key_path)
    try:
        certificate_pem = certificate_path.read_bytes()
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except FileNotFoundError:
        raise FailedPrecondition(f"certificate file {certificate_path} is missing") from None
    except ValueError:
        raise FailedPrecondition(
            f"{certificate_path} or {key_path} is not a PEM certificate / private key"
        ) from None
    if key.public_key() != certificate.public_key():
        raise FailedPrecondition(f"key file {key_path} does not belong to {certificate_path}")
    return CertifiedKey(certificate_pem, key_pem)


def load_node_ca(*, node_id: str, certificate_path: Path, key_path: Path) -> NodeCa:
    """Read a node CA back; refuses a certificate that is not a CA (e.g. a leaf's file)."""
    pair = load_certified_key(certificate_path=certificate_path, key_path=key_path)
    constraints = pair.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    if not constraints.value.ca:
        raise FailedPrecondition(f"{certificate_path} is not a CA certificate")
    return NodeCa(check_node_id(node_id), pair)


def server_credentials(
    identity: CertifiedKey, *, trusted_client_cas: Sequence[bytes]
) -> grpc.ServerCredentials:
    """Credentials that refuse any client without a certificate from one of these CAs."""
    return grpc.ssl_server_credentials(
        [(identity.private_key_pem, identity.certificate_pem)],
        root_certificates=b"".join(trusted_client_cas),
        require_client_auth=True,
    )


def channel_credentials(
    identity: CertifiedKey | None, *, trusted_server_cas: Sequence[bytes]
) -> grpc.ChannelCredentials:
    """Client credentials presenting `identity` (None: no client certificate, which an mTLS
    server refuses; useful only to show that it does)."""
    return grpc.ssl_channel_credentials(
        root_certificates=b"".join(trusted_server_cas),
        private_key=identity.private_key_pem if identity else None,
        certificate_chain=identity.certificate_pem if identity else None,
    )


def validity_problem(certificate_pem: bytes, now: datetime) -> str | None:
    """What makes a certificate unusable at `now` ("expired on ...", "is not valid before
    ..."), or None while it is valid (or not a certificate at all: loading it says so)."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        return None
    if now < certificate.not_valid_before_utc:
        return (
            f"is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(is this machine's clock right?)"
        )
    if now > certificate.not_valid_after_utc:
        return f"expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


def certificate_fingerprint(certificate_pem: bytes) -> str:
    """SHA-256 over the DER encoding, lowercase hex: what peers pin and deny-lists name. Takes
    PEM because that is what `auth_context()["x509_pem_cert"]` hands a handler."""
    der = x509.load_pem_x509_certificate(certificate_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def uri_names(certificate_pem: bytes) -> tuple[str, ...]:
    """The URI SANs of a certificate (its hashex identity)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(sans.value.get_values_for_type(x509.UniformResourceIdentifier))


def _name(common_name: str, units: Sequence[str] = ()) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hashex"),
            *(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
