"""The keys and certificates `hashex node init` creates, made idempotent: each piece that exists
is kept, each missing piece is created, so re-running init repairs a node and changes nothing on
a complete one.

The one piece init may replace is the node's own certificate (tls/node.pem): it is short-lived,
so a re-run renews it when it is near expiry (or expired), was issued by another CA, or lacks a
host name the operator now asks for; `hashex node renew-cert` renews it at any time
(`renew_node_certificate`). Its old host names are carried over, so a renewal never drops one.
A running node picks the new certificate up without a restart: the gateway re-reads it for each
new connection, the sync service for each new channel to a peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from services.core import tls
from services.core.config import NodeConfig
from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.forwarded_caller import ensure_internal_key
from services.core.key_history import history_path
from services.core.signing import create_first_key, record_history
from services.registry.cases import create_case_key

# Renew the node certificate on a re-run when it has less than this left.
RENEW_BEFORE = timedelta(days=7)


def ca_paths(config: NodeConfig) -> tuple[Path, Path]:
    return config.tls_dir / "ca.pem", config.tls_dir / "ca.key"


def node_cert_paths(config: NodeConfig) -> tuple[Path, Path]:
    return config.tls_dir / "node.pem", config.tls_dir / "node.key"


def load_ca(config: NodeConfig) -> tls.NodeCa:
    certificate_path, key_path = ca_paths(config)
    return tls.load_node_ca(
        node_id=config.node_id, certificate_path=certificate_path, key_path=key_path
    )


def ensure_node_material(
    config: NodeConfig, *, gateway_hosts: Sequence[str], now: datetime | None = None
) -> list[str]:
    """Create whatever is missing; returns one line per piece created or renewed."""
    done: list[str] = []
    if not config.case_key_path.exists():
        create_case_key(config.case_key_path)
        done.append(f"case-data key: {config.case_key_path}")
    if not any(config.signing_keys_dir.glob("ed25519_*.key")):
        key = create_first_key(config.signing_keys_dir)
        done.append(f"signing key:   {key.key_id} {key.public_hex}")
    elif not history_path(config.signing_keys_dir).exists():
        record_history(config.signing_keys_dir)
        done.append(f"key history:   {history_path(config.signing_keys_dir)} (old keys may go)")
    if internal_key := ensure_internal_key(config.data_dir):
        done.append(f"internal key:  {internal_key} (gateway <-> services apart)")
    ca, ca_created = _ensure_ca(config)
    if ca_created:
        done.append(f"node CA:       {ca_paths(config)[0]} (sha256 {ca.material.fingerprint})")
    renewed = _ensure_node_certificate(config, ca, gateway_hosts, now or datetime.now(UTC))
    if renewed:
        done.append(f"node cert:     {node_cert_paths(config)[0]} ({renewed})")
    return done


def check_host(host: str) -> str:
    """A DNS name or IP address for the node certificate."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_dns_label(label) for label in labels):
        raise InvalidArgument(f"--gateway-host {host!r} must be a DNS name or an IP address")
    return host


def _dns_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    )


def _ensure_ca(config: NodeConfig) -> tuple[tls.NodeCa, bool]:
    certificate_path, key_path = ca_paths(config)
    if certificate_path.exists() and key_path.exists():
        return load_ca(config), False
    if certificate_path.exists() or key_path.exists():
        present, missing = certificate_path, key_path
        if not present.exists():
            present, missing = missing, present
        raise FailedPrecondition(
            f"{missing} is missing but {present} exists; restore it from backup, or remove "
            f"{present} too to create a new node CA (every peer must then pin a new card)"
        )
    ca = tls.create_node_ca(node_id=config.node_id)
    config.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tls.write_certified_key(ca.material, certificate_path=certificate_path, key_path=key_path)
    return ca, True


def _ensure_node_certificate(
    config: NodeConfig,
    ca: tls.NodeCa,
    requested: Sequence[str],
    now: datetime,
    *,
    force: bool = False,
) -> str | None:
    """Issue tls/node.pem when needed; returns why it did, or None when the current one stays."""
    certificate_path, key_path = node_cert_paths(config)
    hosts = [*tls.DEFAULT_SERVER_DNS, *tls.DEFAULT_SERVER_IPS]
    endpoint_host = config.gateway_endpoint.rpartition(":")[0].strip("[]")
    hosts += [check_host(h) for h in (*requested, endpoint_host) if h]
    reason: str | None
    if not certificate_path.exists() or not key_path.exists():
        reason = "created"
    else:
        current = tls.load_certified_key(certificate_path=certificate_path, key_path=key_path)
        old_hosts = _hosts_of(current.certificate)
        hosts += old_hosts
        reason = _renewal_reason(current.certificate, ca, set(hosts) - set(old_hosts), now)
    if force:
        reason = reason or "renewed"
    if reason is None:
        return None
    unique = list(dict.fromkeys(hosts))
    dns = [h for h in unique if not _is_ip(h)]
    ips = [h for h in unique if _is_ip(h)]
    material = tls.issue_node_certificate(ca, dns_names=dns, ip_addresses=ips, now=now)
    tls.replace_certified_key(material, certificate_path=certificate_path, key_path=key_path)
    return reason


@dataclass(frozen=True)
class Renewal:
    """What `renew_node_certificate` did: the old certificate's expiry (None when there was
    none) and the new one's."""

    old_expiry: datetime | None
    new_expiry: datetime


def renew_node_certificate(config: NodeConfig, *, now: datetime | None = None) -> Renewal:
    """Issue tls/node.pem afresh from the node CA, whatever its state (valid, near expiry,
    expired, missing), keeping its host names."""
    certificate_path = node_cert_paths(config)[0]
    old_expiry: datetime | None = None
    if certificate_path.exists():
        try:
            old = x509.load_pem_x509_certificate(certificate_path.read_bytes())
            old_expiry = old.not_valid_after_utc
        except ValueError:
            old_expiry = None
    _ensure_node_certificate(config, load_ca(config), [], now or datetime.now(UTC), force=True)
    new = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    return Renewal(old_expiry, new.not_valid_after_utc)


def _renewal_reason(
    certificate: x509.Certificate, ca: tls.NodeCa, new_hosts: set[str], now: datetime
) -> str | None:
    try:
        certificate.verify_directly_issued_by(ca.material.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return "re-issued by the node CA"
    expiry = certificate.not_valid_after_utc
    if expiry <= now:
        return f"renewed: it had expired on {expiry:%Y-%m-%d %H:%M} UTC"
    if expiry - now < RENEW_BEFORE:
        return f"renewed before expiry (it would have expired on {expiry:%Y-%m-%d %H:%M} UTC)"
    if new_hosts:
        return "re-issued with host(s) " + ", ".join(sorted(new_hosts))
    return None


def _hosts_of(certificate: x509.Certificate) -> list[str]:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [str(name) for name in sans.get_values_for_type(x509.DNSName)]
    return dns + [str(address) for address in sans.get_values_for_type(x509.IPAddress)]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
