"""Authentication and roles on the operator API: a server interceptor and the table of each method's role.

Every call of the operator server passes `OperatorAuthInterceptor`. It identifies the caller (bearer token,
client certificate, or loopback when allowed; see `gateway.domain.access.identify`), refuses with
``UNAUTHENTICATED`` / ``CALLER_UNAUTHENTICATED`` when it cannot, and with ``PERMISSION_DENIED`` /
``CALLER_NOT_PERMITTED`` when the caller's role is below the method's entry in `METHOD_ROLES`. A method
missing from the table is refused to everyone. Health checking is open; reflection needs read-only.
While the method runs, `current_caller` names the caller (the operator service scopes idempotency keys by it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from carbon_gateway.v1 import mapping_pb2, operator_pb2
from gateway.domain.access import (
    LOOPBACK_CALLER,
    AuthenticationRefused,
    Caller,
    DeliveryPlaces,
    Full,
    OperatorCaller,
    Places,
    Role,
    identify,
    is_loopback_peer,
    peer_source,
)
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.rpc.errors import abort_with
from gateway.rpc.interceptors import streaming, tolerant_handler
from gateway.tls import CertificateError, peer_common_names

log = logging.getLogger(__name__)

GRPC_CORE_LOGGER = "grpc._cython.cygrpc"
"""The logger gRPC's Cython layer writes to; `UndecodableMetadataFilter` is installed on it."""


class UndecodableMetadataFilter(logging.Filter):
    """Keep credentials out of the log: gRPC logs every metadata value that is not UTF-8, as it reads the call's
    metadata, at ERROR with a traceback and the value itself, so the bytes of an ``authorization: Bearer ...``
    header (a token with one stray byte, say) reached the log, once per read, from anyone who can connect. Such a
    record is logged at INFO without the value or the traceback; the call is refused as any unknown token is."""

    MESSAGE = "a call carried a metadata value that is not UTF-8; the value is not logged, as it may hold a credential"

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite gRPC's record of an undecodable metadata value; pass every other record unchanged."""
        if isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on"):
            record.msg, record.args = self.MESSAGE, None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


if not any(isinstance(f, UndecodableMetadataFilter) for f in logging.getLogger(GRPC_CORE_LOGGER).filters):
    logging.getLogger(GRPC_CORE_LOGGER).addFilter(UndecodableMetadataFilter())

_OPERATOR = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
_MAPPING = mapping_pb2.DESCRIPTOR.services_by_name["MappingService"].full_name

_R, _O, _A = Role.READ_ONLY, Role.OPERATOR, Role.ADMINISTRATOR

METHOD_ROLES: dict[str, Role] = {
    # Reads: any authenticated caller.
    f"/{_OPERATOR}/ListAuthorizations": _R,
    f"/{_OPERATOR}/GetLedgerSummary": _R,
    f"/{_OPERATOR}/GetTransfer": _R,
    f"/{_OPERATOR}/ListTransfers": _R,
    f"/{_OPERATOR}/ListLedgerEntries": _R,
    f"/{_OPERATOR}/ListHoldings": _R,
    f"/{_OPERATOR}/ListTrust": _R,
    f"/{_OPERATOR}/ListOutbox": _R,
    f"/{_OPERATOR}/ListDeadLetters": _R,
    f"/{_OPERATOR}/GetReconciliation": _R,
    f"/{_OPERATOR}/ListReconciliations": _R,
    f"/{_OPERATOR}/WatchChanges": _R,
    # Mapping only translates the records it is sent; it reads and writes nothing of the gateway's.
    f"/{_MAPPING}/ListAdapters": _R,
    f"/{_MAPPING}/MapRecords": _R,
    f"/{_MAPPING}/StreamMapRecords": _R,
    # The registry's daily work: accounts, authorizations, issuance, transfers, uses and cancellations, runs.
    f"/{_OPERATOR}/OpenAccount": _O,
    f"/{_OPERATOR}/RegisterAuthorization": _O,
    f"/{_OPERATOR}/AmendAuthorization": _O,
    f"/{_OPERATOR}/RevokeAuthorization": _O,
    f"/{_OPERATOR}/UseUnits": _O,
    f"/{_OPERATOR}/CancelUnits": _O,
    f"/{_OPERATOR}/RegisterIssuance": _O,
    f"/{_OPERATOR}/ProposeTransfer": _O,
    f"/{_OPERATOR}/CancelTransfer": _O,
    f"/{_OPERATOR}/DecideTransfer": _O,
    f"/{_OPERATOR}/RunReconciliation": _O,
    # Fetches the partner's next trust document, which only counts if the keys trusted now signed it.
    f"/{_OPERATOR}/RefreshPartnerTrust": _O,
    # What changes this gateway's own keys, the books' final state, or settles what the protocol left open.
    f"/{_OPERATOR}/RotateTrustDocument": _A,
    f"/{_OPERATOR}/SetReportedEmissions": _A,
    f"/{_OPERATOR}/LockPeriod": _A,
    f"/{_OPERATOR}/RetryDeadLetter": _A,
    f"/{_OPERATOR}/AbandonDeadLetter": _A,
    f"/{_OPERATOR}/ResolveReconciliation": _A,
    f"/{_OPERATOR}/PruneChanges": _A,
}
"""The least role each operator-server method needs, by full gRPC method path. A method not listed is refused."""

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods any caller may call, with or without credentials (load balancers and orchestrators check health)."""

OPEN_CALLS_READ_AT_ONCE = 16
"""How many calls of open methods without credentials read their request at once, from all callers. gRPC reads a
request of up to 4 MB, and a crowd of such calls held that much memory each; those over the limit are refused
before their requests are read."""

OPEN_READS_PER_ADDRESS = 2
"""How many of those one network address (an IPv6 /64, `gateway.domain.access.peer_source`) may have at once: one
caller cannot take every place and shut out the health checks of others (a load balancer's)."""

OPEN_READ_SECONDS = 2.0
"""How long a call without credentials may take to send its request: a silent one gives its place back."""

OPEN_REQUEST_BYTES = 1024
"""The largest request an open method takes without credentials: a health check names one service."""

OPEN_STREAMS_AT_ONCE = 32
"""How many streams of open methods without credentials (health ``Watch``) are served at once, from all callers.
A watch lasts as long as its caller likes; without a limit, callers nobody knows could open them until the
server ran out of memory."""

OPEN_STREAMS_PER_ADDRESS = 4
"""How many of those one network address may have open at once."""

DELIVERIES_AT_ONCE = DeliveryPlaces.at_once
"""How many calls of the partner port's other methods (``Deliver``, ``DeliverBatch``) it serves at once, from all
callers. Each holds its request, up to the partner message limit (some four times the envelope cap), until its
receipts are sent: without a bound, callers could take all of the gateway's memory with many such calls at once,
or with calls whose requests they send slowly. More are refused with ``TOO_MANY_CALLS`` before their requests
are read; a partner's gateway sends one call per partner at a time, and sends a refused one again. The default
of ``[limits] deliveries_at_once``."""

DELIVERIES_PER_ADDRESS = DeliveryPlaces.per_address
"""How many of those one network address (an IPv6 /64) may have at once: one caller cannot take every place and
shut out the other partners."""

DELIVERY_READ_SECONDS = 60.0
"""How long a delivery that holds a place may take to send its request (as a body on the JSON path): one that
sends nothing gives its place back and is refused."""

READ_ONLY_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
"""Reflection lists the services and their messages: read-only."""

_current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("operator_caller", default=None)


def current_caller() -> Caller | None:
    """The authenticated caller of the operator call being handled; None outside the operator server."""
    return _current_caller.get()


def caller_name() -> str:
    """The name of the authenticated caller of this call. Calls made in-process, past the gRPC server and its
    `OperatorAuthInterceptor` (the simulation), have none and count as the loopback caller."""
    caller = current_caller()
    return caller.name if caller is not None else LOOPBACK_CALLER


def caller_may_take_kept_places() -> bool:
    """Whether the caller of this call may take the places kept for those who change the books (operators and
    administrators; calls made in-process count as the loopback administrator), or stops short of them."""
    caller = current_caller()
    return caller is None or caller.role.allows(Role.OPERATOR)


def required_role(method: str) -> Role | None:
    """The least role ``method`` needs; None when it needs no credentials at all.

    Raises `GatewayError` (``CALLER_NOT_PERMITTED``) for a method that is in no table.
    """
    if method.startswith(OPEN_PREFIXES):
        return None
    if method.startswith(READ_ONLY_PREFIXES):
        return Role.READ_ONLY
    role = METHOD_ROLES.get(method)
    if role is None:
        raise GatewayError(
            ResponseCode.CALLER_NOT_PERMITTED,
            f"{method} has no entry in the operator API's role table, so no caller may call it",
        )
    return role


@dataclass(frozen=True)
class OperatorAccess:
    """Who may call the operator API: the configured callers, the loopback rule, and the partners' identities
    (Party codes and TLS identities), whose certificates are refused."""

    callers: Sequence[OperatorCaller] = ()
    unauthenticated_loopback: bool = False
    partner_identities: Collection[str] = ()


LOOPBACK_ADMINISTRATOR = OperatorAccess(unauthenticated_loopback=True)
"""Every caller on loopback is the administrator: the in-process harness, the demo and tests."""


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header; a malformed header is refused, not ignored."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise AuthenticationRefused("the call carries more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationRefused("the authorization header is not 'Bearer <token>'")
    return token.strip()


def _common_name(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The common name of the client certificate, None without one; `AuthenticationRefused` for a certificate
    whose subject carries several, which could name a caller by one and a partner by another."""
    auth = context.auth_context()
    if not auth.get("x509_pem_cert") and not auth.get("x509_common_name"):
        return None
    try:
        names = peer_common_names(auth)
    except CertificateError:
        raise AuthenticationRefused(
            "the client certificate's subject cannot be read (a name its string type does not allow, such as a NUL"
            " byte in a PrintableString)"
        ) from None
    if len(names) > 1:
        raise AuthenticationRefused(
            f"the client certificate names {len(names)} common names; an operator caller's certificate names one"
        )
    return names[0] if names else None


async def _one_request(method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    """The one request of a call to a method that takes one; ``MALFORMED_PAYLOAD`` when the client sent none."""
    async for request in requests:
        return request
    await abort_with(
        context, GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"the call to {method} carries no request message")
    )


class _OpenCallPlaces:
    """The places calls hold while they are served. Calls without credentials to open methods (`OPEN_PREFIXES`):
    a few read their requests at a time (`_read`), and a few streams are open at a time (`_held_open`). Calls of
    an identified caller (`current_caller`) take none of those, but one of the caller's own places while they
    take one request (`_calling`)."""

    SERVER = "the operator API"
    """The server, as a refusal names it."""
    CREDENTIALS_ADVICE = ", or with credentials (a read-only token suffices)"
    """What a refusal of a call without credentials advises besides calling again."""

    def __init__(self) -> None:
        self._open_reading = Places()  # calls without credentials reading, by address
        self._open_streams = Places()  # streams without credentials open, by address
        self._calls = Places()  # calls of one request in progress, by authenticated caller
        self._deliveries = Places()  # partner-port deliveries in progress, by address

    async def _take_place(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        places: Places,
        *,
        in_all: int,
        per_address: int,
        what: str,
        doing: str,
    ) -> str:
        """Count a call without credentials in ``places`` (by its address) and return the address, or refuse it
        with ``TOO_MANY_OPEN_CALLS`` when ``in_all`` are counted already, or ``per_address`` from its address."""
        address = peer_source(context.peer())
        full = places.take(address, in_all=in_all, per_source=per_address)
        if full is None:
            return address
        if full is Full.IN_ALL:
            crowded = f"{in_all} {what} without credentials {doing}"
        else:
            crowded = f"{per_address} {what} without credentials from {address} {doing}"
        await abort_with(
            context,
            GatewayError(
                ResponseCode.TOO_MANY_OPEN_CALLS,
                f"{crowded}, as many as {self.SERVER} takes at once; call {method} again shortly"
                f"{self.CREDENTIALS_ADVICE}",
            ),
        )
        raise AssertionError("abort_with returns only by raising")

    @contextlib.asynccontextmanager
    async def _calling(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Hold one of the caller's places (``calls_at_once``, `gateway.domain.access.CALLS_AT_ONCE` unless
        configured) while its call is read and served, or refuse the call with ``TOO_MANY_CALLS``. Each caller
        may hold a request of up to 4 MB and a share of the store per place: a caller's token, even a read-only
        one given to a load balancer, cannot take the gateway's memory or time from the others. A call without
        credentials takes none here (`_read`)."""
        caller = _current_caller.get()
        if caller is None:
            yield
            return
        if self._calls.take(caller.name, per_source=caller.calls_at_once) is not None:
            await abort_with(
                context,
                GatewayError(
                    ResponseCode.TOO_MANY_CALLS,
                    f"the caller {caller.name!r} has {caller.calls_at_once} calls in progress, as many as"
                    f" {self.SERVER} takes from it at once; call {method} again once one has ended",
                ),
            )
        try:
            yield
        finally:
            self._calls.give(caller.name)

    @contextlib.asynccontextmanager
    async def _open_stream(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Hold one of the `OPEN_STREAMS_AT_ONCE` places (`OPEN_STREAMS_PER_ADDRESS` per address) for as long as
        a stream without credentials is served; a stream with credentials holds none."""
        if _current_caller.get() is not None:
            yield
            return
        address = await self._take_place(
            method,
            context,
            self._open_streams,
            in_all=OPEN_STREAMS_AT_ONCE,
            per_address=OPEN_STREAMS_PER_ADDRESS,
            what="streams",
            doing="are open",
        )
        try:
            yield
        finally:
            self._open_streams.give(address)

    def _held_open(self, method: str, inner: Any) -> Any:
        """``inner`` (a server-streaming handler, in either of the styles `streaming` accepts) served while it
        holds a place of `_open_stream`."""
        open_stream = self._open_stream
        if inspect.isasyncgenfunction(inner):

            async def generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                async with open_stream(method, context):
                    async for response in inner(request, context):
                        yield response

            return generator

        async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            async with open_stream(method, context):
                await inner(request, context)

        return writer

    async def _read(
        self, method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """The one request of an admitted call. Without credentials (an open method), only
        `OPEN_CALLS_READ_AT_ONCE` calls, `OPEN_READS_PER_ADDRESS` from one address, read theirs at a time, each
        within `OPEN_READ_SECONDS`, and one over `OPEN_REQUEST_BYTES` is refused."""
        if _current_caller.get() is not None:
            return await _one_request(method, requests, context)
        address = await self._take_place(
            method,
            context,
            self._open_reading,
            in_all=OPEN_CALLS_READ_AT_ONCE,
            per_address=OPEN_READS_PER_ADDRESS,
            what="calls",
            doing="are being read",
        )
        try:
            async with asyncio.timeout(OPEN_READ_SECONDS):
                request = await _one_request(method, requests, context)
        except TimeoutError:
            request = None
        finally:
            self._open_reading.give(address)
        if request is None:
            await abort_with(
                context,
                GatewayError(
                    ResponseCode.MALFORMED_PAYLOAD,
                    f"the call to {method} sent no request within {OPEN_READ_SECONDS:g} s; without credentials a"
                    " request must come at once",
                ),
            )
        # An unreadable request is the inner handler's to refuse (`MalformedRequestInterceptor`).
        size = request.ByteSize() if isinstance(request, Message) else 0
        if size > OPEN_REQUEST_BYTES:
            del request
            await abort_with(
                context,
                GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"the request to {method} is {size:,} bytes; without credentials a request may be at most"
                    f" {OPEN_REQUEST_BYTES:,}",
                    field="request",
                ),
            )
        return request

    def _limited(
        self, method: str, found: Any, admit: Callable[[str, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``found`` (the handler of ``method``), served once ``admit`` admits the caller, with the places of
        callers without credentials held."""
        # grpc's stubs type the handlers for the synchronous server; the aio server calls them as coroutines.
        handler: Any = found
        deserializer, serializer = handler.request_deserializer, handler.response_serializer
        read, calling = self._read, self._calling
        # A method that takes one request is served as one that takes a stream of them, and reads its request only
        # once the caller is admitted: served as unary, gRPC reads the whole request (up to its 4 MB limit) before
        # any handler runs, and a crowd of calls with a wrong token held that much memory each. The client sees no
        # difference: one message each way. The open methods (health) admit callers without credentials: a few of
        # those read their requests at a time (`_read`).
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await admit(method, context)
                async with calling(method, context):
                    return await inner_uu(await read(method, requests, context), context)

            return grpc.stream_unary_rpc_method_handler(unary_unary, deserializer, serializer)

        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(method, context)
            return request

        if handler.unary_stream is not None:

            async def admitted_then_read(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                await admit(method, context)
                return await read(method, requests, context)

            return grpc.stream_stream_rpc_method_handler(
                streaming(self._held_open(method, handler.unary_stream), admitted_then_read),
                deserializer,
                serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await admit(method, context)
                return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream, admitted), deserializer, serializer
        )


class OperatorAuthInterceptor(_OpenCallPlaces, grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticate every operator-server call and check the caller's role against `METHOD_ROLES`."""

    def __init__(self, access: OperatorAccess) -> None:
        super().__init__()
        self.access = access

    def authorize(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Caller | None:
        """The caller of this call, or `GatewayError` with ``CALLER_UNAUTHENTICATED`` / ``CALLER_NOT_PERMITTED``.

        None for an open method called without credentials.
        """
        needed = required_role(method)
        try:
            token = _bearer_token(context.invocation_metadata())
            common_name = _common_name(context)
            if needed is None and token is None and common_name is None:
                return None
            caller = identify(
                self.access.callers,
                token=token,
                common_name=common_name,
                loopback=is_loopback_peer(context.peer()),
                unauthenticated_loopback=self.access.unauthenticated_loopback,
                partner_identities=self.access.partner_identities,
            )
        except AuthenticationRefused as exc:
            if needed is None:
                return None
            # The peer and the reason, never the token.
            log.info("operator call %s from %s refused: %s", method, context.peer(), exc)
            raise GatewayError(ResponseCode.CALLER_UNAUTHENTICATED, str(exc), field="authorization") from None
        if needed is not None and not caller.role.allows(needed):
            raise GatewayError(
                ResponseCode.CALLER_NOT_PERMITTED,
                f"{method} needs the role {needed.value!r}; the caller {caller.name!r} is {caller.role.value!r}",
            )
        return caller

    async def _admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            _current_caller.set(self.authorize(method, context))
        except GatewayError as exc:
            await abort_with(context, exc)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = await continuation(handler_call_details)
        if found is None:
            return found
        return self._limited(str(getattr(handler_call_details, "method", "?")), found, self._admit)


async def _anyone(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Admit every caller: one without credentials, whose call takes an open place."""


class OpenMethodsInterceptor(_OpenCallPlaces, grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The limits of the partner server, which has no operator callers: those of the open methods
    (`OPEN_PREFIXES`: health), where every caller counts as one without credentials, and for the other methods
    (the deliveries) ``places`` (`DELIVERIES_AT_ONCE`, `DELIVERIES_PER_ADDRESS` from one address, unless
    configured)."""

    SERVER = "the partner port"
    CREDENTIALS_ADVICE = ""  # no credentials count here

    def __init__(self, places: DeliveryPlaces | None = None) -> None:
        super().__init__()
        self.places = places
        """The configured delivery places; None for the module's defaults."""

    def _delivery_places(self) -> tuple[int, int]:
        if self.places is not None:
            return self.places.at_once, self.places.per_address
        return DELIVERIES_AT_ONCE, DELIVERIES_PER_ADDRESS

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = await continuation(handler_call_details)
        method = str(getattr(handler_call_details, "method", "?"))
        if found is None:
            return found
        if not method.startswith(OPEN_PREFIXES):
            return self._delivering(method, found)
        # Unreadable request bytes are refused as on the operator server (`MalformedRequestInterceptor`).
        return self._limited(method, tolerant_handler(method, found), _anyone)

    def _delivering(self, method: str, found: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """``found``, a method that takes one request, served while the call holds one of the delivery places,
        and read only once it does (as `_limited` serves the operator methods, for the same reason)."""
        handler: Any = found
        if handler.unary_unary is None:
            return found  # every partner method takes one request and answers one
        inner = handler.unary_unary
        places = self._deliveries

        async def unary_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            address = peer_source(context.peer())
            at_once, per_address = self._delivery_places()
            full = places.take(address, in_all=at_once, per_source=per_address)
            if full is None:
                try:
                    try:
                        async with asyncio.timeout(DELIVERY_READ_SECONDS):
                            request = await _one_request(method, requests, context)
                    except TimeoutError:
                        await abort_with(
                            context,
                            GatewayError(
                                ResponseCode.MALFORMED_PAYLOAD,
                                f"the call to {method} sent no whole request within {DELIVERY_READ_SECONDS:g} s",
                            ),
                        )
                    return await inner(request, context)
                finally:
                    places.give(address)
            if full is Full.IN_ALL:
                crowded = f"{at_once} calls are being served"
            else:
                crowded = f"{per_address} calls from {address} are being served"
            await abort_with(
                context,
                GatewayError(
                    ResponseCode.TOO_MANY_CALLS,
                    f"{crowded}, as many as {self.SERVER} takes at once; nothing of this call was read: call {method}"
                    " again shortly",
                ),
            )
            raise AssertionError("abort_with returns only by raising")

        return grpc.stream_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
