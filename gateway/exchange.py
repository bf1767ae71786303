"""The partner exchange: statements into the outbox and signed at send time, and the receiver's checks.

Sending. A statement enters the outbox in the same transaction as the state change that causes it, with only
its message ID, sender and receiver set. Its header is completed and the envelope signed when it is sent
(`Exchange.seal`): the sequence number is the next one the partner expects, the previous-payload hash is the
hash of the payload the partner took in last, and the validity window starts at the moment of sending. So a
statement that waited out a partner's outage never goes out expired, a rotated key signs everything sent
after the rotation, and nothing stored is ever rewritten: each signed version is appended to the message log,
byte for byte, before it is sent.

Receiving. Both transports (gRPC and HTTP/JSON) hand the raw envelope bytes to `Exchange.receive`, which runs
the checks of DESIGN.md section 5 in order:

1. size cap (before any parsing);
2. envelope parse;
3. allowed payload type;
4. choose the partner (by the mTLS peer identity alone; without mTLS, every partner whose trust document
   lists a keyid of the envelope is tried) and verify the threshold of that partner's trusted transfer keys;
5. parse those same payload bytes; the signed sender must be that partner and the receiver this gateway;
6. a message ID already seen returns the stored receipt, unchanged, with no second effect;
7. time window;
8. sequence exactly last + 1 and hash chain; a gap holds the statement and asks for a resend.

Steps 6 to 8, the statement's effect, the channel's high-water mark, the index of messages taken in and the
message log are written in one transaction. A refusal at steps 1 to 8 takes nothing in; a business refusal
after step 8 (for example a Decision naming an unknown transfer) still consumes the sequence number and is
answered in the receipt. No input, however malformed, escapes as an exception: a failure of this gateway
while handling a message is answered with ``INTERNAL_ERROR``, which the sender retries. A failure while
applying the statement's effect leaves it not taken in for `FAILED_STATEMENT_ATTEMPTS` deliveries; after that
it is taken in refused, so that one statement cannot stop its channel.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from carbon_gateway.v1 import partner_pb2
from gateway import faults, wire
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.statements import (
    ChannelState,
    Header,
    SequenceVerdict,
    TimeWindow,
    check_addressing,
    check_sequence,
    check_window,
    payload_hash,
)
from gateway.domain.text import escaped, truncate
from gateway.partners import TRANSFER_ROLE, UNREADABLE_CERTIFICATE, Partner, PartnerDirectory, several_names
from gateway.store.base import (
    LogKind,
    OutboxKind,
    OutboxMessage,
    Store,
    StoredMessage,
    Transaction,
    database_could_not,
    failure_line,
)
from signing import (
    TRUST_PAYLOAD_TYPE,
    Algorithm,
    Envelope,
    EnvelopeFormatError,
    ExpiredTrustError,
    InvalidSignatureError,
    Signature,
    Signer,
    SignerError,
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

TRUST_BUNDLE_PAYLOAD_TYPE = "application/vnd.carbon-gateway.trust-bundle.v1+json"
"""A trust push: every version of the sender's trust document, each a signed envelope of its own.

A partner that missed versions catches up from one push, and one that rotated meanwhile learns the key its
receipts are signed with: two gateways that both rotated while apart never wait on each other's receipts.
The payload is ``{"documents": [<DSSE JSON envelope as text>, ...]}``, oldest first; each document is
verified by the trust rules, so the bundle's own signature (the sender's transfer key) only attributes it."""
MAX_BUNDLE_DOCUMENTS = 1000

MAX_HELD_AHEAD = 256
"""How far ahead of the last statement taken in a statement may be and still be held behind the gap."""

LONGEST_SIGNATURE = {Algorithm.ED25519: 64, Algorithm.ECDSA_P256_SHA256: 72}
"""The most bytes a signature of each algorithm takes: Ed25519's are 64, and a DER-encoded ECDSA P-256 signature
(a SEQUENCE of two INTEGERs of at most 33 bytes each) at most 72."""

ENVELOPE_MARGIN_BYTES = 512
"""Room kept below a partner's size cap for what is only known at send time: the header's times and
sequence number, and signatures whose length varies (DER-encoded ECDSA)."""


def new_uuid() -> str:
    """A random UUID (version 4) as text: message, receipt and transfer IDs."""
    return str(uuid.uuid4())


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


RUN_BYTES_PER_TRANSACTION = 128 << 10
"""The most envelope bytes of a delivered run applied in one transaction (more when one envelope is larger):
about two Proposals of a thousand blocks. Applying a statement holds the event loop for as long as it takes,
so a run of 64 such Proposals in one transaction would keep every other caller of the process waiting for
seconds; between transactions the others go on."""

FAILED_STATEMENT_ATTEMPTS = 5
"""How many deliveries of one statement the receiver may fail on (a bug, or stored data it cannot read) before it
takes the statement in refused with ``INTERNAL_ERROR``. Until then nothing of it is taken in and the sender
sends it again after its backoff, so a failure that passes loses nothing; after it, the channel goes on."""

_FAILURES_KEPT = 10_000
"""The most statements whose failed attempts an `Exchange` counts at once (it forgets them all past that)."""


_COUNTED: contextvars.ContextVar[set[tuple[str, str]] | None] = contextvars.ContextVar("counted", default=None)
"""The statements whose failure the delivery being handled has counted already."""


class HandlerFailed(Exception):
    """The handler failed on a statement for a reason of its own, not the statement's: nothing of it is taken in,
    and the sender sends it again. Raised only when the exchange said the attempt was not the last."""


class StatementHandler(Protocol):
    """Applies a verified, in-order statement's effect inside the receiving transaction."""

    async def __call__(
        self,
        tx: Transaction,
        partner: str,
        header: Header,
        statement: partner_pb2.Statement,
        *,
        final_attempt: bool,
    ) -> GatewayError | None:
        """Apply the effect and return None; or return the refusal the receipt reports, keeping only what the
        handler wrote to answer it; or raise `GatewayError` to refuse it with everything rolled back. A failure of
        the handler's own may raise `HandlerFailed` unless ``final_attempt``: then it must become a refusal."""


DeliveredHandler = Callable[[Transaction, OutboxMessage], Awaitable[None]]
"""Called in the transaction that records a statement as taken in by its partner."""


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


def _with_field(refusal: GatewayError) -> str:
    """A refusal's message and the field it names, as an operator's refusal names it: the partner's engineers
    find what to mend."""
    return f"{refusal.message} (field {refusal.field})" if refusal.field else refusal.message


def apply_trust_update(current: TrustedParty, envelope: Envelope, now: dt.datetime) -> TrustedParty:
    """``current`` updated by ``envelope``, or the refusal saying why not."""
    return apply_trust_updates(current, [envelope], now)


def apply_trust_updates(current: TrustedParty, envelopes: list[Envelope], now: dt.datetime) -> TrustedParty:
    """``current`` updated by consecutive versions, one at a time (only the last must be unexpired)."""
    try:
        return current.update_many(envelopes, now)
    except ExpiredTrustError as exc:
        raise GatewayError(ResponseCode.TRUST_DOCUMENT_EXPIRED, str(exc)) from None
    except (TrustError, VerificationError) as exc:
        raise GatewayError(ResponseCode.TRUST_UPDATE_REFUSED, str(exc)) from None


class ReceiptUnsigned(Exception):
    """This gateway's signer failed (an HSM busy or being reset): no receipt can be signed, so no answer can be
    given. What was being applied is rolled back and the sender is asked to send again later; statements of a
    batch committed before the failure keep their stored receipts, which the resend gets back."""


class Replayed(GatewayError):
    """A statement whose sequence the receiver already processed, or whose hash does not chain; the refusal
    tells the sender where the receiver's copy of its channel stands, so that it can catch up."""

    def __init__(self, refusal: GatewayError, channel: ChannelState) -> None:
        super().__init__(refusal.code, refusal.message, field=refusal.field)
        self.channel = channel


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


@dataclass(frozen=True)
class _Checked:
    """An envelope through steps 1-5: the statement of a verified partner, addressed here, ready to apply."""

    partner: Partner
    header: Header
    statement: partner_pb2.Statement
    envelope: Envelope
    raw: bytes
    digest: bytes
    """The payload's hash, as receipts name it."""


@dataclass
class _AfterCommit:
    """What follows a run of statements once its transaction commits."""

    taken_in: list[_Checked] = field(default_factory=list)
    """The statements that advanced their channel, in order."""
    held: tuple[Partner, int, bytes] | None = None
    """The statement held behind the gap the run's last statement closed, with its sequence."""


@dataclass(frozen=True)
class Sealed:
    """A statement as sent on one attempt: its signed envelope (protobuf form) and its payload."""

    envelope: bytes
    payload: bytes
    sequence: int


_BODY_KINDS = {kind.value for kind in OutboxKind} - {OutboxKind.TRUST.value, OutboxKind.LEGACY.value}


MAX_CHANNEL_POSITION = 2**62
"""The furthest position a receipt may name. A channel taking a million statements a second reaches it after
146,000 years; a receipt naming a position beyond it is refused before the sender's channel could be set
where its next sequence number no longer fits 64 bits."""


def _bundle(payload: bytes) -> list[Envelope]:
    """The trust documents a trust bundle carries; refuse a malformed bundle."""
    try:
        data = json.loads(payload, object_pairs_hook=_members_once)
        texts = data["documents"]
        if not isinstance(data, dict) or set(data) != {"documents"} or not isinstance(texts, list):
            raise TypeError('a bundle is {"documents": [...]}')
        if len(texts) > MAX_BUNDLE_DOCUMENTS:
            raise ValueError(f"more than {MAX_BUNDLE_DOCUMENTS} documents")
        return [Envelope.from_json(text.encode("ascii")) for text in texts]
    except RecursionError:
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "not a trust bundle: JSON nested too deeply") from None
    except (ValueError, TypeError, KeyError, UnicodeEncodeError, AttributeError, EnvelopeFormatError) as exc:
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"not a trust bundle: {exc}") from None


def _members_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose members are each named once: a reader that keeps the first of two would see another
    bundle than one that keeps the last."""
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"the member {name!r} appears twice")
        members[name] = value
    return members


def _statement_kind(statement: partner_pb2.Statement) -> OutboxKind:
    kind = statement.WhichOneof("body")
    if kind not in _BODY_KINDS:
        raise ValueError(f"a statement needs exactly one known body, not {kind!r}")
    return OutboxKind(kind)


def _transfer_id(statement: partner_pb2.Statement) -> str:
    kind = statement.WhichOneof("body")
    body = getattr(statement, kind) if kind else None
    return str(getattr(body, "transfer_id", ""))


class Exchange:
    """Puts statements in the outbox, signs them at send time, and checks incoming ones."""

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
        new_id: Callable[[], str] = new_uuid,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.partners = partners
        self.store = store
        self.handler = handler
        self.clock = clock
        self.on_enqueued = on_enqueued
        self.on_delivered: DeliveredHandler | None = None
        self.on_unknown_key: Callable[[], Awaitable[bool]] | None = None
        """Called when no trusted key verifies a statement: takes up trust documents another replica stored
        (`gateway.trust.TrustKeeper.take_up_stored`); when it returns True the statement is verified once more."""
        self._failed_attempts: dict[tuple[str, str], int] = {}
        """Deliveries the handler failed on (`HandlerFailed`), by partner and message ID."""
        self.new_id = new_id

    # outgoing

    async def enqueue(self, tx: Transaction, receiver: str, **body: object) -> str:
        """Put a statement to ``receiver`` in the outbox; it is numbered and signed when it is sent.

        ``body`` is one keyword naming the Statement's body field (``proposal=...``). Returns the message ID.
        """
        message_id = self.new_id()
        header = partner_pb2.StatementHeader(message_id=message_id, sender=self.settings.self_party, receiver=receiver)
        statement = partner_pb2.Statement(header=header, **body)  # type: ignore[arg-type]
        await tx.enqueue(
            receiver=receiver,
            message_id=message_id,
            kind=_statement_kind(statement),
            transfer_id=_transfer_id(statement),
            body=statement.SerializeToString(),
            now=self.clock(),
        )
        return message_id

    async def enqueue_trust(self, tx: Transaction, receiver: str, envelope: Envelope) -> str:
        """Queue a trust push for ``receiver``, ahead of every statement; when sent it carries every version of
        this gateway's trust document (``envelope`` is the version that caused it)."""
        message_id = self.new_id()
        await tx.enqueue(
            receiver=receiver,
            message_id=message_id,
            kind=OutboxKind.TRUST,
            transfer_id="",
            body=envelope.to_json(),
            now=self.clock(),
        )
        return message_id

    def statement_of(self, message: OutboxMessage) -> partner_pb2.Statement:
        """The statement an outbox message carries (its header as queued: no sequence, hash or times)."""
        statement = partner_pb2.Statement()
        if message.kind is OutboxKind.LEGACY:
            statement.ParseFromString(wire.envelope_from_bytes(message.body).payload)
        else:
            statement.ParseFromString(message.body)
        return statement

    def seal(self, message: OutboxMessage, channel: ChannelState, now: dt.datetime) -> Sealed:
        """Complete the statement's header for this attempt and sign it.

        The sequence is the one after the last the partner took in, the previous hash that payload's hash,
        and the validity window starts now (DESIGN.md section 5, statement header).
        """
        if message.kind is OutboxKind.TRUST:
            raise ValueError("trust pushes are sealed with seal_trust")
        statement = self.statement_of(message)
        sequence = channel.last_sequence + 1
        header = statement.header
        header.sequence = sequence
        header.previous_hash = channel.last_hash
        header.issued_at.CopyFrom(wire.timestamp(now))
        header.expires_at.CopyFrom(wire.timestamp(now + self.settings.message_lifetime))
        payload = statement.SerializeToString()
        envelope = wire.envelope_to_bytes(sign_envelope(wire.STATEMENT_PAYLOAD_TYPE, payload, [self.signer]))
        return Sealed(envelope, payload, sequence)

    def still_valid(self, previous: bytes, fresh: Sealed, now: dt.datetime) -> Sealed | None:
        """The envelope of the previous attempt, if it may go out again instead of ``fresh``: same signer, same
        place in the channel, and at least half its lifetime left. Retries during an outage then send (and log)
        one envelope, not one per attempt, and a new one only when the old one nears its expiry."""
        if not previous:
            return None
        try:
            envelope = wire.envelope_from_bytes(previous)
        except GatewayError:
            return None
        if [s.keyid for s in envelope.signatures] != [self.signer.keyid]:
            return None
        if envelope.payload_type == TRUST_BUNDLE_PAYLOAD_TYPE:
            return Sealed(previous, envelope.payload, 0) if envelope.payload == fresh.payload else None
        old, new = partner_pb2.Statement(), partner_pb2.Statement()
        old.ParseFromString(envelope.payload)
        new.ParseFromString(fresh.payload)
        same_place = (old.header.sequence, old.header.previous_hash) == (new.header.sequence, new.header.previous_hash)
        issued = old.header.issued_at.ToDatetime(tzinfo=dt.UTC)
        expires = old.header.expires_at.ToDatetime(tzinfo=dt.UTC)
        # An envelope dated ahead of this clock (it was set back since) is not sent again: the partner refused it.
        if same_place and issued <= now and expires - now >= self.settings.message_lifetime / 2:
            return Sealed(previous, envelope.payload, fresh.sequence)
        return None

    def seal_trust(self, documents: list[bytes]) -> Sealed:
        """A trust push carrying every version of this gateway's trust document (JSON envelopes, oldest first)."""
        payload = json.dumps({"documents": [d.decode("ascii") for d in documents]}, separators=(",", ":")).encode()
        envelope = sign_envelope(TRUST_BUNDLE_PAYLOAD_TYPE, payload, [self.signer])
        return Sealed(wire.envelope_to_bytes(envelope), payload, 0)

    def check_fits(self, receiver: str, **body: object) -> None:
        """Refuse a statement that, once signed, would exceed the size cap ``receiver`` declares.

        An operator request is checked with this before anything is reserved: a statement the partner cannot
        take in would be refused by it for good.
        """
        partner = self.partners.get(receiver)
        if partner is None:
            return
        header = partner_pb2.StatementHeader(
            message_id=str(uuid.UUID(int=0)),
            sender=self.settings.self_party,
            receiver=receiver,
            sequence=2**63 - 1,
            previous_hash=bytes(32),
            issued_at=wire.timestamp(self.clock()),
            expires_at=wire.timestamp(self.clock()),
        )
        payload = partner_pb2.Statement(header=header, **body).SerializeToString()  # type: ignore[arg-type]
        # The envelope as it will be signed, with a signature as long as this signer's algorithm makes them. No
        # signing per request: a signer whose token is out of reach must not fail a request it can queue.
        stand_in = Signature(self.signer.keyid, bytes(LONGEST_SIGNATURE[self.signer.public_key.algorithm]))
        size = len(wire.envelope_to_bytes(Envelope(payload, wire.STATEMENT_PAYLOAD_TYPE, (stand_in,))))
        if size + ENVELOPE_MARGIN_BYTES > partner.max_envelope_bytes:
            raise GatewayError(
                ResponseCode.ENVELOPE_TOO_LARGE,
                f"the statement to {receiver} would be about {size} bytes signed, and {receiver} takes envelopes of"
                f" at most {partner.max_envelope_bytes} bytes (less {ENVELOPE_MARGIN_BYTES} kept for the header);"
                " split the request into smaller ones",
            )

    def read_receipt(self, partner: Partner, data: bytes, sent: bytes, message_id: str) -> partner_pb2.Receipt:
        """Verify the receipt ``partner`` returned for the envelope ``sent`` (protobuf form) and return it.

        Raise `GatewayError` if it does not verify or does not answer ``sent``: it must be signed by the partner
        and name this gateway, and either name ``message_id`` (a receipt for a statement the partner could
        read, possibly an earlier version of it) or carry the SHA-256 of the envelope bytes sent (a refusal
        of an envelope it could not read). A receipt replayed from another delivery is refused. A response code
        this version does not know (a partner of a later release) is no reason to refuse the receipt: the
        partner answered, and the outbox reads the code as it can (`gateway.outbox`), or the statement would be
        sent again for ever and answered with the same receipt each time.
        """
        envelope = wire.envelope_from_bytes(data)
        if envelope.payload_type != wire.RECEIPT_PAYLOAD_TYPE:
            raise GatewayError(
                ResponseCode.UNSUPPORTED_PAYLOAD_TYPE, f"a receipt of type {envelope.payload_type[:80]!r}"
            )
        self._verify(partner, envelope)
        receipt = partner_pb2.Receipt()
        try:
            receipt.ParseFromString(envelope.payload)
        except DecodeError:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the receipt payload does not parse") from None
        if receipt.sender != partner.party:
            raise GatewayError(
                ResponseCode.KEY_UNKNOWN_OR_REVOKED, f"a receipt from {partner.party} names {receipt.sender[:40]!r}"
            )
        if receipt.receiver not in ("", self.settings.self_party):
            raise GatewayError(ResponseCode.REPLAY, f"a receipt from {partner.party} answers another gateway")
        if receipt.in_reply_to:
            if receipt.in_reply_to != message_id:
                raise GatewayError(ResponseCode.REPLAY, f"a receipt from {partner.party} answers another message")
        elif receipt.envelope_sha256 != hashlib.sha256(sent).digest():
            raise GatewayError(ResponseCode.REPLAY, f"a receipt from {partner.party} answers another delivery")
        for name in ("last_sequence", "resend_from"):
            if getattr(receipt, name) > MAX_CHANNEL_POSITION:
                raise GatewayError(
                    ResponseCode.MALFORMED_PAYLOAD,
                    f"a receipt from {partner.party} puts the channel at {name} {getattr(receipt, name)}, beyond"
                    f" 2^62, where no channel can be",
                )
        return receipt

    # incoming

    async def receive(self, raw: bytes, *, form: EnvelopeForm, peer_identity: str | None = None) -> Received:
        """Run the receiver's checks on ``raw`` and apply the statement; return the signed receipt.

        Never raises for anything in ``raw``: every failure is answered with a receipt, but for a failure of this
        gateway's signer, which leaves no receipt to answer with (`ReceiptUnsigned`).
        """
        return (await self.receive_many([raw], form=form, peer_identity=peer_identity))[0]

    async def receive_many(
        self, raws: Sequence[bytes], *, form: EnvelopeForm, peer_identity: str | None = None
    ) -> list[Received]:
        """`receive` for each of ``raws``, in order: one receipt each, the ones separate calls would give.

        Steps 1-5 run on each envelope outside any transaction. Consecutive envelopes that pass them are
        applied together (steps 6-8 and the effect), in transactions of at most `RUN_BYTES_PER_TRANSACTION`,
        each under its own savepoint, so that one statement's refusal takes back its own writes only. A trust
        push, and a refusal at steps 1-5, are handled alone, after the statements before them are committed: a
        trust push changes how the envelopes after it verify. Never raises for anything in ``raws``; raises
        `ReceiptUnsigned` when this gateway's signer fails.
        """
        counting = _COUNTED.set(set())
        try:
            return await self._receive_many(raws, form, peer_identity)
        finally:
            _COUNTED.reset(counting)

    async def _receive_many(
        self, raws: Sequence[bytes], form: EnvelopeForm, peer_identity: str | None
    ) -> list[Received]:
        received: list[Received | None] = [None] * len(raws)
        group: list[tuple[int, _Checked]] = []

        async def flush() -> None:
            outcomes = await self._apply_group([checked for _, checked in group], form)
            for (index, _), outcome in zip(group, outcomes, strict=True):
                received[index] = outcome
            group.clear()

        for index, raw in enumerate(raws):
            if index:
                await asyncio.sleep(0)  # the checks of a whole run (signatures, parsing) do not hold the loop
            try:
                checked = await self._check(raw, form, peer_identity)
            except Exception as exc:
                await flush()
                received[index] = self._failed(raw, form, exc)
                continue
            if isinstance(checked, _Checked):
                group.append((index, checked))
                continue
            await flush()
            try:
                received[index] = await checked()
            except Exception as exc:
                received[index] = self._failed(raw, form, exc)
        await flush()
        answered = [r for r in received if r is not None]
        if len(answered) != len(raws):
            raise AssertionError(f"{len(raws) - len(answered)} of {len(raws)} envelopes left unanswered")
        return answered

    def refuse_unread(self, size: str, form: EnvelopeForm) -> Received:
        """The signed receipt refusing a request body too large to read at all (``size`` says how large, as far as
        it is known): `ResponseCode.ENVELOPE_TOO_LARGE`, about no statement and no envelope, as none was read."""
        detail = f"{size} exceeds the cap of {self.settings.max_envelope_bytes}"
        log.info("refused a delivery: %s", detail)
        receipt = self._receipt("", "", b"", None, ResponseCode.ENVELOPE_TOO_LARGE, detail, form)
        return Received(receipt, ResponseCode.ENVELOPE_TOO_LARGE, detail)

    def refuse_unreadable(self, reason: str, form: EnvelopeForm) -> Received:
        """The signed receipt refusing a request body that cannot be read (``reason`` says why: a compressed body
        that does not decompress, a chunked body mis-framed): `ResponseCode.MALFORMED_PAYLOAD`, about no
        statement and no envelope, as none was read."""
        detail = escaped(f"the request body cannot be read: {reason}")
        log.info("refused a delivery: %s", detail)
        receipt = self._receipt("", "", b"", None, ResponseCode.MALFORMED_PAYLOAD, detail, form)
        return Received(receipt, ResponseCode.MALFORMED_PAYLOAD, detail)

    def _unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database could not be used now (unreachable, restarting, out of disk, its
        connection ended), not that something is wrong with what was delivered or with this gateway's code."""
        return database_could_not(self.store, exc)

    def _failed(self, raw: bytes, form: EnvelopeForm, exc: Exception, *, logged: bool = False) -> Received:
        """The receipt for an envelope the receiver failed on: nothing of it took effect. A database that could not
        be used now is one line in the log (none when ``logged``: the caller said it for the whole run), anything
        else a traceback. Raises `ReceiptUnsigned` when that was the failure, or when this receipt cannot be signed
        either."""
        if isinstance(exc, ReceiptUnsigned):
            raise exc
        unavailable = self._unavailable(exc)
        if not unavailable:
            log.error("failed while handling a delivery of %d bytes", len(raw), exc_info=exc)
        elif not logged:
            log.warning(
                "could not handle a delivery of %d bytes: the database could not do it now (%s); the sender sends it"
                " again",
                len(raw),
                failure_line(exc),
            )
        detail = "the receiver failed while handling the message; nothing took effect; retry later"
        if unavailable:
            # The database itself failed, perhaps after a commit: nothing can be promised either way. What
            # failed stays in this gateway's log: it may name internal hosts.
            detail = "the receiver's database failed; retry later"
        receipt = self._receipt("", "", b"", raw, ResponseCode.INTERNAL_ERROR, detail, form)
        return Received(receipt, ResponseCode.INTERNAL_ERROR, detail)

    async def _receive(self, raw: bytes, form: EnvelopeForm, peer_identity: str | None, *, held: bool) -> Received:
        checked = await self._check(raw, form, peer_identity)
        if not isinstance(checked, _Checked):
            return await checked()
        return (await self._apply_group([checked], form, held=held))[0]

    async def _check(
        self, raw: bytes, form: EnvelopeForm, peer_identity: str | None
    ) -> _Checked | Callable[[], Awaitable[Received]]:
        """Steps 1-5: the statement, ready to apply; or what answers the envelope on its own (a refusal, or a
        trust push), to be awaited once the statements before it are applied."""
        payload_digest = b""
        partner: Partner | None = None
        header: Header | None = None
        verified = False
        try:
            # Step 1: size cap, before parsing. The cap counts the protobuf form; the JSON form spells the same
            # envelope in base64, so it gets the room base64 takes before parsing and is measured again after.
            cap = self.settings.max_envelope_bytes
            if len(raw) > (cap if form is EnvelopeForm.PROTOBUF else cap * 4 // 3 + 4096):
                raise GatewayError(ResponseCode.ENVELOPE_TOO_LARGE, f"{len(raw)} bytes exceeds the cap of {cap}")
            # Step 2: envelope parse.
            envelope = self._parse_envelope(raw, form)
            if form is EnvelopeForm.JSON and (size := len(wire.envelope_to_bytes(envelope))) > cap:
                raise GatewayError(
                    ResponseCode.ENVELOPE_TOO_LARGE, f"{size} bytes (in protobuf form) exceeds the cap of {cap}"
                )
            payload_digest = payload_hash(envelope.payload)
            # Step 3: allowed payload type.
            if envelope.payload_type in (TRUST_PAYLOAD_TYPE, TRUST_BUNDLE_PAYLOAD_TYPE):
                return self._trust_push(envelope, raw, form, peer_identity, payload_digest)
            if envelope.payload_type not in self.settings.allowed_payload_types:
                raise GatewayError(
                    ResponseCode.UNSUPPORTED_PAYLOAD_TYPE,
                    f"payload type {envelope.payload_type[:80]!r} is not accepted here",
                )
            # Step 4: choose the partner and verify its threshold.
            try:
                verifying = self._verified_partners(envelope, peer_identity)
            except GatewayError as refusal:
                # The partner may have rotated its key through another replica of this gateway.
                refresh = self.on_unknown_key
                if refusal.code is not ResponseCode.KEY_UNKNOWN_OR_REVOKED or refresh is None or not await refresh():
                    raise
                verifying = self._verified_partners(envelope, peer_identity)
            partner = verifying[0]
            verified = True
            # Step 5: parse the same bytes; sender and receiver.
            statement = partner_pb2.Statement()
            try:
                statement.ParseFromString(envelope.payload)
            except DecodeError:
                raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the payload is not a Statement") from None
            if not statement.HasField("header"):
                raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the statement has no header", field="header")
            header = wire.header_from_proto(statement.header)
            partner = next((p for p in verifying if p.party == header.sender), partner)
            if peer_identity is not None and header.sender != partner.party:
                raise GatewayError(
                    ResponseCode.PEER_IDENTITY_MISMATCH,
                    f"the statement names sender {header.sender!r} but came over {partner.party!r}'s connection",
                )
            check_addressing(header, partner=partner.party, self_party=self.settings.self_party)
            if statement.WhichOneof("body") is None:
                raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the statement has no body", field="body")
            return _Checked(partner, header, statement, envelope, raw, payload_digest)
        except GatewayError as exc:
            return self._refuse(exc, raw, form, partner.party if verified and partner else None, header, payload_digest)

    def _refuse(
        self,
        refusal: GatewayError,
        raw: bytes,
        form: EnvelopeForm,
        logged: str | None,
        header: Header | None,
        payload_digest: bytes,
    ) -> Callable[[], Awaitable[Received]]:
        """What answers an envelope refused at steps 1-5: the receipt, after logging the envelope and the
        refusal if ``logged`` names the partner whose signature verified."""
        # A statement the partner signed is kept, with the refusal, even when it was not taken in.
        message_id = header.message_id if header else ""

        async def refuse() -> Received:
            receipt = self._refusal(refusal, logged or "", message_id, payload_digest, raw, form)
            if logged is not None:
                await self._log_refused(logged, message_id, raw, form, receipt)
            return Received(receipt, refusal.code, refusal.message)

        return refuse

    def _trust_push(
        self, envelope: Envelope, raw: bytes, form: EnvelopeForm, peer_identity: str | None, digest: bytes
    ) -> Callable[[], Awaitable[Received]]:
        async def push() -> Received:
            try:
                if envelope.payload_type == TRUST_PAYLOAD_TYPE:
                    return await self._receive_trust_update([envelope], raw, form, peer_identity)
                return await self._receive_trust_update(
                    _bundle(envelope.payload), raw, form, peer_identity, bundle=envelope
                )
            except GatewayError as refusal:
                receipt = self._refusal(refusal, "", "", digest, raw, form)
                return Received(receipt, refusal.code, refusal.message)

        return push

    def _refusal(
        self, refusal: GatewayError, party: str, message_id: str, digest: bytes, raw: bytes, form: EnvelopeForm
    ) -> bytes:
        """The signed receipt refusing a statement, telling the sender where to resend from or where its
        channel stands here when that is why."""
        log.info("refused a delivery: %s", refusal)
        return self._receipt(
            party,
            message_id,
            digest,
            raw,
            refusal.code,
            refusal.message,
            form,
            resend_from=refusal.resend_from if isinstance(refusal, SequenceGap) else 0,
            channel=refusal.channel if isinstance(refusal, Replayed) else None,
        )

    async def _log_refused(self, party: str, message_id: str, raw: bytes, form: EnvelopeForm, receipt: bytes) -> None:
        async with self.store.transaction(durable=False) as tx:
            await self._log_pair(tx, party, message_id, raw, form, receipt, self.clock(), "")

    async def _apply_group(
        self, group: Sequence[_Checked], form: EnvelopeForm, *, held: bool = False
    ) -> list[Received]:
        """Apply ``group`` (steps 6-8 and the effect) in as few transactions as it takes; the receipts in order.

        A statement that closes a gap ends its transaction: the statements held behind the gap follow it
        (`_apply_held`) before the rest of the group, as they would after a single delivery. Never raises: a
        run that fails together is taken again one statement at a time, so that one statement the receiver
        fails on cannot keep the ones before it out."""
        received: list[Received] = []
        while len(received) < len(group):
            if received:
                await asyncio.sleep(0)  # between the transactions of a long run, the process's other work goes on
            rest = group[len(received) :]
            try:
                outcomes, after = await self._apply_together(rest, form, held=held)
            except ReceiptUnsigned:
                raise  # no statement alone would fare better: the whole delivery is asked for again
            except Exception as exc:
                if len(rest) > 1 and not isinstance(exc, OSError):
                    log.warning(
                        "a run of %d statements failed together (%r); taking them one at a time", len(rest), exc
                    )
                    for checked in rest:
                        received.extend(await self._apply_group([checked], form, held=held))
                else:
                    if isinstance(exc, HandlerFailed):
                        # Counted here, where it failed alone: once per delivery, however it was batched.
                        self._count_failure(rest[0])
                    unavailable = self._unavailable(exc)
                    if unavailable and len(rest) > 1:
                        log.warning(
                            "could not apply %d statements: the database could not do it now (%s); the sender"
                            " sends them again",
                            len(rest),
                            failure_line(exc),
                        )
                    logged = unavailable and len(rest) > 1
                    received.extend(self._failed(checked.raw, form, exc, logged=logged) for checked in rest)
                return received
            received.extend(outcomes)
            for checked in after.taken_in:  # taken in for good: its failures are over
                self._failed_attempts.pop((checked.partner.party, checked.header.message_id), None)
            if faults.ARMED:
                for checked in after.taken_in:
                    faults.reach(faults.COMMITTED_BY_STATEMENT.get(checked.statement.WhichOneof("body") or "", ""))
            if after.held is not None:
                await self._apply_held(*after.held)
        return received

    def _count_failure(self, checked: _Checked) -> None:
        """One more delivery the handler failed on ``checked`` in: once per delivery, however many times the
        delivery applied it (alone after its batch failed, and from behind a gap)."""
        attempt = (checked.partner.party, checked.header.message_id)
        counted = _COUNTED.get()
        if counted is not None:
            if attempt in counted:
                return
            counted.add(attempt)
        if len(self._failed_attempts) >= _FAILURES_KEPT:
            self._failed_attempts.clear()
        self._failed_attempts[attempt] = self._failed_attempts.get(attempt, 0) + 1

    async def _apply_together(
        self, group: Sequence[_Checked], form: EnvelopeForm, *, held: bool
    ) -> tuple[list[Received], _AfterCommit]:
        """Apply the statements of ``group`` in one transaction, up to the first that closes a gap and within
        `RUN_BYTES_PER_TRANSACTION`; their receipts, and what follows the commit."""
        now = self.clock()
        received: list[Received] = []
        after = _AfterCommit()
        size = 0
        async with self.store.transaction() as tx:
            for checked in group:
                size += len(checked.raw)
                if received and size > RUN_BYTES_PER_TRANSACTION:
                    break
                party, message_id = checked.partner.party, checked.header.message_id
                try:
                    async with tx.savepoint():
                        outcome, taken_in = await self._apply(tx, checked, form, now)
                except GatewayError as refusal:
                    receipt = self._refusal(refusal, party, message_id, checked.digest, checked.raw, form)
                    # A statement the partner signed is kept, with the refusal, even when it was not taken in.
                    await self._log_pair(tx, party, message_id, checked.raw, form, receipt, now, "")
                    outcome, taken_in = Received(receipt, refusal.code, refusal.message), False
                received.append(outcome)
                if not taken_in:
                    continue
                after.taken_in.append(checked)
                if held:
                    continue
                following = checked.header.sequence + 1
                statement = await tx.held_statement(party, following)
                if statement is not None:
                    after.held = (checked.partner, following, statement)
                    break
        return received, after

    async def _apply(
        self, tx: Transaction, checked: _Checked, form: EnvelopeForm, now: dt.datetime
    ) -> tuple[Received, bool]:
        """Steps 6-8 and the statement's effect, in ``tx``: the outcome, and whether the channel advanced past it.
        Raises `GatewayError` for a refusal whose writes must be taken back."""
        partner, header, statement, raw = checked.partner, checked.header, checked.statement, checked.raw
        payload = checked.envelope.payload
        # Working copies (the index of messages taken in, statements held behind a gap) keep the protobuf
        # form; the message log keeps the bytes exactly as they arrived.
        stored_envelope = raw if form is EnvelopeForm.PROTOBUF else wire.envelope_to_bytes(checked.envelope)
        topic = _transfer_id(statement)
        # Step 6: a message already seen gets its stored receipt back, with no second effect.
        seen = await tx.get_message("in", partner.party, header.message_id)
        if seen is not None:
            receipt = self._reform(self._current(seen.receipt), form)
            await self._log_pair(tx, partner.party, header.message_id, raw, form, receipt, now, topic)
            return Received(receipt, ResponseCode.OK, "already received", True), False
        # Step 7: time window.
        check_window(header, now=now, window=self.settings.window)
        # Step 8: sequence and hash chain. A gap holds the statement until the missing ones arrive.
        channel = await tx.incoming_channel(partner.party)
        try:
            verdict = check_sequence(header, channel)
        except GatewayError as behind:
            raise Replayed(behind, channel) from None
        if verdict is SequenceVerdict.GAP:
            # Only a window of statements ahead is held, so that a sender cannot fill the store.
            if header.sequence - channel.last_sequence <= MAX_HELD_AHEAD:
                await tx.hold_statement(partner.party, header.sequence, stored_envelope, now)
            gap = SequenceGap(channel.last_sequence + 1, header.sequence)
            receipt = self._refusal(gap, partner.party, header.message_id, checked.digest, raw, form)
            await self._log_pair(tx, partner.party, header.message_id, raw, form, receipt, now, topic)
            return Received(receipt, gap.code, gap.message), False
        code, detail = ResponseCode.OK, "taken in"
        attempt = (partner.party, header.message_id)
        failed = self._failed_attempts.get(attempt, 0)
        try:
            async with tx.savepoint():
                refused = await self.handler(
                    tx, partner.party, header, statement, final_attempt=failed + 1 >= FAILED_STATEMENT_ATTEMPTS
                )
            if refused is not None:
                code, detail = refused.code, _with_field(refused)
        except GatewayError as exc:
            code, detail = exc.code, _with_field(exc)
        except HandlerFailed:
            raise  # not taken in: counted by `_apply_group`, where it failed alone
        except Exception as exc:
            if self.store.is_transient(exc):
                # The database could not do it now: nothing is taken in, and the sender sends it again.
                raise
            log.exception("failed while applying statement %s from %s", header.message_id, partner.party)
            code, detail = ResponseCode.INTERNAL_ERROR, "the receiver failed while applying the statement"
        advanced = channel.advance(payload)
        await tx.set_incoming_channel(partner.party, advanced)
        await tx.release_held(partner.party, header.sequence)
        receipt = self._receipt(
            partner.party,
            header.message_id,
            checked.digest,
            raw,
            code,
            truncate(detail),
            EnvelopeForm.PROTOBUF,
            taken_in=True,
            channel=advanced,
        )
        await tx.record_message(StoredMessage("in", partner.party, header.message_id, stored_envelope, receipt, now))
        reformed = self._reform(receipt, form)
        await self._log_pair(tx, partner.party, header.message_id, raw, form, reformed, now, topic)
        return Received(reformed, code, detail, taken_in=True), True

    @staticmethod
    async def _log_pair(
        tx: Transaction,
        party: str,
        message_id: str,
        raw: bytes,
        form: EnvelopeForm,
        receipt: bytes,
        now: dt.datetime,
        transfer_id: str,
    ) -> None:
        for direction, kind, envelope in (("in", LogKind.STATEMENT, raw), ("out", LogKind.RECEIPT, receipt)):
            await tx.append_log(
                direction=direction,
                peer=party,
                message_id=message_id,
                kind=kind,
                form=form,
                envelope=envelope,
                now=now,
                transfer_id=transfer_id,
            )

    async def _apply_held(self, partner: Partner, sequence: int, held: bytes | None) -> None:
        """Apply, in order and one after the other, the statements held behind a gap the last one closed, from
        ``held`` (the one at ``sequence``, read in the transaction that closed the gap).

        Each was verified when it arrived and goes through every check again (trust may have changed since). A
        failure leaves the rest held: the sender sends them again.
        """
        try:
            while True:
                if held is None:
                    async with self.store.read() as tx:
                        held = await tx.held_statement(partner.party, sequence)
                if held is None:
                    return
                log.info("applying statement %d from %s, held behind a gap", sequence, partner.party)
                received = await self._receive(held, EnvelopeForm.PROTOBUF, None, held=True)
                if not received.taken_in:
                    return
                sequence, held = sequence + 1, None
        except Exception:
            log.exception(
                "failed while applying the statements held behind sequence %d from %s", sequence, partner.party
            )

    async def _receive_trust_update(
        self,
        envelopes: list[Envelope],
        raw: bytes,
        form: EnvelopeForm,
        peer_identity: str | None,
        *,
        bundle: Envelope | None = None,
    ) -> Received:
        """A partner pushes versions of its trust document (verified by the trust rules, not by the transfer
        keys): each version newer than the one trusted must be the next, signed by thresholds of the previous
        version's and its own trust keys. Versions already trusted must be the ones trusted here. A bundle
        must also be signed by the partner's transfer keys as the newest version lists them, so that nobody
        else can make this gateway answer (and keep) copies of a partner's public documents.

        Only a push that changes what is trusted is kept in the message log: one that changes nothing carries
        nothing new, and logging it would let anyone grow the log."""
        documents: list[tuple[TrustDocument, Envelope]] = []
        for envelope in envelopes:
            try:
                documents.append((TrustDocument.from_payload(envelope.payload), envelope))
            except TrustError as exc:
                raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"not a trust document: {exc}") from None
        if not documents:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the push carries no trust document")
        parties = {document.party for document, _ in documents}
        if len(parties) != 1:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"the push mixes trust documents of {sorted(parties)}")
        party = documents[0][0].party
        partner = self.partners.get(party)
        if partner is None:
            raise GatewayError(ResponseCode.UNKNOWN_PARTNER, f"{party!r} is not a partner of this gateway")
        if peer_identity is not None:
            _refuse_several_names(peer_identity)
        if peer_identity is not None and peer_identity != partner.identity:
            raise GatewayError(
                ResponseCode.PEER_IDENTITY_MISMATCH,
                f"a trust document of {party!r} came over {peer_identity!r}'s connection",
            )
        documents.sort(key=lambda item: item[0].version)
        now = self.clock()
        async with self.store.transaction() as tx:
            # What the store holds, read under its lock, decides: two updates apply one after the other. The
            # trust in memory may lag it, until an update another call (or replica) committed is taken up.
            current = await self._stored_trust(tx, partner.trusted)
            newer = [envelope for document, envelope in documents if document.version > current.version]
            for document, envelope in documents:
                if document.version <= current.version and not await self._trusted_as(tx, current, envelope):
                    raise GatewayError(
                        ResponseCode.TRUST_UPDATE_REFUSED,
                        f"version {document.version} of {party}'s trust document differs from the one trusted here",
                    )
            if not newer and documents[-1][0].version < current.version and len(documents) == 1:
                raise GatewayError(
                    ResponseCode.TRUST_UPDATE_REFUSED,
                    f"version {documents[-1][0].version} is older than version {current.version}, trusted here",
                )
            updated = apply_trust_updates(current, newer, now)
            if bundle is not None:
                try:
                    updated.verify(bundle, TRANSFER_ROLE, now)
                except Exception as exc:
                    raise verification_refusal(exc) from None
            for document, envelope in documents:
                if document.version > current.version:
                    await tx.put_trust_document(party, document.version, envelope.to_json(), now)
            if updated is current:
                detail = f"version {current.version} is already trusted"
            else:
                detail = f"now trusting version {updated.version} of {party}'s trust document"
            receipt = self._receipt(
                party, "", payload_hash(envelopes[-1].payload), raw, ResponseCode.OK, detail, form, taken_in=True
            )
            if updated is not current:
                await tx.append_log(
                    direction="in", peer=party, message_id="", kind=LogKind.TRUST, form=form, envelope=raw, now=now
                )
                await tx.append_log(
                    direction="out",
                    peer=party,
                    message_id="",
                    kind=LogKind.RECEIPT,
                    form=form,
                    envelope=receipt,
                    now=now,
                )
        if updated is not partner.trusted:
            self.partners.replace(party, updated)
        if updated is not current:
            log.warning("%s", detail)
        return Received(receipt, ResponseCode.OK, detail, taken_in=True)

    async def _stored_trust(self, tx: Transaction, trusted: TrustedParty) -> TrustedParty:
        """``trusted``, or the newer version of the same Party's trust document that the store holds."""
        stored = await tx.latest_trust_document(trusted.document.party)
        if stored is None or stored[0] <= trusted.version:
            return trusted
        return TrustedParty.restore(Envelope.from_json(stored[1]))

    async def _trusted_as(self, tx: Transaction, current: TrustedParty, envelope: Envelope) -> bool:
        """Whether ``envelope``, a version up to ``current``'s, is the one trusted: ``current`` itself, or as
        stored (a version this store never held, from before the one first configured, cannot be compared)."""
        document = TrustDocument.from_payload(envelope.payload)
        if document.version == current.version:
            return envelope.payload == current.envelope.payload
        stored = await tx.trust_document(document.party, document.version)
        return stored is None or Envelope.from_json(stored).payload == envelope.payload

    def _parse_envelope(self, raw: bytes, form: EnvelopeForm) -> Envelope:
        if form is EnvelopeForm.PROTOBUF:
            return wire.envelope_from_bytes(raw)
        try:
            return Envelope.from_json(raw)
        except EnvelopeFormatError as exc:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, str(exc)) from None

    def _verified_partners(self, envelope: Envelope, peer_identity: str | None) -> list[Partner]:
        """Step 4: the partners whose trusted transfer keys verify ``envelope`` (step 5 keeps the signed sender).

        With mTLS the certificate alone names the partner, whatever keyids the envelope carries. Without it,
        every partner whose trust document lists one of the envelope's keyids is tried; keyids are hints, and
        two partners' documents may list the same key.
        """
        if peer_identity is not None:
            _refuse_several_names(peer_identity)
            partner = self.partners.by_identity(peer_identity)
            if partner is None:
                raise GatewayError(
                    ResponseCode.PEER_IDENTITY_MISMATCH, f"no partner has the transport identity {peer_identity!r}"
                )
            try:
                self._verify(partner, envelope)
            except GatewayError as refusal:
                # Only a diagnosis: the connection's partner did not sign, so say whose keys did, if any.
                for other in self.partners.by_keyids(s.keyid for s in envelope.signatures):
                    if other is not partner and self._verifies(other, envelope):
                        raise GatewayError(
                            ResponseCode.PEER_IDENTITY_MISMATCH,
                            f"signed with {other.party!r}'s keys but sent over {partner.party!r}'s connection",
                        ) from None
                raise refusal from None
            return [partner]
        candidates = self.partners.by_keyids(s.keyid for s in envelope.signatures)
        if not candidates:
            raise GatewayError(ResponseCode.KEY_UNKNOWN_OR_REVOKED, "no signature names a key of a known partner")
        verified: list[Partner] = []
        first_refusal: GatewayError | None = None
        for partner in candidates:
            try:
                self._verify(partner, envelope)
            except GatewayError as exc:
                first_refusal = first_refusal or exc
                continue
            verified.append(partner)
        if not verified:
            assert first_refusal is not None
            raise first_refusal
        return verified

    def _verifies(self, partner: Partner, envelope: Envelope) -> bool:
        try:
            self._verify(partner, envelope)
        except GatewayError:
            return False
        return True

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
        raw: bytes | None,
        code: ResponseCode,
        detail: str,
        form: EnvelopeForm,
        *,
        taken_in: bool = False,
        resend_from: int = 0,
        channel: ChannelState | None = None,
    ) -> bytes:
        receipt = partner_pb2.Receipt(
            message_id=self.new_id(),
            sender=self.settings.self_party,
            receiver=receiver,
            in_reply_to=in_reply_to,
            payload_sha256=digest,
            code=int(code),  # type: ignore[arg-type]
            detail=truncate(detail),
            resend_from=resend_from,
            taken_in=taken_in,
            issued_at=wire.timestamp(self.clock()),
            envelope_sha256=b"" if raw is None else hashlib.sha256(raw).digest(),
            last_sequence=channel.last_sequence if channel else 0,
            last_hash=channel.last_hash if channel else b"",
        )
        envelope = self._sign_receipt(receipt.SerializeToString())
        return envelope.to_json() if form is EnvelopeForm.JSON else wire.envelope_to_bytes(envelope)

    def _sign_receipt(self, payload: bytes) -> Envelope:
        """A receipt payload signed by the current key; `ReceiptUnsigned` when the signer fails."""
        try:
            return sign_envelope(wire.RECEIPT_PAYLOAD_TYPE, payload, [self.signer])
        except Exception as exc:
            # A signer that cannot sign now says so with SignerError: one line. Anything else is a bug in signing,
            # which only its traceback lets anyone find while every delivery is asked for again.
            bug = None if isinstance(exc, SignerError) else exc
            log.error("could not sign a receipt, so no delivery can be answered: %r", exc, exc_info=bug)
            raise ReceiptUnsigned(str(exc)) from exc

    def _current(self, receipt: bytes) -> bytes:
        """A stored receipt as this gateway answers it again: the same payload, and the same signature unless
        the key that made it has since been rotated out, in which case the current key signs the payload
        again (the partner could not verify the old signature, and would ask for ever)."""
        envelope = wire.envelope_from_bytes(receipt)
        if all(s.keyid == self.signer.keyid for s in envelope.signatures):
            return receipt
        return wire.envelope_to_bytes(self._sign_receipt(envelope.payload))

    @staticmethod
    def _reform(receipt: bytes, form: EnvelopeForm) -> bytes:
        """A stored (protobuf) receipt in the form the request arrived in, same signature bytes."""
        if form is EnvelopeForm.PROTOBUF:
            return receipt
        return wire.envelope_from_bytes(receipt).to_json()


def _refuse_several_names(peer_identity: str) -> None:
    """Refuse a delivery over a connection whose certificate carries several common names (`several_names`): it
    could be taken for more than one partner, whichever name it lists first; or whose subject cannot be read
    (`UNREADABLE_CERTIFICATE`)."""
    if peer_identity == UNREADABLE_CERTIFICATE:
        raise GatewayError(
            ResponseCode.PEER_IDENTITY_MISMATCH,
            "the client certificate's subject cannot be read (a name its string type does not allow, such as a NUL"
            " byte in a PrintableString): ask the CA for a certificate whose common name is the tls_identity alone",
        )
    names = several_names(peer_identity)
    if names is not None:
        shown = ", ".join(f"'{escaped(name, 64)}'" for name in names[:4])
        raise GatewayError(
            ResponseCode.PEER_IDENTITY_MISMATCH,
            f"the client certificate names {len(names)} common names ({shown}{', ...' if len(names) > 4 else ''}):"
            " a partner's certificate names one, its tls_identity; ask the CA for a certificate with one name",
        )
