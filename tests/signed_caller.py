"""A client channel whose every call carries a caller the way the node's gateway forwards it
(services.core.forwarded_caller): for tests that call a service's internal port directly, as
the gateway would, without running one."""

from __future__ import annotations

import time
from typing import Any

import grpc

from services.core.caller import Caller
from services.core.config import NodeConfig
from services.core.forwarded_caller import caller_metadata, load_internal_key

# The roles of the units tests use, unless a test is about roles: everything but supervisor.
WORKING_ROLES = ("analyst", "submitter", "victim-id")
TEST_UNIT = Caller(
    node_id="test-node",
    kind="unit",
    name="test-desk",
    role="unit",
    fingerprint="0" * 64,
    unit_roles=frozenset({"analyst", "submitter", "victim-id"}),
)


class _Signing:
    def __init__(self, secret: bytes, caller: Caller) -> None:
        self._secret = secret
        self._caller = caller

    def _details(self, details: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        headers = caller_metadata(self._secret, method, self._caller, now_s=time.time())
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *headers)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_Signing, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_Signing, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_Signing, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_Signing, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def signed_channel(
    address: str, config: NodeConfig, caller: Caller | None = None
) -> grpc.aio.Channel:
    """A plaintext channel to `address` whose calls run as `caller` (default: a unit of
    `config`'s node with every role but supervisor), signed with the node's internal key."""
    who = caller or Caller(**{**TEST_UNIT.__dict__, "node_id": config.node_id})
    secret = load_internal_key(config.data_dir)
    interceptors = [
        cls(secret, who) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    ]
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
