"""Serving a proto service by forwarding it, as raw bytes, to an upstream server: what the gateway
serves when the registry and sync services run apart from it (`hashex gateway serve`).

Each method of the service descriptor gets a handler of its own call shape with no deserializer
and no serializer: the gateway's wrapper (services.gateway.wrapper) still sees every request's
exact bytes (size limit, digest, counts, audit), and the bytes reach the upstream unchanged, so
nothing is parsed or re-serialised on the way (signed batches stay the bytes that were signed).

Per call: the upstream deadline is what remains of the incoming call's; cancelling the incoming
call cancels the upstream one; the upstream's status code, details and trailing metadata (the
rich error details in `grpc-status-details-bin`) come back unchanged. The one exception is a
connection failure the channel itself reports (UNAVAILABLE with no status details from a hashex
servicer): its text names internal addresses, so the client gets the same code with a neutral
message and the original goes to the log. Only the metadata that `metadata_for(method)` returns
goes upstream (the verified caller, services.core.forwarded_caller), never the client's own, so
a client cannot smuggle caller headers through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from services.core.errors import HashexError
from services.core.rpc_status import abort_with
from services.core.server import ServiceBinding

_log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
MetadataFor = Callable[[str], Sequence[tuple[str, str]]]
_STATUS_DETAILS = "grpc-status-details-bin"
T = TypeVar("T")


def _no_metadata(method: str) -> Sequence[tuple[str, str]]:
    return ()


def forwarding_binding(
    service: ServiceDescriptor,
    channel: grpc.aio.Channel,
    *,
    metadata_for: MetadataFor = _no_metadata,
    upstream_name: str = "upstream",
) -> ServiceBinding:
    """Serve every method of `service` by forwarding it over `channel`. `metadata_for(method)`
    is called inside each call, where the gateway has set the caller; `upstream_name` names the
    upstream in the message a client sees when it cannot be reached."""
    handlers = {
        method.name: _handler(
            method,
            _Upstream(channel, f"/{service.full_name}/{method.name}", upstream_name),
            metadata_for,
        )
        for method in service.methods
    }
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    return ServiceBinding(
        service.full_name, lambda server: server.add_generic_rpc_handlers((generic,))
    )


def forwarding_bindings(
    services: Sequence[ServiceDescriptor],
    channel: grpc.aio.Channel,
    *,
    metadata_for: MetadataFor = _no_metadata,
    upstream_name: str = "upstream",
) -> list[ServiceBinding]:
    return [
        forwarding_binding(s, channel, metadata_for=metadata_for, upstream_name=upstream_name)
        for s in services
    ]


class _Upstream:
    """One method on the upstream channel, bytes in and bytes out."""

    def __init__(self, channel: grpc.aio.Channel, method: str, name: str) -> None:
        self.method = method
        self.name = name
        self.unary_unary = channel.unary_unary(method, None, None)
        self.unary_stream = channel.unary_stream(method, None, None)
        self.stream_unary = channel.stream_unary(method, None, None)
        self.stream_stream = channel.stream_stream(method, None, None)


def _handler(
    method: MethodDescriptor, upstream: _Upstream, metadata_for: MetadataFor
) -> grpc.RpcMethodHandler[Any, Any]:
    streams_in, streams_out = method.client_streaming, method.server_streaming
    if not streams_in and not streams_out:
        return grpc.unary_unary_rpc_method_handler(_unary_unary(upstream, metadata_for))
    if not streams_in:
        return grpc.unary_stream_rpc_method_handler(_unary_stream(upstream, metadata_for))
    if not streams_out:
        return grpc.stream_unary_rpc_method_handler(_stream_unary(upstream, metadata_for))
    return grpc.stream_stream_rpc_method_handler(_stream_stream(upstream, metadata_for))


async def _call_options(
    upstream: _Upstream, metadata_for: MetadataFor, context: Context
) -> dict[str, Any]:
    """The deadline left on the incoming call and the metadata for the upstream."""
    try:
        metadata = tuple(metadata_for(upstream.method))
    except HashexError as error:
        await abort_with(context, error)
    return {"timeout": context.time_remaining(), "metadata": metadata}


def _unary_unary(
    upstream: _Upstream, metadata_for: MetadataFor
) -> Callable[[bytes, Context], Awaitable[bytes]]:
    async def handle(request: bytes, context: Context) -> bytes:
        call = upstream.unary_unary(request, **await _call_options(upstream, metadata_for, context))
        return await _answer(upstream, context, call)

    return handle


def _unary_stream(
    upstream: _Upstream, metadata_for: MetadataFor
) -> Callable[[bytes, Context], AsyncIterator[bytes]]:
    async def handle(request: bytes, context: Context) -> AsyncIterator[bytes]:
        call = upstream.unary_stream(
            request, **await _call_options(upstream, metadata_for, context)
        )
        async with contextlib.aclosing(_responses(upstream, context, call)) as responses:
            async for response in responses:
                yield response

    return handle


def _stream_unary(
    upstream: _Upstream, metadata_for: MetadataFor
) -> Callable[[AsyncIterator[bytes], Context], Awaitable[bytes]]:
    async def handle(requests: AsyncIterator[bytes], context: Context) -> bytes:
        call = upstream.stream_unary(**await _call_options(upstream, metadata_for, context))
        async with _sending(requests, call) as failed:
            return await _answer(upstream, context, call, failed)

    return handle


def _stream_stream(
    upstream: _Upstream, metadata_for: MetadataFor
) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[bytes]]:
    async def handle(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        call = upstream.stream_stream(**await _call_options(upstream, metadata_for, context))
        async with (
            _sending(requests, call) as failed,
            contextlib.aclosing(_responses(upstream, context, call, failed)) as responses,
        ):
            async for response in responses:
                yield response

    return handle


class _SendFailed:
    """Why sending the incoming requests upstream stopped early, if it did: typically the
    gateway refusing an oversized request (an abort that has already answered the client)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


@contextlib.asynccontextmanager
async def _sending(requests: AsyncIterator[bytes], call: Any) -> AsyncIterator[_SendFailed]:
    """Copy the incoming request stream to the upstream call in a task, half-closing it at the
    end. If reading the requests fails, the upstream call is cancelled and that failure, not
    the cancellation, is what the handler raises."""
    failed = _SendFailed()

    async def send_all() -> None:
        try:
            async for message in requests:
                await call.write(message)
            await call.done_writing()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            if not call.done():  # a write after the upstream ended fails too: nothing to report
                failed.error = error
                call.cancel()

    sender = asyncio.create_task(send_all(), name="forward-requests")
    try:
        yield failed
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def _answer(
    upstream: _Upstream, context: Context, call: Any, failed: _SendFailed | None = None
) -> bytes:
    try:
        response: bytes = await call
    except grpc.aio.AioRpcError as error:
        await _relay_error(upstream, context, error)
    except asyncio.CancelledError:
        _raise_send_failure(failed)
        raise
    finally:
        if not call.done():
            call.cancel()
    return response


async def _responses(
    upstream: _Upstream, context: Context, call: Any, failed: _SendFailed | None = None
) -> AsyncGenerator[bytes, None]:
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as error:
        await _relay_error(upstream, context, error)
    except asyncio.CancelledError:
        _raise_send_failure(failed)
        raise
    finally:  # the client went away, the gateway's deadline struck, or the stream ended
        if not call.done():
            call.cancel()


def _raise_send_failure(failed: _SendFailed | None) -> None:
    if failed is not None and failed.error is not None:
        raise failed.error


async def _relay_error(
    upstream: _Upstream, context: Context, error: grpc.aio.AioRpcError
) -> NoReturn:
    """End the incoming call with the upstream's status, unchanged (see the module docstring
    for the one exception)."""
    code = error.code()
    details = error.details() or ""
    metadata: Any = error.trailing_metadata() or ()
    trailing = tuple((key, value) for key, value in metadata)
    if code == grpc.StatusCode.UNAVAILABLE and not any(k == _STATUS_DETAILS for k, _ in trailing):
        _log.warning("%s unavailable for %s: %s", upstream.name, upstream.method, details)
        details = f"the node's {upstream.name} service is unavailable; retry later"
    await context.abort(code, details, trailing)
    raise AssertionError("context.abort returned")
