"""Mapping domain refusals to gRPC statuses, with the stable response code, the field and the blocks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from carbon_gateway.v1 import records_pb2
from gateway import wire
from gateway.domain.errors import GatewayError, ResponseCode

log = logging.getLogger(__name__)

ERROR_DETAIL_KEY = "carbon-gateway-error-bin"
"""Binary trailing-metadata key carrying a serialized `carbon_gateway.v1.ErrorDetail`."""

_STATUS: dict[ResponseCode, grpc.StatusCode] = {
    ResponseCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ResponseCode.MALFORMED_PAYLOAD: grpc.StatusCode.INVALID_ARGUMENT,
    ResponseCode.UNKNOWN_ACCOUNT: grpc.StatusCode.NOT_FOUND,
    ResponseCode.UNKNOWN_TRANSFER: grpc.StatusCode.NOT_FOUND,
    ResponseCode.UNKNOWN_PARTNER: grpc.StatusCode.NOT_FOUND,
    ResponseCode.IDEMPOTENCY_KEY_REUSED: grpc.StatusCode.ALREADY_EXISTS,
    ResponseCode.SIGNATURE_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    ResponseCode.KEY_UNKNOWN_OR_REVOKED: grpc.StatusCode.UNAUTHENTICATED,
    ResponseCode.THRESHOLD_NOT_MET: grpc.StatusCode.UNAUTHENTICATED,
    ResponseCode.TRUST_DOCUMENT_EXPIRED: grpc.StatusCode.UNAUTHENTICATED,
    ResponseCode.PEER_IDENTITY_MISMATCH: grpc.StatusCode.PERMISSION_DENIED,
    ResponseCode.ENVELOPE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_for(code: ResponseCode) -> grpc.StatusCode:
    """The gRPC status for a response code; business-rule refusals are FAILED_PRECONDITION."""
    return _STATUS.get(code, grpc.StatusCode.FAILED_PRECONDITION)


def error_detail(exc: GatewayError, record_index: int = -1) -> records_pb2.ErrorDetail:
    """The ErrorDetail message for a refusal."""
    return records_pb2.ErrorDetail(
        code=int(exc.code),  # type: ignore[arg-type]
        message=exc.message,
        field=exc.field,
        blocks=[wire.block_to_proto(b) for b in exc.blocks],
        record_index=record_index,
    )


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: GatewayError) -> None:
    """End the call with the status for ``exc``, its detail in trailing metadata."""
    context.set_trailing_metadata(((ERROR_DETAIL_KEY, error_detail(exc).SerializeToString()),))
    await context.abort(status_for(exc.code), str(exc))


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def refusals_as_status(handler: F) -> F:
    """Turn a `GatewayError` into its status. Any other exception is a bug: log it and return INTERNAL."""

    @functools.wraps(handler)
    async def wrapped(self: object, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except GatewayError as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", getattr(handler, "__name__", "handler"))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the gateway's log has the details")
            raise AssertionError("unreachable") from None

    return wrapped  # type: ignore[return-value]


def read_error_detail(metadata: object) -> records_pb2.ErrorDetail | None:
    """The ErrorDetail in a failed call's trailing metadata, for clients."""
    if not metadata:
        return None
    for key, value in metadata:  # type: ignore[attr-defined]
        if key == ERROR_DETAIL_KEY:
            detail = records_pb2.ErrorDetail()
            detail.ParseFromString(value)
            return detail
    return None
