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
