"""Server reflection through the gateway (real TLS, a unit's certificate), under both names
tools ask for: grpc.reflection.v1 and v1alpha answer alike, list every service the node serves,
and describe a hashex service and the reflection services themselves."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from services.core.reflection import V1_SERVICE, V1ALPHA_SERVICE
from tests.gateway.harness import CALL_TIMEOUT_S, GatewayUnderTest

pytestmark = pytest.mark.asyncio


def _messages(service: str) -> tuple[Any, Any]:
    package = service.rsplit(".", 1)[0]
    pool = descriptor_pool.Default()
    request, response = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse")
    )
    return request, response


async def _ask(
    gateway: GatewayUnderTest, service: str, requests: list[dict[str, Any]]
) -> list[Any]:
    request_class, response_class = _messages(service)
    call = gateway.channel(gateway.unit()).stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    stream = call(iter([request_class(**r) for r in requests]), timeout=CALL_TIMEOUT_S)
    return [answer async for answer in stream]


def _packages(answer: Any) -> list[str]:
    files = answer.file_descriptor_response.file_descriptor_proto
    return [descriptor_pb2.FileDescriptorProto.FromString(f).package for f in files]


@pytest.mark.parametrize("service", [V1_SERVICE, V1ALPHA_SERVICE], ids=["v1", "v1alpha"])
async def test_reflection_lists_and_describes_the_services(
    gateway: GatewayUnderTest, service: str
) -> None:
    listed, registry, v1, unknown = await _ask(
        gateway,
        service,
        [
            {"list_services": ""},
            {"file_containing_symbol": "hashex.v1.Registry"},
            {"file_containing_symbol": V1_SERVICE},
            {"file_containing_symbol": "hashex.v1.Nothing"},
        ],
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"hashex.v1.Registry", "grpc.health.v1.Health", V1_SERVICE, V1ALPHA_SERVICE} <= names
    assert "hashex.v1" in _packages(registry)
    assert _packages(v1)[0] == "grpc.reflection.v1"
    assert unknown.error_response.error_code == 5  # NOT_FOUND
