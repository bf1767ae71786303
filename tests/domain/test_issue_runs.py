"""`issue_runs`: a problem that recurs on consecutive records is reported once, naming the records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.mapping import IssueCode, IssueRun, MappingIssue, issue_runs

EXT = ("Underlying unit registry ID", "'CCER' is a configured extension code", IssueCode.NOMENCLATURE_EXTENSION)
MISSING = ("vintage", "is required but missing or empty", IssueCode.MISSING_FIELD)


def issue(position: int, what: tuple[str, str, IssueCode]) -> MappingIssue:
    return MappingIssue(position, *what)


def run(first: int, last: int, what: tuple[str, str, IssueCode]) -> IssueRun:
    return IssueRun(first, last, *what)


CASES = {
    "nothing": ([], []),
    "one record": ([issue(3, EXT)], [run(3, 3, EXT)]),
    "consecutive records": ([issue(p, EXT) for p in range(1, 5)], [run(1, 4, EXT)]),
    "a gap starts a new run": (
        [issue(1, EXT), issue(2, EXT), issue(4, EXT)],
        [run(1, 2, EXT), run(4, 4, EXT)],
    ),
    "two problems per record, interleaved": (
        [issue(p, what) for p in (1, 2, 3) for what in (EXT, MISSING)],
        [run(1, 3, EXT), run(1, 3, MISSING)],
    ),
    "another message is another problem": (
        [issue(1, EXT), issue(2, (EXT[0], "other text", EXT[2])), issue(3, EXT)],
        [run(1, 1, EXT), run(2, 2, (EXT[0], "other text", EXT[2])), run(3, 3, EXT)],
    ),
    "batch-level issues are never merged": (
        [issue(0, MISSING), issue(0, MISSING), issue(1, MISSING)],
        [run(0, 0, MISSING), run(0, 0, MISSING), run(1, 1, MISSING)],
    ),
    "the same problem twice on one record stays twice": (
        [issue(1, EXT), issue(1, EXT), issue(2, EXT)],
        [run(1, 1, EXT), run(1, 2, EXT)],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_issue_runs(name: str) -> None:
    issues, expected = CASES[name]
    assert list(issue_runs(issues)) == expected


@given(st.lists(st.tuples(st.integers(1, 40), st.sampled_from([EXT, MISSING])), max_size=60))
def test_runs_name_exactly_the_records_of_the_issues(found: list[tuple[int, tuple[str, str, IssueCode]]]) -> None:
    issues = [issue(p, what) for p, what in sorted(set(found), key=lambda f: (f[0], f[1][0]))]
    runs = issue_runs(issues)
    expanded = sorted((p, r.field) for r in runs for p in range(r.first, r.last + 1))
    assert expanded == sorted((i.position, i.field) for i in issues)
    for a in runs:
        for b in runs:
            if a is not b and a.field == b.field:
                assert a.last + 1 < b.first or b.last + 1 < a.first  # runs of one problem never touch


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (run(0, 0, MISSING), "batch, field 'vintage': is required but missing or empty [missing_field]"),
        (run(2, 2, MISSING), "record 2, field 'vintage': is required but missing or empty [missing_field]"),
        (run(1, 9, MISSING), "records 1-9, field 'vintage': is required but missing or empty [missing_field]"),
    ],
)
def test_a_run_reads_as_the_records_it_names(value: IssueRun, text: str) -> None:
    assert str(value) == text


@pytest.mark.parametrize("position", [0, 4])
def test_an_issue_reads_as_its_run_of_one(position: int) -> None:
    assert str(issue(position, MISSING)) == str(run(position, position, MISSING))
