"""What every serial grammar provides, and the helpers they share.

A grammar parses a serial by a regular expression with named groups (never by position) into a typed value,
formats the value back to the identical string, and converts it to and from a `UnitBlock`. Parts of a serial
that a `UnitBlock` has no field for travel in ``UnitBlock.attributes`` under the grammar's prefix, so that a
block (or any block split from it) formats back without loss.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Protocol, TypeVar

from gateway.domain.blocks import MAX_SERIAL, BlockError, UnitBlock
from gateway.domain.text import quoted

V = TypeVar("V")

_INT = re.compile(r"0|[1-9][0-9]*")


Digits = int | str
"""A serial or a vintage as an integer, or as its decimal digits already spelled (``str(n)``): the per-row
spellers take either, so that a writer of many rows converts each integer once."""


class SerialError(ValueError):
    """A serial that does not follow its grammar, or a block that a grammar cannot spell."""


class SerialGrammar(Protocol[V]):
    """A registry's serial grammar (see the module docstring)."""

    @property
    def name(self) -> str:
        """Short name, e.g. ``vcs``."""
        ...

    @property
    def description(self) -> str:
        """One line for listings."""
        ...

    def matches(self, text: str) -> bool:
        """True when ``text`` has this grammar's shape (it may still be invalid, e.g. a bad date)."""
        ...

    def parse(self, text: str) -> V:
        """The typed serial; raises `SerialError` naming the part that is wrong."""
        ...

    def format(self, value: V) -> str:
        """The serial string; ``format(parse(s)) == s`` for every valid ``s``."""
        ...

    def to_block(self, value: V, *, vintage: int | None = None) -> UnitBlock:
        """The block the serial names. ``vintage`` is needed only where the serial carries none."""
        ...

    def from_block(self, block: UnitBlock) -> V:
        """The serial of ``block``; raises `SerialError` if the block lacks a part this grammar needs."""
        ...

    def handles(self, block: UnitBlock) -> bool:
        """True when ``block`` belongs to a serial space this grammar spells."""
        ...

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """The block fields and attribute names (``attributes.<name>``) this grammar's spelling carries."""
        ...


def parse_range(parts: Mapping[str, str], text: str) -> tuple[int, int]:
    """The block start and end of a serial's ``start`` and ``end`` groups; refuses a backwards range."""
    start = parse_serial_int(parts["start"], "the block start", text)
    end = parse_serial_int(parts["end"], "the block end", text)
    if end < start:
        raise SerialError(f"the block end {end} precedes its start {start} in {text!r}")
    return start, end


def parse_serial_int(text: str, what: str, serial: str) -> int:
    """A serial number part: digits without leading zeros."""
    if len(text) > len(str(MAX_SERIAL)) and _INT.fullmatch(text):
        raise SerialError(f"{what} in {quoted(serial, 80)} has {len(text)} digits: serials lie in 0..{MAX_SERIAL}")
    if not _INT.fullmatch(text):
        raise SerialError(f"{what} {text!r} in {serial!r} must be digits without leading zeros")
    value = int(text)
    if value > MAX_SERIAL:
        # 19 digits can pass the largest serial: no block holds such a number, so it is refused here, where the
        # reader can still name the cell, rather than when a block is built from it.
        raise SerialError(f"{what} {text} in {quoted(serial, 80)} is past the largest serial, {MAX_SERIAL}")
    return value


def parse_ddmmyyyy(text: str, what: str, serial: str) -> dt.date:
    """A ``ddmmyyyy`` date inside a serial, of a year from 1000 (as every grammar's vintage)."""
    try:
        date = dt.datetime.strptime(text, "%d%m%Y").date()
    except ValueError:
        raise SerialError(f"{what} {text!r} in {serial!r} is not a valid ddmmyyyy date") from None
    if date.year < 1000:
        raise SerialError(f"{what} {text!r} in {serial!r} is of the year {date.year}: a year is 1000 or later")
    return date


def make_block(serial: str, **kwargs: object) -> UnitBlock:
    """Build a block, turning the block arithmetic's refusal into a `SerialError` that names the serial."""
    try:
        return UnitBlock(**kwargs)  # type: ignore[arg-type]
    except BlockError as error:
        raise SerialError(f"{serial!r} names no valid block: {error}") from None


def attributes_of(block: UnitBlock, prefix: str) -> dict[str, str]:
    """The block's attributes under ``prefix.``, keyed without the prefix."""
    start = prefix + "."
    return {k[len(start) :]: v for k, v in block.attributes if k.startswith(start)}


def require_attributes(block: UnitBlock, prefix: str, names: tuple[str, ...], grammar: str) -> dict[str, str]:
    """The named attributes, or a `SerialError` naming the missing ones."""
    attrs = attributes_of(block, prefix)
    missing = [n for n in names if n not in attrs]
    if missing:
        wanted = ", ".join(f"{prefix}.{n}" for n in missing)
        raise SerialError(
            f"{block.describe()} cannot be spelled as a {grammar} serial: it lacks the attribute(s) {wanted}, "
            "which only a block parsed from such a serial carries"
        )
    return attrs


def prefixed(prefix: str, values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Attributes named ``prefix.key``, sorted."""
    return tuple(sorted((f"{prefix}.{k}", v) for k, v in values.items()))


def check_vintage(serial: str, parsed: int, given: int | None) -> int:
    """The serial's vintage, refusing a different one given by the caller."""
    if given is not None and given != parsed:
        raise SerialError(f"{serial!r} has vintage {parsed}, not {given}")
    return parsed


def carried_fields(block: UnitBlock, prefix: str, fields: tuple[str, ...]) -> frozenset[str]:
    """Fields ``fields`` plus every attribute under ``prefix``."""
    names = {f"attributes.{k}" for k, _ in block.attributes if k.startswith(prefix + ".")}
    return frozenset({"space", "start", "end", "vintage", *fields, *names})
