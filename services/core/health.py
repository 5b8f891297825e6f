"""gRPC health for every server `build_server` makes: grpcio-health-checking's servicer (Check,
Watch, graceful NOT_SERVING) plus `List`, which that servicer leaves unimplemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import _async as health_aio  # the documented `health.aio`
from grpc_health.v1 import health_pb2


class NodeHealth(health_aio.HealthServicer):  # type: ignore[misc]  # untyped package
    """Health of a server and of each service it serves. `List` answers for exactly the names
    given here (the server itself as "" and each service): a fixed, small set, so its answer
    is bounded without the RESOURCE_EXHAUSTED limit the protocol allows for."""

    def __init__(self, service_names: Sequence[str]) -> None:
        super().__init__()
        self._names = ("", *service_names)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for name in self._names:
            answer = await self.Check(health_pb2.HealthCheckRequest(service=name), context)
            response.statuses[name].CopyFrom(answer)
        return response
