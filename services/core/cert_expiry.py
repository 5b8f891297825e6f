"""A node's own certificates that are about to run out, or did: warned about in the node's log
at start and once a day (`watch_expiry`, timed by the injected clock) and shown by
`hashex node status`, from WARN_BEFORE ahead of expiry.

An expired gateway certificate makes every peer and unit fail to connect, and a client only
sees a failed handshake: the operator must hear of it before, where they look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from services.core.clock import Clock
from services.core.config import NodeConfig

WARN_BEFORE = timedelta(days=7)
CHECK_EVERY_S = 24 * 3600.0
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchedCertificate:
    name: str
    path: Path
    # What renews it.
    remedy: str


@dataclass(frozen=True)
class CertificateState:
    certificate: WatchedCertificate
    # None when the file is missing or unreadable (then `problem` says so).
    not_after: datetime | None
    # A warning to show, or None while more than WARN_BEFORE is left.
    problem: str | None


def node_certificates(config: NodeConfig) -> tuple[WatchedCertificate, ...]:
    return (
        WatchedCertificate(
            "node CA certificate",
            config.tls_dir / "ca.pem",
            "a new node CA means a new card for every peer (`hashex peer card`)",
        ),
        WatchedCertificate(
            "node certificate",
            config.tls_dir / "node.pem",
            "renew it with `hashex node renew-cert` (no restart needed)",
        ),
    )


def certificate_states(
    watched: Sequence[WatchedCertificate], now: datetime
) -> list[CertificateState]:
    return [_state(w, now) for w in watched]


def _state(watched: WatchedCertificate, now: datetime) -> CertificateState:
    try:
        certificate = x509.load_pem_x509_certificate(watched.path.read_bytes())
    except (OSError, ValueError):
        return CertificateState(watched, None, f"the {watched.name} {watched.path} is unreadable")
    end = certificate.not_valid_after_utc
    left = end - now
    if left <= timedelta(0):
        problem = f"the {watched.name} {watched.path} expired on {end:%Y-%m-%d %H:%M} UTC"
    elif left < WARN_BEFORE:
        days = left.days
        when = f"in {days} day{'s' if days != 1 else ''}" if days else "within a day"
        problem = f"the {watched.name} {watched.path} expires {when}, on {end:%Y-%m-%d %H:%M} UTC"
    else:
        return CertificateState(watched, end, None)
    return CertificateState(watched, end, f"{problem}; {watched.remedy}")


def expiry_warnings(watched: Sequence[WatchedCertificate], now: datetime) -> list[str]:
    return [s.problem for s in certificate_states(watched, now) if s.problem is not None]


async def watch_expiry(
    watched: Sequence[WatchedCertificate],
    *,
    clock: Clock,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Log a warning for each certificate near or past expiry, now and every CHECK_EVERY_S of
    `clock`, until cancelled (the files are read each time: a renewal silences it)."""
    while True:
        for warning in expiry_warnings(watched, now()):
            _log.warning("%s", warning)
        await clock.sleep(CHECK_EVERY_S)
