"""The ledger summed for a Party's summary: totals per group and per year (DESIGN.md section 3).

Pure: the store sums the ledger (`LedgerTotal`, one SQL aggregate); these functions arrange the sums.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.domain.adjustments import MAX_YEAR, MIN_YEAR, YearTotals
from gateway.domain.ledger import Bucket, bucket_of
from gateway.domain.records import ActionType, Purpose

SECTOR_SEPARATOR = "; "
"""How a group names the sectors of its authorization."""


@dataclass(frozen=True, slots=True)
class LedgerTotal:
    """The quantity of the ledger entries that share every grouping column (see `Transaction.ledger_totals`)."""

    action_type: ActionType
    action_subtype: str
    purpose: Purpose
    vintage: int
    year_of_use: int | None
    action_year: int
    cooperative_approach: str
    authorization_id: str
    first_transferring_party: str
    partner: str  # the acquiring Party of a transfer, the transferring Party of an acquisition, else ""
    quantity: int


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


def _counted(totals: Sequence[LedgerTotal], emissions: Mapping[int, int], party: str) -> dict[int, dict[Bucket, int]]:
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
    return counted


def active_years(totals: Sequence[LedgerTotal], emissions: Mapping[int, int], party: str) -> list[int]:
    """Every year in which the ledger adds, subtracts or acquires, or for which emissions are reported."""
    return sorted(_counted(totals, emissions, party))


def year_totals(
    totals: Sequence[LedgerTotal],
    emissions: Mapping[int, int],
    party: str,
    *,
    within: tuple[int, int] = (MIN_YEAR, MAX_YEAR),
) -> list[YearTotals]:
    """The ledger's totals per calendar year ``within`` the given years: first transfers by vintage, uses
    towards the NDC by year of use, acquisitions by the year they happened, with the reported emissions.

    Years outside are left to the caller (`active_years`): a vintage the ledger accepted but the arithmetic's
    years do not cover never stops the summary.
    """
    counted = _counted(totals, emissions, party)
    first, last = within
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
        if first <= year <= last
    ]
