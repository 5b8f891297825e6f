"""The one server builder every service uses: interceptors in a fixed order, health, reflection,
message limits and graceful shutdown (NOT_SERVING, drain, stop).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import Message
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from the stubs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import (
    aio_server_interceptor as _untyped_aio_server_interceptor,
)
from opentelemetry.sdk.trace import TracerProvider

from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.health import NodeHealth
from services.core.reflection import enable_reflection
from services.core.request_decoding import decode_request, request_class_of
from services.core.rpc_status import abort_with

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

Context = grpc.aio.ServicerContext[Any, Any]

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

        def log_outcome(context: Context, started: float, error: BaseException | None) -> None:
            elapsed_ms = (time.perf_counter() - started) * 1000
            _log.info("rpc %s %s %.1fms", method, call_status_name(context, error), elapsed_ms)

        if streaming_response:

            async def stream(request: Any, context: Context) -> Any:
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    result = behaviour(request, context)
                    if inspect.isawaitable(result):  # a writer-style servicer (context.write)
                        await result
                        return
                    async for item in result:
                        yield item
                except BaseException as exc:  # logged as what the client sees, then re-raised
                    error = exc
                    raise
                finally:
                    log_outcome(context, started, error)

            return stream

        async def unary(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                log_outcome(context, started, error)

        return unary

    return rewrap_handler(handler, logged)


def call_status_name(context: Context, error: BaseException | None) -> str:
    """The status the client sees: what the call was aborted with or set, CANCELLED for a call
    cancelled or abandoned (a stream the client closed), UNKNOWN for any other exception (grpc
    answers UNKNOWN for it), else OK."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for known in grpc.StatusCode:
        if known.value[0] == code:
            return known.name
    return "UNKNOWN"


class RequestDecodingInterceptor(ServerInterceptor):
    """Parses the requests of every handler that still carries a protobuf deserializer with
    `decode_request`, so that an undecodable message answers INVALID_ARGUMENT naming the field
    (and a BadRequest detail) instead of grpc's UNKNOWN. Handlers without a deserializer are
    left as they are: the gateway's, which parse the exact bytes themselves, and forwarding
    handlers, which never parse. Each message is parsed once, here instead of in grpc."""

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
        message_class = request_class_of(handler.request_deserializer)
        if message_class is None:
            return handler
        return _decoding_requests(handler, message_class)


def _decoding_requests(
    handler: grpc.RpcMethodHandler[Any, Any], message_class: type[Message]
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` taking raw request bytes and decoding them itself, for every call shape."""
    streaming_request = handler.request_streaming

    async def requests(raw: Any, context: Context) -> tuple[Any, Context]:
        """The request (or request iterator) and context to hand the behaviour."""
        if streaming_request:
            stream = _RequestStream(message_class, context)
            return stream.decoded(raw), cast(Context, _DecodingContext(context, stream))
        try:
            return decode_request(message_class, raw), context
        except InvalidArgument as error:
            await abort_with(context, error)

    def decoding(behaviour: Any, streaming_response: bool) -> Any:
        if streaming_response:

            async def stream(raw: Any, context: Context) -> AsyncIterator[Any]:
                request, served = await requests(raw, context)
                result = behaviour(request, served)
                if inspect.isawaitable(result):  # a writer-style servicer (context.write)
                    await result
                    return
                try:
                    async for item in result:
                        yield item
                finally:  # close the servicer's generator now, not later in GC
                    if hasattr(result, "aclose"):
                        await result.aclose()

            return stream

        async def unary(raw: Any, context: Context) -> Any:
            request, served = await requests(raw, context)
            return await behaviour(request, served)

        return unary

    return rewrap_handler(handler, decoding, keep_request_deserializer=False)


class _RequestStream:
    """The request messages of one call, decoded in order and numbered from 0 whichever way
    the servicer takes them (the iterator or `context.read()`); the first undecodable one ends
    the call, named `message[n]`."""

    def __init__(self, message_class: type[Message], context: Context) -> None:
        self._message_class = message_class
        self._context = context
        self._received = 0

    async def decoded(self, raw: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        async for message in raw:
            yield await self.decode(message)

    async def decode(self, raw: bytes) -> Message:
        index, self._received = self._received, self._received + 1
        try:
            return decode_request(self._message_class, raw, stream_index=index)
        except InvalidArgument as error:
            await abort_with(self._context, error)


class _DecodingContext:
    """The call's context, except that `read()` returns decoded messages."""

    def __init__(self, context: Context, stream: _RequestStream) -> None:
        self._context = context
        self._stream = stream

    async def read(self) -> Any:
        raw = await self._context.read()
        if raw is EOF:
            return raw
        return await self._stream.decode(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


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

    async def set_serving(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for the server and each of its services (the node follows its
        database with it). Ignored once a graceful stop began: a stopping server stays
        NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

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
    then the access log, then request decoding, then `interceptors` in the order given (the
    gateway's checks). Request decoding sits outside `interceptors` so that it sees the handlers
    they return: those still carrying a deserializer (the registry's own port, a service behind
    the forwarded-caller interceptor) get their requests decoded by it, before the inner
    interceptors run; the gateway's, which take raw bytes for their size check and audit digest
    and parse them themselves, and forwarding handlers carry none and are left alone, so
    nothing is parsed twice. Decoding refusals are still traced and logged.
    """
    server = grpc.aio.server(
        interceptors=[
            _tracing_interceptor(tracer_provider),
            AccessLogInterceptor(),
            RequestDecodingInterceptor(),
            *interceptors,
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = tuple(b.full_name for b in services)
    health_servicer = NodeHealth(names)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in services:
        binding.add_to(server)
    enable_reflection((*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError:  # grpc's way of saying the bind failed
        await server.stop(None)
        raise FailedPrecondition(
            f"cannot listen on {listen}: the address is in use (by another node, a second "
            "`hashex node up` of this one, or another program) or is not one of this machine's; "
            "stop what holds it or change the address in node.toml"
        ) from None
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
