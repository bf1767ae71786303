"""Serial-block arithmetic: splits, merges, overlaps and a simulated holdings book (DESIGN.md section 2)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.domain.blocks import (
    MAX_SERIAL,
    BlockError,
    SerialSpace,
    Split,
    UnitBlock,
    find_overlaps,
    merge,
    ranges_disjoint,
    split,
    split_first,
)

# --------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------

CCER = SerialSpace("CCER", "CN-CCER")
SPACES: tuple[SerialSpace, ...] = (
    CCER,
    SerialSpace("CCER", "CN-CCER", "2024-001"),
    SerialSpace("CCER", "CN-CCER", "2024-002"),
    SerialSpace("CEA", "CN-CCER"),
    SerialSpace("CCER", "CN-ETS"),
    SerialSpace("VCS", "VCS"),
)

EDGE_SERIALS = (0, 1, 2, MAX_SERIAL - 2, MAX_SERIAL - 1, MAX_SERIAL)

serials = st.one_of(st.integers(0, MAX_SERIAL), st.sampled_from(EDGE_SERIALS))
spaces = st.sampled_from(SPACES)
short_text = st.text(alphabet="abcXYZ-_ 01", max_size=6)
attribute_pairs = st.dictionaries(short_text, short_text, max_size=3).map(lambda d: tuple(d.items()))


@st.composite
def unit_blocks(
    draw: st.DrawFn,
    space: st.SearchStrategy[SerialSpace] = spaces,
    serial: st.SearchStrategy[int] = serials,
) -> UnitBlock:
    """Any valid block, serials anywhere in 0..MAX_SERIAL (with the edges drawn often)."""
    a, b = draw(serial), draw(serial)
    return UnitBlock(
        space=draw(space),
        start=min(a, b),
        end=max(a, b),
        vintage=draw(st.integers(2013, 2035)),
        project_id=draw(short_text),
        methodology_code=draw(st.sampled_from(["", "CCER-14-001-V01", "CCER-01-002-V01"])),
        mitigation_type=draw(st.sampled_from(["", "Emission reductions", "Removals"])),
        registry_reference=draw(short_text),
        first_transferred=draw(st.booleans()),
        attributes=draw(attribute_pairs),
    )


small_blocks = unit_blocks(space=st.sampled_from(SPACES[:3]), serial=st.integers(0, 60))
"""Blocks crowded into few spaces and a short range, so that overlaps are common."""


@st.composite
def block_and_subrange(draw: st.DrawFn) -> tuple[UnitBlock, int, int]:
    """A block and a range ``[start, end]`` inside it."""
    block = draw(unit_blocks())
    bounds = st.one_of(st.integers(block.start, block.end), st.sampled_from(sorted({block.start, block.end})))
    a, b = draw(bounds), draw(bounds)
    return block, min(a, b), max(a, b)


@st.composite
def block_and_quantity(draw: st.DrawFn) -> tuple[UnitBlock, int]:
    """A block and a quantity in 1..block.quantity."""
    block = draw(unit_blocks())
    quantity = draw(st.one_of(st.integers(1, block.quantity), st.sampled_from(sorted({1, block.quantity}))))
    return block, quantity


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def pieces_of(result: Split) -> list[UnitBlock]:
    return [result.taken, *result.remainder]


def intersect(a: UnitBlock, b: UnitBlock) -> bool:
    """Brute-force overlap, written independently of the code under test."""
    return a.space == b.space and max(a.start, b.start) <= min(a.end, b.end)


def brute_force_overlaps(blocks: Sequence[UnitBlock]) -> Counter[tuple[str, str]]:
    """Every overlapping unordered pair, by a pairwise check, as a multiset of canonical pairs."""
    found: Counter[tuple[str, str]] = Counter()
    for i, a in enumerate(blocks):
        for b in blocks[i + 1 :]:
            if intersect(a, b):
                found[canonical_pair(a, b)] += 1
    return found


def canonical_pair(a: UnitBlock, b: UnitBlock) -> tuple[str, str]:
    ra, rb = repr(a), repr(b)
    return (ra, rb) if ra <= rb else (rb, ra)


def reported_overlaps(blocks: Sequence[UnitBlock]) -> Counter[tuple[str, str]]:
    return Counter(canonical_pair(a, b) for a, b in find_overlaps(blocks))


def assert_same_attributes_explicitly(piece: UnitBlock, original: UnitBlock) -> None:
    assert piece.space == original.space
    assert piece.vintage == original.vintage
    assert piece.project_id == original.project_id
    assert piece.methodology_code == original.methodology_code
    assert piece.mitigation_type == original.mitigation_type
    assert piece.registry_reference == original.registry_reference
    assert piece.first_transferred == original.first_transferred
    assert piece.attributes == original.attributes
    assert piece.same_attributes(original)


def assert_exact_cover(pieces: Sequence[UnitBlock], original: UnitBlock) -> None:
    """The pieces are pairwise disjoint and together cover exactly ``[original.start, original.end]``."""
    for i, a in enumerate(pieces):
        for b in pieces[i + 1 :]:
            assert not intersect(a, b), f"{a.describe()} and {b.describe()} overlap"
            assert not a.overlaps(b)
            assert not b.overlaps(a)
    ordered = sorted(pieces, key=lambda p: p.start)
    assert ordered[0].start == original.start
    assert ordered[-1].end == original.end
    for prev, nxt in itertools.pairwise(ordered):
        assert nxt.start == prev.end + 1, "gap or overlap between consecutive pieces"
    assert sum(p.quantity for p in pieces) == original.quantity
    for piece in pieces:
        assert original.contains(piece)


def unit_map(blocks: Sequence[UnitBlock]) -> dict[tuple[SerialSpace, int], UnitBlock]:
    """Each unit (space, serial) with its block's attributes (range normalised); fails on a double count."""
    units: dict[tuple[SerialSpace, int], UnitBlock] = {}
    for block in blocks:
        for serial in range(block.start, block.end + 1):
            key = (block.space, serial)
            assert key not in units, f"unit {serial} of {block.space} counted twice"
            units[key] = block.with_range(0, 0)
    return units


# --------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------


@given(block_and_subrange())
def test_split_conserves_quantity_attributes_and_range(case: tuple[UnitBlock, int, int]) -> None:
    block, start, end = case
    result = split(block, start, end)

    assert (result.taken.start, result.taken.end) == (start, end)
    assert result.taken.quantity + sum(r.quantity for r in result.remainder) == block.quantity
    for piece in pieces_of(result):
        assert_same_attributes_explicitly(piece, block)
    assert_exact_cover(pieces_of(result), block)
    # The remainder is at most one piece on either side of the taken range, never an empty piece.
    assert len(result.remainder) == (start > block.start) + (end < block.end)


@given(block_and_quantity())
def test_split_first_takes_the_lowest_serials(case: tuple[UnitBlock, int]) -> None:
    block, quantity = case
    result = split_first(block, quantity)

    assert result.taken.start == block.start
    assert result.taken.quantity == quantity
    assert sum(p.quantity for p in pieces_of(result)) == block.quantity
    for piece in pieces_of(result):
        assert_same_attributes_explicitly(piece, block)
    assert_exact_cover(pieces_of(result), block)
    if quantity == block.quantity:
        assert result.remainder == ()
    else:
        (rest,) = result.remainder
        assert (rest.start, rest.end) == (block.start + quantity, block.end)


@given(block_and_subrange(), st.data())
def test_merge_of_split_pieces_returns_the_original(case: tuple[UnitBlock, int, int], data: st.DataObject) -> None:
    block, start, end = case
    pieces = pieces_of(split(block, start, end))
    assert merge(pieces) == [block]
    assert merge(data.draw(st.permutations(pieces), label="order")) == [block]


@given(unit_blocks(), st.data())
def test_merge_of_many_cuts_in_any_order_returns_the_original(block: UnitBlock, data: st.DataObject) -> None:
    pieces = [block]
    for _ in range(data.draw(st.integers(0, 6), label="cuts")):
        i = data.draw(st.integers(0, len(pieces) - 1), label="piece")
        piece = pieces[i]
        a = data.draw(st.integers(piece.start, piece.end), label="a")
        b = data.draw(st.integers(a, piece.end), label="b")
        pieces[i : i + 1] = pieces_of(split(piece, a, b))
    assert_exact_cover(pieces, block)
    shuffled = data.draw(st.permutations(pieces), label="order")
    assert merge(shuffled) == [block]


@given(unit_blocks(), st.data())
def test_merge_refuses_overlapping_input(block: UnitBlock, data: st.DataObject) -> None:
    # A second block in the same space whose range shares at least one unit with ``block``.
    shared = data.draw(st.integers(block.start, block.end), label="shared unit")
    lo = data.draw(st.integers(0, shared), label="lo")
    hi = data.draw(st.integers(shared, MAX_SERIAL), label="hi")
    other_attrs = data.draw(unit_blocks(space=st.just(block.space)), label="attrs")
    other = other_attrs.with_range(lo, hi)
    bystanders = data.draw(st.lists(unit_blocks(space=st.sampled_from(SPACES[3:]))), label="bystanders")
    bystanders = [b for b in bystanders if b.space != block.space]
    blocks = data.draw(st.permutations([block, other, *bystanders]), label="order")

    with pytest.raises(BlockError):
        merge(blocks)


@given(unit_blocks())
def test_merge_refuses_a_duplicate_block(block: UnitBlock) -> None:
    with pytest.raises(BlockError):
        merge([block, block])


@given(st.lists(small_blocks, max_size=8))
def test_merge_of_disjoint_blocks_conserves_units_and_is_maximal(candidates: list[UnitBlock]) -> None:
    # Keep a pairwise-disjoint subset (greedy), then merge it.
    blocks: list[UnitBlock] = []
    for c in candidates:
        if not any(intersect(c, b) for b in blocks):
            blocks.append(c)
    merged = merge(blocks)

    assert unit_map(merged) == unit_map(blocks)
    assert len(merged) <= len(blocks)
    assert merge(merged) == merged
    # Nothing mergeable is left: no two output blocks are adjacent with identical attributes.
    for a in merged:
        for b in merged:
            assert not (a.same_attributes(b) and a.end + 1 == b.start)


@given(st.integers(0, 100), st.integers(1, 50), st.integers(1, 50))
def test_merge_keeps_adjacent_blocks_apart_when_first_transferred_differs(start: int, left: int, right: int) -> None:
    a = UnitBlock(CCER, start, start + left - 1, vintage=2025, first_transferred=False)
    b = UnitBlock(CCER, start + left, start + left + right - 1, vintage=2025, first_transferred=True)
    assert merge([b, a]) == [a, b]
    # With equal attributes the same two ranges do merge.
    assert merge([b, dataclasses.replace(a, first_transferred=True)]) == [b.with_range(a.start, b.end)]


# --------------------------------------------------------------------------------------------------------
# Overlap and containment
# --------------------------------------------------------------------------------------------------------


@given(unit_blocks(), unit_blocks())
def test_overlaps_is_symmetric_and_matches_brute_force(a: UnitBlock, b: UnitBlock) -> None:
    assert a.overlaps(b) == b.overlaps(a)
    assert a.overlaps(b) == intersect(a, b)


@given(small_blocks, small_blocks)
def test_overlaps_on_crowded_blocks_matches_brute_force(a: UnitBlock, b: UnitBlock) -> None:
    assert a.overlaps(b) == b.overlaps(a) == intersect(a, b)


@given(unit_blocks())
def test_a_block_overlaps_and_contains_itself(block: UnitBlock) -> None:
    assert block.overlaps(block)
    assert block.contains(block)


DIFFERENT_SPACES = [
    pytest.param(SerialSpace("CCER", "CN-CCER"), SerialSpace("CEA", "CN-CCER"), id="unit-kind"),
    pytest.param(SerialSpace("CCER", "CN-CCER"), SerialSpace("CCER", "CN-ETS"), id="issuing-registry"),
    pytest.param(SerialSpace("CCER", "CN-CCER", "2024-1"), SerialSpace("CCER", "CN-CCER", "2024-2"), id="issuance"),
    pytest.param(SerialSpace("CCER", "CN-CCER", ""), SerialSpace("CCER", "CN-CCER", "2024-1"), id="no-issuance"),
]


@pytest.mark.parametrize(("space_a", "space_b"), DIFFERENT_SPACES)
@given(block=unit_blocks())
def test_blocks_in_different_serial_spaces_never_overlap(
    space_a: SerialSpace, space_b: SerialSpace, block: UnitBlock
) -> None:
    a = dataclasses.replace(block, space=space_a)
    b = dataclasses.replace(block, space=space_b)  # equal integer range, equal attributes otherwise
    assert not a.overlaps(b)
    assert not b.overlaps(a)
    assert not a.contains(b)
    assert not b.contains(a)
    assert find_overlaps([a, b]) == []
    merged = merge([a, b])
    assert len(merged) == 2
    assert set(merged) == {a, b}
    # The same pair within one space does overlap: the difference is the space alone.
    assert a.overlaps(dataclasses.replace(b, space=space_a))


@given(unit_blocks(), unit_blocks())
def test_contains_implies_overlaps(a: UnitBlock, b: UnitBlock) -> None:
    if a.contains(b):
        assert a.overlaps(b)
        assert b.overlaps(a)


@given(block_and_subrange(), unit_blocks())
def test_a_subrange_is_contained_and_overlaps(case: tuple[UnitBlock, int, int], attrs: UnitBlock) -> None:
    block, start, end = case
    inner = dataclasses.replace(attrs, space=block.space, start=start, end=end)
    assert block.contains(inner)
    assert block.overlaps(inner)
    assert inner.overlaps(block)
    assert inner.contains(block) == (inner.start == block.start and inner.end == block.end)


@given(st.lists(small_blocks, max_size=12))
def test_find_overlaps_matches_a_pairwise_check(blocks: list[UnitBlock]) -> None:
    assert reported_overlaps(blocks) == brute_force_overlaps(blocks)
    for a, b in find_overlaps(blocks):
        assert a.overlaps(b)


@given(st.lists(unit_blocks(), max_size=8))
def test_find_overlaps_matches_a_pairwise_check_over_the_full_serial_range(blocks: list[UnitBlock]) -> None:
    assert reported_overlaps(blocks) == brute_force_overlaps(blocks)


# --------------------------------------------------------------------------------------------------------
# A simulated holdings book
# --------------------------------------------------------------------------------------------------------

BOOK_SPACES = st.sampled_from(SPACES[:4])
BOOK_BASES = st.sampled_from([0, 2**32, MAX_SERIAL - 120])


@st.composite
def book_blocks(draw: st.DrawFn) -> UnitBlock:
    """Short blocks in a few spaces and a few serial neighbourhoods (including the top of the range)."""
    start = draw(BOOK_BASES) + draw(st.integers(0, 100))
    end = min(start + draw(st.integers(0, 25)), MAX_SERIAL)
    return UnitBlock(
        space=draw(BOOK_SPACES),
        start=start,
        end=end,
        vintage=draw(st.sampled_from([2024, 2025])),
        first_transferred=draw(st.booleans()),
        attributes=draw(st.sampled_from([(), (("sdg", "7"),), (("corsia", "yes"), ("sdg", "13"))])),
    )


class HoldingsBook(RuleBasedStateMachine):
    """Blocks held and blocks taken out (pending or gone abroad). Units are conserved and never doubled."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[UnitBlock] = []
        self.out: list[UnitBlock] = []
        self.registered: dict[tuple[SerialSpace, int], UnitBlock] = {}
        """The model: every unit ever registered, with the attributes it was registered with."""

    def all_blocks(self) -> list[UnitBlock]:
        return [*self.held, *self.out]

    @rule(block=book_blocks())
    def register(self, block: UnitBlock) -> None:
        candidate = [*self.all_blocks(), block]
        expected = brute_force_overlaps(candidate)
        assert reported_overlaps(candidate) == expected
        if expected:
            assert any(block.overlaps(b) for b in self.all_blocks())
            return  # the book refuses a double count
        self.held.append(block)
        self.registered.update(unit_map([block]))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def take_range(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.held) - 1), label="held index")
        block = self.held[i]
        start = data.draw(st.integers(block.start, block.end), label="start")
        end = data.draw(st.integers(start, block.end), label="end")
        result = split(block, start, end)
        assert_exact_cover(pieces_of(result), block)
        self.held[i : i + 1] = result.remainder
        self.out.append(result.taken)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def take_first(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.held) - 1), label="held index")
        block = self.held[i]
        quantity = data.draw(st.integers(1, block.quantity), label="quantity")
        result = split_first(block, quantity)
        assert result.taken.quantity == quantity
        self.held[i : i + 1] = result.remainder
        self.out.append(result.taken)

    @precondition(lambda self: bool(self.out))
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        block = self.out.pop(data.draw(st.integers(0, len(self.out) - 1), label="out index"))
        # A block that comes back after it left does not overlap what is held.
        assert find_overlaps([*self.held, block]) == []
        assert not any(block.overlaps(b) for b in self.held)
        self.held.append(block)

    @rule()
    def merge_held(self) -> None:
        before = list(self.held)
        self.held = merge(self.held)
        assert sum(b.quantity for b in self.held) == sum(b.quantity for b in before)
        assert unit_map(self.held) == unit_map(before)
        assert merge(self.held) == self.held

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def merge_refuses_a_double_count(self, data: st.DataObject) -> None:
        block = self.held[data.draw(st.integers(0, len(self.held) - 1), label="held index")]
        with pytest.raises(BlockError):
            merge([*self.held, block])

    @invariant()
    def never_two_overlapping_blocks(self) -> None:
        blocks = self.all_blocks()
        assert find_overlaps(blocks) == []
        assert not brute_force_overlaps(blocks)

    @invariant()
    def units_and_their_attributes_are_conserved(self) -> None:
        blocks = self.all_blocks()
        assert sum(b.quantity for b in blocks) == len(self.registered)
        assert unit_map(blocks) == self.registered


HoldingsBook.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestHoldingsBook = HoldingsBook.TestCase


# --------------------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------------------


def test_a_block_whose_end_precedes_its_start_is_refused() -> None:
    with pytest.raises(BlockError, match="precedes"):
        UnitBlock(CCER, start=11, end=10, vintage=2025)


@pytest.mark.parametrize(
    ("start", "end", "quantity"),
    [
        pytest.param(0, 0, 1, id="zero"),
        pytest.param(MAX_SERIAL, MAX_SERIAL, 1, id="max"),
        pytest.param(0, MAX_SERIAL, 2**63 - 1, id="whole-range"),
        pytest.param(7, 7, 1, id="single-unit"),
    ],
)
def test_serials_at_the_edges_of_the_range_are_accepted(start: int, end: int, quantity: int) -> None:
    block = UnitBlock(CCER, start=start, end=end, vintage=2025)
    assert (block.start, block.end, block.quantity) == (start, end, quantity)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(-1, 5, id="negative-start"),
        pytest.param(0, MAX_SERIAL + 1, id="end-above-max"),
        pytest.param(MAX_SERIAL + 1, MAX_SERIAL + 1, id="both-above-max"),
        pytest.param(-5, -1, id="both-negative"),
    ],
)
def test_serials_outside_the_64_bit_range_are_refused(start: int, end: int) -> None:
    with pytest.raises(BlockError):
        UnitBlock(CCER, start=start, end=end, vintage=2025)


@pytest.mark.parametrize(
    "space",
    [
        pytest.param(SerialSpace("", "CN-CCER"), id="no-unit-kind"),
        pytest.param(SerialSpace("CCER", ""), id="no-issuing-registry"),
    ],
)
def test_a_block_without_unit_kind_or_registry_is_refused(space: SerialSpace) -> None:
    with pytest.raises(BlockError):
        UnitBlock(space, start=1, end=2, vintage=2025)


def test_attributes_are_kept_sorted_by_name() -> None:
    block = UnitBlock(CCER, 1, 2, vintage=2025, attributes=(("z", "1"), ("a", "2")))
    assert block.attributes == (("a", "2"), ("z", "1"))
    assert block == UnitBlock(CCER, 1, 2, vintage=2025, attributes=(("a", "2"), ("z", "1")))


@pytest.mark.parametrize(
    "quantity",
    [pytest.param(0, id="zero"), pytest.param(-1, id="negative"), pytest.param(11, id="one-too-many")],
)
def test_split_first_refuses_a_quantity_out_of_range(quantity: int) -> None:
    block = UnitBlock(CCER, start=100, end=109, vintage=2025)
    with pytest.raises(BlockError, match=r"1\.\.10"):
        split_first(block, quantity)


def test_split_first_of_the_whole_block_leaves_no_remainder() -> None:
    block = UnitBlock(CCER, start=100, end=109, vintage=2025, first_transferred=True)
    assert split_first(block, 10) == Split(taken=block, remainder=())


def test_split_first_at_the_top_of_the_range() -> None:
    block = UnitBlock(CCER, start=MAX_SERIAL - 2, end=MAX_SERIAL, vintage=2025)
    result = split_first(block, 2)
    assert (result.taken.start, result.taken.end) == (MAX_SERIAL - 2, MAX_SERIAL - 1)
    assert [(r.start, r.end) for r in result.remainder] == [(MAX_SERIAL, MAX_SERIAL)]


def test_split_at_both_ends_of_the_range() -> None:
    block = UnitBlock(CCER, start=0, end=MAX_SERIAL, vintage=2025)
    result = split(block, 0, 0)
    assert [(r.start, r.end) for r in result.remainder] == [(1, MAX_SERIAL)]
    result = split(block, MAX_SERIAL, MAX_SERIAL)
    assert [(r.start, r.end) for r in result.remainder] == [(0, MAX_SERIAL - 1)]
    result = split(block, 1, MAX_SERIAL - 1)
    assert [(r.start, r.end) for r in result.remainder] == [(0, 0), (MAX_SERIAL, MAX_SERIAL)]
    assert merge(pieces_of(result)) == [block]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(104, 103, id="end-before-start"),
        pytest.param(99, 105, id="starts-before-block"),
        pytest.param(105, 110, id="ends-after-block"),
        pytest.param(90, 99, id="wholly-below"),
        pytest.param(110, 120, id="wholly-above"),
    ],
)
def test_split_refuses_a_range_not_inside_the_block(start: int, end: int) -> None:
    block = UnitBlock(CCER, start=100, end=109, vintage=2025)
    with pytest.raises(BlockError):
        split(block, start, end)


def test_blocks_sharing_one_unit_overlap_and_adjacent_blocks_do_not() -> None:
    a = UnitBlock(CCER, start=0, end=5, vintage=2025)
    touching = UnitBlock(CCER, start=5, end=9, vintage=2025)
    adjacent = UnitBlock(CCER, start=6, end=9, vintage=2025)
    assert a.overlaps(touching)
    assert touching.overlaps(a)
    assert not a.overlaps(adjacent)
    assert merge([adjacent, a]) == [UnitBlock(CCER, start=0, end=9, vintage=2025)]
    with pytest.raises(BlockError):
        merge([touching, a])


def test_an_attribute_named_twice_is_refused() -> None:
    with pytest.raises(BlockError, match="appears twice"):
        UnitBlock(CCER, 1, 2, vintage=2025, attributes=(("sdg", "7"), ("sdg", "13")))


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)).map(lambda t: (t[0], t[0] + t[1])), max_size=12))
def test_ranges_disjoint_matches_a_pairwise_check(ranges: list[tuple[int, int]]) -> None:
    pairwise = all(
        a_end < b_start or b_end < a_start for (a_start, a_end), (b_start, b_end) in itertools.combinations(ranges, 2)
    )
    assert ranges_disjoint(ranges) is pairwise


@given(unit_blocks(), serials, serials, st.booleans(), short_text, short_text, short_text)
def test_derived_blocks_equal_their_dataclass_replacements(
    block: UnitBlock, a: int, b: int, first: bool, party: str, approach: str, authorization: str
) -> None:
    """The copies made without `dataclasses.replace` (and its checks) are the blocks it makes."""
    start, end = min(a, b), max(a, b)
    assert block.with_range(start, end) == dataclasses.replace(block, start=start, end=end)
    assert block.with_first_transferred(first) == dataclasses.replace(block, first_transferred=first)
    tied = block.with_tie(party, approach, authorization, first_transferred=first)
    assert tied == dataclasses.replace(
        block,
        first_transferring_party=party,
        cooperative_approach=approach,
        authorization_id=authorization,
        first_transferred=first,
    )
    assert hash(tied) == hash(dataclasses.replace(tied))
    with pytest.raises(BlockError, match="precedes"):
        block.with_range(1, 0)
    with pytest.raises(BlockError, match="must lie"):
        block.with_range(start, MAX_SERIAL + 1)
