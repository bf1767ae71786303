"""Conversions between canonical record types, with the source fields each one cannot carry.

A bridge takes a source record and the `MappingContext` and returns the target record plus the source
fields (canonical paths) lost on the way. Facts a target needs and the source lacks come from the context;
an unset fact refuses the record with a problem naming ``context.facts.<fact>`` (no default is invented).

Bridges offered (besides identity):

* any record with a block (``CcerCredit``, ``CeaAllowance``, ``RegistryUnit``, ``UnitBlock``) to
  ``UnitBlock``, ``RegistryUnit``, ``AefAction`` and ``AefHolding``;
* ``AefAction`` to ``AefHolding`` (the action columns are lost) and back (the context supplies them);
* ``AefAction`` and ``AefHolding`` to ``UnitBlock`` and ``RegistryUnit`` (the underlying block when the
  row names underlying units, the ITMO block otherwise).

There is no bridge *to* ``CcerCredit`` or ``CeaAllowance`` from another type: no other schema carries the
project and holder facts those records require, and none is invented.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adapters import vocab
from adapters.aef_codec import itmo_block_id
from adapters.context import ItmoSerialSource, MappingContext
from adapters.flat import block_losses
from adapters.serials import Grammar, SerialError, grammar_for_block, grammars_with, parse_block
from adapters.serials import itmo as itmo_serials
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import (
    ACTION_FIELDS,
    AefAction,
    AefHolding,
    CcerCredit,
    CeaAllowance,
    Metric,
    MitigationType,
    RegistryUnit,
)
from gateway.domain.mapping import IssueCode, Problem, RecordRejected


@dataclass(frozen=True, slots=True)
class Bridged:
    """A converted record and the source fields (canonical paths) it could not carry."""

    record: Any
    lost: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Bridge:
    """A conversion from one canonical type to another.

    ``origin`` maps a path of the target record to the source path it came from (None for facts from the
    context), so that what a target schema cannot write is reported in the source's words.
    """

    source: type[Any]
    target: type[Any]
    convert: Callable[[Any, MappingContext], Bridged]
    origin: Callable[[str], str | None]


class NoBridge(LookupError):
    """No conversion exists between two canonical types."""


# --- records that hold a block --------------------------------------------------------------------------

_EXTRAS: dict[type[Any], tuple[str, ...]] = {
    UnitBlock: (),
    CcerCredit: (
        "project_name",
        "project_type_code",
        "province",
        "monitoring_period_start",
        "monitoring_period_end",
        "certified_quantity",
    ),
    CeaAllowance: ("holder_account", "compliance_entity", "sector"),
    RegistryUnit: (
        "unit_type",
        "status",
        "status_reason",
        "status_date",
        "retirement_detail",
        "retirement_beneficiary",
        "retirement_beneficiary_id",
        "link",
        "metric",
        "current_owner",
        "itmo_reference_id",
        "marketplace",
        "marketplace_link",
        "marketplace_identifier",
        "record_id",
        "org_uid",
        "issuance_record_id",
    ),
}
BLOCK_TYPES = tuple(_EXTRAS)


def _block(record: Any) -> UnitBlock:
    block: UnitBlock = record if isinstance(record, UnitBlock) else record.block
    return block


def _prefix(kind: type[Any]) -> str:
    return "" if kind is UnitBlock else "block."


def _extras_lost(record: Any) -> list[str]:
    return [name for name in _EXTRAS[type(record)] if getattr(record, name) not in ("", None)]


def _block_lost(block: UnitBlock, carried: frozenset[str], prefix: str) -> list[str]:
    return block_losses(block, carried, prefix)


def _to_block(record: Any, ctx: MappingContext) -> Bridged:
    return Bridged(_block(record), tuple(_extras_lost(record)))


def _to_unit(record: Any, ctx: MappingContext) -> Bridged:
    return Bridged(RegistryUnit(block=_block(record)), tuple(_extras_lost(record)))


# --- AEF rows from blocks ----------------------------------------------------------------------------------

_ACTION_ONLY = (
    "action_date",
    "action_type",
    "action_subtype",
    "transferring_party",
    "acquiring_party",
    "purpose",
    "using_party",
    "using_entity",
    "ndc_year_of_use",
    "additional_information",
)
_HOLDING_FACTS = (
    "cooperative_approach",
    "authorization_id",
    "first_transferring_party",
    "party_registry",
    "gwp_values",
)


def _fact(ctx: MappingContext, name: str, problems: list[Problem]) -> Any:
    value = getattr(ctx.facts, name)
    if value is None:
        problems.append(
            Problem(
                f"context.facts.{name}",
                f"the source records do not carry {name.replace('_', ' ')}; set it in the mapping context",
                IssueCode.UNCONFIGURED,
            )
        )
    return value


def underlying_code(block: UnitBlock, ctx: MappingContext) -> tuple[str | None, Problem | None]:
    """The AEF underlying unit registry ID of ``block``'s registry, or why there is none."""
    registry = block.space.issuing_registry
    code = vocab.BUILT_IN_UNDERLYING_CODES.get(registry) or ctx.extension_code(registry)
    if code is None:
        return None, Problem(
            f"context.extension_codes.{registry}",
            f"the AEF nomenclature has no underlying unit registry ID for {registry}; configure an extension code "
            "for it (it will be reported as a nomenclature extension)",
            IssueCode.UNCONFIGURED,
        )
    return code, None


def _mitigation(block: UnitBlock, ctx: MappingContext, prefix: str, problems: list[Problem]) -> MitigationType | None:
    if block.mitigation_type:
        try:
            return MitigationType(block.mitigation_type)
        except ValueError:
            problems.append(
                Problem(
                    prefix + "mitigation_type",
                    f"{block.mitigation_type!r} is not an AEF mitigation type",
                    IssueCode.BAD_VALUE,
                )
            )
            return None
    if ctx.facts.mitigation_type is None:
        problems.append(
            Problem(
                "context.facts.mitigation_type",
                "the record states no mitigation type; state it in the record or set it in the mapping context",
                IssueCode.UNCONFIGURED,
            )
        )
    return ctx.facts.mitigation_type


def holding_fields(
    block: UnitBlock, ctx: MappingContext, prefix: str, grammars: Sequence[Grammar]
) -> tuple[dict[str, Any], list[str]]:
    """The block columns of an AEF row for ``block``, and the block fields they cannot carry."""
    problems: list[Problem] = []
    values: dict[str, Any] = {name: _fact(ctx, name, problems) for name in _HOLDING_FACTS}
    carried: set[str] = {"mitigation_type"}
    if itmo_serials.GRAMMAR.handles(block):
        ids = itmo_serials.GRAMMAR.from_block(block) if _has_itmo_attrs(block) else None
        if ids is None:
            raise RecordRejected.one(
                prefix + "attributes",
                "an ITMO block must carry its cooperative approach and first transferring Party",
                IssueCode.MISSING_FIELD,
            )
        for name, have in (
            ("cooperative_approach", ids.cooperative_approach),
            ("party_registry", ids.registry),
            ("first_transferring_party", ids.first_transferring_party),
        ):
            given = getattr(ctx.facts, name)
            if given is not None and given != have:
                problems.append(
                    Problem(
                        f"context.facts.{name}",
                        f"{given!r} contradicts the ITMO identifier's {have!r}",
                        IssueCode.INCONSISTENT,
                    )
                )
            values[name] = have
        problems[:] = [
            p
            for p in problems
            if p.code is not IssueCode.UNCONFIGURED
            or p.field.rsplit(".", 1)[1] not in ("cooperative_approach", "party_registry", "first_transferring_party")
        ]
        values.update(underlying_registry="", first_unit_id="", last_unit_id="")
        carried |= itmo_serials.GRAMMAR.carried(block)
    else:
        if ctx.itmo_serials is not ItmoSerialSource.UNDERLYING:
            problems.append(
                Problem(
                    "context.itmo_serials",
                    "the ITMO serials (First ID / Last ID) of these units "
                    "are not known: set itmo_serials to 'underlying' to use the underlying serials",
                    IssueCode.UNCONFIGURED,
                )
            )
        elif block.space.issuance:
            problems.append(
                Problem(
                    prefix + "space.issuance",
                    f"{block.describe()} is numbered per issuance, so its serials cannot serve as ITMO serials",
                    IssueCode.UNSUPPORTED,
                )
            )
        code, missing = underlying_code(block, ctx)
        if missing:
            problems.append(missing)
        try:
            grammar = grammar_for_block(block, grammars)
            first = str(grammar.format(grammar.from_block(block.with_range(block.start, block.start))))
            last = str(grammar.format(grammar.from_block(block.with_range(block.end, block.end))))
            carried |= grammar.carried(block)
        except SerialError as error:
            problems.append(Problem(prefix + "space", str(error), IssueCode.NO_MAPPING))
            first = last = ""
        values.update(underlying_registry=code or "", first_unit_id=first, last_unit_id=last)
    if problems:
        raise RecordRejected(problems)
    values.update(
        itmo_first_serial=block.start,
        itmo_last_serial=block.end,
        metric=Metric.GHG,
        quantity=block.quantity,
        vintage=block.vintage,
        mitigation_type=_mitigation(block, ctx, prefix, problems),
    )
    if problems:
        raise RecordRejected(problems)
    return values, _block_lost(block, frozenset(carried), prefix)


def _has_itmo_attrs(block: UnitBlock) -> bool:
    names = {k for k, _ in block.attributes}
    return {"itmo.cooperative_approach", "itmo.first_transferring_party"} <= names


def action_facts(ctx: MappingContext) -> dict[str, Any]:
    """The action columns from the context (unset optional facts become blanks)."""
    problems: list[Problem] = []
    facts = ctx.facts
    values = {name: _fact(ctx, name, problems) for name in ("action_date", "action_type", "action_subtype")}
    if problems:
        raise RecordRejected(problems)
    values.update(
        transferring_party=facts.transferring_party or "",
        acquiring_party=facts.acquiring_party or "",
        purpose=facts.purpose,
        using_party=facts.using_party or "",
        using_entity=facts.using_entity or "",
        ndc_year_of_use=facts.ndc_year_of_use,
        additional_information=facts.additional_information or "",
    )
    return values


def _to_holding(record: Any, ctx: MappingContext) -> Bridged:
    grammars = grammars_with(ctx.cea_format, ctx.ccer_format)
    values, lost = holding_fields(_block(record), ctx, _prefix(type(record)), grammars)
    return Bridged(AefHolding(**values), tuple(_extras_lost(record) + lost))


def _to_action(record: Any, ctx: MappingContext) -> Bridged:
    grammars = grammars_with(ctx.cea_format, ctx.ccer_format)
    values, lost = holding_fields(_block(record), ctx, _prefix(type(record)), grammars)
    values.update(action_facts(ctx))
    return Bridged(AefAction.of(**values), tuple(_extras_lost(record) + lost))


# --- AEF rows to each other and to blocks ------------------------------------------------------------------

_HOLDING_NAMES = tuple(f.name for f in dataclasses.fields(AefHolding))


def _action_to_holding(record: AefAction, ctx: MappingContext) -> Bridged:
    lost = [name for name in _ACTION_ONLY if getattr(record, name) not in ("", None)]
    return Bridged(AefHolding(**{n: getattr(record, n) for n in _HOLDING_NAMES}), tuple(lost))


def _holding_to_action(record: AefHolding, ctx: MappingContext) -> Bridged:
    values = {n: getattr(record, n) for n in _HOLDING_NAMES}
    values.update(action_facts(ctx))
    return Bridged(AefAction.of(**values))


def row_block(record: AefAction | AefHolding, ctx: MappingContext) -> UnitBlock:
    """The block an AEF row names: its underlying units if stated, else its ITMOs."""
    grammars = grammars_with(ctx.cea_format, ctx.ccer_format)
    if not record.first_unit_id:
        try:
            itmo_block = itmo_serials.GRAMMAR.to_block(itmo_block_id(record))
        except SerialError as error:
            raise RecordRejected.one("itmo_first_serial", str(error), IssueCode.BAD_VALUE) from None
        return dataclasses.replace(itmo_block, mitigation_type=record.mitigation_type.value)
    ends: list[UnitBlock] = []
    problems: list[Problem] = []
    for name, text in (("first_unit_id", record.first_unit_id), ("last_unit_id", record.last_unit_id)):
        try:
            ends.append(parse_block(text, vintage=record.vintage, grammars=grammars))
        except SerialError as error:
            problems.append(Problem(name, str(error), IssueCode.BAD_PATTERN))
    if problems:
        raise RecordRejected(problems)
    first, last = ends
    if not first.same_attributes(last) or last.end < first.start:
        raise RecordRejected.one(
            "last_unit_id",
            f"{record.last_unit_id!r} is not in the same issuance after {record.first_unit_id!r}",
            IssueCode.INCONSISTENT,
        )
    block = first.with_range(first.start, last.end)
    if block.quantity != record.quantity:
        raise RecordRejected.one(
            "quantity",
            f"{record.quantity} differs from the {block.quantity} units from "
            f"{record.first_unit_id} to {record.last_unit_id}",
            IssueCode.QUANTITY_MISMATCH,
        )
    code, missing = underlying_code(block, ctx)
    if missing is not None:
        raise RecordRejected((missing,))
    if code != record.underlying_registry:
        raise RecordRejected.one(
            "underlying_registry",
            f"{record.underlying_registry!r} is not the underlying unit registry ID of the units the row names:"
            f" {record.first_unit_id} is a unit of {block.space.issuing_registry}, whose ID is {code!r}",
            IssueCode.INCONSISTENT,
        )
    return dataclasses.replace(block, mitigation_type=record.mitigation_type.value)


def _row_lost(record: Any, keep: tuple[str, ...]) -> tuple[str, ...]:
    names = ACTION_FIELDS if isinstance(record, AefAction) else tuple(f.name for f in dataclasses.fields(record))
    return tuple(n for n in names if n not in keep and getattr(record, n) not in ("", None, ()))


_ROW_KEPT = ("first_unit_id", "last_unit_id", "quantity", "vintage", "mitigation_type", "metric")
_ITMO_KEPT = (
    "cooperative_approach",
    "first_transferring_party",
    "party_registry",
    "itmo_first_serial",
    "itmo_last_serial",
    "quantity",
    "vintage",
    "mitigation_type",
    "metric",
)


def _row_to_block(record: Any, ctx: MappingContext) -> Bridged:
    block = row_block(record, ctx)
    return Bridged(block, _row_lost(record, _ROW_KEPT if record.first_unit_id else _ITMO_KEPT))


def _row_to_unit(record: Any, ctx: MappingContext) -> Bridged:
    bridged = _row_to_block(record, ctx)
    return Bridged(RegistryUnit(block=bridged.record), bridged.lost)


# --- the table ---------------------------------------------------------------------------------------------


def _same(path: str) -> str | None:
    return path


def _from_block_origin(kind: type[Any]) -> Callable[[str], str | None]:
    prefix = _prefix(kind)

    def origin(path: str) -> str | None:
        if kind is UnitBlock:
            return path.removeprefix("block.")
        return path if path.startswith("block.") else prefix + path

    return origin


def _no_origin(path: str) -> str | None:
    return None


def _row_origin(path: str) -> str | None:
    """The AEF row field a block field came from, where the block holds one of the row's own values (the rest of
    the block is spelled by the row's unit IDs, or its ITMO IDs, which the row keeps whole)."""
    return "mitigation_type" if path.removeprefix("block.") == "mitigation_type" else None


def _identity(record: Any, ctx: MappingContext) -> Bridged:
    return Bridged(record)


def _bridges() -> dict[tuple[type[Any], type[Any]], Bridge]:
    table: dict[tuple[type[Any], type[Any]], Bridge] = {}
    for kind in BLOCK_TYPES:
        origin = _from_block_origin(kind)
        if kind is not UnitBlock:
            table[kind, UnitBlock] = Bridge(kind, UnitBlock, _to_block, origin)
        if kind is not RegistryUnit:
            table[kind, RegistryUnit] = Bridge(kind, RegistryUnit, _to_unit, origin)
        table[kind, AefHolding] = Bridge(kind, AefHolding, _to_holding, _no_origin)
        table[kind, AefAction] = Bridge(kind, AefAction, _to_action, _no_origin)
    table[AefAction, AefHolding] = Bridge(AefAction, AefHolding, _action_to_holding, _same)
    table[AefHolding, AefAction] = Bridge(AefHolding, AefAction, _holding_to_action, _same)
    for kind in (AefAction, AefHolding):
        table[kind, UnitBlock] = Bridge(kind, UnitBlock, _row_to_block, _row_origin)
        table[kind, RegistryUnit] = Bridge(kind, RegistryUnit, _row_to_unit, _row_origin)
    return table


BRIDGES = _bridges()


def find_bridge(source: type[Any], target: type[Any]) -> Bridge:
    """The bridge from ``source`` to ``target`` records (identity for equal types)."""
    if source is target:
        return Bridge(source, target, _identity, _same)
    try:
        return BRIDGES[source, target]
    except KeyError:
        raise NoBridge(
            f"there is no mapping from {source.__name__} records to {target.__name__} records"
            + (
                ": no other schema carries the facts those records require"
                if target in (CcerCredit, CeaAllowance)
                else ""
            )
        ) from None
