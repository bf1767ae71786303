"""The gRPC health service of both ports, which says NOT_SERVING while the gateway's database does not answer."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from gateway.store.base import DatabaseProbe


class DatabaseHealth(HealthServicer):  # type: ignore[misc]
    """gRPC's health servicer whose ``Check`` answers NOT_SERVING for a service set SERVING while the database does
    not answer a read (`DatabaseProbe`): without it the gateway can neither take a statement in nor serve an
    operator, and a load balancer checking health must send callers elsewhere.

    ``Watch`` streams the statuses set (SERVING from the start, NOT_SERVING on a graceful stop), as gRPC's own
    servicer does: it does not look at the database."""

    def __init__(self, database: DatabaseProbe) -> None:
        super().__init__()
        self.database = database

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        """The service's status, NOT_SERVING in place of SERVING while the database does not answer."""
        answer: health_pb2.HealthCheckResponse = await super().Check(request, context)
        if answer.status == health_pb2.HealthCheckResponse.SERVING and await self.database.problem() is not None:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return answer
