"""Servers the benchmarks run as their own processes: ``python -m tests.bench.servers echo|mapping PORT``.

``echo`` is a bare gRPC unary echo (the latency limit); ``mapping`` serves `carbon_gateway.v1.MappingService`
alone. Each stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc

from carbon_gateway.v1 import mapping_pb2_grpc
from gateway.rpc.mapping import MappingService


def _echo(server: grpc.aio.Server) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
    )


def _mapping(server: grpc.aio.Server) -> None:
    mapping_pb2_grpc.add_MappingServiceServicer_to_server(MappingService(), server)


async def serve(kind: str, port: int) -> None:
    """Serve ``kind`` on loopback ``port`` until SIGTERM."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    {"echo": _echo, "mapping": _mapping}[kind](server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
