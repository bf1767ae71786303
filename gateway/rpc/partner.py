"""The partner-exchange gRPC service and client, carrying raw envelope bytes both ways.

The servicer hands the request bytes, unparsed, to `gateway.exchange.Exchange.receive`, so the size cap is
checked before parsing and the same checks serve the gRPC and the HTTP path. The client sends the stored
envelope bytes verbatim.

``DeliverBatch`` carries several envelopes of one channel in one call. The receiver takes them one after the
other, exactly as it would take separate ``Deliver`` calls in that order, and answers each with the receipt
``Deliver`` would have given; the batch saves the sender a round trip per statement, which is what limits a
busy channel, since its statements are delivered in sequence order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from carbon_gateway.v1 import partner_pb2
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.text import escaped
from gateway.exchange import EnvelopeForm, Exchange, ReceiptUnsigned
from gateway.outbox import MAX_RUN, BatchesUnsupported, TransportError
from gateway.partners import UNREADABLE_CERTIFICATE, PartnerDirectory, transport_identity
from gateway.rpc.errors import AnsweredAs, abort_with
from gateway.tls import CertificateError, peer_common_names

log = logging.getLogger(__name__)

SERVICE_NAME = "carbon_gateway.v1.PartnerExchange"
DELIVER_METHOD = f"/{SERVICE_NAME}/Deliver"
DELIVER_BATCH_METHOD = f"/{SERVICE_NAME}/DeliverBatch"

BATCHES_ASKED_AGAIN_AFTER = 600.0
"""Seconds after which a partner that did not take ``DeliverBatch`` is offered batches again."""


CANNOT_SIGN = AnsweredAs(
    GatewayError(
        ResponseCode.INTERNAL_ERROR,
        "the receiver cannot sign receipts now (its signer failed): send again later; a statement it took in"
        " before is answered with its receipt",
    ),
    grpc.StatusCode.UNAVAILABLE,
)
"""The refusal of a delivery that no receipt can answer (`ReceiptUnsigned`): a status the sender retries."""


MAX_STATUS_DETAIL = 300
"""Characters of a failed call's status message kept: the partner writes it, up to gRPC's 16 KB of metadata."""


def partner_said(exc: grpc.aio.AioRpcError) -> str:
    """The status message of a failed call, which the partner (or anything between) wrote: made safe to store in
    the outbox, show in ListOutbox and log (`escaped`: no line breaks or controls), and cut short."""
    return escaped(exc.details() or "", MAX_STATUS_DETAIL)


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The transport identity of the peer's verified TLS certificate (`transport_identity`: its common name, "" for
    none, several names joined for several), or None without mTLS."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    try:
        return transport_identity(peer_common_names(auth))
    except CertificateError:
        return UNREADABLE_CERTIFICATE


def partner_handler(exchange: Exchange, *, require_peer_identity: bool) -> grpc.GenericRpcHandler[Any, Any]:
    """The generic handler implementing `carbon_gateway.v1.PartnerExchange`."""

    async def deliver(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        identity = peer_identity(context) if require_peer_identity else None
        try:
            received = await exchange.receive(request, form=EnvelopeForm.PROTOBUF, peer_identity=identity)
        except ReceiptUnsigned:
            await abort_with(context, CANNOT_SIGN)
        return received.receipt

    async def deliver_batch(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        # A batch refused as a whole carries its response code in an ErrorDetail, as every other refusal does.
        batch = partner_pb2.DeliveryBatch()
        try:
            batch.ParseFromString(request)
        except DecodeError:
            await abort_with(
                context,
                GatewayError(
                    ResponseCode.MALFORMED_PAYLOAD,
                    "the request is not a DeliveryBatch (field 1: the envelopes, each as bytes)",
                    field="envelopes",
                ),
            )
        if len(batch.envelopes) > MAX_RUN:
            await abort_with(
                context,
                GatewayError(
                    ResponseCode.MALFORMED_PAYLOAD,
                    f"{len(batch.envelopes)} envelopes in one batch; at most {MAX_RUN}: send the rest in another call",
                    field="envelopes",
                ),
            )
        identity = peer_identity(context) if require_peer_identity else None
        answer = partner_pb2.ReceiptBatch()
        # No receipt leaves before the batch's end, so its statements' commits wait for the disk together.
        try:
            async with exchange.store.synced_once():
                received = await exchange.receive_many(
                    batch.envelopes, form=EnvelopeForm.PROTOBUF, peer_identity=identity
                )
                answer.receipts.extend(r.receipt for r in received)
        except ReceiptUnsigned:
            await abort_with(context, CANNOT_SIGN)
        except OSError:
            # The commits could not be made durable: no receipt may leave. The sender sends the batch again.
            log.exception("a batch of %d envelopes could not be made durable", len(batch.envelopes))
            await abort_with(
                context,
                AnsweredAs(
                    GatewayError(ResponseCode.INTERNAL_ERROR, "the receiver's database failed; retry later"),
                    grpc.StatusCode.UNAVAILABLE,
                ),
            )
        return answer.SerializeToString()

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Deliver": grpc.unary_unary_rpc_method_handler(deliver),
            "DeliverBatch": grpc.unary_unary_rpc_method_handler(deliver_batch),
        },
    )


def _request_too_large(details: str) -> bool:
    """Whether a call's ``RESOURCE_EXHAUSTED`` says the partner's server refused the request as larger than it
    takes. gRPC words the client's refusal of an answer larger than it reads alike, but names the client: that
    answer is a partner's fault, a failure of this call alone, and says nothing of the batches it takes."""
    return "larger than max" in details and "CLIENT:" not in details


class GrpcPartnerTransport:
    """Delivers envelopes to partners over gRPC, one channel per partner, reused across calls."""

    def __init__(
        self,
        partners: PartnerDirectory,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.partners = partners
        self.credentials = credentials
        self.timeout = timeout
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._largest_refused: dict[tuple[str, str], int] = {}
        """The smallest batch (in bytes) each partner's server refused as larger than it takes in one message."""
        self._without_batches: dict[tuple[str, str], float] = {}
        """Partners (at an address) that answered ``DeliverBatch`` with ``UNIMPLEMENTED`` (an earlier version),
        and when: they are asked again after `BATCHES_ASKED_AGAIN_AFTER`, as one may have been upgraded."""

    def _channel(self, party: str) -> grpc.aio.Channel:
        partner = self.partners.get(party)
        if partner is None:
            raise TransportError(f"no partner {party!r} is configured")
        channel = self._channels.get((party, partner.address))
        if channel is None:
            options = [("grpc.ssl_target_name_override", partner.identity)] if self.credentials else []
            channel = (
                grpc.aio.secure_channel(partner.address, self.credentials, options=options)
                if self.credentials
                else grpc.aio.insecure_channel(partner.address)
            )
            self._channels[(party, partner.address)] = channel
        return channel

    def _failed(self, party: str, channel: grpc.aio.Channel, exc: grpc.aio.AioRpcError) -> TransportError:
        """The error of a call on ``channel`` that failed; a partner found unreachable (or silent until the call's
        deadline) gets a new channel at the next call.

        A channel that failed to connect answers every call at once with its last error until its own
        reconnection backoff (up to two minutes) has passed, even once the partner is back: the outbox's next
        try, at most `gateway.outbox.Backoff.maximum` later, must connect afresh instead."""
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            key = next((k for k, c in self._channels.items() if c is channel), None)
            if key is not None:  # not already replaced after another call's failure
                del self._channels[key]
                closing = asyncio.create_task(channel.close(self.timeout))  # calls still on it may finish
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        return TransportError(f"{party}: {exc.code().name}: {partner_said(exc)}")

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        """Send ``envelope`` to ``party``; return the receipt bytes."""
        channel = self._channel(party)
        call = channel.unary_unary(DELIVER_METHOD, None, None)
        try:
            receipt: bytes = await call(envelope, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(party, channel, exc) from None
        return receipt

    async def deliver_batch(self, party: str, envelopes: list[bytes]) -> list[bytes]:
        """Send ``envelopes`` to ``party`` in one ``DeliverBatch`` call, in order; return their receipts, in the
        same order. At most `gateway.outbox.MAX_RUN` at once. Raises `BatchesUnsupported` for a partner whose
        version lacks ``DeliverBatch`` (remembered for `BATCHES_ASKED_AGAIN_AFTER`), or whose server refuses the
        batch as too large for one message: the caller then sends the envelopes one per call."""
        if len(envelopes) > MAX_RUN:
            raise ValueError(f"at most {MAX_RUN} envelopes in one batch, not {len(envelopes)}")
        partner = self.partners.get(party)
        if partner is None:
            raise TransportError(f"no partner {party!r} is configured")
        learned = self._without_batches.get((party, partner.address))
        if learned is not None and time.monotonic() - learned < BATCHES_ASKED_AGAIN_AFTER:
            raise BatchesUnsupported(f"{party} does not take DeliverBatch")
        request = partner_pb2.DeliveryBatch(envelopes=envelopes).SerializeToString()
        if len(request) >= self._largest_refused.get((party, partner.address), len(request) + 1):
            raise BatchesUnsupported(f"{party} takes no batch this large")
        channel = self._channel(party)
        call = channel.unary_unary(DELIVER_BATCH_METHOD, None, None)
        try:
            raw: bytes = await call(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                log.warning("%s does not take DeliverBatch; delivering one envelope per call", party)
                self._without_batches[(party, partner.address)] = time.monotonic()
                raise BatchesUnsupported(f"{party} does not take DeliverBatch") from None
            if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and _request_too_large(exc.details() or ""):
                # The batch exceeds what the partner's server takes in one message (its own envelope cap is
                # below the one configured here): these envelopes go one per call, each within the cap, and so
                # does every later batch as large.
                log.warning("%s refused a batch of %d bytes as too large: %s", party, len(request), partner_said(exc))
                self._largest_refused[(party, partner.address)] = len(request)
                raise BatchesUnsupported(f"{party} takes no batch this large") from None
            raise self._failed(party, channel, exc) from None
        answer = partner_pb2.ReceiptBatch()
        try:
            answer.ParseFromString(raw)
        except DecodeError:
            raise TransportError(f"{party}: the answer to DeliverBatch is not a ReceiptBatch") from None
        if len(answer.receipts) != len(envelopes):
            raise TransportError(
                f"{party}: {len(answer.receipts)} receipts answered a batch of {len(envelopes)} envelopes"
            )
        return list(answer.receipts)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
