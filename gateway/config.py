"""Gateway configuration: a TOML file, documented in the README, read into typed values.

Relative paths in the file are resolved against the file's folder. Every value is checked for its type and
range; a wrong one is refused with a `ConfigError` that names the key, so that a gateway never starts on a
configuration it misread.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import ipaddress
import math
import re
import socket
import stat
import tomllib
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.domain.access import (
    CALLS_AT_ONCE,
    LOOPBACK_CALLER,
    MAX_CALLS_AT_ONCE,
    DeliveryPlaces,
    OperatorCaller,
    Role,
    is_loopback_host,
)
from gateway.domain.adjustments import AdjustmentSettings, AveragingDivisor
from gateway.domain.errors import GatewayError
from gateway.domain.nomenclature import DEFAULT_REGISTRIES, IssuingRegistry, Nomenclature, NomenclatureError
from gateway.domain.protocol import DecisionPolicy, DecisionRule, Verdict, parse_purpose
from gateway.domain.records import PARTY_CODES, PARTY_REGISTRY_PATTERN, AdjustmentMethod
from gateway.domain.text import check_identifier, quoted
from gateway.usecases.base import LedgerOptions
from signing.files import read_small_file

MAX_CONFIG_BYTES = 1 << 20
"""The largest configuration file `load_config` reads; it must also be a regular file (not a device or FIFO)."""
MAX_TRUST_DOCUMENT_BYTES = 4 << 20
"""The largest trust document file a configuration may name."""

DEFAULT_SIGNER_NAME = "default"
"""The name the top-level ``signer`` setting goes by, for `RotateTrustDocument`."""
SIGNER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A signer's name under ``[signers]``: a bare TOML key, which `RotateTrustDocument` names and ``trust next``
writes."""


MAX_QUOTED = 80
"""The most characters of a value an error message repeats; a longer value is cut and its length given."""


def _q(value: object) -> str:
    """``value`` as an error message quotes it: ``repr``, cut to about `MAX_QUOTED` characters when longer."""
    if isinstance(value, str):
        return quoted(value, MAX_QUOTED)
    shown = repr(value)
    return shown if len(shown) <= MAX_QUOTED else f"{shown[:MAX_QUOTED]}… ({len(shown)} characters)"


class ConfigError(ValueError):
    """The configuration file is missing a setting or has a malformed one."""


class UnknownKeysError(ConfigError):
    """Keys no setting uses: misspelt or misplaced settings, all of them at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


# The keys each table takes. A key not listed here is refused (`unknown_keys`), so a misspelt setting never
# falls silently back to its default. A table whose keys are names the operator chooses maps to None.
TOP_LEVEL_KEYS = frozenset(
    {
        "party",
        "database",
        "signer",
        "trust_document",
        "signers",
        "operator",
        "partner",
        "http",
        "tls",
        "partners",
        "registries",
        "policy",
        "limits",
        "ledger",
        "reconciliation",
    }
)
OPERATOR_KEYS = frozenset({"listen", "unauthenticated_loopback", "tls", "callers"})
OPERATOR_TLS_KEYS = frozenset({"certificate", "private_key", "client_ca"})
OPERATOR_CALLER_KEYS = frozenset({"name", "role", "token_sha256", "certificate_common_name", "calls_at_once"})
PARTNER_SECTION_KEYS = frozenset({"listen"})
HTTP_KEYS = frozenset({"listen"})
TLS_KEYS = frozenset({"certificate", "private_key", "ca_certificate"})
PARTNER_KEYS = frozenset({"party", "address", "trust_document", "tls_identity", "http_url", "max_envelope_bytes"})
REGISTRY_KEYS = frozenset({"code", "unit_kinds", "party", "issuance_pattern"})
POLICY_KEYS = frozenset({"rules"})
POLICY_RULE_KEYS = frozenset({"verdict", "partner", "acquiring_account", "purpose", "max_quantity"})
LIMITS_KEYS = frozenset(
    {
        "max_envelope_bytes",
        "clock_skew_seconds",
        "max_message_lifetime_seconds",
        "message_lifetime_seconds",
        "hold_deadline_seconds",
        "decision_timeout_seconds",
        "status_query_after_seconds",
        "deliveries_at_once",
        "deliveries_per_address",
    }
)
LEDGER_KEYS = frozenset(
    {
        "ndc_first_year",
        "ndc_last_year",
        "adjustment_method",
        "averaging_divisor",
        "party_registry",
        "gwp_values",
        "underlying_registry_codes",
    }
)
RECONCILIATION_KEYS = frozenset({"every_seconds"})

_TABLES: Mapping[str, frozenset[str]] = {
    "operator": OPERATOR_KEYS,
    "partner": PARTNER_SECTION_KEYS,
    "http": HTTP_KEYS,
    "tls": TLS_KEYS,
    "policy": POLICY_KEYS,
    "limits": LIMITS_KEYS,
    "ledger": LEDGER_KEYS,
    "reconciliation": RECONCILIATION_KEYS,
}
"""Tables at the top level, by name, with the keys each takes; ``[signers]`` takes any name."""
_ARRAYS: Mapping[str, frozenset[str]] = {"partners": PARTNER_KEYS, "registries": REGISTRY_KEYS}
"""Arrays of tables (``[[partners]]``, ``[[registries]]``) with the keys each entry takes."""


def _unknown_in(table: Mapping[str, Any], where: str, known: frozenset[str]) -> list[str]:
    """One message per key of ``table`` that is not in ``known``, with a "did you mean" for a near miss."""
    problems = []
    for key in table:
        if key in known:
            continue
        path = f"{where}.{key}" if where else key
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {_q(close[0])}? " if close else ""
        label = f"the [{where}] table" if where else "the top level"
        problems.append(f"{path}: unknown setting; {hint}{label} takes {', '.join(sorted(known))}")
    return problems


def unknown_keys(data: Mapping[str, Any]) -> list[str]:
    """Every key of a parsed configuration that no setting uses, one message each: the top level first, then
    each table, then each entry of ``[[partners]]``, ``[[registries]]`` and the policy's rules.

    Values of the wrong type are left to the loader, which names them.
    """
    problems = _unknown_in(data, "", TOP_LEVEL_KEYS)
    for name, known in _TABLES.items():
        table = data.get(name)
        if isinstance(table, dict):
            problems += _unknown_in(table, name, known)
    for name, known in _ARRAYS.items():
        entries = data.get(name)
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                if isinstance(entry, dict):
                    problems += _unknown_in(entry, f"{name}[{i}]", known)
    operator = data.get("operator")
    if isinstance(operator, dict):
        if isinstance(operator.get("tls"), dict):
            problems += _unknown_in(operator["tls"], "operator.tls", OPERATOR_TLS_KEYS)
        callers = operator.get("callers")
        if isinstance(callers, list):
            for i, entry in enumerate(callers):
                if isinstance(entry, dict):
                    problems += _unknown_in(entry, f"operator.callers[{i}]", OPERATOR_CALLER_KEYS)
    policy = data.get("policy")
    rules = policy.get("rules") if isinstance(policy, dict) else None
    if isinstance(rules, list):
        for i, rule in enumerate(rules):
            if isinstance(rule, dict):
                problems += _unknown_in(rule, f"policy.rules[{i}]", POLICY_RULE_KEYS)
    return problems


@dataclass(frozen=True)
class PartnerConfig:
    """A partner gateway: its Party, its partner-exchange address, and its trust document (loaded out of band)."""

    party: str
    address: str
    trust_document: Path
    tls_identity: str = ""
    http_url: str = ""
    max_envelope_bytes: int = 1 << 20


@dataclass(frozen=True)
class TLSConfig:
    """mTLS for the partner exchange: this gateway's certificate and key, and the CA that signs partners'."""

    certificate: Path
    private_key: Path
    ca_certificate: Path


@dataclass(frozen=True)
class OperatorTLSConfig:
    """TLS for the operator API: the server's certificate and key, and optionally the CA of callers' certificates.

    With ``client_ca``, every connection must present a client certificate that CA issued.
    """

    certificate: Path
    private_key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class OperatorAccessConfig:
    """Who may call the operator API (``[operator]``, ``[operator.tls]`` and ``[[operator.callers]]``)."""

    tls: OperatorTLSConfig | None = None
    callers: tuple[OperatorCaller, ...] = ()
    unauthenticated_loopback: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway needs to run."""

    party: str
    database: Path | str
    """An SQLite file's path, or a PostgreSQL URL (``postgresql://...``) as written: see `gateway.store.open_store`."""
    signer: str
    trust_document: Path
    operator_listen: str = "127.0.0.1:50051"
    partner_listen: str = "127.0.0.1:50052"
    http_listen: str | None = None
    partners: tuple[PartnerConfig, ...] = ()
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)
    tls: TLSConfig | None = None
    signers: Mapping[str, str] = field(default_factory=dict)
    """Signer URIs by name: ``default`` (the ``signer`` setting) and those under ``[signers]``."""
    nomenclature: Nomenclature = field(default_factory=lambda: Nomenclature.of(DEFAULT_REGISTRIES))
    max_envelope_bytes: int = 1 << 20
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)
    max_message_lifetime: dt.timedelta = dt.timedelta(hours=24)
    message_lifetime: dt.timedelta = dt.timedelta(hours=12)
    hold_deadline: dt.timedelta = dt.timedelta(hours=48)
    decision_timeout: dt.timedelta = dt.timedelta(hours=72)
    status_query_after: dt.timedelta = dt.timedelta(minutes=15)
    ledger: LedgerOptions = field(default_factory=LedgerOptions)
    operator_access: OperatorAccessConfig = field(default_factory=OperatorAccessConfig)
    delivery_places: DeliveryPlaces = field(default_factory=DeliveryPlaces)
    """How many partner deliveries are handled at once, in all and from one address (``[limits]``)."""
    reconcile_every: dt.timedelta | None = dt.timedelta(days=1)
    """How often a run starts with each partner (``[reconciliation] every_seconds``; 0 turns the schedule off)."""


def _year(value: object, where: str) -> int:
    return _integer(value, where, minimum=1990, maximum=2100)


def _ledger(table: Mapping[str, Any]) -> LedgerOptions:
    """The ``[ledger]`` table: the NDC period, the adjustment method chosen once for it, the averaging divisor,
    and what the AEF report names that the ledger does not."""
    problems = _unknown_in(table, "ledger", LEDGER_KEYS)
    if problems:
        raise ConfigError(problems[0])
    years = {key: _year(table[key], f"ledger.{key}") for key in ("ndc_first_year", "ndc_last_year") if key in table}
    if len(years) == 2 and years["ndc_first_year"] > years["ndc_last_year"]:
        raise ConfigError(
            f"ledger.ndc_last_year: the NDC period ends in {years['ndc_last_year']}, before it starts in"
            f" {years['ndc_first_year']}"
        )
    adjustments = None
    if "averaging_divisor" in table and "adjustment_method" not in table:
        raise ConfigError(
            'ledger.averaging_divisor: set only with adjustment_method = "averaging" (and the NDC period,'
            " ndc_first_year and ndc_last_year); remove it, or set the method"
        )
    if years and "adjustment_method" not in table:
        raise ConfigError(
            "ledger.adjustment_method: the NDC period is set but not the method; set adjustment_method ("
            + ", ".join(repr(m.value) for m in AdjustmentMethod)
            + "), or remove ndc_first_year and ndc_last_year"
        )
    if "adjustment_method" in table:
        method_text = _string(table["adjustment_method"], "ledger.adjustment_method")
        try:
            method = AdjustmentMethod(method_text)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in AdjustmentMethod)
            raise ConfigError(f"ledger.adjustment_method: {_q(method_text)} is not one of {allowed}") from None
        divisor = None
        if "averaging_divisor" in table:
            divisor_text = _string(table["averaging_divisor"], "ledger.averaging_divisor")
            try:
                divisor = AveragingDivisor(divisor_text)
            except ValueError:
                allowed = ", ".join(repr(d.value) for d in AveragingDivisor)
                raise ConfigError(f"ledger.averaging_divisor: {_q(divisor_text)} is not one of {allowed}") from None
        try:
            adjustments = AdjustmentSettings(
                method=method,
                first_year=_integer(
                    _require(table, "ndc_first_year", "ledger"), "ledger.ndc_first_year", minimum=1990, maximum=2100
                ),
                last_year=_integer(
                    _require(table, "ndc_last_year", "ledger"), "ledger.ndc_last_year", minimum=1990, maximum=2100
                ),
                averaging_divisor=divisor,
            )
        except GatewayError as exc:
            setting = {"first_year": "ndc_first_year", "last_year": "ndc_last_year"}.get(exc.field, exc.field)
            raise ConfigError(f"ledger.{setting or 'adjustment_method'}: {exc.message}") from None
    registry = _string(table.get("party_registry", ""), "ledger.party_registry", allow_empty=True)
    if registry and not PARTY_REGISTRY_PATTERN.fullmatch(registry):
        raise ConfigError(f"ledger.party_registry: {_q(registry)} is not a Party ITMO registry ID (e.g. CHN01)")
    codes = _table(table.get("underlying_registry_codes", {}), "ledger.underlying_registry_codes")
    return LedgerOptions(
        adjustments=adjustments,
        party_registry=registry,
        gwp_values=_string(table.get("gwp_values", ""), "ledger.gwp_values", allow_empty=True),
        underlying_registry_codes=tuple(
            sorted((k, _string(v, f"ledger.underlying_registry_codes.{k}")) for k, v in codes.items())
        ),
    )


def _check_ledger_against(ledger: LedgerOptions, party: str, nomenclature: Nomenclature) -> None:
    """What ``[ledger]`` names that the rest of the configuration decides: the Party's own registry ID, and the
    spelling of the issuing registries the gateway knows."""
    if ledger.party_registry and not ledger.party_registry.startswith(party):
        raise ConfigError(
            f"ledger.party_registry: {_q(ledger.party_registry)} is not a registry of {party}: a Party ITMO registry"
            f" ID starts with the Party's code (e.g. {party}01)"
        )
    from adapters.vocab import NOMENCLATURE_UNDERLYING_REGISTRIES

    given: dict[str, str] = {}
    for code, aef_id in ledger.underlying_registry_codes:
        near = [k for k in sorted(nomenclature.registries) if k != code and k.casefold() == code.casefold()]
        if near:  # codes are matched as written: this one would never apply
            raise ConfigError(
                f"ledger.underlying_registry_codes: {_q(code)} is not an issuing registry code as [[registries]]"
                f" writes it; did you mean {near[0]!r}?"
            )
        if aef_id in given:
            raise ConfigError(
                f"ledger.underlying_registry_codes.{code}: {_q(aef_id)} is also the code of {given[aef_id]}: the AEF"
                " report would name the units of both registries alike; give each registry a code of its own"
            )
        given[aef_id] = code
        if code in _GATEWAY_DEFINED and aef_id in NOMENCLATURE_UNDERLYING_REGISTRIES:
            raise ConfigError(
                f"ledger.underlying_registry_codes.{code}: {_q(aef_id)} is the AEF nomenclature's ID of another"
                f" registry, and the nomenclature has none for {code}: give it an extension code of its own, which"
                " the report writes as a nomenclature extension"
            )


_GATEWAY_DEFINED = frozenset(registry.code for registry in DEFAULT_REGISTRIES)
"""The registries whose codes the gateway defines (CEA, CCER): the AEF nomenclature has no ID for them."""


def _require(table: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: the setting {_q(key)} is missing")
    return table[key]


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _check_partner_identities(partners: Sequence[PartnerConfig], party: str) -> None:
    """Refuse two partners whose certificates would carry the same name (each partner's ``tls_identity``, or
    its Party code without one), or a partner's name that is this gateway's own Party code.

    With mTLS the certificate's name alone picks the partner whose keys must have signed a delivery: a name two
    partners share picks the first of them, and every statement the other signs is refused, for good, as sent
    over the first one's connection. Names compare without regard to case, as the operator API compares them."""
    names: dict[str, str] = {party.casefold(): "party (this gateway's own Party code)"}
    for i, p in enumerate(partners):
        where = f"partners[{i}].tls_identity" if p.tls_identity else f"partners[{i}].party"
        identity = p.tls_identity or p.party
        if identity.casefold() in names:
            raise ConfigError(
                f"{where}: {_q(identity)} is also {names[identity.casefold()]}: with [tls], a certificate of that"
                " name would be taken for either, and the other's deliveries refused; give each partner a"
                " tls_identity of its own (names compare without regard to case)"
            )
        names[identity.casefold()] = (
            f"the TLS identity of partners[{i}] ({p.party})"
            if p.tls_identity
            else f"the TLS identity of partners[{i}] ({p.party}, its Party code without a tls_identity)"
        )


def _identifier(value: object, where: str, what: str) -> str:
    """A value compared with an identifier another side sends (an account ID, a certificate's name): empty, or
    one `check_identifier` takes, without invisible, bidirectional-control or other characters no identifier
    holds, so that it can apply and reads as it matches."""
    text = _string(value, where, allow_empty=True)
    try:
        return check_identifier(text, where, what=what, required=False)
    except GatewayError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _string(value: object, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ConfigError(f"{where}: expected a non-empty string, got {_q(value)}")
    if "\x00" in value:
        raise ConfigError(f"{where}: the value contains a NUL character")
    return value


def _unquote_hint(value: object) -> str:
    return "; write the number without quotes" if isinstance(value, str) else ""


def _integer(value: object, where: str, *, minimum: int, maximum: int = 2**63 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a whole number, got {_q(value)}{_unquote_hint(value)}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{where}: {value} is not in {minimum}..{maximum}")
    return value


def _seconds(
    table: Mapping[str, Any], key: str, default: float, *, minimum: float = 1.0, section: str = "limits"
) -> dt.timedelta:
    value = table.get(key, default)
    where = f"{section}.{key}"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number of seconds, got {_q(value)}{_unquote_hint(value)}")
    if not minimum <= value <= 10 * 365 * 86400:
        raise ConfigError(f"{where}: {value} seconds is not between {minimum} and ten years")
    return dt.timedelta(seconds=float(value))


def _path(base: Path, value: object, where: str) -> Path:
    path = Path(_string(value, where))
    return path if path.is_absolute() else base / path


DATABASE_SCHEMES = ("postgresql", "postgres")
"""The URL schemes ``database`` accepts; anything without ``://`` is an SQLite file's path."""


def _database(base: Path, value: object) -> Path | str:
    """``database``: a PostgreSQL URL, kept as written (its password is never repeated in a message), or an
    SQLite file's path, relative to the configuration's folder."""
    text = _string(value, "database")
    if "://" not in text:
        return _path(base, text, "database")
    scheme = text.split("://", 1)[0].lower()
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(
            f"database: {scheme}:// is not a database this gateway can use; write postgresql://user@host:5432/name"
            " or an SQLite file's path"
        )
    encoded = "; write a password's @ : / ? # [ ] % percent-encoded (# as %23, / as %2F, @ as %40)"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        # Not quoted: a password with a "#", "/" or "?" in it ends the host early, and its start is the "port".
        reason = "its port is not a number in 0..65535" if str(exc).startswith("Port") else "its host cannot be read"
        raise ConfigError(f"database: not a valid {scheme}:// URL ({reason}){encoded}") from None
    if parts.fragment or "@" in parts.path or parts.netloc.count("@") > 1:
        # The host ended early in the password, whose rest would be taken for the database's name; or the password
        # holds an "@", where asyncpg (as libpq) ends it, taking the rest for the host (and a "port" it quotes).
        raise ConfigError(f"database: the {scheme}:// URL's user and password cannot be told from its host{encoded}")
    if parts.path.strip("/") == "" or "/" in parts.path.strip("/"):
        raise ConfigError(f"database: name one database after the host, as in {scheme}://user@host:5432/carbon_gateway")
    return text


def _signer_uri(base: Path, value: object, where: str) -> str:
    """A signer URI with the relative paths in it (a key file's, a passphrase file's) resolved against the
    configuration's folder, whatever the folder the gateway is started from."""
    uri = _string(value, where)
    if ":" in uri.split("/")[0]:
        scheme, _, rest = uri.partition(":")
        if scheme.lower() == "pkcs11":
            return pkcs11_paths(uri, lambda relative: str(base / relative))
        if scheme.lower() != "file":
            return uri
        path, mark, query = rest.partition("?")
        if not path.startswith("/"):
            path = f"{urllib.parse.quote(str(base), safe='/')}/{path}"  # the URI's own path stays as written
        if query:
            query = "&".join(_rebased_parameter(base, parameter) for parameter in query.split("&"))
        return f"file:{path}{mark}{query}"
    return str(_path(base, uri, where))


def _rebased_parameter(base: Path, parameter: str) -> str:
    """A file URI's passphrase file against ``base`` when relative."""
    name, equals, value = parameter.partition("=")
    written = urllib.parse.unquote_plus(value)  # a file URI's query is form-encoded (parse_qsl: "+" is a space)
    if name == "passphrase-file" and equals and written and not written.startswith("/"):
        return f"{name}={urllib.parse.quote(str(base / written), safe='/')}"
    return parameter


def pkcs11_paths(uri: str, place: Callable[[str], str]) -> str:
    """A pkcs11 URI with each relative path of its query (module-path, ``pin-source=file:``) put through
    ``place``; everything else as written (its query is percent-encoded)."""
    scheme, _, rest = uri.partition(":")
    attributes, mark, query = rest.partition("?")
    parameters = []
    for parameter in query.split("&") if query else []:
        name, _, value = parameter.partition("=")
        written = urllib.parse.unquote(value)
        if name == "module-path" and written and not written.startswith("/"):
            parameter = f"{name}={urllib.parse.quote(place(written), safe='/')}"
        elif name == "pin-source" and written.startswith("file:") and written[5:] and not written[5:].startswith("/"):
            parameter = f"{name}={urllib.parse.quote('file:' + place(written[5:]), safe='/:')}"
        parameters.append(parameter)
    return f"{scheme}:{attributes}{mark}{'&'.join(parameters)}"


_LISTEN_HOST = re.compile(r"\[[0-9A-Za-z:.%_-]+\]|[0-9A-Za-z._:-]+")
"""A listen host: a name or IPv4 address, or an IPv6 address in brackets; never spaces or punctuation."""


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
"""One label of a host name: letters, digits, hyphens (not first or last) and, as some names hold, underscores."""


def _is_host(host: str) -> bool:
    """Whether ``host`` (a URL's host, brackets removed) is an IP address or a host name, internationalized
    names included (as IDNA writes them)."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if host.replace(".", "").isdigit():  # digits and dots are never a host name: an IPv4 address, or nothing
        try:
            socket.inet_aton(host)
        except OSError:
            return False
        return True
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return len(ascii_host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _http_url(value: object, where: str) -> str:
    """A partner's ``http_url``: empty, or an ``http://`` or ``https://`` URL with a host name or IP address, a
    port in 1..65535 if any, and a path if any; the paths of the partner's documents are added to it, so it
    takes no query or fragment, and no credentials (``user:password@``), which would be written to logs."""
    url = _string(value, where, allow_empty=True)
    if url:
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}: {_q(url)} is not an http:// or https:// URL, e.g. https://che.example:8443")
        if "@" in parts.netloc:  # the URL is not repeated: it holds a password
            raise ConfigError(
                f"{where}: the URL holds credentials before its host (user:password@), which would be written to"
                " logs; remove them"
            )
        if not parts.hostname or not _is_host(parts.hostname):
            raise ConfigError(
                f"{where}: {_q(parts.hostname or '')} in {_q(url)} is not a host name or an IP address (an IPv6"
                " address goes in brackets, as in https://[2001:db8::1]:8443)"
            )
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ConfigError(f"{where}: {_q(url)} does not give a port in 1..65535 after its host")
        if "?" in url or "#" in url:
            raise ConfigError(
                f"{where}: {_q(url)} has a query or a fragment; the paths of the partner's trust documents are"
                " added to this URL, so give its scheme, host, port and path only"
            )
        if any(char.isspace() or not char.isprintable() for char in url):
            raise ConfigError(f"{where}: {_q(url)} holds a space or a control character; write it percent-encoded")
    return url


def _listen(value: object, where: str) -> str:
    """An address to listen on: HOST:PORT, port 0 for a free one."""
    return _host_port(value, where, lowest_port=0)


def _partner_address(value: object, where: str) -> str:
    """A partner's address to connect to: HOST:PORT with a real port, or that as a gRPC ``dns:`` target
    (``dns:///HOST:PORT``)."""
    address = _string(value, where)
    target = next((address.removeprefix(s) for s in ("dns:///", "dns:") if address.startswith(s)), address)
    host = target.rpartition(":")[0]
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(
            f"{where}: {_q(address)} is not HOST:PORT or dns:///HOST:PORT (an IPv6 address goes in brackets, as in"
            " [2001:db8::1]:50052)"
        )
    _host_port(target, where, lowest_port=1)
    return address


def check_address(value: str, where: str) -> str:
    """``value`` if it is an address to connect to, HOST:PORT with a port in 1..65535 (`ConfigError`
    otherwise): what the command-line tools take as ``--address``."""
    return _host_port(value, where, lowest_port=1)


def _host_port(value: object, where: str, *, lowest_port: int) -> str:
    address = _string(value, where)
    host, sep, port = address.rpartition(":")
    # A port has at most five digits after its leading zeros; int() refuses thousands of digits with an error.
    significant = port.lstrip("0")
    in_range = port.isascii() and port.isdigit() and len(significant) <= 5
    if not sep or not host or not in_range or not lowest_port <= int(significant or "0") <= 65535:
        raise ConfigError(f"{where}: {_q(address)} is not HOST:PORT with a port in {lowest_port}..65535")
    if not _LISTEN_HOST.fullmatch(host) or (":" in host and not host.startswith("[")):
        raise ConfigError(
            f"{where}: {_q(host)} in {_q(address)} is not a host name or an IP address (an IPv6 address goes in"
            " brackets, as in [::1]:50051)"
        )
    if host.replace(".", "").isdigit():
        # Digits and dots are never a host name: refuse a mistyped IPv4 address here, not after a DNS lookup.
        try:
            socket.inet_aton(host)
        except OSError:
            raise ConfigError(
                f"{where}: {_q(host)} in {_q(address)} is not an IPv4 address: write four numbers in 0..255,"
                " such as 127.0.0.1"
            ) from None
    return address


def check_distinct_listens(*listens: tuple[str, str | None]) -> None:
    """Refuse two servers on one port of overlapping addresses (port 0, a free port each, excepted): the second
    could never bind. A wildcard address overlaps every other, and ``localhost`` its loopback addresses."""
    seen: list[tuple[str, str]] = []
    for setting, address in listens:
        if address is None or _port(address) == 0:
            continue
        host = address.rpartition(":")[0]
        for other_setting, other in seen:
            if _port(address) == _port(other) and _hosts_overlap(host, other.rpartition(":")[0]):
                same = "" if address == other else f" ({_q(other)}: the same port, on an overlapping address)"
                raise ConfigError(
                    f"{setting}: {_q(address)} is also {other_setting}{same}; give each server its own port"
                )
        seen.append((setting, address))


def _port(address: str) -> int:
    """The port of an address `_host_port` accepted: ``08080`` is port 8080."""
    return int(address.rpartition(":")[2].lstrip("0") or "0")


_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})
_LOCALHOST_ADDRESSES = frozenset({"localhost", "127.0.0.1", "::1"})


def _hosts_overlap(first: str, second: str) -> bool:
    a, b = (host.removeprefix("[").removesuffix("]").lower() for host in (first, second))
    if a == b or a in _WILDCARD_HOSTS or b in _WILDCARD_HOSTS:
        return True
    return "localhost" in (a, b) and {a, b} <= _LOCALHOST_ADDRESSES


def _policy(rules: object, partners: Sequence[PartnerConfig]) -> DecisionPolicy:
    if not isinstance(rules, list):
        raise ConfigError("policy.rules: expected a list of tables")
    parsed = []
    for i, rule in enumerate(rules):
        where = f"policy.rules[{i}]"
        rule = _table(rule, where)
        try:
            verdict = Verdict(_require(rule, "verdict", where))
        except ValueError:
            raise ConfigError(f"{where}.verdict: use accept, reject or hold") from None
        purpose = None
        if "purpose" in rule:
            try:
                purpose = parse_purpose(_string(rule["purpose"], f"{where}.purpose"), field=f"{where}.purpose")
            except GatewayError as exc:
                raise ConfigError(f"{where}.purpose: {exc.message}") from None
        max_quantity = rule.get("max_quantity")
        partner = _string(rule.get("partner", ""), f"{where}.partner", allow_empty=True)
        if partner and partner not in {p.party for p in partners}:
            known = ", ".join(p.party for p in partners) or "none"
            raise ConfigError(
                f"{where}.partner: {_q(partner)} is not a configured partner ([[partners]]: {known}), so the rule"
                " could never apply"
            )
        parsed.append(
            DecisionRule(
                verdict=verdict,
                partner=partner,
                acquiring_account=_identifier(
                    rule.get("acquiring_account", ""), f"{where}.acquiring_account", "account ID"
                ),
                purpose=purpose,
                max_quantity=None
                if max_quantity is None
                else _integer(max_quantity, f"{where}.max_quantity", minimum=0),
            )
        )
    return DecisionPolicy(tuple(parsed))


def _registries(value: object) -> Nomenclature:
    if not isinstance(value, list) or not value:
        raise ConfigError("registries: expected a non-empty list of tables ([[registries]])")
    registries = []
    for i, entry in enumerate(value):
        where = f"registries[{i}]"
        entry = _table(entry, where)
        kinds = _require(entry, "unit_kinds", where)
        if not isinstance(kinds, list) or not kinds:
            raise ConfigError(f"{where}.unit_kinds: expected a non-empty list of codes")
        party = _string(entry.get("party", ""), f"{where}.party", allow_empty=True)
        # As the top-level party and [[partners]] party: the registry's units are issued by the gateway of that
        # Party, and the AEF report writes only ISO 3166-1 alpha-3 codes.
        if party and party not in PARTY_CODES:
            raise ConfigError(f"{where}.party: {_q(party)} is not an ISO 3166-1 alpha-3 code")
        try:
            registries.append(
                IssuingRegistry(
                    code=_string(_require(entry, "code", where), f"{where}.code"),
                    unit_kinds=tuple(_string(k, f"{where}.unit_kinds") for k in kinds),
                    party=party,
                    issuance_pattern=_string(
                        entry.get("issuance_pattern", ""), f"{where}.issuance_pattern", allow_empty=True
                    ),
                )
            )
        except NomenclatureError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    try:
        return Nomenclature.of(registries)
    except NomenclatureError as exc:
        raise ConfigError(f"registries: {exc}") from None


def load_config(path: Path) -> GatewayConfig:
    """Read and check a gateway's TOML configuration file; every problem is a `ConfigError` naming the key."""
    try:
        raw = read_small_file(path, MAX_CONFIG_BYTES)
        if raw.startswith(b"\xef\xbb\xbf"):
            raise ConfigError(
                f"{path}: the file starts with a byte-order mark, which TOML does not allow (some Windows editors"
                " write one): save it as UTF-8 without a BOM"
            )
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a configuration file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply to read; no setting nests like that") from None
    unknown = unknown_keys(data)
    if unknown:
        raise UnknownKeysError(unknown)
    base = path.resolve().parent
    party = _require(data, "party", str(path))
    # Every ledger entry names Parties, and the AEF report writes only ISO 3166-1 alpha-3 codes: a gateway or a
    # partner under another code would leave each year it acts in with a report that cannot be written.
    if not isinstance(party, str) or party not in PARTY_CODES:
        raise ConfigError(f"party: {_q(party)} is not an ISO 3166-1 alpha-3 code")
    partners = []
    seen: set[str] = set()
    raw_partners = data.get("partners", [])
    if not isinstance(raw_partners, list):
        raise ConfigError("partners: expected a list of tables ([[partners]])")
    for i, p in enumerate(raw_partners):
        where = f"partners[{i}]"
        p = _table(p, where)
        partner_party = _string(_require(p, "party", where), f"{where}.party")
        if partner_party not in PARTY_CODES or partner_party == party:
            raise ConfigError(f"{where}.party: {_q(partner_party)} is not another Party's ISO 3166-1 alpha-3 code")
        if partner_party in seen:
            raise ConfigError(f"{where}.party: {partner_party} is listed twice")
        seen.add(partner_party)
        partners.append(
            PartnerConfig(
                party=partner_party,
                address=_partner_address(_require(p, "address", where), f"{where}.address"),
                trust_document=_path(base, _require(p, "trust_document", where), f"{where}.trust_document"),
                tls_identity=_identifier(p.get("tls_identity", ""), f"{where}.tls_identity", "TLS identity"),
                http_url=_http_url(p.get("http_url", ""), f"{where}.http_url"),
                max_envelope_bytes=_integer(
                    p.get("max_envelope_bytes", 1 << 20),
                    f"{where}.max_envelope_bytes",
                    minimum=4096,
                    maximum=64 << 20,
                ),
            )
        )
    _check_partner_identities(partners, party)
    tls = None
    if "tls" in data:
        t = _table(data["tls"], "tls")
        tls = TLSConfig(
            certificate=_path(base, _require(t, "certificate", "tls"), "tls.certificate"),
            private_key=_path(base, _require(t, "private_key", "tls"), "tls.private_key"),
            ca_certificate=_path(base, _require(t, "ca_certificate", "tls"), "tls.ca_certificate"),
        )
    limits = _table(data.get("limits", {}), "limits")
    signers = {DEFAULT_SIGNER_NAME: _signer_uri(base, _require(data, "signer", str(path)), "signer")}
    for name, uri in _table(data.get("signers", {}), "signers").items():
        if name == DEFAULT_SIGNER_NAME:
            raise ConfigError(f"signers.{name}: the name {_q(DEFAULT_SIGNER_NAME)} is the top-level 'signer' setting")
        if not SIGNER_NAME.fullmatch(name):
            raise ConfigError(f"signers.{_q(name)}: name a signer with 1 to 64 letters, digits, '-' or '_'")
        signers[name] = _signer_uri(base, uri, f"signers.{name}")
    max_lifetime = _seconds(limits, "max_message_lifetime_seconds", 86400)
    lifetime = _seconds(limits, "message_lifetime_seconds", 43200)
    if lifetime > max_lifetime:
        raise ConfigError(
            "limits.message_lifetime_seconds: the statements this gateway signs would live longer than"
            f" max_message_lifetime_seconds ({max_lifetime.total_seconds():g}), which partners typically share"
        )
    operator = _table(data.get("operator", {}), "operator")
    operator_listen = _listen(operator.get("listen", "127.0.0.1:50051"), "operator.listen")
    partner_section = _table(data.get("partner", {}), "partner")
    partner_listen = _listen(partner_section.get("listen", "127.0.0.1:50052"), "partner.listen")
    http = _table(data.get("http", {}), "http")
    http_listen = _listen(http["listen"], "http.listen") if "listen" in http else None
    check_distinct_listens(
        ("operator.listen", operator_listen), ("partner.listen", partner_listen), ("http.listen", http_listen)
    )
    nomenclature = _registries(data["registries"]) if "registries" in data else Nomenclature.of(DEFAULT_REGISTRIES)
    ledger = _ledger(_table(data.get("ledger", {}), "ledger"))
    _check_ledger_against(ledger, party, nomenclature)
    return GatewayConfig(
        party=party,
        database=_database(base, _require(data, "database", str(path))),
        signer=signers[DEFAULT_SIGNER_NAME],
        trust_document=_path(base, _require(data, "trust_document", str(path)), "trust_document"),
        operator_listen=operator_listen,
        operator_access=_operator_access(base, operator, operator_listen, party, partners),
        partner_listen=partner_listen,
        http_listen=http_listen,
        partners=tuple(partners),
        policy=_policy(_table(data.get("policy", {}), "policy").get("rules", []), partners),
        tls=tls,
        signers=signers,
        nomenclature=nomenclature,
        max_envelope_bytes=_integer(
            limits.get("max_envelope_bytes", 1 << 20), "limits.max_envelope_bytes", minimum=4096, maximum=64 << 20
        ),
        clock_skew=_seconds(limits, "clock_skew_seconds", 300, minimum=0.0),
        delivery_places=_delivery_places(limits),
        max_message_lifetime=max_lifetime,
        message_lifetime=lifetime,
        hold_deadline=_seconds(limits, "hold_deadline_seconds", 172800),
        decision_timeout=_seconds(limits, "decision_timeout_seconds", 259200),
        status_query_after=_seconds(limits, "status_query_after_seconds", 900),
        ledger=ledger,
        reconcile_every=_schedule(_table(data.get("reconciliation", {}), "reconciliation")),
    )


MAX_DELIVERIES_AT_ONCE = 1024
"""The most ``deliveries_at_once`` may say: each delivery may hold a request of four times the envelope cap."""


def _delivery_places(limits: Mapping[str, Any]) -> DeliveryPlaces:
    at_once = _integer(
        limits.get("deliveries_at_once", DeliveryPlaces.at_once),
        "limits.deliveries_at_once",
        minimum=1,
        maximum=MAX_DELIVERIES_AT_ONCE,
    )
    value = limits.get("deliveries_per_address", min(DeliveryPlaces.per_address, at_once))
    if isinstance(value, int) and not isinstance(value, bool) and at_once < value <= MAX_DELIVERIES_AT_ONCE:
        # Raised behind a proxy or NAT, as the README says to: the bound it meets is the other setting's.
        raise ConfigError(
            f"limits.deliveries_per_address: {value} is not in 1..{at_once}: the deliveries from one address are"
            f" some of deliveries_at_once ({at_once}); raise deliveries_at_once to {value} or more as well"
        )
    per_address = _integer(value, "limits.deliveries_per_address", minimum=1, maximum=at_once)
    return DeliveryPlaces(at_once, per_address)


def _schedule(table: Mapping[str, Any]) -> dt.timedelta | None:
    """The ``[reconciliation]`` table: ``every_seconds`` between runs with each partner (default a day, 0 off)."""
    problems = _unknown_in(table, "reconciliation", RECONCILIATION_KEYS)
    if problems:
        raise ConfigError(problems[0])
    every = table.get("every_seconds", 86400)
    if every == 0 and not isinstance(every, bool):  # false is no number of seconds, and so no "off"
        return None
    return _seconds(table, "every_seconds", 86400, minimum=60.0, section="reconciliation")


_ROLES = ", ".join(repr(role.value) for role in Role)
EMPTY_TOKEN_SHA256 = hashlib.sha256(b"").digest()
"""The digest of the empty token, which `gateway.rpc.auth` refuses as a malformed authorization header."""


def settings_without_effect(config: GatewayConfig) -> list[str]:
    """Settings a gateway starts with that can never take effect, one line each naming the setting: what
    ``config check`` warns of and ``serve`` logs. Warned of, not refused: a file that started before goes on
    starting (``init`` writes ``unauthenticated_loopback`` beside a commented ``[operator.tls]``)."""
    access = config.operator_access
    found: list[str] = []
    if access.unauthenticated_loopback and access.tls is not None and access.tls.client_ca is not None:
        # With client_ca, gRPC refuses a connection without a certificate that CA issued, and a call with a
        # certificate carries its common name (empty when it has none): it is identified by the certificate or
        # refused, and never reaches the rule that admits calls without credentials (access.identify).
        found.append(
            "operator.unauthenticated_loopback: [operator.tls] client_ca makes every connection present a client"
            " certificate, and a call with one is its caller's or refused, so no call is admitted without"
            " credentials; remove unauthenticated_loopback, or client_ca"
        )
    for i, caller in enumerate(access.callers):
        if caller.token_sha256 == EMPTY_TOKEN_SHA256:
            found.append(
                f"operator.callers[{i}].token_sha256: the SHA-256 of the empty token, which no call can send (an"
                " empty bearer token is refused), so this caller cannot authenticate by token; write the SHA-256"
                " of its token"
            )
    return found


def exposed_secrets(config: GatewayConfig) -> list[str]:
    """The secret files of the configured signers (a private key file, its passphrase file, a PKCS#11 PIN file)
    that users other than the file's owner may read or write, one line each naming the setting: what ``config
    check`` warns of and ``serve`` logs. Warned of, not refused, as OpenSSH refuses a key anyone else can read:
    a file that started before goes on starting. Files that cannot be read are left to the signers' own checks."""
    found: list[str] = []
    named: set[Path] = set()
    for name, uri in sorted(config.signers.items(), key=lambda item: item[0] != DEFAULT_SIGNER_NAME):
        setting = "signer" if name == DEFAULT_SIGNER_NAME else f"signers.{name}"
        for what, path in _secret_files(uri):
            try:
                mode = path.stat().st_mode
            except (OSError, ValueError):
                continue
            if path in named or not stat.S_ISREG(mode) or not mode & 0o077:
                continue
            if what == "private key file" and not _holds_private_key(path):
                continue  # a public key named by mistake: the signer's own check refuses it
            named.add(path)
            risk = {
                "private key file": f"whoever reads it can sign as {config.party}",
                "passphrase file": f"whoever reads it and the key file can sign as {config.party}",
                "PIN file": f"whoever reads it and reaches the token can sign as {config.party}",
            }[what]
            found.append(
                f"{setting}: the {what} {path} has mode {stat.S_IMODE(mode):04o}: users other than its owner can"
                f" read or change it, and {risk}; chmod 600 {path}"
            )
    return found


def _holds_private_key(path: Path) -> bool:
    try:
        return b"PRIVATE KEY-----" in read_small_file(path)
    except (OSError, ValueError):
        return False


def _secret_files(uri: str) -> list[tuple[str, Path]]:
    """The secret files a signer URI (as the configuration resolved it) names, and what each holds."""
    scheme, colon, rest = uri.partition(":")
    if not colon or len(scheme) == 1 or "/" in scheme:
        return [("private key file", Path(uri))]
    if scheme.lower() == "file":
        location, _, query = rest.partition("?")
        if location.startswith("//"):
            location = "/" + location[2:].partition("/")[2]
        files = [("private key file", Path(urllib.parse.unquote(location)))]
        for name, value in urllib.parse.parse_qsl(query):
            if name == "passphrase-file" and value:
                files.append(("passphrase file", Path(value)))
        return files
    if scheme.lower() == "pkcs11":
        for parameter in rest.partition("?")[2].split("&"):
            name, _, value = parameter.partition("=")
            source = urllib.parse.unquote(value)
            if name == "pin-source" and source:
                source = source.removeprefix("file:")
                return [("PIN file", Path("/" + source.lstrip("/")))]
    return []


def _operator_access(
    base: Path, operator: Mapping[str, Any], listen: str, party: str, partners: list[PartnerConfig]
) -> OperatorAccessConfig:
    """``[operator]``'s access settings: TLS, the callers, and whether loopback needs no credentials.

    Refused here: plaintext tokens off loopback, a non-loopback listen nobody can authenticate to, duplicate
    caller names, tokens or common names, and a caller certificate name that is a partner's identity or this
    gateway's own (its Party code), in any case.
    """
    loopback = is_loopback_host(listen.rpartition(":")[0])
    unauthenticated = operator.get("unauthenticated_loopback", False)
    if not isinstance(unauthenticated, bool):
        raise ConfigError(f"operator.unauthenticated_loopback: expected true or false, got {_q(unauthenticated)}")
    if unauthenticated and not loopback:
        raise ConfigError(
            f"operator.unauthenticated_loopback: {_q(listen)} is not a loopback address; callers without credentials"
            " are only allowed on 127.0.0.1, [::1] or localhost"
        )
    tls = None
    if "tls" in operator:
        t = _table(operator["tls"], "operator.tls")
        for key in t:
            if key not in OPERATOR_TLS_KEYS:
                raise ConfigError(
                    f"operator.tls.{key}: unknown setting; [operator.tls] takes certificate, private_key, client_ca"
                )
        tls = OperatorTLSConfig(
            certificate=_path(base, _require(t, "certificate", "operator.tls"), "operator.tls.certificate"),
            private_key=_path(base, _require(t, "private_key", "operator.tls"), "operator.tls.private_key"),
            client_ca=_path(base, t["client_ca"], "operator.tls.client_ca") if "client_ca" in t else None,
        )
    raw = operator.get("callers", [])
    if not isinstance(raw, list):
        raise ConfigError("operator.callers: expected a list of tables ([[operator.callers]])")
    # Certificate names compare without regard to case, as a CA may issue either spelling.
    partner_identities = {party.casefold(): "party (this gateway's own partner certificate name)"}
    partner_identities.update({p.party.casefold(): f"partners[{i}].party" for i, p in enumerate(partners)})
    partner_identities.update(
        {p.tls_identity.casefold(): f"partners[{i}].tls_identity" for i, p in enumerate(partners) if p.tls_identity}
    )
    callers: list[OperatorCaller] = []
    names: dict[str, str] = {}
    tokens: dict[bytes, str] = {}
    common_names: dict[str, str] = {}
    for i, entry in enumerate(raw):
        where = f"operator.callers[{i}]"
        entry = _table(entry, where)
        for key in entry:
            if key not in OPERATOR_CALLER_KEYS:
                raise ConfigError(
                    f"{where}.{key}: unknown setting; a caller takes name, role, token_sha256 or"
                    " certificate_common_name, and calls_at_once"
                )
        name = _string(_require(entry, "name", where), f"{where}.name")
        if not name.isprintable() or name != name.strip() or len(name) > 128:
            raise ConfigError(f"{where}.name: {_q(name)} is not 1 to 128 printable characters without outer spaces")
        if name.casefold() == LOOPBACK_CALLER.casefold():
            raise ConfigError(
                f"{where}.name: {_q(LOOPBACK_CALLER)} is the name of callers admitted by unauthenticated_loopback;"
                " choose another"
            )
        # Compared in normal form NFC: "Jos\u00e9" and "Jose\u0301" are one name, written two ways.
        same = unicodedata.normalize("NFC", name)
        if same in names:
            written = "" if same == name else " (written in another Unicode normal form)"
            raise ConfigError(
                f"{where}.name: {_q(name)} is also the name of {names[same]}{written}; each caller needs its own"
            )
        names[same] = where
        role_text = _string(_require(entry, "role", where), f"{where}.role")
        try:
            role = Role(role_text)
        except ValueError:
            raise ConfigError(f"{where}.role: {_q(role_text)} is not one of {_ROLES}") from None
        calls_at_once = _integer(
            entry.get("calls_at_once", CALLS_AT_ONCE), f"{where}.calls_at_once", minimum=1, maximum=MAX_CALLS_AT_ONCE
        )
        has_token, has_name = "token_sha256" in entry, "certificate_common_name" in entry
        if has_token == has_name:
            raise ConfigError(
                f"{where}: give exactly one of token_sha256 (a bearer token's SHA-256) or certificate_common_name"
            )
        if has_token:
            digest_text = _string(entry["token_sha256"], f"{where}.token_sha256")
            if len(digest_text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest_text):
                raise ConfigError(
                    f"{where}.token_sha256: not 64 hexadecimal digits; write the SHA-256 of the token, as"
                    " `carbon-gateway token generate` prints it (never the token itself)"
                )
            digest = bytes.fromhex(digest_text)
            if digest in tokens:
                raise ConfigError(f"{where}.token_sha256: the same token as {tokens[digest]}; give each caller its own")
            tokens[digest] = where
            if tls is None and not loopback:
                raise ConfigError(
                    f"{where}.token_sha256: {_q(listen)} is not a loopback address and [operator.tls] is missing, so"
                    " the token would cross the network in plaintext; configure [operator.tls]"
                )
            callers.append(OperatorCaller(name=name, role=role, token_sha256=digest, calls_at_once=calls_at_once))
        else:
            common_name = _string(entry["certificate_common_name"], f"{where}.certificate_common_name")
            if tls is None or tls.client_ca is None:
                raise ConfigError(
                    f"{where}.certificate_common_name: client certificates need [operator.tls] client_ca, the CA"
                    " that issues callers' certificates"
                )
            if common_name.casefold() in partner_identities:
                raise ConfigError(
                    f"{where}.certificate_common_name: {_q(common_name)} is"
                    f" {partner_identities[common_name.casefold()]}; a partner exchange certificate must never call"
                    " the operator API"
                )
            # Without regard to case, as the certificate's name is matched: a CA may issue either spelling.
            if common_name.casefold() in common_names:
                raise ConfigError(
                    f"{where}.certificate_common_name: {_q(common_name)} is also"
                    f" {common_names[common_name.casefold()]}'s (names are compared without regard to case)"
                )
            common_names[common_name.casefold()] = where
            callers.append(
                OperatorCaller(name=name, role=role, certificate_common_name=common_name, calls_at_once=calls_at_once)
            )
    if not loopback and not callers:
        raise ConfigError(
            f"operator.listen: {_q(listen)} is not a loopback address and no [[operator.callers]] are configured, so"
            " nobody could call the operator API; add callers (with [operator.tls]) or listen on 127.0.0.1"
        )
    return OperatorAccessConfig(tls=tls, callers=tuple(callers), unauthenticated_loopback=unauthenticated)
