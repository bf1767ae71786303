"""A bare gRPC unary echo server, run as its own process by the transfer benchmark: ``python -m
tests.bench.echo_server PORT``. It stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc


async def serve(port: int) -> None:
    """Echo every request's bytes back until SIGTERM."""

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
