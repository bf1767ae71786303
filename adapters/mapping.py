"""Mapping a batch from one schema to another, and the fast path from CCER credits to AEF Actions rows.

`map_batch` is pure: it takes bytes (or raw records) and returns a `BatchResult`; it reads and writes no
file. Steps for each record: the source adapter parses it, a bridge (`adapters.bridges`) converts the
canonical record, and the target adapter renders it. The result lists, per record, the source fields the
target could not carry, in the source schema's words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.aef_codec import itmo_block, render_row
from adapters.aef_columns import Table
from adapters.base import Adapter, RawRecord
from adapters.bridges import NoBridge, action_facts, find_bridge, holding_fields
from adapters.context import ItmoSerialSource, MappingContext
from adapters.serials import grammars_with
from gateway.domain.blocks import UnitBlock, ranges_disjoint
from gateway.domain.canonical import AefAction, AefHolding, CcerCredit, MitigationType
from gateway.domain.mapping import (
    BatchResult,
    Converted,
    IssueCode,
    MappingError,
    MappingIssue,
    Problem,
    RecordRejected,
    find_duplicate_blocks,
    map_records,
    refused_batch,
)


@dataclass(frozen=True, slots=True)
class MappedRecord:
    """One mapped record: the target's canonical record and its raw row in the target schema."""

    record: Any
    row: dict[str, object]


def map_batch(
    source: str,
    target: str,
    payload: bytes | Sequence[RawRecord],
    *,
    strict: bool = False,
    per_record: bool = False,
    source_format: str | None = None,
    context: MappingContext | None = None,
    strict_nomenclature: bool = False,
    adapters: Mapping[str, Adapter] | None = None,
    progress: Callable[[int], object] | None = None,
) -> BatchResult[MappedRecord]:
    """Map a batch of ``source`` records to the ``target`` schema.

    ``payload`` is a file's bytes (then ``source_format`` names its format) or already-decoded raw records.
    ``strict`` refuses any record that would lose a field; ``per_record`` applies the records that map even
    if others do not (otherwise the batch is all-or-nothing); ``strict_nomenclature`` refuses AEF values that
    are only extensions of the nomenclature instead of reporting them as notes. ``adapters`` defaults to the
    installed ones (`adapters.registry`).
    """
    ctx = context or MappingContext()
    if adapters is None:
        from adapters.registry import get_adapter

        def lookup(name: str) -> Adapter:
            return get_adapter(name)
    else:

        def lookup(name: str) -> Adapter:
            if name not in adapters:
                raise LookupError(f"no adapter named {name!r} (known: {', '.join(sorted(adapters))})")
            return adapters[name]

    def refuse(field: str, message: str, code: IssueCode) -> BatchResult[MappedRecord]:
        issue = MappingIssue(0, field, message, code)
        return refused_batch(source, target, [issue], strict=strict, per_record=per_record)

    try:
        src, dst = lookup(source), lookup(target)
    except LookupError as error:
        return refuse("schema", str(error), IssueCode.NO_MAPPING)
    try:
        bridge = find_bridge(src.record_type, dst.record_type)
    except NoBridge as error:
        return refuse("schema", f"{source} -> {target}: {error}", IssueCode.NO_MAPPING)
    if isinstance(payload, bytes | bytearray):
        if source_format is None:
            return refuse("format", "the source format is needed to read a file", IssueCode.MALFORMED_FILE)
        try:
            raws: Sequence[RawRecord] = src.decode(bytes(payload), source_format)
        except RecordRejected as rejected:
            issues = [MappingIssue(0, p.field, p.message, p.code) for p in rejected.problems]
            return refused_batch(source, target, issues, strict=strict, per_record=per_record)
    else:
        raws = payload

    def convert(raw: RawRecord) -> Converted[MappedRecord]:
        record = src.parse(raw, ctx)
        try:
            bridged = bridge.convert(record, ctx)
        except RecordRejected as rejected:
            # A bridge names the canonical field; the person mending the file needs the source schema's name.
            raise RecordRejected(
                Problem(_source_field(src, p.field), p.message, p.code) for p in rejected.problems
            ) from None
        rendered = dst.render(bridged.record, ctx)
        lost = list(src.dropped(raw))
        lost += [src.wire_name(path) for path in bridged.lost]
        lost += [src.wire_name(o) for path in rendered.lost if (o := bridge.origin(path)) is not None]
        if strict_nomenclature and rendered.notes:
            raise RecordRejected(
                Problem(n.field, n.message + " (strict nomenclature checking refuses extensions)", n.code)
                for n in rendered.notes
            )
        return Converted(
            MappedRecord(bridged.record, rendered.row),
            tuple(dict.fromkeys(lost)),
            rendered.notes,
            src.blocks(record) + _target_blocks(src, dst, record, bridged.record),
        )

    return map_records(
        raws, convert, source=source, target=target, strict=strict, per_record=per_record, progress=progress
    )


def _target_blocks(src: Adapter, dst: Adapter, record: Any, mapped: Any) -> tuple[tuple[str, UnitBlock], ...]:
    """The units a mapped record names in the target, for the batch's duplicate check, named by the source's field.

    Records that name different units in the source can name the same ones in the target: two Actions rows of
    one ITMO (a first transfer, then a use) become two equal blocks of a serial list or two Holdings rows; and
    with ITMO serials taken from the underlying serials, units of two registries (a CCER block and a VCS block)
    become rows of one action, or holdings, naming the same ITMOs. A record mapped to its own type is the
    source's check alone."""
    if type(mapped) is type(record):
        return ()
    named = dst.blocks(mapped)
    if not named and isinstance(mapped, AefAction) and not isinstance(record, AefHolding):
        block = itmo_block(mapped)
        named = (("First ID", block),) if block is not None else ()
    if not named:
        return ()
    own = src.blocks(record)
    if own:
        field = own[0][0]
    elif isinstance(record, AefAction | AefHolding):
        field = src.wire_name("first_unit_id" if record.first_unit_id else "itmo_first_serial")
    else:
        field = named[0][0]
    return tuple((field, block) for _, block in named)


def _source_field(src: Adapter, field: str) -> str:
    """The source schema's name of a canonical field a bridge refused (a mapping-context setting keeps its own)."""
    return field if field.startswith("context.") else src.wire_name(field)


def encode_outputs(result: BatchResult[MappedRecord], target: Adapter, fmt: str) -> bytes:
    """The applied records of ``result`` as a file in the target schema."""
    return target.encode([m.row for m in result.outputs], fmt)


# --- fast path -------------------------------------------------------------------------------------------

_MITIGATION = {m.value: m for m in MitigationType}


def ccer_to_aef_actions(credits: Sequence[CcerCredit], context: MappingContext) -> list[AefAction]:
    """AEF Actions rows for many CCER credits, all-or-nothing, with low per-record overhead.

    The context's facts are checked once, by building and checking the first row in full (the action-type
    rules, the vocabularies, the configured extension code); after that each record costs one block check and
    one row. Every row equals what `map_batch` produces from ``cn-ccer`` to ``aef-actions``.

    Raises `MappingError` naming each refused record's position and field.
    """
    if not credits:
        return []
    fmt = context.ccer_format
    grammars = grammars_with(context.cea_format, fmt)
    try:
        values, _ = holding_fields(credits[0].block, context, "block.", grammars)
        values.update(action_facts(context))
        template = AefAction.of(**values)
        render_row(Table.ACTIONS, template, context)
    except RecordRejected as rejected:
        raise MappingError([MappingIssue(1, p.field, p.message, p.code) for p in rejected.problems]) from None
    if context.itmo_serials is not ItmoSerialSource.UNDERLYING:  # pragma: no cover - refused by holding_fields
        raise MappingError([MappingIssue(1, "context.itmo_serials", "not configured", IssueCode.UNCONFIGURED)])
    header = template.header
    space = fmt.space()
    prefix = fmt.prefix
    default_mitigation = context.facts.mitigation_type
    issues: list[MappingIssue] = []
    rows: list[AefAction] = []
    append = rows.append
    mitigations = _MITIGATION
    for position, credit in enumerate(credits, start=1):
        block = credit.block
        if block.space is not space and block.space != space:
            issues.append(
                MappingIssue(
                    position,
                    "block",
                    f"{block.describe()} is not in the CCER serial space {space}",
                    IssueCode.INCONSISTENT,
                )
            )
            continue
        stated = block.mitigation_type
        mitigation = mitigations.get(stated) if stated else default_mitigation
        if mitigation is None:
            issues.append(_mitigation_issue(position, stated))
            continue
        start, end, vintage = block.start, block.end, block.vintage
        # Positional arguments, and one shared header: far cheaper than keywords for a frozen dataclass.
        append(
            AefAction(
                header,
                start,
                end,
                f"{prefix}/{vintage}/{start}-{start}",
                f"{prefix}/{vintage}/{end}-{end}",
                end - start + 1,
                mitigation,
                vintage,
            )
        )
    issues.extend(_overlaps(credits, space))
    if issues:
        issues.sort(key=lambda issue: issue.position)
        raise MappingError(issues)
    return rows


def _mitigation_issue(position: int, stated: str) -> MappingIssue:
    if stated:
        return MappingIssue(
            position, "mitigation_type", f"{stated!r} is not an AEF mitigation type", IssueCode.BAD_VALUE
        )
    return MappingIssue(
        position,
        "context.facts.mitigation_type",
        "the record states no mitigation type; set it in the record or in context.facts.mitigation_type",
        IssueCode.UNCONFIGURED,
    )


def _overlaps(credits: Sequence[CcerCredit], space: object) -> list[MappingIssue]:
    """Duplicate detection for one serial space: a sort of integer pairs and one pass."""
    if ranges_disjoint((c.block.start, c.block.end) for c in credits if c.block.space == space):
        return []
    return find_duplicate_blocks((i, "block_start", c.block) for i, c in enumerate(credits, start=1))
