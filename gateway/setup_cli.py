"""Setting up a Party: ``carbon-gateway init``, ``trust next`` and ``config check``.

- ``init --party CHN DIR`` writes what a new gateway needs into DIR: a signing key (or a PKCS#11 signer URI),
  its first signed trust document, demo mTLS certificates if asked, and a commented ``gateway.toml`` that
  ``carbon-gateway serve`` accepts as written;
- ``trust next --config FILE --new-key KEY`` drafts version N+1 of the Party's trust document for a key
  rotation, signed by the current trust keys and the new key: what ``RotateTrustDocument`` installs;
- ``config check FILE`` loads a configuration with the loader ``serve`` uses and names every wrong setting.

Each command returns 0 on success and 2 with one line on stderr when an input is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import functools
import glob
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.domain.access import is_loopback_host
from gateway.domain.records import PARTY_CODES
from gateway.ledger_cli import whole_number
from signing import Envelope, Role, Signer, SigningError, TrustDocument, TrustedParty, sign_trust_document
from signing.files import read_small_file
from signing.trust import MAX_VERSION

if TYPE_CHECKING:
    from cryptography import x509

    from gateway.config import GatewayConfig

EXIT_OK = 0
EXIT_USAGE = 2
"""The command line or an input file is unusable, or the configuration is wrong."""

CONFIG_FILE = "gateway.toml"
"""The configuration file ``init`` writes into its folder."""
TRUST_ROLES = ("trust", "transfer")
"""The roles a new key joins in the next trust document."""


class SetupError(Exception):
    """A failure to report as one line on stderr, with exit status 2."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``init``, ``trust`` and ``config`` subcommands to the ``carbon-gateway`` parser."""
    init = commands.add_parser(
        "init",
        help="write a new gateway's key, trust document and commented configuration into a folder",
        description="Write what a new gateway needs into DIR (created if missing; refused if it is not empty): "
        "keys/<party>.key (PKCS#8 PEM, mode 0600) unless --signer names a PKCS#11 key, <party>.trust.json "
        "(version 1, signed; publish it to partners), partners/ (where partners' trust documents go), tls/ with "
        "--demo-tls, and gateway.toml, commented, which `carbon-gateway serve` accepts as written.",
    )
    init.add_argument("--party", required=True, help="this gateway's Party: ISO 3166-1 alpha-3 code, e.g. CHN")
    init.add_argument(
        "--signer",
        metavar="URI",
        help="a pkcs11: signer URI (see the README, 'Signing and trust') to use instead of generating a key file",
    )
    init.add_argument(
        "--partner",
        action="append",
        default=[],
        metavar="PARTY=HOST:PORT",
        help="a partner gateway and its partner-exchange address (repeatable); its trust document goes in "
        "partners/<party>.trust.json",
    )
    init.add_argument(
        "--accept-from",
        action="append",
        default=[],
        metavar="PARTY",
        help="accept proposals from this partner without an operator's decision (repeatable); others are held",
    )
    init.add_argument("--operator-listen", default="127.0.0.1:50051", metavar="HOST:PORT", help="default: %(default)s")
    init.add_argument("--partner-listen", default="127.0.0.1:50052", metavar="HOST:PORT", help="default: %(default)s")
    init.add_argument(
        "--demo-tls",
        action="store_true",
        help="also write a demo CA and this gateway's mTLS certificate into tls/ (tests and demos only)",
    )
    init.add_argument(
        "--demo-tls-ca",
        metavar="FOLDER",
        help="with --demo-tls: issue the certificate from the demo CA in FOLDER (ca.crt and ca.key, e.g. another "
        "gateway's tls/ folder) so that the two gateways trust each other",
    )
    init.add_argument(
        "--days", type=whole_number, default=365, help="validity of the trust document in days (default: %(default)s)"
    )
    init.add_argument("folder", metavar="DIR", help="the folder to write into")
    init.set_defaults(func=_command("init", _init))

    trust = commands.add_parser("trust", help="this Party's trust document", description="Trust documents.")
    trust_commands = trust.add_subparsers(dest="trust_command", required=True, metavar="COMMAND")
    next_ = trust_commands.add_parser(
        "next",
        help="draft the next version of this Party's trust document for a key rotation",
        description="Draft version N+1 of the Party's trust document: the same Party, the version after the "
        "current one, a new expiry, the new key added to the trust and transfer roles (the current keys kept, "
        "or removed with --retire-old), signed by the current document's trust keys (the configured signers "
        "that hold them) and by the new key, so that partners holding version N accept it. Writes the document "
        "(to publish) and FILE.rotate.json, the RotateTrustDocument request that installs it.",
    )
    next_.add_argument("--config", required=True, metavar="FILE", help="the gateway's configuration file")
    next_.add_argument(
        "--new-key",
        required=True,
        metavar="KEY",
        help="the new key: a signer URI or key path (create one with `carbon-gateway keys generate`)",
    )
    next_.add_argument(
        "--signer-name",
        default="next",
        metavar="NAME",
        help="the name the new key has (or will have) under [signers] in the configuration (default: %(default)s)",
    )
    next_.add_argument(
        "--current",
        metavar="FILE",
        help="the current trust document, if newer than the configuration's trust_document and the version its"
        " gateway's database holds (which is read, and preferred to the configured one, without --current)",
    )
    next_.add_argument(
        "--retire-old", action="store_true", help="remove the current document's keys from the next version"
    )
    next_.add_argument(
        "--days", type=whole_number, default=365, help="validity in days from now (default: %(default)s)"
    )
    next_.add_argument(
        "--out", metavar="FILE", help="where to write the document (default: <party>.trust.v<N+1>.json beside it)"
    )
    next_.set_defaults(func=_command("trust next", _trust_next))

    config = commands.add_parser("config", help="gateway configuration files", description="Configuration files.")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = config_commands.add_parser(
        "check",
        help="check a configuration file the way `serve` reads it",
        description="Load FILE with the loader `carbon-gateway serve` uses. Prints one line per problem (file, "
        "setting, what is wrong, what is accepted) and exits 2, or a one-line summary and exits 0.",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_config_check)


def _command(name: str, body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except SetupError as exc:
            print(f"carbon-gateway {name}: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_USAGE

    return run


# -- init ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partner:
    """A partner named on the ``init`` command line."""

    party: str
    address: str


def _party(value: str, option: str) -> str:
    if value not in PARTY_CODES:
        hint = f"; write {value.upper()}" if value.upper() in PARTY_CODES else ", e.g. CHN"
        raise SetupError(f"{option} {value!r} is not an ISO 3166-1 alpha-3 code in capitals{hint}")
    return value


def _address(value: str, option: str, *, listen: bool) -> str:
    """``value`` checked as the configuration checks a listen address or a partner's address."""
    from gateway.config import ConfigError, _listen, _partner_address

    try:
        return (_listen if listen else _partner_address)(value, option)
    except ConfigError as exc:
        raise SetupError(str(exc)) from None


def _partners(values: Sequence[str], party: str) -> list[Partner]:
    partners: list[Partner] = []
    for value in values:
        name, sep, address = value.partition("=")
        if not sep:
            raise SetupError(f"--partner {value!r} is not PARTY=HOST:PORT, e.g. --partner CHE=127.0.0.1:50062")
        name = _party(name, "--partner")
        if name == party:
            raise SetupError(f"--partner {value!r}: {name} is this gateway's own Party")
        if any(p.party == name for p in partners):
            raise SetupError(f"--partner {name} is given twice")
        partners.append(Partner(name, _address(address, f"--partner {name}", listen=False)))
    return partners


def _init(args: argparse.Namespace) -> int:
    party = _party(args.party, "--party")
    partners = _partners(args.partner, party)
    named = {p.party for p in partners}
    for accepted in args.accept_from:
        if _party(accepted, "--accept-from") not in named:
            raise SetupError(f"--accept-from {accepted}: name it as a partner too (--partner {accepted}=HOST:PORT)")
    operator_listen = _address(args.operator_listen, "--operator-listen", listen=True)
    if not is_loopback_host(operator_listen.rpartition(":")[0]):
        raise SetupError(
            f"--operator-listen {operator_listen} is not a loopback address; `serve` opens the operator API"
            " beyond loopback only with [operator.tls] and [[operator.callers]], which are added after init (see"
            " the README, 'Callers, TLS and roles'): init with 127.0.0.1:PORT, then add them and change listen"
        )
    partner_listen = _address(args.partner_listen, "--partner-listen", listen=True)
    from gateway.config import ConfigError, check_distinct_listens

    try:  # what `serve` would refuse: the same port twice, on overlapping addresses
        check_distinct_listens(("--operator-listen", operator_listen), ("--partner-listen", partner_listen))
    except ConfigError as exc:
        raise SetupError(str(exc)) from None
    if not 1 <= args.days <= 3650:
        raise SetupError(f"--days {args.days} is not in 1..3650")
    if args.demo_tls_ca is not None and not args.demo_tls:
        raise SetupError("--demo-tls-ca needs --demo-tls")
    if args.signer is not None and not args.signer.lower().startswith("pkcs11:"):
        raise SetupError(
            f"--signer {args.signer!r} is not a pkcs11: URI; without --signer, init generates a key file itself"
        )
    folder = Path(args.folder)
    _check_empty(folder)
    parent = folder.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(folder.absolute().name), dir=parent))
    except OSError as exc:
        raise SetupError(f"cannot create {folder}: {exc.strerror or exc} ({parent})") from None
    # Everything is written into a hidden folder beside DIR, then moved into place: an init that fails or
    # is killed half way leaves DIR as it was.
    try:
        try:
            written = _write_gateway(staging, party, partners, args, operator_listen, partner_listen)
        except OSError as exc:
            raise SetupError(f"cannot write the gateway's files beside {folder}: {exc.strerror or exc}") from None
        _move_into(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _print_next_steps(folder, party, partners, written)
    _name_leftovers(parent, folder.absolute().name)
    return EXIT_OK


def _staging_prefix(name: str) -> str:
    """The start of the name of the hidden folder an init of ``name`` writes into: the folder's name, cut to 64
    bytes, so that a name the file system takes for DIR leaves room for the rest."""
    # File systems count a name's bytes, which need not be UTF-8: a character cut short stays bytes, as
    # os.fsdecode keeps any.
    return f".{os.fsdecode(os.fsencode(name)[:64])}.init-"


def _name_leftovers(parent: Path, name: str) -> None:
    """Name, on standard error, the staging folders of inits of ``name`` that were killed before they could
    remove them: they may hold private keys. They are not removed here, as another init may still be writing."""
    try:
        left = sorted(p for p in parent.glob(f"{glob.escape(_staging_prefix(name))}*") if p.is_dir())
    except OSError:
        return
    if left:
        shown = ", ".join(str(p) for p in left[:5]) + (", ..." if len(left) > 5 else "")
        print(
            f"carbon-gateway init: {len(left)} folder(s) of an earlier init that was stopped remain ({shown}); they"
            " may hold private keys: delete them once no other init runs",
            file=sys.stderr,
        )


def _check_empty(folder: Path) -> None:
    try:
        if not folder.exists():
            return
        is_folder = folder.is_dir()
    except OSError as exc:  # a name too long, a component that is a file
        raise SetupError(f"DIR {folder}: cannot be used as a folder: {exc.strerror or exc}") from None
    if not is_folder:
        raise SetupError(f"{folder} exists and is not a folder; choose a new folder")
    try:
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        raise SetupError(f"cannot read the folder {folder}: {exc.strerror or exc}") from None
    if CONFIG_FILE in entries:
        raise SetupError(f"{folder} already holds a gateway ({folder / CONFIG_FILE}); choose a new folder")
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise SetupError(f"{folder} is not empty ({shown}); init writes only into a new or empty folder")


def _move_into(staging: Path, folder: Path) -> None:
    try:
        if folder.exists():
            # An empty folder that exists (perhaps the working folder): move the contents, the configuration
            # last, so that a folder holding gateway.toml holds everything.
            names = sorted((p.name for p in staging.iterdir()), key=lambda n: n == CONFIG_FILE)
            for name in names:
                os.rename(staging / name, folder / name)
            staging.rmdir()
        else:
            os.rename(staging, folder)
    except OSError as exc:
        raise SetupError(f"cannot write into {folder}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class _Written:
    signer_uri: str
    keyid: str
    expires: dt.datetime
    tls: bool


def _write_gateway(
    folder: Path,
    party: str,
    partners: Sequence[Partner],
    args: argparse.Namespace,
    operator_listen: str,
    partner_listen: str,
) -> _Written:
    from gateway.harness import self_signed_trust_document
    from signing import generate_key, signer_from_uri

    name = party.lower()
    folder.chmod(0o755)
    (folder / "partners").mkdir()
    try:
        if args.signer is None:
            (folder / "keys").mkdir(mode=0o700)
            generate_key(folder / "keys" / name)
            signer_uri = f"file:keys/{name}.key"
            signer = signer_from_uri(f"file:{folder / 'keys' / name}.key")
        else:
            signer_uri = _as_configured(args.signer, Path(args.folder) / CONFIG_FILE)  # not the staging folder
            signer = signer_from_uri(_as_opened(args.signer))
    except SigningError as exc:
        raise SetupError(f"--signer: cannot use the key: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    envelope = self_signed_trust_document(party, signer, days=args.days, now=now)
    (folder / f"{name}.trust.json").write_bytes(envelope.to_json())
    if args.demo_tls:
        _write_demo_tls(folder / "tls", party, args.demo_tls_ca)
    (folder / CONFIG_FILE).write_text(
        render_config(
            party,
            signer_uri=signer_uri,
            partners=partners,
            accept_from=args.accept_from,
            operator_listen=operator_listen,
            partner_listen=partner_listen,
            tls=args.demo_tls,
            created=now,
        ),
        encoding="utf-8",
    )
    return _Written(signer_uri, signer.keyid, TrustedParty.restore(envelope).expires, args.demo_tls)


def _write_demo_tls(out: Path, party: str, ca_folder: str | None) -> None:
    from gateway.tls import CA_CERTIFICATE_FILE, CA_KEY_FILE, CertificateError, write_gateway_certificates

    out.mkdir(mode=0o700)
    if ca_folder is not None:
        for file in (CA_CERTIFICATE_FILE, CA_KEY_FILE):
            source = Path(ca_folder) / file
            try:
                data = read_small_file(source)
            except FileNotFoundError:
                # A gateway that borrowed a demo CA kept only its certificate: the key is with the first one.
                raise SetupError(
                    f"--demo-tls-ca: {source} does not exist; name the tls folder of the gateway whose init created"
                    f" the demo CA (it holds {CA_CERTIFICATE_FILE} and {CA_KEY_FILE}; a gateway that borrowed it"
                    " keeps no key)"
                ) from None
            except OSError as exc:
                raise SetupError(f"--demo-tls-ca: cannot read {source}: {exc.strerror or exc}") from None
            target = out / file
            target.write_bytes(data)
            target.chmod(0o600 if file == CA_KEY_FILE else 0o644)
    try:
        write_gateway_certificates(out, [party], f"carbon-gateway demo CA ({party})", 365)
    except CertificateError as exc:
        raise SetupError(f"--demo-tls: {exc}") from None
    finally:
        if ca_folder is not None:
            # The borrowed CA's key stays with the CA: this gateway needs only its certificate.
            (out / CA_KEY_FILE).unlink(missing_ok=True)


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def render_config(
    party: str,
    *,
    signer_uri: str,
    partners: Sequence[Partner],
    accept_from: Sequence[str],
    operator_listen: str,
    partner_listen: str,
    tls: bool,
    created: dt.datetime,
) -> str:
    """The commented ``gateway.toml`` that ``init`` writes."""
    name = party.lower()
    lines = [
        f"# carbon-gateway configuration of the {party} gateway, written by `carbon-gateway init` on"
        f" {created:%Y-%m-%d}.",
        "# Check it with `carbon-gateway config check gateway.toml`, run it with `carbon-gateway serve gateway.toml`.",
        "# Relative paths are resolved against this file's folder. An unknown or misspelt setting is refused.",
        "",
        "# This gateway's Party: an ISO 3166-1 alpha-3 code.",
        f"party = {_toml(party)}",
        "",
        "# The database: a SQLite file, created if missing (WAL, durable commits). Keep it on a local disk and",
        "# back it up: it is the Party's record of everything that crossed borders.",
        f"database = {_toml(name + '.db')}",
        "# With PostgreSQL (versions that support it), replicas of one gateway share one database:",
        '# database = "postgresql://user@host/db"',
        "",
        "# The key that signs statements and receipts: a signer URI (file:PATH, file:PATH?passphrase-file=FILE,",
        "# pkcs11:...) or a key path. See the README, 'Signing and trust'.",
        f"signer = {_toml(signer_uri)}",
        "",
        "# This gateway's own signed trust document (version 1, written by init). Publish this file to every",
        "# partner, and tell them its keyid out of band so that they can check it.",
        f"trust_document = {_toml(name + '.trust.json')}",
        "",
        "# Further signers, by name, that RotateTrustDocument may switch to (see `carbon-gateway trust next`).",
        "# [signers]",
        f'# next = "file:keys/{name}-2.key"',
        "",
        "[operator]",
        "# The operator gRPC API (OperatorService, MappingService, health, reflection). It takes every operator",
        "# action. Off loopback it needs [operator.tls] and [[operator.callers]] (see the README, 'Callers, TLS",
        "# and roles'); `carbon-gateway token generate --out FILE` makes a token and prints its token_sha256 line.",
        f"listen = {_toml(operator_listen)}",
        *(
            [
                "# Callers on this machine without credentials act as the administrator. Remove this line (and add",
                "# callers) when anyone you would not give the administrator role can open a loopback connection.",
                "unauthenticated_loopback = true",
            ]
            if is_loopback_host(operator_listen.rpartition(":")[0])
            else ["# unauthenticated_loopback = true      # only allowed when listen is a loopback address"]
        ),
        "# [operator.tls]",
        '# certificate = "tls/operator.crt"',
        '# private_key = "tls/operator.key"',
        '# client_ca = "tls/operator-ca.crt"    # with it, every caller must present a certificate it issued',
        "# [[operator.callers]]",
        '# name = "alice"',
        '# role = "operator"                    # "read-only", "operator" or "administrator"',
        '# token_sha256 = "..."                 # or certificate_common_name = "alice"',
        "# calls_at_once = 64                   # calls in progress at once, in each serve process (1 to 1024)",
        "",
        "[partner]",
        "# The partner exchange (gRPC) that partners deliver signed statements to. Use 0.0.0.0:PORT to accept",
        "# partners on other hosts.",
        f"listen = {_toml(partner_listen)}",
        "",
        "# Optional: the partner exchange in JSON, the published trust documents, health and metrics over HTTP.",
        "# [http]",
        '# listen = "0.0.0.0:8443"',
        "",
    ]
    tls_lines = [
        "# mTLS for the partner exchange: this gateway's certificate and key, and the CA that signs partners'.",
        "# Without it the gateway warns loudly at start: partners' transport identity is not checked.",
    ]
    tls_values = [
        "[tls]",
        f'certificate = "tls/{name}.crt"',
        f'private_key = "tls/{name}.key"',
        'ca_certificate = "tls/ca.crt"',
    ]
    if tls:
        tls_lines.append("# These are demo certificates (`--demo-tls`): not for production PKI.")
        lines += [*tls_lines, *tls_values, ""]
    else:
        lines += [*tls_lines, *("# " + line for line in tls_values), ""]
    lines.append(
        "# Partner gateways. Each partner's first trust document is obtained out of band and kept under partners/;"
    )
    lines.append("# check its keyids with the partner before the first start.")
    for partner in partners:
        lines += [
            "[[partners]]",
            f"party = {_toml(partner.party)}",
            "# Its partner exchange, HOST:PORT.",
            f"address = {_toml(partner.address)}",
            f"# Its first trust document, as {partner.party} published it.",
            f"trust_document = {_toml('partners/' + partner.party.lower() + '.trust.json')}",
            "# The certificate common name expected with [tls] (default: the Party code):",
            f"# tls_identity = {_toml(partner.party)}",
            "# Where it publishes its trust documents, for RefreshPartnerTrust:",
            f'# http_url = "https://{partner.party.lower()}.example:8443"',
            "# Its size cap: larger statements are refused at the operator API (default 1048576):",
            "# max_envelope_bytes = 1048576",
            "",
        ]
    if not partners:
        lines += [
            "# [[partners]]",
            '# party = "CHE"',
            '# address = "che.example:50052"',
            '# trust_document = "partners/che.trust.json"',
            "",
        ]
    lines += [
        "# The issuing registries (serial spaces). Without [[registries]] the gateway knows CN-CEA (unit kind CEA)",
        "# and CN-CCER (unit kind CCER), both kept by CHN; list every registry once you list one:",
        "# [[registries]]",
        '# code = "CN-CCER"',
        '# unit_kinds = ["CCER"]',
        '# party = "CHN"                        # the Party whose gateway is its registry of record',
        '# issuance_pattern = ""                # an RE2 expression, where serials restart per issuance',
        "",
        "[policy]",
        "# What to do with a partner's proposal: the first matching rule decides; no match holds it for an",
        "# operator (DecideTransfer). A rule's verdict is accept, reject or hold; it may match on partner,",
        "# acquiring_account, purpose (NDC, OIMP, IMP, OP, 'NDC and OIMP', ...) and max_quantity.",
        "rules = [",
    ]
    for accepted in accept_from:
        lines.append(f'  {{ verdict = "accept", partner = {_toml(accepted)} }},')
    lines += [
        '  { verdict = "hold" },',
        "]",
        '# For example: { verdict = "accept", partner = "CHE", purpose = "NDC", max_quantity = 100000 }',
        "",
        "# Limits, with their defaults:",
        "# [limits]",
        "# max_envelope_bytes = 1048576           # size cap checked before any parsing",
        "# clock_skew_seconds = 300",
        "# max_message_lifetime_seconds = 86400   # the longest validity window accepted from a partner",
        "# message_lifetime_seconds = 43200       # the validity window of the statements this gateway signs",
        "# hold_deadline_seconds = 172800         # a held incoming proposal is rejected after this",
        "# decision_timeout_seconds = 259200      # an outgoing transfer with no Decision is terminated after this",
        "# status_query_after_seconds = 900       # a transfer waiting this long asks its partner for its status",
        "# deliveries_at_once = 16                # partner deliveries handled at once (gRPC and JSON), 1 to 1024",
        "# deliveries_per_address = 4             # of those, from one address: raise it behind a proxy or NAT",
        "",
        "# The NDC period and the corresponding-adjustment method, chosen once (README, 'The adjustment ledger');",
        "# without it, uses towards the NDC are refused; the AEF report also needs party_registry and gwp_values:",
        "# [ledger]",
        "# ndc_first_year = 2021",
        "# ndc_last_year = 2030",
        '# adjustment_method = "single-year averaging"   # or "single-year trajectory", "multi-year"',
        '# averaging_divisor = "elapsed years"           # or "years of the NDC period"',
        f'# party_registry = "{party}01"                  # the Party ITMO registry ID in AEF reports',
        '# gwp_values = "AR5"                        # the GWP values applied, as the AEF report states them',
        "",
        "# Reconciliation with each partner (0: never):",
        "# [reconciliation]",
        "# every_seconds = 86400",
        "",
    ]
    return "\n".join(lines)


def _print_next_steps(folder: Path, party: str, partners: Sequence[Partner], written: _Written) -> None:
    name = party.lower()
    config = folder / CONFIG_FILE
    print(f"Created the {party} gateway in {folder}:")
    print(f"  {config}  configuration, commented")
    if written.signer_uri.startswith("file:"):
        print(f"  {folder / 'keys' / (name + '.key')}  signing key (keep it secret; mode 0600)")
    else:
        print(f"  signer {written.signer_uri}")
    print(
        f"  {folder / (name + '.trust.json')}  trust document version 1, keyid {written.keyid},"
        f" expires {written.expires:%Y-%m-%d}"
    )
    if written.tls:
        print(f"  {folder / 'tls'}  demo mTLS certificates (not for production)")
    print("Next steps:")
    print(f"  1. Publish {folder / (name + '.trust.json')} to every partner; give them its keyid out of band.")
    if partners:
        for partner in partners:
            target = folder / "partners" / f"{partner.party.lower()}.trust.json"
            print(f"  2. Put {partner.party}'s trust document in {target} (check its keyid with {partner.party}).")
    else:
        print(f"  2. Add each partner to {config} ([[partners]]) and put its trust document under partners/.")
    print(f"  3. carbon-gateway config check {config}")
    print(f"  4. carbon-gateway serve {config}")


# -- trust next ----------------------------------------------------------------------------------------


def _trust_next(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.domain.errors import GatewayError
    from gateway.exchange import apply_trust_update
    from signing import signer_from_uri

    config_path = Path(args.config)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise SetupError(f"{config_path}: {exc}") from None
    if not 1 <= args.days <= 3650:
        raise SetupError(f"--days {args.days} is not in 1..3650")
    current_path = Path(args.current) if args.current else config.trust_document
    setting = "--current" if args.current else "trust_document"
    current = _read_trust(current_path, setting)
    if current.party != config.party:
        raise SetupError(f"{current_path} is {current.party}'s trust document, not {config.party}'s")
    where, drafted_from = str(current_path), ""
    stored = _stored_own_document(config)
    if stored is not None and stored.version > current.version:
        # A rotation installed a later version than the file's: serve starts from it, and partners expect the
        # version after it. A draft from the file's would compete with the installed version.
        if args.current:
            raise SetupError(
                f"--current: {current_path} is version {current.version}, but the gateway's database"
                f" {config.database} holds version {stored.version}, installed by a rotation: leave out --current"
                " to draft from the stored version, or name a document at least that new"
            )
        drafted_from = (
            f"drafted from version {stored.version}, stored in {config.database} by a rotation (trust_document"
            f" {current_path} is version {current.version})"
        )
        current, where = stored, f"the document stored in {config.database}"
    if current.version >= MAX_VERSION:
        raise SetupError(
            f"{setting}: {where} is version {current.version}, the last a trust document can have: there is"
            " no next version to draft"
        )
    try:
        new_signer = signer_from_uri(_as_opened(args.new_key))
    except SigningError as exc:
        raise SetupError(
            f"--new-key {args.new_key!r}: {exc}"
            + ("" if "keys generate" in str(exc) else "; create a key with `carbon-gateway keys generate --out PREFIX`")
        ) from None
    configured = _configured_signer(config, config_path, args.signer_name, new_signer)
    document = current.document
    if new_signer.public_key.public_bytes in {k.public_bytes for k in document.keys.values()}:
        raise SetupError(f"--new-key: the key {new_signer.keyid[:16]}... is already in version {document.version}")
    for partner in config.partners:
        theirs = _read_trust(partner.trust_document, f"partners ({partner.party}'s trust_document)").document
        if new_signer.public_key.public_bytes in {k.public_bytes for k in theirs.keys.values()}:
            raise SetupError(
                f"--new-key: the key {new_signer.keyid[:16]}... is {partner.party}'s (its trust document"
                f" {partner.trust_document} lists it): {partner.party} could sign as {config.party}. Create a key"
                " of this gateway's own with `carbon-gateway keys generate --out PREFIX`"
            )
    old_signers = _current_trust_signers(config.signers, document, config_path)
    next_document = next_trust_document(
        document, new_signer, retire_old=args.retire_old, expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=args.days)
    )
    envelope = sign_trust_document(next_document, [*old_signers, new_signer])
    try:
        # What RotateTrustDocument checks first; its own signer check follows from the transfer role.
        apply_trust_update(current, envelope, dt.datetime.now(dt.UTC))
    except GatewayError as exc:
        raise SetupError(f"the drafted document would be refused: {exc.message}") from None
    out = (
        Path(args.out)
        if args.out
        else current_path.with_name(f"{config.party.lower()}.trust.v{next_document.version}.json")
    )
    request_path = out.with_name(out.name.removesuffix(".json") + ".rotate.json")
    request = {
        "idempotency_key": f"rotate-{config.party.lower()}-v{next_document.version}",
        "envelope_json": base64.b64encode(envelope.to_json()).decode("ascii"),
        "signer": args.signer_name,
    }
    for path in (out, request_path):
        try:
            exists = path.exists()
        except OSError as exc:  # a name too long
            raise SetupError(f"--out: cannot write {path}: {exc.strerror or exc}") from None
        if exists and path.is_dir():
            raise SetupError(f"--out: {path} is a folder; name the file to write, such as {path / 'trust.json'}")
        if exists:
            raise SetupError(f"refusing to overwrite {path}; remove it or choose --out")
    _write_new(out, envelope.to_json())
    _write_new(request_path, json.dumps(request, indent=2).encode() + b"\n")
    print(
        f"wrote {out}: {config.party} trust document version {next_document.version}, expires"
        f" {next_document.expires:%Y-%m-%d}, keys {', '.join(k[:16] for k in next_document.keys)}"
    )
    if drafted_from:
        print(f"  {drafted_from}")
    print(f"wrote {request_path}: the RotateTrustDocument request that installs it")
    print("Next steps:")
    step = 1
    if not configured:
        print(
            f"  {step}. Add the new key to {config_path} under [signers]:"
            f" {args.signer_name} = {_toml(_as_configured(args.new_key, config_path))},"
            " and restart the gateway."
        )
        step += 1
    print(f"  {step}. carbon-gateway call RotateTrustDocument --config {config_path} - < {request_path}")
    print(f"  {step + 1}. Publish {out} to every partner (the gateway also pushes it to them).")
    return EXIT_OK


def _configured_signer(config: GatewayConfig, config_path: Path, name: str, new_signer: Signer) -> bool:
    """Whether the configuration already names the new key ``name``; refuse a name that is not a bare TOML key,
    or one the configuration gives to another key (the request would name that signer, which the new document
    does not list)."""
    from gateway.config import DEFAULT_SIGNER_NAME, SIGNER_NAME
    from signing import signer_from_uri

    if not SIGNER_NAME.fullmatch(name):
        raise SetupError(
            f"--signer-name {name[:70]!r}: use 1 to 64 letters, digits, '-' or '_' (the name goes under [signers])"
        )
    uri = config.signers.get(name)
    if uri is None:
        return False
    setting = "signer" if name == DEFAULT_SIGNER_NAME else f"signers.{name}"
    try:
        keyid = signer_from_uri(uri).keyid
    except SigningError as exc:
        raise SetupError(f"{config_path}: {setting}: {exc}") from None
    if keyid != new_signer.keyid:
        raise SetupError(
            f"--signer-name {name}: {config_path} already gives {setting} another key ({keyid[:16]}...), not the new"
            f" one ({new_signer.keyid[:16]}...); choose a name not in use, such as {name}-2"
        )
    return True


def _as_configured(uri: str, config_path: Path) -> str:
    """``uri`` as ``config_path`` must spell it: a path given relative to the current folder (a key file's, or a
    pkcs11 URI's module-path and ``pin-source=file:``) becomes relative to the configuration's folder (against
    which the configuration's paths resolve), or absolute when the file is not under that folder."""
    from gateway.config import pkcs11_paths

    prefix, path = "", uri
    if ":" in uri.split("/")[0]:
        scheme, _, rest = uri.partition(":")
        if scheme.lower() == "pkcs11":
            return pkcs11_paths(uri, lambda relative: _relative_to_config(relative, config_path))
        if scheme != "file":
            return uri
        prefix, path = "file:", rest
    if Path(path).is_absolute():
        return uri
    return prefix + _relative_to_config(path, config_path)


def _as_opened(uri: str) -> str:
    """A pkcs11 URI with its relative paths made absolute against the current folder, as this command opens
    them (the signer itself takes only absolute PIN files); any other URI unchanged."""
    from gateway.config import pkcs11_paths

    if uri.partition(":")[0].lower() != "pkcs11":
        return uri
    return pkcs11_paths(uri, lambda relative: str(Path(relative).resolve()))


def _relative_to_config(path: str, config_path: Path) -> str:
    """``path``, relative to the current folder, as the configuration at ``config_path`` must spell it."""
    file, base = Path(path).resolve(), config_path.resolve().parent
    return str(file.relative_to(base) if file.is_relative_to(base) else file)


def _write_new(path: Path, data: bytes) -> None:
    """Write a new file whole or not at all: a temporary file beside it, linked into place (never replacing)."""
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(file.name, path)
        finally:
            os.unlink(file.name)
    except FileExistsError:
        raise SetupError(f"refusing to overwrite {path}; remove it or choose --out") from None
    except OSError as exc:
        raise SetupError(f"cannot write {path}: {exc.strerror or exc}") from None


def _read_trust(path: Path, setting: str) -> TrustedParty:
    from signing import EnvelopeFormatError, TrustError

    try:
        data = read_small_file(path)
    except OSError as exc:
        raise SetupError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return TrustedParty.restore(Envelope.from_json(data))
    except (EnvelopeFormatError, TrustError, SigningError) as exc:
        raise SetupError(f"{setting}: {path} is not a signed trust document: {exc}") from None


def _current_trust_signers(signers: Mapping[str, str], document: TrustDocument, config: Path) -> list[Signer]:
    """Configured signers whose keys are in the current ``trust`` role, as many as its threshold needs."""
    from signing import signer_from_uri

    trust_keys = set(document.roles["trust"].keyids)
    chosen: list[Signer] = []
    seen: set[bytes] = set()
    for name, uri in sorted(signers.items()):
        try:
            signer = signer_from_uri(uri)
        except SigningError as exc:
            raise SetupError(f"{config}: the signer {name!r} cannot be used: {exc}") from None
        if signer.keyid in trust_keys and signer.public_key.public_bytes not in seen:
            chosen.append(signer)
            seen.add(signer.public_key.public_bytes)
    threshold = document.roles["trust"].threshold
    if len(chosen) < threshold:
        raise SetupError(
            f"version {document.version}'s trust role needs {threshold} signature(s), but {config} configures"
            f" {len(chosen)} signer(s) holding its keys; configure them under signer or [signers]"
        )
    return chosen[:threshold]


def next_trust_document(
    current: TrustDocument, new_signer: Signer, *, retire_old: bool, expires: dt.datetime
) -> TrustDocument:
    """Version N+1 of ``current`` with ``new_signer``'s key added to the trust and transfer roles.

    With ``retire_old`` the current keys leave every role; a threshold is kept, capped at the role's keys.
    """
    new_key = new_signer.public_key
    keys = {} if retire_old else dict(current.keys)
    keys[new_key.keyid] = new_key
    roles: dict[str, Role] = {}
    for name, role in current.roles.items():
        keyids = [] if retire_old else list(role.keyids)
        if name in TRUST_ROLES:
            keyids.append(new_key.keyid)
        if not keyids:
            raise SetupError(f"--retire-old would leave the role {name!r} without keys")
        roles[name] = Role(tuple(keyids), min(role.threshold, len(keyids)))
    return TrustDocument(party=current.party, version=current.version + 1, expires=expires, keys=keys, roles=roles)


# -- config check --------------------------------------------------------------------------------------


def _config_check(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, UnknownKeysError, load_config

    path = Path(args.file)
    try:
        config = load_config(path)
    except UnknownKeysError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        message = " ".join(str(exc).split())
        prefix = "" if message.startswith(str(path)) else f"{path}: "
        print(f"{prefix}{message}", file=sys.stderr)
        return EXIT_USAGE
    problems = file_problems(config)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    for warning in file_warnings(config, dt.datetime.now(dt.UTC)):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    partners = ", ".join(p.party for p in config.partners) or "none"
    print(
        f"{path}: OK: {config.party} gateway, operator API {config.operator_listen}, partner exchange"
        f" {config.partner_listen}, partners {partners}, TLS {'on' if config.tls else 'off'}"
    )
    return EXIT_OK


def _stored_own_document(config: GatewayConfig) -> TrustedParty | None:
    """The newest version of the Party's own trust document its database holds (after a rotation it is
    later than the configured one, and ``serve`` starts from it); None for none, or a database not readable."""
    return _stored_document(config, config.party)


def _stored_document(config: GatewayConfig, party: str) -> TrustedParty | None:
    """The newest version of ``party``'s trust document the gateway's database holds; None for none, or
    a database not readable."""
    rows = _stored_rows(config, party, 0)
    if rows is None or rows[0] is None:
        return None
    try:
        return TrustedParty.restore(Envelope.from_json(rows[0][1]))
    except (SigningError, ValueError):
        return None  # `serve` names what is wrong with the database itself


def _stored_rows(
    config: GatewayConfig, party: str, version: int
) -> tuple[tuple[int, bytes] | None, bytes | None] | None:
    """The newest stored version of ``party``'s trust document (its number and envelope) and the stored envelope
    of ``version``, from the gateway's database (an SQLite file or a PostgreSQL database), read without changing
    it; None when there is no such database to read."""
    if not isinstance(config.database, Path):
        return _stored_rows_postgres(config.database, party, version)
    try:
        if not config.database.is_file():
            return None
        db = sqlite3.connect(f"{config.database.resolve().as_uri()}?mode=ro", uri=True)
        try:
            newest = db.execute(
                "SELECT version, envelope FROM trust_documents WHERE party = ? ORDER BY version DESC LIMIT 1", (party,)
            ).fetchone()
            same = db.execute(
                "SELECT envelope FROM trust_documents WHERE party = ? AND version = ?", (party, version)
            ).fetchone()
        finally:
            db.close()
    except (OSError, sqlite3.Error, ValueError):
        return None  # `serve` names what is wrong with the database itself
    return (None if newest is None else (int(newest[0]), bytes(newest[1]))), None if same is None else bytes(same[0])


def _stored_rows_postgres(url: str, party: str, version: int) -> tuple[tuple[int, bytes] | None, bytes | None] | None:
    """`_stored_rows` from a PostgreSQL database, through a read-only connection; None for a server that does
    not answer or a database no gateway of this version has started on (``serve`` names either)."""
    import asyncpg

    from gateway.store.postgres import DatabaseUnavailable, PostgresStore

    async def read() -> tuple[tuple[int, bytes] | None, bytes | None]:
        store = await PostgresStore.open_read_only(url)
        try:
            # A snapshot, no lock: a write transaction would wait for the write lock a running gateway holds
            # (for as long as a large transfer takes), and hold that gateway's writers up once it had it.
            async with store.read() as tx:
                return await tx.latest_trust_document(party), await tx.trust_document(party, version)
        finally:
            await store.close()

    try:
        return asyncio.run(read())
    except (DatabaseUnavailable, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None


def postgres_database_problems(url: str, party: str, adjustments: str | None = None) -> list[str]:
    """What ``serve`` would refuse at start in a PostgreSQL database, read through a read-only connection: a
    database the server does not have, a login it refuses, another program's tables, a schema a newer version
    migrated, one another Party's gateway started on, or one whose ledger was kept under adjustment settings other
    than ``adjustments``. A server that does not answer is left
    to ``serve``, as a port in use is."""
    import asyncpg

    from gateway.node import ADJUSTMENT_SETTING, PARTY_SETTING
    from gateway.store.base import NotAGatewayDatabase, SchemaTooNew, check_gateway_tables, check_schema_known
    from gateway.store.pg_migrations import PG_MIGRATIONS
    from gateway.store.postgres import SCHEMA_TABLES, redact

    async def read() -> dict[str, str]:
        connection = await asyncpg.connect(
            url,
            timeout=10,
            server_settings={"application_name": "carbon-gateway", "default_transaction_read_only": "on"},
        )
        try:
            tables = await connection.fetch(SCHEMA_TABLES)
            names = {str(row[0]) for row in tables}
            check_gateway_tables("the PostgreSQL database", names)
            if "schema_migrations" in names:  # what serve's migration refuses first, as serve words it
                applied = {int(row[0]) for row in await connection.fetch("SELECT version FROM schema_migrations")}
                check_schema_known("the PostgreSQL database", applied, max(v for v, _, _ in PG_MIGRATIONS))
            if not await connection.fetchval("SELECT to_regclass('settings') IS NOT NULL"):
                return {}  # no gateway has started on it yet
            rows = await connection.fetch(
                "SELECT name, value FROM settings WHERE name = $1 OR name = $2", PARTY_SETTING, ADJUSTMENT_SETTING
            )
            return {str(row[0]): str(row[1]) for row in rows}
        finally:
            await connection.close()

    try:
        settings = asyncio.run(read())
    except NotAGatewayDatabase as exc:
        return [f"database: {redact(url)}: {exc}"]
    except SchemaTooNew as exc:
        return [f"database: {exc}"]
    except asyncpg.InvalidCatalogNameError:
        return [
            f"database: {redact(url)}: the database does not exist on that server; create it (serve creates the"
            " tables, not the database) or correct the URL"
        ]
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        return [
            f"database: {redact(url)}: the server refused the login ({type(exc).__name__}); check the user and the"
            " password (in the URL, PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf"
        ]
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError):
        return []  # a server that does not answer now: serve names it when it starts
    return _recorded_settings_problems(settings, party, adjustments)


def _recorded_settings_problems(settings: Mapping[str, str], party: str, adjustments: str | None) -> list[str]:
    """What ``serve`` refuses in the settings a database recorded (its own `settings` rows): another Party's
    books, or a ledger kept under adjustment settings other than ``adjustments`` (None for none configured)."""
    from gateway.node import ADJUSTMENT_SETTING, PARTY_SETTING, another_partys_database, other_adjustment_settings

    recorded_party = settings.get(PARTY_SETTING)
    if recorded_party is not None and recorded_party != party:
        return [str(another_partys_database(recorded_party, party))]
    recorded = settings.get(ADJUSTMENT_SETTING)
    if adjustments is not None and recorded is not None and recorded != adjustments:
        return [str(other_adjustment_settings(recorded, adjustments))]
    return []


SQLITE_MAGIC = b"SQLite format 3\x00"


def database_problems(path: Path, party: str, adjustments: str | None = None) -> list[str]:
    """What ``serve`` would refuse in an existing SQLite database, read without changing it: a path that names
    no regular file (a device, a symbolic link to nothing or a loop), a file that is not SQLite, a write-ahead
    log with a damaged header, a database a newer version migrated, one another Party's gateway started on, or
    one whose ledger was kept under adjustment settings other than ``adjustments`` (the configured ones,
    described as the database records them; None for none configured). A missing file is created by ``serve``
    and is no problem."""
    from gateway.node import ADJUSTMENT_SETTING, PARTY_SETTING
    from gateway.store.base import NotAGatewayDatabase, SchemaTooNew, check_gateway_tables, check_schema_known
    from gateway.store.migrations import MIGRATIONS
    from gateway.store.sqlite import WriteAheadLogDamaged, check_write_ahead_log, schema_tables

    try:
        if not path.exists():
            check_write_ahead_log(path)  # only a log left without its database
            return []  # created by serve
        if path.is_dir():
            return []  # a folder, which check_database_file names
        if not path.is_file():
            return [f"database: {path} is not a regular file; name this gateway's database file"]
    except OSError:
        return []  # a name the file system cannot take: check_database_file names it
    except WriteAheadLogDamaged as exc:
        return [f"database: {exc}"]
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_MAGIC))
    except OSError as exc:
        return [f"database: {path} cannot be read: {exc.strerror or exc}"]
    if head and head != SQLITE_MAGIC:
        return [f"database: {path} is not an SQLite database; name this gateway's database file, or a new path"]
    try:
        check_write_ahead_log(path)
    except WriteAheadLogDamaged as exc:
        return [f"database: {exc}"]
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = schema_tables(db)
            applied = (
                {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
                if "schema_migrations" in tables
                else set()
            )
            settings: dict[str, str] = {}
            if "settings" in tables:
                query = "SELECT name, value FROM settings WHERE name IN (?, ?)"
                settings = dict(db.execute(query, (PARTY_SETTING, ADJUSTMENT_SETTING)).fetchall())
        finally:
            db.close()
    except sqlite3.Error as exc:
        return [f"database: {path} cannot be used as this gateway's SQLite database ({exc})"]
    try:  # what serve's migration refuses first, as serve words it
        check_schema_known("the SQLite database", applied, max(version for version, _, _ in MIGRATIONS))
    except SchemaTooNew as exc:
        return [f"database: {path}: {exc}"]
    # Another Party's books are named as such, whatever else is wrong with the file: it is not this gateway's.
    recorded = _recorded_settings_problems(settings, party, adjustments)
    try:
        check_gateway_tables(str(path), tables)
    except NotAGatewayDatabase as exc:
        return recorded or [f"database: {exc}"]
    return recorded


def file_problems(config: GatewayConfig) -> list[str]:
    """What ``serve`` would refuse in the files a loaded configuration names: trust documents that are missing,
    unreadable or another Party's, an own trust document (its newest version) whose transfer role needs more than
    one signature, signers that cannot be opened or that the newest version of the Party's own
    trust document does not list, TLS files that are missing, not PEM or not paired, a database path that is a
    folder or in a folder that does not exist, and an existing SQLite database ``serve`` would refuse
    (`database_problems`). The TLS and database checks are the ones ``serve`` runs at start.
    Ports are not probed: the gateway may be running."""
    from gateway.config import DEFAULT_SIGNER_NAME, ConfigError
    from gateway.domain.errors import GatewayError
    from gateway.node import (
        _signer,
        _trust_envelope,
        check_callers_not_own_certificate,
        check_database_file,
        check_operator_tls,
        check_tls,
        partner_identities,
    )
    from gateway.partners import TRANSFER_ROLE
    from gateway.trust import _one_signature_suffices, configured_after_stored

    problems: list[str] = []
    own: TrustedParty | None = None
    documents = [("trust_document", config.trust_document, config.party)]
    documents += [(f"partners[{i}].trust_document", p.trust_document, p.party) for i, p in enumerate(config.partners)]
    for setting, path, party in documents:
        try:
            trusted = TrustedParty.restore(_trust_envelope(path, setting))
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if trusted.party != party:
            problems.append(f"{setting}: {path} is {trusted.party}'s trust document, not {party}'s")
            continue
        if setting == "trust_document":
            own = trusted
        rows = _stored_rows(config, party, trusted.version)
        if rows is not None:
            try:  # what serve decides at start: a document swapped in the file does not replace trusted keys
                configured_after_stored(party, trusted, *rows, dt.datetime.now(dt.UTC), setting)
            except GatewayError as exc:
                problems.append(f"{exc.field}: {exc.message}")
    keyids: set[str] = set()
    opened = 0
    for name, uri in config.signers.items():
        try:
            keyids.add(_signer(uri, name).keyid)
            opened += 1
        except ConfigError as exc:
            problems.append(str(exc))
    stored = _stored_own_document(config)
    newest = stored if own is not None and stored is not None and stored.version > own.version else own
    if newest is not None:
        try:  # what serve checks of the document it starts from, the newest version
            _one_signature_suffices(newest.document, "own trust document", field="trust_document")
        except GatewayError as exc:
            problems.append(f"{exc.field or 'signer'}: {exc.message}")
    listed = set() if newest is None else set(newest.document.roles[TRANSFER_ROLE].keyids)
    if newest is not None and opened == len(config.signers) and not keyids & listed:
        names = ", ".join("signer" if n == DEFAULT_SIGNER_NAME else f"signers.{n}" for n in sorted(config.signers))
        where = "stored in the database" if newest is stored else str(config.trust_document)
        problems.append(
            f"signer: the transfer role of {config.party}'s trust document version {newest.version} ({where}) lists"
            f" none of the configured signers ({names}), and serve signs only with a key the newest version lists:"
            f" configure its key, or point trust_document at a later version that lists yours"
        )
    checks: list[Callable[[], object]] = []
    if config.tls is not None:
        checks.append(functools.partial(check_tls, config.tls, partner_identities(config)))
        checks.append(functools.partial(check_callers_not_own_certificate, config))
    if config.operator_access.tls is not None:
        checks.append(functools.partial(check_operator_tls, config.operator_access.tls))
    if isinstance(config.database, Path):
        checks.append(functools.partial(check_database_file, config.database))
        adjustments = config.ledger.adjustments
        problems += database_problems(
            config.database, config.party, None if adjustments is None else adjustments.describe()
        )
    else:
        adjustments = config.ledger.adjustments
        problems += postgres_database_problems(
            config.database, config.party, None if adjustments is None else adjustments.describe()
        )
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    return [" ".join(problem.split()) for problem in problems]


def file_warnings(config: GatewayConfig, now: dt.datetime) -> list[str]:
    """What ``serve`` starts with but reports later in its log, one line each, naming the setting, the file and
    the instant: an own or a partner's trust document (the newest version, configured or stored in the
    gateway's database) that has expired at ``now``; a certificate of ``[tls]`` or ``[operator.tls]``, this
    gateway's or a CA's, that is not yet valid, has expired or expires within `CERTIFICATE_WARNING_DAYS`
    (`_certificate_warnings`); settings that can never take
    effect (`gateway.config.settings_without_effect`); and signers' secret files others may read
    (`gateway.config.exposed_secrets`). Files that cannot be read are left to `file_problems`."""
    from gateway.config import ConfigError, exposed_secrets, settings_without_effect
    from gateway.node import _trust_envelope

    warnings: list[str] = []
    documents = [("trust_document", config.trust_document, config.party)]
    documents += [(f"partners[{i}].trust_document", p.trust_document, p.party) for i, p in enumerate(config.partners)]
    for setting, path, party in documents:
        try:
            configured = TrustedParty.restore(_trust_envelope(path, setting))
        except (ConfigError, SigningError):
            continue
        if configured.party != party:
            continue
        stored = _stored_document(config, party)
        newest, where = configured, str(path)
        if stored is not None and stored.version > configured.version:
            newest, where = stored, f"{config.database} (stored by an update)"
        if not newest.document.is_expired(now):
            continue
        effect = (
            "partners refuse every statement this gateway signs: install a newer version (trust next, then"
            " RotateTrustDocument)"
            if party == config.party
            else f"this gateway refuses {party}'s statements until it applies a newer version: obtain {party}'s"
            " current trust document"
        )
        warnings.append(
            f"{setting}: {party}'s trust document version {newest.version} in {where} expired at"
            f" {newest.expires.isoformat()}; serve starts, but {effect}"
        )
    certificates: list[tuple[str, Path, str, str]] = []
    if config.tls is not None:
        certificates += [
            (
                "tls.certificate",
                config.tls.certificate,
                "partners refuse its TLS connections",
                "issue a new certificate",
            ),
            (
                "tls.ca_certificate",
                config.tls.ca_certificate,
                "this gateway refuses partners' TLS connections, whose certificates it signs",
                "install the CA's new certificate",
            ),
        ]
    operator_tls = config.operator_access.tls
    if operator_tls is not None:
        certificates.append(
            (
                "operator.tls.certificate",
                operator_tls.certificate,
                "operator clients refuse the operator API's TLS connections",
                "issue a new certificate",
            )
        )
        if operator_tls.client_ca is not None:
            certificates.append(
                (
                    "operator.tls.client_ca",
                    operator_tls.client_ca,
                    "the operator API refuses the callers' certificates it signs",
                    "install the CA's new certificate",
                )
            )
    for setting, path, effect, remedy in certificates:
        warnings += _certificate_warnings(setting, path, now, effect, remedy)
    warnings += settings_without_effect(config)
    warnings += exposed_secrets(config)
    return [" ".join(warning.split()) for warning in warnings]


def _subject(certificate: x509.Certificate) -> str:
    """The certificate's subject as RFC 4514 text, cut to 120 characters; one that cannot be parsed (a bundle's
    certificate `cryptography` loads, reading its subject only when asked) is named so, not a traceback."""
    try:
        return certificate.subject.rfc4514_string()[:120]
    except ValueError:
        return "a subject that cannot be read"


CERTIFICATE_WARNING_DAYS = 30
"""``config check`` warns of a TLS or CA certificate that expires within this many days."""


def _certificate_warnings(setting: str, path: Path, now: dt.datetime, effect: str, remedy: str) -> list[str]:
    """One warning for each certificate in the PEM file ``path`` (a certificate with its chain, or a CA bundle)
    that is not yet valid at ``now``, has expired, or expires within `CERTIFICATE_WARNING_DAYS`; ``effect`` says
    what fails meanwhile, ``remedy`` what to do. None for a file that cannot be read as certificates
    (`file_problems` names that)."""
    from cryptography import x509

    try:
        found = x509.load_pem_x509_certificates(read_small_file(path))
    except (OSError, ValueError):
        return []
    warnings = []
    for number, certificate in enumerate(found, start=1):
        which = str(path)
        if len(found) > 1:
            which += f" (certificate {number} of {len(found)}, {_subject(certificate)})"
        starts, expires = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if starts > now:
            warnings.append(
                f"{setting}: {which} is not valid until {starts.isoformat()}; serve starts, but until then {effect}:"
                " check this machine's clock, or the certificate's dates"
            )
        elif expires < now:
            warnings.append(
                f"{setting}: {which} expired at {expires.isoformat()}; serve starts, but {effect}: {remedy}"
            )
        elif expires < now + dt.timedelta(days=CERTIFICATE_WARNING_DAYS):
            days = (expires - now) // dt.timedelta(days=1)
            left = "less than a day" if days == 0 else "1 day" if days == 1 else f"{days} days"
            warnings.append(
                f"{setting}: {which} expires at {expires.isoformat()}, in {left}; once it has, {effect}:"
                f" {remedy} before then"
            )
    return warnings
