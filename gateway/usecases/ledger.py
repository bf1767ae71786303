"""The adjustment ledger's books: reported emissions, locked periods, and the summary a Party reports."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.domain import text
from gateway.domain.adjustments import StructuredSummary, YearTotals, structured_summary
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import (
    AUTHORISATION_YEAR_CONVENTION,
    Bucket,
    LockedPeriod,
    bucket_of,
    check_lock,
    check_not_locked,
    still_unresolved,
)
from gateway.domain.records import ActionType, LedgerEntry
from gateway.store.base import LedgerTotal, StoreConflict
from gateway.usecases.base import GatewayBase, Idempotency

SECTOR_SEPARATOR = "; "


@dataclass(slots=True)
class SummaryGroup:
    """What passed through the ledger for one cooperative approach, sector(s), partner Party and vintage."""

    cooperative_approach: str
    sectors: str
    partner: str
    vintage: int
    authorized: int = 0
    first_transferred: int = 0
    acquired: int = 0
    used: int = 0
    cancelled: int = 0
    transferred: int = 0
    used_ndc: int = 0

    @property
    def adjusted(self) -> int:
        """First transferred minus used towards the NDC: what the group moves the emissions balance by."""
        return self.first_transferred - self.used_ndc


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
        """Record the Party's reported emissions of ``year`` (t CO2e); a later call for the year replaces it
        unless the year is locked."""
        text.check_year(year, "year", what="year")
        if not 0 <= quantity <= text.MAX_INT64:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, f"emissions {quantity} are not in 0..2^63 - 1", field="quantity"
            )
        async with self.store.transaction() as tx:
            if await self._replay(tx, idem) is None:
                check_not_locked(await tx.locked_periods(), year, "year", "the emissions' year")
                await tx.set_reported_emissions(year, quantity, self.clock())
                await self._remember(tx, idem, f"{year}:{quantity}")
            emissions = await tx.reported_emissions()
        return year, emissions.get(year, quantity)

    async def lock_period(self, idem: Idempotency, first_year: int, last_year: int, reason: str) -> LockedPeriod:
        """Make a past period final: actions dated in it are refused from now on with `PERIOD_LOCKED`."""
        text.check_year(first_year, "first_year", what="first year")
        text.check_year(last_year, "last_year", what="last year")
        text.check_text(reason, "reason", what="reason")
        if not reason:
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, "say why the period is final", field="reason")
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
        """Per cooperative approach, sector(s), partner and vintage what was tied, first transferred, acquired,
        used, cancelled and adjusted; per year of the NDC period the para 23 rows, under the configured method."""
        async with self.store.read() as tx:
            totals = await tx.ledger_totals()
            emissions = await tx.reported_emissions()
            locks = await tx.locked_periods()
            unresolved = await tx.ledger_unresolved(self.party)
            if unresolved:
                unresolved = still_unresolved(unresolved, await tx.ledger_first_transfers(self.party))
            sectors: dict[str, str] = {}
            for authorization_id in sorted({t.authorization_id for t in totals}):
                found = await tx.get_authorization(authorization_id)
                sectors[authorization_id] = SECTOR_SEPARATOR.join(found.sectors) if found else ""
        groups = summary_groups(totals, sectors, self.party)
        settings = self.ledger_options.adjustments
        if settings is None:
            return LedgerSummary(groups, None, tuple(unresolved), tuple(locks))
        years = year_totals(totals, emissions, self.party)
        inside = [t for t in years if settings.first_year <= t.year <= settings.last_year]
        outside = tuple(t.year for t in years if not settings.first_year <= t.year <= settings.last_year)
        return LedgerSummary(
            groups, structured_summary(settings, inside), tuple(unresolved), tuple(locks), outside_period=outside
        )


def summary_groups(totals: Sequence[LedgerTotal], sectors: dict[str, str], party: str) -> tuple[SummaryGroup, ...]:
    """The ledger's totals per cooperative approach, sector(s), partner and vintage."""
    groups: dict[tuple[str, str, str, int], SummaryGroup] = {}
    for t in totals:
        key = (t.cooperative_approach, sectors.get(t.authorization_id, ""), t.partner, t.vintage)
        group = groups.get(key)
        if group is None:
            group = groups[key] = SummaryGroup(*key)
        if t.action_type is ActionType.AUTHORIZATION:
            group.authorized += t.quantity
        elif t.action_type is ActionType.FIRST_TRANSFER:
            if t.first_transferring_party == party:
                group.first_transferred += t.quantity
        elif t.action_type is ActionType.TRANSFER:
            group.transferred += t.quantity
        elif t.action_type is ActionType.ACQUISITION:
            group.acquired += t.quantity
        elif t.action_type is ActionType.USE:
            group.used += t.quantity
            if t.year_of_use is not None:
                group.used_ndc += t.quantity
        else:
            group.cancelled += t.quantity
    return tuple(groups[k] for k in sorted(groups))


def year_totals(totals: Sequence[LedgerTotal], emissions: dict[int, int], party: str) -> list[YearTotals]:
    """The ledger's totals per calendar year: first transfers by vintage, uses towards the NDC by year of use,
    acquisitions by the year they happened, with the reported emissions."""
    counted: dict[int, dict[Bucket, int]] = defaultdict(lambda: defaultdict(int))
    for t in totals:
        bucket = bucket_of(t.action_type, t.action_subtype, t.purpose, t.year_of_use)
        if bucket in (Bucket.FIRST_TRANSFERRED_NDC, Bucket.FIRST_TRANSFERRED_OIMP):
            if t.first_transferring_party == party:
                counted[t.vintage][bucket] += t.quantity
        elif bucket is Bucket.USED_NDC:
            assert t.year_of_use is not None
            counted[t.year_of_use][bucket] += t.quantity
        elif bucket is Bucket.ACQUIRED:
            counted[t.action_year][bucket] += t.quantity
    for year in emissions:
        counted[year]
    return [
        YearTotals(
            year=year,
            first_transferred_ndc=counted[year][Bucket.FIRST_TRANSFERRED_NDC],
            first_transferred_oimp_only=counted[year][Bucket.FIRST_TRANSFERRED_OIMP],
            used_ndc=counted[year][Bucket.USED_NDC],
            acquired=counted[year][Bucket.ACQUIRED],
            reported_emissions=emissions.get(year),
        )
        for year in sorted(counted)
    ]
