"""The initiating side of a transfer: propose, cancel, and act on the acquiring side's Decision."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from carbon_gateway.v1 import partner_pb2
from gateway import faults, wire
from gateway.domain import text
from gateway.domain.blocks import SerialSpace, UnitBlock, split
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import ActionContext, check_first_transfers_open, record_departure, version_in_force
from gateway.domain.protocol import (
    Rejection,
    check_authorization,
    check_blocks_enter_ledger,
    parse_adjustment_method,
    parse_purpose,
    validate_terms,
)
from gateway.domain.records import Authorization, TransferTerms
from gateway.domain.transfer import Transfer, TransferRole, TransferState, advance, overdue
from gateway.store.base import BlockStatus, NewBlock, StoredBlock, Transaction
from gateway.usecases.base import GatewayBase, Idempotency, log


@dataclass(frozen=True, slots=True)
class BlockSelection:
    """A serial range to take out of the blocks held in an account."""

    space: SerialSpace
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """An operator's request to transfer units to another Party's account."""

    source_account: str
    selections: tuple[BlockSelection, ...]
    acquiring_party: str
    acquiring_account: str
    cooperative_approach: str
    authorization_id: str
    purpose: str
    adjustment_method: str


BLOCKS_NAMED_NOT_HELD = 5
"""How many of the blocks a selection meets a refusal names when no free block held in the account holds it."""


class Initiating(GatewayBase):
    """Proposing, cancelling and completing outgoing transfers."""

    def _departure_context(self, transfer_id: str, terms: TransferTerms, now: dt.datetime) -> ActionContext:
        return ActionContext(
            action_id=transfer_id,
            action_date=now,
            party=self.party,
            purpose=terms.purpose,
            transferring_party=self.party,
            acquiring_party=terms.acquiring_party,
        )

    async def propose_transfer(
        self, idem: Idempotency, request: TransferRequest, answer_fits: Callable[[Transfer], None] | None = None
    ) -> Transfer:
        """Reserve the selected units and send a Proposal to the acquiring Party's gateway.

        The initiating side's checks (ownership, authorization, purpose, quantity, and that the partner can take
        the Proposal in) run in the same transaction. A proposal failing them is refused with its response
        code and leaves nothing behind. So is one whose transfer ``answer_fits`` refuses (`GatewayError`): an
        answer the caller could not be given.
        """
        exchange = self._exchange
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                return await self._found(tx, previous)
            if exchange.partners.get(request.acquiring_party) is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_PARTNER,
                    f"no partner gateway is configured for {request.acquiring_party!r}",
                    field="acquiring_account.party",
                )
            text.check_identifier(request.source_account, "source_account", what="source account")
            await self._holding_account(
                tx, request.source_account, "source_account", "units leave only from holding accounts"
            )
            if not request.selections:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT, "select at least one serial range", field="selections"
                )
            text.check_count(request.selections, "selections", text.MAX_BLOCKS_PER_TRANSFER, what="selections")
            purpose = parse_purpose(request.purpose)
            adjustment_method = parse_adjustment_method(request.adjustment_method)
            transfer_id = self.new_id()
            taken = await self._reserve(tx, request.source_account, request.selections, transfer_id)
            terms = TransferTerms(
                transferring_party=self.party,
                acquiring_party=request.acquiring_party,
                source_account=request.source_account,
                acquiring_account=request.acquiring_account,
                cooperative_approach=request.cooperative_approach,
                authorization_id=request.authorization_id,
                purpose=purpose,
                adjustment_method=adjustment_method,
                blocks=tuple(taken),
            )
            try:
                validate_terms(terms)
            except GatewayError as exc:
                if exc.field and exc.field.startswith("blocks"):  # the Proposal's blocks are the selections, in order
                    exc.field = "selections" + exc.field.removeprefix("blocks").removesuffix(".mitigation_type")
                raise
            today = self.clock().date()
            authorization = await self._authorization_on(tx, terms.authorization_id, today)
            rejections = check_authorization(
                authorization,
                terms,
                first_transferred_before=await tx.first_transfer_quantity_used(terms.authorization_id),
                today=today,
            )
            if rejections:
                first = rejections[0]
                field = "purpose" if first.code is ResponseCode.PURPOSE_NOT_ALLOWED else "authorization_id"
                raise GatewayError(first.code, first.message, field=field, blocks=first.blocks)
            untied = [b for b in taken if not b.tied and not b.first_transferred]
            if untied:  # this transfer ties them (ITMOs acquired before blocks carried their tie it does not)
                await self._check_ties_own(tx, terms.authorization_id, "authorization_id", untied)
            parties: dict[str, str] = {}
            for index, block in enumerate(taken):
                if block.tied and block.authorization_id != terms.authorization_id:
                    raise GatewayError(
                        ResponseCode.INVALID_ARGUMENT,
                        f"{block.describe()} is tied to authorization {block.authorization_id!r} of"
                        f" {block.first_transferring_party}; its units move only under it",
                        field=f"selections[{index}]",
                        blocks=[block],
                    )
                if block.tied and block.first_transferring_party != self.party:
                    # Another Party's units: the authorization registered here decides only if it is theirs (a
                    # copy). This Party's own of the same ID would let them go for what theirs never allowed.
                    registered = await self._registered_party(tx, block.authorization_id, parties)
                    if registered and registered != block.first_transferring_party:
                        raise GatewayError(
                            ResponseCode.AUTHORIZATION_MISSING,
                            f"{block.describe()} is tied to {block.first_transferring_party}'s authorization"
                            f" {block.authorization_id!r}, but the authorization of that ID registered here is"
                            f" {registered}'s: its units move only under a copy of {block.first_transferring_party}'s"
                            " authorization, which cannot be registered here under a taken ID",
                            field="authorization_id",
                            blocks=[block],
                        )
            # The Proposal carries the blocks as delivered: tied, and first transferred if this is their first
            # transfer, so that the acquiring side and every onward transfer keep that state.
            context = self._departure_context(transfer_id, terms, self.clock())
            departures = [record_departure(context, b, authorization) for b in taken]
            locks = await tx.locked_periods()
            check_first_transfers_open(locks, (e for d in departures for e in d.entries), "selections")
            delivered = tuple(d.block for d in departures)
            proposal = wire.proposal_to_proto(transfer_id, replace(terms, blocks=delivered))
            try:
                exchange.check_fits(terms.acquiring_party, proposal=proposal)
            except GatewayError as exc:
                exc.field = "selections"  # fewer selections make a smaller Proposal
                raise
            now = self.clock()
            transfer = Transfer(
                transfer_id=transfer_id,
                role=TransferRole.INITIATING,
                state=advance(TransferRole.INITIATING, TransferState.PROPOSED, TransferState.CHECKED),
                terms=terms,
                rejections=(),
                created_at=now,
                updated_at=now,
            )
            if answer_fits is not None:
                answer_fits(transfer)
            await tx.insert_transfer(transfer)
            if authorization is not None:  # always, once check_authorization passed
                await tx.record_proposed_version(transfer_id, authorization.version)
            await exchange.enqueue(tx, terms.acquiring_party, proposal=proposal)
            await self._remember(tx, idem, transfer_id)
        faults.reach("propose-committed")
        return transfer

    async def _reserve(
        self, tx: Transaction, source_account: str, selections: Sequence[BlockSelection], transfer_id: str
    ) -> list[UnitBlock]:
        """Split the held blocks at the selections and reserve the selected parts; return them in request order.

        Selections are grouped by the held block that contains them, and each held block is split once, at
        all its selections: one index lookup per held block, whatever the number of selections.
        """
        by_space: dict[SerialSpace, list[tuple[int, BlockSelection]]] = defaultdict(list)
        for index, selection in enumerate(selections):
            by_space[selection.space].append((index, selection))
        taken: dict[int, UnitBlock] = {}
        frozen_spaces = await tx.frozen_spaces()
        superseded: list[int] = []
        parts: list[NewBlock] = []
        for space, group in by_space.items():
            group.sort(key=lambda item: (item[1].start, item[1].end))
            for (i, a), (j, b) in pairwise(group):
                if b.start <= a.end:
                    raise GatewayError(
                        ResponseCode.INVALID_ARGUMENT,
                        f"selections {min(i, j)} and {max(i, j)} overlap ({a.start}-{a.end} and {b.start}-{b.end})",
                        field=f"selections[{max(i, j)}]",
                    )
            # The blocks each selection meets, all at once. A split below changes only blocks inside the held
            # block it splits, which no later selection of the group meets: these stay true throughout. The
            # block holding a selection starts before it or at its start, so a few suffice, however far the
            # selection reaches.
            found = await tx.guarded_blocks_each(
                space, [(s.start, s.end) for _, s in group], limit=BLOCKS_NAMED_NOT_HELD
            )
            held: StoredBlock | None = None
            pieces: list[tuple[int, BlockSelection]] = []
            for (index, selection), meeting in zip(group, found, strict=True):
                if held is None or selection.start > held.block.end:
                    if held is not None:
                        self._split_held(held, pieces, transfer_id, taken, superseded, parts)
                    held = await self._holding_block(
                        tx, source_account, selection, index, meeting, frozen=space in frozen_spaces
                    )
                    pieces = []
                elif selection.end > held.block.end:
                    raise self._not_held(source_account, selection, index, meeting)
                pieces.append((index, selection))
            if held is not None:
                self._split_held(held, pieces, transfer_id, taken, superseded, parts)
        await tx.set_blocks_status(superseded, BlockStatus.SUPERSEDED)
        await tx.insert_blocks(parts)
        return [taken[i] for i in range(len(selections))]

    @staticmethod
    def _split_held(
        held: StoredBlock,
        pieces: Sequence[tuple[int, BlockSelection]],
        transfer_id: str,
        taken: dict[int, UnitBlock],
        superseded: list[int],
        parts: list[NewBlock],
    ) -> None:
        """Supersede ``held`` by its parts: the selected ones reserved, the gaps between them held. Adds its ID
        to ``superseded`` and the parts to ``parts``, for the caller to store."""
        superseded.append(held.block_id)
        rest = held.block
        for index, selection in pieces:
            split_parts = split(rest, selection.start, selection.end)
            parts.append(NewBlock(split_parts.taken, held.account_id, BlockStatus.RESERVED, transfer_id, held.block_id))
            taken[index] = split_parts.taken
            after = [p for p in split_parts.remainder if p.start > selection.end]
            for before in (p for p in split_parts.remainder if p.end < selection.start):
                parts.append(NewBlock(before, held.account_id, BlockStatus.HELD, parent_id=held.block_id))
            if not after:
                return
            rest = after[0]
        parts.append(NewBlock(rest, held.account_id, BlockStatus.HELD, parent_id=held.block_id))

    async def _holding_block(
        self,
        tx: Transaction,
        account_id: str,
        selection: BlockSelection,
        index: int,
        found: Sequence[StoredBlock],
        *,
        frozen: bool,
    ) -> StoredBlock:
        """The one free block held in ``account_id`` that contains the selected range, among ``found`` (the
        guarded blocks the selection meets); ``frozen`` says whether its space holds frozen units at all
        (`Transaction.frozen_spaces`)."""
        for stored in found:
            if (
                stored.status is BlockStatus.HELD
                and stored.account_id == account_id
                and stored.block.start <= selection.start
                and selection.end <= stored.block.end
            ):
                runs = await tx.frozen_by(selection.space, selection.start, selection.end) if frozen else []
                if runs:
                    raise GatewayError(
                        ResponseCode.BLOCK_FROZEN,
                        f"{stored.block.describe()} is frozen by the discrepancy of reconciliation run"
                        f" {runs[0]}: it moves again once an operator resolves the run (`carbon-gateway"
                        " reconcile resolve RUN --reason TEXT`)",
                        field=f"selections[{index}]",
                        blocks=[stored.block],
                    )
                return stored
        raise self._not_held(account_id, selection, index, found)

    @staticmethod
    def _not_held(account_id: str, selection: BlockSelection, index: int, found: Sequence[StoredBlock]) -> GatewayError:
        probe = UnitBlock(space=selection.space, start=selection.start, end=selection.end, vintage=0)
        spanned = sorted(found, key=lambda s: s.block.start)
        if (
            len(spanned) > 1
            and all(s.status is BlockStatus.HELD and s.account_id == account_id for s in spanned)
            and spanned[0].block.start <= selection.start <= selection.end <= spanned[-1].block.end
            and all(b.block.start == a.block.end + 1 for a, b in pairwise(spanned))
        ):
            # Held and free, but in blocks of their own (that differ in vintage, project or provenance, or that
            # arrived as separate blocks): each block moves as itself, so each is selected on its own.
            parts = ", ".join(
                f"{max(s.block.start, selection.start)}-{min(s.block.end, selection.end)}" for s in spanned
            )
            return GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"{probe.describe()} lies across {len(spanned)} blocks held in account {account_id!r}"
                f" ({'; '.join(s.block.describe() for s in spanned)}): a selection takes units of one block;"
                f" select {parts} as selections of their own",
                field=f"selections[{index}]",
                blocks=[s.block for s in spanned],
            )
        where = "; ".join(
            f"{s.block.describe()} is {s.status.value} in {s.account_id!r}" for s in found[:BLOCKS_NAMED_NOT_HELD]
        )
        return GatewayError(
            ResponseCode.UNIT_NOT_HELD,
            f"{probe.describe()} is not held, free and whole, in account {account_id!r}"
            + (f" ({where})" if where else ""),
            field=f"selections[{index}]",
            blocks=[probe],
        )

    async def cancel_transfer(self, idem: Idempotency, transfer_id: str, reason: str) -> Transfer:
        """Cancel an outgoing transfer before the acquiring side accepts it; the reserved units are released."""
        text.check_text(reason, "reason", what="reason")
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                return await self._found(tx, previous)
            transfer = await tx.get_transfer(transfer_id)
            if transfer is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_TRANSFER,
                    f"transfer {transfer_id[:128]!r} is not known here",
                    field="transfer_id",
                )
            if transfer.role is not TransferRole.INITIATING:
                raise GatewayError(
                    ResponseCode.INVALID_STATE,
                    "only the initiating side cancels a transfer; the acquiring side rejects it",
                    field="transfer_id",
                )
            ended = Rejection(
                ResponseCode.TRANSFER_ENDED,
                text.truncate(f"cancelled by {self.party}'s operator: {reason or 'no reason given'}"),
            )
            try:
                transfer = await self._set_state(tx, transfer, TransferState.CANCELLED, [ended])
            except GatewayError as exc:
                raise GatewayError(
                    exc.code, f"transfer {transfer_id!r} is {transfer.state.name}: {exc.message}", field="transfer_id"
                ) from None
            await self._release(tx, transfer_id)
            await self._send_final(tx, transfer, ended.message)
            await self._remember(tx, idem, transfer_id)
        return transfer

    async def _on_decision(self, tx: Transaction, partner: str, decision: partner_pb2.Decision) -> None:
        """Initiating side: on acceptance debit and complete; on rejection release the reserved units.

        A Decision that crosses this side's own final state changes nothing here: this side arbitrates, and
        tells the partner its state again (DESIGN.md section 4, "Crossing messages").
        """
        transfer = await self._transfer_with(
            tx, partner, decision.transfer_id, TransferRole.INITIATING, "decision.transfer_id"
        )
        if transfer.state is not TransferState.CHECKED:
            if transfer.state in (TransferState.CANCELLED, TransferState.TERMINATED):
                log.info(
                    "%s's decision on %s crossed its %s; telling it again",
                    partner,
                    transfer.transfer_id,
                    transfer.state.name,
                )
                await self._send_final(tx, transfer, f"the transfer was {transfer.state.name} here first")
            return
        if not decision.accepted:
            text.check_count(decision.rejections, "decision.rejections", text.MAX_LIST_ITEMS, what="rejections")
            rejections = [
                wire.rejection_from_proto(r, f"decision.rejections[{i}]") for i, r in enumerate(decision.rejections)
            ] or [Rejection(ResponseCode.TRANSFER_DECLINED, f"{partner} rejected the transfer and gave no reason")]
            await self._reject(tx, transfer, rejections)
            return
        await self._accepted(tx, transfer)

    async def _accepted(self, tx: Transaction, transfer: Transfer) -> None:
        """The partner accepted: complete, unless the transfer has passed its decision deadline here. Then it is
        terminated, as the sweep would have done had it come first: the deadline, not the sweep's timing,
        decides."""
        if overdue(transfer, self.clock(), self.deadlines) is TransferState.TERMINATED:
            log.warning(
                "%s accepted transfer %s past its decision deadline: terminated", transfer.partner, transfer.transfer_id
            )
            await self._terminate_overdue(
                tx, transfer, f"accepted after the decision deadline ({self.deadlines.decision})"
            )
            return
        await self._complete(tx, transfer)

    async def _terminate_overdue(self, tx: Transaction, transfer: Transfer, reason: str = "") -> Transfer:
        """End a transfer no decision reached in time: release its units, record why and tell the partner."""
        reason = reason or f"no decision within {self.deadlines.decision}"
        ended = Rejection(ResponseCode.DECISION_DEADLINE_PASSED, reason)
        transfer = await self._set_state(tx, transfer, TransferState.TERMINATED, [ended])
        await self._release(tx, transfer.transfer_id)
        await self._send_final(tx, transfer, reason)
        return transfer

    async def _reject(self, tx: Transaction, transfer: Transfer, rejections: Sequence[Rejection]) -> None:
        await self._set_state(tx, transfer, TransferState.REJECTED, rejections)
        await self._release(tx, transfer.transfer_id)

    async def _complete(self, tx: Transaction, transfer: Transfer) -> None:
        """Debit the reserved units, record the ledger entries and send the Completion, in one transaction.

        Units frozen by a reconciliation discrepancy since they were reserved do not leave, nor do units whose
        vintage an operator locked since then, if this transfer is their first transfer, nor units proposed by a
        version that let in what the AEF report cannot write (`check_blocks_enter_ledger`): the transfer is cancelled
        instead (the acquiring side adopts the cancellation even after its acceptance)."""
        frozen = await self._frozen_among(tx, transfer.terms.blocks)
        if frozen is not None:
            block, run_id = frozen
            await self._cancel_waiting(
                tx,
                transfer,
                ResponseCode.BLOCK_FROZEN,
                f"{block.describe()} was frozen by reconciliation run {run_id} while the transfer waited",
            )
            log.warning("transfer %s cancelled: its units were frozen by run %s", transfer.transfer_id, run_id)
            return
        try:
            check_blocks_enter_ledger(transfer.terms.blocks)
        except GatewayError as exc:  # proposed by a version before the check: the units stay home
            await self._cancel_waiting(
                tx, transfer, ResponseCode.TRANSFER_ENDED, f"its units cannot enter the ledger: {exc.message}"
            )
            log.warning("transfer %s cancelled: %s", transfer.transfer_id, exc.message)
            return
        authorization = await self._proposed_under(tx, transfer)
        context = self._departure_context(transfer.transfer_id, transfer.terms, self.clock())
        entries = [e for b in transfer.terms.blocks for e in record_departure(context, b, authorization).entries]
        try:
            check_first_transfers_open(await tx.locked_periods(), entries, "blocks")
        except GatewayError as exc:
            await self._cancel_waiting(tx, transfer, exc.code, f"locked while the transfer waited: {exc.message}")
            log.warning("transfer %s cancelled: a vintage it first transfers was locked", transfer.transfer_id)
            return
        transfer = await self._set_state(tx, transfer, TransferState.ACCEPTED)
        await self._debit(tx, transfer)
        await tx.append_ledger(entries)
        transfer = await self._set_state(tx, transfer, TransferState.COMPLETED)
        await self._send_final(tx, transfer, "")

    @staticmethod
    async def _proposed_under(tx: Transaction, transfer: Transfer) -> Authorization | None:
        """The version of its authorization the transfer was proposed under, which decided the Proposal's blocks
        and so decides how the units are booked: an amendment recorded while the transfer waited (even one dated
        that day) changes nothing for it."""
        authorization_id = transfer.terms.authorization_id
        recorded = await tx.proposed_version(transfer.transfer_id)
        if recorded is not None:
            for version in await tx.authorization_versions(authorization_id):
                if version.version == recorded:
                    return version
        # Proposed before the version was recorded with the transfer: the versions recorded by its creation.
        versions = await tx.authorization_versions(authorization_id, recorded_by=transfer.created_at)
        return version_in_force(versions, transfer.created_at.date()) or (versions[0] if versions else None)

    async def _cancel_waiting(self, tx: Transaction, transfer: Transfer, code: ResponseCode, reason: str) -> None:
        """Cancel a transfer the partner accepted but whose units may not leave, recording and telling it why."""
        reason = text.truncate(reason)
        transfer = await self._set_state(tx, transfer, TransferState.CANCELLED, [Rejection(code, reason)])
        await self._release(tx, transfer.transfer_id)
        await self._send_final(tx, transfer, reason)
