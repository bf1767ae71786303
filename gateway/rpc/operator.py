"""The operator gRPC service: registry operators' calls, translated to `gateway.service.Gateway`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway import wire
from gateway.domain import text
from gateway.domain.adjustments import format_quantity
from gateway.domain.blocks import SerialSpace
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import LockedPeriod, Retirement, parse_cancellation_subtype, parse_retirement
from gateway.domain.nomenclature import Nomenclature
from gateway.domain.protocol import parse_adjustment_method, parse_purpose
from gateway.domain.records import COOPERATIVE_APPROACH_PATTERN, PARTY_PATTERN, Authorization, LedgerEntry
from gateway.domain.transfer import Transfer
from gateway.partners import TRANSFER_ROLE
from gateway.rpc import paging
from gateway.rpc.auth import caller_may_take_kept_places, caller_name
from gateway.rpc.errors import AnsweredAs, abort_unexpected, abort_with, refusals_as_status, status_for
from gateway.service import (
    BlockSelection,
    Gateway,
    Idempotency,
    LedgerSummary,
    RetirementRequest,
    RetirementResult,
    TransferRequest,
)
from gateway.store import codec
from gateway.store.base import Change, ChangeKind, OutboxMessage, OutboxState, ReconciliationRun, RunRole, StoredBlock
from gateway.trust import PublicationRefused, PublisherUnavailable, PushResult, TrustKeeper
from gateway.usecases.watching import ChangeFeed, FeedClosed
from signing import Envelope, EnvelopeFormatError, TrustedParty

Context = grpc.aio.ServicerContext

log = logging.getLogger(__name__)


MAX_RECONCILIATIONS_LISTED = 1_000
"""The most runs ListReconciliations gives (the latest first); a larger limit is refused, not cut silently."""

MAX_UNRESOLVED_SHOWN = 1_000
"""The transfers whose first transfer is yet to come that a summary lists, the oldest first (some 190 kB);
``unresolved_total`` counts them all, and ListLedgerEntries lists every one."""


def _idempotency(method: str, request: object, key: str) -> Idempotency:
    """The idempotency record of a write, scoped to its authenticated caller: two callers' keys never collide."""
    text.check_identifier(key, "idempotency_key", what="idempotency key")
    return Idempotency(caller_name(), method, key, wire.request_hash(request))  # type: ignore[arg-type]


def _outbox_entry(message: OutboxMessage) -> operator_pb2.OutboxEntry:
    return operator_pb2.OutboxEntry(
        message_id=message.message_id,
        receiver=message.receiver,
        kind=message.kind.value,
        transfer_id=message.transfer_id,
        state=message.state.value,
        sequence=message.sequence,
        attempts=message.attempts,
        last_code=message.last_code,  # type: ignore[arg-type]
        last_error=message.last_error,
        created_at=message.created_at.isoformat(),
        next_attempt_at=message.next_attempt_at.isoformat() if message.state is OutboxState.PENDING else "",
        settled_at=message.settled_at.isoformat() if message.settled_at else "",
    )


def _party_filter(party: str, *, required: bool = False, field: str = "party") -> str:
    if not party and required:
        raise GatewayError(ResponseCode.INVALID_ARGUMENT, "name the partner's Party code", field=field)
    if party and not PARTY_PATTERN.fullmatch(party):
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"{text.quoted(party)} is not an ISO 3166-1 alpha-3 Party code (three capital ASCII letters)",
            field=field,
        )
    return party


def _stored_instant(position: paging.Position) -> None:
    """Refuse (`ValueError`) a transfers position whose instant is not one as the store writes it."""
    instant = str(position[0])
    if codec.to_text(codec.from_text(instant)) != instant:
        raise ValueError(f"{instant!r} is not an instant as stored")


def _read_selections(
    selections: Sequence[operator_pb2.BlockSelection], nomenclature: Nomenclature
) -> tuple[BlockSelection, ...]:
    """The selections of a request; refuses the first malformed one naming its field. A serial space spelled as
    an earlier selection spelled it is not checked again."""
    spaces: dict[tuple[str, str, str], SerialSpace] = {}
    read: list[BlockSelection] = []
    for i, selection in enumerate(selections):
        field = f"selections[{i}]"
        wire.check_serials(selection.start, selection.end, field)
        spelled = (selection.space.unit_kind, selection.space.issuing_registry, selection.space.issuance)
        space = spaces.get(spelled)
        if space is None:
            space_field = f"{field}.space"
            for name, code in zip(("unit_kind", "issuing_registry", "issuance"), spelled, strict=True):
                text.check_code(code, f"{space_field}.{name}", what=name.replace("_", " "))
            space = spaces[spelled] = nomenclature.canonical(*spelled, field=space_field)
        read.append(BlockSelection(space, selection.start, selection.end))
    return tuple(read)


def _holding(stored: StoredBlock) -> operator_pb2.Holding:
    return operator_pb2.Holding(
        block_id=stored.block_id,
        account_id=stored.account_id,
        status=stored.status.value,
        block=wire.block_to_proto(stored.block),
        transfer_id=stored.transfer_id,
    )


def _trust_status(party: str, trusted: TrustedParty, pushed: Sequence[PushResult] = ()) -> operator_pb2.TrustStatus:
    return operator_pb2.TrustStatus(
        party=party,
        version=trusted.version,
        expires=trusted.expires.isoformat(),
        transfer_keyids=list(trusted.document.roles[TRANSFER_ROLE].keyids),
        pushed=[
            operator_pb2.PushResult(party=p.party, code=int(p.code), detail=p.detail)  # type: ignore[arg-type]
            for p in pushed
        ],
    )


def _retirement(result: RetirementResult) -> operator_pb2.RetirementResult:
    return operator_pb2.RetirementResult(
        action_id=result.action_id,
        retired=[_holding(b) for b in result.retired],
        entries=[wire.ledger_entry_to_proto(e) for e in result.entries],
    )


MAX_ANSWER_BYTES = 4 << 20
"""The largest answer gRPC clients read by default (4 MiB). A proposal, use or cancellation whose answer would be
larger is refused before it takes effect: its caller, and every retry with the same key, could never read what was
done."""


Result = TypeVar("Result")
Answer = TypeVar("Answer", bound=Message)


class _Answer(Generic[Result, Answer]):
    """Checks an answer's size before the write it answers commits (`MAX_ANSWER_BYTES`), and keeps the message it
    built, so that the call answers with it rather than building it again (a thousand blocks' worth)."""

    def __init__(self, build: Callable[[Result], Answer], what: str) -> None:
        self.build = build
        self.what = what
        self.checked: tuple[Result, Answer] | None = None

    def fits(self, result: Result) -> None:
        """Refuse (`GatewayError`) a result whose answer is too large for a client to read."""
        answer = self.build(result)
        size = answer.ByteSize()
        if size > MAX_ANSWER_BYTES:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"the answer would be {size:,} bytes, more than the {MAX_ANSWER_BYTES:,} a gRPC client reads by"
                f" default; nothing was done: select fewer blocks per {self.what}",
                field="selections",
            )
        self.checked = (result, answer)

    def of(self, result: Result) -> Answer:
        """The answer to ``result``: the one checked, or built now for a result replayed by its key."""
        if self.checked is not None and self.checked[0] is result:
            return self.checked[1]
        return self.build(result)


def _locked(lock: LockedPeriod) -> operator_pb2.LockedPeriod:
    return operator_pb2.LockedPeriod(
        first_year=lock.first_year, last_year=lock.last_year, locked_at=lock.locked_at.isoformat(), reason=lock.reason
    )


def summary_to_proto(summary: LedgerSummary) -> operator_pb2.LedgerSummary:
    """The ledger summary as its wire message (fractions as decimal text, see `format_quantity`)."""
    structured = summary.structured
    message = operator_pb2.LedgerSummary(
        convention=summary.convention,
        groups=[
            operator_pb2.SummaryGroup(
                cooperative_approach=g.cooperative_approach,
                sectors=g.sectors,
                partner=g.partner,
                vintage=g.vintage,
                authorized=str(g.authorized),
                first_transferred=str(g.first_transferred),
                acquired=str(g.acquired),
                used=str(g.used),
                cancelled=str(g.cancelled),
                adjusted=str(g.adjusted),
                transferred=str(g.transferred),
            )
            for g in summary.groups
        ],
        unresolved=[wire.ledger_entry_to_proto(e) for e in summary.unresolved[:MAX_UNRESOLVED_SHOWN]],
        unresolved_total=len(summary.unresolved),
        locked=[_locked(lock) for lock in summary.locked],
        outside_period_years=summary.outside_period,
    )
    if structured is None:
        message.method = "not configured: set [ledger] ndc_first_year, ndc_last_year and adjustment_method"
        message.averaging_divisor = "not configured"
        return message
    message.method = structured.settings.describe()
    message.averaging_divisor = structured.divisor_note
    if structured.cumulative_adjustment is not None:
        message.cumulative_adjustment = format_quantity(structured.cumulative_adjustment)
    for row in structured.rows:
        message.years.append(
            operator_pb2.SummaryYear(
                year=row.year,
                first_transferred_ndc=str(row.first_transferred_ndc),
                first_transferred_oimp_only=str(row.first_transferred_oimp_only),
                used_ndc=str(row.used_ndc),
                annual_adjustment_averaging=format_quantity(row.annual_adjustment_averaging)
                if row.annual_adjustment_averaging is not None
                else "",
                total_adjustment=format_quantity(row.total_adjustment),
                running_total=format_quantity(row.running_total),
                reported_emissions="" if row.reported_emissions is None else str(row.reported_emissions),
                emissions_balance="" if row.emissions_balance is None else format_quantity(row.emissions_balance),
            )
        )
    return message


def change_kinds(kinds: Sequence[int]) -> tuple[ChangeKind, ...]:
    """The kinds a WatchChanges request filters on, each a known kind."""
    text.check_count(kinds, "kinds", len(ChangeKind), what="kinds")
    known = {int(operator_pb2.ChangeKind.Value(k.name)): k for k in ChangeKind}
    found = []
    for i, number in enumerate(kinds):
        kind = known.get(number)
        if kind is None:
            names = ", ".join(f"{k.name} = {n}" for n, k in known.items())
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"{number} is not a change kind (the kinds: {names})",
                field=f"kinds[{i}]",
            )
        found.append(kind)
    return tuple(found)


def change_to_proto(change: Change) -> operator_pb2.Change:
    """A change of the feed as its wire message."""
    message = operator_pb2.Change(
        position=change.position,
        kind=operator_pb2.ChangeKind.Value(change.kind.name),
        time=wire.timestamp(change.recorded_at),
        digest=change.digest,
    )
    if change.transfer is not None:
        message.transfer.CopyFrom(wire.transfer_to_proto(change.transfer))
    if change.entry is not None:
        message.ledger_entry.CopyFrom(wire.ledger_entry_to_proto(change.entry))
    return message


class TrustOperations:
    """The operator calls about trust documents, mixed into `OperatorService`."""

    trust: TrustKeeper

    @refusals_as_status
    async def RotateTrustDocument(
        self, request: operator_pb2.RotateTrustDocumentRequest, context: Context[object, object]
    ) -> operator_pb2.TrustStatus:
        if not request.envelope_json:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, "give the signed trust document (DSSE JSON)", field="envelope_json"
            )
        try:
            envelope = Envelope.from_json(request.envelope_json)
        except EnvelopeFormatError as exc:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, text.truncate(str(exc), 300), field="envelope_json"
            ) from None
        # The request names a signer; it never says where a key lives. Only the configuration does.
        signer = self.trust.signers.get(request.signer)
        if signer is None:
            names = ", ".join(sorted(self.trust.signers)) or "none"
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"no signer named {text.quoted(request.signer, 64)} is configured (configured: {names}); add it"
                " under [signers] and restart",
                field="signer",
            )
        idem = _idempotency("RotateTrustDocument", request, request.idempotency_key)
        try:
            updated, pushed = await self.trust.rotate(envelope, signer, idem)
        except GatewayError as exc:
            # The caller is an authenticated administrator: a document the update rules refuse (expired, not
            # signed by a threshold of the current or its own trust keys) keeps the response code a partner's
            # push of it would get, but is a request to correct, FAILED_PRECONDITION like TRUST_UPDATE_REFUSED,
            # not UNAUTHENTICATED, which clients take for bad credentials. A refusal naming no field is about
            # the document itself.
            status = status_for(exc.code)
            if status is grpc.StatusCode.UNAUTHENTICATED:
                status = grpc.StatusCode.FAILED_PRECONDITION
            raise AnsweredAs(exc, status, field="envelope_json") from None
        return _trust_status(self.trust.party, updated, pushed)

    @refusals_as_status
    async def RefreshPartnerTrust(
        self, request: operator_pb2.RefreshPartnerTrustRequest, context: Context[object, object]
    ) -> operator_pb2.TrustStatus:
        partner = self.trust.partners.get(_party_filter(request.party, required=True))
        if partner is None:
            raise GatewayError(ResponseCode.UNKNOWN_PARTNER, f"{request.party!r} is not a partner", field="party")
        try:
            updated = await self.trust.refresh(request.party, partner.http_url)
        except PublisherUnavailable as exc:
            # The partner is configured; its publisher could not be read. Call again later.
            raise AnsweredAs(exc, grpc.StatusCode.UNAVAILABLE) from None
        except PublicationRefused as exc:
            # The request is right; what the partner publishes is not (malformed, too large, or refused by the
            # update rules, which on a partner's push mean a sender failing to authenticate): it must correct it.
            raise AnsweredAs(exc, grpc.StatusCode.FAILED_PRECONDITION) from None
        return _trust_status(request.party, updated)

    @refusals_as_status
    async def ListTrust(
        self, request: operator_pb2.ListTrustRequest, context: Context[object, object]
    ) -> operator_pb2.ListTrustResponse:
        return operator_pb2.ListTrustResponse(
            own=_trust_status(self.trust.party, self.trust.own),
            partners=[
                _trust_status(p, partner.trusted) for p, partner in sorted(self.trust.partners.parties().items())
            ],
        )


class OperatorService(TrustOperations, operator_pb2_grpc.OperatorServiceServicer):
    """Implements `carbon_gateway.v1.OperatorService`."""

    def __init__(self, gateway: Gateway, trust: TrustKeeper, changes: ChangeFeed | None = None) -> None:
        self.gateway = gateway
        self.trust = trust
        self.changes = changes or ChangeFeed(gateway.store)

    @refusals_as_status
    async def OpenAccount(
        self, request: operator_pb2.OpenAccountRequest, context: Context[object, object]
    ) -> records_pb2.Account:
        account = wire.account_from_proto(request.account)
        idem = _idempotency("OpenAccount", request, request.idempotency_key)
        return wire.account_to_proto(await self.gateway.open_account(idem, account))

    @refusals_as_status
    async def RegisterAuthorization(
        self, request: operator_pb2.RegisterAuthorizationRequest, context: Context[object, object]
    ) -> records_pb2.Authorization:
        idem = _idempotency("RegisterAuthorization", request, request.idempotency_key)
        try:
            authorization = wire.authorization_from_proto(request.authorization)
            recorded = await self.gateway.register_authorization(idem, authorization)
        except GatewayError as refused:
            recorded = await self._retried(refused, idem, request.authorization.authorization_id, first=True)
        return wire.authorization_to_proto(recorded)

    @refusals_as_status
    async def AmendAuthorization(
        self, request: operator_pb2.AmendAuthorizationRequest, context: Context[object, object]
    ) -> records_pb2.Authorization:
        idem = _idempotency("AmendAuthorization", request, request.idempotency_key)
        try:
            authorization = wire.authorization_from_proto(request.authorization)
            recorded = await self.gateway.amend_authorization(idem, authorization)
        except GatewayError as refused:
            recorded = await self._retried(refused, idem, request.authorization.authorization_id, first=False)
        return wire.authorization_to_proto(recorded)

    @refusals_as_status
    async def RevokeAuthorization(
        self, request: operator_pb2.RevokeAuthorizationRequest, context: Context[object, object]
    ) -> records_pb2.Authorization:
        text.check_identifier(request.authorization_id, "authorization_id", what="authorization ID")
        date = wire.parse_date(request.date, "date")
        idem = _idempotency("RevokeAuthorization", request, request.idempotency_key)
        try:
            revoked = await self.gateway.revoke_authorization(
                idem, request.authorization_id, request.version, date, request.reason
            )
        except GatewayError as refused:
            revoked = await self._retried(refused, idem, request.authorization_id, first=False)
        return wire.authorization_to_proto(revoked)

    async def _retried(
        self, refused: GatewayError, idem: Idempotency, authorization_id: str, *, first: bool
    ) -> Authorization:
        """What an earlier call with this key and request recorded, where this one was ``refused``: a retry of a
        request an earlier release took in, under rules older than this release's. Else ``refused`` stands."""
        recorded = await self.gateway.recorded_version(idem, authorization_id, first=first)
        if recorded is None:
            raise refused
        return recorded

    @refusals_as_status
    async def ListAuthorizations(
        self, request: operator_pb2.ListAuthorizationsRequest, context: Context[object, object]
    ) -> operator_pb2.ListAuthorizationsResponse:
        text.check_identifier(request.authorization_id, "authorization_id", what="authorization ID", required=False)
        size = paging.page_size(request.page_size)
        # A page ends at a version's position in the table (its seq). The scope's "seq" refuses the tokens of
        # earlier versions, which counted places in the list instead.
        scope = f"ListAuthorizations seq\n{request.authorization_id}"
        after = paging.decode_token(request.page_token, (int,), scope)

        async def read(position: paging.Position | None, limit: int) -> list[tuple[int, Authorization]]:
            start = 0 if position is None else int(position[0])
            return await self.gateway.page_authorizations(request.authorization_id, after=start, limit=limit)

        listed, token = await paging.fill(
            read,
            after,
            size,
            lambda item: wire.authorization_to_proto(item[1]),
            lambda item: (item[0],),
            chunk=100,
            scope=scope,
        )
        return operator_pb2.ListAuthorizationsResponse(versions=listed, next_page_token=token)

    def _selections(self, selections: Sequence[operator_pb2.BlockSelection]) -> tuple[BlockSelection, ...]:
        text.check_count(selections, "selections", text.MAX_BLOCKS_PER_TRANSFER, what="selections")
        return _read_selections(selections, self.gateway.nomenclature)

    @refusals_as_status
    async def UseUnits(
        self, request: operator_pb2.UseUnitsRequest, context: Context[object, object]
    ) -> operator_pb2.RetirementResult:
        uses = (Retirement.USE_NDC, Retirement.USE_OIMP)
        if request.action not in {r.value for r in uses}:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"UseUnits takes {Retirement.USE_NDC.value!r} or {Retirement.USE_OIMP.value!r}, not"
                f" {text.quoted(request.action)}; cancellations go to CancelUnits",
                field="action",
            )
        retirement = parse_retirement(request.action, "action")
        text.check_identifier(request.purpose, "purpose", what="purpose", required=False)
        retire = RetirementRequest(
            retirement=retirement,
            source_account=request.source_account,
            selections=self._selections(request.selections),
            target_account=request.use_account,
            target_field="use_account",
            authorization_id=request.authorization_id,
            year_of_use=request.year_of_use or None,
            purpose=parse_purpose(request.purpose) if request.purpose else None,
            using_entity=request.using_entity,
            note=request.note,
        )
        idem = _idempotency("UseUnits", request, request.idempotency_key)
        answer = _Answer(_retirement, "use")
        return answer.of(await self.gateway.retire(idem, retire, answer.fits))

    @refusals_as_status
    async def CancelUnits(
        self, request: operator_pb2.CancelUnitsRequest, context: Context[object, object]
    ) -> operator_pb2.RetirementResult:
        retirement = Retirement.VOLUNTARY_CANCELLATION if request.voluntary else Retirement.CANCELLATION
        text.check_identifier(request.purpose, "purpose", what="purpose", required=False)
        retire = RetirementRequest(
            retirement=retirement,
            source_account=request.source_account,
            selections=self._selections(request.selections),
            target_account=request.cancellation_account,
            target_field="cancellation_account",
            authorization_id=request.authorization_id,
            purpose=parse_purpose(request.purpose) if request.purpose else None,
            subtype=parse_cancellation_subtype(request.subtype, "subtype") if request.subtype else None,
            using_entity=request.using_entity,
            note=request.note,
        )
        idem = _idempotency("CancelUnits", request, request.idempotency_key)
        answer = _Answer(_retirement, "cancellation")
        return answer.of(await self.gateway.retire(idem, retire, answer.fits))

    @refusals_as_status
    async def SetReportedEmissions(
        self, request: operator_pb2.SetReportedEmissionsRequest, context: Context[object, object]
    ) -> operator_pb2.ReportedEmissions:
        idem = _idempotency("SetReportedEmissions", request, request.idempotency_key)
        year, quantity = await self.gateway.set_reported_emissions(idem, request.year, request.quantity)
        return operator_pb2.ReportedEmissions(year=year, quantity=quantity)

    @refusals_as_status
    async def LockPeriod(
        self, request: operator_pb2.LockPeriodRequest, context: Context[object, object]
    ) -> operator_pb2.LockedPeriod:
        idem = _idempotency("LockPeriod", request, request.idempotency_key)
        lock = await self.gateway.lock_period(idem, request.first_year, request.last_year, request.reason)
        return _locked(lock)

    @refusals_as_status
    async def GetLedgerSummary(
        self, request: operator_pb2.GetLedgerSummaryRequest, context: Context[object, object]
    ) -> operator_pb2.LedgerSummary:
        return summary_to_proto(await self.gateway.ledger_summary())

    @refusals_as_status
    async def RegisterIssuance(
        self, request: operator_pb2.RegisterIssuanceRequest, context: Context[object, object]
    ) -> operator_pb2.Holding:
        if not request.HasField("block"):
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, "the request has no block", field="block")
        text.check_identifier(request.account_id, "account_id", what="account ID")
        block = wire.block_from_proto(request.block, "block", self.gateway.nomenclature)
        text.check_identifier(request.authorization_id, "authorization_id", what="authorization ID", required=False)
        idem = _idempotency("RegisterIssuance", request, request.idempotency_key)
        stored = await self.gateway.register_issuance(idem, request.account_id, block, request.authorization_id)
        return _holding(stored)

    @refusals_as_status
    async def ProposeTransfer(
        self, request: operator_pb2.ProposeTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        selections = self._selections(request.selections)
        text.check_identifier(request.source_account, "source_account", what="source account ID")
        if not PARTY_PATTERN.fullmatch(request.acquiring_account.party):
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"{text.quoted(request.acquiring_account.party)} is not an ISO 3166-1 alpha-3 Party code"
                " (three capital ASCII letters)",
                field="acquiring_account.party",
            )
        text.check_identifier(request.acquiring_account.account_id, "acquiring_account.account_id", what="account ID")
        if not COOPERATIVE_APPROACH_PATTERN.fullmatch(request.cooperative_approach):
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"{text.quoted(request.cooperative_approach)} is not a cooperative approach ID: CA followed by 4"
                " ASCII digits",
                field="cooperative_approach",
            )
        text.check_identifier(request.authorization_id, "authorization_id", what="authorization ID")
        text.check_identifier(request.purpose, "purpose", what="purpose")
        parse_purpose(request.purpose, field="purpose")
        text.check_identifier(request.adjustment_method, "adjustment_method", what="adjustment method")
        parse_adjustment_method(request.adjustment_method, field="adjustment_method")
        transfer_request = TransferRequest(
            source_account=request.source_account,
            selections=tuple(selections),
            acquiring_party=request.acquiring_account.party,
            acquiring_account=request.acquiring_account.account_id,
            cooperative_approach=request.cooperative_approach,
            authorization_id=request.authorization_id,
            purpose=request.purpose,
            adjustment_method=request.adjustment_method,
        )
        idem = _idempotency("ProposeTransfer", request, request.idempotency_key)
        answer = _Answer(wire.transfer_to_proto, "transfer")
        return answer.of(await self.gateway.propose_transfer(idem, transfer_request, answer.fits))

    @refusals_as_status
    async def CancelTransfer(
        self, request: operator_pb2.CancelTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        text.check_identifier(request.transfer_id, "transfer_id", what="transfer ID")
        text.check_text(request.reason, "reason", what="reason")
        idem = _idempotency("CancelTransfer", request, request.idempotency_key)
        return wire.transfer_to_proto(await self.gateway.cancel_transfer(idem, request.transfer_id, request.reason))

    @refusals_as_status
    async def DecideTransfer(
        self, request: operator_pb2.DecideTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        text.check_identifier(request.transfer_id, "transfer_id", what="transfer ID")
        text.check_text(request.reason, "reason", what="reason")
        idem = _idempotency("DecideTransfer", request, request.idempotency_key)
        transfer = await self.gateway.decide_held_transfer(idem, request.transfer_id, request.accept, request.reason)
        return wire.transfer_to_proto(transfer)

    @refusals_as_status
    async def GetTransfer(
        self, request: operator_pb2.GetTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        text.check_identifier(request.transfer_id, "transfer_id", what="transfer ID")
        return wire.transfer_to_proto(await self.gateway.get_transfer(request.transfer_id))

    @refusals_as_status
    async def ListTransfers(
        self, request: operator_pb2.ListTransfersRequest, context: Context[object, object]
    ) -> operator_pb2.ListTransfersResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, (str, str), "ListTransfers", check=_stored_instant)

        async def read(position: paging.Position | None, limit: int) -> list[Transfer]:
            at = None if position is None else (str(position[0]), str(position[1]))
            return await self.gateway.list_transfers(after=at, limit=limit)

        # A transfer of a thousand blocks takes some 120 kB: a few dozen are read at a time.
        transfers, token = await paging.fill(
            read, after, size, wire.transfer_to_proto, codec.transfer_position, chunk=32, scope="ListTransfers"
        )
        return operator_pb2.ListTransfersResponse(transfers=transfers, next_page_token=token)

    @refusals_as_status
    async def ListLedgerEntries(
        self, request: operator_pb2.ListLedgerEntriesRequest, context: Context[object, object]
    ) -> operator_pb2.ListLedgerEntriesResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, (int,), "ListLedgerEntries")

        async def read(position: paging.Position | None, limit: int) -> list[LedgerEntry]:
            return await self.gateway.list_ledger(after=0 if position is None else int(position[0]), limit=limit)

        entries, token = await paging.fill(
            read,
            after,
            size,
            wire.ledger_entry_to_proto,
            lambda e: (e.entry_id,),
            chunk=1_000,
            scope="ListLedgerEntries",
        )
        return operator_pb2.ListLedgerEntriesResponse(entries=entries, next_page_token=token)

    @refusals_as_status
    async def ListHoldings(
        self, request: operator_pb2.ListHoldingsRequest, context: Context[object, object]
    ) -> operator_pb2.ListHoldingsResponse:
        text.check_identifier(request.account_id, "account_id", what="account ID", required=False)
        size = paging.page_size(request.page_size)
        scope = f"ListHoldings\n{request.account_id}"
        after = paging.decode_token(request.page_token, (str, str, str, int, int), scope)

        async def read(position: paging.Position | None, limit: int) -> list[StoredBlock]:
            at = None
            if position is not None:
                kind, registry, issuance, start, block_id = position
                at = (str(kind), str(registry), str(issuance), int(start), int(block_id))
            return await self.gateway.list_holdings(request.account_id, after=at, limit=limit)

        holdings, token = await paging.fill(read, after, size, _holding, codec.block_position, chunk=1_000, scope=scope)
        return operator_pb2.ListHoldingsResponse(holdings=holdings, next_page_token=token)

    @refusals_as_status
    async def ListOutbox(
        self, request: operator_pb2.ListOutboxRequest, context: Context[object, object]
    ) -> operator_pb2.ListOutboxResponse:
        messages = await self.gateway.list_outbox(_party_filter(request.party), (OutboxState.PENDING,))
        return operator_pb2.ListOutboxResponse(entries=[_outbox_entry(m) for m in messages])

    @refusals_as_status
    async def ListDeadLetters(
        self, request: operator_pb2.ListDeadLettersRequest, context: Context[object, object]
    ) -> operator_pb2.ListOutboxResponse:
        messages = await self.gateway.list_outbox(_party_filter(request.party), (OutboxState.DEAD,))
        return operator_pb2.ListOutboxResponse(entries=[_outbox_entry(m) for m in messages])

    @refusals_as_status
    async def RetryDeadLetter(
        self, request: operator_pb2.RetryDeadLetterRequest, context: Context[object, object]
    ) -> operator_pb2.OutboxEntry:
        text.check_identifier(request.message_id, "message_id", what="message ID")
        idem = _idempotency("RetryDeadLetter", request, request.idempotency_key)
        return _outbox_entry(await self.gateway.retry_dead_letter(idem, request.message_id))

    @refusals_as_status
    async def AbandonDeadLetter(
        self, request: operator_pb2.AbandonDeadLetterRequest, context: Context[object, object]
    ) -> operator_pb2.AbandonDeadLetterResponse:
        text.check_identifier(request.message_id, "message_id", what="message ID")
        text.check_text(request.reason, "reason", what="reason")
        idem = _idempotency("AbandonDeadLetter", request, request.idempotency_key)
        abandoned = await self.gateway.abandon_dead_letter(idem, request.message_id, request.reason)
        response = operator_pb2.AbandonDeadLetterResponse(
            entry=_outbox_entry(abandoned.message), consequence=abandoned.consequence
        )
        if abandoned.transfer is not None:
            response.transfer.CopyFrom(wire.transfer_to_proto(abandoned.transfer))
        return response

    @refusals_as_status
    async def PruneChanges(
        self, request: operator_pb2.PruneChangesRequest, context: Context[object, object]
    ) -> operator_pb2.PruneChangesResponse:
        idem = _idempotency("PruneChanges", request, request.idempotency_key)
        pruned = await self.gateway.prune_changes(idem, request.through_position)
        return operator_pb2.PruneChangesResponse(
            pruned_through=pruned.through, removed=pruned.removed, latest_position=pruned.latest
        )

    @refusals_as_status
    async def RunReconciliation(
        self, request: operator_pb2.RunReconciliationRequest, context: Context[object, object]
    ) -> operator_pb2.Reconciliation:
        partner = _party_filter(request.partner, required=True, field="partner")
        idem = _idempotency("RunReconciliation", request, request.idempotency_key)
        return _reconciliation(await self.gateway.start_reconciliation(idem, partner))

    @refusals_as_status
    async def GetReconciliation(
        self, request: operator_pb2.GetReconciliationRequest, context: Context[object, object]
    ) -> operator_pb2.Reconciliation:
        text.check_identifier(request.run_id, "run_id", what="run ID")
        return _reconciliation(await self.gateway.get_reconciliation(request.run_id))

    @refusals_as_status
    async def ListReconciliations(
        self, request: operator_pb2.ListReconciliationsRequest, context: Context[object, object]
    ) -> operator_pb2.ListReconciliationsResponse:
        partner = _party_filter(request.partner, field="partner")
        if request.limit > MAX_RECONCILIATIONS_LISTED:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"limit {request.limit} is above {MAX_RECONCILIATIONS_LISTED}: the list gives the latest runs, at"
                f" most {MAX_RECONCILIATIONS_LISTED}",
                field="limit",
            )
        runs = await self.gateway.list_reconciliations(partner, request.limit or 100)
        # The list leaves the reports out (GetReconciliation gives one): a report may take up to a megabyte.
        return operator_pb2.ListReconciliationsResponse(runs=[_reconciliation(r, report=False) for r in runs])

    @refusals_as_status
    async def ResolveReconciliation(
        self, request: operator_pb2.ResolveReconciliationRequest, context: Context[object, object]
    ) -> operator_pb2.Reconciliation:
        text.check_identifier(request.run_id, "run_id", what="run ID")
        text.check_text(request.reason, "reason", what="reason")
        idem = _idempotency("ResolveReconciliation", request, request.idempotency_key)
        return _reconciliation(await self.gateway.resolve_reconciliation(idem, request.run_id, request.reason))

    async def WatchChanges(
        self, request: operator_pb2.WatchChangesRequest, context: Context[object, object]
    ) -> AsyncIterator[operator_pb2.Change]:
        # A stream cannot use `refusals_as_status`; the same mapping, for an async generator. A refusal comes
        # before the first change: the position is checked before anything is sent.
        try:
            kinds = change_kinds(request.kinds)
            following = self.changes.follow(
                request.after_position,
                kinds,
                request.after_digest,
                caller=caller_name(),
                may_take_kept=caller_may_take_kept_places(),
            )
            # Closed when the call ends however it ends (a cancelled call stops at the `yield`, not inside).
            async with aclosing(following) as changes:
                async for change in changes:
                    yield change_to_proto(change)
        except GatewayError as exc:
            await abort_with(context, exc)
        except FeedClosed:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the gateway is stopping: call WatchChanges again with after_position set to the last position"
                " received",
            )
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_unexpected(context, exc, "WatchChanges", self.gateway.store)


def _reconciliation(run: ReconciliationRun, *, report: bool = True) -> operator_pb2.Reconciliation:
    message = operator_pb2.Reconciliation(
        run_id=run.run_id,
        partner=run.partner,
        role=run.role.value,
        status=int(run.status),  # type: ignore[arg-type]
        snapshot_at=wire.timestamp(run.snapshot_at),
        started_at=wire.timestamp(run.started_at),
        updated_at=wire.timestamp(run.updated_at),
        detail=run.detail,
        resolved_reason=run.resolved_reason,
    )
    if run.resolved_at is not None:
        message.resolved_at.CopyFrom(wire.timestamp(run.resolved_at))
    if not report:
        return message
    payload = run.report
    if run.report and run.role is RunRole.REQUESTER:
        message.signed_report = run.report
        payload = Envelope.from_json(run.report).payload
    if payload:
        message.report.ParseFromString(payload)
    return message
