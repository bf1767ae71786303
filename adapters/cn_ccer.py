"""``cn-ccer``: CCER credits as the public disclosure platform shows them, plus their block (JSON or CSV).

Fields: ``ccer_id``, ``project_id``, ``project_name``, ``project_type_code`` (e.g. ``N0101``),
``methodology_code`` (``CCER-<2 digits>-<3 digits>-V<2 digits>``), ``province``, ``monitoring_period_start``
and ``monitoring_period_end`` (``YYYY-MM-DD``), ``vintage``, ``certified_quantity``, ``block_start``,
``block_end`` and, optionally, ``mitigation_type`` (an AEF mitigation type). The block is numbered as
the context's CCER identifier format says (``adapters.serials.domestic``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from adapters import vocab
from adapters.base import AdapterInfo, RawRecord, Rendered, schemas
from adapters.context import MappingContext
from adapters.fields import FieldReader, parse_iso_date
from adapters.flat import block_losses, checked_block, decode_flat, encode_flat, range_ok, reject_if
from adapters.serials.domestic import ISSUANCE_CODE, ISSUANCE_SHAPE
from gateway.domain.blocks import MAX_SERIAL, UnitBlock
from gateway.domain.canonical import CcerCredit, MitigationType
from gateway.domain.mapping import IssueCode
from gateway.domain.text import MAX_INT64

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
            pattern=ISSUANCE_CODE if fmt.per_issuance else None,
            shape=f"{ISSUANCE_SHAPE} (it names the issuance in the block identifier)",
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
        if range_ok(r.problems, start, end, "block_start", "block_end") and vintage is not None and ccer_id:
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


class CcerJsonRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A ``cn-ccer`` JSON record whose every value has the JSON type `CcerAdapter.parse` takes as it is.

    `read_json_checked` decodes a whole batch into these in one pass (in C). A value of any other type (a
    number written as text, an integral float, a null) makes that pass give up; `CcerAdapter.parse` then
    accepts the record or names what is wrong with it.
    """

    ccer_id: str
    project_id: str
    project_name: str
    project_type_code: str
    methodology_code: str
    province: str
    monitoring_period_start: str
    monitoring_period_end: str
    vintage: int
    certified_quantity: int
    block_start: int
    block_end: int
    mitigation_type: str | msgspec.UnsetType = msgspec.UNSET

    @property
    def stated_mitigation_type(self) -> str:
        """The mitigation type the record states, "" for none."""
        return self.mitigation_type or ""

    def raw(self) -> dict[str, object]:
        """The record as `CcerAdapter.decode` gives it (an empty mitigation type, like a missing one, is absent)."""
        raw = msgspec.structs.asdict(self)
        if not self.mitigation_type:
            del raw["mitigation_type"]
        return raw


_JSON_BATCH = msgspec.json.Decoder(list[CcerJsonRecord])
_MITIGATION_VALUES = frozenset({"", *(m.value for m in MitigationType)})
_REQUIRED_FIELDS = len(CcerJsonRecord.__struct_fields__) - 1
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"[ \t\r\n]*+(:?)')
"""A JSON string, and the colon after it that makes it a member name."""


def _names_each_member_once(data: bytes, records: list[CcerJsonRecord]) -> bool:
    """Whether no record of ``data`` names a member twice (the full path refuses that; the C pass keeps the last).

    ``data`` is valid JSON (it decoded). Outside strings a colon follows each member name and appears nowhere
    else, so the colons are never fewer than the members named: when they are as many as the fields decoded,
    no member was named twice. Where strings hold colons, each string is found in turn instead (outside
    strings there are no quotes), and counted when a colon follows it.
    """
    fields = _REQUIRED_FIELDS * len(records) + sum(1 for r in records if r.mitigation_type is not msgspec.UNSET)
    return data.count(b":") == fields or _STRING.findall(data).count(b":") == fields


def read_json_checked(data: bytes, ctx: MappingContext) -> list[CcerJsonRecord] | None:
    """The records of a JSON batch when `CcerAdapter.parse` accepts every one of them as it stands, else None.

    The batch-sized form of `CcerAdapter.decode` then `CcerAdapter.parse`, for the mapping fast path: the
    same rules, checked once per distinct value where a value repeats (codes, dates). None means only "not
    vouched for here": the caller takes the full path, which accepts the batch or names each bad field.
    Blocks are not compared with each other (that is the batch's duplicate check).
    """
    try:
        records = _JSON_BATCH.decode(data)
    except msgspec.MsgspecError:
        return None
    if not _names_each_member_once(data, records):
        return None
    issuance_safe = ISSUANCE_CODE.fullmatch if ctx.ccer_format.per_issuance else None
    type_codes: set[str] = set()
    methodologies: set[str] = set()
    dates: dict[str, dt.date] = {}
    for r in records:
        # FieldReader.text: required text is present and not blank.
        if not (r.ccer_id.strip() and r.project_id.strip() and r.project_name.strip() and r.province.strip()):
            return None
        if issuance_safe is not None and not issuance_safe(r.ccer_id):
            return None
        if r.project_type_code not in type_codes:
            if not vocab.CCER_PROJECT_TYPE.fullmatch(r.project_type_code):
                return None
            type_codes.add(r.project_type_code)
        if r.methodology_code not in methodologies:
            if not vocab.CCER_METHODOLOGY.fullmatch(r.methodology_code):
                return None
            methodologies.add(r.methodology_code)
        period_start = dates.get(r.monitoring_period_start) or _iso_date(r.monitoring_period_start, dates)
        period_end = dates.get(r.monitoring_period_end) or _iso_date(r.monitoring_period_end, dates)
        if period_start is None or period_end is None or period_end < period_start:
            return None
        start, end = r.block_start, r.block_end
        # Serials within the block arithmetic's range and in order, a four-digit vintage, and a block no
        # larger than the certified quantity (which is therefore at least 1), itself within 64 bits as
        # FieldReader.quantity requires.
        if not (
            0 <= start <= end <= MAX_SERIAL
            and 1000 <= r.vintage <= 9999
            and end - start < r.certified_quantity <= MAX_INT64
        ):
            return None
        if r.stated_mitigation_type not in _MITIGATION_VALUES:
            return None
    return records


def _iso_date(text: str, known: dict[str, dt.date]) -> dt.date | None:
    try:
        known[text] = parse_iso_date(text)
    except ValueError:
        return None
    return known[text]
