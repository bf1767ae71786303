"""The acquiring side of a transfer: check a Proposal, decide, credit on Completion, adopt a cancellation."""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from carbon_gateway.v1 import partner_pb2
from gateway import wire
from gateway.domain import ranges, text
from gateway.domain.blocks import SerialSpace, UnitBlock, ranges_by_space
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import (
    ActionContext,
    authorizes,
    check_own_history,
    check_recorded_abroad,
    delivered_form,
    record_arrival,
    unreportable,
    untraceable,
    with_own_tie,
)
from gateway.domain.protocol import (
    MAX_REJECTION_BLOCKS,
    Rejection,
    Verdict,
    check_acquisition,
    check_blocks_enter_ledger,
    validate_terms,
)
from gateway.domain.ranges import Range
from gateway.domain.records import Authorization, LedgerEntry, TransferTerms
from gateway.domain.transfer import Transfer, TransferRole, TransferState, overdue
from gateway.store.base import BlockStatus, NewBlock, StoredBlock, Transaction
from gateway.usecases.base import GatewayBase, Idempotency, log

OVERLAPS_SHOWN = 5
"""How many overlapping blocks a rejection names."""


class Acquiring(GatewayBase):
    """Receiving, deciding and crediting incoming transfers."""

    async def _on_proposal(self, tx: Transaction, partner: str, proposal: partner_pb2.Proposal) -> None:
        """Acquiring side: check the proposal, decide by policy, and answer with a Decision."""
        if await tx.get_transfer(proposal.transfer_id) is not None:
            raise GatewayError(
                ResponseCode.INVALID_STATE,
                f"transfer {proposal.transfer_id[:128]!r} is already known here",
                field="transfer_id",
            )
        terms = wire.proposal_from_proto(proposal, self.nomenclature)
        if terms.transferring_party != partner:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"a proposal from {partner} names {terms.transferring_party} as the transferring Party",
                field="proposal.source_account.party",
            )
        # Terms that break a rule of their own (a limit, two overlapping blocks) are refused like unreadable
        # ones: answered by transfer ID, with nothing recorded.
        validate_terms(terms)
        known: list[UnitBlock] = []
        overlapping: list[UnitBlock] = []
        not_abroad: list[UnitBlock] = []
        contradicting: list[tuple[UnitBlock, str]] = []
        delivered: list[UnitBlock] = []
        frozen: list[UnitBlock] = []
        frozen_spaces = await tx.frozen_spaces()
        parties_of: dict[SerialSpace, list[str]] = {}
        parties: dict[str, _Known] = {}
        found = await self._look_up(tx, terms.blocks)
        for block, (guarded, abroad, seen) in zip(terms.blocks, found, strict=True):
            if guarded:
                overlapping.append(block)
                if len(known) < OVERLAPS_SHOWN:
                    known.extend(s.block for s in guarded[: OVERLAPS_SHOWN - len(known)])
            if abroad is not None and not ranges.covers(abroad, block.start, block.end):
                not_abroad.append(block)
                continue
            if block.space in frozen_spaces and await tx.frozen_by(block.space, block.start, block.end):
                frozen.append(block)
            arriving, reason = await self._as_arriving(tx, terms, block, seen, parties_of)
            if reason is None:
                reason = await self._tie_contradicted(tx, arriving, parties)
            if reason is not None:
                contradicting.append((block, reason))
            else:
                delivered.append(arriving)
        rejections = check_acquisition(
            terms,
            self_party=self.party,
            account=await tx.get_account(terms.acquiring_account),
            known_overlapping=known,
            overlapping=overlapping,
            not_abroad=not_abroad,
            contradicting=contradicting,
            frozen_overlapping=frozen,
        )
        rejections += await self._purposes_refused(tx, terms, delivered)
        verdict = Verdict.REJECT if rejections else self.policy.decide(partner, terms)
        if verdict is Verdict.REJECT and not rejections:
            rejections = [Rejection(ResponseCode.TRANSFER_DECLINED, "refused by the acquiring side's decision policy")]
        now = self.clock()
        transfer = Transfer(
            transfer_id=proposal.transfer_id,
            role=TransferRole.ACQUIRING,
            state=TransferState.CHECKED,
            terms=terms,
            rejections=(),
            created_at=now,
            updated_at=now,
        )
        await tx.insert_transfer(transfer)
        if verdict is Verdict.REJECT:
            transfer = await self._set_state(tx, transfer, TransferState.REJECTED, rejections)
            await self._send_decision(tx, transfer, accepted=False, rejections=rejections)
            return
        # Accepted or held: the units are pending here, so that no overlapping proposal can be accepted too.
        # They are stored as they will be credited: tied and first transferred as the Proposal says.
        await tx.insert_blocks(
            [NewBlock(b, terms.acquiring_account, BlockStatus.PENDING, transfer.transfer_id) for b in delivered]
        )
        for space, arrived in ranges_by_space(delivered).items():
            await tx.add_known(space, arrived)
        if verdict is Verdict.ACCEPT:
            transfer = await self._set_state(tx, transfer, TransferState.ACCEPTED)
            await self._send_decision(tx, transfer, accepted=True, rejections=())

    async def reject_unreadable_proposal(
        self, tx: Transaction, partner: str, transfer_id: str, refusal: GatewayError
    ) -> None:
        """Answer a proposal that could not be taken up with a rejection by transfer ID, recording nothing.

        The initiating side must hear an answer, or its units would stay reserved until its deadline.
        """
        where = f" ({refusal.field})" if refusal.field else ""
        rejection = Rejection(refusal.code, text.truncate(f"{refusal.message}{where}"), refusal.blocks[:10])
        decision = partner_pb2.Decision(
            transfer_id=transfer_id, accepted=False, rejections=[wire.rejection_to_proto(rejection)]
        )
        await self._exchange.enqueue(tx, partner, decision=decision)

    async def decide_held_transfer(self, idem: Idempotency, transfer_id: str, accept: bool, reason: str) -> Transfer:
        """An acquiring operator's decision on a proposal that the policy held for a person."""
        text.check_text(reason, "reason", what="reason")
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                return await self._found(tx, previous)
            transfer = await tx.get_transfer(transfer_id)
            if transfer is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_TRANSFER,
                    f"no incoming transfer {transfer_id[:128]!r} is known here",
                    field="transfer_id",
                )
            if transfer.role is not TransferRole.ACQUIRING:
                raise GatewayError(
                    ResponseCode.INVALID_STATE,
                    "only the acquiring side decides on a transfer; the initiating side cancels it",
                    field="transfer_id",
                )
            if transfer.state is not TransferState.CHECKED:
                raise GatewayError(
                    ResponseCode.INVALID_STATE,
                    f"transfer {transfer_id!r} is {transfer.state.name}; only a held proposal (CHECKED) is decided",
                    field="transfer_id",
                )
            if accept and overdue(transfer, self.clock(), self.deadlines) is TransferState.REJECTED:
                raise GatewayError(
                    ResponseCode.DECISION_DEADLINE_PASSED,
                    f"transfer {transfer_id!r} was held longer than {self.deadlines.hold}, the hold deadline: it is"
                    " rejected, and can no longer be accepted",
                    field="accept",
                )
            frozen = await self._frozen_among(tx, transfer.terms.blocks) if accept else None
            if frozen is not None:
                raise GatewayError(
                    ResponseCode.BLOCK_FROZEN,
                    f"{frozen[0].describe()} is frozen by the discrepancy of reconciliation run {frozen[1]}: resolve"
                    " the run first, or reject the proposal",
                    field="accept",
                    blocks=[frozen[0]],
                )
            if accept:
                await self._check_held_before(tx, transfer)
                transfer = await self._set_state(tx, transfer, TransferState.ACCEPTED)
                await self._send_decision(tx, transfer, accepted=True, rejections=())
            else:
                rejection = Rejection(ResponseCode.TRANSFER_DECLINED, reason or "rejected by the acquiring operator")
                transfer = await self._set_state(tx, transfer, TransferState.REJECTED, [rejection])
                await self._drop_pending(tx, transfer_id)
                await self._send_decision(tx, transfer, accepted=False, rejections=[rejection])
            await self._remember(tx, idem, transfer_id)
        return transfer

    async def _check_held_before(self, tx: Transaction, transfer: Transfer) -> None:
        """Refuse to accept a held proposal whose units the AEF report could not write once credited, or that
        contradict this gateway's entries of the same units (`_contradiction`) or authorizations
        (`_tie_contradicted`). The doors refuse such proposals now; one held by an earlier release, before a
        door checked it, can only be rejected."""
        try:
            check_blocks_enter_ledger(transfer.terms.blocks)
        except GatewayError as exc:
            raise GatewayError(
                exc.code,
                f"{exc.message}. The proposal was held before this was checked: reject it",
                field="accept",
                blocks=exc.blocks,
            ) from None
        parties_of: dict[SerialSpace, list[str]] = {}
        parties: dict[str, _Known] = {}
        for pending in await tx.blocks_of_transfer(transfer.transfer_id, BlockStatus.PENDING):
            block = pending.block
            why = unreportable(block)
            if why is None:
                [known] = await tx.known_ranges_each(block.space, [(block.start, block.end)])
                why = self._contradiction(block, *await self._recorded(tx, block, known, parties_of))
            if why is None:
                why = await self._tie_contradicted(tx, block, parties)
            if why is not None:
                raise GatewayError(
                    ResponseCode.PROVENANCE_REFUSED,
                    f"{why}. The proposal was held before this was checked: reject it",
                    field="accept",
                    blocks=[pending.block],
                )

    async def _on_completion(self, tx: Transaction, partner: str, completion: partner_pb2.Completion) -> None:
        """Acquiring side: the initiating side has debited; credit the pending units and record the acquisition."""
        transfer = await self._transfer_with(
            tx, partner, completion.transfer_id, TransferRole.ACQUIRING, "completion.transfer_id"
        )
        if transfer.state is TransferState.COMPLETED:
            return
        if transfer.state is not TransferState.ACCEPTED:
            raise GatewayError(
                ResponseCode.INVALID_STATE, f"transfer {transfer.transfer_id!r} is {transfer.state.name}, not ACCEPTED"
            )
        await self._acquire(tx, transfer)

    async def _look_up(
        self, tx: Transaction, blocks: Sequence[UnitBlock]
    ) -> list[tuple[list[StoredBlock], list[Range] | None, list[Range]]]:
        """For each of ``blocks``: the guarded blocks here that overlap it (the first `OVERLAPS_SHOWN`), the
        abroad ranges it meets if this gateway issued it (None otherwise), and the known ranges it meets. One
        query each per serial space, not per block: a Proposal may carry a thousand blocks."""
        found: list[tuple[list[StoredBlock], list[Range] | None, list[Range]]] = [([], None, [])] * len(blocks)
        for space, indices in _indices_by_space(blocks).items():
            wanted = [(blocks[i].start, blocks[i].end) for i in indices]
            guarded = await tx.guarded_blocks_each(space, wanted, limit=OVERLAPS_SHOWN)
            own = self.nomenclature.issuer(space) == self.party
            abroad = await tx.abroad_ranges_each(space, wanted) if own else [None] * len(wanted)
            seen = await tx.known_ranges_each(space, wanted)
            for at, i in enumerate(indices):
                found[i] = (guarded[at], abroad[at], seen[at])
        return found

    async def _purposes_refused(
        self, tx: Transaction, terms: TransferTerms, delivered: Sequence[UnitBlock]
    ) -> list[Rejection]:
        """Units tied to this Party's own authorization come back only for a purpose it authorizes: a partner's
        copy of the authorization, or its mistake, cannot make them travel for another. Any version up to today
        counts: units first transferred under a version keep what it authorized after an amendment."""
        refused: dict[str, list[UnitBlock]] = {}
        found: dict[str, list[Authorization]] = {}
        today = self.clock().date()
        for block in delivered:
            if block.first_transferring_party != self.party or not block.authorization_id:
                continue
            if block.authorization_id not in found:
                versions = await tx.authorization_versions(block.authorization_id)
                found[block.authorization_id] = [v for v in versions if v.date <= today] or versions[:1]
            versions = found[block.authorization_id]
            if versions and not any(authorizes(v, terms.purpose) for v in versions):
                refused.setdefault(block.authorization_id, []).append(block)
        rejections = []
        for authorization_id, blocks in refused.items():
            allowed = ", ".join(sorted({p.value for v in found[authorization_id] for p in v.purposes}))
            rejections.append(
                Rejection(
                    ResponseCode.PURPOSE_NOT_ALLOWED,
                    f"{len(blocks)} blocks are tied to {self.party}'s authorization {authorization_id!r} ({allowed}),"
                    f" which does not authorize purpose {terms.purpose.value!r}",
                    tuple(blocks[:MAX_REJECTION_BLOCKS]),
                )
            )
        return rejections

    async def _tie_contradicted(self, tx: Transaction, block: UnitBlock, known: dict[str, _Known]) -> str | None:
        """Why units tied to an authorization known here are refused:
        - the authorization is registered here as another Party's than their first transferring Party. Else it,
          not the units' real authorization, would decide what they may go for. An authorization is the Party's
          its versions name; one naming none is this Party's own once units of this Party's are tied to it
          (before that it may be a copy registered without its Party, by an earlier release);
        - the units name another cooperative approach than the one the authorization is registered under, or,
          unregistered, than the ones the ledger records it under: the approach is part of the ITMO's identity
          (the AEF's ITMO ID), and one authorization belongs to one approach.
        ``known`` keeps each authorization's Party ("" where unknown) and approaches (none where unknown)."""
        authorization_id = block.authorization_id
        if not authorization_id:
            return None
        if authorization_id not in known:
            versions = await tx.authorization_versions(authorization_id)
            named = await self._party_of_versions(tx, authorization_id, versions)
            if versions:
                known[authorization_id] = _Known(named, (versions[-1].cooperative_approach,), "registered")
            else:
                known[authorization_id] = _Known(named, tuple(await tx.recorded_approaches(authorization_id)), "booked")
        party, approaches, how = known[authorization_id]
        if approaches and block.cooperative_approach not in approaches:
            return (
                f"{block.describe()} is tied to authorization {authorization_id!r} of cooperative approach"
                f" {block.cooperative_approach}, but that authorization is {how} here under {', '.join(approaches)}"
            )
        if not party or party == block.first_transferring_party:
            return None
        return (
            f"{block.describe()} is tied to authorization {authorization_id!r} as first transferred by"
            f" {block.first_transferring_party}, but that authorization is registered here as {party}'s"
        )

    async def _as_arriving(
        self,
        tx: Transaction,
        terms: TransferTerms,
        block: UnitBlock,
        known: Sequence[Range],
        parties_of: dict[SerialSpace, list[str]],
    ) -> tuple[UnitBlock, str | None]:
        """The block as it is held here once credited, or why it is refused.

        Units this gateway tied before take their tie and first-transfer state from its own records
        (`gateway.domain.ledger.check_own_history`): a block that contradicts them is refused, one sent without
        a tie (by a version before ties) takes them from the records. Units it recorded before as another
        Party's ITMOs keep the tie and attributes recorded (`gateway.domain.ledger.check_recorded_abroad`).
        Units never held here have no such records: ``known`` (the known ranges that meet the block) is empty.
        """
        history, abroad = await self._recorded(tx, block, known, parties_of)
        if history and not block.tied:
            block = with_own_tie(block, history)
        else:
            block = delivered_form(block, terms.transferring_party, terms.authorization_id, terms.cooperative_approach)
        return block, self._contradiction(block, history, abroad)

    async def _recorded(
        self,
        tx: Transaction,
        block: UnitBlock,
        known: Sequence[Range],
        parties_of: dict[SerialSpace, list[str]],
    ) -> tuple[list[LedgerEntry], list[LedgerEntry]]:
        """This gateway's ledger entries of ``block``'s units: those it recorded as their first transferring Party,
        and those it recorded of them as another Party's ITMOs. ``known`` are the known ranges that meet the
        block (none: no entries); ``parties_of`` keeps `Transaction.ledger_parties` per space for the caller."""
        history: list[LedgerEntry] = []
        abroad: list[LedgerEntry] = []
        if known:
            parties = parties_of.get(block.space)
            if parties is None:
                parties = parties_of[block.space] = await tx.ledger_parties(block.space)
            # Every entry lies inside one known range: none starts before the first that meets the block.
            for party in parties:
                entries = await tx.ledger_of_units(party, block.space, block.start, block.end, since=known[0][0])
                (history if party == self.party else abroad).extend(entries)
        return history, abroad

    def _contradiction(
        self, block: UnitBlock, history: Sequence[LedgerEntry], abroad: Sequence[LedgerEntry]
    ) -> str | None:
        """Why ``block``, as it would be credited, contradicts this gateway's entries of its units, or None."""
        if history and abroad:
            return f"{block.describe()} spans units recorded here as ITMOs of different Parties: send them apart"
        return (
            untraceable(block) or check_own_history(block, self.party, history) or check_recorded_abroad(block, abroad)
        )

    async def _acquire(self, tx: Transaction, transfer: Transfer) -> None:
        credited = await self._credit(tx, transfer)
        terms = transfer.terms
        context = ActionContext(
            action_id=transfer.transfer_id,
            action_date=self.clock(),
            party=self.party,
            purpose=terms.purpose,
            transferring_party=terms.transferring_party,
            acquiring_party=self.party,
        )
        await tx.append_ledger([record_arrival(context, b.block) for b in credited])
        await self._set_state(tx, transfer, TransferState.COMPLETED)

    async def _on_cancel(self, tx: Transaction, partner: str, cancel: partner_pb2.Cancel) -> None:
        """Acquiring side: the initiating side cancelled or terminated; adopt its state and drop the pending units.

        Its state wins even over a rejection this side sent while the messages crossed.
        """
        transfer = await self._transfer_with(
            tx, partner, cancel.transfer_id, TransferRole.ACQUIRING, "cancel.transfer_id"
        )
        ended = TransferState.TERMINATED if cancel.terminated else TransferState.CANCELLED
        try:
            code = ResponseCode(cancel.code)
        except ValueError:  # a code of a later version
            code = ResponseCode.TRANSFER_ENDED
        if code is ResponseCode.OK:  # a version before the Cancel carried its code
            code = ResponseCode.TRANSFER_ENDED
        # Another Party's free text, kept as this gateway keeps its own: escaped, composed, without white space
        # around it, within the length of a message (read no further than a few times that).
        reason = unicodedata.normalize("NFC", cancel.reason[: 4 * text.MAX_TEXT_LENGTH]).strip()
        why = text.escaped(f"{partner}: {reason or 'no reason given'}").rstrip()
        await self._adopt(tx, transfer, ended, Rejection(code, why))

    async def _adopt(self, tx: Transaction, transfer: Transfer, ended: TransferState, why: Rejection) -> None:
        """Take the initiating side's final state, recording ``why`` after whatever this side recorded before
        (its own rejection, when the messages crossed), and drop the pending units.

        An end adopted from a status report (`reported_end`) says only that the transfer ended: the initiating
        side's Cancel, arriving after it, puts its code and reason in that entry's place."""
        if transfer.state is ended:
            if transfer.rejections and transfer.rejections[-1] == reported_end(transfer.partner, ended) != why:
                await tx.update_transfer(
                    replace(transfer, rejections=(*transfer.rejections[:-1], why), updated_at=self.clock())
                )
            return
        if transfer.state is TransferState.COMPLETED:
            log.error(
                "%s reports transfer %s %s, but it is COMPLETED here",
                transfer.partner,
                transfer.transfer_id,
                ended.name,
            )
            raise GatewayError(
                ResponseCode.INVALID_STATE,
                f"transfer {transfer.transfer_id!r} is COMPLETED here; it cannot become {ended.name}",
            )
        await self._set_state(tx, transfer, ended, [*transfer.rejections, why])
        await self._drop_pending(tx, transfer.transfer_id)


class _Known(NamedTuple):
    """What this gateway knows of an authorization units arrive tied to (`Acquiring._tie_contradicted`)."""

    party: str
    approaches: tuple[str, ...]
    how: str  # "registered" (its versions) or "booked" (the ledger's entries)


def reported_end(partner: str, ended: TransferState) -> Rejection:
    """What the acquiring side records when it adopts ``ended`` from ``partner``'s status report: the report
    carries no reason."""
    return Rejection(ResponseCode.TRANSFER_ENDED, f"{partner} reports the transfer {ended.name}")


def _indices_by_space(blocks: Sequence[UnitBlock]) -> dict[SerialSpace, list[int]]:
    """The positions of ``blocks``, by serial space."""
    indices: dict[SerialSpace, list[int]] = defaultdict(list)
    for i, block in enumerate(blocks):
        indices[block.space].append(i)
    return indices
