"""The gateway's TLS credentials: client certificate required, and the set of trusted client
CAs (this node's own and every pinned peer's) read again for each new connection, so a peer
pinned or removed while the node runs is trusted or refused from its next connection on.

grpc calls the fetcher from its own thread for every new connection. It must never raise (grpc
would fail the handshake with nothing in the log) and should return None when nothing changed
(a new configuration makes grpc rebuild its TLS context). Any error keeps the last good
configuration and is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, cast

import grpc

from services.core.tls import CertifiedKey

_log = logging.getLogger(__name__)


class ClientCaSource(Protocol):
    def client_cas(self) -> list[bytes]: ...


_Material = tuple[bytes, bytes, bytes]  # certificate chain, private key, trusted client CAs


class GatewayCredentials:
    """Builds the server credentials and serves grpc's per-connection fetcher."""

    def __init__(
        self, *, identity: CertifiedKey | Callable[[], CertifiedKey], trust: ClientCaSource
    ) -> None:
        self._identity = identity if callable(identity) else (lambda: identity)
        self._trust = trust
        self._lock = threading.Lock()
        self._current: _Material | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port`. Errors here (no identity, no CA) surface at start."""
        material = self._material()
        with self._lock:
            self._current = material
        # grpc documents None as "unchanged"; its type stubs leave None out.
        fetcher = cast("Callable[[], grpc.ServerCertificateConfiguration]", self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            _configuration(material), fetcher, require_client_authentication=True
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetcher: a new configuration when the identity or trusted CAs changed."""
        try:
            material = self._material()
            with self._lock:
                if material == self._current:
                    return None
                configuration = _configuration(material)
                self._current = material
            _log.info("gateway TLS configuration reloaded (%d trusted CAs)", _count(material[2]))
            return configuration
        except Exception:
            _log.exception("could not reload the gateway's TLS configuration; keeping the last")
            return None

    def _material(self) -> _Material:
        identity = self._identity()
        roots = b"".join(self._trust.client_cas())
        if not roots:
            raise ValueError("no trusted client CA")
        return identity.certificate_pem, identity.private_key_pem, roots


def _configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
    chain, key, roots = material
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)


def _count(roots: bytes) -> int:
    return roots.count(b"-----BEGIN CERTIFICATE-----")
