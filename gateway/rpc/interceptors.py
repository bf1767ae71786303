"""A server interceptor that answers request bytes that do not parse with ``INVALID_ARGUMENT``.

Without it, gRPC answers a request its deserializer cannot read with a bare status and no `ErrorDetail`,
which a client cannot tell from a failure of the gateway. With it, garbage gets the same clear refusal as
any other malformed field: ``INVALID_ARGUMENT``, response code ``MALFORMED_PAYLOAD``, and the method named.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.domain.errors import GatewayError, ResponseCode
from gateway.rpc.errors import abort_with


class _Unreadable:
    """Stands in for a request message whose bytes did not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError, RuntimeError) as exc:
            return _Unreadable(f"{type(exc).__name__}: {exc}"[:200])

    return deserialize


def _refusal(method: str, reason: str) -> GatewayError:
    return GatewayError(
        ResponseCode.MALFORMED_PAYLOAD, f"the request to {method} is not a valid protobuf message ({reason})"
    )


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Replace each method's deserializer with one that never raises, and refuse what it could not read."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = await continuation(handler_call_details)
        if found is None:
            return found
        return tolerant_handler(str(getattr(handler_call_details, "method", "?")), found)


def tolerant_handler(method: str, found: Any) -> grpc.RpcMethodHandler[Any, Any]:
    """``found``, the handler of ``method``, with a deserializer that never raises: request bytes that do not parse
    are refused with ``MALFORMED_PAYLOAD`` (`MalformedRequestInterceptor` does this for every method)."""
    # grpc's stubs type the handlers for the synchronous server; the aio server calls them as coroutines.
    handler: Any = found
    deserializer = _tolerant(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Unreadable):
                await abort_with(context, _refusal(method, request.reason))
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
    if handler.unary_stream is not None:

        async def readable(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Unreadable):
                await abort_with(context, _refusal(method, request.reason))
            return request

        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream, readable), deserializer, serializer)

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Unreadable):
                await abort_with(context, _refusal(method, request.reason))
            yield request

    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await inner_su(checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)

    async def checking(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return checked(requests, context)

    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream, checking), deserializer, serializer)


def streaming(inner: Any, first: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """A streaming handler that runs ``first(request, context)`` (which may refuse the call, or return the request
    to pass on) and then ``inner`` in ``inner``'s own style: an async generator function's responses are yielded
    on, and a coroutine function that writes its responses itself (``context.write``, as grpc's health
    ``Watch`` does) is awaited. An interceptor that iterated a coroutine would fail every such call."""
    if inspect.isasyncgenfunction(inner):

        async def generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            passed = await first(request, context)
            async for response in inner(passed, context):
                yield response

        return generator

    async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        passed = await first(request, context)
        await inner(passed, context)

    return writer
