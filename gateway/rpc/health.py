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
    servicer does: it does not look at the database. Unlike gRPC's own, a watch ends once it has told NOT_SERVING
    at a graceful stop, so open watches do not hold the stop for its whole grace period."""

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

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Each change of the service's status, from its status now, until the gateway stops."""
        # gRPC's own loop, with its bookkeeping of watchers (which `_set` notifies), and an end at the stop.
        condition = self._server_watchers[request.service]
        self._watcher_count_by_service[request.service] += 1
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._gracefully_shutting_down and status != health_pb2.HealthCheckResponse.SERVING:
                        # SERVING with the stop begun: its NOT_SERVING is still to come (it waits for this lock).
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[request.service] -= 1
            if self._watcher_count_by_service[request.service] == 0:
                del self._server_watchers[request.service]
                del self._watcher_count_by_service[request.service]

    async def enter_graceful_shutdown(self) -> None:
        """Set every service NOT_SERVING for good, and end every watch once it has said so: watches of a service
        never set too, which gRPC's own servicer leaves waiting."""
        await super().enter_graceful_shutdown()
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()
