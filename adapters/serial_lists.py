"""``serial-*``: lists of serials in one grammar, one block per serial (text lines or a JSON array).

The canonical record is the `UnitBlock` itself. A JSON list may hold strings or objects
``{"serial": ..., "vintage": ...}`` (the vintage is needed only by grammars whose serials carry none).
Writing a block reports the block facts its serial cannot spell as lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from adapters import tabular
from adapters.base import AdapterInfo, RawRecord, Rendered, schemas
from adapters.context import MappingContext
from adapters.fields import FieldReader
from adapters.flat import block_losses
from adapters.serials import GRAMMARS, Grammar, SerialError, grammars_with
from gateway.domain.blocks import UnitBlock
from gateway.domain.mapping import IssueCode, RecordRejected

FORMATS = ("text", "json")


class SerialListAdapter:
    """Serials of one grammar."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar_name = grammar.name
        name = f"serial-{grammar.name}"
        self.info = AdapterInfo(
            name=name,
            description=grammar.description,
            reads=schemas(name, FORMATS),
            writes=schemas(name, FORMATS),
            record="UnitBlock",
        )
        self.record_type: type[Any] = UnitBlock

    def _grammar(self, ctx: MappingContext) -> Grammar:
        return next(g for g in grammars_with(ctx.cea_format, ctx.ccer_format) if g.name == self.grammar_name)

    def decode(self, data: bytes, fmt: str) -> list[RawRecord]:
        """One record per line, or per JSON array item."""
        if fmt == "text":
            return tabular.read_text_lines(data, "serial")
        if fmt == "json":
            items = tabular.read_json(data)
            if not isinstance(items, list):
                raise RecordRejected.one("file", "must be a JSON array of serials", IssueCode.MALFORMED_FILE)
            return [item if isinstance(item, Mapping) else {"serial": item} for item in items]
        raise tabular.unsupported(self.info.name, fmt, FORMATS)

    def parse(self, raw: RawRecord, ctx: MappingContext) -> UnitBlock:
        """The block the serial names."""
        r = FieldReader(raw)
        r.forbid_unknown(frozenset({"serial", "vintage"}))
        text = r.text("serial")
        vintage = r.year("vintage", required=False)
        r.check()
        grammar = self._grammar(ctx)
        try:
            parsed = grammar.parse(text)
            try:
                return grammar.to_block(parsed, vintage=vintage)
            except SerialError:
                # The context's vintage is for serials that carry none (Kyoto unit blocks): a serial that carries
                # its own is never checked against it, nor a record that states its own.
                if vintage is not None or ctx.vintage is None:
                    raise
                try:
                    return grammar.to_block(parsed, vintage=ctx.vintage)
                except SerialError:
                    pass
                raise
        except SerialError as error:
            raise RecordRejected.one("serial", str(error), IssueCode.BAD_PATTERN) from None

    def render(self, record: UnitBlock, ctx: MappingContext) -> Rendered:
        """The serial; the block's facts the grammar cannot spell are lost."""
        grammar = self._grammar(ctx)
        try:
            text = str(grammar.format(grammar.from_block(record)))
        except SerialError as error:
            raise RecordRejected.one("serial", str(error), IssueCode.NO_MAPPING) from None
        lost = block_losses(record, grammar.carried(record), prefix="")
        if "vintage" not in grammar.carried(record):
            return Rendered({"serial": text, "vintage": record.vintage}, tuple(lost))
        return Rendered({"serial": text}, tuple(lost))

    def encode(self, rows: Sequence[RawRecord], fmt: str) -> bytes:
        """Text lines (serials only) or a JSON array."""
        if fmt == "text":
            kept = [row for row in rows if set(row) != {"serial"}]
            if kept:
                raise RecordRejected.one(
                    "vintage",
                    f"the text format holds serials alone, and {len(kept)} serial(s) carry no vintage of their own"
                    f" ({str(kept[0]['serial'])[:80]!r} is of vintage {kept[0].get('vintage')}): write JSON, which"
                    " keeps it",
                    IssueCode.NO_MAPPING,
                )
            return tabular.write_text_lines(rows, "serial")
        if fmt == "json":
            items: list[object] = [row["serial"] if set(row) == {"serial"} else dict(row) for row in rows]
            return (json.dumps(items, ensure_ascii=False, indent=1) + "\n").encode()
        raise tabular.unsupported(self.info.name, fmt, FORMATS)

    def wire_name(self, field: str) -> str:
        """Every block field is spelled inside the serial."""
        return field if field in ("serial", "vintage") else f"serial ({field})"

    def dropped(self, raw: RawRecord) -> tuple[str, ...]:
        """Nothing."""
        return ()

    def blocks(self, record: UnitBlock) -> tuple[tuple[str, UnitBlock], ...]:
        """The block itself."""
        return (("serial", record),)


ADAPTERS: dict[str, SerialListAdapter] = {g.name: SerialListAdapter(g) for g in GRAMMARS}
VCS = ADAPTERS["vcs"]
GOLD_STANDARD = ADAPTERS["gold-standard"]
PURO = ADAPTERS["puro"]
KYOTO = ADAPTERS["kyoto"]
CAR = ADAPTERS["car"]
ITMO = ADAPTERS["itmo"]
CN_CEA = ADAPTERS["cn-cea"]
CN_CCER = ADAPTERS["cn-ccer"]
