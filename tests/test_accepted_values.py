"""The README's "Accepted values" table lists exactly the values the code accepts, field by field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from carbon_gateway.v1 import partner_pb2, records_pb2
from gateway.domain.access import Role as CallerRole
from gateway.domain.adjustments import AveragingDivisor
from gateway.domain.canonical import AefSector, Metric, MitigationType
from gateway.domain.ledger import CancellationSubtype, Retirement
from gateway.domain.protocol import Verdict
from gateway.domain.records import AccountType, AdjustmentMethod, FirstTransferDefinition, Purpose
from gateway.usecases.retiring import OIMP_USE_PURPOSES
from signing import Algorithm

README = Path(__file__).resolve().parent.parent / "README.md"


def _proto_names(enum: object, unspecified: str | None) -> set[str]:
    names = set(enum.keys())  # type: ignore[attr-defined]
    return names - {unspecified} if unspecified else names


def _values(members: Iterable[object]) -> set[str]:
    return {str(m) for m in members}


EXPECTED: dict[str, set[str]] = {
    "account_type": _values(AccountType),
    "purposes, purpose": _values(Purpose),
    "first_transfer_definition": _values(FirstTransferDefinition),
    "metric": {Metric.GHG.value},  # non-GHG is refused: out of scope
    "sectors": _values(AefSector),
    "mitigation_type": _values(MitigationType),
    "adjustment_method": _values(AdjustmentMethod),
    "averaging_divisor": _values(AveragingDivisor),
    "action": {Retirement.USE_NDC.value, Retirement.USE_OIMP.value},
    "purpose of a use for other purposes": _values(OIMP_USE_PURPOSES),
    "subtype": _values(CancellationSubtype),
    "verdict": _values(Verdict),
    "role": {role.value for role in CallerRole},
    "--algorithm": _values(Algorithm),
    "state": _proto_names(records_pb2.TransferState, "TRANSFER_STATE_UNSPECIFIED"),
    "status": _proto_names(partner_pb2.ReconciliationStatus, "RECONCILIATION_STATUS_UNSPECIFIED"),
    "kind": _proto_names(partner_pb2.DifferenceKind, "DIFFERENCE_KIND_UNSPECIFIED"),
}


def documented() -> dict[str, list[str]]:
    """The table's rows: the field (backticks removed) and the values listed, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Accepted values")
    section = text[start : text.index("\n## ", start + 1)]
    rows = {}
    for field, _where, values in re.findall(r"^\| (.+?) \| (.+?) \| (.+?) \|$", section, flags=re.MULTILINE):
        if field in ("field", "---"):
            continue
        rows[field.replace("`", "")] = re.findall(r"`([^`]+)`", values)
    return rows


def test_the_readme_lists_every_enumerated_field_with_the_codes_values() -> None:
    rows = documented()
    assert set(rows) == set(EXPECTED)
    for field, values in rows.items():
        assert len(values) == len(set(values)), f"{field}: a value is listed twice"
        assert set(values) == EXPECTED[field], field


def test_the_table_is_found_and_not_empty() -> None:
    # A guard against a regular expression that silently matches nothing.
    rows = documented()
    assert rows["account_type"][0] == "compliance entity"
    assert "Forestry and land use" in rows["sectors"]
