"""The one table from domain errors to gRPC status codes, and rich error details.

Anything not in the table becomes INTERNAL with a message that reveals nothing; the original is
logged on the node (without request contents). The exception is an error that says the database
connection is gone (`services.core.db.health.is_connection_failure`): that is an outage, not a
bug, so it answers UNAVAILABLE (the caller may retry) and logs nothing per call; the node's
`DatabaseHealth` logs the outage once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.core.db.health import is_connection_failure
from services.core.errors import (
    DATABASE_UNREACHABLE,
    FailedPrecondition,
    HashexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

_log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

STATUS_OF: dict[type[HashexError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

INTERNAL_MESSAGE = "internal error on the node; the operator can find it in the node's log"


def status_code_of(error: HashexError) -> grpc.StatusCode:
    for cls, code in STATUS_OF.items():
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_rpc_status(error: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for `error`; InvalidArgument carries a BadRequest detail."""
    if not isinstance(error, HashexError):
        if is_connection_failure(error):
            return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=DATABASE_UNREACHABLE)
        return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    code = status_code_of(error)
    status = status_pb2.Status(code=code.value[0], message=str(error))
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=p.field, description=p.description
                    )
                    for p in error.problems
                ]
            )
        )
        status.details.append(detail)
    return status


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> NoReturn:
    """End the call with the status for `error`."""
    if not isinstance(error, HashexError) and not is_connection_failure(error):
        _log.error("unexpected error in RPC handler", exc_info=error)
    status = rpc_status.to_status(to_rpc_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("context.abort returned")


def handles_errors(
    method: Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Decorate a servicer method so that every domain error ends the call with its status."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with(context, error)

    return wrapper


def handles_stream_errors(
    method: Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """The same as `handles_errors` for methods that stream their responses."""

    @functools.wraps(method)
    async def wrapper(
        self: S, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with(context, error)

    return wrapper
