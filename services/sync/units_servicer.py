"""gRPC face of federated lookups for the node's own units (Units service)."""

from __future__ import annotations

from typing import Any

import grpc

from hashex.v1 import federation_pb2, federation_pb2_grpc
from services.core.rpc_status import handles_errors
from services.core.server import ServiceBinding
from services.sync.federated_lookup import FederatedLookup

SERVICE_NAME = federation_pb2.DESCRIPTOR.services_by_name["Units"].full_name


class UnitsServicer(federation_pb2_grpc.UnitsServicer):
    def __init__(self, lookup: FederatedLookup) -> None:
        self._lookup = lookup

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            SERVICE_NAME,
            lambda server: federation_pb2_grpc.add_UnitsServicer_to_server(self, server),
        )

    @handles_errors
    async def FederatedLookup(
        self,
        request: federation_pb2.FederatedLookupRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> federation_pb2.FederatedLookupResponse:
        return await self._lookup.lookup(request)
