"""Serial grammars of the registries whose formats are public, plus the gateway's own identifiers.

Every grammar parses by regular expression with named groups into a typed value that converts to a
`UnitBlock`; overlap is then a question of serial spaces and integer ranges, never of strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.serials import car, domestic, gold_standard, itmo, kyoto, puro, vcs
from adapters.serials.base import SerialError, SerialGrammar
from adapters.serials.domestic import DomesticFormat, DomesticGrammar
from gateway.domain.blocks import UnitBlock

Grammar = SerialGrammar[Any]

_PUBLISHED: tuple[Grammar, ...] = (
    vcs.GRAMMAR,
    gold_standard.GRAMMAR,
    puro.GRAMMAR,
    car.GRAMMAR,
    kyoto.GRAMMAR,
    itmo.GRAMMAR,
)
"""The grammars of published formats (and the ITMO identifier), which no mapping context changes."""

GRAMMARS: tuple[Grammar, ...] = (*_PUBLISHED, domestic.CEA_GRAMMAR, domestic.CCER_GRAMMAR)
"""The built-in grammars. Their shapes are disjoint: at most one matches any text."""

__all__ = ["GRAMMARS", "Grammar", "SerialError", "grammar_for_block", "grammars_with", "parse_block", "spell_block"]


def grammars_with(cea: DomesticFormat, ccer: DomesticFormat) -> tuple[Grammar, ...]:
    """The built-in grammars with the given domestic identifier formats."""
    if cea == domestic.CEA_FORMAT and ccer == domestic.CCER_FORMAT:
        return GRAMMARS
    return (*_PUBLISHED, DomesticGrammar(cea, "cn-cea"), DomesticGrammar(ccer, "cn-ccer"))


def parse_block(text: str, *, vintage: int | None = None, grammars: Sequence[Grammar] = GRAMMARS) -> UnitBlock:
    """The block named by a serial in any known grammar."""
    shaped = [g for g in grammars if g.matches(text)]
    if not shaped:
        names = ", ".join(g.name for g in grammars)
        raise SerialError(f"{text!r} follows none of the known serial grammars ({names})")
    if len(shaped) > 1:
        raise SerialError(f"{text!r} is ambiguous: it fits the {' and '.join(g.name for g in shaped)} grammars")
    grammar = shaped[0]
    return grammar.to_block(grammar.parse(text), vintage=vintage)


def grammar_for_block(block: UnitBlock, grammars: Sequence[Grammar] = GRAMMARS) -> Grammar:
    """The grammar that spells ``block``'s serial space."""
    for grammar in grammars:
        if grammar.handles(block):
            return grammar
    raise SerialError(f"no serial grammar spells blocks of {block.describe()}")


def spell_block(block: UnitBlock, grammars: Sequence[Grammar] = GRAMMARS) -> str:
    """The serial of ``block`` in its registry's grammar."""
    grammar = grammar_for_block(block, grammars)
    return str(grammar.format(grammar.from_block(block)))
