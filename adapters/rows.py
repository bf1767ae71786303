"""Mapping results as rows of text in the target's column order: the form the mapping RPCs carry.

`map_rows` gives the same rows, lost fields and notes as `adapters.mapping.map_batch`. For the everyday
case of CCER credits to AEF Actions rows it takes a fast path:

1. a JSON batch is decoded and checked in one pass (`adapters.cn_ccer.read_json_checked`); any other
   batch is parsed record by record as on the full path;
2. the first record goes the full path, which checks the mapping facts and gives every column that does
   not depend on the block, the lost fields and the notes;
3. each record's row is that row with its seven block columns spelled in, and the first record's spelled
   row must equal its full row.

The fast path's rows and notes are spelled when they are read, so a large batch is never held twice
(once as rows of text, once in the caller's form). Anything the fast path cannot vouch for (a bad record,
a duplicate block, a record the facts do not cover) goes the full way, which names every problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, overload

from adapters import cn_ccer
from adapters.aef_columns import BLOCK_FIELDS, Table, columns
from adapters.base import RawRecord
from adapters.context import MappingContext
from adapters.mapping import MappedRecord, map_batch
from adapters.registry import get_adapter
from adapters.serials.base import Digits
from adapters.serials.itmo import first_last_id_formatter
from gateway.domain.blocks import ranges_disjoint
from gateway.domain.mapping import BatchResult, IssueRun, RecordRejected, issue_runs


class Row(NamedTuple):
    """One applied record: its 1-based position, its values as text, and the source fields it lost."""

    position: int
    values: Sequence[str]
    lost_fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MappedRows:
    """A mapped batch as a table of text."""

    columns: tuple[str, ...]
    rows: Sequence[Row]
    """The applied records; on the fast path each row is spelled when it is read."""
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
    """The rows of a `map_batch` result. The columns are every column any row has, in the order they first appear:
    a target may leave out a column a record has no value for (``cn-ccer`` an unstated mitigation type), and the
    first row's columns alone would drop a later row's value without a word."""
    outputs = [(record.position, record.output.row, record.lost_fields) for record in result.records if record.output]
    header = tuple(dict.fromkeys(column for _, row, _ in outputs for column in row))
    rows = [Row(position, [text(row.get(c)) for c in header], lost) for position, row, lost in outputs]
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


# --- the fast path from CCER credits to AEF Actions rows ---------------------------------------------------

_HEADERS = {column.field: column.header for column in columns(Table.ACTIONS)}

_Block = tuple[int, int, int, str]
"""start, end, vintage and the stated mitigation type ("" for none) of one credit's block."""


def _ccer_actions(
    payload: bytes | Sequence[RawRecord],
    source_format: str | None,
    ctx: MappingContext,
    *,
    strict: bool,
    per_record: bool,
) -> MappedRows | None:
    if ctx.ccer_format.per_issuance:
        return None  # refused by the full path: such serials cannot serve as ITMO serials
    checked = None
    if isinstance(payload, bytes | bytearray) and source_format == "json":
        checked = cn_ccer.read_json_checked(bytes(payload), ctx)
    blocks: list[_Block]
    if checked:
        first_raw: RawRecord = checked[0].raw()
        blocks = [(r.block_start, r.block_end, r.vintage, r.stated_mitigation_type) for r in checked]
    else:
        src = get_adapter("cn-ccer")
        try:
            raws = (
                src.decode(bytes(payload), source_format or "") if isinstance(payload, bytes | bytearray) else payload
            )
            credits = [src.parse(raw, ctx) for raw in raws]
        except RecordRejected:
            return None
        if not credits:
            return None
        first_raw = raws[0]
        blocks = [(c.block.start, c.block.end, c.block.vintage, c.block.mitigation_type) for c in credits]
    # Without per-issuance numbering every CCER block is in one serial space.
    if not ranges_disjoint(b[:2] for b in blocks):
        return None
    first = from_batch(
        map_batch("cn-ccer", "aef-actions", [first_raw], strict=strict, per_record=per_record, context=ctx)
    )
    if not first.applied or first.issues or len(first.rows) != 1:
        return None
    rows = _SpelledRows.of(first, blocks, ctx)
    if rows is None or rows[0] != first.rows[0]:
        return None  # a block the facts do not cover, or spelling that drifted from the full path's
    count = len(blocks)
    notes = tuple(IssueRun(1, count, n.field, n.message, n.code) for n in first.notes)
    return MappedRows(first.columns, rows, True, (), notes, count)


class _SpelledRows(Sequence[Row]):
    """The AEF Actions rows of a batch of blocks: one template row with each block's seven columns spelled in.

    Rows are spelled when read; the sequence equals any sequence of equal rows.
    """

    __slots__ = ("_blocks", "_default_mitigation", "_itmo_id", "_lost", "_places", "_spell", "_template")

    def __init__(
        self,
        template: list[str],
        lost: tuple[str, ...],
        blocks: Sequence[_Block],
        places: tuple[int, ...],
        itmo_id: Callable[[Digits, Digits], str],
        spell: Callable[[Digits, Digits, Digits], str],
        default_mitigation: str,
    ) -> None:
        self._template, self._lost, self._blocks, self._places = template, lost, blocks, places
        self._itmo_id, self._spell, self._default_mitigation = itmo_id, spell, default_mitigation

    @classmethod
    def of(cls, first: MappedRows, blocks: Sequence[_Block], ctx: MappingContext) -> _SpelledRows | None:
        """The rows, or None when the batch needs the full path (a block that states no mitigation type where
        the facts give none, or facts the first record's full mapping did not use)."""
        facts = ctx.facts
        if facts.cooperative_approach is None or facts.party_registry is None or facts.first_transferring_party is None:
            return None
        header = first.columns
        wanted = [_HEADERS[field] for field in BLOCK_FIELDS]
        if not set(wanted) <= set(header):
            return None
        default_mitigation = facts.mitigation_type.value if facts.mitigation_type else ""
        if not default_mitigation and not all(b[3] for b in blocks):
            return None
        itmo_id = first_last_id_formatter(
            cooperative_approach=facts.cooperative_approach,
            registry=facts.party_registry,
            party=facts.first_transferring_party,
            style=ctx.first_id_style,
        )
        places = tuple(header.index(h) for h in wanted)
        row = first.rows[0]
        return cls(
            list(row.values), row.lost_fields, blocks, places, itmo_id, ctx.ccer_format.speller(), default_mitigation
        )

    def __len__(self) -> int:
        return len(self._blocks)

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Row]: ...

    def __getitem__(self, index: int | slice) -> Row | Sequence[Row]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(len(self))[index])
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return next(self._spelled(index, self._blocks[index : index + 1]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"_SpelledRows({list(self)!r})"

    def __iter__(self) -> Iterator[Row]:
        return self._spelled(0, self._blocks)

    def _spelled(self, offset: int, blocks: Sequence[_Block]) -> Iterator[Row]:
        """The rows of ``blocks``, the first of which is the batch's record ``offset + 1``.

        This loop is the per-record cost of the mapping RPCs: everything it needs is bound to locals first.
        """
        first_id, last_id, first_unit, last_unit, quantity, mitigation_type, vintage = self._places
        template, lost, itmo_id, spell = self._template, self._lost, self._itmo_id, self._spell
        default_mitigation = self._default_mitigation
        new_tuple = tuple.__new__
        position = offset
        for start, end, year, stated in blocks:
            position += 1
            first, last, digits = str(start), str(end), str(year)
            values = template.copy()
            values[first_id] = itmo_id(first, digits)
            values[last_id] = itmo_id(last, digits)
            values[first_unit] = spell(digits, first, first)
            values[last_unit] = spell(digits, last, last)
            values[quantity] = str(end - start + 1)
            values[mitigation_type] = stated or default_mitigation
            values[vintage] = digits
            yield new_tuple(Row, (position, values, lost))  # Row(...) without its Python-level __new__
