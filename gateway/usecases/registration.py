"""Registering what the registry of record tells the gateway: accounts, authorizations and issuances."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from gateway.domain import text
from gateway.domain.blocks import UnitBlock
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import (
    ActionContext,
    Event,
    check_definition,
    check_first_transfers_open,
    check_not_in_locked_reports,
    check_not_locked,
    check_room,
    check_vintage,
    primary_purpose,
    record_tie,
)
from gateway.domain.protocol import check_itmo_serials, check_mitigation_type
from gateway.domain.records import Account, Authorization, LedgerEntry
from gateway.store.base import BlockStatus, StoreConflict, StoredBlock, Transaction
from gateway.usecases.base import GatewayBase, Idempotency

T = TypeVar("T")


class Registration(GatewayBase):
    """Accounts, authorizations and issuances."""

    async def _create_once(
        self,
        idem: Idempotency,
        resource_id: str,
        *,
        what: str,
        field: str,
        insert: Callable[[Transaction], Awaitable[None]],
        find: Callable[[Transaction, str], Awaitable[T | None]],
        new_identifier: bool,
    ) -> T:
        """Insert a resource under an idempotency key; a retry returns what the first call created. With
        ``new_identifier``, a resource ID this gateway names afresh follows `gateway.domain.text.check_new_identifier`
        (an ID another Party chose, as an authorization's copy, keeps its own spelling)."""
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is None:
                if new_identifier and await find(tx, resource_id) is None:
                    text.check_new_identifier(resource_id, field, what=f"{what} ID")
                try:
                    async with tx.savepoint():
                        await insert(tx)
                except StoreConflict:
                    raise GatewayError(
                        ResponseCode.INVALID_ARGUMENT, f"{what} {resource_id!r} already exists", field=field
                    ) from None
                await self._remember(tx, idem, resource_id)
                previous = resource_id
            found = await find(tx, previous)
        assert found is not None
        return found

    async def open_account(self, idem: Idempotency, account: Account) -> Account:
        """Open an account at this gateway."""
        return await self._create_once(
            idem,
            account.account_id,
            what="account",
            field="account.account_id",
            insert=lambda tx: tx.insert_account(account),
            find=lambda tx, key: tx.get_account(key),
            new_identifier=True,
        )

    async def register_authorization(self, idem: Idempotency, authorization: Authorization) -> Authorization:
        """Record a Party's authorization, which transfers then name (its first version): this gateway's own
        Party's unless it names another (a copy, to check onward transfers). One naming none is this gateway's
        own until an amendment names another Party (`AuthorizationKeeping._check_party_move`)."""
        check_definition(authorization, "authorization.first_transfer_definition")

        async def insert(tx: Transaction) -> None:
            locks = await tx.locked_periods()
            if authorization.party in ("", self.party):  # in this Party's AEF reports
                check_not_in_locked_reports(locks, authorization.date.year, "authorization.date", "its date")
            check_not_locked(locks, authorization.date.year, "authorization.date", "its date")
            await tx.insert_authorization(authorization)

        return await self._create_once(
            idem,
            authorization.authorization_id,
            what="authorization",
            field="authorization.authorization_id",
            insert=insert,
            find=self._first_version,
            new_identifier=False,  # the authorizing Party chose it; this may be a copy of another Party's
        )

    async def register_issuance(
        self, idem: Idempotency, account_id: str, block: UnitBlock, authorization_id: str = ""
    ) -> StoredBlock:
        """Record units issued into, or held in, one of this gateway's accounts by the registry of record.

        Named with an authorization, the units are tied to it (an ``Authorization`` entry, counted against its
        quantity) and, where it defines their first transfer as the authorisation or the issuance, first
        transferred now (a ``First transfer`` entry).

        Provenance (DESIGN.md section 4): a range enters from the registry of record once, for ever. A range
        that overlaps one registered or received here before is refused, even after its units have left, and
        units of a serial space another Party issues are refused: they reach this gateway only by transfer.
        """
        space = self.nomenclature.canonical(
            block.space.unit_kind, block.space.issuing_registry, block.space.issuance, field="block.space"
        )
        block = replace(block, space=space)
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                found = await tx.get_block(int(previous))
                assert found is not None
                return found
            await self._holding_account(tx, account_id, "account_id", "units are registered into holding accounts")
            if block.first_transferred or block.tied:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    "units enter this gateway untied and not first transferred; name the authorization in"
                    " authorization_id, and only a transfer brings units tied elsewhere",
                    field="block.first_transferred" if block.first_transferred else "block.authorization_id",
                )
            issuer = self.nomenclature.issuer(space)
            if issuer and issuer != self.party:
                raise GatewayError(
                    ResponseCode.PROVENANCE_REFUSED,
                    f"{space.issuing_registry} units are issued by {issuer}'s registry of record: they reach"
                    f" {self.party} only by transfer",
                    field="block.space.issuing_registry",
                    blocks=[block],
                )
            seen = await tx.known_ranges(space, block.start, block.end)
            if seen:
                start, end = seen[0]
                raise GatewayError(
                    ResponseCode.BLOCK_OVERLAP,
                    f"{block.describe()} overlaps serials {start}-{end}, registered or received here before: units"
                    " enter a gateway from its registry of record once, even after they have left",
                    field="block",
                    blocks=[block],
                )
            known = await tx.guarded_blocks(space, block.start, block.end)
            if known:
                raise GatewayError(
                    ResponseCode.BLOCK_OVERLAP,
                    f"{block.describe()} overlaps " + ", ".join(k.block.describe() for k in known[:5]),
                    field="block",
                    blocks=[block, *(k.block for k in known[:5])],
                )
            entries: list[LedgerEntry] = []
            # Units may be held without a mitigation type (domestic units), but one stated must be the AEF's:
            # units enter the ledger only with one, and no operation corrects a held block's.
            if authorization_id or block.mitigation_type:
                check_mitigation_type(block, "block.mitigation_type")
            if authorization_id:
                # Tied units enter the ledger (an Authorization entry): their serials must be ITMO serials.
                check_itmo_serials(block, "block.space.issuance")
                now = self.clock()
                authorization = await self._issuance_authorization(tx, authorization_id, block, now.date())
                await self._check_ties_own(tx, authorization_id, "authorization_id", [block])
                context = ActionContext(
                    action_id=self.new_id(),
                    action_date=now,
                    party=self.party,
                    purpose=primary_purpose(authorization),
                )
                recorded = record_tie(context, block, authorization, Event.REGISTRATION)
                check_first_transfers_open(await tx.locked_periods(), recorded.entries, "block.vintage")
                block = recorded.block
                entries = list(recorded.entries)
                await tx.add_authorization_tie(authorization_id, context.action_id, block.quantity, now)
            await tx.add_known(space, [(block.start, block.end)])
            block_id = await tx.insert_block(block, account_id=account_id, status=BlockStatus.HELD)
            await tx.append_ledger(entries)
            await self._remember(tx, idem, str(block_id))
            found = await tx.get_block(block_id)
        assert found is not None
        return found

    @staticmethod
    async def _first_version(tx: Transaction, authorization_id: str) -> Authorization | None:
        versions = await tx.authorization_versions(authorization_id)
        return versions[0] if versions else None

    async def _issuance_authorization(
        self, tx: Transaction, authorization_id: str, block: UnitBlock, today: dt.date
    ) -> Authorization:
        """The version in force today of the authorization units are issued under, with room for them."""
        authorization = await self._authorization_in_force(tx, authorization_id, today, "authorization_id")
        check_vintage(authorization, block, "block.vintage")
        check_room(
            authorization, await tx.first_transfer_quantity_used(authorization_id), block.quantity, "authorization_id"
        )
        return authorization
