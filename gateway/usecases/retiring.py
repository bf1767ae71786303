"""Uses and cancellations: units leave circulation, once and for ever, into a use or cancellation account."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.domain import text
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import (
    ActionContext,
    CancellationSubtype,
    Retirement,
    acquired_for,
    check_acquired_for,
    check_authorizes,
    check_first_transfers_open,
    check_ledger_year,
    check_not_locked,
    check_room,
    check_vintage,
    primary_purpose,
    record_retirement,
)
from gateway.domain.protocol import check_itmo_serials, check_mitigation_type
from gateway.domain.records import AccountType, ActionType, Authorization, LedgerEntry, Purpose
from gateway.store.base import BlockStatus, StoredBlock, Transaction
from gateway.usecases.base import Idempotency
from gateway.usecases.initiating import BlockSelection, Initiating

RETIREMENT_ACCOUNTS: dict[Retirement, frozenset[AccountType]] = {
    Retirement.USE_NDC: frozenset({AccountType.USE}),
    Retirement.USE_OIMP: frozenset({AccountType.USE}),
    Retirement.CANCELLATION: frozenset({AccountType.CANCELLATION, AccountType.RETIREMENT}),
    Retirement.VOLUNTARY_CANCELLATION: frozenset({AccountType.CANCELLATION, AccountType.RETIREMENT}),
}
"""The account types each retirement may move units into."""

OIMP_USE_PURPOSES = frozenset({Purpose.OIMP, Purpose.IMP, Purpose.OP})
"""The purposes an OIMP use names: other international mitigation purposes, international mitigation purposes
or other purposes."""


@dataclass(frozen=True, slots=True)
class RetirementRequest:
    """An operator's request to use or cancel units held in one of this gateway's accounts."""

    retirement: Retirement
    source_account: str
    selections: tuple[BlockSelection, ...]
    target_account: str
    authorization_id: str = ""
    year_of_use: int | None = None
    purpose: Purpose | None = None
    subtype: CancellationSubtype | None = None
    using_entity: str = ""
    note: str = ""
    target_field: str = "target_account"
    """The request field that names the target account, for refusals."""

    @property
    def purpose_field(self) -> str:
        """The request field that states the purpose, for refusals: the action of a use towards the NDC."""
        return "action" if self.retirement is Retirement.USE_NDC else "purpose"


@dataclass(frozen=True, slots=True)
class RetirementResult:
    """What a use or cancellation did: its action ID, the retired blocks and the ledger entries."""

    action_id: str
    retired: tuple[StoredBlock, ...]
    entries: tuple[LedgerEntry, ...]


class Retiring(Initiating):
    """Uses towards the NDC or for other international mitigation purposes, cancellations and voluntary
    cancellations."""

    async def retire(
        self,
        idem: Idempotency,
        request: RetirementRequest,
        answer_fits: Callable[[RetirementResult], None] | None = None,
    ) -> RetirementResult:
        """Move the selected units into the target account for good and record the ledger entries.

        Units not yet tied to an authorization are tied to the one the request names (and first transferred,
        if the authorization defines their first transfer so). A used or cancelled unit never moves again:
        its block leaves the holdings, and no transfer or retirement can select it.

        ``answer_fits`` sees the result before it commits, and refuses (`GatewayError`) one the caller could not
        be given: nothing is then done.
        """
        self._check_request(request)
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                return await self._result(tx, previous)
            await self._check_new_request(tx, request)
            await self._check_accounts(tx, request)
            now = self.clock()
            locks = await tx.locked_periods()
            check_not_locked(locks, now.year, "", "the action's date")
            if request.year_of_use is not None:
                check_not_locked(locks, request.year_of_use, "year_of_use", "the year of use")
            action_id = self.new_id()
            taken = await self._reserve(tx, request.source_account, request.selections, action_id)
            # What no authorization can make reportable is refused first: these units never enter the ledger.
            # Tied units are in it already (tied before these checks existed): a use or cancellation is how they
            # leave the holdings, which every later report lists. A selection has no mitigation type of its own:
            # a refusal for it names the selection.
            for index, block in enumerate(taken):
                if not block.tied:
                    check_mitigation_type(block, f"selections[{index}]")
                    check_itmo_serials(block, f"selections[{index}].space.issuance")
            reserved = await tx.blocks_of_transfer(action_id, BlockStatus.RESERVED)
            named = await self._named_authorization(tx, request, now.date())
            untied = [s.block for s in reserved if not s.block.tied and not s.block.first_transferred]
            if named is not None and untied:  # the named authorization ties them
                await self._check_ties_own(tx, named.authorization_id, "authorization_id", untied)
            entries: list[LedgerEntry] = []
            newly_tied = 0
            acquisitions = _Acquisitions(tx, [stored.block for stored in reserved])
            parties: dict[str, str] = {}
            for stored in reserved:
                authorization = await self._authorization_for(tx, stored, named, request, now.date(), parties)
                purpose = self._purpose(request, authorization, stored)
                if authorization is None:
                    # Units tied to an authorization not known here, and units acquired before blocks carried
                    # their tie, go only for a purpose they were acquired for.
                    acquired = acquired_for(stored.block, await acquisitions.of(stored.block))
                    check_acquired_for(acquired, purpose, request.purpose_field, stored.block)
                context = ActionContext(
                    action_id=action_id,
                    action_date=now,
                    party=self.party,
                    purpose=purpose,
                    year_of_use=request.year_of_use,
                    using_entity=request.using_entity,
                    note=request.note,
                )
                recorded = record_retirement(context, stored.block, authorization, request.retirement, request.subtype)
                if not stored.block.tied and recorded.block.tied:
                    newly_tied += stored.block.quantity
                entries.extend(recorded.entries)
                await tx.set_block_status(stored.block_id, BlockStatus.SUPERSEDED)
                used = request.retirement.action_type is ActionType.USE
                status = BlockStatus.USED if used else BlockStatus.CANCELLED
                await tx.insert_block(
                    recorded.block,
                    account_id=request.target_account,
                    status=status,
                    transfer_id=action_id,
                    parent_id=stored.block_id,
                )
            check_first_transfers_open(locks, entries, "selections")
            if newly_tied and named is not None:
                check_room(
                    named, await tx.first_transfer_quantity_used(named.authorization_id), newly_tied, "authorization_id"
                )
                await tx.add_authorization_tie(named.authorization_id, action_id, newly_tied, now)
            await tx.append_ledger(entries)
            await self._remember(tx, idem, action_id)
            result = await self._result(tx, action_id)
            if answer_fits is not None:
                answer_fits(result)
            return result

    @staticmethod
    def _check_request(request: RetirementRequest) -> None:
        if not request.selections:
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, "select at least one serial range", field="selections")
        text.check_count(request.selections, "selections", text.MAX_BLOCKS_PER_TRANSFER, what="selections")
        text.check_identifier(request.using_entity, "using_entity", what="entity ID", required=False)
        text.check_text(request.note, "note", what="note")
        text.check_not_na(request.note, "note")
        text.check_not_na(request.using_entity, "using_entity")
        if request.retirement is Retirement.USE_NDC:
            if request.year_of_use is None:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    "a use towards the NDC names the calendar year for which the units are used",
                    field="year_of_use",
                )
            check_ledger_year(request.year_of_use, "year_of_use", "year of use")
        elif request.year_of_use is not None:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, "only a use towards the NDC has a year of use", field="year_of_use"
            )
        if request.retirement is Retirement.USE_OIMP and request.purpose not in OIMP_USE_PURPOSES:
            allowed = ", ".join(repr(p.value) for p in sorted(OIMP_USE_PURPOSES))
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, f"an OIMP use names its purpose: one of {allowed}", field="purpose"
            )
        if request.retirement is Retirement.USE_NDC and request.purpose not in (None, Purpose.NDC):
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, "a use towards the NDC has purpose NDC", field="purpose")
        if request.retirement is Retirement.CANCELLATION and request.subtype is None:
            allowed = ", ".join(repr(c.value) for c in CancellationSubtype)
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, f"a cancellation names its subtype: one of {allowed}", field="subtype"
            )
        if request.retirement is not Retirement.CANCELLATION and request.subtype is not None:
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, "only a cancellation has a subtype", field="subtype")

    async def _check_new_request(self, tx: Transaction, request: RetirementRequest) -> None:
        """The rules a request meets that a retry of one recorded before them is not held to: a year of use in
        the NDC period, an entity ID that looks like no other (unless the named authorization authorizes an
        entity by that very name: it is the name the reports pair the uses with)."""
        if request.using_entity and not await self._authorized_entity(tx, request):
            text.check_new_identifier(request.using_entity, "using_entity", what="entity ID")
        settings = self.ledger_options.adjustments
        year = request.year_of_use
        if year is not None and settings is None:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                "this gateway has no NDC period configured ([ledger] ndc_first_year and ndc_last_year): a use towards"
                " the NDC names a year of it, which no corresponding adjustment could otherwise cover. Configure"
                " [ledger] and restart",
                field="year_of_use",
            )
        if year is not None and settings is not None and not settings.first_year <= year <= settings.last_year:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"the year of use {year} is outside the NDC period, {settings.first_year}-{settings.last_year}"
                " ([ledger] in the configuration): units are used towards the NDC for a year of its period",
                field="year_of_use",
            )

    @staticmethod
    async def _check_accounts(tx: Transaction, request: RetirementRequest) -> None:
        """The source must be a holding account and the target an account of a type the retirement allows."""
        text.check_identifier(request.source_account, "source_account", what="source account")
        text.check_identifier(request.target_account, request.target_field, what="target account")
        await Retiring._holding_account(
            tx, request.source_account, "source_account", "units are used or cancelled from holding accounts"
        )
        target = await tx.get_account(request.target_account)
        if target is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_ACCOUNT,
                f"account {request.target_account!r} is not known here",
                field=request.target_field,
            )
        allowed = RETIREMENT_ACCOUNTS[request.retirement]
        if target.account_type not in allowed:
            kinds = " or ".join(sorted(a.value for a in allowed))
            raise GatewayError(
                ResponseCode.ACCOUNT_NOT_ELIGIBLE,
                f"a {request.retirement.value} moves units into a {kinds} account; {target.account_id!r} is a"
                f" {target.account_type.value} account",
                field=request.target_field,
            )

    @staticmethod
    async def _authorized_entity(tx: Transaction, request: RetirementRequest) -> bool:
        """Whether the request's authorization names its using entity among its authorized entities."""
        try:
            text.check_identifier(request.authorization_id, "authorization_id")
        except GatewayError:
            return False  # refused, with its own reason, where the authorization is looked up
        authorization = await tx.get_authorization(request.authorization_id)
        return authorization is not None and request.using_entity in authorization.authorized_entities

    async def _named_authorization(
        self, tx: Transaction, request: RetirementRequest, today: dt.date
    ) -> Authorization | None:
        if not request.authorization_id:
            return None
        text.check_identifier(request.authorization_id, "authorization_id", what="authorization ID")
        return await self._authorization_in_force(tx, request.authorization_id, today, "authorization_id")

    async def _authorization_for(
        self,
        tx: Transaction,
        stored: StoredBlock,
        named: Authorization | None,
        request: RetirementRequest,
        today: dt.date,
        parties: dict[str, str],
    ) -> Authorization | None:
        """The authorization whose definition decides the block's first transfer: the one it is tied to, if this
        gateway knows it, else the one the request names (which then ties it).

        Units another Party first transferred are governed by an authorization registered here only if it is that
        Party's (a copy): one registered as another Party's (this Party's own, say, under the same ID) is not their
        authorization, and would otherwise decide what they may be used for. They are then treated as units whose
        authorization is not known here. ``parties`` caches each authorization's Party (`_registered_party`)."""
        block = stored.block
        if block.tied:
            if named is not None and named.authorization_id != block.authorization_id:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"{block.describe()} is tied to authorization {block.authorization_id!r}, not"
                    f" {named.authorization_id!r}",
                    field="authorization_id",
                    blocks=[block],
                )
            if block.first_transferring_party == self.party and not block.first_transferred:
                # The first transfer happens now if the definition says so: the version in force must allow it.
                return await self._authorization_in_force(tx, block.authorization_id, today, "authorization_id")
            if block.first_transferring_party != self.party:
                party = await self._registered_party(tx, block.authorization_id, parties)
                if party and party != block.first_transferring_party:
                    return None  # not their authorization: they go only for a purpose they were acquired for
            return await self._authorization_on(tx, block.authorization_id, today)
        if block.first_transferred:
            return None  # acquired before blocks carried their tie: nothing left to decide
        if named is None:
            raise GatewayError(
                ResponseCode.AUTHORIZATION_MISSING,
                f"{block.describe()} is not tied to an authorization: name the authorization it is used or cancelled"
                " under (units outside every authorization are not ITMOs; their registry of record retires them)",
                field="authorization_id",
                blocks=[block],
            )
        check_vintage(named, block, "authorization_id")
        return named

    @staticmethod
    def _purpose(request: RetirementRequest, authorization: Authorization | None, stored: StoredBlock) -> Purpose:
        """The purpose the entry records: NDC for a use towards the NDC, else the one named, else the
        authorization's own; the authorization, where known here, must authorize it."""
        if request.retirement is Retirement.USE_NDC:
            purpose = Purpose.NDC
        elif request.purpose is not None:
            purpose = request.purpose
        elif authorization is not None:
            return primary_purpose(authorization)
        else:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"the authorization of {stored.block.describe()} is not known here: name the purpose it is cancelled"
                " for",
                field="purpose",
                blocks=[stored.block],
            )
        if authorization is not None:
            check_authorizes(authorization, purpose, request.purpose_field, stored.block)
        return purpose

    @staticmethod
    async def _result(tx: Transaction, action_id: str) -> RetirementResult:
        retired = [
            *await tx.blocks_of_transfer(action_id, BlockStatus.USED),
            *await tx.blocks_of_transfer(action_id, BlockStatus.CANCELLED),
        ]
        entries = await tx.ledger_of_action(action_id)
        return RetirementResult(action_id, tuple(retired), tuple(entries))


class _Acquisitions:
    """The ``Acquisition`` entries of the units of a retirement's blocks, read when first needed, in one statement
    per first transferring Party and serial space for all the blocks that share them."""

    def __init__(self, tx: Transaction, blocks: Sequence[UnitBlock]) -> None:
        self._tx = tx
        self._groups: dict[tuple[str, SerialSpace], list[UnitBlock]] = {}
        for block in blocks:
            self._groups.setdefault((block.first_transferring_party, block.space), []).append(block)
        self._found: dict[tuple[str, SerialSpace, int, int], list[LedgerEntry]] = {}

    async def of(self, block: UnitBlock) -> list[LedgerEntry]:
        """The Acquisition entries that share a unit with ``block`` (one of the blocks given)."""
        key = (block.first_transferring_party, block.space, block.start, block.end)
        if key not in self._found:
            group = self._groups[key[0], key[1]]
            wanted = [(each.start, each.end) for each in group]
            found = await self._tx.acquisitions_of_units_each(key[0], key[1], wanted)
            for each, entries in zip(group, found, strict=True):
                self._found[each.first_transferring_party, each.space, each.start, each.end] = entries
        return self._found[key]
