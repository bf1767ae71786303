"""The partner exchange: signed statements out through the outbox, and the receiver's checks on the way in.

Both transports (gRPC and HTTP/JSON) hand the raw envelope bytes to `Exchange.receive`, which runs the checks
of DESIGN.md section 5 in order:

1. size cap (before any parsing);
2. envelope parse;
3. allowed payload type;
4. choose the partner (by the mTLS peer identity, or by the keyid hint without mTLS) and verify the
   threshold of that partner's trusted transfer keys;
5. parse those same payload bytes; the signed sender must be that partner and the receiver this gateway;
6. a message ID already seen returns the stored receipt, unchanged, with no second effect;
7. time window;
8. sequence exactly last + 1 and hash chain; a gap is refused with the sequence to resend from.

Steps 6 to 8, the statement's effect, the channel's high-water mark and the verbatim message are written in
one transaction. A refusal at steps 1 to 8 persists nothing; a business refusal after step 8 (for example a
Decision naming an unknown transfer) still consumes the sequence number and is recorded with its receipt.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import DecodeError

from carbon_gateway.v1 import partner_pb2
from gateway import wire
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.statements import (
    GENESIS_HASH,
    ChannelState,
    Header,
    SequenceVerdict,
    TimeWindow,
    check_addressing,
    check_sequence,
    check_window,
    payload_hash,
)
from gateway.partners import Partner, PartnerDirectory
from gateway.store.base import Store, StoredMessage, Transaction
from signing import (
    TRUST_PAYLOAD_TYPE,
    Envelope,
    EnvelopeFormatError,
    ExpiredTrustError,
    InvalidSignatureError,
    Signer,
    ThresholdError,
    TrustDocument,
    TrustedParty,
    TrustError,
    UnknownKeyError,
    VerificationError,
    sign_envelope,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_ENVELOPE_BYTES = 1 << 20


class EnvelopeForm(enum.StrEnum):
    """How an envelope is spelled on the wire: protobuf (gRPC) or JSON (HTTP)."""

    PROTOBUF = "protobuf"
    JSON = "json"


@dataclass(frozen=True)
class ExchangeSettings:
    """The receiver's limits and the sender's message lifetime."""

    self_party: str
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    window: TimeWindow = field(default_factory=TimeWindow)
    message_lifetime: dt.timedelta = dt.timedelta(hours=12)
    allowed_payload_types: frozenset[str] = frozenset({wire.STATEMENT_PAYLOAD_TYPE})


class StatementHandler(Protocol):
    """Applies a verified, in-order statement's effect inside the receiving transaction."""

    async def __call__(self, tx: Transaction, partner: str, header: Header, statement: partner_pb2.Statement) -> None:
        """Apply the effect, or raise `GatewayError` to refuse it (the effect is rolled back)."""


def verification_refusal(exc: Exception) -> GatewayError:
    """The refusal for a failed signature or trust check, with its response code."""
    code = ResponseCode.SIGNATURE_INVALID
    if isinstance(exc, UnknownKeyError):
        code = ResponseCode.KEY_UNKNOWN_OR_REVOKED
    elif isinstance(exc, ThresholdError):
        code = ResponseCode.THRESHOLD_NOT_MET
    elif isinstance(exc, ExpiredTrustError):
        code = ResponseCode.TRUST_DOCUMENT_EXPIRED
    elif isinstance(exc, TrustError):
        code = ResponseCode.TRUST_UPDATE_REFUSED
    elif not isinstance(exc, (InvalidSignatureError, VerificationError)):
        raise exc
    return GatewayError(code, str(exc))


def apply_trust_update(current: TrustedParty, envelope: Envelope, now: dt.datetime) -> TrustedParty:
    """``current`` updated by ``envelope``, or the refusal saying why not."""
    try:
        return current.update(envelope, now)
    except ExpiredTrustError as exc:
        raise GatewayError(ResponseCode.TRUST_DOCUMENT_EXPIRED, str(exc)) from None
    except (TrustError, VerificationError) as exc:
        raise GatewayError(ResponseCode.TRUST_UPDATE_REFUSED, str(exc)) from None


class SequenceGap(GatewayError):
    """A statement that skips ahead on its channel; the sender must resend from ``resend_from``."""

    def __init__(self, resend_from: int, got: int) -> None:
        super().__init__(
            ResponseCode.SEQUENCE_GAP, f"expected sequence {resend_from}, got {got}; resend from {resend_from}"
        )
        self.resend_from = resend_from


@dataclass(frozen=True)
class Received:
    """The outcome of `Exchange.receive`: the signed receipt, in the form it arrived in, and its code."""

    receipt: bytes
    code: ResponseCode
    detail: str
    taken_in: bool = False


class Exchange:
    """Signs outgoing statements into the outbox and checks incoming ones."""

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        signer: Signer,
        partners: PartnerDirectory,
        store: Store,
        handler: StatementHandler,
        clock: Callable[[], dt.datetime],
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.partners = partners
        self.store = store
        self.handler = handler
        self.clock = clock
        self.on_enqueued = on_enqueued

    # outgoing

    async def enqueue(self, tx: Transaction, receiver: str, **body: object) -> str:
        """Sign a statement to ``receiver`` with the next sequence number and put it in the outbox.

        ``body`` is one keyword naming the Statement's body field (``proposal=...``). Returns the message ID.
        """
        now = self.clock()
        channel = await tx.outgoing_channel(receiver)
        header = Header(
            message_id=str(uuid.uuid4()),
            sender=self.settings.self_party,
            receiver=receiver,
            sequence=channel.last_sequence + 1,
            previous_hash=channel.last_hash,
            issued_at=now,
            expires_at=now + self.settings.message_lifetime,
        )
        statement = partner_pb2.Statement(header=wire.header_to_proto(header), **body)  # type: ignore[arg-type]
        payload = statement.SerializeToString()
        envelope = wire.envelope_to_bytes(sign_envelope(wire.STATEMENT_PAYLOAD_TYPE, payload, [self.signer]))
        await tx.set_outgoing_channel(receiver, channel.advance(payload))
        await tx.enqueue(
            receiver=receiver, sequence=header.sequence, message_id=header.message_id, envelope=envelope, now=now
        )
        await tx.record_message(StoredMessage("out", receiver, header.message_id, envelope, b"", now))
        return header.message_id

    async def reissue(self, receiver: str) -> int:
        """Re-date and re-sign every undelivered statement to ``receiver``, after it refused one as expired.

        The receiver refused the head of the channel without taking it in, so none of the pending statements
        reached it. Each keeps its message ID and sequence number; it gets fresh issue and expiry times, and
        the hash chain is rebuilt from the last statement that was delivered. One transaction.
        """
        now = self.clock()
        async with self.store.transaction() as tx:
            pending = sorted((m for m in await tx.pending_outbox() if m.receiver == receiver), key=lambda m: m.sequence)
            if not pending:
                return 0
            previous = GENESIS_HASH
            if pending[0].sequence > 1:
                delivered = await tx.outbox_message(receiver, pending[0].sequence - 1)
                assert delivered is not None
                previous = payload_hash(wire.envelope_from_bytes(delivered.envelope).payload)
            for message in pending:
                envelope = wire.envelope_from_bytes(message.envelope)
                statement = partner_pb2.Statement()
                statement.ParseFromString(envelope.payload)
                statement.header.previous_hash = previous
                statement.header.issued_at.CopyFrom(wire.timestamp(now))
                statement.header.expires_at.CopyFrom(wire.timestamp(now + self.settings.message_lifetime))
                payload = statement.SerializeToString()
                fresh = wire.envelope_to_bytes(sign_envelope(envelope.payload_type, payload, [self.signer]))
                await tx.replace_outbox_envelope(message.outbox_id, receiver, message.message_id, fresh)
                previous = payload_hash(payload)
            channel = await tx.outgoing_channel(receiver)
            await tx.set_outgoing_channel(receiver, ChannelState(channel.last_sequence, previous))
        log.warning("re-dated %d undelivered statements to %s after it found one expired", len(pending), receiver)
        return len(pending)

    def read_receipt(self, partner: Partner, data: bytes, sent: bytes) -> partner_pb2.Receipt:
        """Verify the receipt ``partner`` returned for the envelope ``sent`` (protobuf form) and return it.

        Raise `GatewayError` if it does not verify or does not answer ``sent``: it must name this gateway,
        carry the SHA-256 of the payload sent and, when it names a message, that message's ID. A receipt
        replayed from another delivery is refused.
        """
        envelope = wire.envelope_from_bytes(data)
        if envelope.payload_type != wire.RECEIPT_PAYLOAD_TYPE:
            raise GatewayError(ResponseCode.UNSUPPORTED_PAYLOAD_TYPE, f"a receipt of type {envelope.payload_type!r}")
        self._verify(partner, envelope)
        receipt = partner_pb2.Receipt()
        try:
            receipt.ParseFromString(envelope.payload)
        except DecodeError:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the receipt payload does not parse") from None
        if receipt.code not in ResponseCode._value2member_map_:
            raise GatewayError(
                ResponseCode.MALFORMED_PAYLOAD, f"the receipt has an unknown response code {receipt.code}"
            )
        if receipt.sender != partner.party:
            raise GatewayError(
                ResponseCode.KEY_UNKNOWN_OR_REVOKED, f"a receipt from {partner.party} names {receipt.sender}"
            )
        sent_payload = wire.envelope_from_bytes(sent).payload
        if receipt.payload_sha256 != payload_hash(sent_payload) or receipt.receiver not in (
            "",
            self.settings.self_party,
        ):
            raise GatewayError(ResponseCode.REPLAY, f"a receipt from {partner.party} answers another message")
        if receipt.in_reply_to:
            statement = partner_pb2.Statement()
            statement.ParseFromString(sent_payload)
            if receipt.in_reply_to != statement.header.message_id:
                raise GatewayError(ResponseCode.REPLAY, f"a receipt from {partner.party} answers another message")
        return receipt

    # incoming

    async def receive(self, raw: bytes, *, form: EnvelopeForm, peer_identity: str | None = None) -> Received:
        """Run the receiver's checks on ``raw`` and apply the statement; return the signed receipt."""
        payload_digest = b""
        partner: Partner | None = None
        header: Header | None = None
        try:
            # Step 1: size cap, before parsing.
            if len(raw) > self.settings.max_envelope_bytes:
                raise GatewayError(
                    ResponseCode.ENVELOPE_TOO_LARGE,
                    f"{len(raw)} bytes exceeds the cap of {self.settings.max_envelope_bytes}",
                )
            # Step 2: envelope parse.
            envelope = self._parse_envelope(raw, form)
            payload_digest = payload_hash(envelope.payload)
            # Step 3: allowed payload type.
            if envelope.payload_type == TRUST_PAYLOAD_TYPE:
                return await self._receive_trust_update(envelope, raw, form, peer_identity)
            if envelope.payload_type not in self.settings.allowed_payload_types:
                raise GatewayError(
                    ResponseCode.UNSUPPORTED_PAYLOAD_TYPE,
                    f"payload type {envelope.payload_type!r} is not accepted here",
                )
            # Step 4: choose the partner and verify its threshold.
            partner = self._choose_partner(envelope, peer_identity)
            self._verify(partner, envelope)
            # Step 5: parse the same bytes; sender and receiver.
            statement = partner_pb2.Statement()
            try:
                statement.ParseFromString(envelope.payload)
            except DecodeError:
                raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the payload is not a Statement") from None
            if not statement.HasField("header"):
                raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the statement has no header", field="header")
            header = wire.header_from_proto(statement.header)
            if peer_identity is not None and header.sender != partner.party:
                raise GatewayError(
                    ResponseCode.PEER_IDENTITY_MISMATCH,
                    f"the statement names sender {header.sender!r} but came over {partner.party!r}'s connection",
                )
            check_addressing(header, partner=partner.party, self_party=self.settings.self_party)
            if statement.WhichOneof("body") is None:
                raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the statement has no body", field="body")
            stored = raw if form is EnvelopeForm.PROTOBUF else wire.envelope_to_bytes(envelope)
            received = await self._apply(partner, header, statement, envelope.payload, stored, form)
        except GatewayError as exc:
            log.info("refused a delivery: %s", exc)
            resend_from = exc.resend_from if isinstance(exc, SequenceGap) else 0
            receipt = self._receipt(
                partner.party if partner else "",
                header.message_id if header else "",
                payload_digest,
                exc.code,
                exc.message,
                form,
                resend_from=resend_from,
            )
            return Received(receipt, exc.code, exc.message)
        if received.code is not ResponseCode.SEQUENCE_GAP:
            await self._apply_held(partner, header.sequence + 1)
        return received

    async def _apply(
        self,
        partner: Partner,
        header: Header,
        statement: partner_pb2.Statement,
        payload: bytes,
        stored_envelope: bytes,
        form: EnvelopeForm,
    ) -> Received:
        now = self.clock()
        async with self.store.transaction() as tx:
            # Step 6: a message already seen gets its stored receipt back, with no second effect.
            seen = await tx.get_message("in", partner.party, header.message_id)
            if seen is not None:
                return Received(self._reform(seen.receipt, form), ResponseCode.OK, "already received", True)
            # Step 7: time window.
            check_window(header, now=now, window=self.settings.window)
            # Step 8: sequence and hash chain. A gap holds the statement until the missing ones arrive.
            channel = await tx.incoming_channel(partner.party)
            if check_sequence(header, channel) is SequenceVerdict.GAP:
                await tx.hold_statement(partner.party, header.sequence, stored_envelope, now)
                gap = SequenceGap(channel.last_sequence + 1, header.sequence)
                receipt = self._receipt(
                    partner.party,
                    header.message_id,
                    payload_hash(payload),
                    gap.code,
                    gap.message,
                    form,
                    resend_from=gap.resend_from,
                )
                return Received(receipt, gap.code, gap.message)
            code, detail = ResponseCode.OK, "taken in"
            try:
                async with tx.savepoint():
                    await self.handler(tx, partner.party, header, statement)
            except GatewayError as exc:
                code, detail = exc.code, exc.message
            await tx.set_incoming_channel(partner.party, channel.advance(payload))
            await tx.release_held(partner.party, header.sequence)
            receipt = self._receipt(
                partner.party,
                header.message_id,
                payload_hash(payload),
                code,
                detail,
                EnvelopeForm.PROTOBUF,
                taken_in=True,
            )
            await tx.record_message(
                StoredMessage("in", partner.party, header.message_id, stored_envelope, receipt, now)
            )
        self.on_enqueued()
        return Received(self._reform(receipt, form), code, detail, taken_in=True)

    async def _apply_held(self, partner: Partner, sequence: int) -> None:
        """Apply statements held behind a gap that the statement just applied has closed, in order."""
        while True:
            async with self.store.read() as tx:
                held = await tx.held_statement(partner.party, sequence)
            if held is None:
                return
            log.info("applying statement %d from %s, held behind a gap", sequence, partner.party)
            received = await self.receive(held, form=EnvelopeForm.PROTOBUF, peer_identity=None)
            if received.code in (ResponseCode.SEQUENCE_GAP,):
                return
            sequence += 1

    async def _receive_trust_update(
        self, envelope: Envelope, raw: bytes, form: EnvelopeForm, peer_identity: str | None
    ) -> Received:
        """A partner pushes the next version of its trust document (verified by the trust rules, not by
        the transfer keys): exactly version N+1, signed by thresholds of N's and N+1's trust keys."""
        try:
            document = TrustDocument.from_payload(envelope.payload)
        except TrustError as exc:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"not a trust document: {exc}") from None
        partner = self.partners.get(document.party)
        if partner is None:
            raise GatewayError(ResponseCode.UNKNOWN_PARTNER, f"{document.party!r} is not a partner of this gateway")
        if peer_identity is not None and peer_identity != partner.identity:
            raise GatewayError(
                ResponseCode.PEER_IDENTITY_MISMATCH,
                f"a trust document of {document.party!r} came over {peer_identity!r}'s connection",
            )
        now = self.clock()
        async with self.store.transaction() as tx:
            # Read the trusted version under the store's lock, so that two updates apply one after the other.
            current = partner.trusted
            if document.version == current.version and envelope.payload == current.envelope.payload:
                updated = None
            else:
                updated = apply_trust_update(current, envelope, now)
                await tx.put_trust_document(partner.party, updated.version, envelope.to_json(), now)
        if updated is None:
            detail = f"version {document.version} is already trusted"
        else:
            self.partners.replace(partner.party, updated)
            detail = f"now trusting version {updated.version} of {partner.party}'s trust document"
            log.warning("%s", detail)
        receipt = self._receipt(
            partner.party, "", payload_hash(envelope.payload), ResponseCode.OK, detail, form, taken_in=True
        )
        return Received(receipt, ResponseCode.OK, detail, taken_in=True)

    def _parse_envelope(self, raw: bytes, form: EnvelopeForm) -> Envelope:
        if form is EnvelopeForm.PROTOBUF:
            return wire.envelope_from_bytes(raw)
        try:
            return Envelope.from_json(raw)
        except EnvelopeFormatError as exc:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, str(exc)) from None

    def _choose_partner(self, envelope: Envelope, peer_identity: str | None) -> Partner:
        hinted = self.partners.by_keyid(s.keyid for s in envelope.signatures)
        if peer_identity is not None:
            partner = self.partners.by_identity(peer_identity)
            if partner is None:
                raise GatewayError(
                    ResponseCode.PEER_IDENTITY_MISMATCH, f"no partner has the transport identity {peer_identity!r}"
                )
            if hinted is not None and hinted is not partner:
                raise GatewayError(
                    ResponseCode.PEER_IDENTITY_MISMATCH,
                    f"signed with {hinted.party!r}'s keys but sent over {partner.party!r}'s connection",
                )
            return partner
        if hinted is None:
            raise GatewayError(ResponseCode.KEY_UNKNOWN_OR_REVOKED, "no signature names a key of a known partner")
        return hinted

    def _verify(self, partner: Partner, envelope: Envelope) -> None:
        try:
            self.partners.verify(partner, envelope, self.clock())
        except GatewayError:
            raise
        except Exception as exc:
            raise verification_refusal(exc) from None

    def _receipt(
        self,
        receiver: str,
        in_reply_to: str,
        digest: bytes,
        code: ResponseCode,
        detail: str,
        form: EnvelopeForm,
        *,
        taken_in: bool = False,
        resend_from: int = 0,
    ) -> bytes:
        receipt = partner_pb2.Receipt(
            message_id=str(uuid.uuid4()),
            sender=self.settings.self_party,
            receiver=receiver,
            in_reply_to=in_reply_to,
            payload_sha256=digest,
            code=int(code),  # type: ignore[arg-type]
            detail=detail,
            resend_from=resend_from,
            taken_in=taken_in,
            issued_at=wire.timestamp(self.clock()),
        )
        envelope = sign_envelope(wire.RECEIPT_PAYLOAD_TYPE, receipt.SerializeToString(), [self.signer])
        return envelope.to_json() if form is EnvelopeForm.JSON else wire.envelope_to_bytes(envelope)

    @staticmethod
    def _reform(receipt: bytes, form: EnvelopeForm) -> bytes:
        """A stored (protobuf) receipt in the form the request arrived in, same signature bytes."""
        if form is EnvelopeForm.PROTOBUF:
            return receipt
        return wire.envelope_from_bytes(receipt).to_json()
