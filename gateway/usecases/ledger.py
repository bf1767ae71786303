"""The adjustment ledger's books: reported emissions, locked periods, and the summary a Party reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.domain import text
from gateway.domain.adjustments import StructuredSummary, structured_summary
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import (
    AUTHORISATION_YEAR_CONVENTION,
    LockedPeriod,
    check_ledger_year,
    check_lock,
    check_not_locked,
    still_unresolved,
)
from gateway.domain.records import LedgerEntry
from gateway.domain.summary import SECTOR_SEPARATOR, SummaryGroup, active_years, summary_groups, year_totals
from gateway.store.base import StoreConflict
from gateway.usecases.base import GatewayBase, Idempotency


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """The summary RPC's answer: per group, per year (para 23), what is unresolved, and what is locked."""

    groups: tuple[SummaryGroup, ...]
    structured: StructuredSummary | None
    unresolved: tuple[LedgerEntry, ...]
    locked: tuple[LockedPeriod, ...]
    convention: str = AUTHORISATION_YEAR_CONVENTION
    outside_period: tuple[int, ...] = field(default=())
    """Years with ledger activity outside the NDC period: in the groups, in no structured-summary row."""


class LedgerKeeping(GatewayBase):
    """Reported emissions, finality and the adjustment summary."""

    async def set_reported_emissions(self, idem: Idempotency, year: int, quantity: int) -> tuple[int, int]:
        """Record the Party's reported (net) emissions of ``year`` in t CO2e, negative for a net sink; a later
        call for the year replaces them unless the year is locked. A retry returns what the first call set."""
        check_ledger_year(year, "year", "year")
        if not -text.MAX_INT64 <= quantity <= text.MAX_INT64:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"emissions {quantity} are not in -(2^63 - 1)..2^63 - 1",
                field="quantity",
            )
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is None:
                check_not_locked(await tx.locked_periods(), year, "year", "the emissions' year")
                await tx.set_reported_emissions(year, quantity, self.clock())
                previous = f"{year}:{quantity}"
                await self._remember(tx, idem, previous)
        first_year, first_quantity = previous.split(":")
        return int(first_year), int(first_quantity)

    async def lock_period(self, idem: Idempotency, first_year: int, last_year: int, reason: str) -> LockedPeriod:
        """Make a past period final: actions dated in it are refused from now on with `PERIOD_LOCKED`."""
        text.check_saying(reason, "reason", what="reason", why="the period is final")
        now = self.clock()
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is None:
                check_lock(first_year, last_year, now.date())
                for lock in await tx.locked_periods():
                    if lock.first_year <= last_year and first_year <= lock.last_year:
                        raise GatewayError(
                            ResponseCode.INVALID_ARGUMENT,
                            f"{first_year}-{last_year} overlaps {lock.first_year}-{lock.last_year}, locked already",
                            field="first_year",
                        )
                try:
                    await tx.insert_locked_period(LockedPeriod(first_year, last_year, now, reason))
                except StoreConflict:
                    raise GatewayError(
                        ResponseCode.INVALID_ARGUMENT, f"{first_year}-{last_year} is locked already", field="first_year"
                    ) from None
                await self._remember(tx, idem, f"{first_year}-{last_year}")
                previous = f"{first_year}-{last_year}"
            first, last = (int(y) for y in previous.split("-"))
            return next(
                lock for lock in await tx.locked_periods() if (lock.first_year, lock.last_year) == (first, last)
            )

    async def ledger_summary(self) -> LedgerSummary:
        """Per cooperative approach, sector(s), partner and vintage what was registered under an authorization,
        first transferred, acquired, used, cancelled and adjusted; per year of the NDC period the para 23 rows,
        under the configured method."""
        async with self.store.read() as tx:
            totals = await tx.ledger_totals()
            emissions = await tx.reported_emissions()
            locks = await tx.locked_periods()
            unresolved = await tx.ledger_unresolved(self.party)
            later = [
                found
                for e in unresolved
                for found in await tx.first_transfers_overlapping(self.party, e.block.space, e.block.start, e.block.end)
            ]
            unresolved = still_unresolved(unresolved, later)
            sectors: dict[str, str] = {}
            for authorization_id in sorted({t.authorization_id for t in totals}):
                found = await tx.get_authorization(authorization_id)
                sectors[authorization_id] = SECTOR_SEPARATOR.join(found.sectors) if found else ""
        groups = summary_groups(totals, sectors, self.party)
        settings = self.ledger_options.adjustments
        if settings is None:
            return LedgerSummary(groups, None, tuple(unresolved), tuple(locks))
        period = (settings.first_year, settings.last_year)
        inside = year_totals(totals, emissions, self.party, within=period)
        outside = tuple(y for y in active_years(totals, emissions, self.party) if not period[0] <= y <= period[1])
        return LedgerSummary(
            groups, structured_summary(settings, inside), tuple(unresolved), tuple(locks), outside_period=outside
        )
