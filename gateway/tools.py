"""Command-line tools for a partner's engineers: keys, DSSE envelopes and demo mTLS certificates.

`register` adds the subcommands to the ``carbon-gateway`` parser:

- ``keys generate``: a signing key pair, as ``PREFIX.key`` and ``PREFIX.pub``;
- ``envelope sign``: a file's bytes as a signed DSSE JSON envelope;
- ``envelope verify``: an envelope (JSON or protobuf form) against a Party's signed trust document;
- ``certs generate``: a demo CA and one mTLS certificate per Party.

Each command returns its exit code: 0 on success, 1 when a verification fails, 2 when the command line or
an input file is unusable. Errors are one line on stderr that says what went wrong and what to do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from gateway.domain.errors import GatewayError
from gateway.ledger_cli import whole_number
from gateway.tls import DEMO_WARNING, CertificateError, write_gateway_certificates
from gateway.wire import envelope_from_bytes
from signing import (
    Algorithm,
    Envelope,
    EnvelopeFormatError,
    SigningError,
    TrustedParty,
    TrustError,
    VerificationError,
    generate_key,
    sign_envelope,
    signer_from_uri,
)
from signing.errors import ExpiredTrustError, TrustDocumentFormatError
from signing.files import passphrase_from_file_bytes, read_small_file

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "register"]

EXIT_OK = 0
EXIT_INVALID = 1
"""A verification failed: the envelope, or the trust document, is not acceptable."""
EXIT_USAGE = 2
"""The command line or an input file is unusable."""

MAX_PASSPHRASE_BYTES = 1023
"""The longest passphrase a private key can be encrypted with (the limit of the cryptography backend)."""

_STDIN = "-"
_Body = Callable[[], int]


class _ToolError(Exception):
    """A failure to report as one line on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys``, ``envelope`` and ``certs`` subcommands to the ``carbon-gateway`` parser."""
    keys = commands.add_parser("keys", help="signing keys", description="Create signing keys.")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    generate = keys_commands.add_parser(
        "generate",
        help="generate a key pair: PREFIX.key (private) and PREFIX.pub (public); print the keyid",
        description="Generate a signing key pair and print its keyid. PREFIX.key is the PKCS#8 PEM private key "
        "(mode 0600), PREFIX.pub the public key PEM. Existing files are never overwritten.",
    )
    generate.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.key and PREFIX.pub")
    generate.add_argument(
        "--algorithm",
        choices=[a.value for a in Algorithm],
        default=Algorithm.ED25519.value,
        help="signature algorithm (default: %(default)s; ecdsa-p256-sha256 matches HSM-backed keys)",
    )
    generate.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="encrypt the private key with the passphrase in FILE (one trailing newline is ignored); "
        "without it the key is not encrypted",
    )
    generate.set_defaults(func=_keys_generate)

    envelope = commands.add_parser(
        "envelope", help="sign and verify DSSE envelopes", description="Sign and verify DSSE envelopes."
    )
    envelope_commands = envelope.add_subparsers(dest="envelope_command", required=True, metavar="COMMAND")
    sign = envelope_commands.add_parser(
        "sign",
        help="sign a file's bytes; print the DSSE JSON envelope",
        description="Sign the bytes of FILE, verbatim, and print the DSSE envelope in its JSON form.",
    )
    sign.add_argument(
        "--key",
        required=True,
        metavar="KEY",
        help="signer URI (file:PATH, file:PATH?passphrase-file=FILE, pkcs11:...) or the path of an unencrypted "
        "PEM private key",
    )
    sign.add_argument(
        "--type",
        required=True,
        dest="payload_type",
        metavar="PAYLOAD_TYPE",
        help="payload type, e.g. application/vnd.carbon-gateway.statement.v1+protobuf",
    )
    sign.add_argument("file", metavar="FILE", help="the payload file, or - for standard input")
    sign.set_defaults(func=_envelope_sign)

    verify = envelope_commands.add_parser(
        "verify",
        help="verify an envelope against a Party's signed trust document",
        description="Verify a DSSE envelope (JSON or protobuf form) against the keys and threshold of one role "
        "in a Party's signed trust document. Prints the payload type, the keyids that verified and the verdict. "
        "Only the signatures are checked, not the statement inside (sender, receiver, sequence, time window).",
    )
    verify.add_argument(
        "--trust",
        required=True,
        metavar="FILE",
        help="the Party's signed trust document, as a JSON envelope (e.g. che.trust.json)",
    )
    verify.add_argument("--role", default="transfer", help="the role whose keys must sign (default: %(default)s)")
    verify.add_argument(
        "--at",
        metavar="ISO8601",
        help="check the trust document's expiry at this time instead of now, e.g. 2030-01-01T00:00:00Z",
    )
    verify.add_argument(
        "envelope", metavar="ENVELOPE", help="the envelope file (JSON or protobuf form), or - for standard input"
    )
    verify.set_defaults(func=_envelope_verify)

    certs = commands.add_parser(
        "certs", help="demo mTLS certificates", description="Create mTLS certificates for tests and demos."
    )
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    certs_generate = certs_commands.add_parser(
        "generate",
        help="create a demo CA and a certificate per Party or operator caller (tests and demos only)",
        description="Create DIR/ca.crt and DIR/ca.key (or reuse them if both exist) and, for each PARTY, "
        "DIR/<party>.crt and DIR/<party>.key: common name and DNS name the Party code, plus localhost and "
        "127.0.0.1, for server and client authentication; for each --caller NAME, DIR/NAME.crt and DIR/NAME.key "
        "the same way, for an operator API caller whose certificate_common_name is NAME. For tests and demos, "
        "not for production PKI.",
    )
    certs_generate.add_argument("--out", required=True, metavar="DIR", help="the folder to write to (created)")
    certs_generate.add_argument("--ca-name", required=True, metavar="NAME", help="the common name of a new CA")
    certs_generate.add_argument(
        "--days", type=whole_number, default=365, help="validity of new certificates in days (default: %(default)s)"
    )
    certs_generate.add_argument(
        "--caller",
        action="append",
        default=[],
        metavar="NAME",
        help="also issue a certificate for the operator API caller NAME (its certificate_common_name); repeatable",
    )
    certs_generate.add_argument("parties", nargs="*", metavar="PARTY", help="ISO 3166-1 alpha-3 code, e.g. CHE")
    certs_generate.set_defaults(func=_certs_generate)


# -- keys ----------------------------------------------------------------------------------------------


def _keys_generate(args: argparse.Namespace) -> int:
    """``carbon-gateway keys generate``."""
    return _run("keys generate", lambda: _do_keys_generate(args))


def _do_keys_generate(args: argparse.Namespace) -> int:
    passphrase: bytes | None = None
    if args.passphrase_file is not None:
        passphrase = passphrase_from_file_bytes(_read_input(args.passphrase_file, "passphrase file"))
        if not passphrase:
            raise _ToolError(f"the passphrase file {args.passphrase_file} is empty; write a passphrase into it")
        if len(passphrase) > MAX_PASSPHRASE_BYTES:
            raise _ToolError(
                f"--passphrase-file {args.passphrase_file}: the passphrase is {len(passphrase)} bytes; at most"
                f" {MAX_PASSPHRASE_BYTES} are supported"
            )
    prefix = Path(args.out)
    if not prefix.name or args.out.endswith(("/", os.sep)) or _is_folder(prefix):
        raise _ToolError(f"--out {args.out!r} names a folder, not a file prefix; give one, e.g. --out keys/chn")
    if not prefix.name.isprintable():
        raise _ToolError(f"--out {args.out!r}: the file prefix holds a control character; use letters, digits, '-'")
    if prefix.suffix in (".key", ".pub"):
        # A file name given for the prefix would write keys/chn.key.key, which no configuration names.
        bare = prefix.with_suffix("")
        raise _ToolError(
            f"--out {args.out!r}: --out takes a file prefix, not the key's file name: give --out {bare}, which writes"
            f" {bare}.key and {bare}.pub"
        )
    try:
        _make_key_folder(prefix.parent)
        public = generate_key(prefix, Algorithm(args.algorithm), passphrase)
    except SigningError as exc:
        raise _ToolError(str(exc)) from None
    except OSError as exc:  # a name too long, checked before anything is written
        raise _ToolError(f"--out {args.out}: {exc.strerror or exc}") from None
    key_path = prefix.with_name(prefix.name + ".key")
    pub_path = prefix.with_name(prefix.name + ".pub")
    print(public.keyid)
    encrypted = "encrypted, " if passphrase is not None else ""
    uri = f"file:{quote(str(key_path))}"
    if passphrase is not None:
        uri += f"?passphrase-file={quote(args.passphrase_file)}"
    print(
        f"wrote {key_path} ({encrypted}mode 0600) and {pub_path}; sign with --key {shlex.quote(uri)}",
        file=sys.stderr,
    )
    return EXIT_OK


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long: generate_key names it
        return False


def _make_key_folder(folder: Path) -> None:
    """Create the folder of a new key and its missing parents; the folders created are private (mode 0700)."""
    if folder.is_dir():
        return
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    if folder.exists():
        raise _ToolError(f"--out: {folder} exists and is not a folder")
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if not path.is_dir():
                raise _ToolError(f"--out: {path} exists and is not a folder") from None
        except OSError as exc:
            raise _ToolError(f"--out: cannot create the folder {path}: {exc.strerror or exc}") from None
        path.chmod(0o700)  # mkdir's mode is filtered by the umask


# -- envelopes -----------------------------------------------------------------------------------------


def _envelope_sign(args: argparse.Namespace) -> int:
    """``carbon-gateway envelope sign``."""
    return _run("envelope sign", lambda: _do_envelope_sign(args))


def _do_envelope_sign(args: argparse.Namespace) -> int:
    payload_type: str = args.payload_type
    if not payload_type or not payload_type.isascii() or not payload_type.isprintable():
        raise _ToolError(
            f"the payload type {payload_type!r} is not printable ASCII; use a media type such as "
            "application/vnd.carbon-gateway.statement.v1+protobuf"
        )
    try:
        signer = signer_from_uri(args.key)
    except SigningError as exc:
        raise _ToolError(f"cannot use the key {args.key!r}: {exc}") from None
    payload = _read_input(args.file, "payload file")
    try:
        envelope = sign_envelope(payload_type, payload, [signer])
    except SigningError as exc:
        raise _ToolError(f"cannot sign: {exc}") from None
    print(envelope.to_json().decode("ascii"))
    return EXIT_OK


def _envelope_verify(args: argparse.Namespace) -> int:
    """``carbon-gateway envelope verify``."""
    return _run("envelope verify", lambda: _do_envelope_verify(args))


def _do_envelope_verify(args: argparse.Namespace) -> int:
    if args.envelope == _STDIN and args.trust == _STDIN:
        raise _ToolError("only one of --trust and ENVELOPE can be read from standard input; pass the other as a file")
    now = _parse_time(args.at) if args.at is not None else dt.datetime.now(dt.UTC)
    envelope = _load_envelope(args.envelope)
    trust_envelope = _load_trust_envelope(args.trust)
    trusted: TrustedParty | None = None
    failure = ""
    try:
        trusted = TrustedParty.bootstrap(trust_envelope, now)
    except TrustDocumentFormatError as exc:
        raise _ToolError(f"the trust document {args.trust} is malformed: {exc}") from None
    except (ExpiredTrustError, VerificationError) as exc:
        failure = f"the trust document {args.trust} is not usable: {exc}"
    except TrustError as exc:
        raise _ToolError(f"the trust document {args.trust} is not usable: {exc}") from None
    if trusted is not None and args.role not in trusted.document.roles:
        raise _ToolError(
            f"the trust document for {trusted.party} has no role {args.role!r}; choose --role from "
            f"{', '.join(sorted(trusted.document.roles))}"
        )

    payload_type = envelope.payload_type
    # The payload type comes from the sender: keep control characters away from the terminal.
    print(f"payload type: {payload_type if payload_type.isprintable() else repr(payload_type)}")
    print(f"payload: {len(envelope.payload)} bytes, sha256 {hashlib.sha256(envelope.payload).hexdigest()}")
    if trusted is None:
        return _invalid(failure)
    print(
        f"trust document: {trusted.party} version {trusted.version}, "
        f"expires {trusted.expires.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )
    try:
        result = trusted.verify(envelope, args.role, now)
    except (ExpiredTrustError, VerificationError) as exc:
        return _invalid(str(exc))
    print(f"verified keyids: {', '.join(result.verified_keyids)}")
    threshold = trusted.document.threshold_for(args.role)
    print(f"verdict: VALID (threshold {threshold} of role {args.role} met)")
    return EXIT_OK


def _invalid(reason: str) -> int:
    reason = _one_line(reason)
    print("verified keyids: (none)")
    print(f"verdict: INVALID: {reason}")
    print(f"carbon-gateway envelope verify: INVALID: {reason}", file=sys.stderr)
    return EXIT_INVALID


def _load_envelope(name: str) -> Envelope:
    """Read an envelope in its JSON form or, failing that, in its protobuf (wire) form."""
    data = _read_input(name, "envelope file")
    if not data.strip():
        raise _ToolError(f"the envelope file {name} is empty; pass a JSON or protobuf DSSE envelope")
    try:
        return Envelope.from_json(data)
    except EnvelopeFormatError as exc:
        # A protobuf Envelope starts with a field tag (0x0a, 0x12 or 0x1a), never with "{".
        if data.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{"):
            raise _ToolError(f"the envelope file {name} is not a valid JSON envelope: {exc}") from None
    try:
        envelope = envelope_from_bytes(data)
    except GatewayError as exc:
        raise _ToolError(
            f"the envelope file {name} is neither a JSON envelope nor a protobuf carbon_gateway.v1.Envelope "
            f"({exc.message})"
        ) from None
    if not envelope.payload_type or not envelope.signatures:
        raise _ToolError(
            f"the envelope file {name} is neither a JSON envelope nor a protobuf carbon_gateway.v1.Envelope "
            "with a payload type and signatures"
        )
    return envelope


def _load_trust_envelope(name: str) -> Envelope:
    data = _read_input(name, "trust document")
    try:
        return Envelope.from_json(data)
    except EnvelopeFormatError as exc:
        raise _ToolError(
            f"the trust document {name} is not a JSON envelope ({exc}); pass the Party's signed trust document "
            "as published, e.g. che.trust.json"
        ) from None


def _parse_time(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _ToolError(f"--at {text!r} is not an ISO 8601 time; write e.g. 2030-01-01T00:00:00Z") from None
    if moment.utcoffset() is None:
        raise _ToolError(f"--at {text!r} has no time zone; add Z for UTC or an offset, e.g. 2030-01-01T00:00:00Z")
    return moment


# -- certificates --------------------------------------------------------------------------------------


def _certs_generate(args: argparse.Namespace) -> int:
    """``carbon-gateway certs generate``."""
    return _run("certs generate", lambda: _do_certs_generate(args))


def _do_certs_generate(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    try:
        written = write_gateway_certificates(out_dir, args.parties, args.ca_name, args.days, callers=args.caller)
    except CertificateError as exc:
        raise _ToolError(str(exc)) from None
    print(f"warning: {DEMO_WARNING}", file=sys.stderr)
    if written.reused_ca:
        note = "" if written.ca_name == args.ca_name else f"; --ca-name {args.ca_name!r} was not used"
        print(f"reused CA {written.ca_name!r}: {written.ca_certificate}{note}")
    else:
        print(f"created CA {written.ca_name!r}: {written.ca_certificate} and {written.ca_key}")
    for name, (cert_path, key_path) in written.issued.items():
        print(f"issued {name}: {cert_path} and {key_path}")
    return EXIT_OK


# -- helpers -------------------------------------------------------------------------------------------


def _run(command: str, body: _Body) -> int:
    try:
        return body()
    except _ToolError as exc:
        print(f"carbon-gateway {command}: {_one_line(str(exc))}", file=sys.stderr)
        return exc.code


MAX_INPUT_BYTES = 64 << 20
"""The largest file or standard input a tool reads: the largest envelope cap a gateway may set."""


def _read_input(name: str, what: str) -> bytes:
    if name == _STDIN:
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise _ToolError(f"the {what} on standard input is larger than {MAX_INPUT_BYTES} bytes")
        return data
    path = Path(name)
    try:
        return read_small_file(path, MAX_INPUT_BYTES)
    except FileNotFoundError:
        raise _ToolError(f"the {what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise _ToolError(f"the {what} {path} is a folder; pass a file") from None
    except OSError as exc:
        raise _ToolError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
