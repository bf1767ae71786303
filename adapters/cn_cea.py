"""``cn-cea``: CEA allowance holdings of the national emissions-trading registry (JSON or CSV).

Fields: ``holder_account``, ``compliance_entity``, ``sector`` (power, steel, cement, aluminium),
``allocation_year``, ``quantity``, ``registry_reference`` (the registry's opaque ID), ``block_start`` and
``block_end``. The registry publishes no serials: the block is numbered as the context's CEA identifier
format says (``adapters.serials.domestic``), and ``quantity`` must equal the block's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.base import AdapterInfo, RawRecord, Rendered, schemas
from adapters.context import MappingContext
from adapters.fields import FieldReader
from adapters.flat import block_losses, checked_block, decode_flat, encode_flat, range_ok, reject_if
from adapters.serials.domestic import ISSUANCE_CODE, ISSUANCE_SHAPE
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import CeaAllowance, CeaSector
from gateway.domain.mapping import IssueCode

NAME = "cn-cea"
FIELDS = (
    "holder_account",
    "compliance_entity",
    "sector",
    "allocation_year",
    "quantity",
    "registry_reference",
    "block_start",
    "block_end",
)
_WIRE = {
    "block.start": "block_start",
    "block.end": "block_end",
    "block.vintage": "allocation_year",
    "block.registry_reference": "registry_reference",
}


class CeaAdapter:
    """See the module docstring."""

    info = AdapterInfo(
        name=NAME,
        description="CEA allowances (China's national emissions-trading registry) with their blocks",
        reads=schemas(NAME, ("json", "csv")),
        writes=schemas(NAME, ("json", "csv")),
        record="CeaAllowance",
    )
    record_type: type[Any] = CeaAllowance

    def decode(self, data: bytes, fmt: str) -> list[RawRecord]:
        """Records from JSON or CSV."""
        return decode_flat(data, fmt, adapter=NAME, fields=FIELDS, optional=frozenset())

    def parse(self, raw: RawRecord, ctx: MappingContext) -> CeaAllowance:
        """A `CeaAllowance`; every bad field is named."""
        r = FieldReader(raw)
        r.forbid_unknown(frozenset(FIELDS))
        fmt = ctx.cea_format
        holder = r.text("holder_account")
        entity = r.text("compliance_entity")
        sector = r.choice("sector", CeaSector)
        year = r.year("allocation_year")
        quantity = r.quantity("quantity")
        reference = r.text(
            "registry_reference",
            pattern=ISSUANCE_CODE if fmt.per_issuance else None,
            shape=f"{ISSUANCE_SHAPE} (it names the issuance in the block identifier)",
        )
        start = r.integer("block_start", what="a serial number")
        end = r.integer("block_end", what="a serial number")
        block: UnitBlock | None = None
        if range_ok(r.problems, start, end, "block_start", "block_end") and year is not None and reference:
            block = checked_block(
                r.problems,
                "block_start",
                space=fmt.space(reference),
                start=start,
                end=end,
                vintage=year,
                registry_reference=reference,
            )
        if block is not None and quantity is not None and block.quantity != quantity:
            r.fail(
                "quantity",
                f"{quantity} differs from the block's {block.quantity} allowances [{block.start}, {block.end}]",
                IssueCode.QUANTITY_MISMATCH,
            )
        reject_if(r.problems)
        assert block is not None and sector is not None
        return CeaAllowance(holder, entity, sector, block)

    def render(self, record: CeaAllowance, ctx: MappingContext) -> Rendered:
        """The raw record; block facts the schema lacks are reported lost."""
        block = record.block
        row: dict[str, object] = {
            "holder_account": record.holder_account,
            "compliance_entity": record.compliance_entity,
            "sector": record.sector.value,
            "allocation_year": block.vintage,
            "quantity": block.quantity,
            "registry_reference": block.registry_reference,
            "block_start": block.start,
            "block_end": block.end,
        }
        carried = frozenset({"registry_reference"} | ({"space"} if ctx.cea_format.per_issuance else set()))
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

    def blocks(self, record: CeaAllowance) -> tuple[tuple[str, UnitBlock], ...]:
        """The holding's block."""
        return (("block_start", record.block),)


ADAPTER = CeaAdapter()
