"""The adapter protocol.

An adapter converts one schema to and from one type of canonical record (``gateway.domain``):

1. `Adapter.decode` reads a file in one of the adapter's formats into raw records (plain mappings);
2. `Adapter.parse` turns one raw record into a canonical record, or raises ``RecordRejected`` naming every
   bad field;
3. `Adapter.render` turns a canonical record into a raw record and names the canonical fields the schema
   cannot carry (``Rendered.lost``); it never invents a value for a field the record lacks;
4. `Adapter.encode` writes raw records in one of the adapter's formats.

Adapters are found through the ``carbon_gateway.adapters`` entry-point group (see `adapters.registry`); an
entry point names a module-level object that satisfies this protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from adapters.context import MappingContext
from gateway.domain.blocks import UnitBlock
from gateway.domain.mapping import Problem

RawRecord = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """What `adapters.registry.list_adapters` reports for one adapter."""

    name: str
    description: str
    reads: tuple[str, ...]
    """Schemas read, as ``<schema>+<format>``, e.g. ``cn-ccer+csv``."""
    writes: tuple[str, ...]
    """Schemas written, as ``<schema>+<format>``."""
    record: str
    """The canonical record type the adapter produces and consumes."""

    @property
    def read_formats(self) -> tuple[str, ...]:
        """The formats read, e.g. ``("json", "csv")``."""
        return tuple(s.rsplit("+", 1)[1] for s in self.reads)

    @property
    def write_formats(self) -> tuple[str, ...]:
        """The formats written."""
        return tuple(s.rsplit("+", 1)[1] for s in self.writes)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A raw record, the canonical fields the schema could not carry, and warnings."""

    row: dict[str, object]
    lost: tuple[str, ...] = ()
    notes: tuple[Problem, ...] = field(default=())


@runtime_checkable
class Adapter(Protocol):
    """See the module docstring."""

    @property
    def info(self) -> AdapterInfo:
        """Name, description and the schemas read and written."""
        ...

    @property
    def record_type(self) -> type[Any]:
        """The canonical record type."""
        ...

    def decode(self, data: bytes, fmt: str) -> list[RawRecord]:
        """Raw records of a file; raises ``RecordRejected`` for a file that cannot be read at all."""
        ...

    def parse(self, raw: RawRecord, ctx: MappingContext) -> Any:
        """The canonical record of one raw record."""
        ...

    def render(self, record: Any, ctx: MappingContext) -> Rendered:
        """The raw record of one canonical record."""
        ...

    def encode(self, rows: Sequence[RawRecord], fmt: str) -> bytes:
        """A file holding ``rows``."""
        ...

    def wire_name(self, field: str) -> str:
        """The schema's name for a canonical field path (for messages and loss lists)."""
        ...

    def dropped(self, raw: RawRecord) -> tuple[str, ...]:
        """Fields of ``raw`` that the schema accepts but the canonical record does not hold (reported lost)."""
        ...

    def blocks(self, record: Any) -> tuple[tuple[str, UnitBlock], ...]:
        """The record's blocks with their schema field names, for duplicate detection."""
        ...


def schemas(name: str, formats: Sequence[str]) -> tuple[str, ...]:
    """``("name+fmt", ...)``."""
    return tuple(f"{name}+{fmt}" for fmt in formats)
