"""What a mapping needs to know that the source records do not say, and the gateway's documented choices.

No default is invented for an unknown fact (DESIGN.md section 6): every `ActionFacts` field starts unset,
and a mapping that needs an unset fact refuses the record, naming ``context.<fact>``. The documented
choices (identifier formats, First ID style) have defaults defined in their own modules.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from adapters import vocab
from adapters.fields import FieldReader, check_action_instant
from adapters.serials.domestic import CCER_FORMAT, CEA_FORMAT, DomesticFormat
from adapters.serials.itmo import FIRST_ID_STYLE, FirstIdStyle
from gateway.domain.canonical import ActionSubtype, MitigationType
from gateway.domain.errors import GatewayError
from gateway.domain.mapping import IssueCode, Problem, RecordRejected
from gateway.domain.records import ActionType, Purpose
from gateway.domain.text import check_identifier


class ItmoSerialSource(enum.StrEnum):
    """Where the serials of ITMOs (AEF First ID / Last ID) come from when a mapping must produce them.

    The Party ITMO registry assigns them. The only source a pure mapping can use is
    ``underlying``: the ITMO serial equals the underlying unit's serial. That is sound only when the
    underlying registry numbers its units once (no per-issuance restart) and the Party ITMO registry draws
    its ITMOs from that registry alone; the mapping refuses blocks whose serials restart per issuance.
    """

    UNDERLYING = "underlying"


@dataclass(frozen=True, slots=True)
class ActionFacts:
    """AEF action columns that domestic records do not carry. ``None`` means not configured."""

    action_type: ActionType | None = None
    action_subtype: ActionSubtype | None = None
    action_date: dt.datetime | None = None
    cooperative_approach: str | None = None
    authorization_id: str | None = None
    first_transferring_party: str | None = None
    party_registry: str | None = None
    gwp_values: str | None = None
    mitigation_type: MitigationType | None = None
    """Used only for records whose block states no mitigation type."""
    transferring_party: str | None = None
    acquiring_party: str | None = None
    purpose: Purpose | None = None
    using_party: str | None = None
    using_entity: str | None = None
    ndc_year_of_use: int | None = None
    additional_information: str | None = None


@dataclass(frozen=True, slots=True)
class MappingContext:
    """Facts and settings for one mapping."""

    facts: ActionFacts = field(default_factory=ActionFacts)
    cea_format: DomesticFormat = CEA_FORMAT
    ccer_format: DomesticFormat = CCER_FORMAT
    first_id_style: FirstIdStyle = FIRST_ID_STYLE
    extension_codes: tuple[tuple[str, str], ...] = ()
    """AEF underlying unit registry IDs for issuing registries the nomenclature lacks, e.g.
    ``(("CN-CCER", "CCER"),)``. Unset, a CCER- or CEA-backed action is refused. A configured code is always
    reported as a nomenclature extension."""
    itmo_serials: ItmoSerialSource | None = None
    vintage: int | None = None
    """The vintage of serials that carry none (Kyoto unit blocks)."""

    def extension_code(self, issuing_registry: str) -> str | None:
        """The configured extension code for ``issuing_registry``."""
        return dict(self.extension_codes).get(issuing_registry)


_FACT_KEYS = frozenset(ActionFacts.__dataclass_fields__)
_CONTEXT_KEYS = frozenset(
    {"facts", "extension_codes", "itmo_serials", "vintage", "first_id_style", "cea_per_issuance", "ccer_per_issuance"}
)


def context_from_json(data: Mapping[str, object]) -> MappingContext:
    """A context from its JSON form (the CLI's ``--context`` file). Every field is checked.

    ``{"facts": {"action_type": "First transfer", "action_date": "2025-03-01T08:00:00.000Z", ...},
    "extension_codes": {"CN-CCER": "CCER"}, "itmo_serials": "underlying", "first_id_style": "full identifier",
    "ccer_per_issuance": false, "vintage": 2012}``
    """
    top = FieldReader({k: v for k, v in data.items() if k != "facts" and k != "extension_codes"})
    top.forbid_unknown(_CONTEXT_KEYS)
    facts_raw = data.get("facts", {})
    codes_raw = data.get("extension_codes", {})
    if not isinstance(facts_raw, Mapping) or not isinstance(codes_raw, Mapping):
        raise RecordRejected.one("context", "'facts' and 'extension_codes' must be JSON objects", IssueCode.BAD_VALUE)
    reader = FieldReader({str(k): v for k, v in facts_raw.items()})
    reader.forbid_unknown(_FACT_KEYS)
    action_date = reader.instant("action_date", required=False)
    if action_date is not None and (why := check_action_instant(action_date)):
        reader.fail("action_date", why, IssueCode.BAD_DATE)

    def opt(value: str) -> str | None:
        return value or None

    facts = ActionFacts(
        action_type=reader.choice("action_type", ActionType, required=False),
        action_subtype=reader.choice("action_subtype", ActionSubtype, required=False),
        action_date=action_date,
        cooperative_approach=opt(reader.cooperative_approach("cooperative_approach", required=False)),
        authorization_id=opt(reader.text("authorization_id", required=False)),
        first_transferring_party=opt(reader.party("first_transferring_party", required=False)),
        party_registry=opt(reader.party_registry("party_registry", required=False)),
        gwp_values=opt(reader.text("gwp_values", required=False)),
        mitigation_type=reader.choice("mitigation_type", MitigationType, required=False),
        transferring_party=opt(reader.party("transferring_party", required=False)),
        acquiring_party=opt(reader.party("acquiring_party", required=False)),
        purpose=reader.choice("purpose", Purpose, required=False),
        using_party=opt(reader.party("using_party", required=False)),
        using_entity=opt(reader.text("using_entity", required=False)),
        ndc_year_of_use=reader.year("ndc_year_of_use", required=False),
        additional_information=opt(reader.text("additional_information", required=False)),
    )
    codes: list[tuple[str, str]] = []
    for registry, code in codes_raw.items():
        field = f"extension_codes.{registry}"
        if not isinstance(code, str) or not code or code in vocab.NOMENCLATURE_UNDERLYING_REGISTRIES:
            top.fail(
                field,
                f"{code!r} must be a non-empty code that is not already a nomenclature registry ID",
                IssueCode.BAD_VALUE,
            )
            continue
        try:
            check_identifier(str(registry), field, what="issuing registry")
            check_identifier(code, field, what="extension code")
        except GatewayError as error:
            top.fail(field, error.message, IssueCode.BAD_VALUE)
            continue
        own = vocab.BUILT_IN_UNDERLYING_CODES.get(str(registry))
        if own is not None:
            # The nomenclature's own ID always wins (`adapters.bridges.underlying_code`): another would never apply.
            top.fail(
                field,
                f"{registry} has the nomenclature's own underlying unit registry ID {own!r}: it takes no extension"
                " code; remove this one",
                IssueCode.BAD_VALUE,
            )
            continue
        other = next((r for r, c in codes if c == code), None)
        if other is not None:
            top.fail(
                field,
                f"{code!r} is already the extension code of {other}: an AEF row with it could not tell which"
                " registry its units come from; give each registry a code of its own",
                IssueCode.INCONSISTENT,
            )
            continue
        codes.append((str(registry), code))
    itmo_serials = top.choice("itmo_serials", ItmoSerialSource, required=False)
    style = top.choice("first_id_style", FirstIdStyle, required=False) or FIRST_ID_STYLE
    per_issuance: dict[str, bool] = {}
    for key in ("cea_per_issuance", "ccer_per_issuance"):
        value = data.get(key, False)
        if not isinstance(value, bool):
            top.fail(key, "must be true or false", IssueCode.BAD_VALUE)
            value = False
        per_issuance[key] = value
    vintage = top.year("vintage", required=False)
    problems = [Problem(f"context.{p.field}", p.message, p.code) for p in top.problems]
    problems += [Problem(f"context.facts.{p.field}", p.message, p.code) for p in reader.problems]
    if problems:
        raise RecordRejected(problems)
    return MappingContext(
        facts=facts,
        cea_format=_with_issuance(CEA_FORMAT, per_issuance["cea_per_issuance"]),
        ccer_format=_with_issuance(CCER_FORMAT, per_issuance["ccer_per_issuance"]),
        first_id_style=style,
        extension_codes=tuple(codes),
        itmo_serials=itmo_serials,
        vintage=vintage,
    )


def _with_issuance(fmt: DomesticFormat, per_issuance: bool) -> DomesticFormat:
    if fmt.per_issuance == per_issuance:
        return fmt
    return DomesticFormat(fmt.unit_kind, fmt.issuing_registry, fmt.prefix, per_issuance)
