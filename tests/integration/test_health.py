"""Health checking through the interceptors: load balancers and gRPC's client-side health checks use ``Watch``,
a streaming method whose handler writes its answers itself instead of yielding them."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.demo import Pair


@pytest.mark.asyncio
@pytest.mark.parametrize("port", ["operator", "partner"])
async def test_health_check_and_watch_answer_serving_on_both_ports(pair: Pair, port: str) -> None:
    node = pair.chn
    address = node.operator_address if port == "operator" else node.partner_address
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = await call.read()
        call.cancel()
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert first.status == health_pb2.HealthCheckResponse.SERVING
