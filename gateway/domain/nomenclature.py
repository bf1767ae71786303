"""The closed lists of unit kinds, issuing registries and issuances, and the one canonical spelling of each.

Two blocks overlap only within one serial space, so a serial space must have exactly one name. Unit kinds,
issuing registries and issuances are codes from configured lists (DESIGN.md section 4, "What same means"):
at every edge (operator request, partner statement, adapter) a spelling is put in canonical form and looked
up, and an unknown code is refused, never stored. ``ccer``, ``CCER`` and ``"CCER "`` therefore all name the
configured ``CCER``, while a code that is not configured is refused with `ResponseCode.UNKNOWN_SERIAL_SPACE`.

Each registry also says which Party keeps it as registry of record (DESIGN.md section 4, "Provenance"): a
gateway issues the serial spaces of its own Party's registries, and units of a space another Party issues
reach it only by transfer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.domain.blocks import SerialSpace
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import PARTY_PATTERN

CODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
"""How a configured unit-kind or registry code, or an issuance code, may be spelled."""


def fold(value: str) -> str:
    """The spelling-insensitive form of a code: NFKC, surrounding white space removed, case folded."""
    return unicodedata.normalize("NFKC", value).strip().casefold()


class NomenclatureError(ValueError):
    """A configured list of codes is malformed (raised while loading configuration)."""


@dataclass(frozen=True, slots=True)
class IssuingRegistry:
    """A registry that issues units, as configured.

    ``code`` is its one canonical spelling. ``unit_kinds`` are the canonical unit kinds it issues. ``party``
    is the Party whose gateway is this registry's registry of record ("" for a registry outside the network
    of gateways, such as an independent standard's). ``issuance_pattern`` is empty when the registry numbers
    its units continuously; when its serials restart per issuance it is a regular expression that every
    issuance code must match in full.
    """

    code: str
    unit_kinds: tuple[str, ...]
    party: str = ""
    issuance_pattern: str = ""

    def __post_init__(self) -> None:
        if not CODE_PATTERN.fullmatch(self.code):
            raise NomenclatureError(f"registry code {self.code!r} is not a code ({CODE_PATTERN.pattern})")
        if not self.unit_kinds:
            raise NomenclatureError(f"registry {self.code}: list at least one unit kind")
        for kind in self.unit_kinds:
            if not CODE_PATTERN.fullmatch(kind):
                raise NomenclatureError(f"registry {self.code}: unit kind {kind!r} is not a code")
        if len({fold(k) for k in self.unit_kinds}) != len(self.unit_kinds):
            raise NomenclatureError(f"registry {self.code}: a unit kind is listed twice {list(self.unit_kinds)}")
        if self.party and not PARTY_PATTERN.fullmatch(self.party):
            raise NomenclatureError(f"registry {self.code}: party {self.party!r} is not an ISO 3166-1 alpha-3 code")
        if self.issuance_pattern:
            try:
                re.compile(self.issuance_pattern)
            except re.error as exc:
                raise NomenclatureError(f"registry {self.code}: issuance_pattern does not compile: {exc}") from None


DEFAULT_REGISTRIES = (
    IssuingRegistry(code="CN-CEA", unit_kinds=("CEA",), party="CHN"),
    IssuingRegistry(code="CN-CCER", unit_kinds=("CCER",), party="CHN"),
)
"""The codes this gateway defines for the two Chinese registries of record (README, "Identifiers the gateway
defines"). Registries with published codes are added in the configuration; none is assumed."""


@dataclass(frozen=True)
class Nomenclature:
    """The configured issuing registries, by canonical code."""

    registries: Mapping[str, IssuingRegistry] = field(default_factory=dict)
    _by_fold: Mapping[str, IssuingRegistry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_fold: dict[str, IssuingRegistry] = {}
        for code, registry in self.registries.items():
            if code != registry.code:
                raise NomenclatureError(f"registry listed under {code!r} has code {registry.code!r}")
            key = fold(code)
            if key in by_fold:
                raise NomenclatureError(f"registry codes {by_fold[key].code!r} and {code!r} differ only in spelling")
            by_fold[key] = registry
        object.__setattr__(self, "registries", MappingProxyType(dict(self.registries)))
        object.__setattr__(self, "_by_fold", MappingProxyType(by_fold))

    @classmethod
    def of(cls, registries: Iterable[IssuingRegistry]) -> Nomenclature:
        """A nomenclature of the given registries; a code listed twice is refused."""
        listed: dict[str, IssuingRegistry] = {}
        for registry in registries:
            if registry.code in listed:
                raise NomenclatureError(f"registry {registry.code!r} is listed twice")
            listed[registry.code] = registry
        return cls(listed)

    def registry(self, space: SerialSpace) -> IssuingRegistry:
        """The registry of a canonical serial space (one `canonical` returned)."""
        return self.registries[space.issuing_registry]

    def issuer(self, space: SerialSpace) -> str:
        """The Party whose gateway issues ``space`` ("" for a registry outside the network)."""
        registry = self.registries.get(space.issuing_registry)
        return registry.party if registry is not None else ""

    def canonical(self, unit_kind: str, issuing_registry: str, issuance: str, *, field: str) -> SerialSpace:
        """The serial space these codes name, in canonical spelling; refuse unknown codes.

        ``field`` is the dotted path of the space in the request (``selections[3].space``), so that a refusal
        names the exact subfield.
        """
        registry = self._by_fold.get(fold(issuing_registry)) if isinstance(issuing_registry, str) else None
        if registry is None:
            known = ", ".join(sorted(self.registries)) or "none"
            raise GatewayError(
                ResponseCode.UNKNOWN_SERIAL_SPACE,
                f"issuing registry {issuing_registry!r} is not configured here (configured: {known})",
                field=f"{field}.issuing_registry",
            )
        kinds = {fold(k): k for k in registry.unit_kinds}
        kind = kinds.get(fold(unit_kind)) if isinstance(unit_kind, str) else None
        if kind is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_SERIAL_SPACE,
                f"unit kind {unit_kind!r} is not one {registry.code} issues here "
                f"(configured: {', '.join(registry.unit_kinds)})",
                field=f"{field}.unit_kind",
            )
        return SerialSpace(kind, registry.code, self._issuance(registry, issuance, f"{field}.issuance"))

    @staticmethod
    def _issuance(registry: IssuingRegistry, issuance: str, field: str) -> str:
        spelled = unicodedata.normalize("NFKC", issuance).strip().upper() if isinstance(issuance, str) else None
        if not registry.issuance_pattern:
            if spelled:
                raise GatewayError(
                    ResponseCode.UNKNOWN_SERIAL_SPACE,
                    f"{registry.code} numbers its units continuously: give no issuance (got {issuance!r})",
                    field=field,
                )
            return ""
        if not spelled or not CODE_PATTERN.fullmatch(spelled) or not re.fullmatch(registry.issuance_pattern, spelled):
            raise GatewayError(
                ResponseCode.UNKNOWN_SERIAL_SPACE,
                f"{registry.code} restarts its serials per issuance: the issuance {issuance!r} does not match "
                f"the configured pattern {registry.issuance_pattern!r}",
                field=field,
            )
        return spelled


DEFAULT_NOMENCLATURE = Nomenclature.of(DEFAULT_REGISTRIES)
