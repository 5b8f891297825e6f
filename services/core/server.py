"""The one server builder every service uses: interceptors in a fixed order, health, reflection,
message limits and graceful shutdown (NOT_SERVING, drain, stop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import _async as health_aio  # the documented `health.aio`
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import (
    aio_server_interceptor as _untyped_aio_server_interceptor,
)
from opentelemetry.sdk.trace import TracerProvider

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer to serve: its full name (for health and reflection) and how to add it."""

    full_name: str
    add_to: Callable[[grpc.aio.Server], None]


if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not subscriptable
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

# The four call shapes: the handler attribute holding the behaviour, the factory that builds a
# handler of that shape, and whether the response is streamed.
_SHAPES = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def rewrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[Any, bool], Any],
    *,
    keep_request_deserializer: bool = True,
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its behaviour replaced by `wrap(behaviour, streaming_response)`, whatever
    its call shape. Without `keep_request_deserializer` the new behaviour gets raw bytes."""
    for attribute, factory, streaming_response in _SHAPES:
        behaviour = getattr(handler, attribute)
        if behaviour is not None:
            deserializer = handler.request_deserializer if keep_request_deserializer else None
            return factory(
                wrap(behaviour, streaming_response),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class AccessLogInterceptor(ServerInterceptor):
    """One log line per call: method, status code, duration. Never request contents."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap_handler(handler, handler_call_details.method)


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    def logged(behaviour: Any, streaming_response: bool) -> Any:
        if behaviour is None:
            return None

        def log_outcome(context: grpc.aio.ServicerContext[Any, Any], started: float) -> None:
            code = context.code() or grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            elapsed_ms = (time.perf_counter() - started) * 1000
            _log.info("rpc %s %s %.1fms", method, name, elapsed_ms)

        if streaming_response:

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                try:
                    async for item in behaviour(request, context):
                        yield item
                finally:
                    log_outcome(context, started)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                return await behaviour(request, context)
            finally:
                log_outcome(context, started)

        return unary

    return rewrap_handler(handler, logged)


def _tracing_interceptor(tracer_provider: TracerProvider) -> grpc.aio.ServerInterceptor[Any, Any]:
    interceptor: grpc.aio.ServerInterceptor[Any, Any] = _untyped_aio_server_interceptor(
        tracer_provider=tracer_provider
    )
    return interceptor


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped package)
    service_names: tuple[str, ...]

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING so balancers stop sending, let calls in flight finish, stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def build_server(
    *,
    listen: str,
    services: Sequence[ServiceBinding],
    tracer_provider: TracerProvider,
    credentials: grpc.ServerCredentials | None = None,
    max_message_bytes: int = 16 * 1024 * 1024,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> RunningServer:
    """Start a server on `listen` (port 0 picks a free one) and return it with its bound port.

    Interceptor order, outermost first: tracing (so every call has a span, even refused ones),
    then the access log, then `interceptors` in the order given (the gateway's checks).
    """
    server = grpc.aio.server(
        interceptors=[
            _tracing_interceptor(tracer_provider),
            AccessLogInterceptor(),
            *interceptors,
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in services:
        binding.add_to(server)
    names = tuple(b.full_name for b in services)
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    await server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log.info("serving %s on port %d", ", ".join(names), port)
    return RunningServer(server, port, health_servicer, names)


def internal_channel(address: str, *, max_message_bytes: int) -> grpc.aio.Channel:
    """Plaintext to a service of the same node on its internal network (services run apart);
    callers are proven there by the gateway's MAC'd caller headers, not by the channel."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    return grpc.aio.insecure_channel(address, options=options)
