"""JSON and CSV files of flat records with a fixed set of named fields (the domestic schemas)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapters import tabular
from gateway.domain.blocks import MAX_SERIAL, UnitBlock
from gateway.domain.mapping import IssueCode, Problem, RecordRejected


def decode_flat(
    data: bytes, fmt: str, *, adapter: str, fields: Sequence[str], optional: frozenset[str]
) -> list[Mapping[str, object]]:
    """Records from a JSON array or a CSV file whose header names ``fields`` (optional ones may be absent)."""
    if fmt == "json":
        return tabular.read_json_records(data)
    if fmt == "csv":
        header, rows = tabular.read_csv_table(data)
        present = [f for f in fields if f in header or f not in optional]
        tabular.check_header(header, present, exact_order=False)
        return tabular.records_from_table(header, rows)
    raise tabular.unsupported(adapter, fmt, ("json", "csv"))


def encode_flat(rows: Sequence[Mapping[str, object]], fmt: str, *, adapter: str, fields: Sequence[str]) -> bytes:
    """A JSON array or a CSV file with the columns ``fields`` in order."""
    if fmt == "json":
        return tabular.write_json_records(rows)
    if fmt == "csv":
        return tabular.write_csv_table(fields, [[row.get(f) for f in fields] for row in rows])
    raise tabular.unsupported(adapter, fmt, ("json", "csv"))


def block_losses(block: UnitBlock, carried: frozenset[str], prefix: str = "block.") -> list[str]:
    """The block's non-empty fields outside ``carried`` (field names, and ``attributes.<name>``)."""
    lost: list[str] = []
    for name in ("project_id", "methodology_code", "mitigation_type", "registry_reference"):
        if getattr(block, name) and name not in carried:
            lost.append(prefix + name)
    if block.first_transferred and "first_transferred" not in carried:
        lost.append(prefix + "first_transferred")
    if block.space.issuance and "space" not in carried:
        lost.append(prefix + "space.issuance")
    lost.extend(prefix + f"attributes.{k}" for k, _ in block.attributes if f"attributes.{k}" not in carried)
    return lost


def range_ok(problems: list[Problem], start: int | None, end: int | None, start_field: str, end_field: str) -> bool:
    """True when both ends are known, within the serial range and in order; a problem names the end at fault
    (``end_field`` for a reversed range)."""
    if start is None or end is None:
        return False
    past = [(field, n) for field, n in ((start_field, start), (end_field, end)) if n > MAX_SERIAL]
    for field, n in past:
        problems.append(Problem(field, f"{n} is past the largest serial, {MAX_SERIAL}", IssueCode.BAD_VALUE))
    if past:
        return False
    if end < start:
        problems.append(Problem(end_field, f"the block end {end} precedes its start {start}", IssueCode.BLOCK_ORDER))
        return False
    return True


def checked_block(problems: list[Problem], start_field: str, **kwargs: object) -> UnitBlock | None:
    """A block, or a problem naming ``start_field`` when the block arithmetic refuses it."""
    try:
        return UnitBlock(**kwargs)  # type: ignore[arg-type]
    except ValueError as error:
        problems.append(Problem(start_field, str(error), IssueCode.BAD_VALUE))
        return None


def reject_if(problems: list[Problem]) -> None:
    """Raise `RecordRejected` when there are problems."""
    if problems:
        raise RecordRejected(problems)
