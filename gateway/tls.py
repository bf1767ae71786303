"""Demo certificates for mutual TLS between gateways: a small CA and one certificate per Party.

These are for tests and demos, not for production PKI: the CA key is an unencrypted file, there is no
revocation, and nothing records what was issued. A production deployment uses its own PKI and only
configures the resulting files (``[tls]`` in the gateway configuration).

Every key is EC P-256 and every signature ECDSA with SHA-256. A gateway certificate names its Party in the
subject common name (which the partner exchange binds to the signed sender) and in the subject alternative
name, beside ``localhost`` and ``127.0.0.1``; it is valid for both server and client authentication.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.domain.records import PARTY_PATTERN
from signing.files import write_new_file

__all__ = [
    "CA_CERTIFICATE_FILE",
    "CA_KEY_FILE",
    "DEMO_WARNING",
    "CertificateError",
    "GatewayCertificates",
    "certificate_common_names",
    "create_ca",
    "issue_certificate",
    "peer_common_names",
    "write_gateway_certificates",
]

CA_CERTIFICATE_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
MAX_DAYS = 36500
DEMO_WARNING = (
    "these certificates are for tests and demos, not for production PKI: the CA key is an unencrypted file "
    "and nothing can revoke what it issued"
)

_BACKDATE = dt.timedelta(minutes=5)
"""Certificates start slightly in the past so that a peer whose clock lags a little still accepts them."""

_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


class CertificateError(Exception):
    """A certificate could not be created, loaded or written; the message says why and what to do."""


@dataclass(frozen=True)
class GatewayCertificates:
    """The files `write_gateway_certificates` used or wrote.

    ``issued`` maps each Party code and caller name to its ``(certificate, private key)`` paths. ``reused_ca``
    tells whether an existing CA was found in the folder.
    """

    ca_certificate: Path
    ca_key: Path
    reused_ca: bool
    ca_name: str
    issued: dict[str, tuple[Path, Path]]


MAX_COMMON_NAME = 64
"""The longest common name a certificate may carry, in UTF-8 bytes as the certificate builder counts them
(RFC 5280, ub-common-name)."""


def create_ca(name: str, days: int = 365) -> tuple[bytes, bytes]:
    """Create a self-signed CA; return its certificate PEM and its unencrypted PKCS#8 private key PEM.

    The CA may sign end-entity certificates only (path length 0) and is valid for ``days`` days.
    """
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        raise CertificateError(f"the CA name must be a non-empty printable string, got {name!r}")
    if len(name.encode("utf-8")) > MAX_COMMON_NAME:
        raise CertificateError(
            f"the CA name takes {len(name.encode('utf-8'))} bytes in UTF-8; a certificate's common name takes at"
            f" most {MAX_COMMON_NAME}"
        )
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key)


def issue_certificate(ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, days: int = 365) -> tuple[bytes, bytes]:
    """Issue a server-and-client certificate for ``common_name``; return its certificate PEM and key PEM.

    The subject is ``CN=common_name``; the subject alternative name holds the DNS names ``localhost`` and
    ``common_name`` and the IP address 127.0.0.1. ``common_name`` must therefore be a DNS label (letters,
    digits and inner hyphens, at most 63 characters). The certificate is valid for ``days`` days, but never
    beyond the CA's own expiry, since no verifier would accept it after that.
    """
    if not isinstance(common_name, str) or not _DNS_LABEL.fullmatch(common_name):
        raise CertificateError(
            f"the common name {common_name!r} is not a DNS label (letters, digits and inner hyphens, at most "
            "63 characters); it is also the certificate's DNS name"
        )
    _check_days(days)
    ca_certificate, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    now = _now()
    if ca_certificate.not_valid_after_utc <= now:
        raise CertificateError(
            f"the CA certificate expired at {ca_certificate.not_valid_after_utc.isoformat()}; create a new CA"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if common_name.lower() != "localhost":
        alternative_names.append(x509.DNSName(common_name))
    alternative_names.append(x509.IPAddress(_LOOPBACK))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key)


def write_gateway_certificates(
    out_dir: Path, parties: Sequence[str], ca_name: str, days: int = 365, *, callers: Sequence[str] = ()
) -> GatewayCertificates:
    """Write a CA and one certificate per Party and per operator caller into ``out_dir``; return what was used
    and written.

    If ``out_dir/ca.crt`` and ``out_dir/ca.key`` both exist, that CA is reused (and ``ca_name`` ignored), so
    a partner can be added later; otherwise a new CA named ``ca_name`` is created. Each Party (an ISO 3166-1
    alpha-3 code such as ``CHE``) gets ``out_dir/che.crt`` and ``out_dir/che.key``; each caller (a name such
    as ``ops-1``, which ``[[operator.callers]] certificate_common_name`` names) gets ``out_dir/ops-1.crt`` and
    ``out_dir/ops-1.key``. Private keys are written with mode 0600. Nothing is overwritten: if any of the files
    already exist, nothing is written at all.
    """
    out_dir = Path(out_dir)
    _check_days(days)
    if not parties and not callers:
        raise CertificateError(
            "name at least one Party (e.g. CHN CHE) or operator caller (--caller ops-1) to issue a certificate for"
        )
    seen: set[str] = set()
    for party in parties:
        if not isinstance(party, str) or not PARTY_PATTERN.fullmatch(party):
            raise CertificateError(
                f"{party!r} is not a Party code: use the ISO 3166-1 alpha-3 code in capitals, e.g. CHE"
            )
        if party.casefold() in seen:
            raise CertificateError(f"the Party {party} is named twice")
        seen.add(party.casefold())
    for caller in callers:
        if not isinstance(caller, str) or not _DNS_LABEL.fullmatch(caller):
            raise CertificateError(
                f"the caller {caller!r} is not a DNS label (letters, digits and inner hyphens, at most 63"
                " characters); it is the certificate's common name and DNS name"
            )
        if PARTY_PATTERN.fullmatch(caller.upper()):
            raise CertificateError(
                f"the caller {caller!r} reads as a Party code: a certificate with that name would pass for a"
                " partner's; choose a name such as ops-1"
            )
        if caller.casefold() == Path(CA_CERTIFICATE_FILE).stem:
            raise CertificateError(f"the caller {caller!r} would be written over the CA's files; choose another name")
        if caller.casefold() in seen:
            raise CertificateError(f"{caller!r} is named twice (names are compared without regard to case)")
        seen.add(caller.casefold())

    ca_cert_path = out_dir / CA_CERTIFICATE_FILE
    ca_key_path = out_dir / CA_KEY_FILE
    targets = {party: (out_dir / f"{party.lower()}.crt", out_dir / f"{party.lower()}.key") for party in parties}
    targets.update({caller: (out_dir / f"{caller}.crt", out_dir / f"{caller}.key") for caller in callers})
    existing = [str(path) for paths in targets.values() for path in paths if path.exists()]
    if existing:
        raise CertificateError(
            f"refusing to overwrite {', '.join(existing)}; remove these files to issue them again, or choose "
            "another folder"
        )

    if ca_cert_path.exists() or ca_key_path.exists():
        if not (ca_cert_path.exists() and ca_key_path.exists()):
            present, absent = (ca_cert_path, ca_key_path) if ca_cert_path.exists() else (ca_key_path, ca_cert_path)
            raise CertificateError(
                f"{present} exists but {absent} does not; restore the missing file to reuse the CA, or remove "
                f"{present} to create a new CA"
            )
        ca_cert_pem = _read(ca_cert_path)
        ca_key_pem = _read(ca_key_path)
        ca_certificate, _ = _load_ca(ca_cert_pem, ca_key_pem)
        reused = True
        names = ca_certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ca_name = str(names[0].value) if names else ca_certificate.subject.rfc4514_string()
    else:
        ca_cert_pem, ca_key_pem = create_ca(ca_name, days)
        reused = False

    issued = {name: issue_certificate(ca_cert_pem, ca_key_pem, name, days) for name in targets}

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not reused:
            write_new_file(ca_key_path, ca_key_pem, 0o600)
            write_new_file(ca_cert_path, ca_cert_pem, 0o644)
        for party, (cert_pem, key_pem) in issued.items():
            cert_path, key_path = targets[party]
            write_new_file(key_path, key_pem, 0o600)
            write_new_file(cert_path, cert_pem, 0o644)
    except FileExistsError as exc:
        raise CertificateError(f"refusing to overwrite {exc.filename}: it was created while writing") from None
    except OSError as exc:
        raise CertificateError(f"cannot write the certificates into {out_dir}: {exc.strerror or exc}") from None
    return GatewayCertificates(
        ca_certificate=ca_cert_path, ca_key=ca_key_path, reused_ca=reused, ca_name=ca_name, issued=targets
    )


def certificate_common_names(pem: bytes) -> list[str]:
    """The common names in the subject of the first certificate in ``pem``, in the order the subject lists them.

    Raises `CertificateError` when ``pem`` holds no readable certificate."""
    try:
        attributes = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        # `cryptography` refuses a whole certificate for one subject attribute its string type does not allow,
        # such as an O=Ministry_of_Ecology a CA wrote as a PrintableString; gRPC and OpenSSL take such
        # certificates, so the common names are read from the DER, and only one that cannot be read is refused.
        return _subject_common_names(_pem_to_der(pem))
    return [
        value if isinstance(value := attribute.value, str) else value.decode("utf-8", "replace")
        for attribute in attributes
    ]


def _pem_to_der(pem: bytes) -> bytes:
    """The DER bytes of the first certificate in ``pem``; `CertificateError` when there is none."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        raise CertificateError("not a readable PEM certificate")
    try:
        return base64.b64decode(b"".join(pem[start + len(begin) : stop].split()), validate=True)
    except ValueError:
        raise CertificateError("not a readable PEM certificate (its base64 is broken)") from None


_COMMON_NAME_OID = b"\x06\x03\x55\x04\x03"
_STRING_TYPES = {0x0C: "utf-8", 0x13: "ascii", 0x14: "latin-1", 0x16: "ascii", 0x1C: "utf-32-be", 0x1E: "utf-16-be"}
"""The DER tags of the string types a common name is written in (UTF8String, PrintableString, TeletexString,
IA5String, UniversalString, BMPString), to the codec each one's bytes are read with."""


def _der_items(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The DER elements between ``start`` and ``end`` of ``data``: (tag, start of content, end of content) each."""
    items = []
    while start < end:
        if start + 2 > end:
            raise CertificateError("the certificate is cut short")
        tag, length = data[start], data[start + 1]
        start += 2
        if length & 0x80:
            size = length & 0x7F
            if not 0 < size <= 4 or start + size > end:
                raise CertificateError("the certificate has a length DER does not allow")
            length, start = int.from_bytes(data[start : start + size], "big"), start + size
        if start + length > end:
            raise CertificateError("the certificate is cut short")
        items.append((tag, start, start + length))
        start += length
    return items


def _subject_common_names(der: bytes) -> list[str]:
    """The common names of the subject of the DER certificate ``der``, read without judging its other attributes.

    Raises `CertificateError` for a common name of an unknown string type, bytes its type cannot hold, or a NUL
    (which gRPC's own reading stops at), and for bytes that are no DER certificate."""
    certificate = _der_items(der, 0, len(der))
    if len(certificate) != 1 or certificate[0][0] != 0x30:
        raise CertificateError("not a DER certificate")
    parts = _der_items(der, certificate[0][1], certificate[0][2])
    if not parts or parts[0][0] != 0x30:
        raise CertificateError("not a DER certificate")
    fields = _der_items(der, parts[0][1], parts[0][2])
    if fields and fields[0][0] == 0xA0:  # the explicit version
        fields = fields[1:]
    if len(fields) < 5 or fields[4][0] != 0x30:
        raise CertificateError("the certificate has no subject where DER puts it")
    names = []
    for _, set_start, set_end in _der_items(der, fields[4][1], fields[4][2]):
        for _, start, end in _der_items(der, set_start, set_end):
            items = _der_items(der, start, end)
            if len(items) != 2 or der[items[0][1] - 2 : items[0][2]] != _COMMON_NAME_OID:
                continue
            tag, value_start, value_end = items[1]
            codec = _STRING_TYPES.get(tag)
            try:
                if codec is None:
                    raise ValueError(f"string type tag {tag:#x}")
                name = der[value_start:value_end].decode(codec)
            except ValueError as exc:
                raise CertificateError(f"a common name of the subject cannot be read ({exc})") from None
            if "\x00" in name:
                raise CertificateError("a common name of the subject holds a NUL byte")
            names.append(name)
    return names


def peer_common_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The common names of the peer certificate a gRPC server verified, from its call's ``auth_context()``.

    gRPC itself reports only the first common name (``x509_common_name``), so the certificate it passes on
    (``x509_pem_cert``) is read for all of them: a certificate whose subject lists several names must not be taken
    for whichever comes first. Raises `CertificateError` for a certificate whose subject cannot be read (a string
    its type does not allow, such as a NUL byte in a PrintableString): gRPC's own reading of such a name stops at
    the NUL, so that ``CHN\\0x`` would pass for ``CHN``."""
    for pem in auth_context.get("x509_pem_cert") or ():
        return certificate_common_names(pem)
    return [name.decode("utf-8", "replace") for name in auth_context.get("x509_common_name") or ()]


# -- helpers -------------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _check_days(days: int) -> None:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise CertificateError(f"the validity must be a whole number of days from 1 to {MAX_DAYS}, got {days!r}")


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(cert_pem: bytes, key_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"the CA certificate is not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except TypeError:
        raise CertificateError("the CA private key is encrypted; these demo tools need an unencrypted CA key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"the CA private key is not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateError("the CA private key is not an EC P-256 key; create a new CA with these tools")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertificateError("the CA certificate is not a CA certificate (no basicConstraints CA:TRUE)")
    if key.public_key() != certificate.public_key():
        raise CertificateError("the CA private key does not belong to the CA certificate; keep the two files paired")
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError("the CA certificate is not self-signed; use a CA created by these tools") from None
    return certificate, key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from None
