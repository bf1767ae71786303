"""Puro Registry certificate IDs (CORCs).

::

    PURO_<registry>_<credit type>_<country>_<facility>_<vintage>_<issuance id>_<start>-<end>
    e.g. PURO_PR_CORC100+_FI_577166_2020_055a3fbe-eabc-4535-b9cf-1028e7d18f89_1-100

Puro numbers certificates from 1 within each issuance, so the serial space is ``CORC/PURO/<issuance id>``.
(Certificates issued before Puro's registry change carry a GSRN-based serial instead; this grammar refuses
those with a clear message rather than guess their spelling.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.serials.base import (
    SerialError,
    carried_fields,
    check_vintage,
    make_block,
    parse_range,
    prefixed,
    require_attributes,
)
from gateway.domain.blocks import SerialSpace, UnitBlock

UNIT_KIND = "CORC"
ISSUING_REGISTRY = "PURO"
PATTERN = re.compile(
    r"PURO_(?P<registry>[A-Z]+)_(?P<credit_type>[A-Z0-9+]+)_(?P<country>[A-Z]{2})_(?P<facility>[0-9A-Za-z]{6})"
    r"_(?P<vintage>[1-9][0-9]{3})"
    r"_(?P<issuance>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})_(?P<start>[0-9]+)-(?P<end>[0-9]+)"
)
_ATTRS = ("registry", "credit_type", "country", "facility")


@dataclass(frozen=True, slots=True)
class PuroSerial:
    """A parsed Puro certificate ID."""

    registry: str
    credit_type: str
    country: str
    facility: str
    vintage: int
    issuance: str
    start: int
    end: int


class PuroGrammar:
    """Parses and formats Puro certificate IDs (see the module docstring)."""

    name = "puro"
    description = "Puro Registry certificate IDs (PURO_<registry>_<credit type>_..._<start>-<end>)"

    def matches(self, text: str) -> bool:
        """True for text shaped like a certificate ID."""
        return PATTERN.fullmatch(text) is not None

    def parse(self, text: str) -> PuroSerial:
        """Parse a certificate ID."""
        match = PATTERN.fullmatch(text)
        if match is None:
            hint = (
                " (this looks like a pre-2024 GSRN-based Puro serial, which the gateway does not parse)"
                if text[:1].isdigit()
                else ""
            )
            raise SerialError(
                f"{text!r} is not a Puro certificate ID: expected "
                "PURO_<registry>_<credit type>_<country>_<facility>_<vintage>_<issuance uuid>_<start>-<end>" + hint
            )
        parts = match.groupdict()
        start, end = parse_range(parts, text)
        return PuroSerial(
            registry=parts["registry"],
            credit_type=parts["credit_type"],
            country=parts["country"],
            facility=parts["facility"],
            vintage=int(parts["vintage"]),
            issuance=parts["issuance"],
            start=start,
            end=end,
        )

    def format(self, value: PuroSerial) -> str:
        """The certificate ID."""
        return (
            f"PURO_{value.registry}_{value.credit_type}_{value.country}_{value.facility}_{value.vintage}"
            f"_{value.issuance}_{value.start}-{value.end}"
        )

    def to_block(self, value: PuroSerial, *, vintage: int | None = None) -> UnitBlock:
        """A block in the issuance's serial space."""
        text = self.format(value)
        attrs = {name: getattr(value, name) for name in _ATTRS}
        return make_block(
            text,
            space=SerialSpace(UNIT_KIND, ISSUING_REGISTRY, value.issuance),
            start=value.start,
            end=value.end,
            vintage=check_vintage(text, value.vintage, vintage),
            attributes=prefixed("puro", attrs),
        )

    def from_block(self, block: UnitBlock) -> PuroSerial:
        """The certificate ID of a block parsed from (or split from) one."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not a Puro block")
        attrs = require_attributes(block, "puro", _ATTRS, "Puro")
        return PuroSerial(
            vintage=block.vintage, issuance=block.space.issuance, start=block.start, end=block.end, **attrs
        )

    def handles(self, block: UnitBlock) -> bool:
        """True for CORCs."""
        space = block.space
        return space.unit_kind == UNIT_KIND and space.issuing_registry == ISSUING_REGISTRY and bool(space.issuance)

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, issuance, vintage and the ``puro.*`` attributes."""
        return carried_fields(block, "puro", ())


GRAMMAR = PuroGrammar()
