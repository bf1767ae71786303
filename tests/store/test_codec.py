"""The stores' JSON forms: the text written directly is the text ``json.dumps`` writes, and reads back whole."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.records import AdjustmentMethod, Purpose, TransferTerms
from gateway.store import codec
from tests.domain.test_blocks import unit_blocks

# Any text, non-ASCII and control characters included: the direct form must escape them as ``json`` does.
any_text = st.text(max_size=8)


@st.composite
def tied_blocks(draw: st.DrawFn) -> UnitBlock:
    block = draw(unit_blocks())
    return dataclasses.replace(
        block,
        project_id=draw(any_text),
        attributes=tuple(draw(st.dictionaries(any_text, any_text, max_size=3)).items()),
        first_transferring_party=draw(any_text),
        cooperative_approach=draw(any_text),
        authorization_id=draw(any_text),
    )


@given(tied_blocks())
def test_block_json_is_the_sorted_dump_of_its_dict(block: UnitBlock) -> None:
    text = codec.block_to_json(block)
    assert text == json.dumps(codec.block_to_dict(block), sort_keys=True)
    assert codec.block_from_json(text) == block
    assert codec.block_from_dict(json.loads(text)) == block


@given(
    st.lists(tied_blocks(), max_size=4).map(tuple),
    any_text,
    st.sampled_from(list(Purpose)),
    st.sampled_from(list(AdjustmentMethod)),
)
def test_terms_json_is_the_sorted_dump_of_its_fields(
    blocks: tuple[UnitBlock, ...], name: str, purpose: Purpose, method: AdjustmentMethod
) -> None:
    terms = TransferTerms(
        transferring_party="CHN",
        acquiring_party="CHE",
        source_account=name,
        acquiring_account="PH",
        cooperative_approach=name,
        authorization_id="A-1",
        purpose=purpose,
        adjustment_method=method,
        blocks=blocks,
    )
    text = codec.terms_to_json(terms)
    expected = {
        "transferring_party": terms.transferring_party,
        "acquiring_party": terms.acquiring_party,
        "source_account": terms.source_account,
        "acquiring_account": terms.acquiring_account,
        "cooperative_approach": terms.cooperative_approach,
        "authorization_id": terms.authorization_id,
        "purpose": terms.purpose.value,
        "adjustment_method": terms.adjustment_method.value,
        "blocks": [codec.block_to_dict(b) for b in terms.blocks],
    }
    assert text == json.dumps(expected, sort_keys=True)
    assert codec.terms_from_json(text) == terms
    assert codec.terms_from_json(text) is codec.terms_from_json(text)


def test_the_decoded_blocks_and_terms_kept_are_bounded_by_their_text(monkeypatch: pytest.MonkeyPatch) -> None:
    block = UnitBlock(space=SerialSpace("CCER", "CN-CCER"), start=1, end=10, vintage=2025)
    long = dataclasses.replace(block, attributes=(("note", "x" * codec._BLOCK_TEXT_KEPT),))
    short_text, long_text = codec.block_to_json(block), codec.block_to_json(long)
    assert codec.block_from_json(short_text) is codec.block_from_json(short_text)
    # A block too long to keep is decoded each time, equal but not kept.
    assert codec.block_from_json(long_text) == long
    assert codec.block_from_json(long_text) is not codec.block_from_json(long_text)

    monkeypatch.setattr(codec, "_TERMS_TEXT_KEPT", 3_000)
    monkeypatch.setattr(codec, "_terms_read", {})
    monkeypatch.setattr(codec, "_terms_length", 0)

    def terms(count: int, name: str) -> TransferTerms:
        return TransferTerms(
            transferring_party="CHN",
            acquiring_party="CHE",
            source_account=name,
            acquiring_account="PH",
            cooperative_approach="CA",
            authorization_id="A-1",
            purpose=Purpose.NDC,
            adjustment_method=AdjustmentMethod.TRAJECTORY,
            blocks=tuple(block.with_range(i * 10 + 1, i * 10 + 10) for i in range(count)),
        )

    for i in range(10):
        codec.terms_to_json(terms(2, f"acct-{i}"))
        assert codec._terms_length == sum(len(text) for text in codec._terms_read) <= 3_000
    assert 0 < len(codec._terms_read) < 10
    big = codec.terms_to_json(terms(20, "big"))  # longer than everything kept together: never kept
    assert len(big) > 3_000 and big not in codec._terms_read
    assert codec.terms_from_json(big) == terms(20, "big")
    assert codec._terms_length <= 3_000


def test_a_block_just_stored_is_read_back_as_itself_and_the_kept_blocks_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    space = SerialSpace("CCER", "CN-CCER", "")
    stored = UnitBlock(space, 7, 9, vintage=2025, project_id="P-kept")
    text = codec.stored_block_text(stored)
    assert text == codec.block_to_json(stored)
    decoded: list[str] = []
    real = codec._decode_block

    def counted(text: str) -> UnitBlock:
        decoded.append(text)
        return real(text)

    monkeypatch.setattr(codec, "_decode_block", counted)
    assert codec.block_from_json(text) is stored and decoded == []
    for i in range(codec._BLOCKS_KEPT):  # as many other blocks: the first one kept is the oldest now
        codec.stored_block_text(UnitBlock(space, 10 + 2 * i, 10 + 2 * i, vintage=2025, project_id="P-kept"))
    assert codec.block_from_json(text) == stored and decoded == [text]
    huge = dataclasses.replace(stored, attributes=(("note", "x" * codec._BLOCK_TEXT_KEPT),))
    huge_text = codec.stored_block_text(huge)
    assert codec.block_from_json(huge_text) == huge and decoded[-1] == huge_text
    assert len(codec._blocks_read) == codec._BLOCKS_KEPT


def test_a_block_written_again_or_another_in_its_place_gets_its_own_text() -> None:
    space = SerialSpace("CCER", "CN-CCER")
    kept = UnitBlock(space, 1, 5, 2021, project_id="P-1")
    assert codec.block_to_json(kept) is codec.block_to_json(kept)
    # Blocks made and dropped one after another reuse each other's memory, and so their identities: each must
    # still be written as itself, well past what the writer keeps.
    for serial in range(3 * codec._TEXTS_KEPT):
        block = UnitBlock(space, serial, serial, 2021, project_id=f"P-{serial}")
        assert codec.block_to_json(block) == json.dumps(codec.block_to_dict(block), sort_keys=True)
        del block
    assert codec.block_to_json(kept) == json.dumps(codec.block_to_dict(kept), sort_keys=True)
