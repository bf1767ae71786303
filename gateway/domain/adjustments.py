"""Corresponding-adjustment arithmetic for a Party with a GHG NDC (DESIGN.md section 3).

Pure: standard library and the domain's records and errors only, no I/O. The ledger counts what happened in each
calendar year (`YearTotals`); this module turns those counts into the per-year structured summary that the Party
reports, under the method it chose for the NDC period (`AdjustmentSettings`). Quantities are whole t CO2e;
everything derived from them is an exact `fractions.Fraction`, never a float.

Sources
-------
Decision 2/CMA.3 (FCCC/PA/CMA/2021/10/Add.1), annex. The primary document could not be retrieved from the
reference stores available when this module was written. The quotes below are the decision's words as reproduced,
with the ellipses shown, in the UNDP national carbon registry's audit of its own Article 6.2 code
(github.com/undp/undp-national-carbon-registry, docs/a6/compliance-remediation-plan.md, findings F1 and F2).
Check them against the primary text before a report relies on them.

- Para 7(a)(i), single-year NDC, trajectory: "Providing an indicative multi-year emissions trajectory … and
  annually applying corresponding adjustments for the total amount of ITMOs first transferred and used for each
  year …".
- Para 7(a)(ii), single-year NDC, averaging: "Calculating the average annual amount of ITMOs first transferred and
  used over the NDC implementation period, by taking the cumulative amount of ITMOs and dividing by the number of
  elapsed years … and applying corresponding adjustments equal to this average amount in the NDC year".
- Para 7(b), multi-year NDC: "… annually applying corresponding adjustments … and cumulatively at the end of the
  NDC implementation period."
- Para 8(a): "Adding the quantity of ITMOs authorized and first transferred, for the calendar year in which the
  mitigation outcomes occurred …"; para 8(b): "Subtracting the quantity of ITMOs used … for the calendar year in
  which the mitigation outcomes are used towards the implementation and achievement of the NDC". The same audit
  notes that the text "defines exactly two terms … and no `acquired` term".
- Para 23 (the structured summary): its text could not be retrieved. The columns of `SummaryRow` follow DESIGN.md
  section 3, which lists them after para 23 and Table 4 of the structured summary of the biennial transparency
  report.

Switzerland–Ghana: Cooperation Agreement of 23 November 2020 on the implementation of the Paris Agreement
(Swiss Classified Compilation, SR 0.814.012.136.3), Art. 10(2), French text as published there: a Party with a
single-year NDC adds or subtracts "la somme de tous les résultats d'atténuation faisant l'objet d'un premier
transfert ou utilisés pour atteindre la CND sur la période respective de mise en œuvre de la CDN, divisé par le
nombre d'années de cette période de mise en œuvre" (German text: "durch die Anzahl Jahre dieses
Umsetzungszeitraums dividiert"). The agreement predates decision 2/CMA.3 (Glasgow, November 2021).

Interpretations
---------------
Each is cited in the code as I1 … I9.

- I1 Signs (para 8). ``added[y]`` is every ITMO first transferred whose vintage is y, authorized for NDC use or
  for other international mitigation purposes (OIMP) only: para 8(a) adds "ITMOs authorized and first
  transferred" whatever the purpose. ``subtracted[y]`` is every ITMO used towards the NDC whose year of use is y
  (para 8(b)). Acquisitions and onward transfers appear in neither term: an acquisition is reported, and it is the
  use that is subtracted. The formula ``first transferred − acquired + used``, which one registry computes and
  its own audit found wrong, is not used.
- I2 `YearTotals` carries quantities the ledger has already classified: the first-transfer year follows each
  authorization's definition, a cancellation is a first transfer only where the authorization defines first
  transfer as use or cancellation, and units whose definition is unresolved are in no row (DESIGN.md section 3).
  This module does not reclassify.
- I3 Trajectory (para 7(a)(i)): the adjustment applied for year y is ``added[y] − subtracted[y]``, every year. The
  indicative trajectory is reported beside each row (`SummaryRow.trajectory_emissions`) and is never part of the
  arithmetic. It is optional here: the Party indicates it in its initial report, which the gateway may not hold.
- I4 Averaging (para 7(a)(ii)): the annual averaging figure for year y is the cumulative ``added − subtracted``
  from the first year of the period to y, divided by the divisor (I5). It is reported in every row
  (`SummaryRow.annual_adjustment_averaging`), but an adjustment is applied only "in the NDC year", the target year,
  which is `AdjustmentSettings.last_year`: there ``total_adjustment`` is that year's averaging figure, and in every
  earlier year it is zero, so that the emissions balance of an earlier year is its reported emissions and the
  averaging figure beside it is indicative only.
- I5 Divisors. Elapsed years for year y are ``y − first_year + 1``, the years whose totals are in the cumulative
  sum, y included. Years of the period are ``last_year − first_year + 1``, in every row. In the target year the two
  are equal, so the two readings apply the same adjustment there and differ only in the averaging figures of
  earlier years, which interim reports carry. The divisor stays an explicit setting and every summary names it.
- I6 Multi-year (para 7(b)): the adjustment applied for year y is ``added[y] − subtracted[y]`` every year, and the
  cumulative adjustment at the end of the period is their sum over the period
  (`StructuredSummary.cumulative_adjustment`, equal to the last row's running total). It is the same adjustment
  applied cumulatively, not a second one on top of the annual ones. Computed before the period ends, it is the sum
  so far: this module does not know today's date.
- I7 Years. A year of the period with no `YearTotals` had no first transfer and no use, and its emissions are not
  reported yet. Totals for a year outside the period are refused with an error naming the year, never dropped:
  they belong to another period's summary, and a caller that sends them has mixed periods up. A year given twice
  is refused.
- I8 ITMO quantities are whole t CO2e, at least zero. Reported emissions are whole t CO2e and may be negative: a
  Party whose removals exceed its emissions (a net sink) reports a negative net figure.
- I9 Exactness: every derived quantity is a `Fraction`. `format_quantity` prints the exact decimal where one exists
  and otherwise a value rounded half-even to three decimals, marked (`ROUNDED_MARKER`); such a value is never a
  tie, so the half-even rule never has to break one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import AdjustmentMethod

MIN_YEAR = 1990
"""Earliest calendar year accepted in settings and totals."""

MAX_YEAR = 2100
"""Latest calendar year accepted in settings and totals."""

ROUNDED_DECIMALS = 3
"""Decimals kept when a quantity has no finite decimal expansion (I9)."""

ROUNDED_MARKER = "~"
"""Appended by `format_quantity` to a value that was rounded, e.g. ``"10.333~"`` for 31/3 (I9)."""


class AveragingDivisor(enum.StrEnum):
    """What the cumulative amount is divided by under the averaging method (I5)."""

    ELAPSED_YEARS = "elapsed years"
    """Decision 2/CMA.3, annex, para 7(a)(ii): years of the period elapsed up to and including the row's year."""

    PERIOD_YEARS = "years of the NDC period"
    """The Switzerland–Ghana cooperation agreement, Art. 10(2): all years of the NDC implementation period."""


def _refuse(message: str, field: str) -> GatewayError:
    return GatewayError(ResponseCode.INVALID_ARGUMENT, message, field=field)


def _check_whole(value: object, field: str) -> int:
    # bool is an int subclass; True t CO2e is a caller's mistake, not a quantity.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(f"{field} must be a whole number, got {value!r}", field)
    return value


def _check_year(value: object, field: str) -> int:
    year = _check_whole(value, field)
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise _refuse(f"{field} {year} lies outside {MIN_YEAR}..{MAX_YEAR}", field)
    return year


@dataclass(frozen=True, slots=True)
class AdjustmentSettings:
    """The corresponding-adjustment method a Party chose for one NDC implementation period.

    Chosen once for the period and applied consistently (DESIGN.md section 3). Construction refuses inconsistent
    settings with `GatewayError` (`ResponseCode.INVALID_ARGUMENT`) naming the offending field. ``trajectory`` is
    kept sorted by year.
    """

    method: AdjustmentMethod
    first_year: int
    """First year of the NDC implementation period."""
    last_year: int
    """Last year of the period: the target year of a single-year NDC."""
    averaging_divisor: AveragingDivisor | None = None
    """Required under `AdjustmentMethod.AVERAGING`, refused under the other methods."""
    trajectory: tuple[tuple[int, int], ...] = ()
    """Indicative trajectory as (year, t CO2e) pairs, under `AdjustmentMethod.TRAJECTORY` only (I3)."""

    def __post_init__(self) -> None:
        if not isinstance(self.method, AdjustmentMethod):
            allowed = ", ".join(repr(m.value) for m in AdjustmentMethod)
            raise _refuse(f"method {self.method!r} is not one of {allowed}", "method")
        _check_year(self.first_year, "first_year")
        _check_year(self.last_year, "last_year")
        if self.last_year < self.first_year:
            raise _refuse(f"the period ends in {self.last_year}, before it starts in {self.first_year}", "last_year")
        self._check_divisor()
        self._check_trajectory()

    def _check_divisor(self) -> None:
        if self.method is AdjustmentMethod.AVERAGING:
            if not isinstance(self.averaging_divisor, AveragingDivisor):
                allowed = ", ".join(repr(d.value) for d in AveragingDivisor)
                raise _refuse(f"the averaging method needs an explicit divisor: one of {allowed}", "averaging_divisor")
        elif self.averaging_divisor is not None:
            raise _refuse(
                f"an averaging divisor applies only to the averaging method, not to {self.method.value}",
                "averaging_divisor",
            )

    def _check_trajectory(self) -> None:
        if not isinstance(self.trajectory, tuple):
            raise _refuse(f"trajectory must be a tuple of (year, t CO2e) pairs, got {self.trajectory!r}", "trajectory")
        if self.trajectory and self.method is not AdjustmentMethod.TRAJECTORY:
            raise _refuse(
                f"an indicative trajectory belongs to the single-year trajectory method, not to {self.method.value}",
                "trajectory",
            )
        seen: set[int] = set()
        for index, point in enumerate(self.trajectory):
            field = f"trajectory[{index}]"
            if not isinstance(point, tuple) or len(point) != 2:
                raise _refuse(f"{field} must be a (year, t CO2e) pair, got {point!r}", field)
            year = _check_year(point[0], f"{field}.year")
            # I8: a level may be negative (a net sink).
            _check_whole(point[1], f"{field}.emissions")
            if not self.first_year <= year <= self.last_year:
                raise _refuse(
                    f"{field}.year {year} lies outside the NDC period {self.first_year}-{self.last_year}",
                    f"{field}.year",
                )
            if year in seen:
                raise _refuse(f"the trajectory gives {year} twice", f"{field}.year")
            seen.add(year)
        object.__setattr__(self, "trajectory", tuple(sorted(self.trajectory)))

    @property
    def period_years(self) -> int:
        """Number of calendar years in the NDC implementation period."""
        return self.last_year - self.first_year + 1

    @property
    def target_year(self) -> int:
        """Year in which the averaging method applies its adjustment: the last year of the period (I4)."""
        return self.last_year

    def divisor_for(self, year: int) -> int:
        """The averaging divisor for ``year`` of the period (I5); refused for a year outside the period."""
        if not self.first_year <= year <= self.last_year:
            raise _refuse(f"{year} lies outside the NDC period {self.first_year}-{self.last_year}", "year")
        if self.averaging_divisor is AveragingDivisor.ELAPSED_YEARS:
            return year - self.first_year + 1
        if self.averaging_divisor is AveragingDivisor.PERIOD_YEARS:
            return self.period_years
        raise _refuse(f"no averaging divisor applies to {self.method.value}", "averaging_divisor")

    def describe(self) -> str:
        """One line naming method, period and divisor, e.g. ``single-year averaging, 2021-2030, divisor: ...``."""
        divisor = self.averaging_divisor.value if self.averaging_divisor is not None else "not applicable"
        return f"{self.method.value}, {self.first_year}-{self.last_year}, divisor: {divisor}"


@dataclass(frozen=True, slots=True)
class YearTotals:
    """What the ledger says about one calendar year, in whole t CO2e (I2, I8).

    Construction refuses a year outside `MIN_YEAR`..`MAX_YEAR`, a negative or non-whole ITMO quantity and a
    non-whole reported emissions figure with `GatewayError` (`ResponseCode.INVALID_ARGUMENT`).
    """

    year: int
    first_transferred_ndc: int
    """ITMOs first transferred, authorized for use towards NDCs, by vintage."""
    first_transferred_oimp_only: int
    """ITMOs first transferred, authorized for other international mitigation purposes only, by vintage."""
    used_ndc: int
    """ITMOs acquired and used towards this Party's NDC, by year of use."""
    acquired: int = 0
    """Acquisitions in the year: reported, never part of any adjustment (I1)."""
    reported_emissions: int | None = None
    """Net emissions entered by an operator; None while not reported. May be negative (I8)."""

    def __post_init__(self) -> None:
        _check_year(self.year, "year")
        for name in ("first_transferred_ndc", "first_transferred_oimp_only", "used_ndc", "acquired"):
            if _check_whole(getattr(self, name), name) < 0:
                raise _refuse(f"{name} for {self.year} is negative ({getattr(self, name)})", name)
        if self.reported_emissions is not None:
            _check_whole(self.reported_emissions, "reported_emissions")

    @property
    def added(self) -> int:
        """Decision 2/CMA.3, annex, para 8(a): first transferred, whatever the authorized purpose (I1)."""
        return self.first_transferred_ndc + self.first_transferred_oimp_only

    @property
    def subtracted(self) -> int:
        """Decision 2/CMA.3, annex, para 8(b): used towards the NDC (I1)."""
        return self.used_ndc


def net_first_transferred_minus_used(t: YearTotals) -> int:
    """``added[y] − subtracted[y]`` for the year of ``t`` (I1); acquisitions take no part."""
    return t.added - t.subtracted


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One year of the structured summary (decision 2/CMA.3, annex, para 23; DESIGN.md section 3)."""

    year: int
    first_transferred_ndc: int
    first_transferred_oimp_only: int
    used_ndc: int
    annual_adjustment_averaging: Fraction | None
    """The annual averaging figure under `AdjustmentMethod.AVERAGING` (I4), else None."""
    total_adjustment: Fraction
    """The corresponding adjustment applied for this year under the method; positive is added to emissions."""
    running_total: Fraction
    """Sum of ``total_adjustment`` from the first year of the period to this year."""
    reported_emissions: int | None
    emissions_balance: Fraction | None
    """``reported_emissions + total_adjustment``; None while emissions are not reported."""
    trajectory_emissions: int | None = None
    """The indicative trajectory's level for this year under `AdjustmentMethod.TRAJECTORY`, if given (I3)."""

    @property
    def net_first_transferred_minus_used(self) -> int:
        """``added[y] − subtracted[y]`` for this row's year (I1)."""
        return self.first_transferred_ndc + self.first_transferred_oimp_only - self.used_ndc


@dataclass(frozen=True, slots=True)
class StructuredSummary:
    """The per-year structured summary for one NDC period under one method."""

    settings: AdjustmentSettings
    rows: tuple[SummaryRow, ...]
    """One row per year, ``settings.first_year`` to ``settings.last_year``, in order."""
    cumulative_adjustment: Fraction | None
    """Under `AdjustmentMethod.MULTI_YEAR`: the cumulative adjustment at the end of the period (I6); else None."""

    @property
    def divisor_note(self) -> str:
        """Names the averaging divisor setting, or says that none applies: every summary carries it (I5)."""
        settings = self.settings
        period = f"{settings.first_year}-{settings.last_year}"
        if settings.averaging_divisor is AveragingDivisor.ELAPSED_YEARS:
            return (
                f"averaging divisor: {settings.averaging_divisor.value} (decision 2/CMA.3, annex, para 7(a)(ii)):"
                f" the cumulative amount to year y is divided by y - {settings.first_year} + 1"
            )
        if settings.averaging_divisor is AveragingDivisor.PERIOD_YEARS:
            return (
                f"averaging divisor: {settings.averaging_divisor.value} (Switzerland–Ghana cooperation agreement,"
                f" Art. 10(2)): the cumulative amount is divided by {settings.period_years}, the years {period}"
            )
        return f"averaging divisor: does not apply ({settings.method.value}, {period})"

    def row(self, year: int) -> SummaryRow:
        """The row for ``year``; refused for a year outside the period."""
        index = year - self.settings.first_year
        if not 0 <= index < len(self.rows):
            raise _refuse(f"{year} lies outside the NDC period {self.settings.describe()}", "year")
        return self.rows[index]


def _totals_by_year(settings: AdjustmentSettings, totals: Sequence[YearTotals]) -> dict[int, YearTotals]:
    by_year: dict[int, YearTotals] = {}
    first_index: dict[int, int] = {}
    outside: list[tuple[int, int]] = []
    for index, entry in enumerate(totals):
        if not isinstance(entry, YearTotals):
            raise _refuse(f"totals[{index}] is not a YearTotals: {entry!r}", f"totals[{index}]")
        # I7: a year given twice is refused, not summed: the ledger produces one entry per year.
        if entry.year in first_index:
            raise _refuse(
                f"{entry.year} is given twice (totals[{first_index[entry.year]}] and totals[{index}])",
                f"totals[{index}].year",
            )
        first_index[entry.year] = index
        if settings.first_year <= entry.year <= settings.last_year:
            by_year[entry.year] = entry
        else:
            outside.append((index, entry.year))
    if outside:
        # I7: refused, never dropped silently.
        years = ", ".join(str(year) for _, year in outside)
        raise _refuse(
            f"totals for {years} lie outside the NDC period {settings.first_year}-{settings.last_year}: they belong"
            " to another period's summary",
            f"totals[{outside[0][0]}].year",
        )
    return by_year


def structured_summary(settings: AdjustmentSettings, totals: Sequence[YearTotals]) -> StructuredSummary:
    """The structured summary of ``totals`` under ``settings``: one row per year of the period.

    Refuses with `GatewayError` (`ResponseCode.INVALID_ARGUMENT`) a year given twice or lying outside the period
    (I7). A year of the period missing from ``totals`` counts as one with no first transfer, no use and no
    reported emissions.
    """
    by_year = _totals_by_year(settings, totals)
    trajectory = dict(settings.trajectory)
    rows: list[SummaryRow] = []
    cumulative_net = 0
    running_total = Fraction(0)
    for year in range(settings.first_year, settings.last_year + 1):
        entry = by_year.get(year) or YearTotals(year, 0, 0, 0)
        # Para 8: add first transferred by vintage, subtract used by year of use (I1).
        net = net_first_transferred_minus_used(entry)
        cumulative_net += net
        averaging: Fraction | None = None
        if settings.method is AdjustmentMethod.AVERAGING:
            # Para 7(a)(ii): cumulative amount over the divisor (I4, I5), applied only in the target year.
            averaging = Fraction(cumulative_net, settings.divisor_for(year))
            total = averaging if year == settings.target_year else Fraction(0)
        else:
            # Para 7(a)(i) and 7(b): the annual amount, every year (I3, I6).
            total = Fraction(net)
        running_total += total
        balance = None if entry.reported_emissions is None else entry.reported_emissions + total
        rows.append(
            SummaryRow(
                year=year,
                first_transferred_ndc=entry.first_transferred_ndc,
                first_transferred_oimp_only=entry.first_transferred_oimp_only,
                used_ndc=entry.used_ndc,
                annual_adjustment_averaging=averaging,
                total_adjustment=total,
                running_total=running_total,
                reported_emissions=entry.reported_emissions,
                emissions_balance=balance,
                trajectory_emissions=trajectory.get(year),
            )
        )
    # Para 7(b): the cumulative adjustment at the end of the period is the annual ones summed (I6).
    cumulative = running_total if settings.method is AdjustmentMethod.MULTI_YEAR else None
    return StructuredSummary(settings=settings, rows=tuple(rows), cumulative_adjustment=cumulative)


def format_quantity(value: Fraction) -> str:
    """``value`` in t CO2e as text: the exact decimal where one exists, else rounded and marked (I9).

    A fraction in lowest terms has a finite decimal expansion exactly when its denominator has no prime factor but
    2 and 5; it is then printed in full with as few decimals as it needs (``"7"``, ``"-2.5"``, ``"0.125"``).
    Otherwise it is rounded half-even to `ROUNDED_DECIMALS` decimals, always printed, and `ROUNDED_MARKER` is
    appended (``"10.333~"`` for 31/3, ``"0.667~"`` for 2/3). Such a value never lies exactly halfway between two
    thousandths (a halfway value is a finite decimal), so half-even and half-up give the same text; half-even is
    named because it is the rule applied. A negative value that rounds to zero keeps its sign (``"-0.000~"``), so
    that the direction of a tiny adjustment is not lost.
    """
    value = Fraction(value)
    denominator = value.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    sign = "-" if value < 0 else ""
    if denominator == 1:
        decimals = max(twos, fives)
        scaled = abs(value) * 10**decimals
        assert scaled.denominator == 1  # the expansion terminates after `decimals` places
        marker = ""
    else:
        decimals = ROUNDED_DECIMALS
        # round() of a Fraction without ndigits rounds half to even.
        scaled = Fraction(abs(round(value * 10**decimals)))
        marker = ROUNDED_MARKER
    whole, fraction = divmod(scaled.numerator, 10**decimals)
    digits = f"{whole}.{fraction:0{decimals}d}" if decimals else str(whole)
    return f"{sign}{digits}{marker}"
