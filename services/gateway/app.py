"""Assembles and runs a gateway: the servicers it is given, served in-process behind mutual TLS
and the gateway's checks (services.gateway.wrapper), on the node's public address.

The caller owns the database, its audit log (migrated: `services.core.audit.store`) and the trust
store (the node shares them with its other services); `start_gateway` never closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry.sdk.trace import TracerProvider

from services.core import tls
from services.core.audit.chain import AuditEntry, AuditRecord
from services.core.audit.recorder import AuditRecorder
from services.core.audit.refusals import WINDOW_S
from services.core.audit.store import AuditStore
from services.core.config import NodeConfig
from services.core.server import RunningServer, ServiceBinding, build_server
from services.gateway.credentials import GatewayCredentials
from services.gateway.identity import CallerVerifier, TrustSource
from services.gateway.limits import InFlight, RateLimiter
from services.gateway.wrapper import GatewayInterceptor, GatewayLimits, Verifier

_log = logging.getLogger(__name__)

# How often ended refusal windows are stored when no call arrives to store them.
REFUSAL_FLUSH_S = WINDOW_S / 4


@dataclass
class RunningGateway:
    config: NodeConfig
    server: RunningServer
    audit: AuditStore
    recorder: AuditRecorder
    # Stores the aggregated refusals of ended windows while no call comes to do it.
    flushing: asyncio.Task[None]

    async def record(self, entry: AuditEntry) -> AuditRecord | None:
        """Append an event that did not arrive as a call (for example a batch the node's own
        puller rejected) to the same chain, through the same serialised appender."""
        return await self.recorder.record(entry)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        """host:port actually bound (port 0 in the configuration picks a free one)."""
        host = self.config.gateway_listen.rpartition(":")[0]
        return f"{host}:{self.server.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, let calls in flight finish (their audit records included), stop."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        await self.server.stop(grace)
        self.flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.flushing
        try:
            await self.recorder.flush()
        except Exception:
            _log.exception("could not store the aggregated refusals of the last window")
        _log.info("gateway of %s stopped", self.config.node_id)


def limits_of(config: NodeConfig) -> GatewayLimits:
    return GatewayLimits(
        max_request_bytes=config.max_request_bytes,
        call_deadline_s=config.call_deadline_s,
        pull_deadline_s=config.pull_deadline_s,
        rate_limit_hashes_per_s=config.rate_limit_hashes_per_s,
        rate_limit_hashes_burst=config.rate_limit_hashes_burst,
        max_calls_in_flight_per_caller=config.max_calls_in_flight_per_caller,
    )


def gateway_checks(
    config: NodeConfig,
    verifier: Verifier,
    *,
    recorder: AuditRecorder,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> GatewayInterceptor:
    """The gateway's checks, limits and audit for callers `verifier` establishes (the gateway's
    and the admin socket's servers both use them)."""
    return GatewayInterceptor(
        verifier=verifier,
        limiter=RateLimiter(
            rate_per_s=config.rate_limit_hashes_per_s,
            burst=config.rate_limit_hashes_burst,
            clock=clock,
        ),
        in_flight=InFlight(config.max_calls_in_flight_per_caller),
        recorder=recorder,
        limits=limits_of(config),
        wall_clock=wall_clock,
    )


async def start_gateway(
    config: NodeConfig,
    bindings: Sequence[ServiceBinding],
    *,
    audit: AuditStore,
    trust: TrustSource,
    recorder: AuditRecorder | None = None,
    identity: tls.CertifiedKey | Callable[[], tls.CertifiedKey] | None = None,
    own_ca_pem: bytes | None = None,
    tracer_provider: TracerProvider | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RunningGateway:
    """Serve `bindings` on `config.gateway_listen` behind the gateway's checks.

    `identity` is the gateway's certificate and key (default: tls/node.pem and tls/node.key of
    the data directory; a callable is asked again for each new connection, for rotation).
    `own_ca_pem` is the node's CA (default: tls/ca.pem); its certificates are the node's units
    and operators. `recorder` appends to `audit` (default: a new one); the node passes the one
    its pullers also record rejected batches through, so all appends share one group commit.
    `clock` (monotonic seconds) drives the rate limits and `wall_clock` the audit times; tests
    inject both.
    """
    if identity is None:
        identity = tls.load_certified_key(
            certificate_path=config.tls_dir / "node.pem", key_path=config.tls_dir / "node.key"
        )
    if own_ca_pem is None:
        own_ca_pem = (config.tls_dir / "ca.pem").read_bytes()
    recorder = recorder or AuditRecorder(audit, clock=clock)
    verifier = CallerVerifier(
        own_node_id=config.node_id, own_ca_pem=own_ca_pem, trust=trust, now=wall_clock
    )
    interceptor = gateway_checks(
        config, verifier, recorder=recorder, clock=clock, wall_clock=wall_clock
    )
    server = await build_server(
        listen=config.gateway_listen,
        services=bindings,
        tracer_provider=tracer_provider or TracerProvider(),
        credentials=GatewayCredentials(identity=identity, trust=trust).server_credentials(),
        # grpc itself refuses (unaudited) only what is far beyond the gateway's own limit;
        # everything between is refused and audited by the wrapper.
        max_message_bytes=max(config.max_message_bytes, 2 * config.max_request_bytes),
        interceptors=[interceptor],
    )
    flushing = asyncio.create_task(
        recorder.keep_flushing(REFUSAL_FLUSH_S), name="audit-refusal-flush"
    )
    running = RunningGateway(config, server, audit, recorder, flushing)
    _log.info("gateway of %s serving on %s", config.node_id, running.address)
    return running
