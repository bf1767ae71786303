"""Hypothesis strategies for the canonical records and the serials of every grammar."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import strategies as st

from adapters import vocab
from adapters.context import ActionFacts, ItmoSerialSource, MappingContext
from adapters.serials.car import UNIT_TYPES as CAR_UNIT_TYPES
from adapters.serials.car import CarSerial
from adapters.serials.domestic import CCER_FORMAT, CEA_FORMAT
from adapters.serials.gold_standard import GoldStandardSerial
from adapters.serials.itmo import ItmoBlockId
from adapters.serials.kyoto import KyotoBlock
from adapters.serials.puro import PuroSerial
from adapters.serials.vcs import VcsSerial
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import (
    ActionSubtype,
    AefAction,
    AefAuthorization,
    AefAuthorizedEntity,
    AefHolding,
    AefSector,
    AefSubmission,
    CcerCredit,
    CeaAllowance,
    CeaSector,
    Metric,
    MitigationType,
)
from gateway.domain.records import ActionType, FirstTransferDefinition, Purpose

PARTIES = sorted(vocab.PARTY_CODES)
# "NA" is the AEF's "does not apply": never a value (the gateway refuses it at its edges).
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and "; " not in s and s.strip() != "" and s != "NA"
)
words = st.text(
    alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789-", min_size=1, max_size=12
).filter(lambda s: s != "NA")
party = st.sampled_from(PARTIES)
year = st.integers(2000, 2040)
date = st.dates(dt.date(2000, 1, 1), dt.date(2040, 12, 31))
serial = st.integers(0, 10**12)
quantity = st.integers(1, 10**6)
approach = st.integers(0, 9999).map(lambda n: f"CA{n:04d}")
registry_id = st.tuples(party, st.integers(0, 99)).map(lambda t: f"{t[0]}{t[1]:02d}")
instant = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2040, 12, 31)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=dt.UTC)
)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int]:
    """A start and an end, in order."""
    start = draw(serial)
    return start, start + draw(st.integers(0, 10**6))


@st.composite
def ccer_credits(draw: st.DrawFn) -> CcerCredit:
    """A CCER credit with a block in the default CCER space."""
    start, end = draw(ranges())
    period_start = draw(date)
    block = UnitBlock(
        CCER_FORMAT.space(),
        start,
        end,
        draw(year),
        draw(words),
        draw(st.from_regex(r"CCER-[0-9]{2}-[0-9]{3}-V[0-9]{2}", fullmatch=True)),
        draw(st.sampled_from(["", *[m.value for m in MitigationType]])),
        registry_reference=draw(words),
    )
    return CcerCredit(
        project_name=draw(text),
        project_type_code=draw(st.from_regex(r"[A-Z][0-9]{4}", fullmatch=True)),
        province=draw(text),
        monitoring_period_start=period_start,
        monitoring_period_end=period_start + dt.timedelta(days=draw(st.integers(0, 900))),
        certified_quantity=end - start + 1 + draw(st.integers(0, 1000)),
        block=block,
    )


@st.composite
def cea_allowances(draw: st.DrawFn) -> CeaAllowance:
    """A CEA holding with a block in the default CEA space."""
    start, end = draw(ranges())
    block = UnitBlock(CEA_FORMAT.space(), start, end, draw(year), registry_reference=draw(words))
    return CeaAllowance(draw(words), draw(text), draw(st.sampled_from(list(CeaSector))), block)


@st.composite
def aef_holdings(draw: st.DrawFn) -> AefHolding:
    """A holding row with consistent ITMO serials and quantity."""
    start, end = draw(ranges())
    underlying = draw(st.booleans())
    return AefHolding(
        cooperative_approach=draw(approach),
        authorization_id=draw(words),
        first_transferring_party=draw(party),
        party_registry=draw(registry_id),
        itmo_first_serial=start,
        itmo_last_serial=end,
        underlying_registry=draw(st.sampled_from(sorted(vocab.NOMENCLATURE_UNDERLYING_REGISTRIES)))
        if underlying
        else "",
        first_unit_id=draw(words) if underlying else "",
        last_unit_id=draw(words) if underlying else "",
        metric=Metric.GHG,
        gwp_values=draw(st.sampled_from(["AR4", "AR5", "AR6"])),
        quantity=end - start + 1,
        mitigation_type=draw(st.sampled_from(list(MitigationType))),
        vintage=draw(year),
    )


@st.composite
def aef_actions(draw: st.DrawFn) -> AefAction:
    """An action row that obeys the action-type rules."""
    holding = draw(aef_holdings())
    kind = draw(st.sampled_from(list(ActionType)))
    use_or_cancel = kind in (ActionType.USE, ActionType.CANCELLATION, ActionType.VOLUNTARY_CANCELLATION)
    subtype = draw(st.sampled_from(list(ActionSubtype)))
    # A first transfer at authorization, issuance or use has no acquiring Party (aef_columns).
    to_a_party = kind is ActionType.TRANSFER or (
        kind is ActionType.FIRST_TRANSFER and subtype is ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY
    )
    purpose = draw(st.sampled_from(list(Purpose))) if use_or_cancel else None
    columns = {name: getattr(holding, name) for name in AefHolding.__dataclass_fields__}
    columns.update(
        action_date=draw(instant),
        action_type=kind,
        action_subtype=subtype,
        transferring_party=draw(party) if kind is ActionType.ACQUISITION else "",
        acquiring_party=draw(party) if to_a_party else "",
        purpose=purpose,
        using_party=draw(st.one_of(st.just(""), party)) if use_or_cancel else "",
        using_entity=draw(st.one_of(st.just(""), words)) if use_or_cancel else "",
        ndc_year_of_use=draw(year) if kind is ActionType.USE and purpose is Purpose.NDC else None,
        additional_information=draw(st.one_of(st.just(""), text)),
    )
    return AefAction.of(**columns)


@st.composite
def aef_submissions(draw: st.DrawFn) -> AefSubmission:
    """A submission row."""
    first = draw(year)
    return AefSubmission(
        draw(party),
        f"{draw(st.integers(1, 9))}.{draw(st.integers(0, 9))}",
        draw(year),
        draw(date),
        first,
        first + draw(st.integers(0, 10)),
    )


@st.composite
def aef_authorizations(draw: st.DrawFn) -> AefAuthorization:
    """An authorization row obeying the OIMP rules."""
    purpose = draw(st.sampled_from(list(Purpose)))
    oimp = purpose in (Purpose.OIMP, Purpose.NDC_AND_OIMP)
    first = draw(year)
    return AefAuthorization(
        authorization_id=draw(words),
        date=draw(date),
        cooperative_approach=draw(approach),
        version=draw(words),
        authorized_quantity=draw(quantity),
        metric=Metric.GHG,
        gwp_values="AR5",
        sectors=tuple(draw(st.lists(st.sampled_from(list(AefSector)), min_size=1, max_size=3))),
        activity_types=tuple(draw(st.lists(text, min_size=1, max_size=2))),
        purposes=purpose,
        authorized_parties=tuple(draw(st.lists(party, min_size=1, max_size=3))),
        authorized_entities=tuple(draw(st.lists(words, max_size=2))),
        oimp_authorized=draw(st.one_of(st.just(""), text)) if oimp else "",
        timeframe_start=first,
        timeframe_end=first + draw(st.integers(0, 10)),
        terms_and_conditions=draw(st.one_of(st.just(""), text)),
        documentation=draw(st.one_of(st.just(""), text)),
        first_transfer_definition=draw(
            st.sampled_from(
                [d for d in FirstTransferDefinition if d is not FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER]
            )
        )
        if purpose is not Purpose.NDC
        else None,
        additional_information=draw(st.one_of(st.just(""), text)),
    )


@st.composite
def aef_entities(draw: st.DrawFn) -> AefAuthorizedEntity:
    """An authorized entity row."""
    return AefAuthorizedEntity(
        draw(date),
        draw(text),
        draw(party),
        draw(words),
        draw(approach),
        draw(st.one_of(st.just(""), text)),
        draw(st.one_of(st.just(""), text)),
        draw(st.one_of(st.just(""), text)),
    )


def ddmmyyyy(d: dt.date) -> str:
    """A date as a VCS serial spells it."""
    return d.strftime("%d%m%Y")


@st.composite
def vcs_serials(draw: st.DrawFn) -> VcsSerial:
    """A VCS serial in either form."""
    start, end = draw(ranges())
    first = draw(date)
    last = first + dt.timedelta(days=draw(st.integers(0, 800)))
    registry = draw(st.sampled_from(["VER", "APX", "MER", "CDC"]))
    return VcsSerial(
        str(draw(st.integers(1, 99999))),
        start,
        end,
        draw(st.from_regex(r"[0-9]{1,4}", fullmatch=True)),
        registry,
        draw(st.from_regex(r"[A-Z]{2}", fullmatch=True)),
        str(draw(st.integers(1, 16))),
        str(draw(st.integers(1, 9999))),
        ddmmyyyy(first),
        ddmmyyyy(last),
        draw(st.sampled_from("01")),
    )


@st.composite
def gold_standard_serials(draw: st.DrawFn) -> GoldStandardSerial:
    """A Gold Standard serial."""
    start, end = draw(ranges())
    return GoldStandardSerial(
        "1",
        str(draw(st.integers(1, 3))),
        draw(st.from_regex(r"[A-Z]{2}", fullmatch=True)),
        f"GS{draw(st.integers(1, 99999))}",
        str(draw(st.integers(1, 25))),
        draw(year),
        str(draw(st.integers(1, 99999))),
        start,
        end,
    )


@st.composite
def puro_serials(draw: st.DrawFn) -> PuroSerial:
    """A Puro certificate ID."""
    start, end = draw(ranges())
    return PuroSerial(
        "PR",
        draw(st.sampled_from(["CORC100+", "CORC1000+", "CORC"])),
        draw(st.from_regex(r"[A-Z]{2}", fullmatch=True)),
        draw(st.from_regex(r"[0-9A-Z]{6}", fullmatch=True)),
        draw(year),
        str(draw(st.uuids())),
        start,
        end,
    )


@st.composite
def kyoto_blocks(draw: st.DrawFn) -> KyotoBlock:
    """A Kyoto unit block."""
    start, end = draw(ranges())
    small = st.integers(0, 9).map(str)
    return KyotoBlock(
        draw(st.from_regex(r"[A-Z]{2}", fullmatch=True)),
        draw(st.sampled_from("1234567")),
        draw(small),
        start,
        end,
        draw(small),
        draw(small),
        draw(small),
        str(draw(st.integers(0, 99999))),
        draw(small),
    )


@st.composite
def kyoto_field_forms(draw: st.DrawFn) -> dict[str, str]:
    """A valid Kyoto field form: codes from the DES lists, track only on ERUs, expiry only on tCERs and lCERs."""
    start, end = draw(ranges())
    unit_type = draw(st.sampled_from("1234567"))
    period = st.sampled_from("12")
    return {
        "originating_registry": draw(st.from_regex(r"[A-Z]{2}", fullmatch=True)),
        "unit_type": f"{unit_type}-{draw(st.integers(0, 12))}",
        "block_start": str(start),
        "block_end": str(end),
        "original_commitment_period": draw(period),
        "applicable_commitment_period": draw(period),
        "lulucf_activity": draw(st.sampled_from(["", *"1234567"])),
        "project_id": draw(st.one_of(st.just(""), st.integers(1, 10**7).map(str))),
        "track": draw(st.sampled_from(["", "1", "2"])) if unit_type in "34" else "",
        "expiry_date": draw(st.one_of(st.just(""), date.map(dt.date.isoformat))) if unit_type in "67" else "",
    }


@st.composite
def car_serials(draw: st.DrawFn) -> CarSerial:
    """A Climate Action Reserve serial."""
    start, end = draw(ranges())
    two_letters = st.from_regex(r"[A-Z]{2}", fullmatch=True)
    return CarSerial(
        draw(st.sampled_from(sorted(CAR_UNIT_TYPES))),
        draw(two_letters),
        str(draw(st.integers(1, 9999))),
        str(draw(st.integers(1, 300))),
        str(draw(st.integers(1, 9999))),
        draw(two_letters),
        draw(year),
        str(draw(st.integers(1, 99999))),
        start,
        end,
    )


@st.composite
def itmo_blocks(draw: st.DrawFn) -> ItmoBlockId:
    """An ITMO identifier or first..last pair."""
    start, end = draw(ranges())
    ranged = start != end
    return ItmoBlockId(draw(approach), draw(registry_id), draw(party), start, end, draw(year), ranged)


def action_context(kind: ActionType = ActionType.FIRST_TRANSFER, **facts: object) -> MappingContext:
    """A context with every fact a first transfer of CCER credits needs."""
    base: dict[str, object] = dict(
        action_type=kind,
        action_subtype=ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY,
        action_date=dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.UTC),
        cooperative_approach="CA0001",
        authorization_id="CHN-CHE-2025-001",
        first_transferring_party="CHN",
        party_registry="CHN01",
        gwp_values="AR5",
        acquiring_party="CHE",
        mitigation_type=MitigationType.REMOVALS,
    )
    base.update(facts)
    return MappingContext(
        facts=ActionFacts(**base),  # type: ignore[arg-type]
        extension_codes=(("CN-CCER", "CCER"), ("CN-CEA", "CEA")),
        itmo_serials=ItmoSerialSource.UNDERLYING,
    )


def built_in_adapters() -> dict[str, Any]:
    """The built-in adapters by name, straight from their modules (no entry points needed)."""
    from adapters import aef, cadt, cn_ccer, cn_cea, serial_lists

    found: list[Any] = [
        cn_cea.ADAPTER,
        cn_ccer.ADAPTER,
        *aef.ADAPTERS.values(),
        cadt.UNITS,
        cadt.T1,
        cadt.T2,
        cadt.T3,
        cadt.T4,
        cadt.T5,
        *serial_lists.ADAPTERS.values(),
    ]
    return {adapter.info.name: adapter for adapter in found}


ACTION_CONTEXT_JSON: dict[str, Any] = {
    "facts": {
        "action_type": "First transfer",
        "action_subtype": "First transfer to another Party",
        "action_date": "2025-03-01T08:00:00.000Z",
        "cooperative_approach": "CA0001",
        "authorization_id": "CHN-CHE-2025-001",
        "first_transferring_party": "CHN",
        "party_registry": "CHN01",
        "gwp_values": "AR5",
        "acquiring_party": "CHE",
        "mitigation_type": "Removals",
    },
    "extension_codes": {"CN-CCER": "CCER"},
    "itmo_serials": "underlying",
}
"""The JSON form (``--context`` file, ``context_json`` field) of a first transfer of CCER credits."""
