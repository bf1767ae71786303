"""Serial grammars: real published serials, generated serials, and overlap across spellings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.mapping import map_batch
from adapters.serials import (
    GRAMMARS,
    SerialError,
    car,
    gold_standard,
    grammar_for_block,
    itmo,
    kyoto,
    parse_block,
    puro,
    spell_block,
    vcs,
)
from adapters.serials.domestic import CCER_FORMAT, CCER_GRAMMAR, DomesticFormat, DomesticGrammar, DomesticSerial
from gateway.domain.blocks import UnitBlock, split
from gateway.domain.mapping import IssueCode, find_duplicate_blocks
from tests.adapters import strategies as s

VECTORS = Path(__file__).parent.parent / "vectors" / "serials"


def _vectors(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _real(name: str) -> list[dict[str, Any]]:
    data = _vectors(name)
    for entry in data["serials"]:
        assert entry["source"] in data["sources"], "every real serial names its source"
    return list(data["serials"])


@pytest.mark.parametrize("entry", _real("vcs"), ids=lambda e: e["serial"][:30])
def test_real_vcs_serials(entry: dict[str, Any]) -> None:
    value = vcs.GRAMMAR.parse(entry["serial"])
    assert vcs.GRAMMAR.format(value) == entry["serial"]
    block = vcs.GRAMMAR.to_block(value)
    assert block.quantity == entry["quantity"], "the registry's published quantity equals end - start + 1"
    assert block.vintage == dt.date.fromisoformat(entry["vintage_end"]).year
    assert value.current_form == (entry.get("form") != "older")
    assert spell_block(block) == entry["serial"]


@pytest.mark.parametrize("entry", _real("gold_standard"), ids=lambda e: e["serial"])
def test_real_gold_standard_serials(entry: dict[str, Any]) -> None:
    value = gold_standard.GRAMMAR.parse(entry["serial"])
    assert gold_standard.GRAMMAR.format(value) == entry["serial"]
    block = gold_standard.GRAMMAR.to_block(value)
    assert (block.quantity, block.vintage) == (entry["quantity"], entry["vintage"])
    assert block.space.issuance == value.issuance
    assert spell_block(block) == entry["serial"]


@pytest.mark.parametrize("entry", _real("puro"), ids=lambda e: e["serial"][:30])
def test_real_puro_serials(entry: dict[str, Any]) -> None:
    value = puro.GRAMMAR.parse(entry["serial"])
    assert puro.GRAMMAR.format(value) == entry["serial"]
    block = puro.GRAMMAR.to_block(value)
    assert (block.quantity, block.vintage) == (entry["quantity"], entry["vintage"])
    assert spell_block(block) == entry["serial"]


def test_no_real_kyoto_serials_are_claimed() -> None:
    data = _vectors("kyoto")
    assert data["serials"] == [] and "No real published" in data["about"]


@pytest.mark.parametrize("name", ["vcs", "gold_standard"])
def test_real_adjacent_blocks_merge_without_overlap(name: str) -> None:
    from gateway.domain.blocks import merge

    for group in _vectors(name)["adjacent"]:
        blocks = [parse_block(text) for text in group]
        assert not find_duplicate_blocks((i, "serial", b) for i, b in enumerate(blocks, start=1))
        merged = merge(blocks)
        assert len(merged) == 1 and merged[0].quantity == sum(b.quantity for b in blocks)


def test_real_gold_standard_retirement_overlaps_its_issuance() -> None:
    for issued, retired in _vectors("gold_standard")["overlapping"]:
        a, b = parse_block(issued), parse_block(retired)
        assert a.overlaps(b) and a.contains(b)
        assert issued != retired


GENERATED = [
    (vcs.GRAMMAR, s.vcs_serials()),
    (gold_standard.GRAMMAR, s.gold_standard_serials()),
    (puro.GRAMMAR, s.puro_serials()),
    (car.GRAMMAR, s.car_serials()),
    (itmo.GRAMMAR, s.itmo_blocks()),
]


@pytest.mark.parametrize(("grammar", "strategy"), GENERATED, ids=lambda g: getattr(g, "name", ""))
def test_generated_serials_round_trip(grammar: Any, strategy: st.SearchStrategy[Any]) -> None:
    @given(strategy)
    def check(value: Any) -> None:
        text = grammar.format(value)
        assert grammar.parse(text) == value
        assert grammar.format(grammar.parse(text)) == text
        block = grammar.to_block(value)
        assert (block.start, block.end) == (value.start, value.end)
        assert grammar.from_block(block) == value
        assert [g.name for g in GRAMMARS if g.matches(text)] == [grammar.name], "grammars are disjoint"

    check()


@given(s.kyoto_blocks(), s.year)
def test_generated_kyoto_blocks_round_trip(value: kyoto.KyotoBlock, vintage: int) -> None:
    text = kyoto.GRAMMAR.format(value)
    assert kyoto.GRAMMAR.parse(text) == value
    with pytest.raises(SerialError, match="carries no vintage"):
        kyoto.GRAMMAR.to_block(value)
    block = kyoto.GRAMMAR.to_block(value, vintage=vintage)
    assert block.vintage == vintage and kyoto.GRAMMAR.from_block(block) == value


@given(s.ranges(), s.year, st.booleans())
def test_generated_domestic_identifiers_round_trip(rng: tuple[int, int], vintage: int, per_issuance: bool) -> None:
    fmt = DomesticFormat("CCER", "CN-CCER", "CN-CCER", per_issuance=per_issuance)
    grammar = DomesticGrammar(fmt, "cn-ccer")
    value = DomesticSerial(fmt, vintage, rng[0], rng[1], "ISS-7" if per_issuance else "")
    text = grammar.format(value)
    assert grammar.parse(text) == value
    assert grammar.from_block(grammar.to_block(value)) == value


@given(s.vcs_serials(), st.data())
def test_split_blocks_keep_their_serial_and_overlap_their_parent(value: vcs.VcsSerial, data: st.DataObject) -> None:
    parent = vcs.GRAMMAR.to_block(value)
    start = data.draw(st.integers(parent.start, parent.end))
    end = data.draw(st.integers(start, parent.end))
    child = split(parent, start, end).taken
    text = spell_block(child)
    assert parse_block(text) == child
    assert child.overlaps(parent)
    assert (text != spell_block(parent)) == (child != parent)


@given(s.ranges(), s.ranges())
def test_vcs_overlap_across_the_two_forms_is_by_range(a: tuple[int, int], b: tuple[int, int]) -> None:
    current = f"19385-{a[0]}-{a[1]}-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
    older = f"240-{b[0]}-{b[1]}-VCU-003-APX-IN-1-101-01042006-18032007-0"
    x, y = parse_block(current), parse_block(older)
    expected = a[0] <= b[1] and b[0] <= a[1]
    assert x.overlaps(y) == expected
    issues = find_duplicate_blocks([(1, "serial", x), (2, "serial", y)])
    assert bool(issues) == expected


@given(s.itmo_blocks())
def test_itmo_pair_and_single_ids_overlap_when_ranges_meet(value: itmo.ItmoBlockId) -> None:
    pair = itmo.GRAMMAR.to_block(value)
    last_only = itmo.GRAMMAR.parse(value.last_id)
    assert itmo.GRAMMAR.format(last_only) == value.last_id
    assert pair.overlaps(itmo.GRAMMAR.to_block(last_only))
    beyond = dataclasses.replace(last_only, start=value.end + 1, end=value.end + 1)
    assert not pair.overlaps(itmo.GRAMMAR.to_block(beyond))


@given(s.ranges(), s.year)
def test_canonical_ccer_identifier_and_unit_ids_name_the_same_units(rng: tuple[int, int], vintage: int) -> None:
    block = CCER_GRAMMAR.to_block(DomesticSerial(CCER_FORMAT, vintage, *rng))
    first_unit = parse_block(f"CN-CCER/{vintage}/{rng[0]}-{rng[0]}")
    assert block.overlaps(first_unit) and block.contains(first_unit)
    assert not block.overlaps(parse_block(f"CN-CEA/{vintage}/{rng[0]}-{rng[1]}")), "CEA and CCER never overlap"


def test_equal_numbers_in_two_gold_standard_issuances_do_not_overlap() -> None:
    a = parse_block("GS1-1-UG-GS11043-16-2023-30039-1-5000")
    b = parse_block("GS1-1-UG-GS11042-16-2023-30037-1-5000")
    assert (a.start, a.end) == (b.start, b.end) and not a.overlaps(b)


@pytest.mark.parametrize("padded", ["GS01-1-UG-GS11043-16-2023-30039-1-100", "GS1-01-UG-GS11043-16-2023-30039-50-60"])
def test_a_gold_standard_space_spelled_with_leading_zeros_is_refused_not_kept_apart(padded: str) -> None:
    # The registry and unit code name the serial space: padded, the same units would never overlap themselves.
    with pytest.raises(SerialError, match="leading zeros"):
        parse_block(padded)
    batch = map_batch(
        "serial-gold-standard",
        "serial-gold-standard",
        [{"serial": "GS1-1-UG-GS11043-16-2023-30039-1-5000"}, {"serial": padded}],
        adapters=s.built_in_adapters(),
    )
    assert not batch.applied
    assert [(i.position, i.field, i.code) for i in batch.issues] == [(2, "serial", IssueCode.BAD_PATTERN)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("19385-941467431-941467007-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1", "precedes its start"),
        ("19385-0941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1", "leading zeros"),
        ("19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-32012020-31122020-1", "not a valid ddmmyyyy"),
        ("19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-31122020-01012020-1", "vintage end"),
        ("VCS-VCU-262-VER-BR-14-1686-01012017", "follows none"),
        ("GS1-1-KE-GS11603-16-2025-30256-5463-110", "precedes its start"),
        ("CA0001-CHN01-CHN-5-2025..CA0002-CHN01-CHN-9-2025", "differ in their ca"),
        ("CA0001-CHN01-CHN-9-2025..CA0001-CHN01-CHN-5-2025", "precedes the first"),
        ("CA0001-CHN01-CHN-9-2025..CA0001-CHN01-CHN-9-2025", "one unit twice"),
        ("CN-CCER/2025/10-1", "precedes its start"),
        # A vintage is a year of four digits from 1000: 0999 would be spelled back as 999, which no grammar reads.
        ("CN-CEA/0000/1-10", "follows none"),
        ("19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01010999-31120999-1", "a year is 1000 or later"),
        ("CN-CCER/0999/1-10", "follows none"),
        ("GS1-1-KE-GS11603-16-0999-30256-1-110", "follows none"),
        ("CA0001-CHN01-CHN-5-0999", "follows none"),
        ("CAR-ROC-GM-1763-234-560-RE-0999-31144-664 to 11266", "follows none"),
        ("PURO_PR_CORC100+_DS_TEDK4Q_0999_e77fb9b0-e29b-38ba-658f-ae7faf0822d3_302936783-302958376", "follows none"),
        ("643002406555908611000000000001", "follows none"),
    ],
)
def test_malformed_serials_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(SerialError, match=message):
        parse_block(text)


_OTHER_DIGITS = {"full-width": 0xFF10, "Arabic-Indic": 0x0660, "Devanagari": 0x0966}


@pytest.mark.parametrize("script", sorted(_OTHER_DIGITS))
@pytest.mark.parametrize(("grammar", "strategy"), GENERATED, ids=lambda g: getattr(g, "name", ""))
def test_a_digit_of_another_script_is_refused_not_read_as_its_ascii_twin(
    grammar: Any, strategy: st.SearchStrategy[Any], script: str
) -> None:
    @given(strategy, st.data())
    def check(value: Any, data: st.DataObject) -> None:
        text = grammar.format(value)
        places = [i for i, char in enumerate(text) if char.isascii() and char.isdigit()]
        i = data.draw(st.sampled_from(places))
        twin = text[:i] + chr(_OTHER_DIGITS[script] + int(text[i])) + text[i + 1 :]
        with pytest.raises(SerialError):
            grammar.parse(twin)

    check()


@pytest.mark.parametrize(
    "text",
    [
        "CN-CCER/2025/0-" + "9" * 5000,
        "CA0001-CHN01-CHN-" + "9" * 5000 + "-2025",
        "GS1-1-UG-GS1-16-2024-1-1-" + "9" * 5000,
    ],
    ids=["domestic", "ITMO", "Gold Standard"],
)
def test_a_serial_number_of_thousands_of_digits_is_refused_by_its_length(text: str) -> None:
    with pytest.raises(SerialError, match=r"5000 digits: serials lie in 0\.\.9223372036854775806"):
        parse_block(text)


def test_puro_refuses_legacy_gsrn_serials_clearly() -> None:
    with pytest.raises(SerialError, match="GSRN"):
        puro.GRAMMAR.parse("643002406555908611000000000001-643002406555908611000000000100")


def test_a_block_without_its_grammars_attributes_cannot_be_spelled() -> None:
    bare = UnitBlock(vcs.SPACE, 1, 10, 2020)
    with pytest.raises(SerialError, match="lacks the attribute"):
        spell_block(bare)
    assert grammar_for_block(bare) is vcs.GRAMMAR
