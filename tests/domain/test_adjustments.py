"""Corresponding-adjustment arithmetic (DESIGN.md section 3; decision 2/CMA.3, annex, paras 7, 8 and 23).

The worked examples are written out by hand. Decision 2/CMA.3 gives no numbers: the ledgers below are ours, and
each expected figure follows from the paragraph named beside it and the interpretation (I1 … I9) documented in
`gateway.domain.adjustments`.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.adjustments import (
    ROUNDED_MARKER,
    AdjustmentSettings,
    AveragingDivisor,
    StructuredSummary,
    YearTotals,
    format_quantity,
    net_first_transferred_minus_used,
    structured_summary,
)
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import AdjustmentMethod

TRAJECTORY = AdjustmentMethod.TRAJECTORY
AVERAGING = AdjustmentMethod.AVERAGING
MULTI_YEAR = AdjustmentMethod.MULTI_YEAR
ELAPSED = AveragingDivisor.ELAPSED_YEARS
PERIOD = AveragingDivisor.PERIOD_YEARS

# --------------------------------------------------------------------------------------------------------
# One ledger for the worked examples: NDC period 2021-2025, target year 2025.
#
#   year  first transferred  first transferred  used      acquired  net (para 8)  cumulative  reported
#         (NDC)              (OIMP only)        (NDC)                                          emissions
#   2021  10                 0                  0         0         10            10          1000
#   2022  20                 5                  5         40        20            30          990
#   2023  0                  0                  0         0         0             30          (none yet)
#   2024  15                 0                  5         0         10            40          970
#   2025  5                  5                  0         0         10            50          960
# --------------------------------------------------------------------------------------------------------

LEDGER = (
    YearTotals(2021, 10, 0, 0, acquired=0, reported_emissions=1000),
    YearTotals(2022, 20, 5, 5, acquired=40, reported_emissions=990),
    YearTotals(2023, 0, 0, 0),
    YearTotals(2024, 15, 0, 5, reported_emissions=970),
    YearTotals(2025, 5, 5, 0, reported_emissions=960),
)
YEARS = [2021, 2022, 2023, 2024, 2025]


def column(summary: StructuredSummary, name: str) -> list[object]:
    return [getattr(row, name) for row in summary.rows]


def test_net_is_first_transferred_of_both_purposes_minus_used() -> None:
    # Para 8(a) adds every ITMO authorized and first transferred, NDC or OIMP-only; 8(b) subtracts the used.
    assert [net_first_transferred_minus_used(t) for t in LEDGER] == [10, 20, 0, 10, 10]


def test_trajectory_worked_example() -> None:
    # Para 7(a)(i): an adjustment for the amount first transferred and used, applied each year; the indicative
    # trajectory is reported beside the rows, not used in the arithmetic (I3).
    settings = AdjustmentSettings(TRAJECTORY, 2021, 2025, trajectory=((2025, 950), (2021, 1000)))
    summary = structured_summary(settings, LEDGER)

    assert column(summary, "year") == YEARS
    assert column(summary, "annual_adjustment_averaging") == [None] * 5
    assert column(summary, "total_adjustment") == [10, 20, 0, 10, 10]
    assert column(summary, "running_total") == [10, 30, 30, 40, 50]
    assert column(summary, "emissions_balance") == [1010, 1010, None, 980, 970]
    assert column(summary, "trajectory_emissions") == [1000, None, None, None, 950]
    assert summary.cumulative_adjustment is None
    assert settings.trajectory == ((2021, 1000), (2025, 950))


def test_averaging_worked_example_elapsed_years() -> None:
    # Para 7(a)(ii): cumulative amount divided by the elapsed years, applied "in the NDC year" (I4, I5).
    summary = structured_summary(AdjustmentSettings(AVERAGING, 2021, 2025, ELAPSED), LEDGER)

    # 10/1, 30/2, 30/3, 40/4, 50/5
    assert column(summary, "annual_adjustment_averaging") == [10, 15, 10, 10, 10]
    assert column(summary, "total_adjustment") == [0, 0, 0, 0, 10]
    assert column(summary, "running_total") == [0, 0, 0, 0, 10]
    # Before the target year nothing is applied: the balance is the reported emissions.
    assert column(summary, "emissions_balance") == [1000, 990, None, 970, 970]
    assert summary.cumulative_adjustment is None


def test_averaging_worked_example_period_years() -> None:
    # Switzerland–Ghana agreement, Art. 10(2): the same cumulative amounts divided by the 5 years of the period.
    summary = structured_summary(AdjustmentSettings(AVERAGING, 2021, 2025, PERIOD), LEDGER)

    # 10/5, 30/5, 30/5, 40/5, 50/5
    assert column(summary, "annual_adjustment_averaging") == [2, 6, 6, 8, 10]
    assert column(summary, "total_adjustment") == [0, 0, 0, 0, 10]
    assert column(summary, "emissions_balance") == [1000, 990, None, 970, 970]


def test_the_two_divisors_differ_before_the_target_year_and_agree_in_it() -> None:
    # Same ledger, both readings (I5): the interim averaging figures differ; in the target year the elapsed years
    # are the years of the period, so the adjustment applied there is the same.
    elapsed = structured_summary(AdjustmentSettings(AVERAGING, 2021, 2025, ELAPSED), LEDGER)
    period = structured_summary(AdjustmentSettings(AVERAGING, 2021, 2025, PERIOD), LEDGER)
    for year in (2021, 2022, 2023, 2024):
        assert elapsed.row(year).annual_adjustment_averaging != period.row(year).annual_adjustment_averaging
    assert elapsed.row(2025).total_adjustment == period.row(2025).total_adjustment == 10


def test_averaging_keeps_thirds_exact() -> None:
    # Para 7(a)(ii) over 2021-2023 with nets 10, 0, 1: cumulative 10, 10, 11.
    totals = [YearTotals(2021, 10, 0, 0), YearTotals(2023, 1, 0, 0)]
    elapsed = structured_summary(AdjustmentSettings(AVERAGING, 2021, 2023, ELAPSED), totals)
    period = structured_summary(AdjustmentSettings(AVERAGING, 2021, 2023, PERIOD), totals)

    assert column(elapsed, "annual_adjustment_averaging") == [10, 5, Fraction(11, 3)]
    assert column(period, "annual_adjustment_averaging") == [Fraction(10, 3), Fraction(10, 3), Fraction(11, 3)]
    assert elapsed.rows[-1].total_adjustment == Fraction(11, 3)
    assert format_quantity(elapsed.rows[-1].total_adjustment) == "3.667" + ROUNDED_MARKER


def test_multi_year_worked_example() -> None:
    # Para 7(b): annual adjustments every year, and cumulatively at the end of the period (I6).
    summary = structured_summary(AdjustmentSettings(MULTI_YEAR, 2021, 2025), LEDGER)

    assert column(summary, "annual_adjustment_averaging") == [None] * 5
    assert column(summary, "total_adjustment") == [10, 20, 0, 10, 10]
    assert column(summary, "running_total") == [10, 30, 30, 40, 50]
    assert column(summary, "emissions_balance") == [1010, 1010, None, 980, 970]
    assert summary.cumulative_adjustment == 50


# --------------------------------------------------------------------------------------------------------
# The formula one registry computes, and its own audit found wrong
# --------------------------------------------------------------------------------------------------------


def wrong_registry_formula(t: YearTotals) -> int:
    """``first transferred − acquired + used``: the sign error this module must not reproduce."""
    return t.first_transferred_ndc + t.first_transferred_oimp_only - t.acquired + t.used_ndc


@pytest.mark.parametrize(
    ("totals", "correct", "wrong"),
    [
        # A transferring Party that also acquired and used some: para 8 gives 100 − 20; the formula 100 − 30 + 20.
        pytest.param(YearTotals(2030, 100, 0, 20, acquired=30, reported_emissions=500), 80, 90, id="seller"),
        # An acquiring Party using what it bought: para 8(b) subtracts 50; the formula nets it out to nothing.
        pytest.param(YearTotals(2030, 0, 0, 50, acquired=50, reported_emissions=500), -50, 0, id="buyer"),
    ],
)
def test_acquisitions_do_not_enter_and_uses_are_subtracted(totals: YearTotals, correct: int, wrong: int) -> None:
    for method in (TRAJECTORY, MULTI_YEAR):
        summary = structured_summary(AdjustmentSettings(method, 2030, 2030), [totals])
        assert summary.rows[0].total_adjustment == correct
        assert summary.rows[0].emissions_balance == 500 + correct
    assert wrong_registry_formula(totals) == wrong
    assert wrong != correct


# --------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------

SETTINGS_REFUSED = [
    pytest.param(dict(method=MULTI_YEAR, first_year=2030, last_year=2021), "last_year", id="period-ends-first"),
    pytest.param(dict(method=MULTI_YEAR, first_year=1989, last_year=2030), "first_year", id="first-year-too-early"),
    pytest.param(dict(method=MULTI_YEAR, first_year=2021, last_year=2101), "last_year", id="last-year-too-late"),
    pytest.param(dict(method=MULTI_YEAR, first_year=True, last_year=2030), "first_year", id="year-is-a-bool"),
    pytest.param(dict(method="multi-year", first_year=2021, last_year=2030), "method", id="method-not-an-enum"),
    pytest.param(dict(method=AVERAGING, first_year=2021, last_year=2030), "averaging_divisor", id="averaging-no-div"),
    pytest.param(
        dict(method=AVERAGING, first_year=2021, last_year=2030, averaging_divisor="elapsed years"),
        "averaging_divisor",
        id="averaging-divisor-not-an-enum",
    ),
    pytest.param(
        dict(method=TRAJECTORY, first_year=2021, last_year=2030, averaging_divisor=ELAPSED),
        "averaging_divisor",
        id="trajectory-with-divisor",
    ),
    pytest.param(
        dict(method=MULTI_YEAR, first_year=2021, last_year=2030, averaging_divisor=PERIOD),
        "averaging_divisor",
        id="multi-year-with-divisor",
    ),
    pytest.param(
        dict(method=TRAJECTORY, first_year=2021, last_year=2030, trajectory=((2020, 100),)),
        "trajectory[0].year",
        id="trajectory-year-before-period",
    ),
    pytest.param(
        dict(method=TRAJECTORY, first_year=2021, last_year=2030, trajectory=((2025, 100), (2031, 90))),
        "trajectory[1].year",
        id="trajectory-year-after-period",
    ),
    pytest.param(
        dict(method=TRAJECTORY, first_year=2021, last_year=2030, trajectory=((2025, 100), (2025, 90))),
        "trajectory[1].year",
        id="trajectory-year-twice",
    ),
    pytest.param(
        dict(method=TRAJECTORY, first_year=2021, last_year=2030, trajectory=((2025, 100.5),)),
        "trajectory[0].emissions",
        id="trajectory-level-not-whole",
    ),
    pytest.param(
        dict(method=TRAJECTORY, first_year=2021, last_year=2030, trajectory=((2025,),)),
        "trajectory[0]",
        id="trajectory-point-not-a-pair",
    ),
    pytest.param(
        dict(method=AVERAGING, first_year=2021, last_year=2030, averaging_divisor=ELAPSED, trajectory=((2025, 1),)),
        "trajectory",
        id="trajectory-under-averaging",
    ),
    pytest.param(
        dict(method=MULTI_YEAR, first_year=2021, last_year=2030, trajectory=((2025, 1),)),
        "trajectory",
        id="trajectory-under-multi-year",
    ),
]


@pytest.mark.parametrize(("kwargs", "field"), SETTINGS_REFUSED)
def test_settings_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(GatewayError) as refused:
        AdjustmentSettings(**kwargs)  # type: ignore[arg-type]
    assert refused.value.code is ResponseCode.INVALID_ARGUMENT
    assert refused.value.field == field
    assert "None" not in refused.value.message  # operator text, not a Python value


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        pytest.param(
            AdjustmentSettings(AVERAGING, 2021, 2030, ELAPSED),
            "single-year averaging, 2021-2030, divisor: elapsed years",
            id="averaging-elapsed",
        ),
        pytest.param(
            AdjustmentSettings(AVERAGING, 2021, 2030, PERIOD),
            "single-year averaging, 2021-2030, divisor: years of the NDC period",
            id="averaging-period",
        ),
        pytest.param(
            AdjustmentSettings(TRAJECTORY, 2021, 2030),
            "single-year trajectory, 2021-2030, divisor: not applicable",
            id="trajectory",
        ),
        pytest.param(
            AdjustmentSettings(MULTI_YEAR, 2026, 2030), "multi-year, 2026-2030, divisor: not applicable", id="multi"
        ),
    ],
)
def test_describe(settings: AdjustmentSettings, line: str) -> None:
    assert settings.describe() == line


def test_every_summary_names_its_divisor() -> None:
    notes = {
        divisor: structured_summary(AdjustmentSettings(AVERAGING, 2021, 2030, divisor), []).divisor_note
        for divisor in AveragingDivisor
    }
    assert "elapsed years" in notes[ELAPSED] and "para 7(a)(ii)" in notes[ELAPSED]
    assert "years of the NDC period" in notes[PERIOD] and "divided by 10" in notes[PERIOD]
    for method in (TRAJECTORY, MULTI_YEAR):
        note = structured_summary(AdjustmentSettings(method, 2021, 2030), []).divisor_note
        assert note.startswith("averaging divisor: does not apply")


def test_a_one_year_period_is_accepted() -> None:
    summary = structured_summary(AdjustmentSettings(AVERAGING, 2030, 2030, ELAPSED), [YearTotals(2030, 7, 0, 2)])
    assert [(row.year, row.annual_adjustment_averaging, row.total_adjustment) for row in summary.rows] == [
        (2030, Fraction(5), Fraction(5))
    ]


# --------------------------------------------------------------------------------------------------------
# Totals
# --------------------------------------------------------------------------------------------------------


ZERO_TOTALS: dict[str, object] = dict(year=2030, first_transferred_ndc=0, first_transferred_oimp_only=0, used_ndc=0)

TOTALS_REFUSED = [
    pytest.param({**ZERO_TOTALS, "first_transferred_ndc": -1}, "first_transferred_ndc", id="negative-first-transfer"),
    pytest.param({**ZERO_TOTALS, "acquired": -5}, "acquired", id="negative-acquisition"),
    pytest.param({**ZERO_TOTALS, "used_ndc": 1.5}, "used_ndc", id="fractional-use"),
    pytest.param({**ZERO_TOTALS, "first_transferred_oimp_only": True}, "first_transferred_oimp_only", id="bool"),
    pytest.param({**ZERO_TOTALS, "reported_emissions": 10.0}, "reported_emissions", id="float-emissions"),
    pytest.param({**ZERO_TOTALS, "year": 1900}, "year", id="year-out-of-range"),
]


@pytest.mark.parametrize(("kwargs", "field"), TOTALS_REFUSED)
def test_year_totals_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(GatewayError) as refused:
        YearTotals(**kwargs)  # type: ignore[arg-type]
    assert refused.value.code is ResponseCode.INVALID_ARGUMENT
    assert refused.value.field == field


def test_negative_reported_emissions_are_accepted() -> None:
    # I8: a net sink reports negative net emissions; the balance is still emissions plus the adjustment.
    summary = structured_summary(
        AdjustmentSettings(TRAJECTORY, 2030, 2030), [YearTotals(2030, 3, 0, 0, reported_emissions=-100)]
    )
    assert summary.rows[0].emissions_balance == -97


def test_totals_outside_the_period_are_refused_naming_the_years() -> None:
    settings = AdjustmentSettings(MULTI_YEAR, 2021, 2025)
    totals = [YearTotals(2021, 1, 0, 0), YearTotals(2020, 1, 0, 0), YearTotals(2026, 1, 0, 0)]
    with pytest.raises(GatewayError) as refused:
        structured_summary(settings, totals)
    assert refused.value.code is ResponseCode.INVALID_ARGUMENT
    assert "2020, 2026" in refused.value.message
    assert refused.value.field == "totals[1].year"


def test_a_year_given_twice_is_refused() -> None:
    settings = AdjustmentSettings(MULTI_YEAR, 2021, 2025)
    with pytest.raises(GatewayError) as refused:
        structured_summary(settings, [YearTotals(2022, 1, 0, 0), YearTotals(2023, 1, 0, 0), YearTotals(2022, 2, 0, 0)])
    assert refused.value.code is ResponseCode.INVALID_ARGUMENT
    assert "2022" in refused.value.message
    assert refused.value.field == "totals[2].year"


def test_missing_years_are_empty_rows() -> None:
    # I7: a year with no totals had no first transfer, no use, and no reported emissions yet.
    summary = structured_summary(AdjustmentSettings(MULTI_YEAR, 2021, 2023), [YearTotals(2022, 4, 0, 1)])
    assert column(summary, "year") == [2021, 2022, 2023]
    assert column(summary, "total_adjustment") == [0, 3, 0]
    assert column(summary, "reported_emissions") == [None, None, None]
    assert column(summary, "emissions_balance") == [None, None, None]
    assert summary.cumulative_adjustment == 3


# --------------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(Fraction(0), "0", id="zero"),
        pytest.param(Fraction(7), "7", id="whole"),
        pytest.param(Fraction(-50), "-50", id="negative-whole"),
        pytest.param(Fraction(5, 2), "2.5", id="half"),
        pytest.param(Fraction(-1, 8), "-0.125", id="negative-eighth"),
        pytest.param(Fraction(51, 5), "10.2", id="fifths"),
        pytest.param(Fraction(1, 64), "0.015625", id="exact-beyond-three-decimals"),
        pytest.param(Fraction(31, 3), "10.333~", id="thirds"),
        pytest.param(Fraction(2, 3), "0.667~", id="rounds-up"),
        pytest.param(Fraction(-2, 3), "-0.667~", id="negative-rounded"),
        pytest.param(Fraction(1, 7), "0.143~", id="sevenths"),
        pytest.param(Fraction(10, 3), "3.333~", id="whole-part-kept"),
        pytest.param(Fraction(1, 2000) + Fraction(1, 3_000_000), "0.001~", id="just-above-a-half-thousandth"),
        pytest.param(Fraction(1, 2000) - Fraction(1, 3_000_000), "0.000~", id="just-below-a-half-thousandth"),
        pytest.param(Fraction(-1, 3000), "-0.000~", id="tiny-negative-keeps-sign"),
    ],
)
def test_format_quantity(value: Fraction, text: str) -> None:
    assert format_quantity(value) == text


@given(st.fractions(max_denominator=10**6).filter(lambda f: format_quantity(f).endswith(ROUNDED_MARKER)))
def test_a_rounded_quantity_is_the_nearest_thousandth(value: Fraction) -> None:
    # Not a finite decimal, so never exactly on a half-thousandth: the nearest thousandth is unique, and
    # half-even and half-up agree (I9).
    printed = Fraction(format_quantity(value).removesuffix(ROUNDED_MARKER))
    assert (printed * 1000).denominator == 1
    assert abs(printed - value) < Fraction(1, 2000)


@given(st.fractions(max_denominator=10**6))
def test_an_exact_quantity_reads_back_unchanged(value: Fraction) -> None:
    text = format_quantity(value)
    if not text.endswith(ROUNDED_MARKER):
        assert Fraction(text) == value


# --------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------

quantities = st.integers(0, 10**9)


@st.composite
def ledgers(draw: st.DrawFn) -> tuple[AdjustmentSettings, list[YearTotals]]:
    """Any method over a period of 1 to 12 years, with totals for any subset of its years, in any order."""
    method = draw(st.sampled_from(list(AdjustmentMethod)))
    first_year = draw(st.integers(2021, 2040))
    last_year = first_year + draw(st.integers(0, 11))
    divisor = draw(st.sampled_from(list(AveragingDivisor))) if method is AVERAGING else None
    years = draw(st.lists(st.integers(first_year, last_year), unique=True))
    totals = [
        YearTotals(
            year,
            draw(quantities),
            draw(quantities),
            draw(quantities),
            acquired=draw(quantities),
            reported_emissions=draw(st.none() | st.integers(-(10**9), 10**10)),
        )
        for year in years
    ]
    return AdjustmentSettings(method, first_year, last_year, divisor), totals


@given(ledgers())
def test_running_total_is_the_sum_of_the_adjustments(ledger: tuple[AdjustmentSettings, list[YearTotals]]) -> None:
    settings, totals = ledger
    summary = structured_summary(settings, totals)
    assert column(summary, "year") == list(range(settings.first_year, settings.last_year + 1))
    assert summary.rows[-1].running_total == sum((row.total_adjustment for row in summary.rows), Fraction(0))
    for row in summary.rows:
        if row.reported_emissions is None:
            assert row.emissions_balance is None
        else:
            assert row.emissions_balance == row.reported_emissions + row.total_adjustment


@given(ledgers())
def test_annual_methods_adjust_by_the_net(ledger: tuple[AdjustmentSettings, list[YearTotals]]) -> None:
    settings, totals = ledger
    summary = structured_summary(settings, totals)
    nets = {t.year: net_first_transferred_minus_used(t) for t in totals}
    if settings.method is AVERAGING:
        # I4, I5: nothing before the target year; there, the whole period's net over its years, either divisor.
        assert all(row.total_adjustment == 0 for row in summary.rows[:-1])
        assert summary.rows[-1].total_adjustment == Fraction(sum(nets.values()), settings.period_years)
        assert summary.cumulative_adjustment is None
    else:
        for row in summary.rows:
            assert row.total_adjustment == nets.get(row.year, 0) == row.net_first_transferred_minus_used
            assert row.annual_adjustment_averaging is None
        if settings.method is MULTI_YEAR:
            assert summary.cumulative_adjustment == summary.rows[-1].running_total == sum(nets.values())
        else:
            assert summary.cumulative_adjustment is None


@given(ledgers(), st.lists(quantities, min_size=12, max_size=12))
def test_acquisitions_never_change_a_row(
    ledger: tuple[AdjustmentSettings, list[YearTotals]], other_acquisitions: list[int]
) -> None:
    settings, totals = ledger
    changed = [
        YearTotals(
            t.year,
            t.first_transferred_ndc,
            t.first_transferred_oimp_only,
            t.used_ndc,
            acquired=other_acquisitions[i],
            reported_emissions=t.reported_emissions,
        )
        for i, t in enumerate(totals)
    ]
    assert structured_summary(settings, changed) == structured_summary(settings, totals)


@given(ledgers(), st.randoms(use_true_random=False))
def test_the_order_of_the_totals_does_not_matter(
    ledger: tuple[AdjustmentSettings, list[YearTotals]], rng: random.Random
) -> None:
    settings, totals = ledger
    shuffled = list(totals)
    rng.shuffle(shuffled)
    assert structured_summary(settings, shuffled) == structured_summary(settings, totals)
