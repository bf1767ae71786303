"""Serial range arithmetic, checked against sets of serials."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import ranges

small_range = st.tuples(st.integers(0, 60), st.integers(0, 8)).map(lambda p: (p[0], p[0] + p[1]))
range_lists = st.lists(small_range, max_size=12)


def serials(items: list[tuple[int, int]]) -> set[int]:
    return {s for lo, hi in items for s in range(lo, hi + 1)}


@given(range_lists, range_lists)
def test_difference_keeps_exactly_the_serials_outside_the_removed_ranges(
    kept: list[tuple[int, int]], removed: list[tuple[int, int]]
) -> None:
    result = ranges.difference(kept, removed)
    assert serials(result) == serials(kept) - serials(removed)
    assert result == ranges.normalize(result)


@given(range_lists, range_lists)
def test_intersection_keeps_exactly_the_serials_in_both(
    left: list[tuple[int, int]], right: list[tuple[int, int]]
) -> None:
    result = ranges.intersection(left, right)
    assert serials(result) == serials(left) & serials(right)
    assert result == ranges.normalize(result)


@given(range_lists)
def test_first_overlap_finds_two_ranges_sharing_a_serial_exactly_when_some_do(items: list[tuple[int, int]]) -> None:
    found = ranges.first_overlap(items)
    sharing = any(serials([a]) & serials([b]) for i, a in enumerate(items) for j, b in enumerate(items) if i < j)
    assert (found is not None) == sharing
    if found is not None:
        a, b = found
        assert serials([a]) & serials([b])


@given(range_lists, range_lists)
def test_first_uncovered_names_a_wanted_range_with_a_missing_serial_exactly_when_there_is_one(
    present: list[tuple[int, int]], wanted: list[tuple[int, int]]
) -> None:
    found = ranges.first_uncovered(present, wanted)
    short = [w for w in wanted if serials([w]) - serials(present)]
    if not short:
        assert found is None
    else:
        assert found in short
        first_missing = min(min(serials([w]) - serials(present)) for w in short)
        assert found[0] <= first_missing <= found[1]
