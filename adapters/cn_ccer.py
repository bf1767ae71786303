"""``cn-ccer``: CCER credits as the public disclosure platform shows them, plus their block (JSON or CSV).

Fields: ``ccer_id``, ``project_id``, ``project_name``, ``project_type_code`` (e.g. ``N0101``),
``methodology_code`` (``CCER-<2 digits>-<3 digits>-V<2 digits>``), ``province``, ``monitoring_period_start``
and ``monitoring_period_end`` (``YYYY-MM-DD``), ``vintage``, ``certified_quantity``, ``block_start``,
``block_end`` and, optionally, ``mitigation_type`` (an AEF mitigation type). The block is numbered as
the context's CCER identifier format says (``adapters.serials.domestic``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from adapters import vocab
from adapters.base import AdapterInfo, RawRecord, Rendered, schemas
from adapters.context import MappingContext
from adapters.fields import FieldReader
from adapters.flat import block_losses, checked_block, decode_flat, encode_flat, range_ok, reject_if
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import CcerCredit, MitigationType
from gateway.domain.mapping import IssueCode

NAME = "cn-ccer"
FIELDS = (
    "ccer_id",
    "project_id",
    "project_name",
    "project_type_code",
    "methodology_code",
    "province",
    "monitoring_period_start",
    "monitoring_period_end",
    "vintage",
    "certified_quantity",
    "block_start",
    "block_end",
    "mitigation_type",
)
OPTIONAL = frozenset({"mitigation_type"})
_ISSUANCE_SAFE = re.compile(r"[^/\s]+")
_WIRE = {
    "block.start": "block_start",
    "block.end": "block_end",
    "block.vintage": "vintage",
    "block.project_id": "project_id",
    "block.methodology_code": "methodology_code",
    "block.registry_reference": "ccer_id",
    "block.mitigation_type": "mitigation_type",
}
_CARRIED = frozenset({"project_id", "methodology_code", "mitigation_type", "registry_reference"})


class CcerAdapter:
    """See the module docstring."""

    info = AdapterInfo(
        name=NAME,
        description="CCER credits (China's voluntary GHG emission-reduction registry) with their blocks",
        reads=schemas(NAME, ("json", "csv")),
        writes=schemas(NAME, ("json", "csv")),
        record="CcerCredit",
    )
    record_type: type[Any] = CcerCredit

    def decode(self, data: bytes, fmt: str) -> list[RawRecord]:
        """Records from JSON or CSV."""
        return decode_flat(data, fmt, adapter=NAME, fields=FIELDS, optional=OPTIONAL)

    def parse(self, raw: RawRecord, ctx: MappingContext) -> CcerCredit:
        """A `CcerCredit`; every bad field is named."""
        r = FieldReader(raw)
        r.forbid_unknown(frozenset(FIELDS))
        fmt = ctx.ccer_format
        ccer_id = r.text(
            "ccer_id",
            pattern=_ISSUANCE_SAFE if fmt.per_issuance else None,
            shape="text without '/' or spaces (it names the issuance in the block identifier)",
        )
        project_id = r.text("project_id")
        project_name = r.text("project_name")
        type_code = r.text("project_type_code", pattern=vocab.CCER_PROJECT_TYPE, shape="a letter and 4 digits (N0101)")
        methodology = r.text("methodology_code", pattern=vocab.CCER_METHODOLOGY, shape="CCER-14-001-V01")
        province = r.text("province")
        period_start = r.date_iso("monitoring_period_start")
        period_end = r.date_iso("monitoring_period_end")
        vintage = r.year("vintage")
        certified = r.quantity("certified_quantity")
        start = r.integer("block_start", what="a serial number")
        end = r.integer("block_end", what="a serial number")
        mitigation = r.choice("mitigation_type", MitigationType, required=False)
        if period_start and period_end and period_end < period_start:
            r.fail("monitoring_period_end", f"{period_end} precedes the start {period_start}", IssueCode.BLOCK_ORDER)
        block: UnitBlock | None = None
        if range_ok(r.problems, start, end, "block_end") and vintage is not None and ccer_id:
            block = checked_block(
                r.problems,
                "block_start",
                space=fmt.space(ccer_id),
                start=start,
                end=end,
                vintage=vintage,
                project_id=project_id,
                methodology_code=methodology,
                mitigation_type=mitigation.value if mitigation else "",
                registry_reference=ccer_id,
            )
        if block is not None and certified is not None and block.quantity > certified:
            r.fail(
                "block_end",
                f"the block holds {block.quantity} credits, more than the certified quantity {certified}",
                IssueCode.QUANTITY_MISMATCH,
            )
        reject_if(r.problems)
        assert block is not None and period_start and period_end and certified is not None
        return CcerCredit(project_name, type_code, province, period_start, period_end, certified, block)

    def render(self, record: CcerCredit, ctx: MappingContext) -> Rendered:
        """The raw record; a split-off block's attributes and first-transfer flag are reported lost."""
        block = record.block
        row: dict[str, object] = {
            "ccer_id": record.ccer_id,
            "project_id": record.project_id,
            "project_name": record.project_name,
            "project_type_code": record.project_type_code,
            "methodology_code": record.methodology_code,
            "province": record.province,
            "monitoring_period_start": record.monitoring_period_start.isoformat(),
            "monitoring_period_end": record.monitoring_period_end.isoformat(),
            "vintage": block.vintage,
            "certified_quantity": record.certified_quantity,
            "block_start": block.start,
            "block_end": block.end,
        }
        if block.mitigation_type:
            row["mitigation_type"] = block.mitigation_type
        carried = _CARRIED | ({"space"} if ctx.ccer_format.per_issuance else set())
        return Rendered(row, tuple(block_losses(block, carried)))

    def encode(self, rows: Sequence[RawRecord], fmt: str) -> bytes:
        """JSON or CSV."""
        return encode_flat(rows, fmt, adapter=NAME, fields=FIELDS)

    def dropped(self, raw: RawRecord) -> tuple[str, ...]:
        """Nothing: every accepted field is held."""
        return ()

    def wire_name(self, field: str) -> str:
        """Canonical path to field name."""
        return _WIRE.get(field, field)

    def blocks(self, record: CcerCredit) -> tuple[tuple[str, UnitBlock], ...]:
        """The credit's block."""
        return (("block_start", record.block),)


ADAPTER = CcerAdapter()
