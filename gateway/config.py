"""Gateway configuration: a TOML file, documented in the README, read into typed values.

Relative paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.domain.protocol import DecisionPolicy, DecisionRule, Verdict, parse_purpose
from gateway.domain.records import PARTY_PATTERN


class ConfigError(ValueError):
    """The configuration file is missing a setting or has a malformed one."""


@dataclass(frozen=True)
class PartnerConfig:
    """A partner gateway: its Party, its partner-exchange address, and its trust document (loaded out of band)."""

    party: str
    address: str
    trust_document: Path
    tls_identity: str = ""
    http_url: str = ""


@dataclass(frozen=True)
class TLSConfig:
    """mTLS for the partner exchange: this gateway's certificate and key, and the CA that signs partners'."""

    certificate: Path
    private_key: Path
    ca_certificate: Path


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway needs to run."""

    party: str
    database: Path
    signer: str
    trust_document: Path
    operator_listen: str = "127.0.0.1:50051"
    partner_listen: str = "127.0.0.1:50052"
    http_listen: str | None = None
    partners: tuple[PartnerConfig, ...] = ()
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)
    tls: TLSConfig | None = None
    max_envelope_bytes: int = 1 << 20
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)
    max_message_lifetime: dt.timedelta = dt.timedelta(hours=24)
    message_lifetime: dt.timedelta = dt.timedelta(hours=12)
    hold_deadline: dt.timedelta = dt.timedelta(hours=48)
    decision_timeout: dt.timedelta = dt.timedelta(hours=72)


def _require(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: the setting {key!r} is missing")
    return table[key]


def _path(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _signer_uri(base: Path, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"signer: expected a signer URI or key path, got {value!r}")
    if ":" in value.split("/")[0]:
        scheme, _, rest = value.partition(":")
        if scheme == "file" and not rest.startswith("/"):
            return f"file:{base / rest}"
        return value
    return str(_path(base, value, "signer"))


def _policy(rules: object) -> DecisionPolicy:
    if not isinstance(rules, list):
        raise ConfigError("policy.rules: expected a list of tables")
    parsed = []
    for i, rule in enumerate(rules):
        where = f"policy.rules[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where}: expected a table")
        try:
            verdict = Verdict(_require(rule, "verdict", where))
        except ValueError:
            raise ConfigError(f"{where}.verdict: use accept, reject or hold") from None
        purpose = rule.get("purpose")
        parsed.append(
            DecisionRule(
                verdict=verdict,
                partner=str(rule.get("partner", "")),
                acquiring_account=str(rule.get("acquiring_account", "")),
                purpose=parse_purpose(purpose, field=f"{where}.purpose") if purpose else None,
                max_quantity=int(rule["max_quantity"]) if "max_quantity" in rule else None,
            )
        )
    return DecisionPolicy(tuple(parsed))


def load_config(path: Path) -> GatewayConfig:
    """Read and check a gateway's TOML configuration file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    party = _require(data, "party", str(path))
    if not isinstance(party, str) or not PARTY_PATTERN.match(party):
        raise ConfigError(f"party: {party!r} is not an ISO 3166-1 alpha-3 code")
    partners = []
    for i, p in enumerate(data.get("partners", [])):
        where = f"partners[{i}]"
        partners.append(
            PartnerConfig(
                party=str(_require(p, "party", where)),
                address=str(_require(p, "address", where)),
                trust_document=_path(base, _require(p, "trust_document", where), f"{where}.trust_document"),
                tls_identity=str(p.get("tls_identity", "")),
                http_url=str(p.get("http_url", "")),
            )
        )
    tls = None
    if "tls" in data:
        t = data["tls"]
        tls = TLSConfig(
            certificate=_path(base, _require(t, "certificate", "tls"), "tls.certificate"),
            private_key=_path(base, _require(t, "private_key", "tls"), "tls.private_key"),
            ca_certificate=_path(base, _require(t, "ca_certificate", "tls"), "tls.ca_certificate"),
        )
    limits = data.get("limits", {})
    return GatewayConfig(
        party=party,
        database=_path(base, _require(data, "database", str(path)), "database"),
        signer=_signer_uri(base, _require(data, "signer", str(path))),
        trust_document=_path(base, _require(data, "trust_document", str(path)), "trust_document"),
        operator_listen=str(data.get("operator", {}).get("listen", "127.0.0.1:50051")),
        partner_listen=str(data.get("partner", {}).get("listen", "127.0.0.1:50052")),
        http_listen=str(data["http"]["listen"]) if "http" in data and "listen" in data["http"] else None,
        partners=tuple(partners),
        policy=_policy(data.get("policy", {}).get("rules", [])),
        tls=tls,
        max_envelope_bytes=int(limits.get("max_envelope_bytes", 1 << 20)),
        clock_skew=dt.timedelta(seconds=float(limits.get("clock_skew_seconds", 300))),
        max_message_lifetime=dt.timedelta(seconds=float(limits.get("max_message_lifetime_seconds", 86400))),
        message_lifetime=dt.timedelta(seconds=float(limits.get("message_lifetime_seconds", 43200))),
        hold_deadline=dt.timedelta(seconds=float(limits.get("hold_deadline_seconds", 172800))),
        decision_timeout=dt.timedelta(seconds=float(limits.get("decision_timeout_seconds", 259200))),
    )
