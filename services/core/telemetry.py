"""OpenTelemetry set-up shared by every service: one tracer provider and one meter provider per
process, built from the environment, passed to the server builder (never a global lookup in
handlers).

`OTEL_TRACES_EXPORTER=console` prints spans to stderr; the default `none` still creates spans
(cheap) so that instrumentation is exercised, but exports nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


@dataclass(frozen=True)
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(
    *, service: str, node_id: str, env: Mapping[str, str] | None = None
) -> Telemetry:
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": service, "hashex.node_id": node_id})
    tracer_provider = TracerProvider(resource=resource)
    exporter = env.get("OTEL_TRACES_EXPORTER", "none").lower()
    if exporter == "console":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter != "none":
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r} is not supported: use none or console")
    return Telemetry(tracer_provider, MeterProvider(resource=resource))
