"""The Climate Action Reserve grammar, the Kyoto field form, and the registries whose format is not published.

Real serials come from tests/vectors/serials/*.json, each with the public source it was taken from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.serials import GRAMMARS, SerialError, car, grammar_for_block, kyoto, parse_block, spell_block
from gateway.domain.blocks import UnitBlock, merge, split
from gateway.domain.mapping import find_duplicate_blocks
from tests.adapters import strategies as s

VECTORS = Path(__file__).parent.parent / "vectors" / "serials"


def _vectors(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    for entry in data["serials"]:
        assert entry["source"] in data["sources"], "every real serial names its source"
    return data


CAR = _vectors("car")


# --- Climate Action Reserve -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", CAR["serials"], ids=lambda e: e["serial"])
def test_real_car_serials(entry: dict[str, Any]) -> None:
    value = car.GRAMMAR.parse(entry["serial"])
    assert car.GRAMMAR.format(value) == entry["serial"]
    block = car.GRAMMAR.to_block(value)
    assert block.quantity == entry["quantity"], "the report's quantity equals end - start + 1"
    assert block.vintage == entry["vintage"]
    assert block.project_id == entry["project_id"], "the serial's project part is the report's project ID"
    assert block.space.unit_kind == {"1": "CRT", "ROC": "ROC"}[value.unit_type]
    assert parse_block(entry["serial"]) == block
    assert spell_block(block) == entry["serial"]


def test_the_published_example_of_the_guide_layout() -> None:
    # From the Reserve's retirement report (source car-retirements): the parts in the guide's order.
    value = car.GRAMMAR.parse("CAR-1-US-1335-31-983-KS-2025-9205-1 to 5000")
    assert (value.unit_type, value.country, value.project, value.project_type) == ("1", "US", "1335", "31")
    assert (value.developer, value.state, value.vintage, value.batch) == ("983", "KS", 2025, "9205")
    assert (value.start, value.end) == (1, 5000)
    block = car.GRAMMAR.to_block(value)
    assert block.describe() == "CRT/CAR/1335-2025-9205 [1, 5000]"


def test_real_car_blocks_retired_or_cancelled_never_overlap() -> None:
    blocks = [parse_block(entry["serial"]) for entry in CAR["serials"]]
    assert not find_duplicate_blocks((i, "serial", b) for i, b in enumerate(blocks, start=1))


@pytest.mark.parametrize("group", CAR["adjacent"], ids=lambda g: g[0])
def test_real_adjacent_car_blocks_merge(group: list[str]) -> None:
    blocks = [parse_block(text) for text in group]
    merged = merge(blocks)
    assert len(merged) == 1 and merged[0].quantity == sum(b.quantity for b in blocks)
    assert spell_block(merged[0]).endswith(f"-{blocks[0].start} to {blocks[-1].end}")


def test_equal_numbers_in_two_car_batches_are_different_credits() -> None:
    a = parse_block("CAR-1-US-1335-31-983-KS-2025-9205-1 to 5000")
    b = parse_block("CAR-1-US-1335-31-983-KS-2025-9659-1 to 7275")
    assert a.start == b.start and not a.overlaps(b)
    crt = parse_block("CAR-1-US-1316-105-276-CA-2025-9388-1 to 1")
    roc = parse_block("CAR-ROC-US-1316-105-276-CA-2025-9388-1 to 1")
    assert not crt.overlaps(roc), "a CRT and a ROC are different kinds of unit"


@given(s.car_serials(), st.data())
def test_split_car_blocks_keep_their_serial(value: car.CarSerial, data: st.DataObject) -> None:
    parent = car.GRAMMAR.to_block(value)
    assert car.GRAMMAR.from_block(parent) == value
    start = data.draw(st.integers(parent.start, parent.end))
    end = data.draw(st.integers(start, parent.end))
    child = split(parent, start, end).taken
    text = spell_block(child)
    assert text == car.GRAMMAR.format(dataclasses.replace(value, start=start, end=end))
    assert parse_block(text) == child and child.overlaps(parent)
    assert grammar_for_block(child) is car.GRAMMAR
    assert car.GRAMMAR.carried(child) >= {"space", "start", "end", "vintage", "project_id", "attributes.car.batch"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CAR-2-US-1335-31-983-KS-2025-9205-1 to 5000", "not one the Reserve's serial number guide lists"),
        ("CAR-1-US-1335-31-983-KS-2025-9205-5000 to 1", "precedes its start"),
        ("CAR-1-US-01335-31-983-KS-2025-9205-1 to 5000", "project ID '01335'.*leading zeros"),
        ("CAR-1-US-1335-31-983-KS-2025-09205-1 to 5000", "batch number"),
        ("CAR-1-US-293-1-120-CA-2006-102-1-29251", "follows none"),
        ("CAR-1-US-1335-31-983-KANSAS-2025-9205-1 to 5000", "follows none"),
    ],
)
def test_malformed_car_serials_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(SerialError, match=message):
        parse_block(text)


def test_a_car_serial_refuses_another_vintage_and_a_foreign_project_id() -> None:
    value = car.GRAMMAR.parse("CAR-1-US-1335-31-983-KS-2025-9205-1 to 5000")
    with pytest.raises(SerialError, match="has vintage 2025, not 2024"):
        car.GRAMMAR.to_block(value, vintage=2024)
    block = dataclasses.replace(car.GRAMMAR.to_block(value), project_id="ACR1335")
    with pytest.raises(SerialError, match="not a Reserve project ID"):
        spell_block(block)
    moved = dataclasses.replace(car.GRAMMAR.to_block(value), vintage=2024)
    with pytest.raises(SerialError, match="contradict"):
        spell_block(moved)


# --- Registries whose serial format is not published ---------------------------------------------------------


@pytest.mark.parametrize("name", ["acr", "art_trees"])
def test_unpublished_formats_have_no_grammar_and_their_serials_are_refused(name: str) -> None:
    data = _vectors(name)
    assert data["grammar"] is None and "No grammar is written" in data["about"]
    assert data["serials"], "the real serials found are kept for when the format is published"
    for entry in data["serials"]:
        assert not [g.name for g in GRAMMARS if g.matches(entry["serial"])], entry["serial"]
        with pytest.raises(SerialError, match="follows none"):
            parse_block(entry["serial"])


# --- Kyoto field form ------------------------------------------------------------------------------------


CER_FIELDS = {
    "originating_registry": "CN",
    "unit_type": "5-0",
    "block_start": "1001",
    "block_end": "2000",
    "original_commitment_period": "2",
    "applicable_commitment_period": "2",
    "lulucf_activity": "",
    "project_id": "1234",
    "track": "",
    "expiry_date": "",
}


def test_the_documented_kyoto_example_in_both_forms() -> None:
    value = kyoto.from_fields(CER_FIELDS)
    assert kyoto.GRAMMAR.format(value) == "CN-5-0-1001-2000-2-2-0-1234-0"
    assert value.unit_name == "CER"
    assert kyoto.to_fields(kyoto.GRAMMAR.parse("CN-5-0-1001-2000-2-2-0-1234-0")) == CER_FIELDS


@given(s.kyoto_field_forms(), s.year)
def test_kyoto_field_form_block_and_string_round_trip(fields: dict[str, str], vintage: int) -> None:
    value = kyoto.from_fields(fields)
    assert kyoto.to_fields(value) == fields
    text = kyoto.GRAMMAR.format(value)
    assert [g.name for g in GRAMMARS if g.matches(text)] == ["kyoto"]
    assert kyoto.GRAMMAR.parse(text) == dataclasses.replace(value, expiry=None), "the string form has no expiry"
    assert kyoto.to_fields(kyoto.GRAMMAR.parse(text)) == {**fields, "expiry_date": ""}
    block = kyoto.GRAMMAR.to_block(value, vintage=vintage)
    assert kyoto.GRAMMAR.from_block(block) == value, "the expiry date travels in kp.expiry_date"
    assert dict(block.attributes).get("kp.expiry_date", "") == fields["expiry_date"]
    assert "attributes.kp.expiry_date" not in kyoto.GRAMMAR.carried(block)


@given(s.kyoto_field_forms(), s.year, st.data())
def test_split_kyoto_blocks_keep_every_field(fields: dict[str, str], vintage: int, data: st.DataObject) -> None:
    parent = kyoto.GRAMMAR.to_block(kyoto.from_fields(fields), vintage=vintage)
    start = data.draw(st.integers(parent.start, parent.end))
    end = data.draw(st.integers(start, parent.end))
    child = split(parent, start, end).taken
    assert kyoto.to_fields(kyoto.GRAMMAR.from_block(child)) == {
        **fields,
        "block_start": str(start),
        "block_end": str(end),
    }
    assert parse_block(spell_block(child), vintage=vintage) == dataclasses.replace(
        child, attributes=tuple(a for a in child.attributes if a[0] != "kp.expiry_date")
    )


def _with(**changes: str) -> dict[str, str]:
    return {**CER_FIELDS, **changes}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (_with(originating_registry="CHN"), "originating_registry .*'CHN'.*alpha-2"),
        (_with(originating_registry="cn"), "originating_registry"),
        (_with(unit_type="8-0"), "unit_type .*'8-0'"),
        (_with(unit_type="5"), "unit_type .*'5'"),
        (_with(unit_type="5-00"), "unit_type"),
        (_with(block_start="01001"), "block_start .*leading zeros"),
        (_with(block_end="1000"), "block_end .*precedes the block start 1001"),
        (_with(original_commitment_period="3"), "original_commitment_period .*'3'.*1 first commitment period"),
        (_with(applicable_commitment_period="0"), "applicable_commitment_period"),
        (_with(lulucf_activity="8"), "lulucf_activity .*'8'.*7 wetland drainage and rewetting"),
        (_with(lulucf_activity="0"), "lulucf_activity .*'0'"),
        (_with(project_id="0"), "project_id .*positive integer"),
        (_with(project_id="CDM-1234"), "project_id"),
        (_with(track="1"), "track .*ERUs .*not unit type 5"),
        (_with(unit_type="3-0", track="3"), "track .*'3'"),
        (_with(expiry_date="2012-12-31"), "expiry_date .*only tCERs and lCERs.*not unit type 5"),
        (_with(unit_type="6-0", expiry_date="2012-13-01"), "expiry_date .*not a valid date"),
        (_with(unit_type="6-0", expiry_date="31/12/2012"), "expiry_date .*ISO date"),
        ({k: v for k, v in CER_FIELDS.items() if k != "track"}, "track are missing"),
        (_with(serial="x"), "unknown Kyoto field"),
    ],
)
def test_bad_kyoto_fields_are_refused_naming_the_field(fields: dict[str, str], message: str) -> None:
    with pytest.raises(SerialError, match=message):
        kyoto.from_fields(fields)


def test_a_field_given_as_a_number_is_refused() -> None:
    fields: dict[str, Any] = _with()
    fields["block_start"] = 1001
    with pytest.raises(SerialError, match=r"block_start .*every field is text"):
        kyoto.from_fields(fields)


def test_a_string_form_block_without_a_field_form_names_the_field() -> None:
    three_letters = kyoto.GRAMMAR.parse("CHN-5-0-1001-2000-2-2-0-1234-0")
    with pytest.raises(SerialError, match=r"originating_registry .*'CHN'"):
        kyoto.to_fields(three_letters)
    period_three = kyoto.GRAMMAR.parse("CN-5-0-1001-2000-3-3-0-1234-0")
    with pytest.raises(SerialError, match="original_commitment_period"):
        kyoto.to_fields(period_three)


def test_a_kyoto_block_with_a_bad_expiry_attribute_is_refused() -> None:
    block = kyoto.GRAMMAR.to_block(kyoto.from_fields(_with(unit_type="6-0", expiry_date="2012-12-31")), vintage=2010)
    assert kyoto.GRAMMAR.from_block(block).expiry == dt.date(2012, 12, 31)
    broken = UnitBlock(
        block.space,
        block.start,
        block.end,
        block.vintage,
        block.project_id,
        attributes=tuple((k, "soon" if k == "kp.expiry_date" else v) for k, v in block.attributes),
    )
    with pytest.raises(SerialError, match=r"kp.expiry_date 'soon'"):
        kyoto.GRAMMAR.from_block(broken)
