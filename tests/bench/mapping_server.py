"""The mapping service alone, as its own process, for the streaming benchmark: ``python -m
tests.bench.mapping_server PORT``. It stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from carbon_gateway.v1 import mapping_pb2_grpc
from gateway.rpc.mapping import MappingService


async def serve(port: int) -> None:
    """Serve `carbon_gateway.v1.MappingService` on loopback until SIGTERM."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    mapping_pb2_grpc.add_MappingServiceServicer_to_server(MappingService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
