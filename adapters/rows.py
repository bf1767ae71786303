"""Mapping results as rows of text in the target's column order: the form the mapping RPCs carry.

`map_rows` gives the same rows, lost fields and notes as `adapters.mapping.map_batch`. For the everyday
case of CCER credits to AEF Actions rows it takes a fast path: the columns that do not depend on the
block are rendered and checked once, from the first record through the full path, and each further record
only renders its seven block columns. Anything the fast path cannot vouch for goes the full way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adapters.aef_codec import _render_value
from adapters.aef_columns import Table, columns
from adapters.base import RawRecord
from adapters.context import MappingContext
from adapters.mapping import MappedRecord, ccer_to_aef_actions, map_batch
from adapters.registry import get_adapter
from gateway.domain.mapping import BatchResult, IssueRun, MappingError, RecordRejected, issue_runs

_BLOCK_FIELDS = frozenset(
    {"itmo_first_serial", "itmo_last_serial", "first_unit_id", "last_unit_id", "quantity", "mitigation_type", "vintage"}
)


@dataclass(frozen=True, slots=True)
class Row:
    """One applied record: its 1-based position, its values as text, and the source fields it lost."""

    position: int
    values: tuple[str, ...]
    lost_fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MappedRows:
    """A mapped batch as a table of text."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    applied: bool
    issues: tuple[IssueRun, ...]
    """Why records were refused; a problem shared by consecutive records is one run."""
    notes: tuple[IssueRun, ...]
    """Warnings that refuse nothing (e.g. a nomenclature extension code), as runs."""
    records: int
    """How many source records the batch held."""


def text(value: object) -> str:
    """A cell as text: empty for no value."""
    return "" if value is None else str(value)


def from_batch(result: BatchResult[MappedRecord]) -> MappedRows:
    """The rows of a `map_batch` result."""
    header: tuple[str, ...] = ()
    rows = []
    for record in result.records:
        if record.output is None:
            continue
        if not header:
            header = tuple(record.output.row)
        rows.append(Row(record.position, tuple(text(record.output.row.get(c)) for c in header), record.lost_fields))
    return MappedRows(
        header, tuple(rows), result.applied, issue_runs(result.issues), issue_runs(result.notes), len(result.records)
    )


def map_rows(
    source: str,
    target: str,
    payload: bytes | Sequence[RawRecord],
    *,
    strict: bool = False,
    per_record: bool = False,
    source_format: str | None = None,
    context: MappingContext | None = None,
    strict_nomenclature: bool = False,
) -> MappedRows:
    """Map a batch, as `map_batch` does, and return it as rows of text."""
    ctx = context or MappingContext()
    if source == "cn-ccer" and target == "aef-actions" and not strict_nomenclature:
        fast = _ccer_actions(payload, source_format, ctx, strict=strict, per_record=per_record)
        if fast is not None:
            return fast
    return from_batch(
        map_batch(
            source,
            target,
            payload,
            strict=strict,
            per_record=per_record,
            source_format=source_format,
            context=ctx,
            strict_nomenclature=strict_nomenclature,
        )
    )


def _ccer_actions(
    payload: bytes | Sequence[RawRecord],
    source_format: str | None,
    ctx: MappingContext,
    *,
    strict: bool,
    per_record: bool,
) -> MappedRows | None:
    src = get_adapter("cn-ccer")
    try:
        raws = src.decode(bytes(payload), source_format or "") if isinstance(payload, bytes | bytearray) else payload
        credits = [src.parse(raw, ctx) for raw in raws]
    except RecordRejected:
        return None
    if not credits:
        return None
    first = from_batch(map_batch("cn-ccer", "aef-actions", raws[:1], strict=strict, per_record=per_record, context=ctx))
    if not first.applied or first.issues or len(first.rows) != 1:
        return None
    try:
        actions = ccer_to_aef_actions(credits, ctx)
    except MappingError:
        return None
    header = first.columns
    template = list(first.rows[0].values)
    lost = first.rows[0].lost_fields
    by_header = {c.header: c for c in columns(Table.ACTIONS)}
    block_columns = [(i, by_header[h]) for i, h in enumerate(header) if by_header[h].field in _BLOCK_FIELDS]
    rows = []
    for position, action in enumerate(actions, start=1):
        values = template.copy()
        for index, column in block_columns:
            values[index] = text(_render_value(column, action, ctx, False))
        rows.append(Row(position, tuple(values), lost))
    notes = tuple(IssueRun(1, len(rows), n.field, n.message, n.code) for n in first.notes)
    return MappedRows(header, tuple(rows), True, (), notes, len(rows))
