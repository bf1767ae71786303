"""Sets of serial ranges: sorted, disjoint ``(start, end)`` pairs with inclusive ends.

The gateway keeps a few such sets per serial space (the ranges it has issued, the ranges of its own issue
that are abroad). These pure functions do their arithmetic; the store keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Range = tuple[int, int]


def normalize(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint ranges covering exactly the serials of ``ranges``; adjacent ranges are joined."""
    merged: list[Range] = []
    for start, end in sorted(ranges):
        if end < start:
            raise ValueError(f"range end {end} precedes its start {start}")
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def covers(ranges: Sequence[Range], start: int, end: int) -> bool:
    """True when every serial of ``[start, end]`` lies in ``ranges``."""
    return not missing(ranges, start, end)


def subtract(ranges: Iterable[Range], start: int, end: int) -> list[Range]:
    """``ranges`` without the serials of ``[start, end]``."""
    left: list[Range] = []
    for lo, hi in normalize(ranges):
        if hi < start or lo > end:
            left.append((lo, hi))
            continue
        if lo < start:
            left.append((lo, start - 1))
        if hi > end:
            left.append((end + 1, hi))
    return left


def missing(ranges: Sequence[Range], start: int, end: int) -> list[Range]:
    """The parts of ``[start, end]`` that ``ranges`` do not cover."""
    gaps: list[Range] = []
    reach = start
    for lo, hi in normalize(ranges):
        if hi < reach:
            continue
        if lo > end:
            break
        if lo > reach:
            gaps.append((reach, lo - 1))
        reach = max(reach, hi + 1)
        if reach > end:
            break
    if reach <= end:
        gaps.append((reach, end))
    return gaps


def first_overlap(ranges: Iterable[Range]) -> tuple[Range, Range] | None:
    """The first two of ``ranges``, in serial order, that share a serial; None when all are disjoint."""
    reach: Range | None = None
    for current in sorted(ranges):
        if reach is not None and current[0] <= reach[1]:
            return reach, current
        if reach is None or current[1] > reach[1]:
            reach = current
    return None


def difference(ranges: Iterable[Range], removed: Iterable[Range]) -> list[Range]:
    """The serials of ``ranges`` outside every range of ``removed``, normalized; one pass over both."""
    cuts = normalize(removed)
    left: list[Range] = []
    first = 0
    for lo, hi in normalize(ranges):
        while first < len(cuts) and cuts[first][1] < lo:
            first += 1
        start = lo
        for cut_lo, cut_hi in cuts[first:]:
            if cut_lo > hi:
                break
            if cut_lo > start:
                left.append((start, cut_lo - 1))
            start = max(start, cut_hi + 1)
        if start <= hi:
            left.append((start, hi))
    return left


def intersection(ranges: Iterable[Range], others: Iterable[Range]) -> list[Range]:
    """The serials in both ``ranges`` and ``others``, normalized; one pass over both."""
    left, right = normalize(ranges), normalize(others)
    both: list[Range] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start, end = max(left[i][0], right[j][0]), min(left[i][1], right[j][1])
        if start <= end:
            both.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return both


def first_uncovered(ranges: Iterable[Range], wanted: Iterable[Range]) -> Range | None:
    """The first range of ``wanted`` (in serial order) with a serial outside ``ranges``; None when ``ranges``
    cover them all."""
    wanted = sorted(wanted)
    gaps = difference(wanted, ranges)
    if not gaps:
        return None
    serial = gaps[0][0]
    return next(w for w in wanted if w[0] <= serial <= w[1])
