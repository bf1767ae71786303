"""The pure batch-mapping engine: per-record outcomes, loss accounting and all-or-nothing batches.

Mapping is *lossless or explicit* (DESIGN.md section 6):

1. every record's result lists the source fields the target could not carry;
2. in strict mode a record that would lose a field is refused;
3. a batch is all-or-nothing: one refused record and no record is applied, unless the caller asks for
   per-record results;
4. every refusal names the record's position (1-based, in input order), the field path and a stable code.

The engine knows nothing of schemas or files: a caller passes a ``convert`` function that turns one input
item into a `Converted` value or raises `RecordRejected`. Two blocks in one batch that name the same units
(whatever their serial spelling) are refused as duplicates: only integer ranges are compared.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.domain.blocks import UnitBlock

S = TypeVar("S")
T = TypeVar("T")


class IssueCode(enum.StrEnum):
    """Stable codes of mapping problems. Values are part of the operator API: never rename them."""

    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    BAD_VALUE = "bad_value"
    BAD_PATTERN = "bad_pattern"
    BAD_DATE = "bad_date"
    BAD_QUANTITY = "bad_quantity"
    BLOCK_ORDER = "block_order"
    QUANTITY_MISMATCH = "quantity_mismatch"
    INCONSISTENT = "inconsistent"
    DUPLICATE_SERIAL = "duplicate_serial"
    NOT_APPLICABLE = "not_applicable"
    PLATFORM_COLUMN = "platform_column"
    UNSUPPORTED = "unsupported"
    UNCONFIGURED = "unconfigured"
    LOSSY_MAPPING = "lossy_mapping"
    NOMENCLATURE_EXTENSION = "nomenclature_extension"
    MALFORMED_FILE = "malformed_file"
    NO_MAPPING = "no_mapping"


MAX_MESSAGE = 2000
"""Characters a problem's message keeps: one that quotes a value of megabytes keeps its start and its end (what
to do), so that an answer listing problems stays far below what a client reads."""


def bounded_message(message: str) -> str:
    """``message`` kept to `MAX_MESSAGE` characters: its start and its end, the middle cut and marked."""
    if len(message) <= MAX_MESSAGE:
        return message
    head, tail = MAX_MESSAGE * 2 // 3, MAX_MESSAGE // 3 - 60  # room for the mark
    return f"{message[:head]} … ({len(message) - head - tail:,} characters left out) … {message[-tail:]}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one field of a record, before the record's position is known."""

    field: str
    message: str
    code: IssueCode

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", bounded_message(self.message))


class RecordRejected(Exception):
    """A record cannot be mapped. Carries every problem found in it."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in self.problems))

    @classmethod
    def one(cls, field: str, message: str, code: IssueCode) -> RecordRejected:
        """A rejection with a single problem."""
        return cls((Problem(field, message, code),))


@dataclass(frozen=True, slots=True)
class MappingIssue:
    """A problem with a named field of the record at ``position`` (1-based; 0 means the batch as a whole)."""

    position: int
    field: str
    message: str
    code: IssueCode

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", bounded_message(self.message))

    def __str__(self) -> str:
        return str(IssueRun(self.position, self.position, self.field, self.message, self.code))


@dataclass(frozen=True, slots=True)
class IssueRun:
    """One problem shared by the consecutive records ``first`` to ``last`` (1-based; both 0 for the batch).

    A batch of 10,000 CCER credits mapped with a configured extension code carries one nomenclature note per
    record; as runs it is one line that names the records it applies to.
    """

    first: int
    last: int
    field: str
    message: str
    code: IssueCode

    def __str__(self) -> str:
        if not self.first:
            where = "batch"
        elif self.first == self.last:
            where = f"record {self.first}"
        else:
            where = f"records {self.first}-{self.last}"
        on = f", field {self.field!r}" if self.field else ""
        return f"{where}{on}: {self.message} [{self.code}]"


def issue_runs(issues: Iterable[MappingIssue]) -> tuple[IssueRun, ...]:
    """``issues`` (in position order) with each problem that recurs on consecutive records as one run.

    Two issues are the same problem when field, message and code are equal. Runs keep the order of their
    first issue; batch-level issues (position 0) are never merged.
    """
    runs: list[IssueRun] = []
    open_runs: dict[tuple[str, str, IssueCode], int] = {}
    for issue in issues:
        key = (issue.field, issue.message, issue.code)
        index = open_runs.get(key)
        if issue.position and index is not None and runs[index].last + 1 == issue.position:
            run = runs[index]
            runs[index] = IssueRun(run.first, issue.position, run.field, run.message, run.code)
            continue
        if issue.position:
            open_runs[key] = len(runs)
        runs.append(IssueRun(issue.position, issue.position, issue.field, issue.message, issue.code))
    return tuple(runs)


class MappingError(Exception):
    """A refused batch, raised by callers that prefer an exception to a `BatchResult`."""

    def __init__(self, issues: Sequence[MappingIssue]) -> None:
        self.issues = tuple(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"the batch was refused ({len(self.issues)} problem(s)); nothing was applied:\n{lines}")


@dataclass(frozen=True, slots=True)
class Converted(Generic[T]):
    """A successfully converted record.

    ``lost`` names the source fields (in the source schema's words) whose values the target cannot
    carry; ``notes`` are warnings that do not refuse the record (e.g. a nomenclature extension code);
    ``blocks`` are the record's blocks with their field paths, checked for duplicates across the batch.
    """

    record: T
    lost: tuple[str, ...] = ()
    notes: tuple[Problem, ...] = ()
    blocks: tuple[tuple[str, UnitBlock], ...] = ()


@dataclass(frozen=True, slots=True)
class RecordResult(Generic[T]):
    """The outcome for one input record. ``output`` is ``None`` when refused or when the batch was not applied."""

    position: int
    output: T | None
    lost_fields: tuple[str, ...] = ()
    issues: tuple[MappingIssue, ...] = ()
    notes: tuple[MappingIssue, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the record itself has no problem."""
        return not self.issues


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[T]):
    """The outcome of a batch. ``applied`` is False for a refused all-or-nothing batch."""

    source: str
    target: str
    records: tuple[RecordResult[T], ...]
    applied: bool
    strict: bool
    per_record: bool
    batch_issues: tuple[MappingIssue, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no record and no batch-level check failed."""
        return not self.batch_issues and all(r.ok for r in self.records)

    @property
    def issues(self) -> tuple[MappingIssue, ...]:
        """Every problem: batch-level first, then per record in input order."""
        return self.batch_issues + tuple(i for r in self.records for i in r.issues)

    @property
    def notes(self) -> tuple[MappingIssue, ...]:
        """Every warning, in input order."""
        return tuple(n for r in self.records for n in r.notes)

    @property
    def outputs(self) -> tuple[T, ...]:
        """The mapped records that were applied, in input order."""
        return tuple(r.output for r in self.records if r.output is not None)

    @property
    def lost_fields(self) -> tuple[str, ...]:
        """Every source field lost by at least one record, sorted."""
        return tuple(sorted({f for r in self.records for f in r.lost_fields}))

    def raise_for_issues(self) -> None:
        """Raise `MappingError` if anything was refused."""
        if not self.ok:
            raise MappingError(self.issues)


def refused_batch(
    source: str, target: str, issues: Sequence[MappingIssue], *, strict: bool, per_record: bool
) -> BatchResult[T]:
    """A batch refused as a whole (e.g. an unreadable file or a missing column)."""
    return BatchResult(source, target, (), False, strict, per_record, tuple(issues))


def map_records(
    items: Sequence[S],
    convert: Callable[[S], Converted[T]],
    *,
    source: str,
    target: str,
    strict: bool,
    per_record: bool,
    progress: Callable[[int], object] | None = None,
) -> BatchResult[T]:
    """Convert ``items`` one by one and assemble the batch result.

    1. Each item is converted; a `RecordRejected` becomes issues at that item's position.
    2. In strict mode a record with lost fields is refused with `IssueCode.LOSSY_MAPPING`.
    3. Blocks of the records that converted are checked for overlaps; the later record of an overlapping
       pair is refused with `IssueCode.DUPLICATE_SERIAL`.
    4. Without ``per_record``, any refusal leaves every output empty and ``applied`` False.
    """
    converted: list[Converted[T] | None] = []
    problems: list[list[MappingIssue]] = []
    for index, item in enumerate(items):
        position = index + 1
        try:
            result = convert(item)
        except RecordRejected as rejected:
            converted.append(None)
            problems.append([MappingIssue(position, p.field, p.message, p.code) for p in rejected.problems])
        else:
            issues: list[MappingIssue] = []
            if strict and result.lost:
                issues.append(
                    MappingIssue(
                        position,
                        ", ".join(result.lost),
                        "strict mode refuses a lossy mapping: the target cannot carry these fields "
                        f"({', '.join(result.lost)}); map to a schema that carries them, or drop --strict "
                        "to accept the listed loss",
                        IssueCode.LOSSY_MAPPING,
                    )
                )
            converted.append(result)
            problems.append(issues)
        if progress is not None:
            progress(1)

    for position, block_field, message in _duplicates(converted):
        problems[position - 1].append(MappingIssue(position, block_field, message, IssueCode.DUPLICATE_SERIAL))

    refused = any(problems)
    applied = per_record or not refused
    records: list[RecordResult[T]] = []
    for index, (outcome, issues) in enumerate(zip(converted, problems, strict=True)):
        position = index + 1
        if outcome is None:
            records.append(RecordResult(position, None, (), tuple(issues)))
            continue
        output = outcome.record if applied and not issues else None
        notes = tuple(MappingIssue(position, n.field, n.message, n.code) for n in outcome.notes)
        records.append(RecordResult(position, output, outcome.lost, tuple(issues), notes))
    return BatchResult(source, target, tuple(records), applied, strict, per_record)


def _duplicates(converted: Sequence[Converted[T] | None]) -> list[tuple[int, str, str]]:
    blocks = [
        (index + 1, block_field, block)
        for index, result in enumerate(converted)
        if result is not None
        for block_field, block in result.blocks
    ]
    return [(issue.position, issue.field, issue.message) for issue in find_duplicate_blocks(blocks)]


def find_duplicate_blocks(blocks: Iterable[tuple[int, str, UnitBlock]]) -> list[MappingIssue]:
    """Records whose block overlaps a block of an earlier record (by position), one issue per record.

    ``blocks`` holds ``(position, field, block)``. A sweep per serial space keeps the blocks still open at
    each start; only serial spaces and integer ranges are compared, never serial strings.
    """
    entries = sorted(
        (
            ((b.space.unit_kind, b.space.issuing_registry, b.space.issuance), b.start, b.end, position, name, b)
            for position, name, b in blocks
        ),
        key=lambda entry: entry[:4],
    )
    first_clash: dict[int, tuple[int, str, UnitBlock, UnitBlock]] = {}
    active: list[tuple[int, int, str, UnitBlock]] = []
    current_key: tuple[str, str, str] | None = None
    for key, start, end, position, name, block in entries:
        if key != current_key:
            current_key, active = key, []
        active = [a for a in active if a[0] >= start]
        for _, other_position, other_name, other_block in active:
            if other_position == position:
                continue
            if other_position < position:
                later, earlier, field, later_block, earlier_block = position, other_position, name, block, other_block
            else:
                later, earlier, field, later_block, earlier_block = (
                    other_position,
                    position,
                    other_name,
                    other_block,
                    block,
                )
            known = first_clash.get(later)
            if known is None or earlier < known[0]:
                first_clash[later] = (earlier, field, later_block, earlier_block)
        active.append((end, position, name, block))
    return [
        MappingIssue(
            later,
            field,
            f"the block {later_block.describe()} overlaps {earlier_block.describe()} of record {earlier}: "
            "the same units may appear only once in a batch",
            IssueCode.DUPLICATE_SERIAL,
        )
        for later, (earlier, field, later_block, earlier_block) in sorted(first_clash.items())
    ]
