"""Mapping domain refusals to gRPC statuses, with the stable response code, the field and the blocks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from carbon_gateway.v1 import records_pb2
from gateway import wire
from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.store.base import Store

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
    ResponseCode.CALLER_UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ResponseCode.CALLER_NOT_PERMITTED: grpc.StatusCode.PERMISSION_DENIED,
    ResponseCode.TOO_MANY_WATCHES: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ResponseCode.TOO_MANY_MAPPINGS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ResponseCode.TOO_MANY_OPEN_CALLS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ResponseCode.TOO_MANY_CALLS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ResponseCode.UNKNOWN_RECONCILIATION_RUN: grpc.StatusCode.NOT_FOUND,
    ResponseCode.UNKNOWN_MESSAGE: grpc.StatusCode.NOT_FOUND,
    ResponseCode.TRANSFER_DECLINED: grpc.StatusCode.FAILED_PRECONDITION,
    ResponseCode.TRANSFER_ENDED: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(code: ResponseCode) -> grpc.StatusCode:
    """The gRPC status for a response code; business-rule refusals are FAILED_PRECONDITION."""
    return _STATUS.get(code, grpc.StatusCode.FAILED_PRECONDITION)


class AnsweredAs(GatewayError):
    """A refusal answered with ``status`` rather than its response code's usual status (`status_for`), the
    response code, message and blocks kept: one code can mean another thing on another method.
    ``KEY_UNKNOWN_OR_REVOKED`` on a partner's statement is its sender failing to authenticate
    (``UNAUTHENTICATED``); on ``RotateTrustDocument`` it is an authenticated administrator's document the update
    rules refuse, a request to correct. ``field`` names the request field where the refusal names none."""

    def __init__(self, refusal: GatewayError, status: grpc.StatusCode, *, field: str = "") -> None:
        super().__init__(refusal.code, refusal.message, field=refusal.field or field, blocks=refusal.blocks)
        self.status = status


def status_of(exc: GatewayError) -> grpc.StatusCode:
    """The gRPC status a refusal is answered with: its own (`AnsweredAs`) or its response code's."""
    return exc.status if isinstance(exc, AnsweredAs) else status_for(exc.code)


MAX_DETAIL_BYTES = 4096
"""The most a serialized ErrorDetail may take. It travels in trailing metadata, which gRPC refuses past 16 KiB
(and may refuse past 8 KiB) for all headers together: a refusal must never fail to arrive because of its size."""
MAX_STATUS_MESSAGE = 300
"""Characters of the refusal message repeated in the status details (the ErrorDetail carries it in full)."""


def error_detail(exc: GatewayError, record_index: int = -1) -> records_pb2.ErrorDetail:
    """The ErrorDetail message for a refusal, within `MAX_DETAIL_BYTES`: the message is cut to
    `gateway.domain.text.MAX_TEXT_LENGTH` characters, and the offending blocks are listed while they fit."""
    detail = records_pb2.ErrorDetail(
        code=int(exc.code),  # type: ignore[arg-type]
        # A field path or message may hold what the caller sent, a lone surrogate included: the refusal must
        # still be built.
        message=text.encodable(text.truncate(exc.message)),
        field=text.encodable(text.truncate(exc.field, text.MAX_IDENTIFIER_LENGTH)),
        record_index=record_index,
    )
    while detail.ByteSize() > MAX_DETAIL_BYTES // 2 and len(detail.message) > 1:
        detail.message = text.truncate(detail.message, len(detail.message) // 2)
    for block in exc.blocks:
        detail.blocks.append(wire.block_to_proto(block))
        if detail.ByteSize() > MAX_DETAIL_BYTES:
            del detail.blocks[-1]
            break
    return detail


def status_message(exc: GatewayError) -> str:
    """The status details of a refusal: its code, the start of its message and the field."""
    where = f" (field {text.truncate(exc.field, text.MAX_IDENTIFIER_LENGTH)})" if exc.field else ""
    return text.encodable(f"{exc.code.name}: {text.truncate(exc.message, MAX_STATUS_MESSAGE)}{where}")


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: GatewayError) -> None:
    """End the call with the status for ``exc``, its detail in trailing metadata."""
    context.set_trailing_metadata(((ERROR_DETAIL_KEY, error_detail(exc).SerializeToString()),))
    await context.abort(status_of(exc), status_message(exc))


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


UNAVAILABLE_MESSAGE = (
    "the gateway's database could not do this now ({error}); call again later, with the same idempotency key"
    " for a write, which never takes effect twice"
)


async def abort_unexpected(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str, store: Store | None
) -> None:
    """End a call that failed on something other than a refusal. A failure the store calls transient (the
    database unreachable, busy or full) is ``UNAVAILABLE``, which clients retry, logged in one line; anything else
    is a bug: ``INTERNAL``, with its traceback in the log."""
    if store is not None and store.is_transient(exc):
        error = text.truncate(f"{type(exc).__name__}: {exc}", 200)
        log.warning("%s: the database could not do it now: %s", method, error)
        refusal = GatewayError(ResponseCode.INTERNAL_ERROR, UNAVAILABLE_MESSAGE.format(error=error))
        context.set_trailing_metadata(((ERROR_DETAIL_KEY, error_detail(refusal).SerializeToString()),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, status_message(refusal))
    log.error("internal error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the gateway's log has the details")


def refusals_as_status(handler: F) -> F:
    """Turn a `GatewayError` into its status, and any other exception into `abort_unexpected`'s, asking the
    store of the service's gateway (``self.gateway.store``, where it has one) whether the failure is transient."""

    @functools.wraps(handler)
    async def wrapped(self: object, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except GatewayError as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            store = getattr(getattr(self, "gateway", None), "store", None)
            await abort_unexpected(context, exc, getattr(handler, "__name__", "handler"), store)
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
